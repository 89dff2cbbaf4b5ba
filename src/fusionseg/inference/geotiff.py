"""GeoTIFF in, GeoTIFF out: predict on georeferenced rasters of any size, window by window.

:func:`predict_geotiff` is ``fusionseg predict`` on GeoTIFF inputs (``docs/predict.md``,
"GeoTIFF orthophotos and DSMs"): one GeoTIFF per modality (``--input irrg=ortho.tif --input
dsm=dsm.tif``), all on the same grid (CRS, transform, size), give one sample; its mask is
written as ``out/{stem}.tif``, a single-band uint8 GeoTIFF with the input's CRS and transform,
the class palette as colour table and :data:`NODATA` (255) where any input is nodata.

The rasters are never read whole unless they fit the memory budget (``tile_memory_mb``):
larger ones are cut into blocks aligned to the sliding windows of the model's inference
settings (:func:`~fusionseg.inference.prediction.inference_settings`); each block reads only
the region its windows cover (the block and its overlap margin) with rasterio windows, runs
those windows in the same order and with the same weights as the in-memory sliding window
(:func:`~fusionseg.models.inference_modes.slide_inference`, ``flip`` included), and writes
its part of the mask. A pixel's logits are thus summed over exactly the windows, in exactly
the order, of the in-memory computation, and the mask is bit-identical to the one
``predict`` computes on the whole image in memory (with ``eval.window_batch: 1``; larger
window batches group windows differently, which may change the last float bits). Windows
that overlap two blocks run once for each (about ``(n + 1) / n`` the work per side for
blocks of ``n`` windows). Multi-scale inference (``eval.scales``) resizes the whole image
and is only run on rasters that fit the budget.

Reading each modality (the spec the model was trained with, :mod:`fusionseg.inference.specs`):
``raw * scale + offset``, non-finite -> 0, repeat, normalisation, as ``predict`` does. A
per-image ``"minmax"`` normalisation (the DSM spec: MoBaNet normalises each tile) uses the
min and max of the whole raster, found by a first pass over it window by window, so it is
the min-max ``predict`` would apply to the whole image in memory. Nodata (the GeoTIFF's
nodata value, alpha band or internal mask, and non-finite values) is left out of that
min-max and enters the model as 0 after normalisation (the value sliding-window padding
uses; for the DSM the raster's lowest valid height, as the ISPRS loader fills nodata);
pixels that are nodata in any modality are :data:`NODATA` in the mask.

rasterio is imported lazily (``pip install fusionseg[geo]``).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..data.io import DataError
from ..data.modalities import ModalitySpec
from ..errors import ConfigError
from ..files import atomic_path
from ..models.inference_modes import predict_logits, window_starts
from ..models.segmentor import logits_of
from ..runtime import autocast
from .inputs import LABEL, InputSource, match_stems, parse_input, select_channels, source_files
from .loading import load_predictor
from .outputs import (
    FAILURES_FILE,
    ON_ERROR_CHOICES,
    FailedSample,
    OnError,
    PredictionIncomplete,
    PredictionSummary,
    one_line,
    record_failure,
)
from .prediction import inference_settings, model_precision, prediction_palette
from .specs import training_specs

__all__ = [
    "DEFAULT_TILE_MEMORY_MB",
    "GEOTIFF_SUFFIXES",
    "NODATA",
    "Block",
    "GeoPredictionSummary",
    "GeoRaster",
    "RasterGrid",
    "geotiff_samples",
    "looks_georeferenced",
    "plan_blocks",
    "predict_geotiff",
    "raster_grid",
    "read_window",
    "require_rasterio",
]

#: the mask value of pixels that are nodata in any input (and the mask's nodata value)
NODATA = 255
#: default memory budget of one block (``--tile-memory-mb``)
DEFAULT_TILE_MEMORY_MB = 512.0
#: file suffixes read as GeoTIFF
GEOTIFF_SUFFIXES = (".tif", ".tiff")
_MB = 1024 * 1024


def require_rasterio() -> Any:
    """The ``rasterio`` module.

    Raises:
        ConfigError: rasterio is not installed (naming ``pip install fusionseg[geo]``).
    """
    try:
        import rasterio
    except ImportError as err:
        raise ConfigError("GeoTIFF input and output need rasterio: pip install "
                          "'fusionseg[geo]' (or pip install rasterio)") from err
    return rasterio


# --------------------------------------------------------------------------- inputs
def _geotiff_files(source: InputSource) -> dict[str, Path]:
    files = source_files(source)
    other = [f for f in files.values() if f.suffix.lower() not in GEOTIFF_SUFFIXES]
    if other:
        raise DataError(f"GeoTIFF prediction reads .tif/.tiff files only, got {other[0].name}",
                        path=other[0], modality=source.modality)
    return files


def geotiff_samples(inputs: str | Path | Sequence[str | Path], modalities: Sequence[str]
                    ) -> tuple[list[tuple[str, dict[str, Path]]], dict[str, tuple[int, ...]]]:
    """The samples of GeoTIFF ``--input`` values: ``([(name, {modality: file}), ...],
    {modality: 0-based channel selection})``.

    Inputs: ``MODALITY=FILE|DIR|GLOB[:I,J]`` and at most one ``DIR`` holding
    ``DIR/{modality}/``. When every modality gives exactly one file, they form one sample
    named after the first modality's file stem (``irrg=ortho.tif dsm=dsm.tif`` -> ``ortho``);
    otherwise files are matched by stem as ``predict`` does.

    Raises:
        DataError: a dataset root, a label input, an unknown or repeated modality, a file
            that is not .tif/.tiff, unmatched stems.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise DataError("no inputs given")
    sources = [parse_input(x) for x in items]
    named = [s.modality for s in sources if s.modality is not None]
    files: dict[str, dict[str, Path]] = {}
    channels: dict[str, tuple[int, ...]] = {}
    for source in sources:
        if source.modality is None:
            root = Path(source.path)
            folders = [m for m in modalities if (root / m).is_dir()]
            if not folders:
                raise DataError("GeoTIFF prediction takes MODALITY=FILE inputs or a folder "
                                "with one sub-folder per modality, not a dataset root",
                                path=root)
            for m in folders:
                files.setdefault(m, _geotiff_files(InputSource(m, str(root / m))))
            continue
        m = source.modality
        if m == LABEL:
            raise DataError("GeoTIFF prediction reads no labels; leave out label=...",
                            path=source.path, modality=m)
        if m not in modalities:
            raise DataError(f"input '{m}={source.path}': the model has no modality '{m}' "
                            f"(modalities: {', '.join(modalities)})", modality=m)
        if named.count(m) > 1:
            raise DataError(f"modality '{m}' given twice among the inputs", modality=m)
        files[m] = _geotiff_files(source)
        if source.channels is not None:
            channels[m] = source.channels
    order = [m for m in modalities if m in files]
    if all(len(files[m]) == 1 for m in order):
        name = next(iter(files[order[0]]))
        return [(name, {m: next(iter(files[m].values())) for m in order})], channels
    stems = match_stems({m: files[m] for m in order})
    return [(s, {m: files[m][s] for m in order}) for s in stems], channels


