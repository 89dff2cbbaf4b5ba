"""AsymFusion's fusion parts: shift-shuffle, per-modality BatchNorm, the fused bottleneck.

Source: Yikai Wang, Fuchun Sun, Ming Lu, Anbang Yao, "Learning Deep Multimodal Feature
Representation with Asymmetric Multi-layer Fusion", ACM MM 2020 (arXiv 2108.05009), Sec. 3;
official code GitHub ``yikaiw/AsymFusion``, ``models/model.py`` (``ShiftShuffle``,
``Bottleneck``).

For two streams ``x1, x2: [B, C, H, W]``, ``g = floor(C / 5)`` and ``s = 4 g``:

* shuffle: ``x1' = [x1[:s]; x2[s:]]``, ``x2' = [x2[:s]; x1[s:]]`` (the last ``C - s`` channels
  change streams);
* shift: for ``k = 0..3`` the channel group ``x_m[k g:(k+1) g]`` moves by one pixel,
  ``out[i, j] = x[i + p_h, j + p_w]`` with zero fill, offsets ``p = (-1, 0), (0, -1), (0, 1),
  (1, 0)`` in that order (reversed with ``reverse=True``); channels ``s..C`` of the shifted
  tensor are zero. The shifted copy ``sigma_m`` of stream ``m`` is added to the *other* stream
  later (AsymFusion's fused bottleneck).

With fewer than 5 channels ``g = 0``: the shuffle swaps every channel and the shift is all
zeros, as the release computes it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SHIFT_OFFSETS",
    "ParallelBatchNorm2d",
    "ShiftShuffle",
    "fused_bottleneck",
    "parallelize_batchnorms",
    "pixel_shift",
    "set_active_streams",
    "shift_shuffle",
]

#: (dy, dx) of the four shifted channel groups, in order (``out[i, j] = x[i + dy, j + dx]``)
SHIFT_OFFSETS: tuple[tuple[int, int], ...] = ((-1, 0), (0, -1), (0, 1), (1, 0))


def pixel_shift(x: Tensor, group: int, reverse: bool = False) -> Tensor:
    """The shifted copy of ``x [B, C, H, W]``: channel group ``k`` (``group`` channels) moved by
    ``SHIFT_OFFSETS[k]`` (reversed order with ``reverse``) with zero fill; channels from
    ``4 * group`` on are zero."""
    offsets = SHIFT_OFFSETS[::-1] if reverse else SHIFT_OFFSETS
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    if group == 0:
        return out
    padded = F.pad(x[:, : 4 * group], (1, 1, 1, 1))
    for k, (dy, dx) in enumerate(offsets):
        sl = slice(k * group, (k + 1) * group)
        out[:, sl] = padded[:, sl, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return out


def shift_shuffle(x1: Tensor, x2: Tensor, reverse: bool = False
                  ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``((x1', x2'), (sigma1, sigma2))``: the shuffled streams and each stream's shifted copy
    (see the module docstring). Shapes ``[B, C, H, W]``; no parameters.

    Raises:
        ValueError: the two streams differ in shape.
    """
    if x1.shape != x2.shape:
        raise ValueError(f"shift_shuffle needs two streams of one shape, got {tuple(x1.shape)} "
                         f"and {tuple(x2.shape)}")
    g = x1.shape[1] // 5
    s = 4 * g
    shuffled = (torch.cat([x1[:, :s], x2[:, s:]], 1), torch.cat([x2[:, :s], x1[:, s:]], 1))
    return shuffled, (pixel_shift(x1, g, reverse), pixel_shift(x2, g, reverse))


class ShiftShuffle(nn.Module):
    """:func:`shift_shuffle` as a module (no parameters); ``reverse`` picks the offset order
    (AsymFusion uses the forward order after ``conv1`` and the reversed one after ``conv2``)."""

    def __init__(self, reverse: bool = False) -> None:
        super().__init__()
        self.reverse = bool(reverse)

    def forward(self, x1: Tensor, x2: Tensor):
        return shift_shuffle(x1, x2, self.reverse)

    def extra_repr(self) -> str:
        return f"reverse={self.reverse}"


# --------------------------------------------------------------------------- shared-conv encoder
class ParallelBatchNorm2d(nn.Module):
    """One BatchNorm per modality stream over a stream-major batch ``[M * B, C, H, W]``.

    Built from one (pretrained) ``BatchNorm2d``: every stream's copy starts from its weights and
    running statistics (AsymFusion's ``BatchNorm2dParallel`` initialised by
    ``expand_model_dict``). Keys ``bn_0``, ``bn_1``, ... as released.
    """

    def __init__(self, bn: nn.BatchNorm2d, num_streams: int) -> None:
        super().__init__()
        self.num_streams = int(num_streams)
        #: streams in the batch, in order (``None``: all); set by :func:`set_active_streams`
        self.active: tuple[int, ...] | None = None
        for i in range(self.num_streams):
            self.add_module(f"bn_{i}", copy.deepcopy(bn))

    def forward(self, x: Tensor) -> Tensor:
        streams = self.active if self.active is not None else range(self.num_streams)
        chunks = x.chunk(len(streams), dim=0)
        return torch.cat([getattr(self, f"bn_{i}")(c) for i, c in zip(streams, chunks, strict=True)],
                         dim=0)


def set_active_streams(module: nn.Module, streams: tuple[int, ...] | None) -> None:
    """Tell every :class:`ParallelBatchNorm2d` in ``module`` which streams the next batch holds
    (``None``: all of them), e.g. ``(1,)`` when only the second modality is present."""
    for m in module.modules():
        if isinstance(m, ParallelBatchNorm2d):
            m.active = None if streams is None else tuple(streams)


def parallelize_batchnorms(module: nn.Module, num_streams: int) -> nn.Module:
    """Replace every ``BatchNorm2d`` inside ``module`` (in place) by a
    :class:`ParallelBatchNorm2d` of ``num_streams`` copies; convolutions stay shared."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, ParallelBatchNorm2d(child, num_streams))
        else:
            parallelize_batchnorms(child, num_streams)
    return module


def fused_bottleneck(blk: nn.Module, x: Tensor, shift_shuffle_on: bool = True) -> Tensor:
    """AsymFusion's fused bottleneck (official ``Bottleneck.forward`` with ``use_shuffle``) on a
    two-stream batch ``x = [x_1; x_2]`` (``[2B, C, H, W]``) of a ResNet bottleneck ``blk`` whose
    BNs are :class:`ParallelBatchNorm2d`::

        h = ReLU(BN1(conv1 x));  (h', sigma) = ShiftShuffle(h)
        u = ReLU(BN2(conv2 h'));  u_1 += sigma_2;  u_2 += sigma_1
        u' = shuffle of u (reversed-order operation; its shift part unused)
        out = ReLU(BN3(conv3 u') + residual)

    With ``shift_shuffle_on=False`` it is the plain block (the ablation).
    """
    idt = x if blk.downsample is None else blk.downsample(x)
    h = blk.relu(blk.bn1(blk.conv1(x)))
    if shift_shuffle_on:
        (h1, h2), (s1, s2) = shift_shuffle(*h.chunk(2, dim=0))
        h = torch.cat([h1, h2], dim=0)
    u = blk.relu(blk.bn2(blk.conv2(h)))
    if shift_shuffle_on:
        u1, u2 = u.chunk(2, dim=0)
        (u1, u2), _ = shift_shuffle(u1 + s2, u2 + s1, reverse=True)
        u = torch.cat([u1, u2], dim=0)
    return blk.relu(blk.bn3(blk.conv3(u)) + idt)
