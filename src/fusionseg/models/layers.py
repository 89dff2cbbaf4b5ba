"""Small layers shared by several backbones and heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = [
    "DropPath",
    "LayerNorm2d",
    "PatchEmbed",
    "check_stream_indices",
    "drop_path_rates",
    "random_rectangle",
    "window_partition",
    "window_unpartition",
]


def check_stream_indices(streams, num_streams: int) -> list[int]:
    """``streams`` as a list of stream indices, checked to be strictly increasing and in
    ``0..num_streams - 1`` (the streams a multi-stream module runs when some are skipped).

    Raises:
        ValueError: indices not increasing or out of range.
    """
    out = [int(i) for i in streams]
    if any(a >= b for a, b in zip(out, out[1:], strict=False)) or not all(
        0 <= i < num_streams for i in out
    ):
        raise ValueError(f"streams must be increasing indices in 0..{num_streams - 1}, got {out}")
    return out


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map (SAM / SAM 2 ``LayerNorm2d``, ConvNeXt's
    channels-first LayerNorm; eps 1e-6 as there).

    ``forward(x [B, C, H, W]) -> [B, C, H, W]``. Keys ``weight``, ``bias`` ``[C]``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding of a plain ViT: ``Conv2d(k = s = patch_size)``,
    ``[B, C_in, H, W] -> ([B, (H/p)(W/p), C], H/p, W/p)``. Key ``proj`` (DINOv2, SAM)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), h, w


def window_partition(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int]]:
    """Cut a channels-last map into ``window`` squares, zero-padding bottom / right first.

    ``[B, H, W, C] -> ([B * nh * nw, window, window, C], (Hp, Wp))`` with ``Hp, Wp`` the sides
    padded to multiples of ``window``; the windows are ordered batch first, then window row,
    then window column, so the batch stays the outermost dimension (official
    ``window_partition`` of ViTDet / SAM, ``segment_anything/modeling/image_encoder.py``, and
    of SAM 2, ``sam2/modeling/backbones/utils.py``; used by the SAM ViT and Hiera blocks).
    """
    b, h, w, c = x.shape
    ph, pw = (-h) % window, (-w) % window
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: Tensor, window: int, padded: tuple[int, int],
                       size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B * nh * nw, window, window, C] -> [B, H, W, C]``
    with ``padded = (Hp, Wp)`` the padded sides and ``size = (H, W)`` the sides kept (the
    padding is cropped)."""
    hp, wp = padded
    h, w = size
    nh, nw = hp // window, wp // window
    b = windows.shape[0] // (nh * nw)
    x = windows.reshape(b, nh, nw, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, hp, wp, -1)
    if hp != h or wp != w:
        x = x[:, :h, :w]
    return x


def random_rectangle(h: int, w: int, area: tuple[float, float] = (0.1, 0.3),
                     aspect: tuple[float, float] = (0.5, 2.0),
                     generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """A random rectangle ``(top, left, height, width)`` in an ``h x w`` image, drawn as
    MoBaNet's MCRM draws it (official ``peft_modules.py``, ``apply_mcrc_mask``): area uniform in
    ``area`` (fraction of ``h * w``), aspect (width / height) uniform in ``aspect``, up to 10
    draws until it fits (else ``round(sqrt(0.1) * side)``), then a uniform position."""

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    for _ in range(10):
        a = uniform(*area) * h * w
        r = uniform(*aspect)
        bh, bw = round(math.sqrt(a / r)), round(math.sqrt(a * r))
        if 1 <= bh <= h and 1 <= bw <= w:
            break
    else:
        bh = max(1, min(h, round(h * math.sqrt(0.1))))
        bw = max(1, min(w, round(w * math.sqrt(0.1))))
    top = int(torch.randint(0, h - bh + 1, (), generator=generator))
    left = int(torch.randint(0, w - bw + 1, (), generator=generator))
    return top, left, bh, bw


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic-depth probability of each of ``depth`` blocks: linear from 0 (first block) to
    ``rate`` (last), i.e. ``linspace(0, rate, depth)`` (the DINOv2, SAM and Hiera rule)."""
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al., ECCV 2016).

    In training, each sample's residual branch ``x[b]`` is zeroed with probability ``p`` and the
    kept ones are scaled by ``1 / (1 - p)``; identity in eval mode or when ``p == 0``.
    Works on any tensor whose first dimension is the batch.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"drop path probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"
