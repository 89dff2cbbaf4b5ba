"""Walk a dataset and report every problem found (``fusionseg data check``).

::

    report = check_dataset("mcubes", "/data/MCubeS/multimodal_dataset")   # every split/modality
    print_report(report, rich.console.Console())
    report.ok            # False if any problem was found
    report.counts        # {"missing_file": 3, "size_mismatch": 1, ...}

What is checked, per split and sample (through the dataset class, so exactly the files its
loader would read):

==================================== ============================================================
problem kind                         meaning
==================================== ============================================================
``layout``                           the split cannot be indexed (missing root, split, list file,
                                     modality folder ...), or no split is found
``missing_file``                     a modality's or the label's file is missing (per modality)
``list_entry_without_files``         a split-list entry for which no file exists at all
``unreadable``                       a file whose header (or label content) cannot be decoded
``bit_depth``                        bits per sample other than the modality expects (e.g. an
                                     8-bit depth PNG where 16-bit millimetres are expected)
``channels``                         a channel count the modality cannot use
``size_mismatch``                    modalities / label of one sample differ in H x W (beyond the
                                     dataset's tolerance, e.g. ISPRS DSM edges)
``label_values``                     decoded label values outside ``0..K-1`` and ignore
``load``                             (``deep=True`` only) reading the whole sample failed otherwise
==================================== ============================================================

Images are checked from their headers (Pillow's ``Image.open`` reads mode and size without
decoding pixels; TIFF via tifffile's page headers; ``.npy``/``.npz`` via the array header), so
the walk is fast; label files are decoded fully (their values are checked). ``deep=True`` also
loads every sample through the dataset (catching truncated pixel data). Work is spread over a
few threads.

``splits=None`` checks every split the dataset has (``available_splits``); ``modalities=None``
checks every modality it offers, and a modality that is entirely absent from this copy (its
folder missing, or no file of it in a split) is skipped with a note rather than reported;
modalities named explicitly must be complete. The walk opens each split with
``check_files=False``, so it reports every problem its own way rather than stopping at the
dataset's own construction-time check.

The construction-time check (:func:`file_problems`, run by every dataset unless
``check_files=False``) is the cheap part of this walk: ``missing_file``,
``list_entry_without_files``, ``unreadable`` headers and ``size_mismatch``, from headers only.

What a dataset class tells the checker (all declared on
:class:`~fusionseg.data.datasets.base.MultimodalDataset` with defaults): ``available_splits(root)`` (the splits
of a copy), ``record_files(record)`` (every file a sample reads, e.g. MCubeS' AoLP cos file as
``"aolp:cos"``), ``check_bit_depths`` / ``check_channels`` (file key -> accepted bit depths /
channel counts, where the ModalitySpec alone does not say: NIR 8 or 16-bit, 2-D ``.npy``
maps), ``size_tolerance`` (modality -> pixels, ISPRS DSM) and ``record.extra["list_file"]``
(the split list an entry came from). Bit depths and channel counts default to the modality's
spec (``bit_depth``, ``channels`` / ``repeat_to`` / ``file_channels``, an extra alpha channel).
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusionseg.data.datasets.base import MultimodalDataset, create_dataset, get_dataset_class
from fusionseg.data.io import DataError
from fusionseg.data.sample import LABEL_KEY

__all__ = [
    "PROBLEM_KINDS",
    "CheckReport",
    "FileInfo",
    "Problem",
    "check_dataset",
    "file_problems",
    "print_report",
    "probe_file",
]

#: problem kind -> short description (report order)
PROBLEM_KINDS: dict[str, str] = {
    "layout": "layout / split cannot be indexed",
    "list_entry_without_files": "split list entry without files",
    "missing_file": "missing file",
    "unreadable": "unreadable file",
    "bit_depth": "unexpected bit depth",
    "channels": "unexpected channel count",
    "size_mismatch": "size mismatch across modalities",
    "label_values": "label values outside the class list",
    "load": "sample fails to load",
}


@dataclass(frozen=True)
class Problem:
    """One problem: its kind (a key of :data:`PROBLEM_KINDS`), split, modality (or
    ``"label"``; None when not about one modality), file and a one-line message."""

    kind: str
    split: str | None
    modality: str | None
    path: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        mod = f"[{self.modality}] " if self.modality else ""
        return f"{mod}{where}{self.message}"


@dataclass
class ProblemGroup:
    """All problems of one kind and modality: their count and the first few."""

    kind: str
    modality: str | None
    count: int = 0
    examples: list[Problem] = field(default_factory=list)


@dataclass
class CheckReport:
    """The result of :func:`check_dataset`.

    Attributes:
        dataset: dataset name. root: the root checked.
        splits: split -> number of samples indexed (splits that failed to index are absent).
        modalities: split -> modalities checked.
        files_checked: distinct files looked at.
        notes: remarks that are not problems (skipped absent modalities ...).
        groups: (kind, modality) -> :class:`ProblemGroup`, in the order first found.
        max_examples: examples kept per group.
    """

    dataset: str
    root: str
    splits: dict[str, int] = field(default_factory=dict)
    modalities: dict[str, list[str]] = field(default_factory=dict)
    files_checked: int = 0
    notes: list[str] = field(default_factory=list)
    groups: dict[tuple[str, str | None], ProblemGroup] = field(default_factory=dict)
    max_examples: int = 5
    _note_keys: list[tuple[str, list[str]]] = field(default_factory=list, repr=False)

    def note(self, text: str, split: str | None = None) -> None:
        """Add a remark; the same text for several splits becomes one note naming them."""
        for i, n in enumerate(self._note_keys):
            if n[0] == text:
                if split is not None and split not in n[1]:
                    n[1].append(split)
                    self.notes[i] = f"{text} (split{'s' if len(n[1]) > 1 else ''} {', '.join(n[1])})"
                return
        self._note_keys.append((text, [split] if split is not None else []))
        self.notes.append(text if split is None else f"{text} (split {split})")

    def add(self, problem: Problem) -> None:
        """Count a problem (keeping it as an example while its group has fewer than
        ``max_examples``)."""
        key = (problem.kind, problem.modality)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = ProblemGroup(problem.kind, problem.modality)
        group.count += 1
        if len(group.examples) < self.max_examples:
            group.examples.append(problem)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.groups

    @property
    def num_problems(self) -> int:
        return sum(g.count for g in self.groups.values())

    @property
    def counts(self) -> dict[str, int]:
        """Problem kind -> count (all modalities together)."""
        out: dict[str, int] = {}
        for (kind, _), g in self.groups.items():
            out[kind] = out.get(kind, 0) + g.count
        return out

    def count(self, kind: str, modality: str | None | bool = True) -> int:
        """Problems of ``kind``; of one ``modality`` when given (None: problems tied to no
        modality); the default ``True`` counts all modalities."""
        return sum(
            g.count
            for (k, m), g in self.groups.items()
            if k == kind and (modality is True or m == modality)
        )

    def problems(self, kind: str | None = None) -> list[Problem]:
        """The kept example problems (of ``kind``), in report order."""
        return [p for g in self._sorted_groups() for p in g.examples if kind in (None, p.kind)]

    def _sorted_groups(self) -> list[ProblemGroup]:
        order = {k: i for i, k in enumerate(PROBLEM_KINDS)}
        return sorted(self.groups.values(), key=lambda g: order.get(g.kind, len(order)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        return {
            "dataset": self.dataset,
            "root": self.root,
            "ok": self.ok,
            "splits": dict(self.splits),
            "modalities": dict(self.modalities),
            "files_checked": self.files_checked,
            "notes": list(self.notes),
            "counts": self.counts,
            "problems": [
                {
                    "kind": g.kind,
                    "modality": g.modality,
                    "count": g.count,
                    "examples": [
                        {"split": p.split, "path": p.path, "message": p.message}
                        for p in g.examples
                    ],
                }
                for g in self._sorted_groups()
            ],
        }

    def lines(self) -> list[str]:
        """The report as plain text lines."""
        out = [f"dataset '{self.dataset}' at {self.root}"]
        for split, n in self.splits.items():
            mods = ", ".join(self.modalities.get(split, []))
            out.append(f"  split {split}: {n} samples ({mods})")
        out.append(f"  {self.files_checked} files checked")
        out += [f"  note: {n}" for n in self.notes]
        if self.ok:
            out.append("OK: no problems found")
            return out
        for g in self._sorted_groups():
            mod = f" [{g.modality}]" if g.modality else ""
            out.append(f"{PROBLEM_KINDS.get(g.kind, g.kind)}{mod}: {g.count}")
            out += [f"    {p.path or '-'}: {p.message}" for p in g.examples]
        out.append(f"FAILED: {self.num_problems} problem(s)")
        return out


# --------------------------------------------------------------------------- file headers


@dataclass(frozen=True)
class FileInfo:
    """What a file's header says: ``height``, ``width``, ``channels`` (as
    :func:`fusionseg.data.io.read_image` would return them; ``None`` for palette images, whose
    count depends on the reader), ``bits`` per sample and ``palette_alpha`` (palette with
    transparency)."""

    height: int
    width: int
    channels: int | None
    bits: int
    palette_alpha: bool = False


_PIL_MODES: dict[str, tuple[int, int]] = {
    "1": (1, 8),
    "L": (1, 8),
    "LA": (2, 8),
    "La": (2, 8),
    "PA": (4, 8),
    "RGB": (3, 8),
    "RGBA": (4, 8),
    "RGBa": (4, 8),
    "RGBX": (4, 8),
    "CMYK": (3, 8),
    "YCbCr": (3, 8),
    "LAB": (3, 8),
    "HSV": (3, 8),
    "F": (1, 32),
}


def _probe_pillow(path: Path) -> FileInfo:
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        mode = im.mode
        tile = list(getattr(im, "tile", []) or [])
        raw = None
        if len(tile) == 1:
            t = tile[0]
            raw = t.args if hasattr(t, "args") else (t[3] if len(t) > 3 else None)
        raw = raw if isinstance(raw, str) else ""
        if mode == "P":
            return FileInfo(h, w, None, 8, palette_alpha="transparency" in im.info)
        if mode.startswith("I;16") or (mode == "I" and im.format == "PNG"):
            return FileInfo(h, w, 1, 16)
        if mode == "I":
            return FileInfo(h, w, 1, 32)
        base = raw.split(";")[0]
        if mode in ("RGB", "RGBA", "LA") and ";16" in raw and base in ("RGB", "RGBA", "LA"):
            # a 16-bit gray+alpha PNG opens as mode RGBA (raw mode LA;16B): read_image gives 2
            return FileInfo(h, w, {"RGB": 3, "RGBA": 4, "LA": 2}[base], 16)
        if mode not in _PIL_MODES:
            raise ValueError(f"unsupported image mode {mode}")
        c, bits = _PIL_MODES[mode]
        return FileInfo(h, w, c, bits)


def _hwc(shape: Sequence[int], axes: str | None = None) -> tuple[int, int, int]:
    shape = list(shape)
    axes_l = list(axes) if axes is not None else None
    while len(shape) > 3 and shape[0] == 1:
        shape.pop(0)
        if axes_l:
            axes_l.pop(0)
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) != 3:
        raise ValueError(f"expected a 2-D or 3-D image, got shape {tuple(shape)}")
    if axes_l is not None:
        if axes_l[-1] not in "SC" and axes_l[0] in "SCQIZ":
            return shape[1], shape[2], shape[0]
        return shape[0], shape[1], shape[2]
    if shape[0] <= 4 and shape[-1] > 4:  # [C, H, W] as read_image takes it
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


def _bits(dtype: np.dtype) -> int:
    dtype = np.dtype(dtype)
    return 8 if dtype == np.bool_ else int(dtype.itemsize * 8)


def _probe_dtype(dtype: Any) -> np.dtype:
    """``dtype`` if :func:`~fusionseg.data.io.read_image` accepts it (bool, integer, float)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise ValueError(f"expected a numeric array, got dtype {dtype}")
    return dtype


