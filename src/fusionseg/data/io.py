"""Image readers for every file format the datasets use, with clear errors.

All readers return a numpy array ``[H, W, C]`` (a 2-D image gets ``C = 1``) and keep the
file's dtype: ``uint8`` for 8-bit PNG/JPEG, ``uint16`` for 16-bit PNG/TIFF, ``float32`` for
float TIFF, whatever is stored for NPY/NPZ. Nothing is rescaled here; units and normalization
are the job of :class:`fusionseg.data.modalities.ModalitySpec`.

Every problem raises :class:`DataError` (a ``ValueError``) whose message names the file, the
modality when the caller knows it, and what is wrong::

    DataError: /data/x/000001_depth_front.png [modality 'depth']: wrong bit depth: ...
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import DataError

__all__ = [
    "DataError",
    "IMAGE_EXTENSIONS",
    "bit_depth_of",
    "read_image",
]

#: File extensions :func:`read_image` understands (lower case, with the dot).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".npy",
    ".npz",
    ".bmp",
)

PathLike = str | os.PathLike


#: dtype kinds an image array may have: bool, signed / unsigned integers, floats
_NUMERIC_KINDS = "biuf"


class _QuietTiffLog(logging.Filter):
    """Drops tifffile's log records in a thread inside :func:`_quiet_tifffile`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_TIFF_QUIET, "on", False)


_TIFF_QUIET = threading.local()
logging.getLogger("tifffile").addFilter(_QuietTiffLog())


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's logger in this thread: on a corrupt file it logs a line per broken
    tag to stderr before raising; the DataError raised for the file says it once."""
    prev = getattr(_TIFF_QUIET, "on", False)
    _TIFF_QUIET.on = True
    try:
        yield
    finally:
        _TIFF_QUIET.on = prev


#: numpy parses ``.npy`` headers with ``ast.literal_eval``, and CPython (3.11 at least) keeps
#: the AST constructor's recursion-depth count in per-interpreter state, not per thread: two
#: threads parsing at once now and then fail with a spurious ``SystemError: AST constructor
#: recursion depth mismatch`` (cf. python/cpython#106905). ``fusionseg data check`` and the
#: datasets' file check read headers in threads, so every ``.npy`` / ``.npz`` read and header
#: probe of fusionseg holds this lock.
_NPY_LOCK = threading.Lock()


def bit_depth_of(array: np.ndarray) -> int:
    """Bits per sample of ``array``'s dtype (8 for uint8/bool, 16 for uint16, 32 for float32...)."""
    if array.dtype == np.bool_:
        return 8
    return int(array.dtype.itemsize * 8)


def _as_hwc(array: np.ndarray, path: PathLike, modality: str | None) -> np.ndarray:
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3:
        return array
    raise DataError(
        f"unreadable: expected a 2-D or 3-D image array, got shape {tuple(array.shape)}",
        path=path,
        modality=modality,
    )


# --------------------------------------------------------------------------------------- PNG/JPEG

# 16-bit colour PNGs: Pillow unfilters them correctly but keeps only the high byte of each
# sample (there is no 16-bit RGB mode). We decode twice through Pillow's own decoder, once
# with the usual big-endian raw mode (high bytes) and once with the little-endian raw mode,
# which on big-endian data picks the low bytes; gray+alpha is decoded byte-exactly through a
# 4-byte raw mode with the same pixel stride.
_PNG16_COLOUR = {"RGB;16B": ("RGB;16L", 3), "RGBA;16B": ("RGBA;16L", 4)}


def _tile_rawmode(tile: Any) -> Any:
    return tile.args if hasattr(tile, "args") else tile[3]


def _tile_with_rawmode(tile: Any, rawmode: str) -> Any:
    if hasattr(tile, "_replace"):
        return tile._replace(args=rawmode)
    return (tile[0], tile[1], tile[2], rawmode)