def looks_georeferenced(inputs: str | Path | Sequence[str | Path]) -> bool:
    """Whether ``predict`` should take the GeoTIFF path on its own: every input is
    ``MODALITY=...`` of .tif/.tiff files only, rasterio is installed and the first file has a
    CRS. Never raises (inputs it cannot read go the ordinary way and fail there)."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    try:
        sources = [parse_input(x) for x in items]
        if not sources or any(s.modality in (None, LABEL) for s in sources):
            return False
        first = None
        for s in sources:
            files = source_files(s)
            if any(f.suffix.lower() not in GEOTIFF_SUFFIXES for f in files.values()):
                return False
            first = first or next(iter(files.values()))
        rasterio = require_rasterio()
        with rasterio.open(first) as src:
            return src.crs is not None
    except Exception:  # noqa: BLE001 - a probe: any failure means "not a GeoTIFF input"
        return False


@dataclass(frozen=True)
class RasterGrid:
    """The pixel grid of a raster: CRS (``None`` when the file has none), affine transform
    (pixel -> map coordinates) and size in pixels."""

    crs: Any
    transform: Any
    height: int
    width: int


def _grid_of(src: Any) -> RasterGrid:
    return RasterGrid(src.crs, src.transform, int(src.height), int(src.width))


def _grid_differences(a: RasterGrid, b: RasterGrid) -> list[str]:
    out = []
    if (a.height, a.width) != (b.height, b.width):
        out.append(f"size {a.height}x{a.width} vs {b.height}x{b.width} px (H x W)")
    if a.crs != b.crs:
        out.append(f"CRS {a.crs} vs {b.crs}")
    tol = 1e-6 * min(abs(a.transform.a), abs(a.transform.e)) or 1e-9
    if not a.transform.almost_equals(b.transform, precision=tol):
        out.append(f"transform {tuple(a.transform)[:6]} vs {tuple(b.transform)[:6]}")
    return out


def raster_grid(files: Mapping[str, str | Path]) -> RasterGrid:
    """The common grid of one sample's rasters (modality -> file).

    Raises:
        DataError: a file rasterio cannot open, or two files on different grids (naming both
            files and what differs: size, CRS, transform).
        ConfigError: rasterio is not installed.
    """
    rasterio = require_rasterio()
    first: tuple[str, Path, RasterGrid] | None = None
    for m, path in files.items():
        try:
            with rasterio.open(path) as src:
                grid = _grid_of(src)
        except rasterio.errors.RasterioIOError as err:
            raise DataError(f"cannot open as a raster: {one_line(str(err))}", path=path,
                            modality=m) from None
        if first is None:
            first = (m, Path(path), grid)
            continue
        diff = _grid_differences(first[2], grid)
        if diff:
            raise DataError(f"{first[0]} {first[1]} and {m} {path} are not on the same grid: "
                            f"{'; '.join(diff)}; resample one onto the other (e.g. gdalwarp "
                            "-te/-tr/-t_srs) first", path=path, modality=m)
    assert first is not None
    return first[2]


# --------------------------------------------------------------------------- reading
def read_window(src: Any, window: Any, masked: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one window of an open raster: ``(raw [h, w, bands] in the file's dtype, valid
    bool [h, w] or None when the raster declares no nodata / mask)``. Every read of
    :func:`predict_geotiff` goes through here."""
    raw = np.moveaxis(src.read(window=window), 0, -1)
    valid = src.dataset_mask(window=window) > 0 if masked else None
    return raw, valid


