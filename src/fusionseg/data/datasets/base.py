"""Base class of the multimodal datasets, and the dataset registry.

A dataset subclass indexes its files once (``_index``, a list of :class:`SampleRecord`) and
says how its label files decode (``decode_label``); the base class reads every modality
through its :class:`~fusionseg.data.modalities.ModalitySpec`, validates the sample and
applies the transform. ``dataset[i]`` returns a Sample (see :mod:`fusionseg.data.sample`)::

    {"rgb": float32 [3, H, W], ..., "label": int64 [H, W],
     "meta": {"id": str, "condition": str | None, "case": str | None,
              "paths": {"rgb": "/abs/file.png", ..., "label": "/abs/label.png"}}}

Files checked when the dataset is built: unless ``check_files=False``, the constructor looks at
every file each record reads (:meth:`MultimodalDataset.record_files`) without decoding pixels
(:func:`fusionseg.data.check.file_problems`: existence, a readable header, the same size across
a sample's modalities and label) and reports every problem together in one
:class:`DatasetFilesError`, instead of the first one failing at sample N mid-epoch.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from fusionseg.data.io import IMAGE_EXTENSIONS, DataError, read_image
from fusionseg.data.modalities import ModalitySpec, resolve_specs
from fusionseg.data.plotting import plot_sample
from fusionseg.data.sample import IGNORE_INDEX, LABEL_KEY, META_KEY, Sample, check_sample
from fusionseg.registry import Registry

from .options import DatasetOptions, describe_options, name_list, validate_options

if TYPE_CHECKING:
    from fusionseg.data.check import Problem

__all__ = [
    "FILE_PROBLEMS_SHOWN",
    "DatasetFilesError",
    "MultimodalDataset",
    "SampleRecord",
    "StemFiles",
    "create_dataset",
    "dataset_options",
    "decode_void_zero_label",
    "files_by_stem",
    "get_dataset_class",
    "list_datasets",
    "name_list",
    "read_split_list",
    "register_dataset",
]


def files_by_stem(
    folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> dict[str, Path]:
    """Files of ``folder`` (not recursive) with one of ``extensions`` (lower case, with the dot),
    by stem; where two files share a stem the extension earlier in ``extensions`` wins.
    A missing folder gives ``{}``."""
    d = Path(folder)
    if not d.is_dir():
        return {}
    rank = {e: i for i, e in enumerate(extensions)}
    out: dict[str, Path] = {}
    with os.scandir(d) as it:
        for entry in it:
            ext = os.path.splitext(entry.name)[1].lower()
            if ext not in rank or not entry.is_file():
                continue
            stem = entry.name[: -len(ext)]
            prev = out.get(stem)
            if prev is None or rank[ext] < rank[prev.suffix.lower()]:
                out[stem] = d / entry.name
    return out


@dataclass(frozen=True)
class StemFiles:
    """The image files of one folder by stem (:func:`files_by_stem`), and the path a sample
    whose file is missing is reported with (so the file check names the file to add).

    Attributes:
        folder: the folder scanned.
        files: stem -> file.
        missing_ext: extension (with the dot) of the path of a stem without a file.
    """

    folder: Path
    files: dict[str, Path]
    missing_ext: str

    @classmethod
    def scan(cls, folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS, *,
             preferred: str = ".png", follow_folder: bool = True) -> StemFiles:
        """Scan ``folder`` (missing: no files). A missing file is named with ``preferred``;
        with ``follow_folder``, where the folder holds files but none with ``preferred``,
        with the first (sorted) extension present instead."""
        files = files_by_stem(folder, extensions)
        present = sorted({p.suffix for p in files.values()})
        follow = follow_folder and present and preferred not in present
        return cls(Path(folder), files, present[0] if follow else preferred)

    def path(self, stem: str) -> Path:
        """The file of ``stem``, or ``folder/{stem}{missing_ext}`` where there is none."""
        return self.files.get(stem, self.folder / f"{stem}{self.missing_ext}")


def decode_void_zero_label(raw: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Channel 0 of a label whose raw 0 is void and 1..K the classes (DELIVER, FMB, NYUDv2):
    raw 0 and 255 -> ``ignore_index``, raw ``k`` -> class ``k - 1``, ``int64 [H, W]``.

    Raw values above K map outside ``0..K-1`` and are reported by
    :meth:`MultimodalDataset.label_from_array`.
    """
    r = raw[:, :, 0].astype(np.int64)
    out = r - 1
    out[(r == 0) | (r == 255)] = ignore_index
    return out


