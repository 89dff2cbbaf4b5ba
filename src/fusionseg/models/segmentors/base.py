"""Segmentor base class, the batch convention and the training-time output type.

Batch convention (see docs / architecture spec, "The Sample convention"):

* a batch is a ``dict``; each present modality name maps to a float tensor ``[B, C, H, W]``;
* a missing modality is an absent key;
* when samples of one batch miss different modalities, the batch carries
  ``"present": bool[B, M]`` whose columns follow the model's ``modalities`` list, and the
  missing samples' tensors are zeros;
* ``"label"`` (int64 ``[B, H, W]``), ``"meta"`` (list of dicts) and keys of modalities the
  model does not use are ignored by the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["Segmentor", "SegmentationOutput", "ModalityInput"]

#: ``(modality name, image [B, 3, H, W], present mask bool[B] or None = all present)``
ModalityInput = tuple[str, Tensor, Tensor | None]


@dataclass
class SegmentationOutput:
    """Training-time output of models with auxiliary heads.

    Attributes:
        logits: main logits ``[B, K, H, W]`` at input size.
        aux: auxiliary logits by name, each ``[B, K, H', W']`` (the loss resizes as needed).
    """

    logits: Tensor
    aux: dict[str, Tensor] = field(default_factory=dict)


class Segmentor(nn.Module):
    """Base class of fusionseg segmentors.

    ``forward(batch: dict) -> Tensor[B, K, H, W]`` (logits at input size), or a
    :class:`SegmentationOutput` in training mode for models with auxiliary heads.

    Args:
        modalities: ordered modality names the model consumes (the order defines the columns
            of ``batch["present"]`` and the stream order of methods that need one).
        num_classes: ``K``.

    Subclasses set ``self.backbone`` (or override :meth:`backbone_modules` when they have more
    than one encoder) so that :meth:`freeze_backbone` knows what to freeze.
    """

    def __init__(self, modalities: Sequence[str], num_classes: int) -> None:
        super().__init__()
        if isinstance(modalities, str):
            modalities = [modalities]
        modalities = list(modalities)
        if not modalities:
            raise ValueError("a segmentor needs at least one modality")
        dup = sorted({m for m in modalities if modalities.count(m) > 1})
        if dup:
            raise ValueError(f"duplicate modalities {dup} in {modalities}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.modalities: list[str] = modalities
        self.num_classes = int(num_classes)
        self.backbone_frozen = False

    # ------------------------------------------------------------------ parameters
    def param_counts(self) -> dict[str, int]:
        """``{"total": all parameters, "trainable": those with requires_grad}``."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"total": total, "trainable": trainable}

    def backbone_modules(self) -> list[nn.Module]:
        """Modules frozen by :meth:`freeze_backbone` (default: ``[self.backbone]``)."""
        bb = getattr(self, "backbone", None)
        return [bb] if isinstance(bb, nn.Module) else []

    def freeze_backbone(self, freeze: bool = True) -> Segmentor:
        """Freeze (or unfreeze) the backbone weights.

        Frozen parameters get ``requires_grad=False`` and every BatchNorm inside the frozen
        modules stays in eval mode (running statistics fixed) through later ``train()`` calls.
        Modules added to the backbone afterwards are not affected. Returns ``self``.
        """
        mods = self.backbone_modules()
        if freeze and not mods:
            raise ValueError(f"{type(self).__name__} has no backbone to freeze")
        for m in mods:
            for p in m.parameters():
                p.requires_grad_(not freeze)
        self.backbone_frozen = freeze
        return self.train(self.training)

    def _frozen_batchnorms(self) -> Iterable[_BatchNorm]:
        seen: set[int] = set()
        if self.backbone_frozen:
            for m in self.backbone_modules():
                for bn in m.modules():
                    if isinstance(bn, _BatchNorm):
                        seen.add(id(bn))
                        yield bn
        for bn in self.modules():  # any BatchNorm whose affine parameters are all frozen
            if isinstance(bn, _BatchNorm) and id(bn) not in seen:
                params = list(bn.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    yield bn

    def train(self, mode: bool = True) -> Segmentor:
        """``nn.Module.train`` that keeps frozen BatchNorm layers in eval mode."""
        super().train(mode)
        if mode:
            for bn in self._frozen_batchnorms():
                bn.eval()
        return self

    # ------------------------------------------------------------------ batch convention
    def _modality_inputs(self, batch: Mapping[str, object]) -> list[ModalityInput]:
        """Select and check the model's modalities in ``batch``.

        Args:
            batch: dict with modality tensors ``[B, C, H, W]`` (float), optionally
                ``"present": bool[B, M]`` (columns in ``self.modalities`` order), ``"label"``,
                ``"meta"`` and other keys, which are ignored.

        Returns:
            ``[(name, x [B, 3, H, W], mask bool[B] or None), ...]`` for the configured
            modalities whose key is in the batch, in ``self.modalities`` order. 1-channel
            tensors are repeated to 3 channels. ``mask`` is the modality's ``present`` column,
            or ``None`` when there is no ``present`` entry or the column is all true.

        Raises:
            ValueError: not a dict; no configured modality present; a tensor that is not
                ``[B, C, H, W]`` floating point; a channel count other than 1 or 3 (names the
                modality and the count); batch-size or spatial-size mismatch across modalities;
                a ``present`` of the wrong shape; a sample with no present modality.
        """
        if not isinstance(batch, Mapping):
            raise ValueError(
                f"a batch must be a dict of modality tensors, got {type(batch).__name__}"
            )
        present = batch.get("present")
        if present is not None:
            present = torch.as_tensor(present)
            if present.ndim != 2 or present.shape[1] != len(self.modalities):
                raise ValueError(
                    f"batch['present'] must be bool[B, {len(self.modalities)}] with columns "
                    f"{self.modalities}, got shape {tuple(present.shape)}"
                )
            present = present.to(torch.bool)
        out: list[ModalityInput] = []
        ref: tuple[str, torch.Size] | None = None
        for col, name in enumerate(self.modalities):
            if name not in batch:
                continue
            x = batch[name]
            if not isinstance(x, Tensor) or x.ndim != 4:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"modality {name!r}: expected a tensor [B, C, H, W], got {shape}")
            if not x.is_floating_point():
                raise ValueError(
                    f"modality {name!r}: expected a floating-point tensor, got {x.dtype}"
                )
            c = x.shape[1]
            if c == 1:
                x = x.expand(-1, 3, -1, -1)
            elif c != 3:
                raise ValueError(
                    f"modality {name!r} has {c} channels; the model takes 3-channel images "
                    f"(1-channel ones are repeated)"
                )
            b, _, h, w = x.shape
            if ref is None:
                ref = (name, x.shape)
            elif (b, h, w) != (ref[1][0], ref[1][2], ref[1][3]):
                raise ValueError(
                    f"modality {name!r} has batch/size {(b, h, w)} but {ref[0]!r} has "
                    f"{(ref[1][0], ref[1][2], ref[1][3])}; modalities must be pixel-aligned"
                )
            mask = None
            if present is not None:
                if present.shape[0] != b:
                    raise ValueError(
                        f"batch['present'] has {present.shape[0]} rows but modality {name!r} "
                        f"has batch size {b}"
                    )
                m = present[:, col].to(x.device)
                mask = None if bool(m.all()) else m
            out.append((name, x, mask))
        if not out:
            raise ValueError(
                f"none of the model's modalities {self.modalities} is in the batch "
                f"(keys: {sorted(k for k in batch if isinstance(k, str))})"
            )
        if present is not None:
            cols = [self.modalities.index(n) for n, _, _ in out]
            empty = (~present[:, cols].any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"sample(s) {empty} of the batch have no present modality")
        return out
