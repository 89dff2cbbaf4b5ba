"""Known answers for the spec registry and the ``encode: hha`` specs (issue 26): ``get_spec``,
``resolve_specs``, ``encoding_defaults``, ``ModalitySpec._check_hha`` and ``_encode_hha``.

The HHA scene is a fronto-parallel wall 2 m ahead of a 4x5 px pinhole camera (fx = fy = 50 px,
cx = 2, cy = 1.5), worked out by hand from the published encoding (Gupta et al., ECCV 2014;
see ``tests/data/test_depth_geometry.py``):

- disparity ``310 / max(Z, 1 m)`` = 310 / 2 = 155 everywhere;
- a lone wall leaves gravity at the camera's down ``(0, 1, 0)``, so the height above the
  camera is ``-y = -(v - 1.5) * 2 / 50``: +6, +2, -2, -6 cm for rows 0..3; the lowest point
  (6 cm below) is less than 90 cm below the camera, so the floor is taken 130 cm below it:
  heights 136, 132, 128, 124 cm;
- the wall's normal ``(0, 0, -1)`` is at 90 degrees to up: 90 + 38 = 128.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from fusionseg.data.io import DataError
from fusionseg.data.modalities import (
    DEFAULT_SPECS,
    ModalitySpec,
    NormStats,
    encoding_defaults,
    get_spec,
    resolve_specs,
)

K = (50.0, 50.0, 2.0, 1.5)  # fx, fy, cx, cy of a 4x5 px depth image
WALL_HHA = (  # [3, 4, 5] uint8 levels of the wall 2 m ahead (module docstring)
    [[155] * 5] * 4,
    [[136] * 5, [132] * 5, [128] * 5, [124] * 5],
    [[128] * 5] * 4,
)


def _hha_spec(**extra) -> ModalitySpec:
    return get_spec("depth", encode="hha", intrinsics=list(K), **extra)


# ------------------------------------------------------------------------------ _encode_hha

def test_encode_hha_of_a_wall_is_the_hand_computed_encoding_over_255():
    """1500 stored units * 1 mm + 0.5 m offset = a wall at 2 m: HHA levels / 255, float32."""
    spec = _hha_spec(offset=0.5)
    x = spec.from_array(np.full((4, 5), 1500, dtype=np.uint16))
    assert x.dtype == torch.float32 and x.shape == (3, 4, 5)
    expected = torch.tensor(WALL_HHA, dtype=torch.float32) / 255.0
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-7)


def test_encode_hha_error_names_file_modality_and_problem():
    """No valid depth pixel: the geometry's DataError re-raised with the file and modality."""
    with pytest.raises(DataError) as info:
        _hha_spec().from_array(np.zeros((4, 5), dtype=np.uint16), path="scene/d.png")
    err = info.value
    assert err.path == "scene/d.png" and err.modality == "depth"
    assert err.problem.startswith("encode: hha: ") and "no valid pixel" in err.problem
    assert str(err).startswith("scene/d.png [modality 'depth']: encode: hha: ")


# ------------------------------------------------------------------------------ _check_hha

def test_check_hha_accepts_any_positive_focal_length_and_any_principal_point():
    """Only fx, fy must be > 0: fx = fy = 0.5 px and a principal point at (0, 0) are valid."""
    spec = get_spec("depth", encode="hha", intrinsics=[0.5, 0.5, 0.0, 0.0])
    assert spec.intrinsics == (0.5, 0.5, 0.0, 0.0) and spec.out_channels == 3
    assert get_spec("depth", encode="hha", intrinsics=[50.0, 50.0, 0.0, -3.0]).encode == "hha"


def test_check_hha_needs_intrinsics():
    msg = ("modality 'depth': encode: hha needs intrinsics: [fx, fy, cx, cy] (pixels) of the "
           "depth image")
    with pytest.raises(DataError, match=re.escape(msg)):
        get_spec("depth", encode="hha")


