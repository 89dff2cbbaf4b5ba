"""ViTDet simple feature pyramid: four maps at strides 4, 8, 16, 32 from stride-16 ViT maps.

Method: Yanghao Li, Hanzi Mao, Ross Girshick, Kaiming He, "Exploring Plain Vision Transformer
Backbones for Object Detection", ECCV 2022 (arXiv 2203.16527), Sec. 3 "simple feature
pyramid". Our own implementation written from the official ``SimpleFeaturePyramid`` of
``facebookresearch/detectron2`` (``detectron2/modeling/backbone/vit.py``) with the ViTDet
settings (``scale_factors`` 4, 2, 1, 0.5; ``norm="LN"``, hence bias-free convolutions after the
resampling; no top block). Per level, with ``C`` input and ``d`` output channels::

    stride 4   simfp_2: 0 ConvT(C, C/2, 2, s2)  1 LayerNorm2d  2 GELU  3 ConvT(C/2, C/4, 2, s2)
                        4 Conv1x1(C/4, d) + LN  5 Conv3x3(d, d) + LN
    stride 8   simfp_3: 0 ConvT(C, C/2, 2, s2)  1 Conv1x1(C/2, d) + LN  2 Conv3x3(d, d) + LN
    stride 16  simfp_4: 0 Conv1x1(C, d) + LN    1 Conv3x3(d, d) + LN
    stride 32  simfp_5: 0 MaxPool(2, s2)        1 Conv1x1(C, d) + LN  2 Conv3x3(d, d) + LN

``Conv + LN`` is detectron2's ``Conv2d(..., bias=False, norm=LayerNorm)``: keys ``weight`` and
``norm.weight`` / ``norm.bias``, so the module names (``simfp_{2,3,4,5}.{j}``) are those of a
ViTDet checkpoint's ``backbone.simfp_*`` keys. LayerNorms over channels, eps 1e-6.

Departures from ViTDet (our reconstruction choices):

* multi-tap input: level ``i`` is built from ViT tap ``i`` (shallow to deep) when four maps are
  given; ViTDet builds every level from the last map (a single tensor here does that).
* ``embed_level=True`` (default): the stride-16 level is not computed but REPLACED by a given
  precomputed ``d``-channel map (e.g. SAM's frozen 256-channel neck output, so a SAM mask
  decoder gets the embedding it was trained on); ``simfp_4`` is then not built.
* odd grids are allowed: the stride-32 level is ``floor(h / 2) x floor(w / 2)`` (max-pool without
  ceil mode, as the official layer; ViTDet pads inputs to a multiple of 32 instead).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ....errors import ConfigError
from ...layers import LayerNorm2d

__all__ = ["SimpleFeaturePyramid"]


class _ConvNorm(nn.Conv2d):
    """Bias-free ``k x k`` convolution ('same' padding) followed by a channel LayerNorm, as
    detectron2's ``Conv2d(..., norm=...)``: keys ``weight`` ``[out, in, k, k]``, ``norm.*``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, eps: float) -> None:
        super().__init__(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = LayerNorm2d(out_ch, eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self._conv_forward(x, self.weight, self.bias))


class SimpleFeaturePyramid(nn.Module):
    """ViTDet simple feature pyramid over stride-16 ViT maps (see the module docstring).

    Args:
        in_channels: ``C``, channels of every input map (the ViT width); a multiple of 4.
        d_model: ``d``, channels of every output level (256 for a SAM decoder).
        embed_level: replace the stride-16 level by the ``embed`` passed to ``forward``
            (``simfp_4`` is not built) instead of computing it from tap 2.
        eps: LayerNorm epsilon (1e-6, detectron2's ``LayerNorm``).

    Attributes:
        out_channels: ``[d, d, d, d]``. strides: ``(4, 8, 16, 32)``.

    ``forward(maps, embed=None)``:
        * ``maps``: a list of 4 maps ``[B, C, h, w]`` (``h, w = H/16, W/16``; the ViT taps,
          shallow to deep; level ``i`` is built from ``maps[i]``; with ``embed_level`` the
          stride-16 level ignores ``maps[2]``, which is only shape-checked), or one tensor
          ``[B, C, h, w]`` used for every level (ViTDet's single-map pyramid);
        * ``embed``: ``[B, d, h, w]``, required iff ``embed_level``; returned as level 2
          unchanged (the same tensor);
        * returns ``[P4 [B, d, 4h, 4w], P8 [B, d, 2h, 2w], P16 [B, d, h, w],
          P32 [B, d, h // 2, w // 2]]``, highest resolution first.

    Raises:
        ValueError: ``in_channels`` not a multiple of 4 (constructor); in ``forward`` a wrong
            number of maps, maps of different / wrong shapes, ``embed`` missing, unexpected or
            misshaped (messages start "SimpleFeaturePyramid expects ...").
    """

    strides = (4, 8, 16, 32)

    def __init__(self, in_channels: int, d_model: int = 256, embed_level: bool = True,
                 eps: float = 1e-6) -> None:
        super().__init__()
        if in_channels % 4:
            raise ConfigError(f"in_channels must be a multiple of 4, got {in_channels}")
        c, d = in_channels, d_model
        self.in_channels = c
        self.d_model = d
        self.embed_level = embed_level
        self.out_channels = [d] * 4

        def head(cin: int) -> list[nn.Module]:
            return [_ConvNorm(cin, d, 1, eps), _ConvNorm(d, d, 3, eps)]

        self.simfp_2 = nn.Sequential(
            nn.ConvTranspose2d(c, c // 2, kernel_size=2, stride=2),
            LayerNorm2d(c // 2, eps),
            nn.GELU(),
            nn.ConvTranspose2d(c // 2, c // 4, kernel_size=2, stride=2),
            *head(c // 4),
        )
        self.simfp_3 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, kernel_size=2, stride=2),
                                     *head(c // 2))
        if not embed_level:
            self.simfp_4 = nn.Sequential(*head(c))
        self.simfp_5 = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2), *head(c))

    def _check(self, maps: Tensor | Sequence[Tensor], embed: Tensor | None) -> list[Tensor]:
        if isinstance(maps, Tensor):
            maps = [maps] * 4
        maps = list(maps)
        if len(maps) != 4:
            raise ValueError(f"SimpleFeaturePyramid expects [B, {self.in_channels}, h, w] x 4 "
                             f"maps (or one tensor), got {len(maps)}")
        first = maps[0]
        if first.ndim != 4 or first.shape[1] != self.in_channels:
            raise ValueError(f"SimpleFeaturePyramid expects [B, {self.in_channels}, h, w] maps, "
                             f"got {list(first.shape)}")
        for i, m in enumerate(maps[1:], 1):
            if m.shape != first.shape:
                raise ValueError(f"SimpleFeaturePyramid expects maps of one shape "
                                 f"{list(first.shape)}, got {list(m.shape)} for map {i}")
        if self.embed_level:
            b, _, h, w = first.shape
            want = [b, self.d_model, h, w]
            if embed is None or list(embed.shape) != want:
                got = None if embed is None else list(embed.shape)
                raise ValueError(f"SimpleFeaturePyramid expects embed {want} with "
                                 f"embed_level=True, got {got}")
        elif embed is not None:
            raise ValueError("SimpleFeaturePyramid expects embed=None with embed_level=False")
        return maps

    def forward(self, maps: Tensor | Sequence[Tensor], embed: Tensor | None = None
                ) -> list[Tensor]:
        """``maps`` (4 x ``[B, C, h, w]`` or one tensor), ``embed [B, d, h, w]`` (iff
        ``embed_level``) -> ``[[B, d, 4h, 4w], [B, d, 2h, 2w], [B, d, h, w],
        [B, d, h // 2, w // 2]]``. See the class docstring."""
        maps = self._check(maps, embed)
        p16 = embed if self.embed_level else self.simfp_4(maps[2])
        return [self.simfp_2(maps[0]), self.simfp_3(maps[1]), p16, self.simfp_5(maps[3])]
