"""Backbones: ``create_backbone(name, pretrained=None, **overrides)``.

Every backbone meets the contract of :mod:`.base` (:class:`~.base.Backbone`) and registers
itself in its own file, when the file is imported: its builders in :data:`~.base.BACKBONES`,
its family's file formats (:func:`~.formats.register_family`) and its pretrained files
(:func:`~fusionseg.models.catalogue.register_pretrained`). Known names: ``mit_b0 .. mit_b5``
(SegFormer Mix Transformer, :mod:`.mit`), ``dinov2_vit{s,b,l,g}14[_reg4]`` (DINOv2 ViT,
:mod:`.dinov2`), ``sam2.1_hiera_{t,s,b+,l}`` (SAM 2.1 Hiera trunk :class:`Hiera`,
:mod:`.hiera`), ``sam_vit_{b,l,h}`` (SAM v1 image encoder, :mod:`.sam_vit`), ``resnet50 / 101 /
152`` (torchvision layout, :mod:`.resnet`).
"""

# (not sorted: the backbone files register in this order, the catalogue's listing order)
from __future__ import annotations  # noqa: I001

import inspect
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from ...errors import ConfigError

# The built-in backbone files, imported for their registrations; this order is the listing
# order of the pretrained-weight catalogue (``fusionseg weights list``).
from . import mit  # noqa: F401
from . import dinov2  # noqa: F401
from . import hiera  # noqa: F401
from . import sam_vit  # noqa: F401
from . import resnet  # noqa: F401
from .base import BACKBONES, Backbone, TransformerBackbone, ViTBackbone, register_backbone
from .dinov2 import DinoVisionTransformer
from .hiera import Hiera
from .mit import MixVisionTransformer
from .resnet import ResNet
from .sam_vit import SamVisionTransformer

__all__ = [
    "BACKBONES",
    "Backbone",
    "DinoVisionTransformer",
    "Hiera",
    "MixVisionTransformer",
    "ResNet",
    "SamVisionTransformer",
    "TransformerBackbone",
    "ViTBackbone",
    "backbone_class",
    "backbone_parameters",
    "check_backbone_overrides",
    "create_backbone",
    "default_decoder_dim",
    "list_backbones",
    "register_backbone",
]


def list_backbones() -> list[str]:
    """Sorted names accepted by :func:`create_backbone`."""
    return BACKBONES.names()


def default_decoder_dim(name: str) -> int:
    """Decode-head width declared with backbone ``name`` (SegFormer: 256 for mit_b0/b1, 512
    otherwise); 512 when the backbone declares none."""
    if name not in BACKBONES:
        return 512
    return int(BACKBONES.entry(name).info.get("decoder_dim", 512))


def backbone_class(name: str) -> type[nn.Module] | None:
    """The class backbone ``name`` builds: its builder's return annotation (set by
    :func:`~.base.register_variants`; a hand-written builder declares it, ``def toy(**overrides)
    -> ToyConvNet``). ``None`` when the builder declares no class or its annotation does not
    resolve.

    Raises:
        ConfigError: unknown ``name`` (the message lists the known names).
    """
    builder = BACKBONES.get(name)
    try:
        built = inspect.get_annotations(builder, eval_str=True).get("return")
    except (NameError, AttributeError, TypeError, SyntaxError):  # unresolvable annotation
        return None
    return built if isinstance(built, type) else None


def backbone_parameters(name: str) -> list[str] | None:
    """The keyword arguments backbone ``name`` accepts as overrides: the parameters of its
    class's constructor (:func:`backbone_class`), in order. ``None`` when that is not known (no
    class declared, or a constructor taking ``**kwargs``).

    Raises:
        ConfigError: unknown ``name``.
    """
    built = backbone_class(name)
    if built is None:
        return None
    params = inspect.signature(built).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_backbone_overrides(name: str, overrides: Iterable[str]) -> None:
    """Check that backbone ``name`` takes every keyword in ``overrides``.

    Raises:
        ConfigError: unknown ``name``, or a keyword its constructor does not take (one line
            naming the backbone, its class, the keywords and the ones it takes).
    """
    takes = backbone_parameters(name)
    bad = [] if takes is None else sorted(set(overrides) - set(takes))
    if bad:
        raise ConfigError(f"backbone {name!r} ({backbone_class(name).__name__}) does not take "
                          f"{', '.join(map(repr, bad))}; it takes {', '.join(takes)}")


def create_backbone(name: str, pretrained: str | Path | None = None, **overrides) -> nn.Module:
    """Build a backbone by name and optionally load pretrained weights strictly.

    Args:
        name: one of :func:`list_backbones` (``mit_b0 .. mit_b5``).
        pretrained: a local ``.pth``/``.pt``/``.safetensors`` state dict (or Hugging Face model
            folder) in an official or Hugging Face format the backbone's
            ``checkpoint_filter_fn`` maps (e.g. NVlabs ``mit_b2.pth``), or a name of the
            pretrained-weight catalogue (``mit_b2``, ``dinov2_vitl14``, ``sam2.1_hiera_b+``;
            ``fusionseg weights list``) fetched before with ``fusionseg weights fetch NAME``
            (:func:`fusionseg.models.catalogue.resolve_pretrained`); ``None`` = random init.
        **overrides: constructor arguments replacing the official ones, e.g.
            ``embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
            drop_path_rate=0.0``.

    Returns:
        The backbone (a :class:`~.base.Backbone`: ``forward(x [B, 3, H, W]) -> list`` of NCHW
        maps at ``strides``, with ``out_channels``).

    Raises:
        ConfigError: unknown ``name`` (the message lists the known names), an override the
            backbone's constructor does not take (:func:`check_backbone_overrides`).
        WeightsNotAvailableError: a catalogue name not fetched yet (a ``FileNotFoundError``;
            one line: ``run `fusionseg weights fetch NAME` or put FILE at PATH``).
        FileNotFoundError: ``pretrained`` is neither a file nor a catalogue name (the message
            names both options).
        ValueError / CheckpointMismatchError: from
            :func:`fusionseg.models.weights.load_backbone_weights`.
    """
    builder = BACKBONES.get(name)
    check_backbone_overrides(name, overrides)
    path = None
    if pretrained is not None:
        from ..catalogue import resolve_pretrained

        path = resolve_pretrained(pretrained)  # before building: a missing file fails fast
    model = builder(**overrides)
    if path is not None:
        from ..weights import load_backbone_weights

        load_backbone_weights(model, path)
    return model