@pytest.mark.parametrize("intrinsics", [
    (0.0, 50.0, 2.0, 1.5),  # fx = 0
    (50.0, -1.0, 2.0, 1.5),  # fy < 0
    (math.nan, 50.0, 2.0, 1.5),  # not finite
    (50.0, 50.0, math.inf, 1.5),  # cx not finite
])
def test_check_hha_rejects_zero_focal_lengths_and_non_finite_intrinsics(intrinsics):
    msg = (f"modality 'depth': encode: hha: intrinsics {list(intrinsics)} need finite values "
           "and focal lengths fx, fy > 0")
    with pytest.raises(DataError, match=re.escape(msg)):
        get_spec("depth", encode="hha", intrinsics=list(intrinsics))


def test_check_hha_takes_one_channel_metres_and_no_repeat():
    with pytest.raises(DataError, match=re.escape(
            "modality 'depth': encode: hha takes a 1-channel depth file, got channels=3")):
        _hha_spec(channels=3)
    with pytest.raises(DataError, match=re.escape(
            "modality 'depth': encode: hha needs depth in metres: set scale (metres per stored "
            "unit, e.g. 0.001 for millimetres)")):
        _hha_spec(scale="auto")
    with pytest.raises(DataError, match=re.escape(
            "modality 'depth': encode: hha gives 3 channels itself: repeat_to must be null, "
            "got 3")):
        _hha_spec(repeat_to=3)


# ------------------------------------------------------------------------------ encoding_defaults

def test_encoding_defaults_of_hha_are_imagenet_and_no_repeat():
    assert encoding_defaults({"encode": "hha"}) == {"normalize": "imagenet", "repeat_to": None}
    assert encoding_defaults({"encode": "hha", "intrinsics": [1, 1, 0, 0]}) == {
        "normalize": "imagenet", "repeat_to": None}


def test_encoding_defaults_leave_out_given_fields_and_need_encode_hha():
    assert encoding_defaults({"encode": "hha", "normalize": None}) == {"repeat_to": None}
    assert encoding_defaults({"encode": "hha", "repeat_to": 3}) == {"normalize": "imagenet"}
    assert encoding_defaults({"encode": "hha", "normalize": None, "repeat_to": 3}) == {}
    assert encoding_defaults({"encode": None}) == {}
    assert encoding_defaults({"normalize": "minmax"}) == {}


# ------------------------------------------------------------------------------ get_spec

def test_get_spec_unknown_name_error_lists_known_names_and_names_modality():
    known = "rgb, depth, hha, thermal, event, lidar, aolp, dolp, nir, dsm, irrg"
    with pytest.raises(DataError) as info:
        get_spec("radar")
    err = info.value
    assert err.modality == "radar" and err.path is None
    assert err.problem == (f"unknown modality 'radar' (known: {known}); give at least "
                           "'channels' to define a new one")
    assert str(err).startswith("[modality 'radar']: unknown modality 'radar'")


def test_get_spec_new_channel_count_drops_a_default_repeat_that_no_longer_divides():
    """thermal repeats 1 -> 3: with 2 channels 3 % 2 != 0 drops it, with 3 (3 % 3 = 0) it stays."""
    two = get_spec("thermal", channels=2)
    assert two.repeat_to is None and two.out_channels == 2
    three = get_spec("thermal", channels=3)
    assert three.repeat_to == 3 and three.out_channels == 3
    one = get_spec("rgb", channels=1)  # no default repeat: stays none
    assert one.repeat_to is None and one.out_channels == 1
    # an explicit repeat_to is kept as given
    assert get_spec("thermal", channels=2, repeat_to=4).repeat_to == 4


def test_get_spec_zero_channels_with_repeat_is_a_data_error_naming_channels():
    with pytest.raises(DataError, match=r"invalid modality spec: channels: ") as info:
        get_spec("thermal", channels=0, repeat_to=3)
    assert info.value.modality == "thermal"


