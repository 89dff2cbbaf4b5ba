"""Property-based fuzzing of ``fusionseg data check`` (issue 20, item 5).

Tiny generic ``folder`` dataset trees (``root/train/{rgb,depth,thermal,height,label}/s*.{png,
tif,npy}`` + ``dataset.yaml``) with corruptions injected into random files, one per sample:
zero-byte files, random bytes, truncation at a random byte, the wrong bit depth (8-bit where
16-bit is declared and vice versa), a size mismatch within the sample, label values outside the
class list, and NaN / inf in a float modality (the documented invalid-pixel convention, which
must *not* be reported). The report lists each broken file with its modality (truncated pixel
data, behind an intact header, only with ``deep=True``), the command exits 1 without a
traceback, and nothing is written into the tree.

Deterministic (``derandomize=True``, no example database).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rich.console import Console
from test_fuzz_io import snapshot, write_png
from typer.testing import CliRunner

import fusionseg.cli as cli
from fusionseg.cli import app
from fusionseg.data.check import check_dataset
from fusionseg.data.datasets import FolderDataset
from fusionseg.data.io import DataError

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)

H, W = 12, 10
STEMS = ("s0", "s1", "s2", "s3")
#: file key -> (folder, extension)
FILES = {"rgb": ("rgb", ".png"), "depth": ("depth", ".png"), "thermal": ("thermal", ".tif"),
         "height": ("height", ".npy"), "label": ("label", ".png")}
YAML = {
    "classes": ["road", "car", "person"],
    "modalities": {
        "rgb": {"bit_depth": 8},
        "depth": {},  # the default spec: 16-bit PNG, millimetres
        "thermal": {"channels": 1, "repeat_to": 3, "bit_depth": 16},
        "height": {"channels": 1, "scale": 1.0, "unit": "m", "normalize": "minmax", "bit_depth": 32},
    },
}


def write_file(key: str, path: Path, rng: np.random.Generator, size=(H, W), bits: int | None = None,
               label_max: int = 2) -> None:
    """A valid file of ``key`` (or of another bit depth / size when asked)."""
    h, w = size
    if key == "rgb":
        dtype = np.uint16 if bits == 16 else np.uint8
        write_png(path, rng.integers(0, np.iinfo(dtype).max, (h, w, 3), dtype=dtype, endpoint=True))
    elif key == "depth":
        dtype = np.uint8 if bits == 8 else np.uint16
        write_png(path, rng.integers(0, np.iinfo(dtype).max, (h, w), dtype=dtype, endpoint=True))
    elif key == "thermal":
        dtype = np.uint8 if bits == 8 else np.uint16
        tifffile.imwrite(path, rng.integers(0, np.iinfo(dtype).max, (h, w), dtype=dtype, endpoint=True))
    elif key == "height":
        a = (rng.random((h, w)) * 30).astype(np.float32)
        np.save(path, a.astype(np.uint16) if bits == 16 else a)
    else:
        lab = rng.integers(0, label_max + 1, (h, w)).astype(np.uint8)
        lab[0, 0] = 255  # ignore
        write_png(path, lab)


def make_tree(root: Path, seed: int) -> dict[tuple[str, str], Path]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "dataset.yaml").write_text(yaml.safe_dump(YAML))
    files = {}
    for key, (folder, ext) in FILES.items():
        (root / "train" / folder).mkdir(parents=True)
        for stem in STEMS:
            files[stem, key] = path = root / "train" / folder / f"{stem}{ext}"
            write_file(key, path, rng)
    return files


#: corruption -> the file keys it applies to
CORRUPTIONS = {
    "zero_bytes": list(FILES),
    "random_bytes": list(FILES),
    "truncated": list(FILES),
    "bit_depth": ["rgb", "depth", "thermal", "height"],
    "size": list(FILES),
    "label_values": ["label"],
    "non_finite": ["height"],  # valid: NaN / inf is the documented invalid-pixel value
}
#: corruption -> the problem kinds it may be reported as
KINDS = {"zero_bytes": {"unreadable"}, "random_bytes": {"unreadable"},
         "truncated": {"unreadable", "load"}, "bit_depth": {"bit_depth"},
         "size": {"size_mismatch"}, "label_values": {"label_values"}}

corruption = st.sampled_from(sorted(CORRUPTIONS)).flatmap(
    lambda c: st.tuples(st.just(c), st.sampled_from(CORRUPTIONS[c])))


def corrupt(kind: str, key: str, path: Path, rng: np.random.Generator, cut: float, junk: bytes) -> None:
    if kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(junk)
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: int(cut * len(data))])
    elif kind == "bit_depth":
        write_file(key, path, rng, bits={"rgb": 16, "depth": 8, "thermal": 8, "height": 16}[key])
    elif kind == "size":
        write_file(key, path, rng, size=(H + 2, W - 1))
    elif kind == "label_values":
        write_file(key, path, rng, label_max=7)
    elif kind == "non_finite":
        a = np.load(path)
        a[rng.integers(0, H, 3), rng.integers(0, W, 3)] = [np.nan, np.inf, -np.inf]
        np.save(path, a)


def _open_unchecked(root: Path) -> FolderDataset:
    try:
        return FolderDataset(root, "train", check_files=False)
    except TypeError:  # a version without the construction-time check
        return FolderDataset(root, "train")


def loads(ds: FolderDataset, key: str, path: Path) -> bool:
    """Whether the loader reads the file (a truncation it does not need is no damage)."""
    try:
        ds.read_label(path) if key == "label" else ds.specs[key].load(path)
    except DataError:
        return False
    return True


def listing(root: Path) -> list[str]:
    """Every path under ``root``, folders included (nothing created, nothing removed)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def found(report) -> dict[tuple[str, str], str]:
    return {(p.path, p.modality): p.kind for p in report.problems()}


