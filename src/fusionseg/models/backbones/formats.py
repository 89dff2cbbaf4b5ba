"""How a backbone family recognises pretrained-encoder files and Hugging Face configs.

Every backbone file registers its family once, next to its builders and its pretrained files::

    FAMILY = register_family(BackboneFamily(
        "mit", MixVisionTransformer, MIT_SETTINGS,
        recognise_state_dict=recognise_state_dict,          # key names and shapes -> settings
        hf_configs={"segformer": SEGFORMER_CONFIG_DEFAULTS}, # transformers model_type -> defaults
        recognise_hf_config=recognise_hf_config))           # config.json -> settings

:func:`fusionseg.models.weights.detect_backbone` (``fusionseg weights convert`` without options)
asks every registered family in turn (:func:`backbone_families`): a state dict goes to each
family's ``recognise_state_dict`` until one recognises it, a ``config.json`` to the family that
declares its ``model_type``. Each family answers with a :class:`DetectedBackbone`: the closest
published setting (:meth:`BackboneFamily.match`) and the constructor overrides that turn it into
the file's architecture. The conversion itself is the backbone's ``checkpoint_filter_fn``.

The helpers below (:func:`count_indices`, :func:`divisor_heads`, :func:`as_pair`,
:func:`under_prefix`, :func:`top_level_names`) are what several families need to read
architectures from key names and shapes.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

__all__ = [
    "BackboneFamily",
    "DetectedBackbone",
    "as_pair",
    "backbone_families",
    "count_indices",
    "divisor_heads",
    "register_family",
    "top_level_names",
    "under_prefix",
]

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class DetectedBackbone:
    """What :func:`fusionseg.models.weights.detect_backbone` found: build it with :meth:`build`.

    Attributes:
        name: our registered backbone name (``fusionseg info``), e.g. ``mit_b2``,
            ``dinov2_vitb14``, ``sam2.1_hiera_b+``, ``sam_vit_l``, ``resnet101``.
        overrides: constructor overrides of ``create_backbone(name, **overrides)``; empty for
            the published settings of ``name``. A non-standard architecture gets the closest
            standard name plus every setting that differs.
        family: the :class:`BackboneFamily` name (``"mit"``, ``"dinov2"``, ``"sam2_hiera"``,
            ``"sam_vit"``, ``"resnet"``, ...).
        origin: ``"config.json"`` (a Hugging Face folder's config) or ``"state dict"`` (key names
            and shapes).
        key_format: ``"hugging face"`` or ``"official"`` key names in the source.
    """

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    origin: str = "state dict"
    key_format: str = "official"

    def build(self, **extra: Any) -> nn.Module:
        """``create_backbone(name, **overrides, **extra)`` (random weights)."""
        from . import create_backbone

        return create_backbone(self.name, **{**self.overrides, **extra})

    def describe(self) -> str:
        """One line: name, overrides, and what it was read from."""
        over = "" if not self.overrides else " with " + ", ".join(
            f"{k}={_plain(v)}" for k, v in self.overrides.items())
        return f"{self.name}{over} ({self.key_format} keys, from the {self.origin})"

    def metadata(self) -> dict[str, str]:
        """``fusionseg_backbone`` and ``fusionseg_backbone_overrides`` (JSON) for the converted
        file's metadata."""
        return {"fusionseg_backbone": self.name,
                "fusionseg_backbone_overrides": json.dumps(
                    {k: _plain(v) for k, v in self.overrides.items()})}


def _plain(v: Any) -> Any:
    """Tuples -> lists (JSON and YAML friendly), recursively."""
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def _norm(v: Any) -> Any:
    """Comparable form of a setting: sequences -> tuples."""
    if isinstance(v, (tuple, list)):
        return tuple(_norm(x) for x in v)
    return v


