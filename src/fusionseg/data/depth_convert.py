"""File conversions of depth: depth images to HHA PNGs, disparity images to depth PNGs.

What ``fusionseg data depth2hha`` and ``fusionseg data disparity2depth`` run: the inputs are
a file, a folder (its ``.png``, ``.tif``, ``.tiff`` and ``.npy`` files, not recursive) or a
glob pattern; each input gives one PNG of the same stem and size in the output folder,
written atomically, in parallel over processes (``concurrent.futures``). The geometry is in
:mod:`fusionseg.data.depth_geometry`.
"""

from __future__ import annotations

import glob
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError, FusionsegError
from ..files import atomic_path
from .depth_geometry import check_intrinsics, depth_to_hha, disparity_to_depth
from .io import read_image

__all__ = [
    "DEPTH_SUFFIXES",
    "ConversionResult",
    "depth_files",
    "depth_to_hha_files",
    "disparity_to_depth_files",
    "parse_intrinsics",
    "read_depth",
]

#: File types read as depth or disparity maps.
DEPTH_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".npy")


@dataclass(frozen=True)
class ConversionResult:
    """What a conversion wrote: ``outputs[i]`` from ``inputs[i]``, each ``height x width``
    (the sizes seen, sorted)."""

    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]
    sizes: tuple[tuple[int, int], ...]


