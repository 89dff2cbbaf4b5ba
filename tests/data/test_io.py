"""Readers and ModalitySpec.load: exact round trips, channel selection, units, clear errors."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from fusionseg.data import DataError, ModalitySpec, get_spec, read_image
from fusionseg.data.modalities import DEFAULT_SPECS, DEPTH_MAX_RANGE_M, IMAGENET_MEAN


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def write_png16(path, array: np.ndarray) -> None:
    """Minimal 16-bit PNG encoder (gray / gray+alpha / RGB / RGBA) using all five row filters,
    so the reader's unfiltering is exercised."""
    h, w, c = array.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = array.astype(">u2").reshape(h, w * c).view(np.uint8).reshape(h, w * c * 2)
    bpp = 2 * c
    out = bytearray()
    prev = np.zeros(w * c * 2, dtype=np.int64)
    for y in range(h):
        cur = rows[y].astype(np.int64)
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        ftype = y % 5
        pred = [np.zeros_like(cur), left, prev, (left + prev) // 2, _paeth(left, prev, upleft)][ftype]
        out.append(ftype)
        out += ((cur - pred) % 256).astype(np.uint8).tobytes()
        prev = cur
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(bytes(out)))
        + _png_chunk(b"IEND", b"")
    )
    path.write_bytes(data)


# ------------------------------------------------------------------------------- readers


def test_png16_depth_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    depth = rng.integers(0, 65536, (17, 23), dtype=np.uint16)
    p = tmp_path / "d.png"
    Image.fromarray(depth).save(p)
    arr = read_image(p)
    assert arr.dtype == np.uint16 and arr.shape == (17, 23, 1)
    np.testing.assert_array_equal(arr[..., 0], depth)

    t = get_spec("depth").load(p)  # millimetres -> metres, repeated to 3 channels
    assert t.dtype == torch.float32 and t.shape == (3, 17, 23)
    np.testing.assert_allclose(t[0].numpy(), depth.astype(np.float64) * 0.001, rtol=1e-6)
    assert torch.equal(t[0], t[2])
    tn = get_spec("depth").load(p, normalize=True)
    np.testing.assert_allclose(tn[0].numpy(), t[0].numpy() / DEPTH_MAX_RANGE_M, rtol=1e-6)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_png16_colour_round_trip_exact(tmp_path, channels):
    rng = np.random.default_rng(channels)
    a = rng.integers(0, 65536, (9, 11, channels), dtype=np.uint16)
    p = tmp_path / "c.png"
    write_png16(p, a)
    arr = read_image(p)
    assert arr.dtype == np.uint16 and arr.shape == a.shape
    np.testing.assert_array_equal(arr, a)