def _has_mask(src: Any) -> bool:
    from rasterio.enums import MaskFlags

    return src.nodata is not None or any(
        MaskFlags.all_valid not in flags for flags in src.mask_flag_enums)


class _ModalityRaster:
    """One modality's raster opened for windowed reads as model input.

    ``model_input(window)`` -> ``(float32 [C, h, w] normalised as predict normalises it, with
    nodata pixels 0; valid bool [h, w])``; a ``"minmax"`` spec needs :meth:`set_range` (or
    :meth:`scan_range`) first.
    """

    def __init__(self, name: str, path: Path, spec: ModalitySpec, src: Any):
        self.name, self.path, self.spec, self.src = name, path, spec, src
        self.minmax = spec.normalize == "minmax"
        self.base = spec.model_copy(update={"normalize": None}) if self.minmax else spec
        self.masked = _has_mask(src)
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def physical(self, window: Any) -> tuple[torch.Tensor, np.ndarray]:
        """Values in physical units ``float32 [C, h, w]`` (before normalisation) and the valid
        mask ``bool [h, w]`` of ``window``.

        Raises:
            DataError: the file does not fit the spec (bit depth, channels), naming it.
        """
        raw, valid = read_window(self.src, window, self.masked)
        if raw.dtype.kind == "f":
            finite = np.isfinite(raw).all(axis=-1)
            valid = finite if valid is None else valid & finite
        if valid is None:
            valid = np.ones(raw.shape[:2], dtype=bool)
        return self.base.from_array(raw, path=self.path), valid

    def add_range(self, x: torch.Tensor, valid: np.ndarray) -> None:
        """Extend the min-max range by the valid pixels of ``x`` (``[C, h, w]``)."""
        if not valid.any():
            return
        v = x[:, torch.from_numpy(valid)]
        lo, hi = v.amin(dim=1).view(-1, 1, 1), v.amax(dim=1).view(-1, 1, 1)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def normalise(self, x: torch.Tensor, valid: np.ndarray) -> torch.Tensor:
        """Model input ``[C, h, w]`` from physical values: ``minmax`` with the raster's range,
        the spec's normalisation, nodata pixels 0."""
        if self.minmax:
            if self.lo is None or self.hi is None:  # no valid pixel at all
                x = torch.zeros_like(x)
            else:  # the same arithmetic as ModalitySpec.from_array, on the whole raster's range
                span = self.hi - self.lo
                x = torch.where(span > 0, (x - self.lo) / span.clamp_min(1e-12),
                                torch.zeros_like(x))
        x = self.spec.normalize_tensor(x)
        if not valid.all():
            x = x.masked_fill(~torch.from_numpy(valid), 0.0)
        return x