@dataclass(frozen=True)
class BackboneFamily:
    """The backbones of one class, their published settings and the files they recognise.

    Attributes:
        name: family name (``DetectedBackbone.family``).
        backbone_class: the backbone class; its constructor defaults complete ``settings``.
        settings: registered backbone name -> the constructor keywords of its published model
            (registry order: the first of equally close settings wins in :meth:`match`).
        recognise_state_dict: ``(state_dict) -> DetectedBackbone | None``: the backbone of a
            pretrained-encoder state dict (official or Hugging Face keys; a DDP ``module.``
            prefix is already stripped), or ``None`` when it is not this family's. It must be
            conservative: a whole segmentation model is no encoder file. Raises
            :class:`~fusionseg.errors.CheckpointError` for a file of the family that our
            backbone cannot express.
        hf_configs: ``transformers`` ``model_type`` -> the defaults of its configuration class
            (used for keys a ``config.json`` leaves out).
        hf_nested: ``model_type`` -> ``(sub-config key, its model_type)`` for models whose
            encoder sits in a sub-config (``sam`` -> ``vision_config``).
        recognise_hf_config: ``(model_type, config) -> DetectedBackbone`` for one of
            ``hf_configs`` (``config`` completed with its defaults). Raises
            :class:`~fusionseg.errors.CheckpointError` for settings our backbone cannot express.
    """

    name: str
    backbone_class: type[nn.Module]
    settings: Mapping[str, Mapping[str, Any]]
    recognise_state_dict: Callable[[StateDict], DetectedBackbone | None] | None = None
    hf_configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hf_nested: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    recognise_hf_config: Callable[[str, dict[str, Any]], DetectedBackbone] | None = None

    def published(self) -> dict[str, dict[str, Any]]:
        """``{name: full constructor keywords}``: :attr:`settings` over the constructor
        defaults of :attr:`backbone_class`, in registry order."""
        defaults = {k: p.default
                    for k, p in inspect.signature(self.backbone_class.__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        return {n: {**defaults, **kw} for n, kw in self.settings.items()}

    def match(self, found: Mapping[str, Any], key_format: str, origin: str,
              candidates: Sequence[str] | None = None) -> DetectedBackbone:
        """The published setting closest to ``found`` (fewest differing settings, the first in
        registry order on ties; among ``candidates`` when given) and the overrides that turn it
        into ``found``.

        Args:
            found: constructor keywords read from the file.
            key_format: ``"official"`` or ``"hugging face"``.
            origin: ``"state dict"`` or ``"config.json"``.
            candidates: the names to choose from (default: all).
        """
        table = self.published()
        names = [n for n in table if candidates is None or n in candidates]
        want = {k: _norm(v) for k, v in found.items()}

        def diff(n: str) -> dict[str, Any]:
            return {k: v for k, v in want.items() if _norm(table[n].get(k)) != v}

        best = min(names, key=lambda n: len(diff(n)))
        return DetectedBackbone(best, diff(best), self.name, origin, key_format)


#: family name -> :class:`BackboneFamily`, in registration order
_FAMILIES: dict[str, BackboneFamily] = {}


def register_family(family: BackboneFamily) -> BackboneFamily:
    """Register ``family`` (its file formats become known to ``detect_backbone``); returns it.

    Registering a family of the same name and backbone class again (a re-imported module)
    replaces it.

    Raises:
        ValueError: the name is registered to another backbone class.
    """
    old = _FAMILIES.get(family.name)
    if old is not None and _qualname(old.backbone_class) != _qualname(family.backbone_class):
        raise ValueError(f"backbone family {family.name!r} is already registered "
                         f"({_qualname(old.backbone_class)})")
    _FAMILIES[family.name] = family
    return family


def backbone_families() -> list[BackboneFamily]:
    """The registered families, in registration order."""
    return list(_FAMILIES.values())


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------- helpers
def under_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> StateDict:
    """The keys starting with ``prefix``, prefix removed (others dropped)."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def top_level_names(state_dict: Mapping[str, Tensor]) -> set[str]:
    """The first dotted component of every key (``{"backbone", "decode_head"}``)."""
    return {k.split(".", 1)[0] for k in state_dict}


def count_indices(state_dict: Mapping[str, Tensor], pattern: str) -> int:
    """Number of distinct first groups of ``pattern`` among the keys (e.g. block indices with
    ``r"^blocks\\.(\\d+)\\.norm1\\.weight$"``)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in state_dict if (m := rx.match(k))})


def divisor_heads(dim: int, want: int) -> int:
    """The largest head count ``<= want`` (at least 1) that divides ``dim``."""
    h = max(1, want)
    while dim % h:
        h -= 1
    return h


def as_pair(v: Any) -> tuple[int, int]:
    """An ``int`` or a pair of a config as ``(int, int)``."""
    return (int(v), int(v)) if isinstance(v, (int, float)) else tuple(int(x) for x in v)