def _probe_tiff(path: Path) -> FileInfo:
    import tifffile

    from fusionseg.data.io import _quiet_tifffile

    with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        h, w, c = _hwc(series.shape, series.axes)
        return FileInfo(h, w, c, _bits(_probe_dtype(series.dtype)))


def _probe_array(shape: Sequence[int], dtype: Any) -> FileInfo:
    """A ``.npy`` / ``.npz`` array header as :func:`~fusionseg.data.io.read_image` takes it: 2-D
    or 3-D (no singleton axes dropped, unlike TIFF), numeric."""
    if len(shape) not in (2, 3):
        raise ValueError(f"expected a 2-D or 3-D image array, got shape {tuple(shape)}")
    h, w, c = _hwc(shape)
    return FileInfo(h, w, c, _bits(_probe_dtype(dtype)))


def _probe_npy(path: Path) -> FileInfo:
    from fusionseg.data.io import _NPY_LOCK  # numpy's header parsing is not thread-safe

    with _NPY_LOCK:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    return _probe_array(arr.shape, arr.dtype)


def _probe_npz(path: Path, key: str | None) -> FileInfo:
    with zipfile.ZipFile(path) as zf:
        members = zf.namelist()
        # the array names as np.load (and so read_image) sees them: ".npy" dropped
        names = [n[:-4] if n.endswith(".npy") else n for n in members]
        if not names:
            raise ValueError("empty .npz archive")
        name = key if key is not None else names[0]
        if name not in names:
            raise ValueError(f".npz has no array '{name}' (arrays: {', '.join(names)})")
        member = members[names.index(name)]
        if not member.endswith(".npy"):
            raise ValueError(f".npz member '{member}' is not an array")
        from fusionseg.data.io import _NPY_LOCK  # numpy's header parsing is not thread-safe

        with zf.open(member) as f, _NPY_LOCK:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return _probe_array(shape, dtype)