# --------------------------------------------------------------------------- block plan
@dataclass(frozen=True)
class Block:
    """One block of a streamed raster.

    Attributes:
        rows, cols: the ``[start, stop)`` rows / columns of the mask this block writes.
        region: ``(y0, y1, x0, x1)``, the pixels it reads (the union of its windows).
        windows: per inference pass (plain, then h-flipped with ``flip``), the windows that
            touch the block as ``(y, x, weight)`` in the order the in-memory sliding window
            runs them; ``x`` is the window's left column in the raster.
    """

    rows: tuple[int, int]
    cols: tuple[int, int]
    region: tuple[int, int, int, int]
    windows: tuple[tuple[tuple[int, int, int], ...], ...]


def _owned(starts: Sequence[int], size: int, g: int) -> list[tuple[int, int]]:
    """The axis cut into intervals at every ``g``-th window start."""
    cuts = [0] + [starts[i] for i in range(g, len(starts), g)] + [size]
    return [(a, b) for a, b in pairwise(cuts) if b > a]


def _touching(starts: Sequence[int], win: int, lo: int, hi: int) -> list[int]:
    """Indices of the (sorted) ``starts`` whose window ``[s, s + win)`` meets ``[lo, hi)``."""
    i = bisect_left(starts, lo - win + 1)
    j = bisect_left(starts, hi)
    return list(range(i, j))


def _axis_extent(starts: Sequence[Sequence[int]], win: int, size: int, g: int) -> int:
    """The longest region of an axis cut every ``g`` windows (over all passes' starts)."""
    out = 0
    for lo, hi in _owned(starts[0], size, g):
        ends = [(s[i], s[i] + win) for s in starts for i in _touching(s, win, lo, hi)]
        out = max(out, max(e for _, e in ends) - min(b for b, _ in ends))
    return out


def plan_blocks(size: Sequence[int], window: Sequence[int], stride: Sequence[int],
                positions: str = "aligned", flip: bool = False,
                max_region_px: int | None = None) -> list[Block]:
    """Blocks covering an ``(H, W)`` raster for sliding windows of ``window`` px every
    ``stride`` px (placement ``positions``, see
    :func:`~fusionseg.models.inference_modes.window_starts`), ``flip`` adding the h-flipped
    pass; each block reads at most ``max_region_px`` pixels (default: one block, the raster).

    Blocks are cut at window starts, every ``n`` windows per side with the largest ``n`` whose
    regions fit (then ``n`` grown further down, then across, while they fit); row-major.

    Raises:
        ConfigError: the raster is smaller than the window, or one window with its overlap
            exceeds ``max_region_px``.
    """
    (h, w), (wh, ww), (sh, sw) = (tuple(int(v) for v in t) for t in (size, window, stride))
    if h < wh or w < ww:
        raise ConfigError(f"a {h}x{w} raster is smaller than the {wh}x{ww} window; it is "
                          "predicted in memory")
    ys = window_starts(h, wh, sh, positions)
    xs = window_starts(w, ww, sw, positions)
    y_starts = [s for s, _ in ys]
    x_plain = [s for s, _ in xs]
    x_passes = [x_plain] + ([sorted(w - s - ww for s in x_plain)] if flip else [])
    n_max = max(len(ys), len(xs))

    def fits(gy: int, gx: int) -> bool:
        return (_axis_extent([y_starts], wh, h, gy) * _axis_extent(x_passes, ww, w, gx)
                <= max_region_px)

    def largest(ok: Callable[[int], bool], lo: int, hi: int) -> int:
        """The largest g in [lo, hi] with ok(g), given ok(lo) (extents grow with g)."""
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
        return lo

    gy, gx = len(ys), len(xs)
    if max_region_px is not None:
        if not fits(1, 1):
            eh, ew = _axis_extent([y_starts], wh, h, 1), _axis_extent(x_passes, ww, w, 1)
            raise ConfigError(f"one {wh}x{ww} window with its overlap reads {eh}x{ew} px, "
                              f"more than the budget's {max_region_px} px")
        g = largest(lambda g: fits(g, g), 1, n_max)  # square in windows, then each side
        gy = largest(lambda n: fits(n, g), g, max(len(ys), g))
        gx = largest(lambda n: fits(gy, n), g, max(len(xs), g))
    y_weight, x_weight = dict(ys), dict(xs)
    blocks = []
    for r0, r1 in _owned(y_starts, h, gy):
        yi = [y_starts[i] for i in _touching(y_starts, wh, r0, r1)]
        for c0, c1 in _owned(x_plain, w, gx):
            passes = []
            x_lo, x_hi = w, 0
            for p, starts in enumerate(x_passes):
                near = [starts[i] for i in _touching(starts, ww, c0, c1)]
                x_lo, x_hi = min(x_lo, near[0]), max(x_hi, near[-1] + ww)
                if p == 0:  # in raster order, weights of the plain windows
                    order = [(x, x_weight[x]) for x in near]
                else:  # flipped pass: flipped-image order = raster columns right to left
                    order = [(x, x_weight[w - x - ww]) for x in reversed(near)]
                passes.append(tuple((y, x, y_weight[y] * n) for y in yi for x, n in order))
            blocks.append(Block((r0, r1), (c0, c1), (yi[0], yi[-1] + wh, x_lo, x_hi),
                                tuple(passes)))
    return blocks


