"""Property-based fuzzing of the image readers (issue 20, item 5).

``read_image`` (every format), ``probe_file`` (the header reader of ``fusionseg data check``),
``ModalitySpec.load`` (bit depth, channels, scale, non-finite values, normalisation) and label
decoding (``MultimodalDataset.read_label``) fed truncated files, zero-byte files, random bytes
with a valid extension, wrong bit depths, NaN / inf, size-mismatched samples and out-of-range
label values. Each bad input must end in a :class:`DataError` naming the file (and the modality
where the caller knows it), never another exception, never a silently wrong array, and nothing
may be written to disk.

Deterministic (``derandomize=True``, no example database) so CI does not flake; the examples
that found bugs are pinned with ``@example`` or as plain tests.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from fusionseg.data.check import probe_file
from fusionseg.data.datasets import FolderDataset
from fusionseg.data.datasets.base import MultimodalDataset
from fusionseg.data.io import DataError, bit_depth_of, read_image
from fusionseg.data.modalities import ModalitySpec, get_spec

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# --------------------------------------------------------------------------- helpers


def png_bytes(a: np.ndarray, bits: int) -> bytes:
    """A PNG of ``a`` ``[H, W, C]`` (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) at 8 or 16 bits,
    written by hand: Pillow cannot write 16-bit colour or gray+alpha PNGs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    h, w, c = a.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = a.astype(">u2" if bits == 16 else "u1")
    raw = b"".join(b"\0" + rows[y].tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, bits, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def write_png(path: Path, a: np.ndarray) -> None:
    """``a`` (uint8 or uint16, ``[H, W]`` or ``[H, W, C]``) as an exact PNG."""
    a = a[:, :, None] if a.ndim == 2 else a
    path.write_bytes(png_bytes(a, 16 if a.dtype == np.uint16 else 8))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to prove nothing was written)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def expect_data_error(fn: Callable[[], object], path: Path, modality: str | None) -> DataError:
    """``fn()`` raises a DataError whose one-line message names ``path`` (and ``modality``)."""
    with pytest.raises(DataError) as ei:
        fn()
    return check_error(ei.value, path, modality)


def check_error(err: DataError, path: Path, modality: str | None) -> DataError:
    msg = str(err)
    assert "\n" not in msg, msg
    assert str(path) in msg and err.path == str(path), msg
    if modality is not None:
        assert err.modality == modality and f"[modality '{modality}']" in msg, msg
    return err


def read_or_error(fn: Callable[[], object], path: Path, modality: str | None) -> object | None:
    """``fn()``'s result, or None when it raised a DataError naming ``path`` / ``modality``;
    any other exception fails the test."""
    try:
        return fn()
    except DataError as err:
        check_error(err, path, modality)
        return None


# one valid file per format: name -> (extension, writer(path, rng, h, w) -> what read_image gives)


def _w_png(c: int, dtype: type) -> Callable:
    def write(path: Path, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        a = rng.integers(0, np.iinfo(dtype).max, (h, w, c), dtype=dtype, endpoint=True)
        write_png(path, a)
        return a

    return write


def _w_palette(path, rng, h, w):
    idx = rng.integers(0, 5, (h, w), dtype=np.uint8)
    im = Image.fromarray(idx).convert("P")
    im.putpalette([v for k in range(256) for v in (k, 255 - k, (7 * k) % 256)])
    im.save(path)
    return np.asarray(Image.open(path).convert("RGB"))


def _w_pillow(mode: str, fmt: str) -> Callable:
    def write(path, rng, h, w):
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, format=fmt)
        with Image.open(path) as im:  # JPEG is lossy: the reference is the intact file's pixels
            arr = np.asarray(im)
        return arr if arr.ndim == 3 else arr[:, :, None]

    return write


def _w_tiff(dtype: type, **kw) -> Callable:
    def write(path, rng, h, w):
        if np.dtype(dtype).kind == "f":
            a = rng.standard_normal((h, w)).astype(dtype)
        else:
            a = rng.integers(0, np.iinfo(dtype).max, (h, w), dtype=dtype, endpoint=True)
        tifffile.imwrite(path, a, **kw)
        return a[:, :, None]

    return write


