"""Backbone registry: ``create_backbone(name, pretrained=None, **overrides)``.

Known names: ``mit_b0 .. mit_b5`` (SegFormer Mix Transformer, see :mod:`.mit`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from .mit import MIT_SETTINGS, MixVisionTransformer

__all__ = [
    "BACKBONES",
    "MixVisionTransformer",
    "create_backbone",
    "default_decoder_dim",
    "list_backbones",
]


def _mit_builder(name: str) -> Callable[..., nn.Module]:
    def build(**overrides) -> MixVisionTransformer:
        kwargs = dict(MIT_SETTINGS[name], drop_path_rate=0.1)
        kwargs.update(overrides)
        return MixVisionTransformer(**kwargs)

    build.__doc__ = f"Build {name} (official settings, overridable by keyword)."
    return build


#: name -> builder(**overrides) -> nn.Module
BACKBONES: dict[str, Callable[..., nn.Module]] = {n: _mit_builder(n) for n in MIT_SETTINGS}

# SegFormer decode-head embedding dim used with each backbone (paper / official configs).
_DECODER_DIMS = {"mit_b0": 256, "mit_b1": 256}


def list_backbones() -> list[str]:
    """Sorted names accepted by :func:`create_backbone`."""
    return sorted(BACKBONES)


def default_decoder_dim(name: str) -> int:
    """SegFormer head width for backbone ``name``: 256 for mit_b0/b1, 512 otherwise."""
    return _DECODER_DIMS.get(name, 512)


def create_backbone(name: str, pretrained: str | Path | None = None, **overrides) -> nn.Module:
    """Build a backbone by name and optionally load a local checkpoint strictly.

    Args:
        name: one of :func:`list_backbones` (``mit_b0 .. mit_b5``).
        pretrained: local path of a ``.pth``/``.pt``/``.safetensors`` state dict in the
            official key format (e.g. NVlabs ``mit_b2.pth``); ``None`` = random init.
        **overrides: constructor arguments replacing the official ones, e.g.
            ``embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
            drop_path_rate=0.0``.

    Returns:
        The backbone module (``forward(x [B, 3, H, W]) -> list of 4 NCHW maps``).

    Raises:
        ValueError: unknown ``name`` (the message lists the known names).
        TypeError: an override the constructor does not accept.
        FileNotFoundError / ValueError / CheckpointMismatchError: from
            :func:`fusionseg.models.weights.load_backbone_weights`.
    """
    if name not in BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}"
        )
    model = BACKBONES[name](**overrides)
    if pretrained is not None:
        from ..weights import load_backbone_weights

        load_backbone_weights(model, pretrained)
    return model