# --------------------------------------------------------------------------- running
def _forward(model: Any, precision: str) -> Callable[[dict], torch.Tensor]:
    """Batch dict -> float logits, as predict runs the model (autocast for torch)."""
    is_torch = isinstance(model, torch.nn.Module)

    def run(batch: dict) -> torch.Tensor:
        with torch.no_grad():
            if is_torch:
                with autocast(precision, "cpu"):
                    return logits_of(model(batch)).float()
            return logits_of(model(batch)).float()

    return run


def _block_logits(block: Block, inputs: Mapping[str, torch.Tensor], forward: Callable,
                  window: Sequence[int], window_batch: int) -> torch.Tensor:
    """The mean logits ``[1, K, rows, cols]`` of the block's own pixels: per pass, the
    weighted windows summed in the in-memory order and divided by their weight count."""
    y0, y1, x0, x1 = block.region
    (r0, r1), (c0, c1) = block.rows, block.cols
    wh, ww = window
    step = max(int(window_batch), 1)
    acc = None
    for p, windows in enumerate(block.windows):
        flipped = p == 1
        total = None
        count = torch.zeros(1, 1, y1 - y0, x1 - x0)
        for i in range(0, len(windows), step):
            chunk = windows[i:i + step]
            crop = {m: torch.cat([t[..., y - y0:y - y0 + wh, x - x0:x - x0 + ww]
                                  for y, x, _ in chunk]) for m, t in inputs.items()}
            if flipped:
                crop = {m: t.flip(-1) for m, t in crop.items()}
            logits = forward(crop)
            if flipped:
                logits = logits.flip(-1)
            if total is None:
                total = logits.new_zeros(1, logits.shape[1], y1 - y0, x1 - x0)
            for j, (y, x, n) in enumerate(chunk):
                part = logits[j:j + 1]
                total[..., y - y0:y - y0 + wh, x - x0:x - x0 + ww] += part if n == 1 else n * part
                count[..., y - y0:y - y0 + wh, x - x0:x - x0 + ww] += n
        assert total is not None
        mean = (total / count)[..., r0 - y0:r1 - y0, c0 - x0:c1 - x0]
        acc = mean if acc is None else acc + mean
    assert acc is not None
    return acc / len(block.windows)


@dataclass(frozen=True)
class GeoRaster:
    """One mask GeoTIFF written by :func:`predict_geotiff`.

    Attributes:
        path: the mask file.
        size: ``(H, W)`` px.
        crs: the CRS as text (``""`` when the inputs have none).
        nodata_px: pixels written as :data:`NODATA`.
        blocks: blocks the raster was predicted in (1: read whole).
        windows: model windows run when streamed (a window once per block it touches; 0
            when read whole: ``predict_logits`` runs it as ``predict`` does).
        layout: ``"COG (GDAL COG driver)"``, ``"tiled GTiff + overviews (no COG driver)"``
            or ``"tiled GTiff"``.
    """

    path: Path
    size: tuple[int, int]
    crs: str
    nodata_px: int
    blocks: int
    windows: int
    layout: str

    def line(self) -> str:
        """One summary line."""
        h, w = self.size
        how = ("read whole" if self.windows == 0
               else f"streamed in {self.blocks} blocks ({self.windows} windows)")
        return (f"{self.path.name}: {h}x{w} px, {self.crs or 'no CRS'}, {self.nodata_px} "
                f"nodata px, {how}, {self.layout}")


