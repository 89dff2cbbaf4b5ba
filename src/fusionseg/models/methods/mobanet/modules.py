"""MoBaNet's own modules: CPIA, DGFM, the SAM encoder's prompt adapters and SE fusion.

Source: Haocheng Li et al., "Parameter-Efficient Modality-Balanced Symmetric Fusion for
Multimodal Remote Sensing Semantic Segmentation" (MoBaNet), arXiv 2603.17705; official code
GitHub ``sauryeo/MoBaNet``: ``Model/models/ImageEncoder/vit/peft_modules.py`` (``CPIABlock``,
``BoundaryAwareGatedFusionBlock``, ``Adapter``), ``Model/models/dinov2/build_dinov2.py`` (where
CPIA and DGFM are applied, the ``peft_fuse_norms`` LayerNorm), ``Model/models/ImageEncoder/vit/
peft_block.py`` (``PeftFusionBlock``) and ``Net.py`` (``SEFusion``, the SAM branch's ``fpn*``).

**CPIA** (Cross-modal Prompt-Injected Adapter). On the patch tokens of the optical and DSM
streams (class / register tokens untouched), at the entry of each block group of the frozen
ViT, with ``r = ratio * C``::

    p = up( joint( [down_opt(x_opt); down_dsm(x_dsm)] ) )      # Linear C->r, C->r, 2r->r, r->C
    x_opt <- x_opt + p + (p * gamma_opt + beta_opt)
    x_dsm <- x_dsm + p + (p * gamma_dsm + beta_dsm)

a shared prompt ``p`` plus a modality-specific affine prompt on top of it. As released there is
no nonlinearity (the release defines a GELU it never calls), so the module is affine in its
inputs. Initialisation as released: PyTorch's default for the Linears, ``gamma ~ N(1, 0.02)``,
``beta ~ N(0, 0.02)``.

**DGFM** (Difference-Guided Gated Fusion Module; BAGF in the paper-time code). On the optical
and DSM tap maps ``F_opt, F_dsm: [B, C, h, w]`` (the backbone's final norm applied), with
``h_d = max(32, int(C / 8))`` hidden channels (128 for ViT-L)::

    r = reduce_opt(F_opt); d = reduce_dsm(F_dsm)          # Conv1x1 C -> h_d, no bias
    g = sigmoid( Conv1x1_{h_d->C}( GELU( GroupNorm(1, h_d)( Conv1x1_{3h_d->h_d}([r; d; |r - d|]) ))))
    F = LayerNorm_C( g * F_opt + (1 - g) * F_dsm )       # LayerNorm eps 1e-5, over channels

The last convolution's weight and bias start at zero, so ``g = 0.5`` (a plain average) at
initialisation. Without DGFM, MoBaNet fuses by ``0.5 * (F_opt + F_dsm)`` with no LayerNorm.

**SAM encoder** parts (``design="neck"``, see :mod:`~fusionseg.models.methods.mobanet.model`):
:class:`SamBlockPrompts` (a CPIA whose prompts feed two :class:`PromptAdapter`), the per-stream
:func:`simple_pyramid` and :class:`SEFusion`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ....errors import ConfigError
from ...peft.base import PeftModule

__all__ = ["CPIA", "DGFM", "PromptAdapter", "SEFusion", "SamBlockPrompts", "dgfm_hidden",
           "simple_pyramid"]


def _bottleneck(dim: int, ratio: float, what: str) -> int:
    """The hidden width ``int(dim * ratio)`` of an adapter (as released).

    Raises:
        ConfigError: it is below 1 (the message names ``what``).
    """
    hidden = int(dim * ratio)
    if hidden < 1:
        raise ConfigError(f"{what} bottleneck int({dim} * {ratio}) must be >= 1")
    return hidden


class CPIA(PeftModule):
    """Cross-modal prompt-injected adapter (see the module docstring).

    Args:
        dim: token width ``C``.
        ratio: bottleneck ``r = int(C * ratio)`` (0.25 as released).

    ``forward(x_opt [B, N, C], x_dsm [B, N, C]) -> (x_opt', x_dsm')`` (patch tokens only).

    Keys (release ``peft_cpia_blocks.{j}`` names in brackets): ``down_opt`` (``D_fc1``),
    ``down_dsm`` (``D_fc2``), ``joint`` (``P_fc2``), ``up`` (``U_fc1``), ``gamma_opt`` /
    ``beta_opt`` / ``gamma_dsm`` / ``beta_dsm`` (``tfts_{gamma,beta}_{rgb,dsm}``).

    Raises:
        ConfigError: ``int(C * ratio) < 1``.
    """

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        r = _bottleneck(dim, ratio, "CPIA")
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


class PromptAdapter(PeftModule):
    """Bottleneck adapter with an added prompt (release ``peft_modules.Adapter(prompt_add=True)``
    of MoBaNet's SAM encoder).

    ``forward(x [..., C], prompt [..., C]) -> x + up(Dropout(ReLU(down(x) + prompt(p))))``, hidden
    ``int(C * ratio)`` (ratio 0.0625). Initialisation as released: ``down`` PyTorch default
    weight and zero bias, ``prompt`` PyTorch default, ``up`` all zeros (the adapter starts as
    the identity). Keys (release names in brackets): ``down`` (``D_fc1``), ``prompt``
    (``D_fc_prompt``), ``up`` (``D_fc2``).

    Raises:
        ConfigError: ``int(C * ratio) < 1``.
    """

    def __init__(self, dim: int, ratio: float = 0.0625, dropout: float = 0.1) -> None:
        super().__init__()
        hidden = _bottleneck(dim, ratio, "adapter")
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        self.prompt = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor, prompt: Tensor) -> Tensor:
        return x + self.up(self.dropout(torch.relu(self.down(x) + self.prompt(prompt))))


class SamBlockPrompts(PeftModule):
    """The PEFT part of one block of MoBaNet's SAM encoder (release ``PeftFusionBlock``): after
    the frozen block, a CPIA forms the shared projection ``a`` of both streams and the prompts
    ``a + (a * gamma_m + beta_m)``, each fed to its stream's :class:`PromptAdapter`.

    ``forward(x_opt [B, N, C], x_dsm [B, N, C]) -> (x_opt', x_dsm')``. Keys ``cpia.*`` (a
    :class:`CPIA`, whose parameters are used here without its residual), ``adapter_opt.*``,
    ``adapter_dsm.*``.
    """

    def __init__(self, dim: int, cpia_ratio: float = 0.25, adapter_ratio: float = 0.0625
                 ) -> None:
        super().__init__()
        self.cpia = CPIA(dim, cpia_ratio)
        self.adapter_opt = PromptAdapter(dim, adapter_ratio)
        self.adapter_dsm = PromptAdapter(dim, adapter_ratio)

    def forward(self, x_opt: Tensor, x_dsm: Tensor) -> tuple[Tensor, Tensor]:
        c = self.cpia
        a = c.up(c.joint(torch.cat([c.down_opt(x_opt), c.down_dsm(x_dsm)], dim=-1)))
        return (self.adapter_opt(x_opt, a + (a * c.gamma_opt + c.beta_opt)),
                self.adapter_dsm(x_dsm, a + (a * c.gamma_dsm + c.beta_dsm)))


class _SqueezeExcite(nn.Module):
    """``x * sigmoid(fc(avgpool(x)))``, ``fc`` = 1x1 conv C -> C/16, ReLU, 1x1 conv -> C (biases).
    Key ``fc.0``, ``fc.2`` (release ``SqueezeAndExcitation``)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        mid = max(channels // reduction, 1)
        self.fc = nn.Sequential(nn.Conv2d(channels, mid, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(mid, channels, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 1))


class SEFusion(nn.Module):
    """``SE_opt(f_opt) + SE_dsm(f_dsm)`` on ``[B, C, h, w]`` maps (release ``SEFusion`` of the SAM
    branch of ``Net.py``). Keys ``se_opt.fc.*`` / ``se_dsm.fc.*`` (release ``se_rgb`` /
    ``se_dsm``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.se_opt = _SqueezeExcite(channels)
        self.se_dsm = _SqueezeExcite(channels)

    def forward(self, f_opt: Tensor, f_dsm: Tensor) -> Tensor:
        return self.se_opt(f_opt) + self.se_dsm(f_dsm)


def simple_pyramid(ch: int, norm: nn.Module) -> nn.ModuleList:
    """The release's ``fpn1..4`` of one stream of its SAM branch (``Net.py``), on the neck's
    ``[B, ch, H/16, W/16]`` map: 1/4 (deconv, ``norm``, GELU, deconv), 1/8 (deconv), 1/16
    (identity), 1/32 (2x2 max pool). Keys ``0.{0,1,3}``, ``1.0``."""
    return nn.ModuleList([
        nn.Sequential(nn.ConvTranspose2d(ch, ch, 2, stride=2), norm, nn.GELU(),
                      nn.ConvTranspose2d(ch, ch, 2, stride=2)),
        nn.Sequential(nn.ConvTranspose2d(ch, ch, 2, stride=2)),
        nn.Identity(),
        nn.MaxPool2d(2, stride=2),
    ])
