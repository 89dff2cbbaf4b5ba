"""UperNet decode head and a convolutional auxiliary head, in the form MoBaNet releases them.

UperNet: Tete Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018
(pyramid pooling module on the deepest map + FPN). This variant follows MoBaNet's official
``Net.py`` (``UperNetHead``, ``AuxHead``; GitHub ``sauryeo/MoBaNet``), so its released ``decoder.*``
and ``aux_head_*`` weights load:

* every convolution is bias-free; conv + BatchNorm + **ReLU6** blocks (``ConvNormAct``, keys
  ``.0`` conv, ``.1`` BN);
* PPM on ``c4``: for each pool scale ``AdaptiveAvgPool2d(s)`` -> 1x1 ConvNormAct -> bilinear up
  (``align_corners=False``); ``bottleneck`` 3x3 ConvNormAct over ``[c4, pools...]``;
* laterals are 1x1 conv + BN **without** activation on ``c1..c3``; top-down sums with bilinear
  upsampling; 3x3 ConvNormAct ``fpn_convs`` on ``p1..p3`` (not on the PPM output ``p4``);
  ``fpn_bottleneck`` 3x3 ConvNormAct over the concatenation of the four levels at ``c1``'s size;
* ``Dropout2d(0.1)`` and a 1x1 bias-free classifier ``conv_seg``.

Inputs may all have the same resolution (MoBaNet's plain-ViT taps, all at 1/14) or form a
pyramid; every level is resized to the first one's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ..export_ops import AdaptiveAvgPool2d

__all__ = ["AuxHead", "ConvNormAct", "UperNetHead"]


class ConvNormAct(nn.Sequential):
    """``Conv2d(k, padding=k//2, bias=False)`` + ``BatchNorm2d`` (+ ``ReLU6`` when ``act``).

    Keys ``0.weight`` (conv) and ``1.*`` (BN).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2,
                                             bias=False), nn.BatchNorm2d(out_ch)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


def _up(x: Tensor, size) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _PoolStage(nn.Sequential):
    def __init__(self, scale: int, in_ch: int, out_ch: int) -> None:
        # nn.AdaptiveAvgPool2d with an export-safe form for the TorchScript ONNX exporter
        super().__init__(AdaptiveAvgPool2d(scale), ConvNormAct(in_ch, out_ch, 1))


class PyramidPooling(nn.Module):
    """PPM: ``stages.{i}`` (pool + 1x1 ConvNormAct) and the 3x3 ``bottleneck``.

    ``forward(c4 [B, C, h, w]) -> [B, channels, h, w]``.
    """

    def __init__(self, in_ch: int, channels: int, scales: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(_PoolStage(s, in_ch, channels) for s in scales)
        self.bottleneck = ConvNormAct(in_ch + len(scales) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return self.bottleneck(torch.cat([x] + [_up(st(x), size) for st in self.stages], dim=1))


class UperNetHead(nn.Module):
    """UperNet over four maps (see the module docstring).

    Args:
        in_channels: channels of ``c1..c4`` (MoBaNet: 256 each).
        num_classes: ``K``.
        channels: internal width (MoBaNet: 64).
        pool_scales: PPM scales ``(1, 2, 3, 6)``.
        dropout: ``Dropout2d`` before the classifier (0.1).

    ``forward([c1, c2, c3, c4]) -> logits [B, K, h_1, w_1]``.

    Keys: ``ppm.stages.{i}.1.*``, ``ppm.bottleneck.*``, ``lateral_convs.{0..2}.*``,
    ``fpn_convs.{0..2}.*``, ``fpn_bottleneck.*``, ``conv_seg.weight``.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 64,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ConfigError(f"UperNetHead needs 4 input channel counts, got {list(in_channels)}")
        self.in_channels = [int(c) for c in in_channels]
        self.ppm = PyramidPooling(self.in_channels[3], channels, pool_scales)
        self.lateral_convs = nn.ModuleList(ConvNormAct(c, channels, 1, act=False)
                                           for c in self.in_channels[:3])
        self.fpn_convs = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in range(3))
        self.fpn_bottleneck = ConvNormAct(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1, bias=False)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        if len(feats) != 4:
            raise ValueError(f"UperNetHead expects 4 feature maps, got {len(feats)}")
        p = self.ppm(feats[3])
        levels = [p]
        for i in (2, 1, 0):
            lat = self.lateral_convs[i](feats[i])
            p = lat + _up(p, lat.shape[-2:])
            levels.insert(0, p)
        outs = [self.fpn_convs[i](levels[i]) for i in range(3)] + [levels[3]]
        size = outs[0].shape[-2:]
        z = self.fpn_bottleneck(torch.cat([_up(o, size) for o in outs], dim=1))
        return self.conv_seg(self.dropout(z))


class AuxHead(nn.Module):
    """Auxiliary head: 3x3 ConvNormAct (ReLU6), ``Dropout(0.1)``, 1x1 bias-free classifier.

    ``forward(x [B, C, h, w]) -> [B, K, h, w]``. Keys ``conv.0.weight``, ``conv.1.*``,
    ``conv_seg.weight`` (MoBaNet's ``AuxHead``).
    """

    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_ch, in_ch, 3)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(in_ch, num_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(self.conv(x)))
