"""Segmentation losses, the loss registry, and the criterion that sums a method's loss terms.

* :data:`LOSSES`: registered pixel losses ``loss(logits [B, K, h, w], label [B, H, W]) ->
  scalar``: ``ce``, ``ohem``, ``focal``, ``dice``, ``lovasz``. A config names one by a spec, a
  mapping ``{name: ohem, thresh: 0.7, min_kept_frac: 0.0625}`` (or just the name), built by
  :func:`build_loss`. Every loss bilinearly resizes logits at another resolution than the
  label to it first, and leaves pixels equal to ``ignore_index`` out (no value, no gradient).
* Class weights: every built-in loss takes ``class_weight`` (``K`` non-negative numbers).
  A spec may also say ``class_weight: inverse_frequency`` or ``median_frequency``; those are
  computed from the training split's labels (:mod:`fusionseg.engine.class_balance`) and put
  in by :func:`resolve_class_weights` before the loss is built.
* Combined losses: ``{name: ce, class_weight: median_frequency, terms: [{name: dice, weight:
  0.5}, {name: lovasz}]}`` is ``ce + 0.5 * dice + 1.0 * lovasz`` (:class:`CombinedLoss`).
  ``weight`` is only ever a term's mixing weight; class weights are always ``class_weight``.
* :class:`SegmentationCriterion`: the training loss of any segmentor output - the main loss,
  each auxiliary output's weighted loss and the method's extra terms (see
  :mod:`fusionseg.models.segmentor` for the route), with every term returned by name.

docs/losses.md has the schema, each loss's source and measured effects.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FREQUENCY_WEIGHTINGS
from ..errors import ConfigError
from ..models.segmentor import SegmentationOutput
from ..registry import Registry

__all__ = [
    "FREQUENCY_WEIGHTINGS",
    "LOSSES",
    "CombinedLoss",
    "CrossEntropy",
    "DiceLoss",
    "FocalLoss",
    "LovaszSoftmaxLoss",
    "OhemCrossEntropy",
    "SegmentationCriterion",
    "build_loss",
    "check_class_weight_count",
    "frequency_weightings",
    "lovasz_grad",
    "loss_spec",
    "register_loss",
    "resolve_class_weights",
]

#: ``name -> loss class``, built with ``cls(ignore_index=..., **options)``
LOSSES: Registry[type[nn.Module]] = Registry("loss")



def register_loss(name: str):
    """Class decorator registering a pixel loss ``cls(ignore_index=255, **options)``."""
    return LOSSES.register(name)


# -- shared pieces -------------------------------------------------------------------------
def _class_weight_tensor(value: Sequence[float] | Tensor | None) -> Tensor | None:
    """``class_weight`` as a float32 vector ``[K]``, or None.

    Raises:
        ConfigError: a frequency name not yet resolved, not a flat list of finite numbers
            >= 0, or all zero.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value in FREQUENCY_WEIGHTINGS:
            raise ConfigError(
                f"class_weight {value!r} is computed from the training split's labels: resolve "
                "it first (resolve_class_weights; training does this when it starts)")
        raise ConfigError(f"class_weight must be a list of K numbers or one of "
                          f"{list(FREQUENCY_WEIGHTINGS)}, got {value!r}")
    try:
        w = torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"class_weight must be a list of numbers, got {value!r}") from None
    if w.ndim != 1 or w.numel() == 0:
        raise ConfigError(f"class_weight must be a flat list of K numbers, got {value!r}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not bool((w > 0).any()):
        raise ConfigError("class_weight values must be finite, >= 0 and not all 0")
    return w.detach().clone()


def _resized(logits: Tensor, label: Tensor) -> Tensor:
    """Logits ``[B, K, h, w]`` bilinearly resized to the label's ``[H, W]``, as float32."""
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear",
                               align_corners=False)
    return logits.float()


def _checked_weight(weight: Tensor | None, num_classes: int) -> Tensor | None:
    if weight is not None and weight.numel() != num_classes:
        raise ConfigError(f"class_weight has {weight.numel()} values, the logits have "
                          f"{num_classes} classes")
    return weight