def _w_npy(path, rng, h, w):
    a = rng.standard_normal((h, w, 3)).astype(np.float32)
    np.save(path, a)
    return a


def _w_npz(path, rng, h, w):
    a = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    np.savez_compressed(path, depth=a)
    return a[:, :, None]


FORMATS: dict[str, tuple[str, Callable]] = {
    "png_gray8": (".png", _w_png(1, np.uint8)),
    "png_rgb8": (".png", _w_png(3, np.uint8)),
    "png_gray16": (".png", _w_png(1, np.uint16)),
    "png_la16": (".png", _w_png(2, np.uint16)),
    "png_rgb16": (".png", _w_png(3, np.uint16)),
    "png_rgba16": (".png", _w_png(4, np.uint16)),
    "png_palette": (".png", _w_palette),
    "jpeg": (".jpg", _w_pillow("RGB", "JPEG")),
    "jpeg_gray": (".jpeg", _w_pillow("L", "JPEG")),
    "bmp": (".bmp", _w_pillow("RGB", "BMP")),
    "tiff_u16": (".tif", _w_tiff(np.uint16)),
    "tiff_f32_zlib": (".tiff", _w_tiff(np.float32, compression="zlib")),
    "npy": (".npy", _w_npy),
    "npz": (".npz", _w_npz),
}
#: format name -> magic bytes its reader looks for first
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff", ".jpeg": b"\xff\xd8\xff",
         ".bmp": b"BM", ".tif": b"II*\x00", ".tiff": b"MM\x00*", ".npy": b"\x93NUMPY",
         ".npz": b"PK\x03\x04"}

sizes = st.integers(min_value=8, max_value=24)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _all_readers(path: Path) -> None:
    """read_image, probe_file and ModalitySpec.load on ``path``: each returns or raises a
    DataError naming the file (and the modality); anything else fails."""
    read_or_error(lambda: read_image(path, modality="m"), path, "m")
    read_or_error(lambda: probe_file(path), path, None)
    spec = get_spec("anything", channels=1, repeat_to=3, scale=1.0, normalize=None)
    read_or_error(lambda: spec.load(path), path, "anything")


# --------------------------------------------------------------------------- corrupt files


@FUZZ
@given(fmt=st.sampled_from(sorted(FORMATS)), h=sizes, w=sizes, seed=seeds,
       cut=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
@example(fmt="png_rgb8", h=8, w=8, seed=0, cut=0.99)  # IEND cut: pixels complete, still exact
def test_truncated_file_is_an_error_or_exact(fmt, h, w, seed, cut):
    ext, write = FORMATS[fmt]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"img{ext}"
        expected = write(path, np.random.default_rng(seed), h, w)
        data = path.read_bytes()
        path.write_bytes(data[: int(cut * len(data))])
        before = snapshot(Path(d))
        got = read_or_error(lambda: read_image(path, modality="m"), path, "m")
        if got is not None:  # a cut the decoder does not need (a PNG's IEND trailer ...)
            assert got.dtype == expected.dtype and np.array_equal(got, expected), fmt
        _all_readers(path)
        assert snapshot(Path(d)) == before


@FUZZ
@given(ext=st.sampled_from(sorted(MAGIC)), body=st.binary(max_size=300), magic=st.booleans())
@example(ext=".png", body=b"", magic=False)  # zero-byte file
@example(ext=".npy", body=b"", magic=False)
@example(ext=".tif", body=b"", magic=False)
@example(ext=".npz", body=b"", magic=False)
def test_random_bytes_with_a_valid_extension(ext, body, magic):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x{ext}"
        path.write_bytes((MAGIC[ext] if magic else b"") + body)
        before = snapshot(Path(d))
        expect_data_error(lambda: read_image(path, modality="rgb"), path, "rgb")
        expect_data_error(lambda: get_spec("rgb").load(path), path, "rgb")
        expect_data_error(lambda: probe_file(path), path, None)
        assert snapshot(Path(d)) == before


@FUZZ
@given(fmt=st.sampled_from(sorted(FORMATS)), seed=seeds,
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      min_size=1, max_size=4))
def test_mutated_bytes_never_crash(fmt, seed, flips):
    """Bytes overwritten anywhere (header or pixels): a DataError naming the file, or (pixel
    bytes of an uncompressed format) an image of the right kind; never another exception."""
    ext, write = FORMATS[fmt]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"img{ext}"
        write(path, np.random.default_rng(seed), 12, 10)
        data = bytearray(path.read_bytes())
        for pos, value in flips:
            data[int(pos * len(data))] = value
        path.write_bytes(bytes(data))
        got = read_or_error(lambda: read_image(path, modality="m"), path, "m")
        if got is not None:
            assert got.ndim == 3 and min(got.shape) > 0 and got.dtype.kind in "biuf"
        _all_readers(path)


