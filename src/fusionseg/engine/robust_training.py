"""Robust training against sensor failure, for any method: ``train.robust: true``.

Every training batch ``x`` of ``B`` samples is paired with a corrupted copy ``x'`` and both run
through the model as one batch of ``2B`` (one forward pass)::

    x'  = rectangles(dropout(x))          per sample: modality dropout (each modality dropped
                                          with its probability, never all), then with
                                          probability rect_prob one present modality loses a
                                          random rectangle (MCRM-style)
    z, z' = model([x; x'])                 main logits of the two halves
    loss  = L([z; z'], [y; y'])            the run's loss (and the method's auxiliary terms)
                                          over both halves
          + w * T^2 * KL(softmax(sg(z) / T) || softmax(z' / T))   on the corrupted samples

``sg`` is stop-gradient: the full-modality prediction of the same forward pass is the teacher,
so no second model is kept. Sources: the modality dropout of the missing-modality literature;
the rectangles follow MoBaNet's modality-conditional random masking (MCRM, official
``peft_modules.py``, here for any number of modalities, see
:func:`~fusionseg.models.layers.random_rectangle`); the full-to-partial distillation follows
the any-modality segmentation papers (AnySeg, Zheng et al. 2024, and MAGIC++, Zheng et al.
2024, distil multimodal predictions into missing-modality ones), with the temperature-scaled KL
of Hinton et al. 2015. Ours: the teacher is the same network's full-input half of the batch
(AnySeg / MAGIC++ use a separately trained teacher or feature-level terms), and the KL is
averaged over the valid (non-ignored) pixels of the corrupted samples only.

**Second stage** (``train.robust.teacher``): from a trained full-modality model
(``train.init_from``), distil from a frozen copy of a full-modality model ``T`` instead::

    x'   = rectangles(subset(x))             per sample: a modality subset (dropout, or a
                                              uniform subset size k ~ U{1..M}), the full set
                                              kept with probability full_share
    z'   = model(x'),  t = T(x)               T frozen, in eval mode, on the full input
    loss = L(z', y) (and the method's terms)
         + w * T^2 * KL(softmax(t / T) || softmax(z' / T))     on every valid pixel
         + w_f * mean_i MSE(f'_i, f^T_i)       fused features (the decode head's input), where
                                              the method declares them
                                              (``Segmentor.fused_feature_module``)

Sources: RMMSS (arXiv 2505.12861) keeps full-modality mIoU within 0.1 of its teacher with a
second stage distilling from a frozen full-modality model; AnySeg / RobustSeg (public code
``zhengxuJosh/AnySeg``) sample the subset size uniformly and distil logits (KL) and features
from a frozen multimodal teacher. Ours: one batch (no doubling), the KL over all samples (the
full-set ones too, which keeps the full prediction at the teacher's), an MSE feature term.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..models.layers import random_rectangle
from ..models.segmentor import SegmentationOutput
from .masking import sample_modality_keep, sample_modality_subsets

__all__ = ["FeatureTap", "RobustTraining", "consistency_kl", "feature_distillation"]


def consistency_kl(student: Tensor, teacher: Tensor, valid: Tensor,
                   temperature: float = 1.0) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` averaged over valid pixels.

    Args:
        student, teacher: logits ``[N, K, H, W]`` (``teacher`` is detached here).
        valid: ``bool[N, H, W]``, the pixels that count.
        temperature: ``T`` > 0.

    Returns:
        A scalar (0 when no pixel is valid), computed in float32.
    """
    t = F.log_softmax(teacher.detach().float() / temperature, dim=1)
    s = F.log_softmax(student.float() / temperature, dim=1)
    kl = (t.exp() * (t - s)).sum(1)  # [N, H, W]
    n = valid.sum()
    if n == 0:
        return student.sum() * 0.0
    return (kl * valid).sum() / n * temperature ** 2