def list_file_splits(folder: str | os.PathLike) -> list[str]:
    """Split names of the ``*.txt`` list files in ``folder``, sorted."""
    return sorted(p.stem for p in Path(folder).glob("*.txt"))


def read_required_split(dataset: str, split: str, folder: Path,
                        hint: str = "") -> tuple[Path, list[str]]:
    """``(folder/{split}.txt, its names)`` for list-file datasets (MCubeS, MFNet, NYUDv2).

    Raises:
        DataError: the list file is missing (naming the lists present and ``hint``) or empty.
    """
    lst = Path(folder) / f"{split}.txt"
    if not lst.is_file():
        present = list_file_splits(folder)
        raise DataError(
            f"{dataset} split '{split}': list file not found (lists present: "
            f"{', '.join(present) or 'none'}{hint})",
            path=lst,
        )
    names = read_split_list(lst)
    if not names:
        raise DataError(f"{dataset} split '{split}': the list is empty", path=lst)
    return lst, names


def read_split_list(path: str | os.PathLike) -> list[str]:
    """Sample names of a split list file (``train.txt`` ...), in file order, duplicates dropped.

    One entry per line; blank lines and ``#`` comments are skipped. Of each line only the first
    whitespace-separated token counts (some releases list ``RGB/12.jpg Label/12.png``), and of
    it only the file name without a known image extension (``RGB/12.jpg`` -> ``12``).

    Raises:
        DataError: the list file is missing or unreadable (naming it).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError("split list file not found", path=p)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise DataError(f"unreadable split list ({err})", path=p) from err
    names: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token = line.split()[0].replace("\\", "/").rsplit("/", 1)[-1]
        stem, dot, ext = token.rpartition(".")
        if dot and f".{ext.lower()}" in IMAGE_EXTENSIONS:
            token = stem
        if token and token not in seen:
            seen.add(token)
            names.append(token)
    return names


#: file problems named in a :class:`DatasetFilesError` message (the rest are counted)
FILE_PROBLEMS_SHOWN = 5


class DatasetFilesError(DataError):
    """The files of a dataset's samples have problems, found when the dataset was built
    (``check_files=True``). One line: the number of problems, the first
    :data:`FILE_PROBLEMS_SHOWN` of them and the ``fusionseg data check`` command that lists
    them all. The problems are kept in ``problems``
    (:class:`fusionseg.data.check.Problem`, each with ``kind``, ``modality``, ``path``,
    ``message``); ``path`` is the dataset root."""

    def __init__(self, problem: str, *, path: str | os.PathLike,
                 problems: Sequence[Problem]) -> None:
        super().__init__(problem, path=path)
        self.problems: list[Problem] = list(problems)


@dataclass(frozen=True)
class SampleRecord:
    """Where one sample's files are.

    Attributes:
        id: sample id (unique within the split; e.g. a relative path stem).
        paths: modality -> file (only the dataset's selected modalities).
        label: label file, or None for unlabelled splits.
        condition: acquisition condition (e.g. DELIVER's ``fog``), or None.
        case: evaluation case (condition or sensor-failure name), or None.
    """

    id: str
    paths: dict[str, Path]
    label: Path | None = None
    condition: str | None = None
    case: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class MultimodalDataset(Dataset):
    """Base class: pixel-aligned modalities + label, one Sample per index.

    Subclasses set ``classes`` and ``palette`` (class attributes, or in :meth:`_prepare`),
    ``available_modalities``, optionally ``default_specs`` and ``default_modalities``, declare
    their own options as a :class:`~.options.DatasetOptions` subclass set as ``Options``, and
    implement ``_index()`` (and ``decode_label`` if the raw label is not class ids in channel
    0). They do not re-declare the constructor: per-instance settings derived from the options
    go in :meth:`_prepare`.

    Args:
        root: dataset root folder.
        split: split name (``train``, ``val``, ``test`` ...).
        modalities: modality names to load, in order (default: ``default_modalities``).
        transform: callable ``sample -> sample`` applied last (see
            :mod:`fusionseg.data.transforms`); None returns untransformed samples.
        **options: the dataset's options (its ``Options`` model), validated into
            :attr:`options`. Every dataset takes ``max_samples`` (keep only the first N
            samples, after filtering), ``check_files`` (look at every file of the kept samples
            now, see :meth:`validate_files`: existence, readable headers, equal sizes; no
            pixels decoded, all problems in one error; False skips this, for data known to be
            complete, and a problem then surfaces when its sample is read) and ``specs``
            (per-modality overrides: a ModalitySpec, or a dict of fields on top of the
            dataset's default spec).

    Attributes:
        options: the validated options (an instance of ``Options``, frozen).
        classes: class names, index = class id. ``num_classes = len(classes)``.
        palette: ``uint8 [K, 3]`` colours per class.
        ignore_index: 255.
        modalities: the loaded modality names.
        specs: ``dict[str, ModalitySpec]`` for ``modalities``.
        transform: see above (may be replaced after construction).
        records: list of :class:`SampleRecord`.

    Raises:
        DataError: an unknown option or a wrong option value (see :meth:`validate_options`),
            missing root, a root without the dataset's folders (see :meth:`resolve_root`),
            missing split folder (naming the path), a modality the dataset does not offer,
            invalid spec overrides; per sample (at ``__getitem__``): missing or
            unreadable file, wrong bit depth / channel count, size mismatch, label value out
            of range (naming the files and modality).
        DatasetFilesError: (a DataError; with ``check_files``) missing files, unreadable
            headers or sizes that disagree within a sample, all counted in one message.
    """

    name: ClassVar[str] = ""
    classes: list[str] = []
    palette: np.ndarray = np.zeros((0, 3), dtype=np.uint8)
    ignore_index: int = IGNORE_INDEX
    available_modalities: ClassVar[tuple[str, ...]] = ()  # empty: any modality
    default_modalities: ClassVar[tuple[str, ...]] = ("rgb",)
    default_specs: ClassVar[dict[str, ModalitySpec]] = {}
    #: channels of the raw label file shown in "value out of range" errors (None: all)
    label_value_channels: tuple[int, ...] | None = (0,)
    #: split names of the release, for ``available_splits`` (empty: the root's sub-folders)
    known_splits: ClassVar[tuple[str, ...]] = ()
    #: folder of the split list files ``{split}.txt``, relative to the root (``""``: the root
    #: itself); None where the splits are not list files
    split_list_dir: ClassVar[str | None] = None
    # -- what ``fusionseg data check`` reads, where the ModalitySpec alone does not say --
    #: file key (``"label"``, ``"dsm"``, ``"aolp:cos"``) -> accepted bit depths
    check_bit_depths: Mapping[str, tuple[int, ...]] = {}
    #: file key -> accepted channel counts
    check_channels: Mapping[str, tuple[int, ...]] = {}
    #: modality -> size difference (pixels) to the reference modality that the loader fixes
    size_tolerance: Mapping[str, int] = {}
    # -- how the root is recognised (see ``resolve_root``) --
    #: folders (relative to the root; ``*`` matches one folder name) that the official layout
    #: always has; a tuple entry is satisfied by any one of its folders. Empty: any existing
    #: folder is a root.
    root_markers: ClassVar[tuple[str | tuple[str, ...], ...]] = ()
    #: names of the folder the official archive unpacks to (looked for one and two levels
    #: below a given root that lacks the markers)
    archive_folders: ClassVar[tuple[str, ...]] = ()
    #: the dataset's options model (a subclass of DatasetOptions declared beside the dataset)
    Options: ClassVar[type[DatasetOptions]] = DatasetOptions
    options: DatasetOptions

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        modalities: Sequence[str] | str | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        **options: Any,
    ) -> None:
        self.options = self.validate_options(options)
        self.root = self.resolve_root(root)
        self.split = split
        self._prepare()
        self.modalities = self._select_modalities(modalities)
        self.specs: dict[str, ModalitySpec] = resolve_specs(self.modalities, self.options.specs,
                                                            self.default_specs)
        self.transform = transform
        records = self._index()
        if self.options.max_samples is not None:
            records = records[: self.options.max_samples]
        self.records: list[SampleRecord] = records
        self.palette = np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)
        if self.options.check_files:
            self.validate_files()

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> DatasetOptions:
        """Keyword options validated into :attr:`Options` (the constructor's first step).

        Raises:
            DataError: an unknown option, a wrong type or value (one line naming the dataset,
                the problem and the valid options with their types).
        """
        return validate_options(cls.name or cls.__name__, cls.Options, options)

    def _prepare(self) -> None:
        """Set per-instance state from :attr:`options`, ``root`` (resolved) and ``split``,
        before the modalities are chosen and the split is indexed. Default: nothing."""

    def _select_modalities(self, modalities: Sequence[str] | str | None) -> list[str]:
        """The modalities to load: ``modalities`` (one name or several), or
        ``default_modalities`` when none are given.

        Raises:
            DataError: none selected, one given twice, one the dataset does not offer.
        """
        mods = name_list(modalities) or list(self.default_modalities)
        if not mods:
            raise DataError(f"dataset '{self.name}': no modalities selected")
        if len(set(mods)) != len(mods):
            raise DataError(f"dataset '{self.name}': duplicate modalities in {mods}")
        offered = self.offered_modalities()
        if offered:
            unknown = [m for m in mods if m not in offered]
            if unknown:
                raise DataError(
                    f"dataset '{self.name}' has no modality {', '.join(map(repr, unknown))} "
                    f"(available: {', '.join(offered)})",
                    path=self.root,
                )
        return mods

    # ------------------------------------------------------------------ the root
    @classmethod
    def _marker_text(cls, markers: Sequence[str | tuple[str, ...]] | None = None) -> str:
        """Markers as text: ``"list_folder/, polL_color/"``; alternatives ``"images/ or rgb/"``."""
        items = cls.root_markers if markers is None else markers
        return ", ".join(
            " or ".join(f"{a}/" for a in m) if isinstance(m, tuple) else f"{m}/" for m in items
        )

    @classmethod
    def _markers_present(cls, folder: Path) -> list[bool]:
        """For each entry of ``root_markers``: whether ``folder`` has it."""
        def has(rel: str) -> bool:
            if "*" in rel:
                return any(p.is_dir() for p in folder.glob(rel))
            return (folder / rel).is_dir()

        return [any(map(has, m if isinstance(m, tuple) else (m,))) for m in cls.root_markers]

    @classmethod
    def _root_candidates(cls, root: Path) -> list[Path]:
        """Folders below ``root`` that may be the dataset root: its direct sub-folders (hidden
        ones skipped), then ``root/*/<archive folder>`` for each name of ``archive_folders``."""
        try:
            with os.scandir(root) as it:
                subdirs = sorted(
                    Path(e.path) for e in it if not e.name.startswith(".") and e.is_dir()
                )
        except OSError:
            return []
        deeper = [d / a for d in subdirs for a in cls.archive_folders if (d / a).is_dir()]
        return subdirs + [d for d in deeper if d not in subdirs]

    @classmethod
    def resolve_root(cls, root: str | os.PathLike) -> Path:
        """The dataset root for a given ``data.root``: the folder the official archive unpacks
        to, or its parent (or grandparent, for the names in ``archive_folders``).

        ``root`` itself when it has every folder of ``root_markers`` (or some of them and no
        folder below has them all: the loader then names what is missing); else the one folder
        below it (a direct sub-folder, or ``root/*/<archive folder>``) that has them all.

        Raises:
            DataError: ``root`` missing or not a folder; several folders below it have the
                markers (naming them); none has them (naming the expected markers, and the
                folders below that have some of them). The path of the error is ``root``.
        """
        r = Path(root)
        label = cls.__name__
        if not r.is_dir():
            what = "dataset root not found" if not r.exists() else "root is not a folder"
            raise DataError(f"{what} (dataset '{cls.name or label}')", path=r)
        if not cls.root_markers:
            return r
        present = cls._markers_present(r)
        if all(present):
            return r
        candidates = cls._root_candidates(r)
        full = [c for c in candidates if all(cls._markers_present(c))]
        if len(full) == 1:
            return full[0]
        if len(full) > 1:
            raise DataError(
                f"holds {len(full)} {label} roots ({', '.join(map(str, full))}); point data.root "
                "at one of them",
                path=r,
            )
        if any(present):
            return r  # a damaged root: the loader reports the missing folder and file
        hints = []
        for c in candidates:
            has = cls._markers_present(c)
            if any(has):
                got = [m for m, h in zip(cls.root_markers, has, strict=True) if h]
                lacks = [m for m, h in zip(cls.root_markers, has, strict=True) if not h]
                hints.append(
                    f"{c} has {cls._marker_text(got)} but lacks {cls._marker_text(lacks)}"
                )
        hint = f" (closest: {'; '.join(hints[:2])})" if hints else ""
        raise DataError(
            f"not a {label} root: expected {cls._marker_text()}; point data.root at the folder "
            f"holding them{hint}",
            path=r,
        )

    # ------------------------------------------------------------------ to implement
    def offered_modalities(self) -> tuple[str, ...]:
        """Modalities this dataset can load (empty: any)."""
        return tuple(self.available_modalities)

    @classmethod
    def available_splits(cls, root: str | os.PathLike) -> list[str]:
        """Splits present under ``root`` (for ``fusionseg data check`` without ``--split``),
        after the same root resolution as the constructor (:meth:`resolve_root`).

        Returns ``[]`` for a missing root.

        Raises:
            DataError: ``root`` exists but is no dataset root (see :meth:`resolve_root`).
        """
        if not Path(root).is_dir():
            return []
        return cls.splits_in(cls.resolve_root(root))

    @classmethod
    def splits_in(cls, root: Path) -> list[str]:
        """Splits present in a resolved ``root``. Default: the ``*.txt`` list files in
        ``split_list_dir`` where the class sets one, else ``known_splits`` if the class names
        them, else the sub-folders of ``root``. Subclasses whose splits are found otherwise
        (fixed id lists, split folders below a modality folder) override this."""
        if cls.split_list_dir is not None:
            return list_file_splits(root / cls.split_list_dir)
        if cls.known_splits:
            return list(cls.known_splits)
        return sorted(d.name for d in root.iterdir() if d.is_dir())

    def _index(self) -> list[SampleRecord]:
        """List the split's samples (sorted, filtered). Raises DataError on a bad layout."""
        raise NotImplementedError

    def read_split_names(self, hint: str = "") -> tuple[Path, list[str]]:
        """``(list file, sample names)`` of the split, for datasets with ``split_list_dir``:
        ``root/{split_list_dir}/{split}.txt`` (see :func:`read_required_split`; the
        messages name the dataset by its class name).

        Raises:
            DataError: the list file is missing (naming the lists present and ``hint``) or
                empty.
        """
        assert self.split_list_dir is not None
        return read_required_split(type(self).__name__, self.split,
                                   self.root / self.split_list_dir, hint)

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        """Raw label array ``[H, W, C]`` -> class ids ``int64 [H, W]`` (255 = ignore).

        Default: channel 0 as class ids.
        """
        return raw[:, :, 0].astype(np.int64)

    # ------------------------------------------------------------------ reading
    @property
    def num_classes(self) -> int:
        """Number of classes K (label ids are ``0..K-1``, plus ``ignore_index``)."""
        return len(self.classes)

    @property
    def conditions(self) -> list[str]:
        """Sorted distinct conditions of the loaded samples (empty if the dataset has none)."""
        return sorted({r.condition for r in self.records if r.condition is not None})

    @property
    def cases(self) -> list[str]:
        """Sorted distinct cases (condition or sensor-failure name) of the loaded samples."""
        return sorted({r.case for r in self.records if r.case is not None})

    def __len__(self) -> int:
        return len(self.records)

    def read_label(self, path: str | os.PathLike) -> torch.Tensor:
        """Read and decode a label file into ``int64 [H, W]``, checking its values.

        Raises:
            DataError: missing/unreadable file, or values outside ``0..K-1`` and
                ``ignore_index`` after decoding (the message gives the raw values too).
        """
        raw = read_image(path, modality=LABEL_KEY, palette="index")
        return self.label_from_array(raw, path)

    def label_from_array(self, raw: np.ndarray, path: str | os.PathLike | None) -> torch.Tensor:
        """Decode a raw label array ``[H, W, C]`` (see :meth:`read_label`); ``path`` is only
        used in error messages.

        Raises:
            DataError: a float label holding values that are not whole numbers (NaN, 1.7: a
                cast would silently make them class ids), a decoded shape other than the
                file's, a class id outside ``0..num_classes-1`` and ``ignore_index``.
        """
        if raw.dtype.kind == "f":
            frac = ~np.isfinite(raw) | (raw != np.round(raw))
            if frac.any():
                vals = ", ".join(f"{v:g}" for v in np.unique(raw[frac])[:10].tolist())
                raise DataError(f"label holds non-integer class ids [{vals}] ({int(frac.sum())} "
                                "pixel(s)); class ids must be whole numbers",
                                path=path, modality=LABEL_KEY)
        try:
            lab = np.asarray(self.decode_label(raw))
        except DataError as err:
            if err.path is None:
                raise DataError(err.problem, path=path, modality=LABEL_KEY) from err
            raise
        if lab.shape != raw.shape[:2]:
            raise DataError(
                f"decoded label has shape {lab.shape}, expected {raw.shape[:2]}",
                path=path,
                modality=LABEL_KEY,
            )
        lab = lab.astype(np.int64, copy=False)
        k = self.num_classes
        bad = (lab != self.ignore_index) & ((lab < 0) | (lab >= k))
        if bad.any():
            dec_vals = np.unique(lab[bad])[:10].tolist()
            shown = raw if self.label_value_channels is None else raw[:, :, self.label_value_channels]
            raw_vals = np.unique(shown[bad], axis=0)[:10]
            raw_desc = raw_vals.reshape(len(raw_vals), -1)
            raw_list = [int(r[0]) if len(r) == 1 else tuple(int(v) for v in r) for r in raw_desc]
            raise DataError(
                f"label value out of range: raw value(s) {raw_list} decode to {dec_vals}; "
                f"valid are 0..{k - 1} and ignore {self.ignore_index} "
                f"(dataset '{self.name}', {int(bad.sum())} pixel(s))",
                path=path,
                modality=LABEL_KEY,
            )
        return torch.from_numpy(np.ascontiguousarray(lab))

    def meta_of(self, record: SampleRecord) -> dict[str, Any]:
        """The ``meta`` dict of a record: id, condition, case, paths (str)."""
        paths = {m: str(p) for m, p in record.paths.items()}
        if record.label is not None:
            paths[LABEL_KEY] = str(record.label)
        return {"id": record.id, "condition": record.condition, "case": record.case, "paths": paths}

    def read_modality(self, record: SampleRecord, modality: str) -> torch.Tensor:
        """Read one modality of a record: ``float32 [C, H, W]`` in physical units.

        Default: ``specs[modality].load(record.paths[modality])``. Datasets whose modality
        spans several files or needs a crop override this.
        """
        path = record.paths.get(modality)
        if path is None:
            raise DataError(
                f"sample '{record.id}' has no file for this modality", modality=modality, path=None
            )
        return self.specs[modality].load(path)

    def read_record_label(self, record: SampleRecord) -> torch.Tensor:
        """The decoded label ``int64 [H, W]`` of a record that has one (default:
        :meth:`read_label` of ``record.label``)."""
        assert record.label is not None
        return self.read_label(record.label)

    def record_files(self, record: SampleRecord) -> list[tuple[str, Path | None]]:
        """Every file a record reads, as ``(key, path)``: the selected modalities, extra
        files of multi-file modalities (key ``"<modality>:<part>"``), then ``("label", path)``.
        """
        files: list[tuple[str, Path | None]] = [(m, record.paths.get(m)) for m in self.modalities]
        if record.label is not None:
            files.append((LABEL_KEY, record.label))
        return files

    def load_sample(self, index: int) -> Sample:
        """The untransformed, validated Sample at ``index`` (physical units, not normalized)."""
        record = self.records[index]
        sample: Sample = {}
        for m in self.modalities:
            sample[m] = self.read_modality(record, m)
        if record.label is not None:
            sample[LABEL_KEY] = self.read_record_label(record)
        sample[META_KEY] = self.meta_of(record)
        check_sample(sample)
        return sample

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        sample = self.load_sample(index)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    # ------------------------------------------------------------------ plotting
    def plot(
        self,
        sample_or_index: Sample | int,
        *,
        prediction: torch.Tensor | np.ndarray | None = None,
        show_titles: bool = True,
        suptitle: str | None = None,
        legend: bool = True,
    ) -> Any:
        """A matplotlib figure of one sample: every selected modality, the label in
        :attr:`palette` (ignore pixels black), the prediction if given, and a legend of the
        classes that occur (torchgeo's ``dataset.plot(sample)``).

        Args:
            sample_or_index: a Sample (e.g. ``ds[i]``, transformed) or an index (plots the
                untransformed :meth:`load_sample`, as stored).
            prediction: class ids ``[H, W]`` or logits ``[K, H, W]``.
            show_titles, suptitle, legend: see :func:`fusionseg.data.plotting.plot_sample`
                (the default title is the sample id).

        Returns:
            A ``matplotlib.figure.Figure`` (close it with ``plt.close(fig)``).

        Raises:
            DataError: a class id outside the palette; an index's sample failing to load.
            IndexError: an index out of range.
        """
        if isinstance(sample_or_index, (int, np.integer)):
            index = int(sample_or_index)
            if not -len(self) <= index < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} samples")
            sample = self.load_sample(index % len(self))
        else:
            sample = sample_or_index
        return plot_sample(sample, self.modalities, classes=self.classes, palette=self.palette,
                           ignore_index=self.ignore_index, prediction=prediction,
                           show_titles=show_titles, suptitle=suptitle, legend=legend)

    # ------------------------------------------------------------------ checking
    def validate_files(self, workers: int | None = None) -> None:
        """Look at every file the records read, without decoding pixels: that it exists, that
        its header reads, and that a sample's modalities and label agree in size (within
        ``size_tolerance``). See :func:`fusionseg.data.check.file_problems`; the constructor
        calls this unless ``check_files=False``.

        Raises:
            DatasetFilesError: one line with the number of problems, the first
                :data:`FILE_PROBLEMS_SHOWN`, and the ``fusionseg data check`` command listing
                them all.
        """
        from fusionseg.data.check import file_problems  # check.py imports this module

        problems = file_problems(self, workers=workers)
        if problems:
            raise DatasetFilesError(self._files_problem_text(problems), path=self.root,
                                    problems=problems)

    def _files_problem_text(self, problems: Sequence[Problem]) -> str:
        """The one-line message of a :class:`DatasetFilesError` for ``problems``."""
        shown = problems[:FILE_PROBLEMS_SHOWN]
        clauses = "; ".join(_problem_clause(p) for p in shown)
        rest = len(problems) - len(shown)
        more = f"; and {rest} more" if rest else ""
        command = (
            f"fusionseg data check --dataset {shlex.quote(self.name)} "
            f"--root {shlex.quote(str(self.root))} --split {shlex.quote(self.split)} "
            f"--modalities {shlex.quote(','.join(self.modalities))}"
        )
        n = len(problems)
        return (
            f"dataset '{self.name}' split '{self.split}': {n} file problem{'s' if n != 1 else ''} "
            f"in {len(self.records)} samples: {clauses}{more}; list them all with `{command}` "
            "(check_files=False, or data.options.check_files: false, skips this check)"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, root='{self.root}', split={self.split!r}, "
            f"modalities={self.modalities}, samples={len(self)}, classes={self.num_classes})"
        )


def _problem_clause(problem: Problem) -> str:
    """One problem of :func:`fusionseg.data.check.file_problems` as one clause:
    ``<file> [modality '<key>']: <kind>: <message>`` (the kind, e.g. ``size mismatch``, only
    where the message does not start with it)."""
    where = problem.path or "-"
    if problem.modality:
        where += f" [modality '{problem.modality}']"
    message = " ".join(str(problem.message).split())
    kind = problem.kind.replace("_", " ")
    if not message.startswith(kind):
        message = f"{kind}: {message}"
    return f"{where}: {message}"


# --------------------------------------------------------------------------- registry

#: ``name -> dataset class``; unknown names raise :class:`DataError`
DATASETS: Registry[type[MultimodalDataset]] = Registry("dataset", error=DataError)


def register_dataset(name: str) -> Callable[[type[MultimodalDataset]], type[MultimodalDataset]]:
    """Class decorator registering a dataset under ``name`` (sets ``cls.name``).

    Raises:
        ValueError: ``name`` already taken by another class.
    """

    def deco(cls: type[MultimodalDataset]) -> type[MultimodalDataset]:
        DATASETS.register(name)(cls)
        cls.name = name
        return cls

    return deco


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return DATASETS.names()


def get_dataset_class(name: str) -> type[MultimodalDataset]:
    """The class registered as ``name``. Raises DataError for an unknown name."""
    return DATASETS.get(name)


def dataset_options(cls: type[MultimodalDataset]) -> list[str]:
    """The names of the keyword options a dataset class takes besides root, split, modalities
    and transform: the fields of its ``Options`` model, its own first (DELIVER: ``conditions,
    case, max_samples, check_files, specs``). ``fusionseg info DATASET`` shows their types,
    defaults and descriptions (:func:`~.options.describe_options`)."""
    return [o.name for o in describe_options(cls.Options)]


def create_dataset(
    name: str,
    root: str | os.PathLike,
    split: str,
    modalities: Sequence[str] | None = None,
    transform: Callable[[Sample], Sample] | None = None,
    **options: Any,
) -> MultimodalDataset:
    """Build the registered dataset ``name`` (e.g. ``"deliver"``, ``"folder"``).

    ``options`` are the dataset's keyword options, its ``Options`` model (DELIVER:
    ``conditions``, ``case``; every dataset: ``max_samples``, ``check_files``, ``specs``).

    Raises:
        DataError: unknown dataset, an unknown option or a wrong option value (one line naming
            the dataset, the problem and the valid options with their types), missing root or
            split, and the dataset's own errors (a :class:`DatasetFilesError` for the problems
            of its files, unless ``check_files=False``).
    """
    return get_dataset_class(name)(root, split, modalities, transform, **options)
