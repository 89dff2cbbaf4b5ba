"""The one reading rule of ``load_pretrained(path)`` in this package (the SAM 2 FPN neck and the
SAM 2 / SAM v1 semantic decoder), so both take the same ``path`` with the same meaning."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from ...weights import load_state_dict_file

__all__ = ["PretrainedSource", "read_pretrained"]

#: what ``load_pretrained(path)`` accepts: a file / folder / catalogue name, or a state dict
PretrainedSource = str | Path | Mapping[str, Tensor]


def read_pretrained(path: PretrainedSource) -> tuple[dict[str, Tensor], str | Path]:
    """The state dict behind ``path``, and how to name it in error messages.

    Args:
        path: a local ``.pt`` / ``.pth`` / ``.safetensors`` file, a Hugging Face model folder
            or a catalogue name (read by :func:`~fusionseg.models.weights.load_state_dict_file`,
            which unwraps ``{"model": ...}`` and the other usual nestings); or a state dict
            already in memory, whose ``{"model": ...}`` nesting (a raw ``torch.load`` of an
            official SAM 2 file) is unwrapped the same way.

    Returns:
        ``(state_dict, where)``: a new ``dict`` (keys as stored) and ``path`` itself, or
        ``"<state dict>"`` for a mapping.

    Raises:
        CheckpointError: an unreadable or missing file (see ``load_state_dict_file``).
    """
    if isinstance(path, (str, Path)):
        return load_state_dict_file(path), path
    sd = dict(path)
    inner = sd.get("model")
    if isinstance(inner, Mapping) and not isinstance(inner, Tensor):
        sd = dict(inner)
    return sd, "<state dict>"
