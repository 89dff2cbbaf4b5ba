"""AsymFusion's released checkpoint format: detection and conversion to our keys.

Source: GitHub ``yikaiw/AsymFusion``, ``models/model.py`` (``RefineNet``: ``conv1``, ``bn1``,
``layer1..4``, decoder ``p_ims1d2_outl*``, ``adapt_stage*``, ``mflow_conv_g*``, ``clf_conv``,
``alpha``) and ``models/parallel.py`` (``ModuleParallel`` wraps each shared convolution as
``.module``; ``BatchNorm2dParallel`` holds one BatchNorm per modality as ``bn_0``, ``bn_1``).

Release -> ours::

    conv1.module.weight              -> backbone.conv1.weight
    bn1.bn_0.*                       -> backbone.bn1.bn_0.*
    layer{1..4}.*  (.module dropped) -> backbone.layer{1..4}.*
    p_ims1d2_outl*, adapt_stage*, mflow_conv_g*, clf_conv*  -> decode_head.*
    alpha                            -> alpha

The files the release's ``Saver`` writes (``{'segmenter': state_dict, ...}``, DataParallel
``module.`` keys) are unwrapped by :func:`~fusionseg.models.weights.load_checkpoint` before
this conversion.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from ...weights import rename_keys

__all__ = ["RELEASE_RENAMES", "checkpoint_filter_fn", "is_released_format"]

#: ``(pattern, replacement)`` rules applied after the ``.module`` segments are dropped
RELEASE_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^(conv1|bn1|layer\d)\.", r"backbone.\1."),
    (r"^(p_ims1d2_outl|adapt_stage|mflow_conv_g|clf_conv)", r"decode_head.\1"),
)

#: ``ModuleParallel``'s ``.module`` segment, wherever it occurs in a key
_MODULE_SEGMENT = re.compile(r"\.module(?=\.|$)")


def is_released_format(state_dict: Mapping[str, Tensor]) -> bool:
    """True for the official layout (its stem convolution is ``conv1.module.weight``)."""
    return "conv1.module.weight" in state_dict


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor],
                         model: nn.Module | None = None) -> dict[str, Tensor]:
    """Release keys -> ours: ``.module`` segments dropped, encoder under ``backbone.``,
    decoder under ``decode_head.`` (tensors not copied). A state dict not in the released
    format (:func:`is_released_format`), ours included, comes back unchanged. ``model`` is
    not needed (the renaming does not depend on it)."""
    if not is_released_format(state_dict):
        return dict(state_dict)
    sd = {_MODULE_SEGMENT.sub("", k): v for k, v in state_dict.items()}
    return rename_keys(sd, RELEASE_RENAMES)
