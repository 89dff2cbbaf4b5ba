"""CPIA: MoBaNet's Cross-modal Prompt-Injected Adapter.

Source: Haocheng Li et al., "Parameter-Efficient Modality-Balanced Symmetric Fusion for
Multimodal Remote Sensing Semantic Segmentation" (MoBaNet), arXiv 2603.17705; official code
GitHub ``sauryeo/MoBaNet``, ``Model/models/ImageEncoder/vit/peft_modules.py`` (``CPIABlock``)
and ``Model/models/dinov2/build_dinov2.py`` (where it is applied).

On the patch tokens of the optical and DSM streams (class / register tokens untouched), at the
entry of each block group of the frozen ViT, with ``r = ratio * C``::

    p = up( joint( [down_opt(x_opt); down_dsm(x_dsm)] ) )      # Linear C->r, C->r, 2r->r, r->C
    x_opt <- x_opt + p + (p * gamma_opt + beta_opt)
    x_dsm <- x_dsm + p + (p * gamma_dsm + beta_dsm)

a shared prompt ``p`` plus a modality-specific affine prompt on top of it. As released there is no
nonlinearity (the release defines a GELU it never calls), so the module is affine in its inputs.
Initialisation as released: PyTorch's default for the Linears, ``gamma ~ N(1, 0.02)``,
``beta ~ N(0, 0.02)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ....errors import ConfigError
from ...peft.base import PeftModule

__all__ = ["CPIA"]


class CPIA(PeftModule):
    """Cross-modal prompt-injected adapter (see the module docstring).

    Args:
        dim: token width ``C``.
        ratio: bottleneck ``r = int(C * ratio)`` (0.25 as released).

    ``forward(x_opt [B, N, C], x_dsm [B, N, C]) -> (x_opt', x_dsm')`` (patch tokens only).

    Keys (release ``peft_cpia_blocks.{j}`` names in brackets): ``down_opt`` (``D_fc1``),
    ``down_dsm`` (``D_fc2``), ``joint`` (``P_fc2``), ``up`` (``U_fc1``), ``gamma_opt`` /
    ``beta_opt`` / ``gamma_dsm`` / ``beta_dsm`` (``tfts_{gamma,beta}_{rgb,dsm}``).
    """

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        r = int(dim * ratio)
        if r < 1:
            raise ConfigError(f"CPIA bottleneck int({dim} * {ratio}) must be >= 1")
        self.down_opt = nn.Linear(dim, r)
        self.down_dsm = nn.Linear(dim, r)
        self.joint = nn.Linear(2 * r, r)
        self.up = nn.Linear(r, dim)
        self.gamma_opt = nn.Parameter(torch.empty(dim).normal_(1.0, 0.02))
        self.beta_opt = nn.Parameter(torch.empty(dim).normal_(0.0, 0.02))
        self.gamma_dsm = nn.Parameter(torch.empty(dim).normal_(1.0, 0.02))
        self.beta_dsm = nn.Parameter(torch.empty(dim).normal_(0.0, 0.02))

    def forward(self, x_opt: Tensor, x_dsm: Tensor) -> tuple[Tensor, Tensor]:
        p = self.up(self.joint(torch.cat([self.down_opt(x_opt), self.down_dsm(x_dsm)], dim=-1)))
        return (x_opt + p + (p * self.gamma_opt + self.beta_opt),
                x_dsm + p + (p * self.gamma_dsm + self.beta_dsm))
