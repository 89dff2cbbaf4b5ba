"""Atomic checkpoint (and JSON result) writing for Lightning.

Lightning's ``TorchCheckpointIO`` writes the target path directly; a crash or a full disk in
the middle of ``torch.save`` would leave a truncated ``last.ckpt`` or ``best.ckpt``. Here the
checkpoint goes to a temporary file in the same directory, is flushed and fsynced, and then
``os.replace``-d over the target, so the previous good checkpoint survives any failure.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..errors import CheckpointError
from ..files import atomic_path
from ..serialization import read_checkpoint


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that either fully replaces ``path`` or leaves it untouched."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by ``None``, recursively
    through dicts, lists and tuples, so it serialises as strict JSON (``null``; a class absent
    from the data has no IoU). Tensors and numpy scalars with ``.item()`` become Python
    numbers."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``json_safe(obj)`` as strict JSON (``allow_nan=False``) to ``path`` atomically
    (temporary file + ``os.replace``). Returns the path.

    Raises:
        TypeError: a value JSON cannot hold (from :func:`json.dumps`).
    """
    text = json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO plugin whose saves are atomic (see module docstring) and whose
    loads (``train --resume``) go through :func:`fusionseg.serialization.read_checkpoint`, so a
    checkpoint carrying code is refused with one line instead of being unpickled."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        """Read ``path`` with :func:`~fusionseg.serialization.read_checkpoint` (whatever
        ``weights_only`` Lightning asks for); tensors go to the CPU unless ``map_location``
        says otherwise.

        Raises:
            CheckpointError: missing, unreadable, code-carrying, or not a training checkpoint.
        """
        obj = read_checkpoint(path, map_location="cpu" if map_location is None else map_location)
        if not isinstance(obj, dict) or "state_dict" not in obj:
            raise CheckpointError(f"{path}: not a fusionseg training checkpoint (no "
                                  "'state_dict'); --resume takes the last.ckpt of a run")
        return obj
