"""Light-Weight RefineNet decoder (CRP / RCU blocks, no BatchNorm), as AsymFusion uses it.

Vladimir Nekrasov, Chunhua Shen, Ian Reid, "Light-Weight RefineNet for Real-Time Semantic
Segmentation", BMVC 2018; the variant and module names of AsymFusion's release (GitHub
``yikaiw/AsymFusion``, ``models/model.py``, class ``RefineNet``), so its decoder weights load
(the release wraps every conv in ``ModuleParallel``: its ``.module`` key segment is dropped).

* RCU (``_make_rcu``): ``num_blocks`` residual units of ``num_stages`` x (ReLU -> 3x3 conv); the
  first conv of a unit has a bias (``{i}_conv``), the second none
  (``{i}_conv_relu_varout_dimred``); the skip adds ``ReLU(x)`` - the release's in-place ReLU
  rewrites the residual it kept (paper: ``x``; we follow the code the weights were trained with);
* CRP (``_make_crp``): ``num_stages`` x (MaxPool 5x5 s1 -> 3x3 conv ``{i}_outvar_dimred``),
  each result added to the input;
* four levels from the deepest (``l4``, 2048 ch) to ``l1`` (256 ch): 3x3 dim-reduction
  (``p_ims1d2_outl{1..4}_dimred``), RCU, joint 3x3 conv, sum with the upsampled deeper level
  (bilinear, ``align_corners=True`` as released), ReLU, CRP, RCU, 3x3 conv; dropout 0.5 on
  ``l3``, ``l4`` and before the 3x3 classifier ``clf_conv``.

``forward([l1, l2, l3, l4]) -> logits [B, K, H/4, W/4]``. Every operation acts per sample, so
several modality streams run through the shared decoder as one stream-major batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CRPBlock", "RCUBlock", "RefineNetLW"]


def _conv3x3(i: int, o: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(i, o, 3, padding=1, bias=bias)


class CRPBlock(nn.Module):
    """Chained residual pooling: ``top = conv_i(maxpool(top)); x += top``, ``num_stages`` times."""

    def __init__(self, in_planes: int, out_planes: int, num_stages: int = 4) -> None:
        super().__init__()
        self.num_stages = num_stages
        for i in range(num_stages):
            self.add_module(f"{i + 1}_outvar_dimred",
                            _conv3x3(in_planes if i == 0 else out_planes, out_planes))
        self.maxpool = nn.MaxPool2d(5, stride=1, padding=2)

    def forward(self, x: Tensor) -> Tensor:
        top = x
        for i in range(self.num_stages):
            top = getattr(self, f"{i + 1}_outvar_dimred")(self.maxpool(top))
            x = x + top
        return x


class RCUBlock(nn.Module):
    """Residual conv units: ``num_blocks`` x [x + (ReLU -> conv)^num_stages (x)]."""

    _SUFFIX = ("_conv", "_conv_relu_varout_dimred")

    def __init__(self, in_planes: int, out_planes: int, num_blocks: int = 2,
                 num_stages: int = 2) -> None:
        super().__init__()
        self.num_blocks, self.num_stages = num_blocks, num_stages
        for i in range(num_blocks):
            for j in range(num_stages):
                self.add_module(f"{i + 1}{self._SUFFIX[j]}",
                                _conv3x3(in_planes if i == 0 and j == 0 else out_planes,
                                         out_planes, bias=(j == 0)))

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.num_blocks):
            # the release's in-place ReLU also rewrites the residual it kept: the skip carries
            # ReLU(x), not x (official RCUBlock.forward with nn.ReLU(inplace=True))
            x = F.relu(x)
            res = x
            for j in range(self.num_stages):
                x = getattr(self, f"{i + 1}{self._SUFFIX[j]}")(x if j == 0 else F.relu(x))
            x = x + res
        return x


def _rcu(i: int, o: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(RCUBlock(i, o, blocks, 2))


def _crp(c: int) -> nn.Sequential:
    return nn.Sequential(CRPBlock(c, c, 4))


class RefineNetLW(nn.Module):
    """Light-weight RefineNet over ResNet maps (see the module docstring).

    Args:
        in_channels: channels of ``l1..l4`` (ResNet: 256, 512, 1024, 2048).
        num_classes: ``K``.
        dropout: dropout on ``l3``, ``l4`` and before the classifier (0.5).
        channels: decoder width (256 as released; the deepest level uses twice that).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, dropout: float = 0.5,
                 channels: int = 256) -> None:
        super().__init__()
        c1, c2, c3, c4 = (int(c) for c in in_channels)
        w, top = int(channels), 2 * int(channels)  # released: 256 and 512
        self.dropout = nn.Dropout(dropout)
        self.p_ims1d2_outl1_dimred = _conv3x3(c4, top)
        self.adapt_stage1_b = _rcu(top, top, 2)
        self.mflow_conv_g1_pool = _crp(top)
        self.mflow_conv_g1_b = _rcu(top, top, 3)
        self.mflow_conv_g1_b3_joint_varout_dimred = _conv3x3(top, w)
        for lvl, c in ((2, c3), (3, c2), (4, c1)):
            self.add_module(f"p_ims1d2_outl{lvl}_dimred", _conv3x3(c, w))
            self.add_module(f"adapt_stage{lvl}_b", _rcu(w, w, 2))
            self.add_module(f"adapt_stage{lvl}_b2_joint_varout_dimred", _conv3x3(w, w))
            self.add_module(f"mflow_conv_g{lvl}_pool", _crp(w))
            self.add_module(f"mflow_conv_g{lvl}_b", _rcu(w, w, 3))
            if lvl < 4:
                self.add_module(f"mflow_conv_g{lvl}_b3_joint_varout_dimred", _conv3x3(w, w))
        self.clf_conv = _conv3x3(w, num_classes, bias=True)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        l1, l2, l3, l4 = feats
        l4, l3 = self.dropout(l4), self.dropout(l3)
        x = self.p_ims1d2_outl1_dimred(l4)
        x = F.relu(self.adapt_stage1_b(x))
        x = self.mflow_conv_g1_b(self.mflow_conv_g1_pool(x))
        x = self.mflow_conv_g1_b3_joint_varout_dimred(x)
        for lvl, skip in ((2, l3), (3, l2), (4, l1)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            y = getattr(self, f"p_ims1d2_outl{lvl}_dimred")(skip)
            y = getattr(self, f"adapt_stage{lvl}_b")(y)
            y = getattr(self, f"adapt_stage{lvl}_b2_joint_varout_dimred")(y)
            x = F.relu(y + x)
            x = getattr(self, f"mflow_conv_g{lvl}_b")(getattr(self, f"mflow_conv_g{lvl}_pool")(x))
            if lvl < 4:
                x = getattr(self, f"mflow_conv_g{lvl}_b3_joint_varout_dimred")(x)
        return self.clf_conv(self.dropout(x))