class _PixelLoss(nn.Module):
    """Base of the built-in losses: ``ignore_index`` and an optional ``class_weight`` buffer
    (not saved in checkpoints: it comes from the config / the training split)."""

    def __init__(self, ignore_index: int = 255,
                 class_weight: Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weight", _class_weight_tensor(class_weight),
                             persistent=False)

    @property
    def weight(self) -> Tensor | None:
        """The class weights ``[K]`` (the old name of :attr:`class_weight`)."""
        return self.class_weight

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, class_weight={self.class_weight is not None}"


@register_loss("ce")
class CrossEntropy(_PixelLoss):
    """Pixel-wise cross-entropy over logits ``[B, K, H, W]`` and labels ``[B, H, W]`` (int64).

    Unweighted: the mean over the valid pixels. With ``class_weight`` ``w``: ``sum_i w_{y_i}
    l_i / sum_i w_{y_i}`` over the valid pixels ``i`` (``torch.nn.CrossEntropyLoss(weight=w)``),
    so the weights' scale does not matter, only their ratios. A batch with no valid pixel
    (or only pixels of weight 0) gives 0.

    Args:
        ignore_index: label value that contributes nothing.
        class_weight: ``K`` weights (``weight`` is the old keyword, still accepted).

    Raises:
        ConfigError: bad ``class_weight`` (at construction), or as many weights as classes not
            (at forward).
    """

    def __init__(self, ignore_index: int = 255,
                 class_weight: Sequence[float] | Tensor | None = None, *,
                 weight: Tensor | None = None) -> None:
        super().__init__(ignore_index, class_weight if class_weight is not None else weight)

    def pixel_losses(self, logits: Tensor, label: Tensor) -> Tensor:
        """Unweighted per-pixel losses ``[B*H*W]`` (0 at ignored pixels)."""
        return F.cross_entropy(_resized(logits, label), label, ignore_index=self.ignore_index,
                               reduction="none").flatten()

    def pixel_weights(self, label: Tensor) -> Tensor:
        """Per-pixel weights ``[B*H*W]``: ``w_{y_i}`` (1 unweighted), 0 at ignored pixels."""
        valid = (label != self.ignore_index).flatten()
        if self.class_weight is None:
            return valid.float()
        idx = torch.where(valid, label.flatten(), 0)
        return self.class_weight.to(label.device)[idx] * valid

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        _checked_weight(self.class_weight, logits.shape[1])
        losses = self.pixel_losses(logits, label)
        if self.class_weight is None:
            valid = (label != self.ignore_index).flatten()
            return losses[valid].mean() if valid.any() else losses.sum() * 0.0
        w = self.pixel_weights(label)
        total = w.sum()
        return (losses * w).sum() / total if total > 0 else losses.sum() * 0.0


@register_loss("ohem")
class OhemCrossEntropy(CrossEntropy):
    """Online hard example mining cross-entropy.

    Keeps the pixels whose loss exceeds ``-log(thresh)`` (i.e. predicted probability of the
    true class below ``thresh``), but at least ``min_kept_frac`` of the valid pixels (the
    hardest ones), and averages their losses. Defaults follow the DELIVER/CMNeXt/StitchFusion
    recipe: threshold 0.7, at least 1/16 of the valid pixels (StitchFusion official configs,
    ``semseg/losses.py``). With ``class_weight`` the pixels are chosen by their unweighted
    loss (the probability rule above) and averaged with weights, as :class:`CrossEntropy`.
    """

    def __init__(self, ignore_index: int = 255, thresh: float = 0.7,
                 min_kept_frac: float = 1 / 16,
                 class_weight: Sequence[float] | Tensor | None = None, *,
                 weight: Tensor | None = None) -> None:
        super().__init__(ignore_index, class_weight, weight=weight)
        self.loss_thresh = -float(torch.log(torch.tensor(thresh)))
        self.min_kept_frac = min_kept_frac

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        _checked_weight(self.class_weight, logits.shape[1])
        losses = self.pixel_losses(logits, label)
        valid = (label != self.ignore_index).flatten()
        weights = self.pixel_weights(label)[valid]
        losses = losses[valid]
        if losses.numel() == 0:
            return logits.sum() * 0.0
        n_min = max(1, int(self.min_kept_frac * losses.numel()))
        if self.class_weight is None:
            hard = losses[losses > self.loss_thresh]
            if hard.numel() < n_min:
                hard, _ = losses.topk(n_min)
            return hard.mean()
        keep = losses > self.loss_thresh
        if int(keep.sum()) < n_min:
            keep = torch.zeros_like(keep)
            keep[losses.topk(n_min).indices] = True
        total = weights[keep].sum()
        return (losses[keep] * weights[keep]).sum() / total if total > 0 else losses.sum() * 0.0


