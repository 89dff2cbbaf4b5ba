"""SegFormer all-MLP decode head (Xie et al., "SegFormer", NeurIPS 2021, Sec. 3.2).

Per stage ``i``: ``linear_c{i}.proj`` = Linear(C_i -> E) on the tokens, bilinear upsampling
(``align_corners=False``) to the stage-1 (1/4) size; concatenation in the order
``c4, c3, c2, c1`` (the released ``linear_fuse`` weights depend on it); ``linear_fuse`` =
1x1 conv without bias + BatchNorm + ReLU; ``Dropout2d(0.1)``; ``linear_pred`` = 1x1 conv to
the classes. Key names follow the official code (NVlabs/SegFormer ``segformer_head.py`` and the
DELIVER/StitchFusion ``semseg`` head): ``linear_c{1..4}.proj``, ``linear_fuse.conv``,
``linear_fuse.bn``, ``linear_pred``.

Efficient evaluation (``fused=True``, the default): the chain ``linear_c{i}`` -> upsample ->
slice ``i`` of the ``linear_fuse`` 1x1 conv is linear, and bilinear resampling commutes with
per-pixel affine maps (its weights sum to 1). So each stage is mapped directly by the composed
matrix ``W_fuse[:, slice_i] @ W_c{i}`` (``E x C_i``) at its own resolution, upsampled with
``E`` channels, and the four results are summed; the composed biases are added once. This is
the same function with the same parameters and gradients (up to float rounding) but avoids the
``4E``-channel concatenation at 1/4 scale, saving most of the head's memory and FLOPs.
``fused=False`` runs the literal official computation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError

__all__ = ["SegFormerHead", "LinearEmbed", "ConvBNReLU"]


class LinearEmbed(nn.Module):
    """Per-token linear projection (official ``MLP``): ``[B, C, H, W] -> [B, H*W, E]``.

    Key: ``proj`` (Linear(C -> E)).
    """

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.flatten(2).transpose(1, 2))


class ConvBNReLU(nn.Module):
    """1x1 conv (no bias) + BatchNorm + ReLU (official ``ConvModule``). Keys ``conv``, ``bn``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class SegFormerHead(nn.Module):
    """SegFormer all-MLP decode head.

    Args:
        in_channels: channels ``C_1..C_4`` of the four encoder maps.
        num_classes: ``K``.
        embed_dim: ``E`` (256 for MiT-B0/B1, 512 otherwise in the paper).
        dropout: ``Dropout2d`` probability before ``linear_pred`` (0.1).
        fused: use the composed-weight evaluation (same function, less memory; see module doc).

    ``forward([c1, c2, c3, c4])`` with ``c_i: [B, C_i, H_i, W_i]`` (strides 4, 8, 16, 32)
    returns logits ``[B, K, H_1, W_1]`` (1/4 of the input size).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        embed_dim: int = 256,
        dropout: float = 0.1,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ConfigError(f"SegFormerHead needs 4 input channel counts, got {list(in_channels)}")
        self.in_channels = [int(c) for c in in_channels]
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.fused = fused
        for i, c in enumerate(self.in_channels):
            self.add_module(f"linear_c{i + 1}", LinearEmbed(c, embed_dim))
        self.linear_fuse = ConvBNReLU(4 * embed_dim, embed_dim)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    @staticmethod
    def num_classes_in(state_dict, prefix: str = "") -> int | None:
        """``K`` of a state dict holding this head under ``prefix`` (its ``linear_pred``), or
        ``None`` when the key is absent."""
        w = state_dict.get(f"{prefix}linear_pred.weight")
        return None if w is None else int(w.shape[0])

    def _linear_c(self, i: int) -> LinearEmbed:
        return getattr(self, f"linear_c{i + 1}")

    def _check(self, feats: Sequence[Tensor]) -> None:
        if len(feats) != 4:
            raise ValueError(f"SegFormerHead expects 4 feature maps, got {len(feats)}")
        for i, (f, c) in enumerate(zip(feats, self.in_channels, strict=True)):
            if f.ndim != 4 or f.shape[1] != c:
                raise ValueError(
                    f"SegFormerHead input {i + 1}: expected [B, {c}, H, W], got {tuple(f.shape)}"
                )

    def fuse_reference(self, feats: Sequence[Tensor]) -> Tensor:
        """Literal official computation up to ``linear_fuse`` -> ``[B, E, H_1, W_1]``."""
        b = feats[0].shape[0]
        size = feats[0].shape[-2:]
        outs = []
        for i, f in enumerate(feats):
            y = self._linear_c(i)(f).transpose(1, 2).reshape(b, self.embed_dim, *f.shape[-2:])
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            outs.append(y)
        return self.linear_fuse(torch.cat(outs[::-1], dim=1))

    def fuse_composed(self, feats: Sequence[Tensor]) -> Tensor:
        """Composed-weight computation up to ``linear_fuse`` -> ``[B, E, H_1, W_1]``."""
        e = self.embed_dim
        size = feats[0].shape[-2:]
        w_fuse = self.linear_fuse.conv.weight.flatten(1)  # [E, 4E], column blocks c4, c3, c2, c1
        acc: Tensor | None = None
        bias: Tensor | None = None
        for i in (3, 2, 1, 0):
            proj = self._linear_c(i).proj
            w_slice = w_fuse[:, (3 - i) * e : (4 - i) * e]  # [E, E]
            w = w_slice @ proj.weight  # [E, C_i]
            b_i = w_slice @ proj.bias  # [E]
            bias = b_i if bias is None else bias + b_i
            f = feats[i]
            # [B, C, H, W] -> [B, H, W, C] (a view for channels-last maps) -> [B, H, W, E]
            y = F.linear(f.permute(0, 2, 3, 1), w).permute(0, 3, 1, 2)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            # In-place accumulation is safe: these tensors are fresh outputs that no backward
            # function saved (mm and interpolate save their inputs only).
            acc = y if acc is None else acc.add_(y)
        assert acc is not None and bias is not None
        acc = acc.add_(bias.view(1, -1, 1, 1))
        return self.linear_fuse.act(self.linear_fuse.bn(acc))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """``[c1, c2, c3, c4]`` -> logits ``[B, K, H_1, W_1]``."""
        self._check(feats)
        x = self.fuse_composed(feats) if self.fused else self.fuse_reference(feats)
        return self.linear_pred(self.dropout(x))
