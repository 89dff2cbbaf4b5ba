"""The Sample convention, its validation, batching and modality subsets.

A **sample** is a ``dict``:

- ``<modality>`` (``"rgb"``, ``"depth"`` ...): ``torch.float32 [C, H, W]``; a missing modality
  is an absent key;
- ``"label"``: ``torch.int64 [H, W]``, classes ``0..K-1``, ignore ``255`` (absent when the
  split has no labels);
- ``"meta"``: ``dict`` with ``"id"`` (str), ``"condition"`` (str | None), ``"case"``
  (str | None), ``"paths"`` (``dict`` modality/``"label"`` -> file path str); transforms may
  add keys (``PadToMultiple`` adds ``"unpadded_size"``).

A **batch** (from :class:`Collate`) is the same dict with a leading batch dimension
(``[B, C, H, W]``, label ``[B, H, W]``), ``"meta"`` a list of the samples' meta dicts, and,
where not every modality is present in every sample, ``"present": torch.bool [B, M]`` with
columns in the order of the collate's ``modalities`` (missing tensors are zeros).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from fusionseg.data.io import DataError

__all__ = [
    "IGNORE_INDEX",
    "LABEL_KEY",
    "META_KEY",
    "PRESENT_KEY",
    "RESERVED_KEYS",
    "Collate",
    "Sample",
    "check_sample",
    "drop_modalities",
    "modality_keys",
    "sample_where",
]

Sample = dict[str, Any]

IGNORE_INDEX = 255
LABEL_KEY = "label"
META_KEY = "meta"
PRESENT_KEY = "present"
RESERVED_KEYS = frozenset({LABEL_KEY, META_KEY, PRESENT_KEY})


def modality_keys(sample: Sample) -> list[str]:
    """Names of the modality tensors in a sample or batch, in dict order."""
    return [k for k, v in sample.items() if k not in RESERVED_KEYS and isinstance(v, torch.Tensor)]


def sample_where(sample: Sample) -> str:
    """A short description of where a sample comes from (id and paths) for error messages."""
    meta = sample.get(META_KEY)
    if isinstance(meta, dict):
        parts = []
        if meta.get("id") is not None:
            parts.append(f"sample '{meta['id']}'")
        paths = meta.get("paths")
        if isinstance(paths, dict) and paths:
            parts.append("files: " + ", ".join(f"{k}={v}" for k, v in paths.items()))
        return "; ".join(parts) if parts else "sample"
    if isinstance(meta, list):
        ids = [m.get("id") for m in meta if isinstance(m, dict)]
        return f"batch of samples {ids}"
    return "sample"


def check_sample(
    sample: Sample,
    *,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Sample:
    """Validate a sample against the convention and return it unchanged.

    Checks: every modality is ``float32 [C, H, W]``; ``label`` (if present) is ``int64 [H, W]``;
    all modalities and the label share ``H, W``; with ``num_classes``, label values lie in
    ``0..num_classes-1`` or equal ``ignore_index``.

    Raises:
        DataError: naming the modalities and their sizes (or the bad label values) and the
            sample id and file paths from ``sample["meta"]``.
    """
    where = sample_where(sample)
    sizes: dict[str, tuple[int, int]] = {}
    for name in modality_keys(sample):
        x = sample[name]
        if x.ndim != 3:
            raise DataError(
                f"modality tensor must be [C, H, W], got shape {tuple(x.shape)} ({where})",
                modality=name,
            )
        if x.dtype != torch.float32:
            raise DataError(f"modality tensor must be float32, got {x.dtype} ({where})", modality=name)
        sizes[name] = (int(x.shape[1]), int(x.shape[2]))
    label = sample.get(LABEL_KEY)
    if label is not None:
        if not isinstance(label, torch.Tensor) or label.ndim != 2:
            shape = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label)
            raise DataError(f"label must be a tensor [H, W], got {shape} ({where})")
        if label.dtype != torch.int64:
            raise DataError(f"label must be int64, got {label.dtype} ({where})")
        sizes[LABEL_KEY] = (int(label.shape[0]), int(label.shape[1]))
    if len(set(sizes.values())) > 1:
        desc = ", ".join(f"{k} {h}x{w}" for k, (h, w) in sizes.items())
        raise DataError(f"size mismatch across modalities (H x W): {desc} ({where})")
    if label is not None and num_classes is not None:
        bad = label[(label != ignore_index) & ((label < 0) | (label >= num_classes))]
        if bad.numel():
            values = sorted({int(v) for v in bad.unique()[:10]})
            label_path = None
            meta = sample.get(META_KEY)
            if isinstance(meta, dict):
                label_path = (meta.get("paths") or {}).get(LABEL_KEY)
            raise DataError(
                f"label value(s) {values} out of range: valid are 0..{num_classes - 1} and "
                f"ignore {ignore_index} ({where})",
                path=label_path,
            )
    return sample


class Collate:
    """``collate_fn`` for a DataLoader over Samples.

    Args:
        modalities: the modality names in their configured order; they set the column order
            of ``"present"``. Keys of other modalities in the samples are dropped.
        always_present: always add ``"present"`` (otherwise only when some sample misses a
            modality that another sample has, or a listed modality is absent from all).

    Returns (``__call__``): a batch dict: each modality present in at least one sample as
    ``float32 [B, C, H, W]`` (zeros where a sample misses it); a modality absent from every
    sample is absent; ``"present": bool [B, M]`` (see above); ``"label": int64 [B, H, W]`` if
    the samples have labels; ``"meta"``: list of the samples' meta dicts.

    Raises:
        DataError: tensors of one modality (or labels) with different shapes in one batch, or
            a label in some samples but not others.
    """

    def __init__(self, modalities: Sequence[str], *, always_present: bool = False) -> None:
        if isinstance(modalities, str):
            modalities = [modalities]
        self.modalities = list(modalities)
        self.always_present = always_present

    def __repr__(self) -> str:
        return f"Collate(modalities={self.modalities!r})"

    def __call__(self, samples: Sequence[Sample]) -> Sample:
        if len(samples) == 0:
            raise DataError("cannot collate an empty list of samples")
        b = len(samples)
        batch: Sample = {}
        present = torch.zeros(b, len(self.modalities), dtype=torch.bool)
        for j, name in enumerate(self.modalities):
            tensors = [s.get(name) for s in samples]
            have = [t is not None for t in tensors]
            present[:, j] = torch.tensor(have, dtype=torch.bool)
            if not any(have):
                continue
            ref = next(t for t in tensors if t is not None)
            shapes = {tuple(t.shape) for t in tensors if t is not None}
            if len(shapes) > 1:
                ids = [_sample_id(s) for s, h in zip(samples, have, strict=True) if h]
                raise DataError(
                    f"cannot batch tensors of different shapes {sorted(shapes)} "
                    f"(samples {ids})",
                    modality=name,
                )
            if all(have):
                batch[name] = torch.stack(tensors, 0)
            else:
                out = ref.new_zeros((b, *ref.shape))
                for i, t in enumerate(tensors):
                    if t is not None:
                        out[i] = t
                batch[name] = out
        if self.always_present or not bool(present.all()):
            batch[PRESENT_KEY] = present
        labels = [s.get(LABEL_KEY) for s in samples]
        n_lab = sum(t is not None for t in labels)
        if n_lab == b:
            shapes = {tuple(t.shape) for t in labels}
            if len(shapes) > 1:
                raise DataError(
                    f"cannot batch labels of different shapes {sorted(shapes)} "
                    f"(samples {[_sample_id(s) for s in samples]})"
                )
            batch[LABEL_KEY] = torch.stack(labels, 0)
        elif n_lab:
            missing = [_sample_id(s) for s, t in zip(samples, labels, strict=True) if t is None]
            raise DataError(f"some samples in the batch have no label: {missing}")
        batch[META_KEY] = [s.get(META_KEY, {}) for s in samples]
        return batch


def _sample_id(sample: Sample) -> Any:
    meta = sample.get(META_KEY)
    return meta.get("id") if isinstance(meta, dict) else None


def drop_modalities(
    sample_or_batch: Sample,
    keep: Iterable[str],
    *,
    modalities: Sequence[str] | None = None,
) -> Sample:
    """A shallow copy without the modalities not in ``keep`` (label, meta and other keys stay).

    For a batch carrying ``"present"``, pass the column order ``modalities`` (the Collate's
    list): the dropped modalities' columns become False (the mask keeps its shape). Tensors
    are not copied.

    Raises:
        ValueError: a batch with ``"present"`` and no ``modalities``, or a ``modalities`` whose
            length does not match the mask.
    """
    keep = set([keep] if isinstance(keep, str) else keep)
    out = {
        k: v
        for k, v in sample_or_batch.items()
        if k in RESERVED_KEYS or not isinstance(v, torch.Tensor) or k in keep
    }
    present = sample_or_batch.get(PRESENT_KEY)
    if present is not None:
        if modalities is None:
            raise ValueError(
                "drop_modalities on a batch with 'present' needs modalities= (its column order)"
            )
        if len(modalities) != present.shape[1]:
            raise ValueError(
                f"modalities has {len(modalities)} names but 'present' has "
                f"{present.shape[1]} columns"
            )
        mask = torch.tensor([m in keep for m in modalities], dtype=torch.bool)
        out[PRESENT_KEY] = present & mask.to(present.device)
    return out