def probe_file(path: str | os.PathLike, npz_key: str | None = None) -> FileInfo:
    """Size, channels and bit depth of an image-like file from its header.

    Raises:
        DataError: unknown extension or an unreadable header (naming the file).
    """
    p = Path(path)
    ext = p.suffix.lower()
    try:
        if ext in (".png", ".jpg", ".jpeg", ".bmp"):
            info = _probe_pillow(p)
        elif ext in (".tif", ".tiff"):
            info = _probe_tiff(p)
        elif ext == ".npy":
            info = _probe_npy(p)
        elif ext == ".npz":
            info = _probe_npz(p, npz_key)
        else:
            raise DataError(f"unreadable: unsupported file extension '{p.suffix}'", path=p)
    except DataError:
        raise
    except Exception as err:  # any decoder error on a corrupt header
        raise DataError(f"unreadable ({err})", path=p) from err
    if info.height <= 0 or info.width <= 0 or info.channels == 0:
        raise DataError(f"unreadable: empty image {info.height}x{info.width}", path=p)
    return info


# --------------------------------------------------------------------------- checking


def _available_splits(cls: type[MultimodalDataset], root: Path) -> list[str]:
    """The dataset's splits, ``train``, ``val``, ``test`` first (the class resolves the root:
    the official folder or its parent).

    Raises:
        DataError: ``root`` is not a root of this dataset (the message names what it expects).
    """
    found = set(cls.available_splits(root))
    order = ["train", "val", "test"]
    return [s for s in order if s in found] + sorted(found - set(order))


