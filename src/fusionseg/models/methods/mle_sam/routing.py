"""MLE-SAM's modality routing and fusion of one feature level.

Source: Zhu et al., "Customize Segment Anything Model for Multi-Modal Semantic Segmentation with
Mixture of LoRA Experts" (MLE-SAM), arXiv 2412.04220. No official code is public; the abstract
fixes "a MoE routing strategy that produces weighted features across modalities" and
"multi-scale feature fusion"; summaries of the paper add a weighted path and an integrated path
(ablation, secondhand: weighted only 58.35, integrated only 61.87, both 64.08 mIoU on DELIVER).
The form below is our reconstruction (``../shared/specs/mle_sam.md``), every choice an
argument::

    F_m: [B, C, h, w] per modality m (the FPN level of stream m), p_m: bool[B] present
    score_m = gate_m(F_m)                         # [B, 1, h, w]  (gate="pixel", 1x1 conv per
                                                  #  modality) or [B, 1, 1, 1] (gate="image":
                                                  #  Linear per modality on the mean embedding,
                                                  #  MemorySAM's description of MLE-SAM's router)
    score_m = -inf where not p_m (and outside the top-k of the present ones, top_k=k)
    w = softmax_m(score)                          # over the present modalities only
    weighted = sum_m w_m F_m
    integrated = Conv1x1([p_1 F_1, .., p_M F_M, p_1, .., p_M])     (integrate="conv")
               | mean of the present F_m                            (integrate="mean")
    fused = weighted + integrated                 (either path can be switched off)

A missing modality is excluded from the softmax and enters the integrated path as zeros with
its presence channel at 0, so any non-empty subset of the trained modalities runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ....errors import ConfigError

__all__ = ["ModalityRouter"]


class ModalityRouter(nn.Module):
    """Weighted + integrated fusion of ``M`` modality feature maps of one level.

    Args:
        channels: ``C``.
        num_modalities: ``M`` (the model's modality count).
        gate: ``"pixel"`` (a score per pixel, default) or ``"image"`` (one per image, from the
            spatial mean).
        top_k: keep only the ``k`` best-scoring present modalities in the softmax (``None``:
            all present).
        weighted: use the weighted path.
        integrate: ``"conv"`` (default), ``"mean"`` or ``None`` (no integrated path).

    ``forward(feats [M, B, C, h, w], present bool[B, M]) -> [B, C, h, w]``; ``last_weights``
    holds the routing weights of the last call, ``[B, M, h', w']`` (``None`` without the
    weighted path).

    Raises:
        ValueError: unknown ``gate`` / ``integrate``, no path, a non-positive ``top_k``; at
            forward, shapes that do not match ``M`` or a sample with no present modality.
    """

    def __init__(self, channels: int, num_modalities: int, gate: str = "pixel",
                 top_k: int | None = None, weighted: bool = True,
                 integrate: str | None = "conv") -> None:
        super().__init__()
        if gate not in ("pixel", "image"):
            raise ConfigError(f"gate must be 'pixel' or 'image', got {gate!r}")
        if integrate not in ("conv", "mean", None):
            raise ConfigError(f"integrate must be 'conv', 'mean' or None, got {integrate!r}")
        if not weighted and integrate is None:
            raise ConfigError("ModalityRouter needs the weighted or the integrated path")
        if top_k is not None and int(top_k) < 1:
            raise ConfigError(f"top_k must be >= 1 or None, got {top_k}")
        self.channels, self.num_modalities = int(channels), int(num_modalities)
        self.gate_kind, self.top_k = gate, None if top_k is None else int(top_k)
        self.integrate_kind = integrate
        m, c = self.num_modalities, self.channels
        if weighted:
            # one 1x1 gate per modality, as a [M, C] weight (a grouped 1x1 conv)
            self.gate_weight = nn.Parameter(torch.zeros(m, c))
            self.gate_bias = nn.Parameter(torch.zeros(m))
            nn.init.normal_(self.gate_weight, std=c ** -0.5)
        else:
            self.gate_weight = self.gate_bias = None
        self.integrate = nn.Conv2d(m * c + m, c, 1) if integrate == "conv" else None
        self.last_weights: Tensor | None = None

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, modalities={self.num_modalities}, "
                f"gate={self.gate_kind!r}, top_k={self.top_k}, "
                f"weighted={self.gate_weight is not None}, integrate={self.integrate_kind!r}")

    def scores(self, feats: Tensor) -> Tensor:
        """Gate scores ``[B, M, h, w]`` (pixel) or ``[B, M, 1, 1]`` (image) of ``feats [M, B, C,
        h, w]``."""
        if self.gate_kind == "image":
            feats = feats.mean(dim=(-2, -1), keepdim=True)
        s = torch.einsum("mbchw,mc->bmhw", feats, self.gate_weight.to(feats.dtype))
        return s + self.gate_bias.to(feats.dtype).view(1, -1, 1, 1)

    def routing_weights(self, feats: Tensor, present: Tensor) -> Tensor:
        """Softmax weights ``[B, M, h', w']`` over the present (top-k) modalities."""
        s = self.scores(feats).float()
        mask = present.view(*present.shape, 1, 1).expand_as(s)
        s = s.masked_fill(~mask, float("-inf"))
        if self.top_k is not None and self.top_k < self.num_modalities:
            kth = s.topk(self.top_k, dim=1).values[:, -1:]
            s = s.masked_fill(s < kth, float("-inf"))
        return torch.softmax(s, dim=1)

    def forward(self, feats: Tensor, present: Tensor) -> Tensor:
        m, b = feats.shape[:2]
        if m != self.num_modalities or feats.ndim != 5 or feats.shape[2] != self.channels:
            raise ValueError(f"ModalityRouter expects [{self.num_modalities}, B, "
                             f"{self.channels}, h, w], got {tuple(feats.shape)}")
        present = present.to(device=feats.device, dtype=torch.bool)
        if present.shape != (b, m):
            raise ValueError(f"present must be bool[{b}, {m}], got {tuple(present.shape)}")
        if not bool(present.any(dim=1).all()):
            raise ValueError("every sample needs at least one present modality")
        pm = present.t().to(feats.dtype).view(m, b, 1, 1, 1)  # [M, B, 1, 1, 1]
        feats = feats * pm  # absent streams contribute exact zeros
        out: Tensor | None = None
        self.last_weights = None
        if self.gate_weight is not None:
            w = self.routing_weights(feats, present).to(feats.dtype)  # [B, M, h', w']
            self.last_weights = w.detach()
            out = torch.einsum("bmhw,mbchw->bchw", w.expand(-1, -1, *feats.shape[-2:]), feats)
        if self.integrate_kind == "mean":
            n = pm.sum(0)  # [B, 1, 1, 1]
            integ = feats.sum(0) / n
            out = integ if out is None else out + integ
        elif self.integrate is not None:
            h, w_ = feats.shape[-2:]
            flags = pm.view(m, b, 1, 1).permute(1, 0, 2, 3).expand(b, m, h, w_)
            stacked = torch.cat([feats.permute(1, 0, 2, 3, 4).reshape(b, -1, h, w_), flags], 1)
            integ = self.integrate(stacked)
            out = integ if out is None else out + integ
        assert out is not None
        return out

    @staticmethod
    def stack(maps: Sequence[Tensor]) -> Tensor:
        """``M`` maps ``[B, C, h, w]`` -> ``[M, B, C, h, w]``."""
        return torch.stack(list(maps), dim=0)