@pytest.mark.parametrize("channels", [0, -3, "two", None])
def test_get_spec_bad_channels_on_a_repeating_default_is_a_data_error_naming_channels(channels):
    """thermal repeats to 3: a channel count that is not a positive int is named by the
    validation (was a ZeroDivisionError / ValueError from the repeat check)."""
    with pytest.raises(DataError, match=r"invalid modality spec: channels: ") as info:
        get_spec("thermal", channels=channels)
    assert info.value.modality == "thermal"


def test_get_spec_changing_channels_drops_a_default_file_channel_selection(monkeypatch):
    """A registered default taking channel 3 of RGBA keeps it unless ``channels`` changes."""
    base = ModalitySpec(name="ir4", channels=1, file_channels=(3,), repeat_to=3)
    monkeypatch.setitem(DEFAULT_SPECS, "ir4", base)
    assert get_spec("ir4").file_channels == (3,)
    assert get_spec("ir4", normalize=None).file_channels == (3,)
    assert get_spec("ir4", channels=1).file_channels is None
    assert get_spec("ir4", channels=3).file_channels is None
    assert get_spec("ir4", channels=1, file_channels=(2,)).file_channels == (2,)


def test_get_spec_invalid_override_error_lists_each_problem_by_field_path():
    with pytest.raises(DataError) as info:
        get_spec("rgb", channels=0, colour=True)
    err = info.value
    assert err.modality == "rgb"
    assert str(err).startswith("[modality 'rgb']: invalid modality spec: channels: ")
    assert re.fullmatch(r"invalid modality spec: channels: [^;]+; colour: Extra inputs are not "
                        r"permitted", err.problem), err.problem
    with pytest.raises(DataError, match=r"invalid modality spec: intrinsics\.2: ") as info:
        get_spec("rgb", intrinsics=[1.0, 2.0, "a", 4.0])
    assert info.value.modality == "rgb"


def test_get_spec_whole_spec_error_is_labelled_spec():
    with pytest.raises(DataError) as info:
        get_spec("rgb", repeat_to=4)
    assert info.value.modality == "rgb"
    assert info.value.problem.startswith("invalid modality spec: spec: ")
    assert "modality 'rgb': repeat_to=4 is not a multiple of channels=3" in info.value.problem


# ------------------------------------------------------------------------------ resolve_specs

def test_resolve_specs_takes_given_spec_objects_as_is():
    given = ModalitySpec(name="x", channels=2, scale=1.0, normalize=None)
    out = resolve_specs(["x", "rgb"], {"x": given})
    assert out["x"] is given
    assert out["rgb"] == DEFAULT_SPECS["rgb"]


def test_resolve_specs_dict_overrides_apply_on_the_default_spec():
    out = resolve_specs(["rgb", "depth"], {"rgb": {"bit_depth": 8}})
    assert out["rgb"].bit_depth == 8 and out["rgb"].name == "rgb" and out["rgb"].channels == 3
    assert out["depth"] == DEFAULT_SPECS["depth"]


def test_resolve_specs_dict_overrides_apply_on_the_dataset_default():
    """A dataset's depth in centimetres (scale 0.01) keeps its scale under a bit-depth override."""
    dataset_depth = get_spec("depth", scale=0.01)
    out = resolve_specs(["depth"], {"depth": {"bit_depth": None}}, {"depth": dataset_depth})
    spec = out["depth"]
    assert spec.name == "depth" and spec.scale == 0.01 and spec.bit_depth is None
    assert spec.repeat_to == 3 and spec.normalize == NormStats(mean=(0.0,), std=(65.535,))


def test_resolve_specs_encode_hha_on_dataset_default_drops_repeat_and_uses_imagenet():
    dataset_depth = get_spec("depth", scale=0.01)
    out = resolve_specs(["depth"], {"depth": {"encode": "hha", "intrinsics": list(K)}},
                        {"depth": dataset_depth})
    spec = out["depth"]
    assert spec.scale == 0.01 and spec.encode == "hha" and spec.intrinsics == K
    assert spec.repeat_to is None and spec.normalize == "imagenet" and spec.out_channels == 3