def test_png8_modes(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    arr = read_image(tmp_path / "a.png")
    assert arr.dtype == np.uint8 and arr.shape == (6, 7, 4)
    np.testing.assert_array_equal(arr, rgba)

    idx = np.arange(42, dtype=np.uint8).reshape(6, 7) % 5
    im = Image.fromarray(idx, mode="L").convert("P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * (256 * 3 - 15))
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png", palette="index")[..., 0], idx)
    assert read_image(tmp_path / "p.png").shape == (6, 7, 3)


def test_jpeg(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(tmp_path / "x.jpg")
    arr = read_image(tmp_path / "x.jpg")
    assert arr.dtype == np.uint8 and arr.shape == (8, 8, 3)
    assert abs(int(arr.mean()) - 120) <= 2


def test_rgba_fourth_channel_selection(tmp_path):
    """MFNet packs thermal as channel 3 of an RGBA PNG."""
    rgba = np.random.default_rng(2).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "mfnet.png")
    thermal = get_spec("thermal", file_channels=(3,), normalize=None)
    t = thermal.load(tmp_path / "mfnet.png")
    assert t.shape == (3, 5, 6)
    np.testing.assert_allclose(t[0].numpy(), rgba[..., 3] / 255.0, rtol=1e-6)
    rgb = get_spec("rgb", file_channels=(0, 1, 2), normalize=None).load(tmp_path / "mfnet.png")
    np.testing.assert_allclose(rgb.numpy(), rgba[..., :3].transpose(2, 0, 1) / 255.0, rtol=1e-6)
    # without file_channels the alpha channel is dropped
    assert get_spec("rgb").load(tmp_path / "mfnet.png").shape == (3, 5, 6)


def test_float_tiff_and_multiband(tmp_path):
    dsm = np.random.default_rng(3).normal(30, 5, (12, 10)).astype(np.float32)
    tifffile.imwrite(tmp_path / "dsm.tif", dsm)
    arr = read_image(tmp_path / "dsm.tif")
    assert arr.dtype == np.float32 and arr.shape == (12, 10, 1)
    np.testing.assert_array_equal(arr[..., 0], dsm)

    t = get_spec("dsm", normalize=None).load(tmp_path / "dsm.tif")
    np.testing.assert_array_equal(t[0].numpy(), dsm)  # metres, unchanged
    mm = get_spec("dsm").load(tmp_path / "dsm.tif")  # min-max per tile
    assert float(mm.min()) == 0.0 and float(mm.max()) == pytest.approx(1.0)

    bands = np.random.default_rng(4).integers(0, 65535, (12, 10, 5), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "contig.tif", bands, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(
        tmp_path / "planar.tif",
        np.ascontiguousarray(bands.transpose(2, 0, 1)),
        photometric="minisblack",
        planarconfig="separate",
    )
    for name in ("contig.tif", "planar.tif"):
        got = read_image(tmp_path / name)
        assert got.shape == (12, 10, 5) and got.dtype == np.uint16, name
        np.testing.assert_array_equal(got, bands)


def test_npy_and_npz(tmp_path):
    a = np.random.default_rng(5).random((7, 9, 2)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(read_image(tmp_path / "a.npy"), a)
    np.save(tmp_path / "chw.npy", np.ascontiguousarray(a.transpose(2, 0, 1)))
    np.testing.assert_array_equal(read_image(tmp_path / "chw.npy"), a)
    np.save(tmp_path / "hw.npy", a[..., 0])
    assert read_image(tmp_path / "hw.npy").shape == (7, 9, 1)

    np.savez(tmp_path / "z.npz", first=a[..., 0], second=a[..., 1])
    np.testing.assert_array_equal(read_image(tmp_path / "z.npz")[..., 0], a[..., 0])
    np.testing.assert_array_equal(read_image(tmp_path / "z.npz", key="second")[..., 0], a[..., 1])
    with pytest.raises(DataError, match="no array 'third'"):
        read_image(tmp_path / "z.npz", key="third")
    spec = ModalitySpec(name="dolp", channels=1, scale=1.0, normalize=None, npz_key="second")
    np.testing.assert_array_equal(spec.load(tmp_path / "z.npz")[0].numpy(), a[..., 1])


# ------------------------------------------------------------------------------- errors


def test_missing_file_names_file_and_modality(tmp_path):
    p = tmp_path / "nope" / "000001_thermal_front.png"
    with pytest.raises(DataError) as ei:
        get_spec("thermal").load(p)
    msg = str(ei.value)
    assert str(p) in msg and "thermal" in msg and "missing file" in msg
    assert ei.value.path == str(p) and ei.value.modality == "thermal"
    assert isinstance(ei.value, ValueError)


def test_wrong_bit_depth(tmp_path):
    p = tmp_path / "depth8.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(p)
    with pytest.raises(DataError) as ei:
        get_spec("depth").load(p)
    msg = str(ei.value)
    assert str(p) in msg and "'depth'" in msg and "bit depth" in msg
    assert "8-bit" in msg and "16-bit" in msg


def test_wrong_channel_count(tmp_path):
    p = tmp_path / "gray.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(p)
    with pytest.raises(DataError) as ei:
        get_spec("rgb").load(p)
    msg = str(ei.value)
    assert str(p) in msg and "'rgb'" in msg and "channel" in msg and "expects 3" in msg

    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb)
    with pytest.raises(DataError, match=r"channel index 3"):
        get_spec("thermal", file_channels=(3,)).load(rgb)
    with pytest.raises(DataError, match=r"'dsm'.*wrong channel count"):
        get_spec("dsm").load(rgb)


def test_unreadable_and_unsupported(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="unreadable") as ei:
        read_image(bad, modality="event")
    assert str(bad) in str(ei.value) and "event" in str(ei.value)
    other = tmp_path / "x.gif2"
    other.write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported file extension"):
        read_image(other)


# ------------------------------------------------------------------------------- specs


def test_default_specs_cover_field_names():
    for name in ("rgb", "depth", "hha", "thermal", "event", "lidar", "aolp", "dolp", "nir", "dsm", "irrg"):
        spec = DEFAULT_SPECS[name]
        assert spec.name == name
        assert spec.photometric == (name == "rgb")
    assert DEFAULT_SPECS["depth"].unit == "m" and DEFAULT_SPECS["dsm"].unit == "m"
    assert DEFAULT_SPECS["lidar"].interpolation == "nearest"
    assert DEFAULT_SPECS["event"].interpolation == "nearest"
    assert DEFAULT_SPECS["rgb"].interpolation == "bilinear"


def test_get_spec_overrides_and_errors():
    s = get_spec("thermal", channels=1, repeat_to=3, bit_depth=16, normalize="minmax")
    assert s.out_channels == 3 and s.bit_depth == 16
    assert get_spec("rgb", normalize={"mean": [0.5], "std": [0.25]}).normalize.std == (0.25,)
    with pytest.raises(DataError, match="unknown modality 'radar'"):
        get_spec("radar")
    assert get_spec("radar", channels=2, scale=1.0).out_channels == 2
    with pytest.raises(DataError, match="colour"):
        get_spec("rgb", colour=True)


def test_normalize_and_pad_value_consistent():
    spec = get_spec("rgb")
    x = torch.rand(3, 4, 4)
    assert torch.allclose(spec.denormalize_tensor(spec.normalize_tensor(x)), x, atol=1e-6)
    pad = torch.tensor(spec.pad_value()).view(3, 1, 1).expand(3, 2, 2)
    assert torch.allclose(spec.normalize_tensor(pad), torch.zeros(3, 2, 2), atol=1e-7)
    assert spec.pad_value() == pytest.approx(list(IMAGENET_MEAN))
    one = get_spec("thermal", repeat_to=None, channels=1)
    assert one.normalize_tensor(torch.zeros(1, 2, 2)).shape == (1, 2, 2)