def _classify(err: DataError) -> str:
    text = err.problem.lower()
    if "missing file" in text:
        return "missing_file"
    if "bit depth" in text:
        return "bit_depth"
    if "channel" in text:
        return "channels"
    if "size mismatch" in text:
        return "size_mismatch"
    if "out of range" in text:
        return "label_values"
    return "unreadable"


class _Checker:
    """Checks one record at a time (:meth:`check`), caching file headers and label results.

    ``formats`` checks bit depths and channel counts, ``labels`` decodes label files, ``deep``
    loads problem-free samples; existence, headers and sizes are always checked."""

    def __init__(self, ds: MultimodalDataset, split: str, *, labels: bool, deep: bool,
                 skip: set[str], formats: bool = True) -> None:
        self.ds = ds
        self.split = split
        self.labels = labels
        self.deep = deep
        self.skip = skip
        self.formats = formats
        self.infos: dict[str, FileInfo | DataError] = {}
        self.label_results: dict[str, DataError | None] = {}
        self.tolerance: Mapping[str, int] = ds.size_tolerance

    # expectations ---------------------------------------------------------
    def expected_bits(self, key: str) -> tuple[int, ...] | None:
        given = self.ds.check_bit_depths
        if key in given:
            return tuple(given[key])
        base = key.split(":")[0]
        if base == LABEL_KEY:
            return None
        spec = self.ds.specs.get(base)
        if spec is not None and spec.bit_depth is not None:
            return (spec.bit_depth,)
        return None

    def channels_ok(self, key: str, info: FileInfo) -> str | None:
        """None if the file's channel count suits ``key``, else the expectation text."""
        if key == LABEL_KEY:
            return None
        given = self.ds.check_channels
        c = info.channels
        if key in given:
            ok = tuple(given[key])
            return None if c in ok else " or ".join(map(str, ok))
        spec = self.ds.specs.get(key.split(":")[0])
        if spec is None:
            return None
        if c is None:  # palette image: read as RGB(A)
            c = 4 if info.palette_alpha else 3
        if spec.file_channels is not None:
            need = max(spec.file_channels) + 1
            return None if c >= need else f"at least {need} (file_channels {list(spec.file_channels)})"
        counts = [spec.channels] + ([spec.repeat_to] if spec.repeat_to and spec.repeat_to != spec.channels else [])
        accepted = counts + ([n + 1 for n in counts] if spec.drop_alpha else [])
        return None if c in accepted else " or ".join(str(n) for n in counts)

    # per file -------------------------------------------------------------
    def info(self, key: str, path: Path) -> FileInfo | DataError:
        k = str(path)
        got = self.infos.get(k)
        if got is None:
            spec = self.ds.specs.get(key.split(":")[0])
            try:
                got = probe_file(path, spec.npz_key if spec is not None else None)
            except DataError as err:
                got = err
            self.infos[k] = got
        return got

    def label_problem(self, path: Path) -> DataError | None:
        k = str(path)
        if k not in self.label_results:
            try:
                self.ds.read_label(path)
                self.label_results[k] = None
            except DataError as err:
                self.label_results[k] = err
        return self.label_results[k]

    def format_problems(self, key: str, path: Path, info: FileInfo) -> list[Problem]:
        """Bit depth and channel count problems of one readable file."""
        out: list[Problem] = []
        want = self.expected_bits(key)
        if want is not None and info.bits not in want:
            out.append(Problem("bit_depth", self.split, key, str(path),
                               f"{info.bits}-bit file, expected {' or '.join(f'{b}-bit' for b in want)}"))
        bad = self.channels_ok(key, info)
        if bad is not None:
            out.append(Problem("channels", self.split, key, str(path),
                               f"{info.channels} channel(s), expected {bad}"))
        return out

    # per record -----------------------------------------------------------
    def check(self, index: int) -> list[Problem]:
        ds, split = self.ds, self.split
        rec = ds.records[index]
        files = [(k, p) for k, p in ds.record_files(rec) if k.split(":")[0] not in self.skip]
        out: list[Problem] = []
        missing: list[Problem] = []
        infos: dict[str, tuple[Path, FileInfo]] = {}
        for key, given in files:
            path = given if isinstance(given, Path) or given is None else Path(given)
            if path is None or not path.is_file():
                missing.append(Problem("missing_file", split, key, None if path is None else str(path),
                                       f"missing file (sample '{rec.id}')"))
                continue
            info = self.info(key, path)
            if isinstance(info, DataError):
                out.append(Problem("unreadable", split, key, str(path), info.problem))
                continue
            if self.formats:
                out += self.format_problems(key, path, info)
            infos[key] = (path, info)
        list_file = rec.extra.get("list_file")
        if missing and len(missing) == len(files) and list_file is not None:
            out.append(Problem("list_entry_without_files", split, None, str(list_file),
                               f"entry '{rec.id}' has no files (e.g. {missing[0].path})"))
        else:
            out = missing + out
        if len(infos) > 1:
            # the size most files share is the sample's; each file off it is reported
            tol_of = {k: self.tolerance.get(k.split(":")[0], 0) for k in infos}
            strict = [k for k in infos if tol_of[k] == 0] or list(infos)
            sizes = Counter((infos[k][1].height, infos[k][1].width) for k in strict)
            (rh, rw), _ = sizes.most_common(1)[0]
            ref_key = next(k for k in strict if (infos[k][1].height, infos[k][1].width) == (rh, rw))
            for key, (path, info) in infos.items():
                tol = max(tol_of[key], tol_of[ref_key])
                if abs(info.height - rh) > tol or abs(info.width - rw) > tol:
                    out.append(Problem("size_mismatch", split, key, str(path),
                                       f"{key} {info.height}x{info.width} vs {ref_key} {rh}x{rw} (H x W; sample '{rec.id}')"))
        if self.labels and LABEL_KEY in infos:
            err = self.label_problem(infos[LABEL_KEY][0])
            if err is not None:
                out.append(Problem(_classify(err), split, LABEL_KEY, str(infos[LABEL_KEY][0]), err.problem))
        if self.deep and not out:
            try:
                ds.load_sample(index)
            except DataError as err:
                kind = _classify(err)
                out.append(Problem(kind if kind != "unreadable" else "load", split, err.modality,
                                   err.path, err.problem))
        return out


