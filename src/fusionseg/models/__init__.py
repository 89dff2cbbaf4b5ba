"""Models: backbones, heads, segmentors, the registry and checkpoint loading.

Public API::

    create_model(cfg: dict) -> nn.Module          # cfg["name"] picks a registered builder
    list_models() -> list[str]
    create_backbone(name, pretrained=None, **overrides) -> Backbone
    load_checkpoint(model, path) -> nn.Module      # strict; CheckpointMismatchError on mismatch
    count_parameters(model) -> {"total": n, "trainable": n}

The contracts (backbone interface, segmentor output and parameter groups, checkpoint
conversion) are described in ``docs/design.md``.
"""

from . import methods  # noqa: F401  (registers the built-in models)
from .backbones import create_backbone, list_backbones
from .registry import MODELS, create_model, list_models, register_model
from .segmentor import (
    AuxiliaryLogits,
    SegmentationOutput,
    Segmentor,
    StreamBatch,
    count_parameters,
    logits_of,
)
from .weights import (
    CheckpointMismatchError,
    InitReport,
    convert_checkpoint,
    init_from_checkpoint,
    load_backbone_weights,
    load_checkpoint,
    load_state_dict_file,
)

__all__ = [
    "MODELS",
    "AuxiliaryLogits",
    "CheckpointMismatchError",
    "SegmentationOutput",
    "Segmentor",
    "StreamBatch",
    "convert_checkpoint",
    "count_parameters",
    "create_backbone",
    "create_model",
    "list_backbones",
    "list_models",
    "load_backbone_weights",
    "InitReport",
    "init_from_checkpoint",
    "load_checkpoint",
    "load_state_dict_file",
    "logits_of",
    "register_model",
]
