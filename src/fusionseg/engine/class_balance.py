"""Class frequencies of a training split, the class weights made from them, and their cache.

``train.loss.class_weight: median_frequency`` or ``inverse_frequency`` asks for weights
computed from the pixel counts of the training split's labels. Counting reads every label once
(through the dataset's own label loading, :meth:`~fusionseg.data.datasets.base.
MultimodalDataset.read_record_label`; no image is read), so the counts are cached in a small
JSON file next to the data and read back by later runs:

* ``DATA_ROOT/.fusionseg/class_frequency-<split>-<key>.json``, ``key`` a hash of the dataset's
  name, classes, ignore index and label-affecting options (conditions, cases, ``max_samples``
  ...); when the root is not writable, the same name with the root's hash in
  ``$FUSIONSEG_CACHE`` (default ``$XDG_CACHE_HOME/fusionseg`` or ``~/.cache/fusionseg``).
* The file holds a fingerprint of the split's label files (relative path, size and
  modification time of each); a file whose fingerprint differs (the labels changed) or that
  cannot be read as such a file is recomputed with a warning and rewritten.

Weights (``K`` classes, ignored pixels excluded from every count):

* ``median_frequency`` (Eigen & Fergus, "Predicting Depth, Surface Normals and Semantic Labels
  with a Common Multi-Scale Convolutional Architecture", ICCV 2015, Sec. 4.3):
  ``w_c = median(freq) / freq_c`` with ``freq_c = pixels of c / pixels of the images where c
  is present``, the median over the classes present in the split (``numpy.median``: the mean
  of the two middle values for an even count).
* ``inverse_frequency``: ``w_c = 1 / f_c`` with ``f_c = pixels of c / all pixels``, scaled so
  that the weights of the classes present average 1.

A class absent from the split gets weight 0 (it has no pixel to weight).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..files import atomic_path

__all__ = [
    "CACHE_VERSION",
    "ClassFrequency",
    "cache_dir",
    "class_frequency",
    "class_weights",
    "count_label_pixels",
    "inverse_frequency_weights",
    "median_frequency_weights",
]

#: format version of the cache files (a file of another version is recomputed)
CACHE_VERSION = 1


@dataclass(frozen=True)
class ClassFrequency:
    """Pixel counts of a split's labels (ignored pixels excluded).

    Attributes:
        pixels: ``int64 [K]``, pixels of each class.
        image_pixels: ``int64 [K]``, valid pixels of the images in which each class appears.
        images: labelled images counted.
    """

    pixels: np.ndarray
    image_pixels: np.ndarray
    images: int

    @property
    def num_classes(self) -> int:
        return int(self.pixels.shape[0])

    def to_json(self) -> dict[str, Any]:
        return {"pixels": self.pixels.tolist(), "image_pixels": self.image_pixels.tolist(),
                "images": self.images}

    @classmethod
    def from_json(cls, obj: Any, num_classes: int) -> ClassFrequency:
        """Read back :meth:`to_json`.

        Raises:
            ValueError: anything but ``num_classes`` non-negative integer counts per field,
                with ``pixels <= image_pixels``.
        """
        if not isinstance(obj, dict):
            raise ValueError("not a mapping")
        arrays = []
        for key in ("pixels", "image_pixels"):
            v = obj.get(key)
            if (not isinstance(v, list) or len(v) != num_classes
                    or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                               for x in v)):
                raise ValueError(f"{key}: not {num_classes} counts")
            arrays.append(np.asarray(v, dtype=np.int64))
        images = obj.get("images")
        if not isinstance(images, int) or isinstance(images, bool) or images < 0:
            raise ValueError("images: not a count")
        if (arrays[0] > arrays[1]).any():
            raise ValueError("pixels above image_pixels")
        return cls(arrays[0], arrays[1], images)


def count_label_pixels(dataset, labels: Sequence[Any] | None = None) -> ClassFrequency:
    """Count the pixels of each class over the labels of ``dataset``'s records.

    Args:
        dataset: a :class:`~fusionseg.data.datasets.base.MultimodalDataset` (its
            ``records``, ``num_classes``, ``ignore_index`` and ``read_record_label``).
        labels: label arrays / tensors ``[H, W]`` to count instead (tests, other sources).

    Raises:
        DataError: the split has no labelled record; a label that fails to load.
    """
    k = int(dataset.num_classes)
    ignore = int(getattr(dataset, "ignore_index", 255))
    if labels is None:
        records = [r for r in dataset.records if r.label is not None]
        if not records:
            raise DataError(f"split '{getattr(dataset, 'split', '?')}' has no labels to count "
                            "class frequencies from", path=getattr(dataset, "root", None))
        labels = (dataset.read_record_label(r) for r in records)
    pixels = np.zeros(k, dtype=np.int64)
    image_pixels = np.zeros(k, dtype=np.int64)
    images = 0
    for lab in labels:
        arr = np.asarray(lab).reshape(-1)
        arr = arr[arr != ignore].astype(np.int64, copy=False)
        if arr.size and (arr.min() < 0 or arr.max() >= k):
            raise DataError(f"a label holds class ids outside 0..{k - 1} and {ignore}")
        counts = np.bincount(arr, minlength=k)
        pixels += counts
        image_pixels += np.where(counts > 0, arr.size, 0)
        images += 1
    return ClassFrequency(pixels, image_pixels, images)


def _present_classes(freq: ClassFrequency) -> np.ndarray:
    """``bool [K]``: the classes with at least one pixel; :class:`DataError` when none has."""
    present = freq.pixels > 0
    if not present.any():
        raise DataError("no labelled pixel to compute class frequencies from")
    return present


def median_frequency_weights(freq: ClassFrequency) -> np.ndarray:
    """``w_c = median(f) / f_c``, ``f_c = pixels_c / image_pixels_c`` (Eigen & Fergus 2015,
    Sec. 4.3), median over the present classes; 0 for absent classes. ``float64 [K]``.

    Raises:
        DataError: no class has a pixel.
    """
    present = _present_classes(freq)
    f = np.zeros(freq.num_classes)
    f[present] = freq.pixels[present] / freq.image_pixels[present]
    w = np.zeros(freq.num_classes)
    w[present] = np.median(f[present]) / f[present]
    return w


def inverse_frequency_weights(freq: ClassFrequency) -> np.ndarray:
    """``w_c = 1 / f_c``, ``f_c = pixels_c / sum(pixels)``, scaled to mean 1 over the present
    classes; 0 for absent classes. ``float64 [K]``.

    Raises:
        DataError: no class has a pixel.
    """
    present = _present_classes(freq)
    w = np.zeros(freq.num_classes)
    w[present] = freq.pixels.sum() / freq.pixels[present]
    return w / w[present].mean()


_WEIGHTINGS = {"median_frequency": median_frequency_weights,
               "inverse_frequency": inverse_frequency_weights}


def cache_dir() -> Path:
    """The user cache folder: ``$FUSIONSEG_CACHE``, else ``$XDG_CACHE_HOME/fusionseg``, else
    ``~/.cache/fusionseg`` (not created here)."""
    if os.environ.get("FUSIONSEG_CACHE"):
        return Path(os.environ["FUSIONSEG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "fusionseg"


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _dataset_key(dataset) -> str:
    options = getattr(dataset, "options", None)
    opts = (options.model_dump(mode="json", exclude={"specs", "check_files"})
            if options is not None else {})
    return _digest({"dataset": getattr(dataset, "name", "") or type(dataset).__name__,
                    "split": getattr(dataset, "split", None), "classes": list(dataset.classes),
                    "ignore_index": int(getattr(dataset, "ignore_index", 255)),
                    "options": opts})


def _fingerprint(dataset) -> str:
    """Hash of the relative path, size and modification time of every label file."""
    root = Path(dataset.root)
    rows = []
    for r in dataset.records:
        if r.label is None:
            continue
        p = Path(r.label)
        try:
            st = p.stat()
            stat = (st.st_size, st.st_mtime_ns)
        except OSError:
            stat = None
        rel = str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
        rows.append((r.id, rel, stat))
    return _digest(rows)


def _cache_paths(dataset) -> list[Path]:
    """Where the cache file of ``dataset`` lives: next to the data, then the user cache."""
    root = Path(dataset.root)
    name = f"class_frequency-{dataset.split}-{_dataset_key(dataset)}.json"
    return [root / ".fusionseg" / name,
            cache_dir() / "class_frequency" / f"{_digest(str(root.resolve()))}-{name}"]


def _read_cache(path: Path, dataset, fingerprint: str) -> ClassFrequency | None:
    """The counts of a valid, current cache file; None (with a warning for a bad one) else."""
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
        if not isinstance(obj, dict) or obj.get("version") != CACHE_VERSION:
            raise ValueError(f"not a version-{CACHE_VERSION} class frequency file")
        freq = ClassFrequency.from_json(obj.get("counts"), int(dataset.num_classes))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        warnings.warn(f"{path}: unreadable class frequency cache ({e}); recomputing",
                      stacklevel=3)
        return None
    if obj.get("fingerprint") != fingerprint:
        warnings.warn(f"{path}: class frequency cache is stale (the label files changed); "
                      "recomputing", stacklevel=3)
        return None
    return freq


def _write_cache(paths: list[Path], obj: dict[str, Any]) -> Path | None:
    text = json.dumps(obj, indent=1) + "\n"
    for path in paths:
        try:
            with atomic_path(path) as tmp:
                tmp.write_text(text)
            return path
        except OSError:
            continue
    warnings.warn(f"could not write the class frequency cache to any of {[str(p) for p in paths]}",
                  stacklevel=3)
    return None


def class_frequency(dataset, cache: bool = True) -> tuple[ClassFrequency, Path | None]:
    """The class pixel counts of ``dataset`` (its split), from the cache when it is current.

    Returns:
        ``(counts, path)``: ``path`` the cache file read or written (None without a cache).

    Raises:
        DataError: see :func:`count_label_pixels`.
    """
    if not cache:
        return count_label_pixels(dataset), None
    paths = _cache_paths(dataset)
    fingerprint = _fingerprint(dataset)
    for path in paths:
        freq = _read_cache(path, dataset, fingerprint)
        if freq is not None:
            return freq, path
    freq = count_label_pixels(dataset)
    obj = {"version": CACHE_VERSION, "dataset": getattr(dataset, "name", ""),
           "split": dataset.split, "classes": list(dataset.classes),
           "ignore_index": int(getattr(dataset, "ignore_index", 255)),
           "fingerprint": fingerprint, "counts": freq.to_json()}
    return freq, _write_cache(paths, obj)


def class_weights(weighting: str, freq: ClassFrequency) -> list[float]:
    """The ``K`` class weights of ``weighting`` (``median_frequency`` or
    ``inverse_frequency``) from ``freq``.

    Raises:
        ConfigError: another weighting name.
        DataError: no labelled pixel.
    """
    fn = _WEIGHTINGS.get(weighting)
    if fn is None:
        raise ConfigError(f"unknown class weighting {weighting!r}; use one of {sorted(_WEIGHTINGS)}")
    return [float(v) for v in fn(freq)]
