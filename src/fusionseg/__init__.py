"""fusionseg: multimodal semantic segmentation with parameter-efficient adaptation of vision encoders."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "from_pretrained"]

#: names served from submodules on first use (PEP 562), so that ``import fusionseg`` stays
#: light: ``fusionseg.from_pretrained`` imports torch and the models only when called for
_LAZY = frozenset({"from_pretrained"})


def __getattr__(name: str) -> Any:
    """``fusionseg.from_pretrained`` (:func:`fusionseg.hub.from_pretrained`), imported on first
    access; any other unknown name raises ``AttributeError``."""
    if name in _LAZY:
        from . import hub  # the one lazy import of the package root (tests/test_layering.py)

        return getattr(hub, name)
    raise AttributeError(f"module 'fusionseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
