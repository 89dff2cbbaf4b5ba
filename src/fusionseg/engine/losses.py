"""Segmentation losses, the loss registry, and the criterion that sums a method's loss terms.

* :data:`LOSSES`: registered pixel losses ``loss(logits [B, K, h, w], label [B, H, W]) ->
  scalar`` (``ce``, ``ohem``); a config names one by a spec, a mapping ``{name: ohem, thresh:
  0.7, min_kept_frac: 0.0625}`` (or just the name), built by :func:`build_loss`.
* :class:`SegmentationCriterion`: the training loss of any segmentor output - the main loss,
  each auxiliary output's weighted loss and the method's extra terms (see
  :mod:`fusionseg.models.segmentor` for the route), with every term returned by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.segmentor import SegmentationOutput
from ..registry import Registry

__all__ = [
    "LOSSES",
    "CrossEntropy",
    "OhemCrossEntropy",
    "SegmentationCriterion",
    "build_loss",
    "loss_spec",
    "register_loss",
]

#: ``name -> loss class``, built with ``cls(ignore_index=..., **options)``
LOSSES: Registry[type[nn.Module]] = Registry("loss")


def register_loss(name: str):
    """Class decorator registering a pixel loss ``cls(ignore_index=255, **options)``."""
    return LOSSES.register(name)


@register_loss("ce")
class CrossEntropy(nn.Module):
    """Pixel-wise cross-entropy over logits ``[B, K, H, W]`` and labels ``[B, H, W]`` (int64).

    Logits at another resolution than the label are bilinearly resized to it first.
    Pixels equal to ``ignore_index`` contribute nothing; a batch with no valid pixel gives 0.
    """

    def __init__(self, ignore_index: int = 255, weight: torch.Tensor | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight, persistent=False)

    def pixel_losses(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Per-pixel losses ``[B*H*W]`` (0 at ignored pixels)."""
        if logits.shape[-2:] != label.shape[-2:]:
            logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear",
                                   align_corners=False)
        return F.cross_entropy(logits.float(), label, weight=self.weight,
                               ignore_index=self.ignore_index, reduction="none").flatten()

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        losses = self.pixel_losses(logits, label)
        valid = (label != self.ignore_index).flatten()
        return losses[valid].mean() if valid.any() else losses.sum() * 0.0


@register_loss("ohem")
class OhemCrossEntropy(CrossEntropy):
    """Online hard example mining cross-entropy.

    Keeps the pixels whose loss exceeds ``-log(thresh)`` (i.e. predicted probability of the
    true class below ``thresh``), but at least ``min_kept_frac`` of the valid pixels (the
    hardest ones). Defaults follow the DELIVER/CMNeXt/StitchFusion recipe: threshold 0.7, at
    least 1/16 of the valid pixels (StitchFusion official configs, ``semseg/losses.py``).
    """

    def __init__(self, ignore_index: int = 255, thresh: float = 0.7,
                 min_kept_frac: float = 1 / 16, weight: torch.Tensor | None = None):
        super().__init__(ignore_index, weight)
        self.loss_thresh = -float(torch.log(torch.tensor(thresh)))
        self.min_kept_frac = min_kept_frac

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        losses = self.pixel_losses(logits, label)
        valid = (label != self.ignore_index).flatten()
        losses = losses[valid]
        if losses.numel() == 0:
            return logits.sum() * 0.0
        n_min = max(1, int(self.min_kept_frac * losses.numel()))
        hard = losses[losses > self.loss_thresh]
        if hard.numel() < n_min:
            hard, _ = losses.topk(n_min)
        return hard.mean()


def loss_spec(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """Normalise a loss spec: ``"ohem"`` -> ``{"name": "ohem"}``; a mapping is copied.

    Raises:
        ConfigError: not a string or a mapping with a ``name``.
    """
    if isinstance(spec, str):
        return {"name": spec}
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        return dict(spec)
    raise ConfigError(f"a loss spec is a name or a mapping with a 'name' key, got {spec!r}")


def build_loss(spec: str | Mapping[str, Any], ignore_index: int = 255, **kwargs) -> nn.Module:
    """Build a registered loss from a spec (``"ce"``, ``{"name": "ohem", "thresh": 0.7}``).

    ``kwargs`` are added to the spec's options (the spec wins).

    Raises:
        ConfigError: unknown name (listing the registered ones), or an option the loss does not
            take (naming it).
    """
    opts = {**kwargs, **loss_spec(spec)}
    name = opts.pop("name")
    cls = LOSSES.get(name)
    try:
        return cls(ignore_index=ignore_index, **opts)
    except TypeError as e:
        raise ConfigError(f"loss {name!r}: bad option(s) {sorted(opts)} ({e})") from None


class SegmentationCriterion(nn.Module):
    """The training loss of a segmentor output.

    ``forward(output, label) -> (total, terms)``: ``output`` is logits ``[B, K, H, W]`` or a
    :class:`~fusionseg.models.segmentor.SegmentationOutput`; ``terms`` maps ``"main"``,
    each auxiliary output's name and each extra term's name to its (unweighted for auxiliary
    logits, as given for extra terms) value, detached; ``total = main + sum_a w_a * aux_a +
    sum_t extra_t``.

    Args:
        loss: spec of the main loss (also used for auxiliary outputs without their own).
        ignore_index: label value that contributes nothing (255).
        aux_weights: per-name weights replacing the ones the method declares
            (``train.aux_weights`` of the config).

    Raises (at forward):
        ValueError: an auxiliary name that clashes with another term.
    """

    def __init__(self, loss: str | Mapping[str, Any] = "ce", ignore_index: int = 255,
                 aux_weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.spec = loss_spec(loss)
        self.ignore_index = ignore_index
        self.main = build_loss(self.spec, ignore_index)
        self.aux_weights = dict(aux_weights or {})
        self._built: dict[str, nn.Module] = {}

    def _loss_for(self, spec: Mapping[str, Any] | None) -> nn.Module:
        if spec is None:
            return self.main
        key = repr(sorted(loss_spec(spec).items()))
        if key not in self._built:
            self._built[key] = build_loss(spec, self.ignore_index)
        return self._built[key]

    def forward(self, output: Tensor | SegmentationOutput,
                label: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if isinstance(output, Tensor):
            main = self.main(output, label)
            return main, {"main": main.detach()}
        main = self.main(output.logits, label)
        total = main
        terms = {"main": main.detach()}
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
