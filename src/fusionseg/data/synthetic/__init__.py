"""Built-in procedurally rendered datasets (see docs and shared specs): synthcity (street
scenes, DELIVER layout) and synthaerial (orthophoto tiles with DSM, ISPRS Vaihingen layout)."""

from .aerial import SYNTHAERIAL_CLASSES, render_aerial
from .city import SYNTHCITY_CLASSES, render_city

__all__ = ["SYNTHAERIAL_CLASSES", "SYNTHCITY_CLASSES", "render_aerial", "render_city"]
