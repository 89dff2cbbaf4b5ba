"""baselines: see model.py."""

from . import model

__all__ = ["model"]
