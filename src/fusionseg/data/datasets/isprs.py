"""ISPRS 2D semantic labelling: Vaihingen (IRRG + DSM, 9 cm) and Potsdam (RGB/IRRG + DSM, 5 cm).

Both have 6 classes, colour-coded in RGB label TIFFs (:data:`ISPRS_COLOURS`); any other colour
(e.g. the black boundary band of the ``noBoundary`` labels) is ignore 255
(``off_palette_class=0``: colours other than black are class 0, as in the MoBaNet release).

Vaihingen (dataset ``"vaihingen"``), ``area{id}`` tiles of about 2500 x 2000 px::

    root/top/top_mosaic_09cm_area{id}.tif                 IRRG, 3-channel uint8
    root/dsm/dsm_09cm_matching_area{id}.tif               DSM, float32 metres
    root/gts_for_participants/top_mosaic_09cm_area{id}.tif            colour labels
    root/gts_eroded_for_participants/top_mosaic_09cm_area{id}_noBoundary.tif   eroded labels

Potsdam (dataset ``"potsdam"``), ``{r}_{c}`` tiles of 6000 x 6000 px::

    root/top/top_potsdam_{r}_{c}_RGB.tif   (or 2_Ortho_RGB/)    RGB, uint8
    root/top/top_potsdam_{r}_{c}_IRRG.tif  (or 3_Ortho_IRRG/)   IRRG, uint8
    root/top/top_potsdam_{r}_{c}_RGBIR.tif (or 4_Ortho_RGBIR/)  R, G, B, IR, uint8
    root/dsm/dsm_potsdam_{rr}_{cc}.tif     (or 1_DSM/)          DSM, float32 metres, ids
                                                                zero-padded (02_10)
    root/.../top_potsdam_{r}_{c}_label.tif, .../top_potsdam_{r}_{c}_label_noBoundary.tif

Where files are: each file is looked up by its release name, first in the folders named above
(and the release's own folder names, e.g. ``5_Labels_all``, ``5_Labels_for_participants``,
``gts_eroded_for_participants``), then anywhere below ``root`` up to three levels deep. For
Vaihingen, where image and label share a file name, the label is only taken from a folder whose
name contains ``gt``, ``label`` or ``ground_truth``, and the image only from one that does not.

Modalities: ``irrg``/``rgb`` ``[3, H, W]`` in [0, 1] (ImageNet normalization); Potsdam also
``rgbir`` ``[4, H, W]`` and ``nir`` (channel 4 of the RGBIR file, repeated to 3); ``dsm``
``[1, H, W]`` min-max normalized per tile to [0, 1] (as MoBaNet does). DSM pixels that are
non-finite or below ``dsm_nodata_below`` metres (nodata sentinels such as -9999; default
-1000) are left out of the min-max, filled with the tile's lowest valid height (0 after
normalization) and counted per file in ``dataset.dsm_nodata``. A DSM whose size differs
from its tile by at most ``dsm_size_tolerance`` pixels is cropped or edge-padded at the
bottom/right; larger differences are a size mismatch.

Splits (fixed tile lists): Vaihingen train 1 3 5 7 11 13 15 17 21 23 26 28 30 32 34 37, test
2 4 6 8 10 12 14 16 20 22 24 27 29 31 33 35 38; Potsdam 23 train tiles (2_10 .. 7_12 without
7_10, whose labels are faulty) and 14 test tiles. ``tiles=[...]`` replaces the split's list.

A copy may bring its own split lists instead: ``splits/{split}.txt`` beside the image folder
(``root/splits/train.txt``, one tile id per line, ``#`` comments allowed). When that folder
exists its list files are the splits (``val.txt`` makes a ``val`` split) and the fixed lists
are not used; ``fusionseg data synth aerial --tiles N`` writes them for the tiles it rendered,
so any N reads completely. A release copy has no ``splits/`` folder, so its fixed lists stand
and a tile missing from the copy is reported when the dataset is built (with
``check_files``, the default), never dropped silently.

Labels: ``label_variant="auto"`` reads the full labels for ``train`` and the eroded
``noBoundary`` labels for every other split (the evaluation protocol); ``"full"`` or
``"noBoundary"`` force one.

Tiles are read whole by default (one sample per tile). ``tile_size=N`` (and ``stride``, default
``N``) yields ``N x N`` windows instead, on a grid covering the tile (the last window of a row or
column is aligned to the tile's edge; tiles smaller than ``N`` give one smaller window);
``tile_splits=["train"]`` limits this to the training split, so evaluation still runs over
whole tiles.
Uncompressed TIFFs (the releases') are memory-mapped, so a window reads only its pixels; the
DSM min-max still uses the whole tile (computed once per tile and worker). ``meta`` then
carries ``"tile"`` and ``"window"`` = ``[y, x, h, w]``.

Evaluation: sliding window over whole tiles on the noBoundary labels; OA over the 6 classes, mF1
and mIoU over the first 5 (clutter excluded: ``eval.ignore_classes: [5]``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from fusionseg.data.io import DataError, read_image
from fusionseg.data.modalities import ModalitySpec, get_spec
from fusionseg.data.sample import LABEL_KEY

from .base import (
    MultimodalDataset,
    SampleRecord,
    list_file_splits,
    read_required_split,
    register_dataset,
)
from .options import DatasetOptions, one_or_several

__all__ = [
    "ISPRSDataset",
    "ISPRSOptions",
    "ISPRS_CLASSES",
    "ISPRS_COLOURS",
    "ISPRS_PALETTE",
    "POTSDAM_TEST_TILES",
    "POTSDAM_TRAIN_TILES",
    "Potsdam",
    "VAIHINGEN_TEST_TILES",
    "VAIHINGEN_TRAIN_TILES",
    "SPLIT_LIST_DIR",
    "Vaihingen",
    "decode_isprs_colours",
]

#: folder (beside the image folder) of a copy's own split lists, ``{split}.txt`` of tile ids
SPLIT_LIST_DIR = "splits"

ISPRS_CLASSES: list[str] = [
    "impervious_surfaces",
    "building",
    "low_vegetation",
    "tree",
    "car",
    "clutter",
]

#: Label colour of each class (index = class id).
ISPRS_COLOURS: list[tuple[int, int, int]] = [
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 0, 0),
]
ISPRS_PALETTE: np.ndarray = np.array(ISPRS_COLOURS, dtype=np.uint8)

VAIHINGEN_TRAIN_TILES: list[str] = [
    str(i) for i in (1, 3, 5, 7, 11, 13, 15, 17, 21, 23, 26, 28, 30, 32, 34, 37)
]
VAIHINGEN_TEST_TILES: list[str] = [
    str(i) for i in (2, 4, 6, 8, 10, 12, 14, 16, 20, 22, 24, 27, 29, 31, 33, 35, 38)
]
POTSDAM_TRAIN_TILES: list[str] = [
    "2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11",
    "5_12", "6_7", "6_8", "6_9", "6_10", "6_11", "6_12", "7_7", "7_8", "7_9", "7_11", "7_12",
]  # fmt: skip
POTSDAM_TEST_TILES: list[str] = [
    "2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13",
    "6_14", "6_15", "7_13",
]  # fmt: skip

# 3-bit code (R, G, B each 0 or 255) -> class id; codes of no class -> 255
_CODE_TO_CLASS = np.full(8, 255, dtype=np.uint8)
for _k, (_r, _g, _b) in enumerate(ISPRS_COLOURS):
    _CODE_TO_CLASS[(_r >> 7) << 2 | (_g >> 7) << 1 | (_b >> 7)] = _k


def decode_isprs_colours(rgb: np.ndarray, ignore_index: int = 255,
                         off_palette_class: int | None = None) -> np.ndarray:
    """Colour label ``uint8 [H, W, >=3]`` -> class ids ``int64 [H, W]`` (other colours -> ignore).

    All ISPRS colours have channels 0 or 255, so each pixel is a 3-bit code looked up in a
    table; pixels with any channel other than 0/255 are ignore.

    ``off_palette_class``: class id given to the colours of no class other than black (the
    noBoundary band, ISPRS "undefined", stays ignore), instead of ignore. ``0`` is the rule of
    the ISPRS code lineage (the MoBaNet release's ``convert_from_color``, utils.py:190-198,
    starts from zeros and only writes listed colours; black is its class 6, out of the metric).
    """
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise DataError(f"colour label needs 3 channels, got shape {tuple(rgb.shape)}")
    c = rgb[:, :, :3]
    if c.dtype != np.uint8:
        c = np.clip(c, 0, 255).astype(np.uint8)
    r, g, b = c[:, :, 0], c[:, :, 1], c[:, :, 2]
    code = ((r >> 7) << 2) | ((g >> 7) << 1) | (b >> 7)
    out = _CODE_TO_CLASS[code]
    pure = ((r == 0) | (r == 255)) & ((g == 0) | (g == 255)) & ((b == 0) | (b == 255))
    out = np.where(pure, out, np.uint8(ignore_index))
    res = out.astype(np.int64)
    if ignore_index != 255:
        res[res == 255] = ignore_index
    if off_palette_class is not None:
        unlisted = ~pure | (_CODE_TO_CLASS[code] == 255)
        black = (r == 0) & (g == 0) & (b == 0)
        res[unlisted & ~black] = off_palette_class
    return res


def _tiff_hwc_view(path: Path, modality: str) -> np.ndarray | None:
    """A memory-mapped ``[H, W, C]`` view of an uncompressed TIFF, or None if not mappable."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            shape = series.shape
        arr = tifffile.memmap(path, mode="r")
    except FileNotFoundError as err:
        raise DataError("missing file", path=path, modality=modality) from err
    except Exception:  # compressed / tiled / not contiguous: fall back to a full read
        return None
    arr = arr.reshape(shape)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
        axes = axes[1:]
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim == 3 and axes[-1] not in "SC" and axes[0] in "SCQIZ":
        return np.moveaxis(arr, 0, -1)
    return arr if arr.ndim == 3 else None