def test_decompression_bomb_header_is_a_data_error(tmp_path):
    """Found by fuzzing: a 100-byte PNG claiming 20000 x 20000 pixels raised Pillow's
    DecompressionBombError (not an OSError) out of read_image -> a traceback in the CLI."""
    data = bytearray(png_bytes(np.zeros((1, 1, 1), np.uint8), 8))
    data[16:24] = struct.pack(">II", 20000, 20000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(data))
    err = expect_data_error(lambda: read_image(path, modality="depth"), path, "depth")
    assert "decompression bomb" in str(err)
    expect_data_error(lambda: get_spec("depth").load(path), path, "depth")
    expect_data_error(lambda: probe_file(path), path, None)


def test_tifffile_log_is_silenced_for_corrupt_tiffs(tmp_path, caplog):
    """Found by fuzzing: tifffile logged a line per broken tag of a corrupt TIFF (on stderr
    without a logging setup, amid ``fusionseg data check``'s report) besides raising; now the
    one DataError says it."""
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint16), description="x" * 40)
    data = path.read_bytes()
    path.write_bytes(data[:200])  # tags whose values lie past the end
    with caplog.at_level(logging.DEBUG, logger="tifffile"):
        expect_data_error(lambda: read_image(path, modality="thermal"), path, "thermal")
        read_or_error(lambda: probe_file(path), path, None)  # headers only: may pass
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]
    with caplog.at_level(logging.DEBUG, logger="tifffile"):  # only silenced inside the readers
        logging.getLogger("tifffile").warning("still heard")
    assert [r.getMessage() for r in caplog.records] == ["still heard"]


def test_numpy_headers_are_parsed_under_the_lock(tmp_path, monkeypatch):
    """Found by fuzzing ``data check``: a valid ``.npy`` was now and then reported unreadable
    with "AST constructor recursion depth mismatch": numpy parses headers with
    ``ast.literal_eval``, which CPython 3.11 does not make thread-safe, and the check probes
    headers in threads. Every numpy header parse of the readers now holds ``_NPY_LOCK``."""
    import ast

    from fusionseg.data import io

    held: list[bool] = []
    real = ast.literal_eval

    def spy(text):
        held.append(io._NPY_LOCK.locked())
        return real(text)

    np.save(tmp_path / "a.npy", np.zeros((5, 7), np.float32))
    np.savez(tmp_path / "b.npz", depth=np.zeros((5, 7), np.uint16))
    monkeypatch.setattr(ast, "literal_eval", spy)
    spec = get_spec("x", channels=1, scale=1.0)
    for path in (tmp_path / "a.npy", tmp_path / "b.npz"):
        read_image(path)
        probe_file(path)
        spec.load(path)
    assert len(held) >= 6 and all(held), held


# --------------------------------------------------------------------------- valid files


@FUZZ
@given(h=st.integers(1, 16), w=st.integers(1, 16), c=st.integers(1, 4),
       bits=st.sampled_from([8, 16]), seed=seeds)
@example(h=5, w=7, c=2, bits=16, seed=0)  # probe_file said 4 channels for 16-bit gray+alpha
def test_png_round_trip_and_header(h, w, c, bits, seed):
    dtype = np.uint16 if bits == 16 else np.uint8
    a = np.random.default_rng(seed).integers(0, 2**bits, (h, w, c)).astype(dtype)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.png"
        path.write_bytes(png_bytes(a, bits))
        got = read_image(path)
        assert got.dtype == dtype and np.array_equal(got, a)
        info = probe_file(path)
        assert (info.height, info.width, info.channels, info.bits) == (h, w, c, bits)


