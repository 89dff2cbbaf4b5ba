"""mle_sam: see model.py."""

from . import model

__all__ = ["model"]
