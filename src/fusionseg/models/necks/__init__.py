"""Necks between a backbone and a head.

:class:`Sam2FpnNeck` (:mod:`.sam2_fpn`): the SAM 2 / 2.1 image-encoder FPN neck over a Hiera
trunk (:class:`~fusionseg.models.backbones.hiera.Hiera`), with the sine position encoding
:func:`sine_position_encoding`.

:class:`SimpleFeaturePyramid` (:mod:`.simple_pyramid`): the ViTDet simple feature pyramid
(strides 4, 8, 16, 32 from stride-16 ViT maps, optionally with a given stride-16 embedding).
"""

from __future__ import annotations

from .sam2_fpn import Sam2FpnNeck, checkpoint_filter_fn, sine_position_encoding
from .simple_pyramid import SimpleFeaturePyramid

__all__ = ["Sam2FpnNeck", "SimpleFeaturePyramid", "checkpoint_filter_fn", "sine_position_encoding"]