def _tiff_size(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` of a TIFF from its header, or None when missing/unreadable."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return int(page.imagelength), int(page.imagewidth)
    except Exception:
        return None


class ISPRSOptions(DatasetOptions):
    """The options of :class:`Vaihingen` and :class:`Potsdam` (``data.options`` of a run
    config); see the module docstring."""

    tiles: list[str] | None = Field(
        None, description="tile ids replacing the split's list (fixed or splits/{split}.txt)")
    label_variant: Literal["auto", "full", "noBoundary"] = Field(
        "auto", description="labels: auto (full for train, noBoundary otherwise), full, noBoundary")
    tile_size: int | None = Field(
        None, ge=1, description="read N x N windows instead of whole tiles (None: whole tiles)")
    stride: int | None = Field(
        None, ge=1, description="window stride in pixels (default: tile_size)")
    tile_splits: list[str] | None = Field(
        None, description="the splits cut into windows (None: every split), e.g. [train]")
    dsm_size_tolerance: int = Field(
        16, description="largest DSM-vs-tile size difference (pixels) cropped or padded")
    dsm_nodata_below: float = Field(
        -1000.0, description="DSM values below this (metres) are nodata")
    off_palette_class: int | None = Field(
        None, ge=0, lt=len(ISPRS_CLASSES), strict=True,  # strict: True or "0" is no class id
        description="class of label colours of no class other than black (None: ignore)")

    _names = field_validator("tile_splits", mode="before")(one_or_several)

    @field_validator("tiles", mode="before")
    @classmethod
    def _tile_ids(cls, v: Any) -> Any:
        """One id or several; ids as strings (``tiles: [1, 3]`` in YAML reads as ints)."""
        v = [v] if isinstance(v, (str, int)) and not isinstance(v, bool) else v
        return [str(t) for t in v] if isinstance(v, (list, tuple)) else v

    @model_validator(mode="after")
    def _stride_needs_windows(self) -> ISPRSOptions:
        if self.stride is not None and self.tile_size is None:
            raise ValueError("stride needs tile_size")
        return self


class ISPRSDataset(MultimodalDataset):
    """Common code of Vaihingen and Potsdam (see the module docstring).

    Subclasses set ``tiles_by_split``, ``file_specs`` (key -> (file-name pattern, preferred
    folders)), ``modality_files`` (modality -> file key) and ``tile_format`` (id -> pattern
    fields).

    Args:
        root: dataset root: the folder holding the image folder (Vaihingen ``top/``; Potsdam
            ``top/`` or ``2_Ortho_RGB/``, ``3_Ortho_IRRG/``, ``4_Ortho_RGBIR/``), or one up to
            two levels above it (see :meth:`resolve_root`).
        split: ``train`` or ``test``; with a ``splits/`` folder, the name of one of its list
            files.
        modalities: see the subclass (default: its image modality + ``dsm``).
        transform: applied to each Sample.
        **options: :class:`ISPRSOptions`: ``tiles`` (tile ids replacing the split's list,
            fixed or ``splits/{split}.txt``), ``label_variant`` (``"auto"``, ``"full"`` or
            ``"noBoundary"``), ``tile_size`` (window size in pixels; None: whole tiles),
            ``stride`` (window stride, default ``tile_size``), ``tile_splits`` (the splits cut
            into windows, None: every split; e.g. ``["train"]`` trains on windows and
            evaluates whole tiles), ``dsm_size_tolerance`` (largest DSM-vs-tile size
            difference in pixels that is cropped or padded instead of reported),
            ``dsm_nodata_below`` (DSM values below this, in metres, are nodata),
            ``off_palette_class`` (class id for label colours of no class other than black;
            None, the default: ignore; ``0``: as the MoBaNet release, see
            :func:`decode_isprs_colours`), and the common ``max_samples`` (samples are
            windows), ``check_files``, ``specs``.

    Raises:
        DataError: missing root, unknown split (no fixed list, or no ``splits/{split}.txt``
            where the copy has a ``splits/`` folder), an empty list file, unknown label
            variant, bad window settings; when built (``check_files``), the files of every
            listed tile: missing, unreadable header, size mismatch (one error counting all);
            per sample: missing or unreadable file, wrong bit depth or channels, a size
            mismatch (beyond the DSM tolerance), a label without 3 channels.
    """

    classes = ISPRS_CLASSES
    palette = ISPRS_PALETTE
    label_value_channels = None
    known_splits = ("train", "test")
    tiles_by_split: ClassVar[dict[str, list[str]]] = {}
    file_specs: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {}
    modality_files: ClassVar[dict[str, str]] = {}
    label_folder_words: ClassVar[tuple[str, ...]] = ()
    check_bit_depths: dict[str, tuple[int, ...]] = {"dsm": (32, 64), "label": (8,)}
    Options = ISPRSOptions
    options: ISPRSOptions

    def _prepare(self) -> None:
        """The options as this split reads them: the label variant (``auto``: full labels for
        ``train``, noBoundary otherwise), the window grid (none for a split outside
        ``tile_splits``: it is read as whole tiles), the DSM size tolerance; empty caches."""
        o = self.options
        #: the split's tile ids (set when indexing: ``tiles``, the copy's list or the fixed one)
        self.tile_ids: list[str] = list(o.tiles or [])
        auto = "full" if self.split == "train" else "noBoundary"
        self.label_variant = auto if o.label_variant == "auto" else o.label_variant
        windows = o.tile_splits is None or self.split in o.tile_splits
        self.tile_size = o.tile_size if windows else None
        self.stride = (o.stride or o.tile_size) if windows else None
        self.size_tolerance = {"dsm": o.dsm_size_tolerance}
        #: DSM file -> pixels filled so far (non-finite, or below ``dsm_nodata_below`` metres)
        self.dsm_nodata: dict[str, int] = {}
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._dsm_range: dict[str, tuple[float, float]] = {}

    @classmethod
    def resolve_root(cls, root: str | os.PathLike) -> Path:
        """Like :meth:`MultimodalDataset.resolve_root` (the same errors), but a given root with
        the image folder one or two levels below is kept: the file search covers three levels,
        so label archives unpacked beside the image archive's folder are still found."""
        given = Path(root)
        resolved = super().resolve_root(root)
        if resolved != given and len(resolved.relative_to(given).parts) <= 2:
            return given
        return resolved

    @classmethod
    def split_list_folder(cls, root: str | os.PathLike) -> Path | None:
        """The copy's own split-list folder, ``splits/`` beside the image folder (in ``root``
        or in the folder below it that holds the image folder), or None when there is none."""
        given = Path(root)
        bases = [given]
        if given.is_dir():
            try:
                bases.append(super().resolve_root(given))
            except DataError:  # no single image folder below: only ``root`` itself counts
                pass
        for base in dict.fromkeys(bases):
            if (base / SPLIT_LIST_DIR).is_dir():
                return base / SPLIT_LIST_DIR
        return None

    @classmethod
    def splits_in(cls, root: Path) -> list[str]:
        """The list files of the copy's ``splits/`` folder if it has one, else the fixed
        ``train`` and ``test``."""
        folder = cls.split_list_folder(root)
        return list_file_splits(folder) if folder is not None else list(cls.known_splits)

    def split_tiles(self) -> tuple[list[str], Path | None]:
        """The split's tile ids and the list file they come from (None for the fixed lists).

        Raises:
            DataError: with a ``splits/`` folder, its ``{split}.txt`` missing (naming the lists
                present) or empty; without one, a split with no fixed list.
        """
        folder = self.split_list_folder(self.root)
        if folder is not None:
            list_file, tiles = read_required_split(
                self.name, self.split, folder, f"; this copy's splits are the list files in {folder}"
            )
            return tiles, list_file
        if self.split not in self.tiles_by_split:
            raise DataError(
                f"unknown {self.name} split '{self.split}' (valid: "
                f"{', '.join(self.tiles_by_split)}; or give tiles=[...], or a "
                f"{SPLIT_LIST_DIR}/{{split}}.txt list of tile ids)",
                path=self.root,
            )
        return list(self.tiles_by_split[self.split]), None

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers (and pickling) start with an empty tile cache: no memory maps or
        # decoded tiles travel between processes
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    # ------------------------------------------------------------------ files
    def _file_index(self) -> dict[str, list[Path]]:
        """File name -> paths, for every TIFF up to three levels below ``root``."""
        out: dict[str, list[Path]] = {}
        root_depth = len(self.root.parts)
        for dirpath, dirnames, filenames in os.walk(self.root):
            depth = len(Path(dirpath).parts) - root_depth
            if depth >= 3:
                dirnames[:] = []
            dirnames.sort()
            for f in filenames:
                if f.lower().endswith((".tif", ".tiff")):
                    out.setdefault(f, []).append(Path(dirpath) / f)
        return out

    def _is_label_folder(self, folder: str) -> bool:
        low = folder.lower()
        return any(w in low for w in ("gt", "label", "ground_truth"))

    def _locate(self, index: dict[str, list[Path]], key: str, tile: str) -> Path:
        pattern, folders = self.file_specs[key]
        name = pattern.format(**self.tile_fields(tile))
        cands = index.get(name, [])
        if self.label_folder_words:  # image and label share a name: separate by folder
            is_label = key.startswith(LABEL_KEY)
            cands = [p for p in cands if self._is_label_folder(p.parent.name) == is_label]
        for folder in folders:
            for p in cands:
                if p.parent.name == folder:
                    return p
        if cands:
            return sorted(cands)[0]
        return self.root / folders[0] / name

    def tile_fields(self, tile: str) -> dict[str, str]:
        """Fields of the file-name patterns for a tile id."""
        return {"id": tile}

    @property
    def label_key(self) -> str:
        return "label_noBoundary" if self.label_variant == "noBoundary" else LABEL_KEY

    def _index(self) -> list[SampleRecord]:
        list_file = None
        if self.options.tiles is None:
            self.tile_ids, list_file = self.split_tiles()
        index = self._file_index()
        records: list[SampleRecord] = []
        for tile in self.tile_ids:
            paths = {m: self._locate(index, self.modality_files[m], tile) for m in self.modalities}
            label = self._locate(index, self.label_key, tile)
            ref = [p for m, p in paths.items() if m != "dsm"] + [label] + list(paths.values())
            size = next((s for s in map(_tiff_size, ref) if s is not None), None)
            extra: dict[str, Any] = {"tile": tile, "size": size}
            if list_file is not None:
                extra["list_file"] = list_file
            if self.tile_size is None or size is None:
                records.append(SampleRecord(id=tile, paths=paths, label=label, extra=extra))
                continue
            for y, x, h, w in self._windows(*size):
                records.append(
                    SampleRecord(
                        id=f"{tile}@{y}_{x}",
                        paths=paths,
                        label=label,
                        extra={**extra, "window": (y, x, h, w)},
                    )
                )
        return records

    def _windows(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        assert self.tile_size is not None and self.stride is not None

        def starts(n: int) -> list[int]:
            t = self.tile_size
            if n <= t:
                return [0]
            s = list(range(0, n - t + 1, self.stride))
            if s[-1] != n - t:
                s.append(n - t)
            return s

        th, tw = min(self.tile_size, height), min(self.tile_size, width)
        return [(y, x, th, tw) for y in starts(height) for x in starts(width)]

    # ------------------------------------------------------------------ reading
    def _full_array(self, path: Path, modality: str) -> np.ndarray:
        """The whole file as ``[H, W, C]`` (memory-mapped when possible; else read and kept
        in a small per-process cache for the next windows of the tile)."""
        cached = self._cache.get(str(path))
        if cached is not None:
            self._cache.move_to_end(str(path))
            return cached
        arr = None
        if self.tile_size is not None and path.suffix.lower() in (".tif", ".tiff"):
            if not path.is_file():
                raise DataError("missing file", path=path, modality=modality)
            arr = _tiff_hwc_view(path, modality)
        if arr is None:
            arr = read_image(path, modality=modality)
        if self.tile_size is not None:
            self._cache[str(path)] = arr
            while len(self._cache) > 4:
                self._cache.popitem(last=False)
        return arr

    def _read_window(
        self, path: Path, key: str, record: SampleRecord
    ) -> np.ndarray:
        """The record's window of a file, ``[h, w, C]``, with the DSM size fix-up."""
        arr = self._full_array(path, key)
        size = record.extra.get("size")
        window = record.extra.get("window")
        if size is None:
            size = arr.shape[:2]
        th, tw = size
        fh, fw = arr.shape[:2]
        if (fh, fw) != (th, tw):
            tol = self.size_tolerance.get(key, 0)
            if abs(fh - th) > tol or abs(fw - tw) > tol:
                raise DataError(
                    f"size mismatch across modalities (H x W): {key} {fh}x{fw}, tile "
                    f"{th}x{tw} (tolerance {tol} px; sample '{record.id}')",
                    path=path,
                    modality=key,
                )
        y, x, h, w = window if window is not None else (0, 0, th, tw)
        out = arr[y : min(y + h, fh), x : min(x + w, fw)]
        ph, pw = h - out.shape[0], w - out.shape[1]
        if ph > 0 or pw > 0:
            out = np.pad(np.asarray(out), ((0, ph), (0, pw), (0, 0)), mode="edge")
        return np.ascontiguousarray(out)

    def _dsm_valid(self, phys: np.ndarray) -> np.ndarray:
        """Valid DSM pixels: finite and not below ``dsm_nodata_below`` (nodata sentinels such as
        -9999 or -32768)."""
        return np.isfinite(phys) & (phys >= self.options.dsm_nodata_below)

    def _dsm_minmax(self, path: Path, spec: ModalitySpec) -> tuple[float, float]:
        """Physical min and max of the valid pixels of a whole DSM tile (0, 0 if none)."""
        key = str(path)
        if key not in self._dsm_range:
            arr = self._full_array(path, "dsm")
            scale = spec.scale_for(arr.dtype)
            lo, hi = np.inf, -np.inf
            for r0 in range(0, arr.shape[0], 512):
                block = np.asarray(arr[r0 : r0 + 512], dtype=np.float64) * scale + spec.offset
                block = block[self._dsm_valid(block)]
                if block.size:
                    lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
            self._dsm_range[key] = (lo, hi) if lo <= hi else (0.0, 0.0)
        return self._dsm_range[key]

    def read_modality(self, record: SampleRecord, modality: str) -> torch.Tensor:
        """One modality of the record's tile or window, ``float32 [C, h, w]``."""
        path = record.paths[modality]
        spec = self.specs[modality]
        raw = self._read_window(path, modality, record)
        if spec.normalize != "minmax":
            return spec.from_array(raw, path=path)
        phys = np.asarray(raw, dtype=np.float64) * spec.scale_for(raw.dtype) + spec.offset
        valid = self._dsm_valid(phys)
        if record.extra.get("window") is None:  # whole tile: its own range
            lo, hi = (float(phys[valid].min()), float(phys[valid].max())) if valid.any() else (
                0.0, 0.0)
        else:
            lo, hi = self._dsm_minmax(path, spec)
        if not valid.all():  # nodata / NaN: filled with the tile's lowest valid height, counted
            self.dsm_nodata[str(path)] = self.dsm_nodata.get(str(path), 0) + int((~valid).sum())
            raw = np.where(valid, phys, lo).astype(np.float32)
            spec = spec.model_copy(update={"scale": 1.0, "offset": 0.0})
        x = spec.model_copy(update={"normalize": None}).from_array(raw, path=path)
        if hi > lo:
            return ((x - lo) / (hi - lo)).clamp_(0.0, 1.0)
        return torch.zeros_like(x)

    def read_record_label(self, record: SampleRecord) -> torch.Tensor:
        assert record.label is not None
        raw = self._read_window(record.label, LABEL_KEY, record)
        return self.label_from_array(raw, record.label)

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        """Colour label -> class ids (other colours -> ignore, or ``off_palette_class``); see
        :func:`decode_isprs_colours`."""
        return decode_isprs_colours(raw, self.ignore_index, self.options.off_palette_class)

    def meta_of(self, record: SampleRecord) -> dict[str, Any]:
        meta = super().meta_of(record)
        meta["tile"] = record.extra.get("tile", record.id)
        if record.extra.get("window") is not None:
            meta["window"] = list(record.extra["window"])
        return meta


@register_dataset("vaihingen")
class Vaihingen(ISPRSDataset):
    """ISPRS Vaihingen: ``irrg`` + ``dsm`` (see the module docstring)."""

    available_modalities = ("irrg", "dsm")
    default_modalities = ("irrg", "dsm")
    default_specs = {"irrg": get_spec("irrg", bit_depth=8), "dsm": get_spec("dsm")}
    tiles_by_split = {"train": VAIHINGEN_TRAIN_TILES, "test": VAIHINGEN_TEST_TILES}
    root_markers = ("top",)
    archive_folders = ("ISPRS_semantic_labeling_Vaihingen", "Vaihingen")
    label_folder_words = ("gt", "label", "ground_truth")
    file_specs = {
        "irrg": ("top_mosaic_09cm_area{id}.tif", ("top",)),
        "dsm": ("dsm_09cm_matching_area{id}.tif", ("dsm",)),
        "label": (
            "top_mosaic_09cm_area{id}.tif",
            ("gts_for_participants", "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE"),
        ),
        "label_noBoundary": (
            "top_mosaic_09cm_area{id}_noBoundary.tif",
            (
                "gts_eroded_for_participants",
                "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE",
                "gts_for_participants",
            ),
        ),
    }
    modality_files = {"irrg": "irrg", "dsm": "dsm"}


@register_dataset("potsdam")
class Potsdam(ISPRSDataset):
    """ISPRS Potsdam: ``rgb``, ``irrg``, ``rgbir``, ``nir`` + ``dsm`` (see the module docstring)."""

    available_modalities = ("rgb", "irrg", "rgbir", "nir", "dsm")
    default_modalities = ("rgb", "dsm")
    default_specs = {
        "rgb": get_spec("rgb", bit_depth=8),
        "irrg": get_spec("irrg", bit_depth=8),
        "rgbir": get_spec("rgbir", channels=4, bit_depth=8),
        "nir": get_spec("nir", bit_depth=8, file_channels=(3,)),
        "dsm": get_spec("dsm"),
    }
    tiles_by_split = {"train": POTSDAM_TRAIN_TILES, "test": POTSDAM_TEST_TILES}
    root_markers = (("top", "2_Ortho_RGB", "3_Ortho_IRRG", "4_Ortho_RGBIR"),)
    archive_folders = ("Potsdam",)
    file_specs = {
        "rgb": ("top_potsdam_{r}_{c}_RGB.tif", ("top", "2_Ortho_RGB")),
        "irrg": ("top_potsdam_{r}_{c}_IRRG.tif", ("top", "3_Ortho_IRRG")),
        "rgbir": ("top_potsdam_{r}_{c}_RGBIR.tif", ("top", "4_Ortho_RGBIR")),
        "dsm": ("dsm_potsdam_{rr}_{cc}.tif", ("dsm", "1_DSM")),
        "label": (
            "top_potsdam_{r}_{c}_label.tif",
            ("labels", "5_Labels_all", "5_Labels_for_participants", "gts_for_participants", "top"),
        ),
        "label_noBoundary": (
            "top_potsdam_{r}_{c}_label_noBoundary.tif",
            (
                "labels_noBoundary",
                "5_Labels_all_noBoundary",
                "5_Labels_for_participants_no_Boundary",
                "labels",
                "top",
            ),
        ),
    }
    modality_files = {"rgb": "rgb", "irrg": "irrg", "rgbir": "rgbir", "nir": "rgbir", "dsm": "dsm"}

    def tile_fields(self, tile: str) -> dict[str, str]:
        """``{r}_{c}`` ids; the DSM names pad both to two digits (``02_10``)."""
        try:
            r, c = tile.split("_")
            int(r), int(c)
        except ValueError:
            raise DataError(f"Potsdam tile id must be 'row_col' like '2_10', got '{tile}'") from None
        return {"r": r, "c": c, "rr": f"{int(r):02d}", "cc": f"{int(c):02d}"}