ARRAY_DTYPES = ["uint8", "uint16", "int8", "int64", "uint32", "float16", "float32", "float64",
                "bool", "complex64"]
array_shapes = st.lists(st.integers(0, 6), min_size=1, max_size=4).map(tuple)


@FUZZ
@given(ext=st.sampled_from([".npy", ".npz", ".tif"]), shape=array_shapes,
       dtype=st.sampled_from(ARRAY_DTYPES))
@example(ext=".npy", shape=(1, 5, 6, 3), dtype="uint8")  # probe dropped the leading 1
@example(ext=".npz", shape=(1, 1, 5, 6), dtype="float32")
@example(ext=".npy", shape=(5, 6), dtype="complex64")  # probe took complex as 64-bit
@example(ext=".tif", shape=(5, 6), dtype="complex64")  # read_image returned complex
def test_array_files_header_agrees_with_reader(ext, shape, dtype):
    """``probe_file`` (what ``data check`` and dataset construction look at) and ``read_image``
    (what loading does) agree: both fail, or both give the same size, channels and bits."""
    a = np.ones(shape, dtype=dtype)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"a{ext}"
        if ext == ".npy":
            np.save(path, a)
        elif ext == ".npz":
            np.savez(path, a)
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tifffile.imwrite(path, a)
            except Exception:  # a shape or dtype TIFF cannot hold
                return
        got = read_or_error(lambda: read_image(path), path, None)
        info = read_or_error(lambda: probe_file(path), path, None)
        assert (got is None) == (info is None), (got is None and "read failed" or "probe failed")
        if got is not None:
            assert got.dtype.kind in "biuf" and got.ndim == 3
            assert (info.height, info.width, info.channels, info.bits) == (*got.shape, bit_depth_of(got))


def test_npz_whose_first_member_is_not_an_array(tmp_path):
    """Found by fuzzing: probe_file skipped a non-array member that np.load (and so
    read_image) takes as the first 'array' -> data check passed a file loading rejects."""
    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
        with zf.open("a.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros((5, 7), np.uint8))
    expect_data_error(lambda: read_image(path), path, None)
    expect_data_error(lambda: probe_file(path), path, None)
    assert probe_file(path, npz_key="a").channels == 1 and read_image(path, key="a").shape == (5, 7, 1)


# --------------------------------------------------------------------------- ModalitySpec.load


@FUZZ
@given(expects=st.sampled_from([8, 16, 32]), given_dtype=st.sampled_from(["uint8", "uint16", "float32"]),
       ext=st.sampled_from([".png", ".tif", ".npy"]), seed=seeds)
@example(expects=16, given_dtype="uint8", ext=".png", seed=0)  # 8-bit depth PNG
@example(expects=8, given_dtype="uint16", ext=".png", seed=0)  # and vice versa
def test_bit_depth_is_checked(expects, given_dtype, ext, seed):
    if ext == ".png" and given_dtype == "float32":
        ext = ".tif"
    rng = np.random.default_rng(seed)
    a = (rng.random((9, 11)) * 200).astype(given_dtype)
    spec = ModalitySpec(name="sensor", channels=1, bit_depth=expects, normalize=None)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"s{ext}"
        if ext == ".png":
            write_png(path, a)
        elif ext == ".tif":
            tifffile.imwrite(path, a)
        else:
            np.save(path, a)
        if np.dtype(given_dtype).itemsize * 8 != expects:
            err = expect_data_error(lambda: spec.load(path), path, "sensor")
            assert "wrong bit depth" in str(err) and f"expects {expects}-bit" in str(err)
        else:
            x = spec.load(path)
            assert x.dtype == torch.float32 and x.shape == (1, 9, 11)
            assert torch.allclose(x[0], torch.from_numpy(a.astype(np.float32)) * spec.scale_for(a.dtype))


@FUZZ
@given(h=st.integers(1, 12), w=st.integers(1, 12), c=st.integers(1, 5), seed=seeds,
       spec_kw=st.sampled_from([{"channels": 1}, {"channels": 3}, {"channels": 1, "repeat_to": 3},
                                {"channels": 1, "file_channels": (3,)}, {"channels": 2, "drop_alpha": False}]))
def test_channel_count_is_checked(h, w, c, seed, spec_kw):
    a = np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)
    spec = get_spec("custom", **spec_kw)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.npy"
        np.save(path, a)
        x = read_or_error(lambda: spec.load(path), path, "custom")
        if spec.file_channels is not None:
            ok = c > max(spec.file_channels)
        else:
            counts = {spec.channels, spec.out_channels}
            ok = c in counts or (spec.drop_alpha and c - 1 in counts)
        # read_image takes a 3-D array with <= 4 leading entries and a longer last axis as
        # [C, H, W]; the spec then sees that layout (documented), not the one saved
        if h <= 4 and c > 4:
            return
        assert (x is not None) == ok, (x, c, spec_kw)
        if x is not None:
            assert x.shape == (spec.out_channels, h, w)


