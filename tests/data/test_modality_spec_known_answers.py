"""Known-answer tests of ``ModalitySpec`` reading and normalisation (issue 26, mutation testing).

Every expected value is worked out by hand on tiny arrays (2x2 .. 8x8 px): raw -> physical
(``raw * scale + offset``), non-finite -> 0, per-channel min-max, channel repeat, alpha drop,
the normalisation constants per channel count, the pad value, and the errors (they must name
the file, the modality and the problem).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionseg.data.io import DataError
from fusionseg.data.modalities import ModalitySpec, NormStats, _per_channel, get_spec

MEAN = (0.485, 0.456, 0.406)  # ImageNet, RGB order (torchvision)
STD = (0.229, 0.224, 0.225)


def _plain(channels: int = 1, **kw) -> ModalitySpec:
    """A spec that keeps raw values (scale 1, no normalisation) unless told otherwise."""
    kw.setdefault("scale", 1.0)
    kw.setdefault("normalize", None)
    return ModalitySpec(name="probe", channels=channels, **kw)


# ------------------------------------------------------------------------------ _per_channel

def test_per_channel_keeps_values_of_the_right_length():
    assert _per_channel((1.0, 2.0, 3.0), 3) == [1.0, 2.0, 3.0]


def test_per_channel_broadcasts_a_single_value():
    assert _per_channel((7.0,), 3) == [7.0, 7.0, 7.0]
    assert _per_channel((7.0,), 2) == [7.0, 7.0]


def test_per_channel_averages_for_one_channel():
    """(0.485 + 0.456 + 0.406) / 3 = 0.449 for a 1-channel tensor."""
    assert _per_channel(MEAN, 1) == [pytest.approx(0.449)]
    assert _per_channel((1.0, 2.0), 1) == [1.5]


def test_per_channel_cycles_other_lengths():
    assert _per_channel((1.0, 2.0, 3.0), 2) == [1.0, 2.0]
    assert _per_channel((1.0, 2.0), 3) == [1.0, 2.0, 1.0]
    assert _per_channel((1.0, 2.0), 4) == [1.0, 2.0, 1.0, 2.0]
    assert _per_channel((1.0, 2.0, 3.0), 5) == [1.0, 2.0, 3.0, 1.0, 2.0]


# ------------------------------------------------------------------------------ normalisation

def test_imagenet_pad_value_per_channel_count():
    """The pad value is the ImageNet mean: averaged for 1 channel, cycled for 2 and 4."""
    spec = get_spec("rgb")
    assert spec.pad_value() == [0.485, 0.456, 0.406]
    assert spec.pad_value(1) == [pytest.approx(0.449)]
    assert spec.pad_value(2) == [0.485, 0.456]
    assert spec.pad_value(4) == [0.485, 0.456, 0.406, 0.485]


def test_pad_value_is_zero_without_normalisation_minmax_and_divide255():
    assert _plain(2).pad_value() == [0.0, 0.0]
    assert _plain(3, normalize="minmax").pad_value() == [0.0, 0.0, 0.0]
    assert _plain(3, normalize="divide255").pad_value() == [0.0, 0.0, 0.0]
    assert get_spec("dsm").pad_value(2) == [0.0, 0.0]


def test_normalize_none_and_minmax_leave_the_tensor_unchanged():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert _plain(1).normalize_tensor(x).tolist() == [[[1.0, 2.0], [3.0, 4.0]]]
    assert _plain(1, normalize="minmax").normalize_tensor(x).tolist() == [[[1.0, 2.0], [3.0, 4.0]]]
    assert _plain(1).denormalize_tensor(x).tolist() == [[[1.0, 2.0], [3.0, 4.0]]]


def test_imagenet_normalises_one_and_three_channels_by_hand():
    """x = 0.449 (the mean of the means) -> 0 for 1 channel; (1 - 0.485) / 0.229 etc. for 3."""
    spec = get_spec("rgb")
    one = spec.normalize_tensor(torch.full((1, 2, 2), 0.449, dtype=torch.float64))
    assert one.abs().max().item() < 1e-12
    ones = spec.normalize_tensor(torch.ones(3, 1, 1))
    assert ones.flatten().tolist() == pytest.approx(
        [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], rel=1e-6)
    # the 1-channel std is the mean of the stds: (0.229 + 0.224 + 0.225) / 3 = 0.226
    assert spec.normalize_tensor(torch.full((1, 1, 1), 1.449)).item() == pytest.approx(1 / 0.226)


def test_divide255_divides_by_255():
    """255 -> 1, 63.75 -> 0.25, 0 -> 0, 127.5 -> 0.5, per channel (mean 0, std 255)."""
    spec = _plain(2, normalize="divide255")
    x = torch.tensor([[[255.0, 63.75]], [[0.0, 127.5]]])
    assert spec.normalize_tensor(x).tolist() == [[[1.0, 0.25]], [[0.0, 0.5]]]
    assert spec.denormalize_tensor(torch.tensor([[[1.0]], [[0.5]]])).tolist() == [
        [[255.0]], [[127.5]]]


def test_normstats_normalise_per_channel_and_broadcast():
    """mean (1, 2), std (2, 4): 5 -> (5-1)/2 = 2 and (10-2)/4 = 2; one std 0.5 for both."""
    spec = _plain(2, normalize=NormStats(mean=(1.0, 2.0), std=(2.0, 4.0)))
    x = torch.tensor([[[5.0]], [[10.0]]])
    assert spec.normalize_tensor(x).tolist() == [[[2.0]], [[2.0]]]
    assert spec.pad_value() == [1.0, 2.0]
    bcast = _plain(2, normalize=NormStats(mean=(1.0,), std=(0.5,)))
    assert bcast.normalize_tensor(x).tolist() == [[[8.0]], [[18.0]]]


def test_depth_default_divides_metres_by_65_535():
    spec = get_spec("depth")
    x = torch.full((3, 1, 1), 65.535)
    assert spec.normalize_tensor(x).flatten().tolist() == pytest.approx([1.0] * 3)
    assert spec.pad_value() == [0.0, 0.0, 0.0]


def test_normalise_keeps_the_tensor_dtype():
    """float16 in -> float16 out (the mean/std are made in the tensor's dtype)."""
    x = torch.full((3, 2, 2), 0.5, dtype=torch.float16)
    y = get_spec("rgb").normalize_tensor(x)
    assert y.dtype == torch.float16
    assert y[:, 0, 0].tolist() == pytest.approx([0.0655, 0.1964, 0.4178], abs=2e-3)


def test_normalise_keeps_the_tensor_device():
    """Mean/std are made on the tensor's device ("meta" stands in for an accelerator)."""
    x = torch.empty(3, 4, 4, device="meta")
    assert get_spec("rgb").normalize_tensor(x).device.type == "meta"
    assert get_spec("rgb").denormalize_tensor(x).device.type == "meta"


# ------------------------------------------------------------------------------ scale_for

def test_scale_auto_maps_integer_ranges_and_keeps_float_and_bool():
    spec = get_spec("rgb")
    assert spec.scale_for(np.uint8) == 1 / 255
    assert spec.scale_for(np.dtype(np.uint16)) == 1 / 65535
    assert spec.scale_for(np.int16) == 1 / 32767
    assert spec.scale_for(np.float32) == 1.0
    assert spec.scale_for(np.float64) == 1.0
    assert spec.scale_for(np.bool_) == 1.0
    assert get_spec("depth").scale_for(np.uint16) == 0.001


def test_bool_and_float_images_keep_their_values_with_auto_scale():
    """True -> 1.0, False -> 0.0; float 0.25 stays 0.25 (scale 1 for both)."""
    spec = _plain(1, scale="auto")
    b = spec.from_array(np.array([[True, False], [False, True]]))
    assert b.dtype == torch.float32
    assert b.tolist() == [[[1.0, 0.0], [0.0, 1.0]]]
    f = spec.from_array(np.array([[0.25, 2.0]], dtype=np.float64))
    assert f.dtype == torch.float32
    assert f.tolist() == [[[0.25, 2.0]]]


# ------------------------------------------------------------------------------ raw -> physical

def test_uint8_rgb_becomes_float32_fractions():
    """uint8 255 -> 1.0, 51 -> 0.2, 0 -> 0; layout [H, W, C] -> [C, H, W]."""
    img = np.zeros((1, 2, 3), dtype=np.uint8)
    img[0, 0] = (255, 51, 0)
    x = get_spec("rgb").from_array(img)
    assert x.dtype == torch.float32 and x.shape == (3, 1, 2)
    assert x[:, 0, 0].tolist() == pytest.approx([1.0, 0.2, 0.0])
    assert x[:, 0, 1].tolist() == [0.0, 0.0, 0.0]


def test_scale_one_keeps_raw_values_as_float32():
    """aolp (scale 1): uint8 7 -> 7.0 and float64 -0.5 -> -0.5, both float32."""
    spec = get_spec("aolp")
    u = spec.from_array(np.full((2, 2, 3), 7, dtype=np.uint8))
    assert u.dtype == torch.float32 and (u == 7.0).all()
    f = spec.from_array(np.full((2, 2, 3), -0.5, dtype=np.float64))
    assert f.dtype == torch.float32 and (f == -0.5).all()


def test_scale_two_doubles_raw_values():
    """raw 3 * 2 = 6; raw -1.5 * 2 = -3."""
    x = _plain(1, scale=2.0).from_array(np.array([[3.0, -1.5]], dtype=np.float32))
    assert x.tolist() == [[[6.0, -3.0]]]


def test_offset_one_is_added_after_scaling():
    """raw 3 * 1 + 1 = 4; raw 10 * 0.5 + 1 = 6."""
    x = _plain(1, offset=1.0).from_array(np.array([[3.0, 0.0]], dtype=np.float32))
    assert x.tolist() == [[[4.0, 1.0]]]
    y = _plain(1, scale=0.5, offset=1.0).from_array(np.array([[10]], dtype=np.uint8))
    assert y.tolist() == [[[6.0]]]


def test_nan_and_infinities_become_zero():
    """NaN, +inf, -inf -> 0; finite values kept (2.5 stays 2.5)."""
    raw = np.array([[np.nan, np.inf], [-np.inf, 2.5]], dtype=np.float32)
    x = _plain(1).from_array(raw)
    assert x.tolist() == [[[0.0, 0.0], [0.0, 2.5]]]


def test_scale_overflowing_to_infinity_becomes_zero():
    """float32 max * 2 overflows to +inf, -max * 2 to -inf: both -> 0."""
    big = np.finfo(np.float32).max
    x = _plain(1, scale=2.0).from_array(np.array([[big, -big, 1.0]], dtype=np.float32))
    assert x.tolist() == [[[0.0, 0.0, 2.0]]]


# ------------------------------------------------------------------------------ minmax

def test_minmax_scales_each_channel_by_its_own_range():
    """Channel 0: 0..0.5 -> 0, 0.5, 1 at 0, 0.25, 0.5; channel 1: 10..30 -> 0, 0.5, 1."""
    raw = np.array([[[0.0, 10.0], [0.25, 20.0], [0.5, 30.0]]], dtype=np.float32)  # [1, 3, 2]
    x = _plain(2, normalize="minmax").from_array(raw)
    assert x.shape == (2, 1, 3)
    assert x.tolist() == [[[0.0, 0.5, 1.0]], [[0.0, 0.5, 1.0]]]


def test_minmax_small_range_and_constant_channel():
    """Range 0.5 (< 1): 2.0, 2.5 -> 0, 1; a constant channel -> 0 everywhere (+0.0)."""
    raw = np.array([[[2.0, 4.0], [2.5, 4.0]], [[2.25, 4.0], [2.0, 4.0]]], dtype=np.float32)
    x = _plain(2, normalize="minmax").from_array(raw)
    assert x[0].tolist() == [[0.0, 1.0], [0.5, 0.0]]
    assert x[1].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert not torch.signbit(x[1]).any()


def test_minmax_constant_channel_of_mixed_signed_zeros_is_positive_zero():
    """+0.0 and -0.0 are one constant value: the result is +0.0 (not -0.0) everywhere."""
    raw = np.array([[0.0, -0.0], [-0.0, 0.0]], dtype=np.float32)
    x = _plain(1, normalize="minmax").from_array(raw)
    assert x.tolist() == [[[0.0, 0.0], [0.0, 0.0]]]
    assert not torch.signbit(x).any()


def test_dsm_minmax_over_the_whole_tile():
    """dsm heights 100, 101, 103, 105 m -> 0, 0.2, 0.6, 1."""
    raw = np.array([[100.0, 101.0], [103.0, 105.0]], dtype=np.float32)
    x = get_spec("dsm").from_array(raw)
    assert x.flatten().tolist() == pytest.approx([0.0, 0.2, 0.6, 1.0])


# ------------------------------------------------------------------------------ channels

def test_repeat_to_accepts_a_file_of_repeat_to_channels_as_is():
    """thermal (1 -> 3): a 3-channel file (51, 102, 255) -> (0.2, 0.4, 1), not repeated."""
    img = np.zeros((2, 2, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 51, 102, 255
    x = get_spec("thermal").from_array(img)
    assert x.shape == (3, 2, 2)
    assert x[:, 1, 1].tolist() == pytest.approx([0.2, 0.4, 1.0])


def test_repeat_to_repeats_one_channel_even_when_height_equals_repeat_to():
    """thermal: a 1-channel 3x2 image (H = 3 = repeat_to) becomes 3 equal channels."""
    img = np.array([[0, 51], [102, 153], [204, 255]], dtype=np.uint8)
    x = get_spec("thermal").from_array(img)
    assert x.shape == (3, 3, 2)
    want = [[0.0, 0.2], [0.4, 0.6], [0.8, 1.0]]
    for ch in range(3):
        assert x[ch].flatten().tolist() == pytest.approx(sum(want, []))


def test_two_channel_file_is_taken_as_is_when_repeat_to_is_two():
    """channels 1, repeat_to 2: a 2-channel file (5, 9) is kept, not cut to (5, 5)."""
    spec = _plain(1, repeat_to=2)
    x = spec.from_array(np.array([[[5.0, 9.0]]], dtype=np.float32))
    assert x.flatten().tolist() == [5.0, 9.0]
    assert spec.from_array(np.array([[5.0]], dtype=np.float32)).flatten().tolist() == [5.0, 5.0]


def test_alpha_channel_is_dropped_only_when_one_channel_too_many():
    """rgb: RGBA (1, 2, 3, 4) -> (1, 2, 3); thermal: gray+alpha (7, 9) -> gray 7 repeated."""
    rgba = np.array([[[1.0, 2.0, 3.0, 4.0]]], dtype=np.float32)
    assert _plain(3).from_array(rgba).flatten().tolist() == [1.0, 2.0, 3.0]
    ga = np.array([[[7.0, 9.0]]], dtype=np.float32)
    assert _plain(1, repeat_to=3).from_array(ga).flatten().tolist() == [7.0, 7.0, 7.0]
    with pytest.raises(DataError, match="file has 4 channel"):
        _plain(3, drop_alpha=False).from_array(rgba)


def test_accepted_channel_counts():
    assert _plain(1)._accepted_counts() == [1]
    assert _plain(3, repeat_to=3)._accepted_counts() == [3]
    assert _plain(1, repeat_to=3)._accepted_counts() == [1, 3]
    assert _plain(2, repeat_to=4)._accepted_counts() == [2, 4]


def test_wrong_channel_count_lists_the_accepted_counts():
    """5 channels: rgb expects 3; thermal expects "1 or 3"."""
    five = np.zeros((2, 2, 5), dtype=np.uint8)
    with pytest.raises(DataError, match=r"file has 5 channel\(s\), modality 'rgb' expects 3$"):
        get_spec("rgb").from_array(five, path="x/rgb.png")
    with pytest.raises(DataError, match=r"modality 'thermal' expects 1 or 3$") as err:
        get_spec("thermal").from_array(five, path="x/t.png")
    assert err.value.path == "x/t.png" and err.value.modality == "thermal"


def test_file_channels_select_and_name_a_missing_index():
    """file_channels (3,) of RGBA (1, 2, 3, 4) -> 4; of an RGB file: index 3 is missing."""
    spec = _plain(1, file_channels=(3,))
    rgba = np.array([[[1.0, 2.0, 3.0, 4.0]]], dtype=np.float32)
    assert spec.from_array(rgba).flatten().tolist() == [4.0]
    with pytest.raises(DataError, match=r"file has 3 channel\(s\), modality 'probe' takes "
                                        r"channel index 3") as err:
        spec.from_array(np.zeros((1, 1, 3), dtype=np.float32), path="a/mfnet.png")
    assert err.value.path == "a/mfnet.png" and err.value.modality == "probe"
    assert str(err.value).startswith("a/mfnet.png [modality 'probe']: wrong channel count")


# ------------------------------------------------------------------------------ errors

def _raises_naming(spec, array, problem):
    with pytest.raises(DataError, match=problem) as err:
        spec.from_array(array, path="d/img.tif")
    assert err.value.path == "d/img.tif"
    assert err.value.modality == spec.name
    assert str(err.value).startswith("d/img.tif [modality '" + spec.name + "']: ")
    return err.value


def test_four_dimensional_array_is_rejected_with_its_shape():
    e = _raises_naming(get_spec("rgb"), np.zeros((1, 2, 2, 3)),
                       r"expected an image array \[H, W, C\], got shape \(1, 2, 2, 3\)")
    assert e.problem == "expected an image array [H, W, C], got shape (1, 2, 2, 3)"


def test_complex_array_is_rejected_with_its_dtype():
    e = _raises_naming(get_spec("rgb"), np.zeros((2, 2, 3), dtype=np.complex64),
                       "expected a numeric image array, got dtype complex64")
    assert e.problem == "expected a numeric image array, got dtype complex64"


def test_empty_array_is_rejected_with_its_shape():
    e = _raises_naming(get_spec("rgb"), np.zeros((0, 4, 3), dtype=np.uint8),
                       r"empty image array of shape \(0, 4, 3\)")
    assert e.problem == "empty image array of shape (0, 4, 3)"


def test_wrong_bit_depth_names_file_and_modality():
    e = _raises_naming(get_spec("depth"), np.zeros((2, 2), dtype=np.uint8),
                       "wrong bit depth: file is 8-bit \\(uint8\\), modality 'depth' expects 16-bit")
    assert e.problem.startswith("wrong bit depth")


def test_numeric_kinds_are_accepted():
    """bool, int, uint and float arrays all load (2 -> 2.0, True -> 1.0)."""
    spec = _plain(1)
    for arr in (np.array([[2]], dtype=np.int32), np.array([[2]], dtype=np.uint16),
                np.array([[2.0]], dtype=np.float16), np.array([[True]])):
        assert spec.from_array(arr).item() == float(arr.item())


# ------------------------------------------------------------------------------ encode: hha

def _hha_spec() -> ModalitySpec:
    """Depth in mm (scale 0.001), 8x8 px, f = 10 px, principal point at the centre 3.5."""
    return get_spec("depth", encode="hha", intrinsics=[10.0, 10.0, 3.5, 3.5])


def test_encode_hha_of_a_flat_wall_by_hand():
    """A wall 2 m ahead (raw 2000 mm): disparity 310 / 2 = 155; height: row v is
    (3.5 - v) * 2 / 10 m above the camera, lowest -0.7 m (less than 0.9 m down) so the floor
    is taken 1.3 m below: (1.3 + 0.7 - 0.2 v) * 100 = 200 - 20 v cm; normal angle 90 + 38."""
    x = _hha_spec().from_array(np.full((8, 8), 2000, dtype=np.uint16), path="w.png")
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    q = (x * 255).round()
    assert (q[0] == 155).all()
    assert q[1][:, 0].tolist() == [200.0 - 20 * v for v in range(8)]
    assert (q[1] == q[1][:, :1]).all()
    assert (q[2] == 128).all()
    assert x[0, 0, 0].item() == pytest.approx(155 / 255)


def test_encode_hha_error_names_the_file():
    """No valid depth pixel (all 0): the DataError names the file and the modality."""
    with pytest.raises(DataError, match="encode: hha: .*no valid pixel") as err:
        _hha_spec().from_array(np.zeros((8, 8), dtype=np.uint16), path="d/zero.png")
    assert err.value.path == "d/zero.png" and err.value.modality == "depth"