def _read_pillow(path: Path, modality: str | None, palette: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            tile = list(getattr(im, "tile", []) or [])
            rawmode = _tile_rawmode(tile[0]) if len(tile) == 1 else None
            rawmode = rawmode if isinstance(rawmode, str) else None
            if im.format == "PNG" and len(tile) == 1 and rawmode in _PNG16_COLOUR:
                lo_mode, channels = _PNG16_COLOUR[rawmode]
                hi = np.asarray(im)  # high bytes
                with Image.open(path) as im2:
                    im2.tile = [_tile_with_rawmode(im2.tile[0], lo_mode)]
                    lo = np.asarray(im2)
                out = hi.astype(np.uint16) * 256 + lo.astype(np.uint16)
                return out[:, :, :channels]
            if im.format == "PNG" and len(tile) == 1 and rawmode == "LA;16B":
                im.tile = [_tile_with_rawmode(tile[0], "RGBA")]
                b = np.asarray(im).astype(np.uint16)
                h, w = b.shape[:2]
                b = b.reshape(h, w, 2, 2)
                return b[..., 0] * 256 + b[..., 1]
            mode = im.mode
            if mode == "P":
                if palette == "index":
                    arr = np.asarray(im)
                else:
                    has_alpha = "transparency" in im.info
                    arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
            elif mode == "PA":
                arr = np.asarray(im.convert("RGBA"))
            elif mode == "1":
                arr = np.asarray(im.convert("L"))
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                arr = np.asarray(im.convert("RGB"))
            elif mode.startswith("I;16"):
                arr = np.asarray(im).astype(np.uint16)
            elif mode == "I" and im.format == "PNG":
                # Older Pillow versions open 16-bit grayscale PNGs as 32-bit "I".
                arr = np.asarray(im).astype(np.uint16)
            else:
                arr = np.asarray(im)
    except FileNotFoundError as err:
        raise DataError("missing file", path=path, modality=modality) from err
    except Exception as err:
        # Pillow raises many exception types on corrupt files: UnidentifiedImageError, OSError
        # ("image file is truncated"), SyntaxError, EOFError, struct.error ..., and
        # DecompressionBombError (not an OSError) for a header claiming a huge size
        raise DataError(f"unreadable image ({err})", path=path, modality=modality) from err
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------------------- TIFF


def _read_tiff(path: Path, modality: str | None) -> np.ndarray:
    import tifffile

    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            arr = series.asarray()
    except FileNotFoundError as err:
        raise DataError("missing file", path=path, modality=modality) from err
    except Exception as err:  # tifffile raises many exception types on corrupt files
        raise DataError(f"unreadable TIFF ({err})", path=path, modality=modality) from err
    # Drop singleton leading axes (e.g. a 1-page stack), then bring samples/bands last.
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
        axes = axes[1:]
    if arr.ndim == 3 and axes[-1] not in "SC" and axes[0] in "SCQIZ":
        # planar ("separate") multi-band TIFF: bands first
        arr = np.moveaxis(arr, 0, -1)
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------------------- NPY/NPZ


def _channels_last(arr: np.ndarray) -> np.ndarray:
    # [C, H, W] with a small C and a large last axis is taken as channels-first.
    if arr.ndim == 3 and arr.shape[0] <= 4 and arr.shape[-1] > 4:
        return np.moveaxis(arr, 0, -1)
    return arr


def _read_numpy(path: Path, modality: str | None, key: str | None) -> np.ndarray:
    try:
        with _NPY_LOCK:
            if path.suffix.lower() == ".npz":
                with np.load(path, allow_pickle=False) as npz:
                    names = list(npz.files)
                    if not names:
                        raise DataError(
                            "unreadable: empty .npz archive", path=path, modality=modality
                        )
                    if key is None:
                        arr = npz[names[0]]
                    elif key in names:
                        arr = npz[key]
                    else:
                        raise DataError(
                            f"unreadable: .npz has no array '{key}' (arrays: {', '.join(names)})",
                            path=path,
                            modality=modality,
                        )
            else:
                arr = np.load(path, allow_pickle=False)
    except DataError:
        raise
    except FileNotFoundError as err:
        raise DataError("missing file", path=path, modality=modality) from err
    except Exception as err:
        raise DataError(f"unreadable numpy file ({err})", path=path, modality=modality) from err
    if not isinstance(arr, np.ndarray):
        raise DataError(
            f"unreadable: expected a numeric array, got {type(arr).__name__}",
            path=path,
            modality=modality,
        )
    return np.ascontiguousarray(_channels_last(arr))


# --------------------------------------------------------------------------------------- public


def read_image(
    path: PathLike,
    *,
    modality: str | None = None,
    key: str | None = None,
    palette: Literal["rgb", "index"] = "rgb",
) -> np.ndarray:
    """Read an image-like file into a numpy array ``[H, W, C]``, keeping its dtype.

    Formats (by extension, case-insensitive):

    - ``.png`` (8/16-bit gray, gray+alpha, RGB, RGBA; 16-bit colour PNGs are decoded exactly),
      ``.jpg``/``.jpeg``/``.bmp`` through Pillow. Palette PNGs give RGB(A) colours by default
      or the raw palette indices ``[H, W, 1]`` with ``palette="index"`` (label maps).
    - ``.tif``/``.tiff`` through tifffile: any integer, float or bool dtype (uint8, uint16,
      float32 ...; complex data is an error), multi-band
      files band-last whether stored interleaved or planar.
    - ``.npy``: a 2-D ``[H, W]`` or 3-D ``[H, W, C]`` array; a 3-D array with ``<= 4`` leading
      entries and a longer last axis is taken as ``[C, H, W]`` and moved to channels-last.
    - ``.npz``: the first array in the archive, or the array named ``key``.

    Args:
        path: the file.
        modality: modality name, only used in error messages.
        key: array name inside an ``.npz`` archive (default: the first array).
        palette: ``"rgb"`` (palette images to colours) or ``"index"`` (keep indices).

    Returns:
        ``np.ndarray`` of shape ``[H, W, C]`` with the file's dtype.

    Raises:
        DataError: missing file, unknown extension, unreadable/corrupt file (truncated, not
            of its extension's format, a header claiming more pixels than Pillow's
            ``Image.MAX_IMAGE_PIXELS`` allows twice over), an array that is not 2-D/3-D or not
            of an integer, float or bool dtype. The message names the file and the modality
            (when given).
    """
    p = Path(path)
    if not p.is_file():
        problem = "missing file" if not p.exists() else "not a file"
        raise DataError(problem, path=p, modality=modality)
    ext = p.suffix.lower()
    if ext in (".png", ".jpg", ".jpeg", ".bmp"):
        arr = _read_pillow(p, modality, palette)
    elif ext in (".tif", ".tiff"):
        arr = _read_tiff(p, modality)
    elif ext in (".npy", ".npz"):
        arr = _read_numpy(p, modality, key)
    else:
        raise DataError(
            f"unreadable: unsupported file extension '{p.suffix}' "
            f"(supported: {', '.join(IMAGE_EXTENSIONS)})",
            path=p,
            modality=modality,
        )
    if arr.dtype.kind not in _NUMERIC_KINDS:  # complex, structured, strings ...
        raise DataError(
            f"unreadable: expected a numeric array, got dtype {arr.dtype}",
            path=p,
            modality=modality,
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    arr = _as_hwc(arr, p, modality)
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise DataError(f"unreadable: empty image of shape {arr.shape}", path=p, modality=modality)
    return arr