def parse_intrinsics(text: str) -> tuple[float, float, float, float]:
    """``"518.86,519.47,325.58,253.74"`` -> ``(fx, fy, cx, cy)`` in pixels.

    Raises:
        ConfigError: not four comma-separated numbers, or a focal length that is not > 0.
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
        if len(values) != 4:
            raise ValueError
        return check_intrinsics(values)
    except (ValueError, DataError):
        raise ConfigError(f"--intrinsics {text!r}: expected FX,FY,CX,CY, four numbers in "
                          "pixels with FX, FY > 0 (e.g. 518.86,519.47,325.58,253.74)") from None


def depth_files(source: str | os.PathLike) -> list[Path]:
    """The files ``source`` names, sorted: a file, a folder's ``DEPTH_SUFFIXES`` files, or the
    files a glob pattern (``*``, ``?``, ``[``; ``**`` recursive) matches.

    Raises:
        DataError: nothing matched, a file of another type, or two inputs of the same stem
            (they would write the same output).
    """
    text = str(source)
    path = Path(text)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in DEPTH_SUFFIXES)
    elif glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
    else:
        raise DataError("no such file or folder", path=text)
    if not files:
        raise DataError(f"no {', '.join(DEPTH_SUFFIXES)} file matched", path=text)
    bad = [p for p in files if p.suffix.lower() not in DEPTH_SUFFIXES]
    if bad:
        raise DataError(f"not a depth image type ({', '.join(DEPTH_SUFFIXES)})", path=bad[0])
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise DataError(f"two inputs with stem '{p.stem}' ({stems[p.stem].name}, {p.name}) "
                            "would write the same output", path=p)
        stems[p.stem] = p
    return files


def read_depth(path: str | os.PathLike, scale: float) -> np.ndarray:
    """A 1-channel image file times ``scale`` (stored value -> metres, or -> pixels of
    disparity) as ``float64 [H, W]``; missing stays 0 / NaN.

    Raises:
        DataError: unreadable file, or more than one channel (naming the file).
    """
    array = read_image(path, modality="depth")
    if array.shape[2] != 1:
        raise DataError(f"expected a 1-channel depth image, got {array.shape[2]} channels",
                        path=path, modality="depth")
    return array[:, :, 0].astype(np.float64) * float(scale)


def _write_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _hha_job(job: tuple[Path, Path, tuple[float, ...], float]) -> tuple[int, int]:
    src, dst, intrinsics, depth_scale = job
    depth = read_depth(src, depth_scale)
    try:
        hha = depth_to_hha(depth, intrinsics)
    except DataError as err:
        raise DataError(err.problem, path=src, modality="depth") from None
    _write_png(dst, hha)
    return depth.shape


def _disparity_job(job: tuple[Path, Path, float, float, float, float]) -> tuple[int, int]:
    src, dst, baseline, focal, disparity_scale, depth_scale = job
    depth = disparity_to_depth(read_depth(src, disparity_scale), baseline, focal)
    units = np.rint(depth / depth_scale)
    units[(units > np.iinfo(np.uint16).max) | ~np.isfinite(units)] = 0  # beyond range: missing
    _write_png(dst, units.astype(np.uint16))
    return depth.shape


def _guarded(fn: Callable[[Any], tuple[int, int]], job: Any) -> tuple[int, int] | str:
    """``fn(job)``, or the one-line message of the user error it raised (so that one bad file
    does not stop the others; a bug still raises)."""
    try:
        return fn(job)
    except FusionsegError as err:
        return str(err)


def _run(fn: Callable[[Any], tuple[int, int]], jobs: Sequence[tuple],
         workers: int | None) -> ConversionResult:
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    workers = min(workers, len(jobs))
    if workers == 1:
        results = [_guarded(fn, j) for j in jobs]
    else:
        # fork: the jobs run numpy / Pillow only, and a fork skips re-importing the package
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(pool.map(_guarded, [fn] * len(jobs), jobs))
    failed = [r for r in results if isinstance(r, str)]
    if failed:
        more = f" ({len(failed)} of {len(jobs)} inputs failed)" if len(failed) > 1 else ""
        raise DataError(f"{failed[0]}{more}")
    return ConversionResult(tuple(j[0] for j in jobs), tuple(j[1] for j in jobs),
                            tuple(sorted(set(results))))  # type: ignore[arg-type]


def _outputs(files: Sequence[Path], out_dir: str | os.PathLike) -> list[Path]:
    out = Path(out_dir)
    targets = [out / f"{p.stem}.png" for p in files]
    for src, dst in zip(files, targets, strict=True):
        if dst.exists() and dst.resolve() == src.resolve():
            raise DataError("the output would overwrite this input; choose another --out",
                            path=src)
    return targets


def depth_to_hha_files(source: str | os.PathLike, out_dir: str | os.PathLike,
                       intrinsics: Sequence[float], depth_scale: float = 0.001,
                       workers: int | None = None) -> ConversionResult:
    """Write the HHA encoding of each depth image of ``source`` as ``out_dir/{stem}.png``.

    Args:
        source: a depth image, a folder of them, or a glob pattern (:func:`depth_files`);
            16-bit PNG, TIFF or ``.npy``, one channel, 0 / NaN = missing.
        out_dir: output folder (created).
        intrinsics: ``(fx, fy, cx, cy)`` in pixels.
        depth_scale: metres per stored unit (0.001: millimetres).
        workers: processes (default: every core; 1: this process).

    Returns:
        The inputs, the outputs (8-bit 3-channel PNGs: disparity, height, angle) and sizes.

    Raises:
        DataError: see :func:`depth_files`; an unreadable or multi-channel file, a depth
            image without a valid pixel (the first failing file; the others are written).
        ConfigError: bad intrinsics, depth scale or worker count.
    """
    try:
        intr = check_intrinsics(intrinsics)
    except DataError as err:
        raise ConfigError(err.problem) from None
    if not np.isfinite(depth_scale) or depth_scale <= 0:
        raise ConfigError(f"--depth-scale must be > 0 (metres per stored unit), got "
                          f"{depth_scale}")
    files = depth_files(source)
    targets = _outputs(files, out_dir)
    jobs = [(src, dst, intr, float(depth_scale)) for src, dst in zip(files, targets,
                                                                      strict=True)]
    return _run(_hha_job, jobs, workers)


def disparity_to_depth_files(source: str | os.PathLike, out_dir: str | os.PathLike,
                             baseline_m: float, focal_px: float, scale: float = 1.0,
                             depth_scale: float = 0.001,
                             workers: int | None = None) -> ConversionResult:
    """Write the depth of each disparity image of ``source`` as a 16-bit PNG
    ``out_dir/{stem}.png`` (``depth = focal * baseline / (stored * scale)``).

    Args:
        source: a disparity image, a folder of them, or a glob pattern (:func:`depth_files`).
        out_dir: output folder (created).
        baseline_m: stereo baseline in metres.
        focal_px: focal length of the rectified images in pixels.
        scale: pixels of disparity per stored unit (KITTI's 16-bit PNGs: 1/256).
        depth_scale: metres per unit of the written PNG (0.001: millimetres); depth beyond
            ``65535 * depth_scale`` is written as 0 (missing), as is zero or negative
            disparity.
        workers: processes (default: every core; 1: this process).

    Raises:
        DataError: see :func:`depth_files`; an unreadable or multi-channel file.
        ConfigError: a baseline, focal length, scale or depth scale that is not > 0.
    """
    for name, value in (("--baseline", baseline_m), ("--focal", focal_px), ("--scale", scale),
                        ("--depth-scale", depth_scale)):
        if not np.isfinite(value) or value <= 0:
            raise ConfigError(f"{name} must be > 0, got {value}")
    files = depth_files(source)
    targets = _outputs(files, out_dir)
    jobs = [(src, dst, float(baseline_m), float(focal_px), float(scale), float(depth_scale))
            for src, dst in zip(files, targets, strict=True)]
    return _run(_disparity_job, jobs, workers)