@pytest.mark.parametrize("array", [
    np.ones((4, 5), np.complex64),  # cast to float32 dropped the imaginary part (a warning)
    np.zeros((0, 5, 1), np.float32),  # "minmax" raised torch's RuntimeError on an empty crop
    np.array([["a", "b"]]),
], ids=["complex", "empty", "strings"])
def test_from_array_rejects_what_read_image_would(array):
    for spec in (get_spec("dsm"), get_spec("rgb", channels=1)):
        with pytest.raises(DataError) as ei:
            spec.from_array(array, path="/x/y.npy")
        err = check_error(ei.value, Path("/x/y.npy"), spec.name)
        assert "numeric" in str(err) or "empty" in str(err)


# finite values on a 1/64 grid: spans are 0 or >= 1/64 ("minmax" treats spans below 1e-12 as
# constant, a tolerance this test does not restate)
finite32 = st.integers(-640_000, 640_000).map(lambda i: i / 64)
non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])


@FUZZ
@given(values=st.lists(st.one_of(finite32, non_finite), min_size=12, max_size=12),
       ext=st.sampled_from([".tif", ".npy"]),
       spec=st.sampled_from([get_spec("dsm"), get_spec("dolp"),
                             get_spec("height", channels=1, scale=0.5, offset=2.0, normalize=None)]))
@example(values=[float("nan")] * 12, ext=".tif", spec=get_spec("dsm"))
@example(values=[1.0, 2.0, float("inf")] + [3.0] * 9, ext=".npy", spec=get_spec("dsm"))
def test_non_finite_values_become_zero(values, ext, spec):
    """The documented pipeline: ``x = raw * scale + offset``, non-finite -> 0, then "minmax",
    then repeat. NaN / inf is the invalid-pixel convention of float modalities, not an error."""
    raw = np.asarray(values, dtype=np.float32).reshape(3, 4)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"f{ext}"
        if ext == ".tif":
            tifffile.imwrite(path, raw)
        else:
            np.save(path, raw)
        x = spec.load(path)
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        with np.errstate(invalid="ignore", over="ignore"):
            phys = raw * np.float32(spec.scale_for(raw.dtype)) + np.float32(spec.offset)
        phys[~np.isfinite(phys)] = 0.0
        if spec.normalize == "minmax":
            lo, hi = phys.min(), phys.max()
            phys = (phys - lo) / (hi - lo) if hi > lo else np.zeros_like(phys)
        want = torch.from_numpy(phys)[None].repeat(spec.out_channels, 1, 1)
        assert torch.allclose(x, want, atol=1e-5), (x, want)
        assert torch.isfinite(spec.load(path, normalize=True)).all()


# --------------------------------------------------------------------------- labels and samples


class _Labels(MultimodalDataset):
    """A dataset without samples, for its ``read_label`` (class ids in channel 0)."""

    name = "fuzz_labels"
    classes = ["a", "b", "c"]

    def _index(self):
        return []


@FUZZ
@given(values=st.lists(st.sampled_from([0, 1, 2, 3, 7, 254, 255]), min_size=6, max_size=6),
       ext=st.sampled_from([".png", ".tif", ".npy"]), sixteen=st.booleans(), cut=st.booleans())