def feature_distillation(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """Mean over levels of the mean squared difference of feature maps, in float32.

    Args:
        student, teacher: matching lists of maps ``[B, C_i, H_i, W_i]`` (``teacher``
            detached here).

    Raises:
        ValueError: the lists differ in length or a level in shape.
    """
    if len(student) != len(teacher) or not student:
        raise ValueError(f"feature distillation needs matching levels, got {len(student)} "
                         f"and {len(teacher)}")
    terms = []
    for s, t in zip(student, teacher, strict=True):
        if s.shape != t.shape:
            raise ValueError(f"student feature {tuple(s.shape)} vs teacher {tuple(t.shape)}")
        terms.append(F.mse_loss(s.float(), t.detach().float()))
    return torch.stack(terms).mean()


class FeatureTap:
    """Records the input of the first call of a model's fused-feature module in a forward.

    ``model.fused_feature_module`` names the submodule whose input is the method's fused
    features (``"decode_head"`` for sum fusion, StitchFusion and MoBaNet); a model without one
    records nothing (``value`` stays ``None``). Use as a context manager around the forward.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        name = getattr(model, "fused_feature_module", None)
        self.module = model.get_submodule(name) if name else None
        self.value: list[Tensor] | None = None
        self._handle = None

    def _hook(self, module, args) -> None:
        if self.value is None and args:
            x = args[0]
            self.value = [x] if isinstance(x, Tensor) else [t for t in x if isinstance(t, Tensor)]

    def __enter__(self) -> FeatureTap:
        self.value = None
        if self.module is not None:
            self._handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class RobustTraining:
    """The robust recipe's batch doubling, corruption and consistency loss.

    Args:
        modalities: the model's modalities (column order of ``present``).
        modality_dropout: drop probability per modality (a float, or ``{modality: p}``; a
            modality not named keeps 0).
        rect_prob: probability per sample that one of its kept modalities loses a rectangle.
        rect_area, rect_aspect: rectangle area (fraction of the image) and aspect ranges.
        consistency_weight: ``w`` of the KL term (0: no distillation).
        temperature: ``T``.
        corrupt_weight: ``lambda``, weight of the corrupted half's loss: the loss is
            ``(L(z, y) + lambda * L(z', y)) / (1 + lambda)`` (1: the plain mean over ``2B``).
        ignore_index: label value of pixels left out of the KL average.
        sampling: ``"dropout"`` (each modality dropped with ``modality_dropout``) or
            ``"uniform"`` (a uniform subset size, :func:`~fusionseg.engine.masking.
            sample_modality_subsets`).
        full_share: probability that a sample keeps its full set (``None``: what the sampling
            gives: ``(1 - p)^M``-ish for dropout, ``1/M`` for uniform).
        distill: the second stage: a frozen teacher supplies the KL target (see the module
            docstring); no batch doubling.
        feature_weight: ``w_f`` of the feature term (second stage only).

    Raises:
        ConfigError: a probability outside ``[0, 1]``, a dropout key that is not a modality,
            a non-positive temperature, an unknown sampling.
    """

    def __init__(self, modalities: Sequence[str], modality_dropout: float | Mapping[str, float]
                 = 0.25, rect_prob: float = 0.25, rect_area: Sequence[float] = (0.1, 0.3),
                 rect_aspect: Sequence[float] = (0.5, 2.0), consistency_weight: float = 1.0,
                 temperature: float = 2.0, ignore_index: int = 255,
                 corrupt_weight: float = 1.0, sampling: str = "dropout",
                 full_share: float | None = None, distill: bool = False,
                 feature_weight: float = 0.0) -> None:
        self.modalities = list(modalities)
        if sampling not in ("dropout", "uniform"):
            raise ConfigError(f"robust.sampling must be 'dropout' or 'uniform', got {sampling!r}")
        if full_share is not None and not 0 <= full_share <= 1:
            raise ConfigError(f"robust.full_share must lie in [0, 1], got {full_share}")
        if feature_weight < 0:
            raise ConfigError(f"robust.feature_weight must be >= 0, got {feature_weight}")
        self.sampling = sampling
        self.full_share = None if full_share is None else float(full_share)
        self.distill = bool(distill)
        self.feature_weight = float(feature_weight)
        if isinstance(modality_dropout, Mapping):
            unknown = sorted(set(modality_dropout) - set(self.modalities))
            if unknown:
                raise ConfigError(f"robust.modality_dropout names {unknown}, not modalities of "
                                 f"the model {self.modalities}")
            self.p_drop = [float(modality_dropout.get(m, 0.0)) for m in self.modalities]
        else:
            self.p_drop = [float(modality_dropout)] * len(self.modalities)
        if not all(0 <= p <= 1 for p in [*self.p_drop, rect_prob]):
            raise ConfigError("robust.modality_dropout and robust.rect_prob must lie in [0, 1]")
        if temperature <= 0:
            raise ConfigError(f"robust.temperature must be > 0, got {temperature}")
        self.rect_prob = float(rect_prob)
        self.rect_area = (float(rect_area[0]), float(rect_area[1]))
        self.rect_aspect = (float(rect_aspect[0]), float(rect_aspect[1]))
        self.consistency_weight = float(consistency_weight)
        self.temperature = float(temperature)
        self.ignore_index = ignore_index
        if corrupt_weight < 0:
            raise ConfigError(f"robust.corrupt_weight must be >= 0, got {corrupt_weight}")
        self.corrupt_weight = float(corrupt_weight)

    def halves_loss(self, criterion, output, label: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``criterion`` (a :class:`~fusionseg.engine.losses.SegmentationCriterion`) over the
        paired batch's output, the corrupted half weighted by :attr:`corrupt_weight`.

        With weight 1 this is ``criterion(output, label)``. Otherwise the main and auxiliary
        logits (and auxiliary targets) are split into the two halves; a method's extra loss
        terms (``output.losses``, already reduced over the batch) count once.
        """
        if self.corrupt_weight == 1.0:
            return criterion(output, label)
        b = label.shape[0] // 2
        lam = self.corrupt_weight
        if isinstance(output, Tensor):
            halves = [output[:b], output[b:]]
            extra: dict[str, Tensor] = {}
        else:
            halves = [SegmentationOutput(
                output.logits[sl],
                aux={k: a.select(sl) for k, a in output.aux.items()})
                for sl in (slice(0, b), slice(b, None))]
            extra = dict(output.losses)
        (l_full, t_full), (l_cor, t_cor) = (criterion(h, y) for h, y in
                                            zip(halves, (label[:b], label[b:]), strict=True))
        total = (l_full + lam * l_cor) / (1 + lam)
        terms = {k: (t_full[k] + lam * t_cor[k]) / (1 + lam) for k in t_full}
        for k, v in extra.items():
            total = total + v
            terms[k] = v.detach()
        return total, terms

    def sample_keep(self, present: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Which modalities each sample keeps (``bool[B, M]`` within ``present``), by
        :attr:`sampling` and :attr:`full_share`."""
        if self.sampling == "uniform":
            return sample_modality_subsets(present, self.full_share, generator)
        keep = sample_modality_keep(present, self.p_drop, generator)
        if self.full_share is not None:
            full = torch.rand(present.shape[0], generator=generator) < self.full_share
            keep = torch.where(full.view(-1, 1).to(keep.device), present.to(keep.device), keep)
        return keep

    def distillation_loss(self, student: Tensor, teacher: Tensor, label: Tensor) -> Tensor:
        """``w * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over the valid
        pixels of every sample (second stage). Logits ``[B, K, H, W]``, labels ``[B, H, W]``
        (resized nearest to the logits when they differ)."""
        if label.shape[-2:] != student.shape[-2:]:
            label = F.interpolate(label[:, None].float(), size=student.shape[-2:],
                                  mode="nearest")[:, 0].long()
        if teacher.shape[-2:] != student.shape[-2:]:
            teacher = F.interpolate(teacher.float(), size=student.shape[-2:], mode="bilinear",
                                    align_corners=False)
        valid = label != self.ignore_index
        return self.consistency_weight * consistency_kl(student, teacher, valid,
                                                        self.temperature)

    def corrupt(self, batch: Mapping[str, Any], generator: torch.Generator | None = None
                ) -> tuple[dict[str, Any], Tensor]:
        """The corrupted copy ``x'`` of ``batch`` and which samples changed.

        Returns:
            ``(batch', changed bool[B])``: ``batch'`` with dropped modalities zeroed and
            ``present`` false, rectangles set to 0 (the normalised mean); ``batch`` is not
            modified.
        """
        names = [m for m in self.modalities if m in batch]
        b = batch[names[0]].shape[0]
        present = batch.get("present")
        present = (torch.tensor([[m in batch for m in self.modalities]] * b)
                   if present is None else torch.as_tensor(present).cpu().bool())
        keep = self.sample_keep(present, generator)
        changed = (keep != present).any(1)
        out = dict(batch)
        tensors = {m: batch[m].clone() for m in names}
        for j, m in enumerate(self.modalities):
            if m in tensors:
                tensors[m] *= keep[:, j].to(tensors[m]).view(-1, 1, 1, 1)
        if self.rect_prob > 0:
            h, w = tensors[names[0]].shape[-2:]
            hit = torch.rand(b, generator=generator) < self.rect_prob
            for i in torch.nonzero(hit).flatten().tolist():
                cols = [j for j in torch.nonzero(keep[i]).flatten().tolist()
                        if self.modalities[j] in tensors]
                if not cols:
                    continue
                j = cols[int(torch.randint(len(cols), (), generator=generator))]
                top, left, bh, bw = random_rectangle(h, w, self.rect_area, self.rect_aspect,
                                                     generator)
                tensors[self.modalities[j]][i, :, top:top + bh, left:left + bw] = 0
                changed[i] = True
        out.update(tensors)
        out["present"] = keep.to(tensors[names[0]].device)
        return out, changed

    def paired_batch(self, batch: Mapping[str, Any], generator: torch.Generator | None = None
                     ) -> tuple[dict[str, Any], Tensor]:
        """``[x; x']``: the batch followed by its corrupted copy, as one batch of ``2B``.

        Tensors (modalities, ``label``) are concatenated along dim 0, ``present`` too (all true
        for the first half when ``batch`` has none), ``meta`` lists joined.

        Returns:
            ``(paired batch, changed bool[B])`` (see :meth:`corrupt`).
        """
        corrupted, changed = self.corrupt(batch, generator)
        names = [m for m in self.modalities if m in batch]
        b = batch[names[0]].shape[0]
        present = batch.get("present")
        if present is None:
            present = torch.tensor([[m in batch for m in self.modalities]] * b)
        out: dict[str, Any] = {}
        for k, v in batch.items():
            if k == "present":
                continue
            if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == b:
                out[k] = torch.cat([v, corrupted[k]], dim=0)
            elif k == "meta" and isinstance(v, list):
                out[k] = v + v
            else:
                out[k] = v
        out["present"] = torch.cat([torch.as_tensor(present).bool().to(corrupted["present"]),
                                    corrupted["present"]], dim=0)
        return out, changed

    def consistency_loss(self, logits: Tensor, label: Tensor, changed: Tensor) -> Tensor:
        """The weighted KL term from the paired batch's main logits ``[2B, K, H, W]`` and labels
        ``[2B, H, W]``: the first half teaches the second on the ``changed`` samples."""
        b = logits.shape[0] // 2
        teacher, student = logits[:b], logits[b:]
        lab = label[b:]
        if lab.shape[-2:] != student.shape[-2:]:
            lab = F.interpolate(lab[:, None].float(), size=student.shape[-2:],
                                mode="nearest")[:, 0].long()
        valid = (lab != self.ignore_index) & changed.to(lab.device).view(-1, 1, 1)
        return self.consistency_weight * consistency_kl(student, teacher, valid,
                                                        self.temperature)
