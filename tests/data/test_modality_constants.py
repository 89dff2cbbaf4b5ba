"""The normalisation constants of the modality specs, pinned and checked on patterned images
against values written out by hand (never through ``normalize_tensor`` itself).

Where the numbers come from:

- ImageNet mean / std, RGB order: torchvision's ImageNet classification transforms
  (``mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)``), the same as mmsegmentation's
  ``img_norm_cfg`` in 0-255 units (``mean=[123.675, 116.28, 103.53], std=[58.395, 57.12,
  57.375], to_rgb=True``) that the SegFormer / CMNeXt / StitchFusion releases use.
- Depth: 16-bit PNGs in millimetres (NYUDv2 ``Depth/*.png``, ``../shared/specs/datasets.md``),
  so metres = raw * 0.001, divided by the 16-bit range 65535 mm = 65.535 m
  (``DEPTH_MAX_RANGE_M``) to land in [0, 1].
- DSM: min-max per tile (``../shared/specs/datasets.md``, ISPRS; MoBaNet normalises each tile).
- MUSES LiDAR / radar PNGs: the SDK stores ``(value + 100) * 150`` as uint16
  (``../shared/specs/datasets.md``); without the SDK's statistics file the fallback scales
  are range 50 m, intensity 50, height 5 m (``MUSES_FALLBACK_NORM``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionseg.data.datasets.muses import MUSES_FALLBACK_NORM, _sensor_spec
from fusionseg.data.io import DataError
from fusionseg.data.modalities import (
    DEFAULT_SPECS,
    DEPTH_MAX_RANGE_M,
    IMAGENET_MEAN,
    IMAGENET_STD,
    get_spec,
)

MEAN = (0.485, 0.456, 0.406)  # R, G, B
STD = (0.229, 0.224, 0.225)


def test_imagenet_constants_are_the_published_values_in_rgb_order():
    assert IMAGENET_MEAN == MEAN
    assert IMAGENET_STD == STD
    # mmsegmentation's img_norm_cfg (0-255 units, to_rgb=True)
    assert [255 * m for m in IMAGENET_MEAN] == pytest.approx([123.675, 116.28, 103.53])
    assert [255 * s for s in IMAGENET_STD] == pytest.approx([58.395, 57.12, 57.375])


def test_rgb_pixels_normalise_per_channel_by_hand():
    img = np.full((2, 3, 3), 10, dtype=np.uint8)
    img[0, 0] = (255, 0, 128)
    img[1, 2] = (0, 255, 64)
    x = get_spec("rgb").from_array(img, normalize=True)
    assert x.shape == (3, 2, 3)
    want00 = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    want12 = [(0 - 0.485) / 0.229, (1 - 0.456) / 0.224, (64 / 255 - 0.406) / 0.225]
    want_bg = [(10 / 255 - 0.485) / 0.229, (10 / 255 - 0.456) / 0.224,
               (10 / 255 - 0.406) / 0.225]
    assert x[:, 0, 0].tolist() == pytest.approx(want00, rel=1e-6)
    assert x[:, 1, 2].tolist() == pytest.approx(want12, rel=1e-6)
    assert x[:, 0, 1].tolist() == pytest.approx(want_bg, rel=1e-6)
    # the pad value (physical) is the mean colour, which normalises to 0
    assert get_spec("rgb").pad_value() == pytest.approx(list(MEAN))
    # 16-bit colour: 65535 is 1.0
    img16 = np.zeros((1, 1, 3), dtype=np.uint16)
    img16[0, 0] = (65535, 0, 0)
    x16 = get_spec("rgb").from_array(img16, normalize=True)
    assert x16[:, 0, 0].tolist() == pytest.approx(
        [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225], rel=1e-6)


@pytest.mark.parametrize("name", ["thermal", "event", "lidar", "nir"])
def test_one_channel_intensity_is_repeated_then_normalised_per_channel(name):
    img = np.array([[51, 255]], dtype=np.uint8)  # 0.2 and 1.0
    x = get_spec(name).from_array(img, normalize=True)
    assert x.shape == (3, 1, 2)
    assert x[:, 0, 0].tolist() == pytest.approx(
        [(0.2 - 0.485) / 0.229, (0.2 - 0.456) / 0.224, (0.2 - 0.406) / 0.225], rel=1e-6)
    assert x[:, 0, 1].tolist() == pytest.approx(
        [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], rel=1e-6)


@pytest.mark.parametrize("name", ["hha", "irrg"])
def test_three_channel_8bit_encodings_use_imagenet_statistics(name):
    img = np.array([[[255, 0, 51]]], dtype=np.uint8)
    x = get_spec(name).from_array(img, normalize=True)
    assert x[:, 0, 0].tolist() == pytest.approx(
        [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225], rel=1e-6)


def test_depth_is_millimetres_to_metres_over_the_16bit_range_by_hand():
    assert DEPTH_MAX_RANGE_M == 65.535  # 65535 mm, the largest 16-bit value
    spec = get_spec("depth")
    assert (spec.scale, spec.unit, spec.bit_depth, spec.repeat_to) == (0.001, "m", 16, 3)
    raw = np.array([[0, 13107], [65535, 1000]], dtype=np.uint16)  # millimetres
    metres = spec.from_array(raw)
    assert metres.shape == (3, 2, 2)
    for c in range(3):
        assert metres[c].flatten().tolist() == pytest.approx([0.0, 13.107, 65.535, 1.0],
                                                             rel=1e-6)
    x = spec.from_array(raw, normalize=True)
    for c in range(3):  # 13.107 / 65.535 = 0.2 exactly; 1 m = 1 / 65.535
        assert x[c].flatten().tolist() == pytest.approx([0.0, 0.2, 1.0, 1 / 65.535], rel=1e-6)
    assert spec.pad_value() == [0.0, 0.0, 0.0]
    with pytest.raises(DataError, match="bit depth"):
        spec.from_array(raw.astype(np.uint8))


def test_dsm_is_min_max_per_tile_and_polarisation_is_not_normalised():
    heights = np.array([[10.0, 20.0], [30.0, 30.0]], dtype=np.float32)
    dsm = get_spec("dsm")
    x = dsm.from_array(heights, normalize=True)
    assert x[0].flatten().tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert torch.equal(dsm.normalize_tensor(x), x)  # min-max happens at load, before crops
    aolp = np.array([[[-1.0, 0.5, 1.0]]], dtype=np.float32)
    assert get_spec("aolp").from_array(aolp, normalize=True)[:, 0, 0].tolist() == [-1.0, 0.5, 1.0]
    dolp = np.array([[0.25]], dtype=np.float32)
    assert get_spec("dolp").from_array(dolp, normalize=True)[:, 0, 0].tolist() == [0.25] * 3


def test_default_specs_normalisation_modes():
    modes = {name: spec.normalize for name, spec in DEFAULT_SPECS.items()}
    for name in ("rgb", "hha", "thermal", "event", "lidar", "nir", "irrg"):
        assert modes[name] == "imagenet", name
    assert modes["aolp"] is None and modes["dolp"] is None and modes["dsm"] == "minmax"
    assert tuple(modes["depth"].mean) == (0.0,) and tuple(modes["depth"].std) == (65.535,)


def test_muses_lidar_png_decoding_and_fallback_scales_by_hand():
    assert tuple(MUSES_FALLBACK_NORM["lidar"].std) == (50.0, 50.0, 5.0)
    assert tuple(MUSES_FALLBACK_NORM["radar"].std) == (50.0, 50.0, 1.0)
    spec = _sensor_spec("lidar", ".png", MUSES_FALLBACK_NORM["lidar"])
    # range 50 m, intensity 25, height 5 m stored as (value + 100) * 150
    raw = np.array([[[(50 + 100) * 150, (25 + 100) * 150, (5 + 100) * 150]]], dtype=np.uint16)
    assert spec.from_array(raw)[:, 0, 0].tolist() == pytest.approx([50.0, 25.0, 5.0], rel=1e-5)
    x = spec.from_array(raw, normalize=True)
    assert x[:, 0, 0].tolist() == pytest.approx([50 / 50, 25 / 50, 5 / 5], rel=1e-5)