def _walk_records(checker: _Checker, workers: int) -> list[Problem]:
    """The problems of every record of ``checker.ds``, in record order, over ``workers``
    threads; records sharing the same files (windows of one tile) are checked once."""
    ds = checker.ds
    firsts: dict[tuple[str, ...], int] = {}
    for i, rec in enumerate(ds.records):
        firsts.setdefault(tuple(str(p) for _, p in ds.record_files(rec)), i)
    indices = sorted(firsts.values())
    if workers <= 1 or len(indices) < 2:
        return [p for i in indices for p in checker.check(i)]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return [p for problems in ex.map(checker.check, indices) for p in problems]


def file_problems(ds: MultimodalDataset, *, workers: int | None = None) -> list[Problem]:
    """The problems of ``ds``'s files that show without decoding pixels: a missing file (or a
    split-list entry without any file), an unreadable header, and sizes that disagree across a
    sample's modalities and label (beyond ``ds.size_tolerance``). Headers are read with
    :func:`probe_file`, each file once, over ``workers`` threads (default: up to 4).

    This is the check a dataset runs when it is built (``check_files=True``); bit depths,
    channel counts and label values are left to ``fusionseg data check`` and to loading.

    Returns:
        The problems in record order (empty: none found).
    """
    checker = _Checker(ds, ds.split, labels=False, deep=False, skip=set(), formats=False)
    return _walk_records(checker, workers or min(4, os.cpu_count() or 1))


