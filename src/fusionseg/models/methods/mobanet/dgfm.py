"""DGFM: MoBaNet's Difference-Guided Gated Fusion Module.

Source: MoBaNet (arXiv 2603.17705); official code GitHub ``sauryeo/MoBaNet``,
``Model/models/ImageEncoder/vit/peft_modules.py`` (``BoundaryAwareGatedFusionBlock``; called
BAGF in the paper-time code) and ``Model/models/dinov2/build_dinov2.py`` (the ``peft_fuse_norms``
LayerNorm after it).

On the optical and DSM tap maps ``F_opt, F_dsm: [B, C, h, w]`` (the backbone's final norm
applied), with ``h_d = max(32, int(C / 8))`` hidden channels (128 for ViT-L)::

    r = reduce_opt(F_opt); d = reduce_dsm(F_dsm)          # Conv1x1 C -> h_d, no bias
    g = sigmoid( Conv1x1_{h_d->C}( GELU( GroupNorm(1, h_d)( Conv1x1_{3h_d->h_d}([r; d; |r - d|]) ))))
    F = LayerNorm_C( g * F_opt + (1 - g) * F_dsm )       # LayerNorm eps 1e-5, over channels

The last convolution's weight and bias start at zero, so ``g = 0.5`` (a plain average) at
initialisation. Without DGFM, MoBaNet fuses by ``0.5 * (F_opt + F_dsm)`` with no LayerNorm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DGFM", "dgfm_hidden"]


def dgfm_hidden(dim: int) -> int:
    """Hidden width ``max(32, int(C * 0.125))`` as released (128 for C = 1024)."""
    return max(32, int(dim * 0.125))


class DGFM(nn.Module):
    """Difference-guided gated fusion (see the module docstring).

    ``forward(f_opt [B, C, h, w], f_dsm [B, C, h, w]) -> [B, C, h, w]``.

    Keys (release names in brackets): ``reduce_opt`` (``rgb_reduce``), ``reduce_dsm``
    (``dsm_reduce``), ``gate.0`` (conv 3h->h), ``gate.1`` (GroupNorm), ``gate.3`` (conv h->C)
    (``gate_net.*``), ``norm`` (``peft_fuse_norms.{j}``).
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        h = hidden or dgfm_hidden(dim)
        self.reduce_opt = nn.Conv2d(dim, h, 1, bias=False)
        self.reduce_dsm = nn.Conv2d(dim, h, 1, bias=False)
        self.gate = nn.Sequential(
            nn.Conv2d(3 * h, h, 1, bias=False), nn.GroupNorm(1, h), nn.GELU(),
            nn.Conv2d(h, dim, 1), nn.Sigmoid(),
        )
        nn.init.zeros_(self.gate[3].weight)
        nn.init.zeros_(self.gate[3].bias)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def gate_of(self, f_opt: Tensor, f_dsm: Tensor) -> Tensor:
        """The gate ``g [B, C, h, w]`` in (0, 1) (weight of the optical map)."""
        r, d = self.reduce_opt(f_opt), self.reduce_dsm(f_dsm)
        return self.gate(torch.cat([r, d, (r - d).abs()], dim=1))

    def forward(self, f_opt: Tensor, f_dsm: Tensor) -> Tensor:
        g = self.gate_of(f_opt, f_dsm)
        fused = g * f_opt + (1 - g) * f_dsm
        return self.norm(fused.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
