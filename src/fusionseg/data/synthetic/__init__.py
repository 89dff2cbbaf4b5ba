"""Built-in procedurally rendered datasets (see docs and shared specs): synthcity."""

from .city import SYNTHCITY_CLASSES, render_city

__all__ = ["SYNTHCITY_CLASSES", "render_city"]