def _open_dataset(name: str, root: Path, split: str, modalities: list[str] | None,
                  options: Mapping[str, Any], report: CheckReport) -> MultimodalDataset | None:
    """The dataset for ``split``, built without its own file check (the walk reports every
    file problem its way); a layout error is added to ``report`` (None returned). In auto mode
    (``modalities`` None) a modality whose folder is absent is dropped with a note."""
    cls = get_dataset_class(name)
    auto = modalities is None
    mods = list(modalities) if modalities is not None else (list(cls.available_modalities) or None)
    options = {**options, "check_files": False}  # every dataset takes it (DatasetOptions)
    while True:
        try:
            return create_dataset(name, root, split, mods, **options)
        except DataError as err:
            if auto and mods and err.modality in mods and len(mods) > 1:
                report.note(f"modality '{err.modality}' not present, skipped: {err.problem}", split)
                mods.remove(err.modality)
                continue
            report.add(Problem("layout", split, err.modality, err.path, err.problem))
            return None


def check_dataset(
    name: str,
    root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    labels: bool = True,
    deep: bool = False,
    max_examples: int = 5,
    workers: int | None = None,
) -> CheckReport:
    """Walk dataset ``name`` at ``root`` and collect every problem (see the module docstring).

    Args:
        name: registered dataset name (``deliver``, ``mcubes``, ``folder`` ...).
        root: dataset root.
        splits: splits to check; None: every split the dataset has.
        modalities: modalities to check; None: every modality the dataset offers (absent
            ones skipped with a note).
        options: the dataset's keyword options (e.g. MCubeS ``nir_mask``, DELIVER
            ``conditions``).
        labels: decode label files and check their values.
        deep: also load every problem-free sample through the dataset.
        max_examples: example problems kept per kind and modality.
        workers: threads (default: up to 4).

    Returns:
        A :class:`CheckReport`; ``report.ok`` is False if any problem was found. The walk
        never stops at a problem.

    Raises:
        DataError: unknown dataset name; without ``splits``, a ``root`` that is not a root of
            the dataset (one line naming the folders it expects).
    """
    get_dataset_class(name)  # unknown name: error, not a report
    root_p = Path(root)
    report = CheckReport(dataset=name, root=str(root_p), max_examples=max_examples)
    if not root_p.is_dir():
        report.add(Problem("layout", None, None, str(root_p), "dataset root not found"))
        return report
    cls = get_dataset_class(name)
    split_list = list(splits) if splits else _available_splits(cls, root_p)
    if not split_list:
        report.add(Problem("layout", None, None, str(root_p), f"no split found for dataset '{name}'"))
        return report
    seen_files: set[str] = set()
    n_workers = workers or min(4, os.cpu_count() or 1)
    opened: list[tuple[str, MultimodalDataset]] = []
    for split in dict.fromkeys(split_list):
        ds = _open_dataset(name, root_p, split, None if modalities is None else list(modalities),
                           options or {}, report)
        if ds is not None:
            opened.append((split, ds))
    # auto mode: a modality with no file in any split is absent from this copy, not broken
    skip: set[str] = set()
    if modalities is None:
        present: dict[str, bool] = {}
        for _, ds in opened:
            for m in ds.modalities:
                if not present.get(m):
                    present[m] = any(
                        r.paths.get(m) is not None and Path(r.paths[m]).is_file() for r in ds.records
                    )
        for m, found in present.items():
            if not found and len(present) > 1:
                skip.add(m)
                report.note(f"modality '{m}' has no files in this copy, skipped")
    for split, ds in opened:
        mods = [m for m in ds.modalities if m not in skip]
        report.splits[split] = len(ds)
        report.modalities[split] = mods
        checker = _Checker(ds, split, labels=labels, deep=deep, skip=skip)
        for p in _walk_records(checker, n_workers):
            report.add(p)
        seen_files.update(checker.infos)
        seen_files.update(checker.label_results)
    report.files_checked = len(seen_files)
    return report