@example(values=[0, 1, 2, 255, 255, 3], ext=".png", sixteen=False, cut=False)
def test_label_values_out_of_range(values, ext, sixteen, cut):
    lab = np.asarray(values, dtype=np.uint16 if sixteen else np.uint8).reshape(2, 3)
    with tempfile.TemporaryDirectory() as d:
        ds = _Labels(d, "train", ["rgb"])
        path = Path(d) / f"lab{ext}"
        if ext == ".png":
            write_png(path, lab)
        elif ext == ".tif":
            tifffile.imwrite(path, lab)
        else:
            np.save(path, lab)
        if cut:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3])
        before = snapshot(Path(d))
        bad = sorted({v for v in values if v not in (0, 1, 2, 255)})
        if cut:
            expect_data_error(lambda: ds.read_label(path), path, "label")
        elif bad:
            err = expect_data_error(lambda: ds.read_label(path), path, "label")
            assert "out of range" in str(err) and str(bad) in str(err)
        else:
            got = ds.read_label(path)
            assert got.dtype == torch.int64 and got.tolist() == lab.astype(np.int64).tolist()
        assert snapshot(Path(d)) == before


def _folder_tree(root: Path, sizes: dict[str, tuple[int, int]]) -> None:
    cfg = {"classes": ["a", "b", "c"],
           "modalities": {"rgb": {}, "thermal": {"channels": 1, "repeat_to": 3, "bit_depth": 16}}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.yaml").write_text(yaml.safe_dump(cfg))
    for d in ("rgb", "thermal", "label"):
        (root / "train" / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_png(root / "train" / "rgb" / "s.png", rng.integers(0, 256, (*sizes["rgb"], 3), dtype=np.uint8))
    tifffile.imwrite(root / "train" / "thermal" / "s.tif",
                     rng.integers(0, 65536, sizes["thermal"], dtype=np.uint16))
    write_png(root / "train" / "label" / "s.png", rng.integers(0, 3, sizes["label"], dtype=np.uint8))


def _open_unchecked(root: Path) -> FolderDataset:
    """The folder dataset without its construction-time file check, where it has one."""
    try:
        return FolderDataset(root, "train", check_files=False)
    except TypeError:  # a version without check_files
        return FolderDataset(root, "train")


@FUZZ
@given(odd=st.sampled_from(["rgb", "thermal", "label"]), dh=st.integers(-3, 3), dw=st.integers(-3, 3))
def test_size_mismatch_within_a_sample(odd, dh, dw):
    base = (10, 12)
    sizes = {k: base for k in ("rgb", "thermal", "label")}
    sizes[odd] = (base[0] + dh, base[1] + dw)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "own"
        _folder_tree(root, sizes)
        before = snapshot(root)
        odd_file = str(root / "train" / odd / ("s.tif" if odd == "thermal" else "s.png"))
        try:  # built with the default check: a size mismatch may already be found here
            ds = FolderDataset(root, "train")
        except DataError as err:
            assert (dh, dw) != (0, 0) and odd_file in str(err) and "\n" not in str(err)
            ds = _open_unchecked(root)
        if (dh, dw) == (0, 0):
            sample = ds[0]
            assert sample["rgb"].shape[1:] == sample["thermal"].shape[1:] == sample["label"].shape
        else:
            with pytest.raises(DataError) as ei:
                ds.load_sample(0)
            msg = str(ei.value)
            assert "size mismatch" in msg and odd_file in msg and "\n" not in msg
        assert snapshot(root) == before


def test_no_file_is_created_by_a_failing_read(tmp_path):
    """The readers never write next to a file (no caches, no temporary copies)."""
    for name, (ext, write) in FORMATS.items():
        write(tmp_path / f"{name}{ext}", np.random.default_rng(0), 8, 8)
        (tmp_path / f"{name}_cut{ext}").write_bytes((tmp_path / f"{name}{ext}").read_bytes()[:20])
    before = snapshot(tmp_path)
    for p in sorted(tmp_path.iterdir()):
        _all_readers(p)
    assert snapshot(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == sorted(before)