runner = CliRunner()


@FUZZ
@given(seed=st.integers(0, 2**16),
       plan=st.lists(st.tuples(st.sampled_from(STEMS), corruption), min_size=1, max_size=4,
                     unique_by=lambda t: t[0]),
       cut=st.floats(0, 1, exclude_max=True), junk=st.binary(min_size=1, max_size=64))
@example(seed=0, plan=[("s1", ("truncated", "depth"))], cut=0.6, junk=b"x")  # header intact
@example(seed=0, plan=[("s0", ("non_finite", "height")), ("s2", ("size", "label"))], cut=0.5, junk=b"x")
@example(seed=1, plan=[("s0", ("zero_bytes", "rgb")), ("s1", ("bit_depth", "depth")),
                       ("s2", ("label_values", "label")), ("s3", ("random_bytes", "thermal"))],
         cut=0.5, junk=b"\x89PNG")
def test_data_check_reports_every_broken_file(seed, plan, cut, junk):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "own"
        files = make_tree(root, seed)
        clean = check_dataset("folder", root)
        assert clean.ok, clean.lines()
        for stem, (kind, key) in plan:
            corrupt(kind, key, files[stem, key], rng, cut, junk)
        ds = _open_unchecked(root)
        broken = {(str(files[stem, key]), key): kind for stem, (kind, key) in plan
                  if kind != "non_finite" and (kind != "truncated" or not loads(ds, key, files[stem, key]))}
        before, listed = snapshot(root), listing(root)

        report = check_dataset("folder", root, max_examples=50)
        deep = check_dataset("folder", root, deep=True, max_examples=50)
        shallow_got, deep_got = found(report), found(deep)
        # deep: exactly the broken files, each under its modality and a fitting kind
        assert set(deep_got) == set(broken), (deep.lines(), broken)
        for where, kind in broken.items():
            assert deep_got[where] in KINDS[kind], (where, kind, deep_got[where])
        # headers only: all of them but truncations behind an intact header, nothing else
        assert set(shallow_got) <= set(broken)
        assert {w for w, k in broken.items() if k != "truncated"} <= set(shallow_got)
        assert report.ok == (not shallow_got) and deep.ok == (not broken)

        # built with its own file check, the dataset either opens or says why in one line
        try:
            FolderDataset(root, "train")
        except DataError as err:
            assert "\n" not in str(err) and not report.ok

        with pytest.MonkeyPatch.context() as mp:  # a wide console: whole paths in the table
            mp.setattr(cli, "console", Console(width=1000))
            result = runner.invoke(app, ["data", "check", "--dataset", "folder", "--root", str(root)])
        assert result.exit_code == (1 if shallow_got else 0), result.output
        assert "Traceback" not in result.output and "internal error" not in result.output
        for path, _ in shallow_got:
            assert path in result.output
        assert snapshot(root) == before and listing(root) == listed


def test_clean_tree_with_non_finite_heights_is_ok(tmp_path):
    root = tmp_path / "own"
    files = make_tree(root, 0)
    rng = np.random.default_rng(0)
    for stem in STEMS:
        corrupt("non_finite", "height", files[stem, "height"], rng, 0.0, b"")
    result = runner.invoke(app, ["data", "check", "--dataset", "folder", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert check_dataset("folder", root, deep=True).ok
