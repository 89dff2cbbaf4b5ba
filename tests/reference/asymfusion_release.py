"""Reference re-implementation of the released AsymFusion model, for equivalence tests.

Written for fusionseg's tests from a reading of the official code (GitHub ``yikaiw/AsymFusion``:
``models/model.py``, ``models/parallel.py``). It keeps the release's structure literally: Python
lists of per-stream tensors, ``ModuleParallel`` wrappers (so the keys carry ``.module``),
``BatchNorm2dParallel`` (``bn_0``, ``bn_1``), in-place ReLUs (whose aliasing of the RCU residual
is part of what the released weights compute), ``nn.Upsample(align_corners=True)`` in the
decoder, and the ensemble ``sum softmax(alpha)_l * out_l.detach()``. Only the sizes are
parameters; it is not part of the package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ModuleParallel(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, xs):
        return [self.module(x) for x in xs]


class BatchNorm2dParallel(nn.Module):
    def __init__(self, c, n):
        super().__init__()
        for i in range(n):
            setattr(self, f"bn_{i}", nn.BatchNorm2d(c))

    def forward(self, xs):
        return [getattr(self, f"bn_{i}")(x) for i, x in enumerate(xs)]


def conv3x3(i, o, stride=1, bias=False):
    return ModuleParallel(nn.Conv2d(i, o, 3, stride=stride, padding=1, bias=bias))


def conv1x1(i, o, stride=1):
    return ModuleParallel(nn.Conv2d(i, o, 1, stride=stride, bias=False))


class ShiftShuffle(nn.Module):
    def __init__(self, reverse=False):
        super().__init__()
        self.pos = [[-1, 0], [0, -1], [0, 1], [1, 0]]
        if reverse:
            self.pos = self.pos[::-1]

    def forward(self, x):
        g = x[0].shape[1] // 5
        s = g * 4
        x1a, x1b = x[0][:, :s], x[1][:, s:]
        x2a, x2b = x[1][:, :s], x[0][:, s:]
        shuffle = [torch.cat([x1a, x1b], 1), torch.cat([x2a, x2b], 1)]
        h, w = x1a.shape[-2:]
        a1, a2 = [], []
        for idx, i in enumerate(range(0, s, g)):
            ph, pw = self.pos[idx][0] + 1, self.pos[idx][1] + 1
            a1.append(F.pad(x1a[:, i:i + g], (1, 1, 1, 1))[:, :, ph:h + ph, pw:w + pw])
            a2.append(F.pad(x2a[:, i:i + g], (1, 1, 1, 1))[:, :, ph:h + ph, pw:w + pw])
        a1.append(torch.zeros_like(x1b))
        a2.append(torch.zeros_like(x2b))
        return shuffle, [torch.cat(a1, 1), torch.cat(a2, 1)]


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, n, stride=1, downsample=None, use_shuffle=False):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = BatchNorm2dParallel(planes, n)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = BatchNorm2dParallel(planes, n)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = BatchNorm2dParallel(planes * 4, n)
        self.relu = ModuleParallel(nn.ReLU(inplace=True))
        self.downsample = downsample
        self.n = n
        self.use_shuffle = use_shuffle
        if use_shuffle:
            self.shiftshuffle1 = ShiftShuffle(False)
            self.shiftshuffle2 = ShiftShuffle(True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        if self.use_shuffle and len(x) > 1:
            out, shift = self.shiftshuffle1(out)
        out = self.relu(self.bn2(self.conv2(out)))
        if self.use_shuffle and len(x) > 1:
            out[0] = out[0] + shift[1]
            out[1] = out[1] + shift[0]
            out, _ = self.shiftshuffle2(out)
        out = self.bn3(self.conv3(out))
        residual = self.downsample(x) if self.downsample is not None else x
        return self.relu([out[i] + residual[i] for i in range(self.n)])


class CRPBlock(nn.Module):
    def __init__(self, c, stages, n):
        super().__init__()
        for i in range(stages):
            setattr(self, f"{i + 1}_outvar_dimred", conv3x3(c, c))
        self.stages, self.n = stages, n
        self.maxpool = ModuleParallel(nn.MaxPool2d(5, 1, 2))

    def forward(self, x):
        top = x
        for i in range(self.stages):
            top = getattr(self, f"{i + 1}_outvar_dimred")(self.maxpool(top))
            x = [x[k] + top[k] for k in range(self.n)]
        return x


class RCUBlock(nn.Module):
    sfx = {0: "_conv", 1: "_conv_relu_varout_dimred"}

    def __init__(self, i_, o, blocks, stages, n):
        super().__init__()
        for i in range(blocks):
            for j in range(stages):
                setattr(self, f"{i + 1}{self.sfx[j]}",
                        conv3x3(i_ if i == 0 and j == 0 else o, o, bias=(j == 0)))
        self.blocks, self.stages, self.n = blocks, stages, n
        self.relu = ModuleParallel(nn.ReLU(inplace=True))

    def forward(self, x):
        for i in range(self.blocks):
            residual = x
            for j in range(self.stages):
                x = self.relu(x)
                x = getattr(self, f"{i + 1}{self.sfx[j]}")(x)
            x = [x[k] + residual[k] for k in range(self.n)]
        return x


class AsymFusionRelease(nn.Module):
    """The released ``RefineNet`` (num_parallel = 2) with its key names."""

    def __init__(self, num_classes=40, layers=(2, 2, 2, 2), width=8, n=2):
        super().__init__()
        self.n = n
        self.inplanes = width
        self.dropout = ModuleParallel(nn.Dropout(0.5))
        self.conv1 = ModuleParallel(nn.Conv2d(3, width, 7, 2, 3, bias=False))
        self.bn1 = BatchNorm2dParallel(width, n)
        self.relu = ModuleParallel(nn.ReLU(inplace=True))
        self.maxpool = ModuleParallel(nn.MaxPool2d(3, 2, 1))
        for i, nb in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_layer(width * 2**i, nb, 1 if i == 0 else 2))
        c = [width * 4 * 2**i for i in range(4)]
        self.p_ims1d2_outl1_dimred = conv3x3(c[3], 512)
        self.adapt_stage1_b = nn.Sequential(RCUBlock(512, 512, 2, 2, n))
        self.mflow_conv_g1_pool = nn.Sequential(CRPBlock(512, 4, n))
        self.mflow_conv_g1_b = nn.Sequential(RCUBlock(512, 512, 3, 2, n))
        self.mflow_conv_g1_b3_joint_varout_dimred = conv3x3(512, 256)
        for lvl, ci in ((2, c[2]), (3, c[1]), (4, c[0])):
            setattr(self, f"p_ims1d2_outl{lvl}_dimred", conv3x3(ci, 256))
            setattr(self, f"adapt_stage{lvl}_b", nn.Sequential(RCUBlock(256, 256, 2, 2, n)))
            setattr(self, f"adapt_stage{lvl}_b2_joint_varout_dimred", conv3x3(256, 256))
            setattr(self, f"mflow_conv_g{lvl}_pool", nn.Sequential(CRPBlock(256, 4, n)))
            setattr(self, f"mflow_conv_g{lvl}_b", nn.Sequential(RCUBlock(256, 256, 3, 2, n)))
            if lvl < 4:
                setattr(self, f"mflow_conv_g{lvl}_b3_joint_varout_dimred", conv3x3(256, 256))
        self.clf_conv = conv3x3(256, num_classes, bias=True)
        self.alpha = nn.Parameter(torch.ones(n))

    def _make_layer(self, planes, blocks, stride):
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(conv1x1(self.inplanes, planes * 4, stride),
                                 BatchNorm2dParallel(planes * 4, self.n))
        layers = [Bottleneck(self.inplanes, planes, self.n, stride, down)]
        self.inplanes = planes * 4
        for i in range(1, blocks):
            layers.append(Bottleneck(self.inplanes, planes, self.n,
                                     use_shuffle=i >= blocks - 1))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l1 = self.layer1(x)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        l4, l3 = self.dropout(l4), self.dropout(l3)

        def up(t, ref):
            return [nn.Upsample(size=ref[0].shape[2:], mode="bilinear", align_corners=True)(a)
                    for a in t]

        x4 = self.adapt_stage1_b(self.p_ims1d2_outl1_dimred(l4))
        x4 = self.mflow_conv_g1_b(self.mflow_conv_g1_pool(self.relu(x4)))
        xs = up(self.mflow_conv_g1_b3_joint_varout_dimred(x4), l3)
        for lvl, skip, nxt in ((2, l3, l2), (3, l2, l1), (4, l1, None)):
            y = getattr(self, f"p_ims1d2_outl{lvl}_dimred")(skip)
            y = getattr(self, f"adapt_stage{lvl}_b")(y)
            y = getattr(self, f"adapt_stage{lvl}_b2_joint_varout_dimred")(y)
            y = self.relu([y[k] + xs[k] for k in range(self.n)])
            y = getattr(self, f"mflow_conv_g{lvl}_b")(getattr(self, f"mflow_conv_g{lvl}_pool")(y))
            if nxt is not None:
                xs = up(getattr(self, f"mflow_conv_g{lvl}_b3_joint_varout_dimred")(y), nxt)
            else:
                xs = y
        out = self.clf_conv(self.dropout(xs))
        a = F.softmax(self.alpha, dim=0)
        ens = 0
        for k in range(self.n):
            ens = ens + a[k] * out[k].detach()
        return out + [ens], a


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters and BN statistics (so no default hides a term); the two streams' BNs
    differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "bn_" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name == "alpha":
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.ndim > 1:  # fan-in scaled, so activations stay finite through the decoder
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model
