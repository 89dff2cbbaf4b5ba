"""The errors fusionseg raises for bad input, as one hierarchy.

Every problem with what a user gave fusionseg (a config, a dataset, a checkpoint, a run that
cannot start) is a :class:`FusionsegError`; the command line prints it as one line naming the
file, modality and problem and exits with status 2. Any other exception is a bug in fusionseg
(or in a library it calls): the command line keeps its traceback, asks for a report and exits
with status 1 (:func:`fusionseg.cli.cli_errors`).

::

    FusionsegError
    ├── ConfigError       a config file, --set override or option value is invalid
    ├── DataError         a missing / unreadable / malformed data file, a bad dataset layout
    ├── CheckpointError   a checkpoint that cannot be read safely or does not fit the model
    └── RunError          a run that cannot start or finish (would overwrite a run, export fails)

The first three are also ``ValueError`` and :class:`RunError` a ``RuntimeError``, so code that
caught those before the hierarchy existed still catches them.
"""

from __future__ import annotations

import os

__all__ = ["CheckpointError", "ConfigError", "DataError", "FusionsegError", "RunError"]


class FusionsegError(Exception):
    """Base of every error caused by the user's input (exit status 2 on the command line)."""


class ConfigError(FusionsegError, ValueError):
    """A config file, ``--set`` override or option value is invalid; the message names the file
    (when there is one) and the key."""


class DataError(FusionsegError, ValueError):
    """A data problem: missing/unreadable file, wrong bit depth or channel count, size mismatch,
    label value out of range, bad dataset layout or dataset.yaml.

    ``str(err)`` is one line: ``"<file> [modality '<name>']: <problem>"`` (the bracket only when
    the modality is known, the file only when there is one). The parts are kept as attributes
    ``path``, ``modality`` and ``problem`` for programmatic use (e.g. ``fusionseg data check``).
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str | os.PathLike | None = None,
        modality: str | None = None,
    ) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.modality = modality
        prefix = ""
        if self.path is not None:
            prefix = self.path
        if modality is not None:
            prefix = f"{prefix} [modality '{modality}']" if prefix else f"[modality '{modality}']"
        super().__init__(f"{prefix}: {problem}" if prefix else problem)


class CheckpointError(FusionsegError, ValueError):
    """A checkpoint (or weights file) that is missing, cannot be read safely (it holds Python
    objects beyond tensors and plain containers, so reading it could run code), is not a
    checkpoint of the expected kind, or does not fit the model. The message names the file."""


class RunError(FusionsegError, RuntimeError):
    """A run that cannot start or finish: it would overwrite an earlier run's checkpoints, a
    model that cannot be exported, an export whose check fails."""