@register_loss("focal")
class FocalLoss(CrossEntropy):
    """Softmax focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017,
    Eq. 5): ``FL_i = -alpha_{y_i} (1 - p_i)^gamma log p_i``, ``p_i`` the softmax probability
    of pixel ``i``'s true class.

    ``alpha`` is ``class_weight`` (1 without it); the pixel losses are averaged as
    :class:`CrossEntropy` averages them (``sum alpha_{y_i} FL'_i / sum alpha_{y_i}``, ``FL'``
    without alpha; the paper, detecting, divides by the number of anchors assigned to objects
    instead), so ``gamma = 0`` is exactly ``ce`` with the same ``class_weight``.

    Args:
        gamma: focusing parameter ``>= 0`` (the paper's best, 2, by default).

    Raises:
        ConfigError: ``gamma < 0``; bad ``class_weight``.
    """

    def __init__(self, ignore_index: int = 255, gamma: float = 2.0,
                 class_weight: Sequence[float] | Tensor | None = None) -> None:
        super().__init__(ignore_index, class_weight)
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ConfigError(f"focal: gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def pixel_losses(self, logits: Tensor, label: Tensor) -> Tensor:
        """Per-pixel ``-(1 - p_i)^gamma log p_i`` ``[B*H*W]`` (0 at ignored pixels)."""
        ce = super().pixel_losses(logits, label)
        if self.gamma == 0:
            return ce
        # 1 - p = 1 - exp(-ce); clamped so that (1 - p)^gamma has a finite gradient at p = 1
        return (-torch.expm1(-ce)).clamp(min=1e-12).pow(self.gamma) * ce


def _probs_onehot(logits: Tensor, label: Tensor, ignore_index: int
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax probabilities and one-hot targets ``[B, K, H, W]`` with ignored pixels zeroed
    (no value, no gradient), and the valid mask ``[B, H, W]``."""
    probs = _resized(logits, label).softmax(1)
    valid = label != ignore_index
    onehot = F.one_hot(torch.where(valid, label, 0), probs.shape[1]).permute(0, 3, 1, 2)
    mask = valid.unsqueeze(1)
    return probs * mask, onehot.to(probs.dtype) * mask, valid


def _class_mean(per_class: Tensor, counted: Tensor, weight: Tensor | None,
                zero: Tensor) -> Tensor:
    """Mean of ``per_class [K]`` over the ``counted`` classes, weighted by ``weight``."""
    w = counted.to(per_class.dtype)
    if weight is not None:
        w = w * weight.to(per_class.device)
    total = w.sum()
    return (per_class * w).sum() / total if total > 0 else zero


_CLASSES = ("present", "all")


@register_loss("dice")
class DiceLoss(_PixelLoss):
    """Soft multi-class Dice loss (Milletari et al., V-Net, 3DV 2016, Eq. 1, with softmax
    probabilities per class and a smooth term as in Sudre et al. 2017 / mmseg / smp).

    Over the valid pixels of the whole batch, per class ``c``::

        D_c = (2 sum_i p_ic g_ic + smooth) / (sum_i p_ic + sum_i g_ic + smooth)

    (``g`` the one-hot label). The loss is ``1 - D_c`` averaged over the classes counted,
    weighted by ``class_weight`` when given. ``classes: present`` (default) counts the classes
    present in the batch's valid labels, so a class absent from the batch adds nothing (as the
    Lovasz-Softmax default); ``all`` counts every class, so a class absent from the batch but
    predicted gets ``D_c = smooth / (sum_i p_ic + smooth)``, pushing those predictions down
    (with ``smooth = 0`` such a class counts as ``D_c = 1`` when it is also not predicted at
    all). A batch with no valid pixel gives 0.

    Args:
        smooth: added to numerator and denominator (>= 0; default 1).
        classes: ``present`` or ``all``.

    Raises:
        ConfigError: ``smooth < 0``, another ``classes``; bad ``class_weight``.
    """

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0, classes: str = "present",
                 class_weight: Sequence[float] | Tensor | None = None) -> None:
        super().__init__(ignore_index, class_weight)
        if not (math.isfinite(smooth) and smooth >= 0):
            raise ConfigError(f"dice: smooth must be >= 0, got {smooth}")
        if classes not in _CLASSES:
            raise ConfigError(f"dice: classes must be one of {list(_CLASSES)}, got {classes!r}")
        self.smooth = float(smooth)
        self.classes = classes

    def per_class(self, logits: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        """``1 - D_c`` per class ``[K]`` and which classes count ``bool [K]``."""
        probs, onehot, _ = _probs_onehot(logits, label, self.ignore_index)
        inter = (probs * onehot).sum((0, 2, 3))
        target = onehot.sum((0, 2, 3))
        card = probs.sum((0, 2, 3)) + target
        den = card + self.smooth
        dice = torch.where(den > 0, (2 * inter + self.smooth) / den.clamp(min=1e-12),
                           torch.ones_like(den))
        counted = target > 0 if self.classes == "present" else torch.ones_like(target, dtype=bool)
        return 1 - dice, counted

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        _checked_weight(self.class_weight, logits.shape[1])
        if not bool((label != self.ignore_index).any()):
            return logits.sum() * 0.0
        loss, counted = self.per_class(logits, label)
        return _class_mean(loss, counted, self.class_weight, logits.sum() * 0.0)


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss with respect to the errors sorted
    in decreasing order (Berman et al., CVPR 2018, Algorithm 1), per column.

    Args:
        gt_sorted: ``[P, C]`` (or ``[P]``) 0/1 ground truth of each column's class, ordered by
            decreasing error.

    Returns:
        ``[P, C]`` (or ``[P]``): ``g_1 = J_1``, ``g_i = J_i - J_{i-1}``, where ``J_i`` is the
        Jaccard loss when the first ``i`` sorted pixels are wrong,
        ``J_i = 1 - (n - cumsum(gt)_i) / (n + cumsum(1 - gt)_i)`` with ``n = sum(gt)``.
    """
    gts = gt_sorted.sum(0)
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], 0)


