"""Segmentation losses: cross-entropy and OHEM cross-entropy, both with ``ignore_index``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def build_loss(name: str, ignore_index: int = 255, **kwargs) -> nn.Module:
    """``"ce"`` -> :class:`CrossEntropy`, ``"ohem"`` -> :class:`OhemCrossEntropy`.

    Raises:
        ValueError: unknown name.
    """
    if name == "ce":
        return CrossEntropy(ignore_index)
    if name == "ohem":
        return OhemCrossEntropy(ignore_index, **kwargs)
    raise ValueError(f"unknown loss {name!r}; use 'ce' or 'ohem'")