def print_report(report: CheckReport, console: Any = None) -> None:
    """Print a report with rich: header, notes, a table of problems (count and first paths per
    kind and modality), and a final OK / FAILED line."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    # paths and messages are text: "[modality 'rgb']" or "img[1].png" is not rich markup
    console.print(f"[bold]{report.dataset}[/] at {escape(str(report.root))}", highlight=False)
    for split, n in report.splits.items():
        mods = ", ".join(report.modalities.get(split, []))
        console.print(f"  split [cyan]{split}[/]: {n} samples ({mods})", highlight=False)
    console.print(f"  {report.files_checked} files checked", highlight=False)
    for note in report.notes:
        console.print(f"  [yellow]note:[/] {escape(note)}", highlight=False)
    if report.ok:
        console.print("[bold green]OK[/]: no problems found")
        return
    table = Table(title="problems", show_lines=True)
    table.add_column("problem")
    table.add_column("modality")
    table.add_column("count", justify="right")
    table.add_column("first files")
    for g in report._sorted_groups():
        first = "\n".join(f"{p.path or '-'}: {p.message}" for p in g.examples)
        more = g.count - len(g.examples)
        if more > 0:
            first += f"\n... and {more} more"
        table.add_row(PROBLEM_KINDS.get(g.kind, g.kind), g.modality or "-", str(g.count),
                      escape(first))
    console.print(table)
    kinds = len({g.kind for g in report.groups.values()})
    console.print(
        f"[bold red]FAILED[/]: {report.num_problems} problem(s) of {kinds} kind(s)", highlight=False
    )