@register_loss("lovasz")
class LovaszSoftmaxLoss(_PixelLoss):
    """Lovasz-Softmax loss (Berman, Rannen Triki & Blaschko, "The Lovasz-Softmax loss: A
    tractable surrogate for the optimization of the intersection-over-union measure in neural
    networks", CVPR 2018, Eq. 12 and Algorithm 1): a convex surrogate of ``1 - IoU`` per class.

    Per class ``c``, over the valid pixels: errors ``m_i = |g_ic - p_ic|`` (softmax
    probabilities), sorted in decreasing order, dotted with :func:`lovasz_grad` of the sorted
    ground truth. With 0/1 probabilities this is exactly ``1 - IoU_c``. As the authors'
    ``lovasz_softmax`` (``pytorch/lovasz_losses.py``, defaults ``classes='present'``,
    ``per_image=False``): the pixels of the whole batch together, averaged over the classes
    present in the valid labels (``classes: all``: every class; a class absent from the batch
    then adds its largest probability ``max_i p_ic``), weighted by ``class_weight`` when given;
    ``per_image: true`` averages the loss of each image instead. A batch with no valid pixel
    gives 0.

    Raises:
        ConfigError: another ``classes``; bad ``class_weight``.
    """

    def __init__(self, ignore_index: int = 255, classes: str = "present",
                 per_image: bool = False,
                 class_weight: Sequence[float] | Tensor | None = None) -> None:
        super().__init__(ignore_index, class_weight)
        if classes not in _CLASSES:
            raise ConfigError(f"lovasz: classes must be one of {list(_CLASSES)}, got {classes!r}")
        self.classes = classes
        self.per_image = bool(per_image)

    def _flat(self, probs: Tensor, label: Tensor) -> Tensor:
        """Loss of valid pixels ``probs [P, K]``, ``label [P]``."""
        zero = probs.sum() * 0.0
        if label.numel() == 0:
            return zero
        fg = F.one_hot(label, probs.shape[1]).to(probs.dtype)  # [P, K]
        errors = (fg - probs).abs()
        errors_sorted, perm = errors.sort(0, descending=True)
        grad = lovasz_grad(fg.gather(0, perm))
        per_class = (errors_sorted * grad).sum(0)  # [K]
        counted = fg.sum(0) > 0 if self.classes == "present" else torch.ones(
            probs.shape[1], dtype=torch.bool, device=probs.device)
        return _class_mean(per_class, counted, self.class_weight, zero)

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        _checked_weight(self.class_weight, logits.shape[1])
        probs = _resized(logits, label).softmax(1)
        valid = label != self.ignore_index
        if not self.per_image:
            return self._flat(probs.permute(0, 2, 3, 1)[valid], label[valid])
        losses = [self._flat(p.permute(1, 2, 0)[v], y[v])
                  for p, y, v in zip(probs, label, valid, strict=True) if bool(v.any())]
        return torch.stack(losses).mean() if losses else logits.sum() * 0.0


