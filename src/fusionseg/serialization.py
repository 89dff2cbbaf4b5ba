"""The one reader of PyTorch checkpoint files: never runs code that a file carries.

A ``.ckpt`` / ``.pth`` / ``.pt`` / ``.bin`` file is a pickle, and unpickling an arbitrary pickle
can run any code it names (``os.system``, ...). Checkpoints come from paper repositories,
drives and hubs, so every place fusionseg reads one (``predict``, ``export``, ``eval``,
``weights convert``, ``train --resume``, pretrained encoders, the Python loaders) goes through
:func:`read_checkpoint`, which unpickles with ``torch.load(weights_only=True)``: tensors,
numbers, strings, ``None`` and the plain containers (dict, list, tuple, ``OrderedDict``), plus
the harmless types released checkpoints commonly carry (:data:`SAFE_GLOBALS`: numpy arrays,
dtypes and scalars; ``argparse.Namespace`` of training arguments). A file naming anything else
is refused with one line naming the file and the object, before any of it is built.

fusionseg's own checkpoints hold only such types (the run config, class names, palette and
modality specs are JSON-like; the random state of exact resume is tensors and lists), so they
always load. There is deliberately no switch to unpickle arbitrary objects: a user who trusts a
legacy file of their own re-saves its state dict once in their own Python session
(docs/weights.md, "Files from elsewhere never run code"), which makes the decision to trust it
theirs and visible.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

__all__ = ["SAFE_GLOBALS", "read_checkpoint"]


def _numpy_globals() -> list[Any]:
    """numpy's array / dtype / scalar reconstructors and its dtype classes (the objects a
    pickled ndarray or numpy scalar names); they only build arrays and numbers."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed np.core to np._core
    out: list[Any] = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    out += [type(np.dtype(t)) for t in ("b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "e",
                                         "f", "d", "g", "?", "U", "S")]
    # files written under numpy 1.x name the same functions by their old module
    out += [(core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (core.multiarray.scalar, "numpy.core.multiarray.scalar")]
    return out


#: objects besides torch's own that a checkpoint may name (see the module docstring)
SAFE_GLOBALS: tuple[Any, ...] = (*_numpy_globals(), argparse.Namespace)

#: how torch names the refused object ("Unsupported global: GLOBAL os.system ...", "Trying to
#: load unsupported GLOBAL posix.system whose module posix is blocked")
_UNSUPPORTED = re.compile(r"[Uu]nsupported (?:global:? )?GLOBAL ([\w.]+)")


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Unpickle a PyTorch file without running code it carries.

    Args:
        path: a ``torch.save`` file (zip or legacy format).
        map_location: as for :func:`torch.load` (default: every tensor on the CPU).

    Returns:
        What the file holds (typically a dict of tensors / a Lightning checkpoint dict).

    Raises:
        CheckpointError: ``path`` does not exist or is a folder; the file names a Python object
            outside the allowed types (one line: the file, the object, why it is refused);
            the file is not a readable PyTorch file (empty, truncated, not a pickle).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = _UNSUPPORTED.search(text)
        if found:
            raise CheckpointError(
                f"{path}: refused: it names the Python object {found.group(1)}, which fusionseg "
                "does not unpickle (only tensors, numbers, strings and plain containers: "
                "unpickling other objects can run code that the file carries)") from None
        detail = next((ln.strip() for ln in text.splitlines()
                       if ln.strip().startswith("Unsupported")), "")
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (a corrupt file, or a pickle that uses "
            f"what torch.load(weights_only=True) does not read{': ' + detail if detail else ''})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError,
            IndexError, KeyError, TypeError, MemoryError) as err:
        # torch.load's errors for empty, truncated or foreign files are of these kinds
        lines = str(err).strip().splitlines()
        detail = f"{type(err).__name__}: {lines[0].split('. ')[0]}" if lines else type(err).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (empty, truncated or "
                              f"not a torch.save file; {detail})") from None
