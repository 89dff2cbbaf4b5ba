"""Models: backbones, heads, segmentors, the registry and checkpoint loading.

Public API::

    create_model(cfg: dict) -> nn.Module          # cfg["name"] picks a registered builder
    list_models() -> list[str]
    create_backbone(name, pretrained=None, **overrides) -> nn.Module
    load_checkpoint(model, path) -> nn.Module      # strict; CheckpointMismatchError on mismatch
"""

from . import segmentors  # noqa: F401  (registers the built-in builders)
from .backbones import create_backbone, list_backbones
from .registry import create_model, list_models, register_model
from .segmentors.base import SegmentationOutput, Segmentor
from .weights import (
    CheckpointMismatchError,
    load_backbone_weights,
    load_checkpoint,
    load_state_dict_file,
)

__all__ = [
    "CheckpointMismatchError",
    "SegmentationOutput",
    "Segmentor",
    "create_backbone",
    "create_model",
    "list_backbones",
    "list_models",
    "load_backbone_weights",
    "load_checkpoint",
    "load_state_dict_file",
    "register_model",
]