class CombinedLoss(nn.Module):
    """A weighted sum of pixel losses: ``sum_t weight_t * loss_t(logits, label)``.

    Built by :func:`build_loss` from a spec with ``terms``; the main loss has weight 1.

    Args:
        parts: ``(name, weight, loss)`` per term, names unique.
    """

    def __init__(self, parts: Sequence[tuple[str, float, nn.Module]]) -> None:
        super().__init__()
        self.names = [n for n, _, _ in parts]
        self.weights = [float(w) for _, w, _ in parts]
        self.losses = nn.ModuleList([m for _, _, m in parts])

    def parts(self, logits: Tensor, label: Tensor) -> dict[str, Tensor]:
        """Each term's unweighted value, by name."""
        return {n: m(logits, label) for n, m in zip(self.names, self.losses, strict=True)}

    def combine(self, parts: Mapping[str, Tensor]) -> Tensor:
        """``sum_t weight_t * parts[t]``."""
        return sum(w * parts[n] for n, w in zip(self.names, self.weights, strict=True))

    def forward(self, logits: Tensor, label: Tensor) -> Tensor:
        return self.combine(self.parts(logits, label))


# -- specs ---------------------------------------------------------------------------------
def loss_spec(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """Normalise a loss spec: ``"ohem"`` -> ``{"name": "ohem"}``; a mapping is copied (its
    ``terms`` too).

    Raises:
        ConfigError: not a string or a mapping with a ``name``.
    """
    if isinstance(spec, str):
        return {"name": spec}
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        out = dict(spec)
        if isinstance(out.get("terms"), list):
            out["terms"] = [dict(t) if isinstance(t, Mapping) else t for t in out["terms"]]
        return out
    raise ConfigError(f"a loss spec is a name or a mapping with a 'name' key, got {spec!r}")


def _term_specs(spec: Mapping[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    """``(weight, spec)`` of each entry of ``spec["terms"]``.

    Raises:
        ConfigError: ``terms`` not a list of loss specs, a weight that is no finite number
            >= 0, a term with its own ``terms``.
    """
    terms = spec.get("terms") or []
    if not isinstance(terms, list):
        raise ConfigError(f"loss terms must be a list of loss specs, got {terms!r}")
    out = []
    for i, term in enumerate(terms):
        t = loss_spec(term)
        w = t.pop("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"loss terms[{i}] ({t['name']}): weight must be a number >= 0, "
                              f"got {w!r}")
        if "terms" in t:
            raise ConfigError(f"loss terms[{i}] ({t['name']}): a term cannot have its own terms")
        out.append((float(w), t))
    return out


def _takes(cls: type, option: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return option in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _build_one(spec: dict[str, Any], ignore_index: int) -> nn.Module:
    opts = dict(spec)
    name = opts.pop("name")
    cls = LOSSES.get(name)
    if "weight" in opts:
        raise ConfigError(
            f"loss {name!r}: 'weight' is ambiguous here; class weights are 'class_weight' "
            "([w_0, ..., w_K-1], inverse_frequency or median_frequency), a mixing weight is "
            "'weight' inside 'terms'")
    try:
        return cls(ignore_index=ignore_index, **opts)
    except TypeError as e:
        raise ConfigError(f"loss {name!r}: bad option(s) {sorted(opts)} ({e})") from None


def build_loss(spec: str | Mapping[str, Any], ignore_index: int = 255, **kwargs) -> nn.Module:
    """Build a registered loss from a spec (``"ce"``, ``{"name": "ohem", "thresh": 0.7}``).

    ``kwargs`` are added to the main loss's options (the spec wins). A spec with ``terms``
    builds a :class:`CombinedLoss`: the main loss (weight 1) plus each term (its ``weight``,
    default 1; its own options, ``class_weight`` included: a term does not inherit the main
    loss's ``class_weight``).

    Raises:
        ConfigError: unknown name (listing the registered ones), an option the loss does not
            take (naming it), a bad option value, ``weight`` outside ``terms``, a bad term.
    """
    opts = {**kwargs, **loss_spec(spec)}
    terms = _term_specs(opts)
    opts.pop("terms", None)
    main = _build_one(opts, ignore_index)
    if not terms:
        return main
    parts = [(opts["name"], 1.0, main)]
    seen = {opts["name"]: 1}
    for w, t in terms:
        name = t["name"]
        seen[name] = seen.get(name, 0) + 1
        parts.append((name if seen[name] == 1 else f"{name}_{seen[name]}", w,
                      _build_one(t, ignore_index)))
    return CombinedLoss(parts)


def frequency_weightings(spec: str | Mapping[str, Any]) -> list[str]:
    """The frequency weightings (``inverse_frequency``, ``median_frequency``) a spec's
    ``class_weight`` values name, main loss and terms, sorted without repeats."""
    s = loss_spec(spec)
    specs = [s] + [t for t in s.get("terms") or [] if isinstance(t, Mapping)]
    return sorted({t["class_weight"] for t in specs
                   if isinstance(t.get("class_weight"), str)
                   and t["class_weight"] in FREQUENCY_WEIGHTINGS})


def resolve_class_weights(spec: str | Mapping[str, Any],
                          weights_of: Callable[[str], Sequence[float]]) -> dict[str, Any]:
    """The spec with every frequency ``class_weight`` replaced by ``weights_of(name)`` (a list
    of ``K`` floats); anything else unchanged."""
    s = loss_spec(spec)

    def one(t: dict[str, Any]) -> dict[str, Any]:
        cw = t.get("class_weight")
        if isinstance(cw, str) and cw in FREQUENCY_WEIGHTINGS:
            t = {**t, "class_weight": [float(v) for v in weights_of(cw)]}
        return t

    s = one(s)
    if isinstance(s.get("terms"), list):
        s["terms"] = [one(t) if isinstance(t, dict) else t for t in s["terms"]]
    return s


def check_class_weight_count(spec: str | Mapping[str, Any], num_classes: int,
                             where: str = "train.loss") -> None:
    """Check that each explicit ``class_weight`` list of ``spec`` has ``num_classes`` values.

    Raises:
        ConfigError: naming the spec entry and both counts.
    """
    s = loss_spec(spec)
    entries = [(where, s)] + [(f"{where}.terms[{i}]", t)
                              for i, t in enumerate(s.get("terms") or [])
                              if isinstance(t, Mapping)]
    for key, t in entries:
        cw = t.get("class_weight")
        if isinstance(cw, list | tuple) and len(cw) != num_classes:
            raise ConfigError(f"{key}.class_weight has {len(cw)} values, the dataset has "
                              f"{num_classes} classes")


# -- the criterion -------------------------------------------------------------------------
class SegmentationCriterion(nn.Module):
    """The training loss of a segmentor output.

    ``forward(output, label) -> (total, terms)``: ``output`` is logits ``[B, K, H, W]`` or a
    :class:`~fusionseg.models.segmentor.SegmentationOutput`; ``terms`` maps ``"main"``,
    each auxiliary output's name and each extra term's name to its (unweighted for auxiliary
    logits, as given for extra terms) value, detached; ``total = main + sum_a w_a * aux_a +
    sum_t extra_t``. With a combined loss (a spec with ``terms``) ``"main"`` is the combined
    value and ``"main_<term>"`` each part's unweighted value.

    An auxiliary output without a loss of its own uses the whole configured loss (terms and
    class weights included); one whose method names its own (e.g. ``{name: ce}``) uses that,
    with the main loss's ``class_weight`` when it sets none and its loss takes one.

    A spec whose ``class_weight`` names a frequency weighting (``median_frequency``) is
    built once :meth:`resolve_class_weights` has the weights (training calls it in
    ``SegmentationModule.setup``, from the training split); until then :attr:`pending` names
    the weightings and forward raises.

    Args:
        loss: spec of the main loss (see :func:`build_loss`).
        ignore_index: label value that contributes nothing (255).
        aux_weights: per-name weights replacing the ones the method declares
            (``train.aux_weights`` of the config).

    Raises:
        ConfigError: a bad spec (at construction; see :func:`build_loss`); forward before the
            frequency weights are resolved.
        ValueError: an auxiliary name that clashes with another term (at forward).
    """

    def __init__(self, loss: str | Mapping[str, Any] = "ce", ignore_index: int = 255,
                 aux_weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.spec = loss_spec(loss)
        self.ignore_index = ignore_index
        self.aux_weights = dict(aux_weights or {})
        self._built: dict[str, nn.Module] = {}
        #: the frequency weightings still to resolve (empty: built)
        self.pending: list[str] = frequency_weightings(self.spec)
        self.main: nn.Module | None = None
        if self.pending:  # check everything else now: build with placeholder weights
            build_loss(resolve_class_weights(self.spec, lambda _: [1.0]), ignore_index)
        else:
            self.main = build_loss(self.spec, ignore_index)

    def resolve_class_weights(self, weights_of: Callable[[str], Sequence[float]]) -> None:
        """Build the losses with ``weights_of(name)`` (``K`` floats) in place of each frequency
        ``class_weight`` of the spec (see :func:`resolve_class_weights`)."""
        self.spec = resolve_class_weights(self.spec, weights_of)
        self.main = build_loss(self.spec, self.ignore_index)
        self._built = {}
        self.pending = []

    def _loss_for(self, spec: Mapping[str, Any] | None) -> nn.Module:
        if spec is None:
            return self.main
        s = loss_spec(spec)
        cw = self.spec.get("class_weight")
        if ("class_weight" not in s and cw is not None
                and _takes(LOSSES.get(s["name"]), "class_weight")):
            s["class_weight"] = cw
        key = repr(sorted(s.items()))
        if key not in self._built:
            self._built[key] = build_loss(s, self.ignore_index)
        return self._built[key]

    def _main(self, logits: Tensor, label: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if self.main is None:
            raise ConfigError(f"class_weight {self.pending} is computed from the training "
                              "split: call resolve_class_weights first (training does)")
        if not isinstance(self.main, CombinedLoss):
            value = self.main(logits, label)
            return value, {"main": value.detach()}
        parts = self.main.parts(logits, label)
        value = self.main.combine(parts)
        return value, {"main": value.detach(),
                       **{f"main_{n}": v.detach() for n, v in parts.items()}}

    def forward(self, output: Tensor | SegmentationOutput,
                label: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if isinstance(output, Tensor):
            return self._main(output, label)
        main, terms = self._main(output.logits, label)
        total = main
        for name, aux in output.aux.items():
            if name in terms:
                raise ValueError(f"auxiliary output name {name!r} clashes with another loss term")
            target = label if aux.target is None else aux.target
            if aux.sample_mask is not None:
                keep = aux.sample_mask.to(device=target.device, dtype=torch.bool)
                target = target.masked_fill(~keep.view(-1, *([1] * (target.ndim - 1))),
                                            self.ignore_index)
            value = self._loss_for(aux.loss)(aux.logits, target)
            total = total + self.aux_weights.get(name, aux.weight) * value
            terms[name] = value.detach()
        for name, value in output.losses.items():
            if name in terms:
                raise ValueError(f"extra loss term name {name!r} clashes with another loss term")
            total = total + value
            terms[name] = value.detach()
        return total, terms
