"""Atomic file writing: a file either fully replaces its target or leaves it untouched.

Every file fusionseg writes that a later step reads (checkpoints, converted and fetched
weights, ONNX exports, result JSON) goes through :func:`atomic_path`, so a crash, a kill or a
full disk in the middle of a write never leaves a truncated file where a good one was.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (``.{name}.{random}.tmp``, not yet created) to
    write the file to; on a clean exit it is fsynced and ``os.replace``-d over ``path``, on
    any exception it is removed and ``path`` stays as it was.

    The parent folder is created when missing.

    Raises:
        FileNotFoundError: the body exited cleanly without creating the temporary file.
        OSError: from fsync / rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: nothing was written for {path}")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