@dataclass
class GeoPredictionSummary(PredictionSummary):
    """A :class:`PredictionSummary` of a GeoTIFF run; ``rasters``: the masks written."""

    rasters: list[GeoRaster] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The summary lines, then one line per mask written."""
        return super().lines() + [r.line() for r in self.rasters]


@dataclass(frozen=True)
class _Run:
    """What predicting one raster needs, fixed for a run."""

    model: Any
    cfg: Config
    specs: Mapping[str, ModalitySpec]
    palette: np.ndarray
    num_classes: int
    precision: str
    max_pixels: int | None
    budget_bytes: int
    cog: bool


def _bytes_per_px(readers: Sequence[_ModalityRaster], num_classes: int, passes: int) -> int:
    """Approximate bytes per region pixel: raw window, physical and normalised inputs, the
    valid masks, per pass the logit sums and counts, and the mean logits."""
    n = 0
    for r in readers:
        n += r.src.count * np.dtype(r.src.dtypes[0]).itemsize + 8 * r.spec.out_channels + 2
    return n + passes * 4 * (num_classes + 1) + 4 * num_classes + 1


def _has_cog_driver() -> bool:
    rasterio = require_rasterio()
    with rasterio.Env() as env:
        return "COG" in env.drivers()


def _block_size(h: int, w: int) -> int:
    """Tile side of the mask GeoTIFF: the largest power of two in 16..512 that is at most
    half the raster's longer side (so small rasters still get overviews)."""
    side = 16
    while side * 2 <= min(512, max(h, w) // 2):
        side *= 2
    return side


def _colormap(palette: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    cmap = {i: (int(r), int(g), int(b), 255) for i, (r, g, b) in enumerate(palette[:NODATA])}
    cmap[NODATA] = (0, 0, 0, 0)
    return cmap


def _predict_raster(run: _Run, files: Mapping[str, Path], out_path: Path) -> GeoRaster:
    """Predict one sample's rasters and write its mask GeoTIFF (see the module docstring)."""
    rasterio = require_rasterio()
    from rasterio.windows import Window

    grid = raster_grid(files)
    h, w = grid.height, grid.width
    settings = inference_settings(run.cfg, (h, w), run.max_pixels,
                                  fixed_size=getattr(run.model, "input_size", None)
                                  if not isinstance(run.model, torch.nn.Module) else None)
    forward = _forward(run.model, run.precision)
    passes = 2 if settings["flip"] else 1
    with ExitStack() as stack:
        readers = [_ModalityRaster(m, Path(p), run.specs[m], stack.enter_context(
            rasterio.open(p))) for m, p in files.items()]
        bpp = _bytes_per_px(readers, run.num_classes, passes)
        max_px = max(run.budget_bytes // bpp, 1)
        whole = h * w <= max_px
        if not whole:
            if settings["mode"] != "slide" or list(settings["scales"]) != [1.0]:
                raise ConfigError(
                    f"{out_path.stem}: a {h}x{w} raster over the memory budget "
                    f"({run.budget_bytes / _MB:g} MB) is predicted window by window, which "
                    f"needs sliding-window inference at scale 1 (eval.mode slide or a raster "
                    f"over --max-pixels; eval.scales [1.0]); raise --tile-memory-mb to about "
                    f"{math.ceil(h * w * bpp / _MB)} MB to read it whole")
            blocks = plan_blocks((h, w), settings["window"], settings["stride"],
                                 settings["positions"], bool(settings["flip"]), max_px)
        else:
            blocks = [Block((0, h), (0, w), (0, h, 0, w), ())]
        if not whole and any(r.minmax for r in readers):  # first pass: the whole range
            for b in blocks:
                (r0, r1), (c0, c1) = b.rows, b.cols
                win = Window(c0, r0, c1 - c0, r1 - r0)
                for r in readers:
                    if r.minmax:
                        r.add_range(*r.physical(win))
        nodata_px = windows = 0
        with atomic_path(out_path) as tmp:
            profile = {"driver": "GTiff", "height": h, "width": w, "count": 1,
                       "dtype": "uint8", "crs": grid.crs, "transform": grid.transform,
                       "nodata": NODATA, "tiled": True, "compress": "deflate",
                       "blockxsize": _block_size(h, w), "blockysize": _block_size(h, w)}
            draft = out_path.with_name(f".{out_path.stem}.draft.tif") if run.cog else tmp
            try:
                with rasterio.open(draft, "w", **profile) as dst:
                    dst.write_colormap(1, _colormap(run.palette))
                    for b in blocks:
                        pred, valid = _predict_block(b, readers, run, settings, forward, whole)
                        nodata_px += int((~valid).sum())
                        windows += sum(len(p) for p in b.windows)
                        (r0, r1), (c0, c1) = b.rows, b.cols
                        dst.write(pred, 1, window=Window(c0, r0, c1 - c0, r1 - r0))
                layout = _finish_cog(draft, tmp, profile) if run.cog else "tiled GTiff"
            finally:
                if run.cog:
                    draft.unlink(missing_ok=True)
    crs = "" if grid.crs is None else str(grid.crs)
    return GeoRaster(out_path, (h, w), crs, nodata_px, len(blocks), windows, layout)


def _predict_block(block: Block, readers: Sequence[_ModalityRaster], run: _Run,
                   settings: Mapping[str, Any], forward: Callable, whole: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 mask ``[rows, cols]`` of one block (nodata: :data:`NODATA`) and its valid
    mask; ``whole``: the block is the raster, run through ``predict_logits`` as predict does."""
    from rasterio.windows import Window

    y0, y1, x0, x1 = block.region
    win = Window(x0, y0, x1 - x0, y1 - y0)
    inputs: dict[str, torch.Tensor] = {}
    valid = np.ones((y1 - y0, x1 - x0), dtype=bool)
    for r in readers:
        x, v = r.physical(win)
        if whole and r.minmax:
            r.add_range(x, v)
        inputs[r.name] = r.normalise(x, v)[None]
        valid &= v
    if whole:
        logits = _whole_logits(run, inputs, settings)
    else:
        logits = _block_logits(block, inputs, forward, settings["window"],
                               settings["window_batch"])
        (r0, r1), (c0, c1) = block.rows, block.cols
        valid = valid[r0 - y0:r1 - y0, c0 - x0:c1 - x0]
    pred = logits.float().argmax(1)[0].numpy().astype(np.uint8)
    pred[~valid] = NODATA
    return pred, valid


def _whole_logits(run: _Run, inputs: dict[str, torch.Tensor], settings: Mapping[str, Any]
                  ) -> torch.Tensor:
    """``predict_logits`` on the whole raster, exactly as predict classifies a sample."""
    with torch.no_grad():
        if isinstance(run.model, torch.nn.Module):
            with autocast(run.precision, "cpu"):
                return predict_logits(run.model, inputs, **settings)
        return predict_logits(run.model, inputs, **settings)


def _finish_cog(draft: Path, out: Path, profile: Mapping[str, Any]) -> str:
    """Copy the tiled ``draft`` to ``out`` as a Cloud-Optimized GeoTIFF (tiles, nearest
    overviews); returns how: the COG driver, else a tiled GTiff with internal overviews."""
    rasterio = require_rasterio()
    from rasterio.enums import Resampling
    from rasterio.shutil import copy as copy_raster

    block = int(profile["blockxsize"])
    if _has_cog_driver():
        copy_raster(draft, out, driver="COG", BLOCKSIZE=block, COMPRESS="DEFLATE",
                    RESAMPLING="NEAREST", OVERVIEWS="AUTO")
        return "COG (GDAL COG driver)"
    with rasterio.open(draft, "r+") as dst:
        factors = [2]  # halve until the smallest overview fits in one tile
        while max(dst.height, dst.width) / factors[-1] > block:
            factors.append(factors[-1] * 2)
        dst.build_overviews(factors, Resampling.nearest)
        dst.update_tags(ns="rio_overview", resampling="nearest")
    copy_raster(draft, out, driver="GTiff", TILED="YES", BLOCKXSIZE=block, BLOCKYSIZE=block,
                COMPRESS="DEFLATE", COPY_SRC_OVERVIEWS="YES")
    return "tiled GTiff + overviews (no COG driver)"


# --------------------------------------------------------------------------- the run
def predict_geotiff(ckpt: str | Path | None, inputs: str | Path | Sequence[str | Path],
                    out_dir: str | Path, config: str | Path | None = None,
                    max_samples: int | None = None, *, onnx: str | Path | None = None,
                    spec_overrides: Mapping[str, Mapping[str, Any]] | None = None,
                    max_pixels: int | None = None,
                    tile_memory_mb: float = DEFAULT_TILE_MEMORY_MB, cog: bool = False,
                    on_error: OnError = "skip", skip_existing: bool = False
                    ) -> GeoPredictionSummary:
    """Predict GeoTIFF inputs and write one georeferenced mask ``out/{stem}.tif`` per sample.

    Args:
        ckpt, onnx, config, spec_overrides, max_pixels, max_samples: as for
            :func:`~fusionseg.inference.prediction.predict`.
        inputs: ``MODALITY=FILE|DIR|GLOB[:I,J]`` GeoTIFFs, or a ``DIR/{modality}`` folder
            (:func:`geotiff_samples`).
        out_dir: output folder; the masks are ``out/{stem}.tif`` (no PNG masks or panels).
        tile_memory_mb: memory budget (MB) of one block's inputs and logits (the model's own
            activations come on top); a raster that needs more is streamed block by block.
        cog: write Cloud-Optimized GeoTIFFs (tiled, with overviews; GDAL's COG driver where
            present, else a tiled GTiff with internal overviews).
        on_error: ``"skip"`` (a sample whose files cannot be used is listed in
            ``out/failed.txt`` and the run ends with :class:`PredictionIncomplete`) or
            ``"stop"``.
        skip_existing: skip samples whose mask file exists.

    Returns:
        A :class:`GeoPredictionSummary` (``rasters``: one :class:`GeoRaster` per mask).

    Raises:
        ConfigError: rasterio missing; a bad ``on_error`` or ``tile_memory_mb``; a config
            that resizes the input (``data.eval_size`` / ``eval_pre_size``); more classes
            than 255; a raster over the budget whose inference cannot be streamed (multi-scale
            or whole-image), or a budget smaller than one window.
        DataError: inputs (see :func:`geotiff_samples`), grids that differ (naming both
            files), files that do not fit the spec; with ``on_error="stop"`` raised at once.
        PredictionIncomplete: ``on_error="skip"`` and some samples failed.
        CheckpointError: the checkpoint is missing, unsafe or does not fit the model.
    """
    require_rasterio()
    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, "
                          f"got {on_error!r}")
    if not tile_memory_mb > 0:
        raise ConfigError(f"tile_memory_mb must be > 0, got {tile_memory_mb}")
    out_dir = Path(out_dir)
    model, meta, cfg = load_predictor(ckpt=ckpt, onnx=onnx, config=config)
    if cfg.data.eval_size is not None or cfg.data.eval_pre_size is not None:
        raise ConfigError("data.eval_size / data.eval_pre_size resize the input, and a "
                          "georeferenced mask needs the raster's own grid; set them to null "
                          "(--config) for GeoTIFF prediction")
    modalities = list(cfg.model.modalities)
    samples, channels = geotiff_samples(inputs, modalities)
    specs = training_specs(meta, cfg, spec_overrides)
    specs = {m: select_channels(specs[m], channels.get(m)) for m in modalities}
    classes = meta.get("fusionseg_classes") or None
    num_classes = cfg.model.num_classes or (len(classes) if classes else None)
    palette = prediction_palette(meta, num_classes)
    k = num_classes or len(palette)
    if k > NODATA:
        raise ConfigError(f"a uint8 mask holds at most {NODATA} classes (255 is nodata); the "
                          f"model has {k}")
    run = _Run(model=model, cfg=cfg, specs=specs, palette=palette, num_classes=k,
               precision=model_precision(cfg, meta), max_pixels=max_pixels,
               budget_bytes=int(tile_memory_mb * _MB), cog=cog)
    samples = samples if max_samples is None else samples[:max_samples]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FAILURES_FILE).unlink(missing_ok=True)
    summary = GeoPredictionSummary(out_dir=out_dir, total=len(samples))
    for name, files in samples:
        out_path = out_dir / f"{name}.tif"
        if skip_existing and out_path.is_file():
            summary.skipped_existing.append(name)
            continue
        try:
            summary.rasters.append(_predict_raster(run, files, out_path))
        except DataError as err:
            if on_error == "stop":
                raise
            record_failure(summary, FailedSample(name, one_line(str(err))))
            continue
        summary.written.append(name)
    if summary.failed:
        raise PredictionIncomplete(summary)
    return summary
