"""Typed method options: one pydantic model per method, the single source of its settings.

Each method declares its options once, as a :class:`MethodOptions` subclass beside its
segmentor (``models/methods/<method>/model.py``)::

    class SumFusionOptions(MethodOptions):
        backbone: str = Field("mit_b0", description="MiT encoder name (mit_b0 .. mit_b5)")
        reduce: Literal["mean", "sum", "gate"] = Field("mean", description="...")

    class SumFusionSegmentor(Segmentor):
        Options = SumFusionOptions

        def __init__(self, options: SumFusionOptions | None = None, /, **kwargs): ...

That one declaration gives the constructor its arguments (``SumFusionSegmentor(num_classes=3,
modalities=["rgb", "depth"])`` or ``SumFusionSegmentor(SumFusionOptions(...))``), validates the
``model`` section of a config by method name (:func:`validate_options`: a wrong type or an
unknown option is one line naming the valid options and their types), and is what
``fusionseg info METHOD`` prints (:func:`describe_options`: name, type, default and the field's
one-line ``description``).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError

__all__ = ["MethodOptions", "OptionInfo", "describe_options", "resolve_options",
           "type_name", "validate_options"]

OptionsT = TypeVar("OptionsT", bound="MethodOptions")


class MethodOptions(BaseModel):
    """Base of every method's options: the two every segmentor has.

    Subclasses add their fields, each with a default and a one-line ``description``. Unknown
    keys are errors (``extra="forbid"``); instances are frozen.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(),
                              arbitrary_types_allowed=True)

    #: the registered model name, used in error messages
    method_name: typing.ClassVar[str] = ""

    num_classes: int = Field(gt=0, description="K, the number of classes")
    modalities: tuple[str, ...] = Field(
        ("rgb",), min_length=1, description="ordered modality names, e.g. [rgb, depth]")

    @field_validator("modalities")
    @classmethod
    def _distinct(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        twice = sorted({m for m in v if v.count(m) > 1})
        if twice:
            raise ValueError(f"duplicate modalities {twice}")
        return v

    @field_validator("backbone", check_fields=False)
    @classmethod
    def _registered_backbone(cls, v: str) -> str:
        from .backbones import list_backbones

        if v not in list_backbones():
            raise ValueError(f"unknown backbone {v!r}; registered: {', '.join(list_backbones())}")
        return v


def type_name(annotation: Any) -> str:
    """A short readable name of a field's type: ``int``, ``str | None``,
    ``'mean' | 'sum'``, ``tuple[str, ...]``."""
    if annotation is type(None):
        return "None"
    if annotation is Path:
        return "path"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = typing.get_args(annotation)
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


class OptionInfo(typing.NamedTuple):
    """One option as ``fusionseg info METHOD`` shows it."""

    name: str
    type: str
    default: str
    doc: str


def describe_options(options: type[MethodOptions]) -> list[OptionInfo]:
    """Every field of ``options`` in declaration order: name, type, default (``required``
    when there is none) and its one-line description."""
    out = []
    for name, f in options.model_fields.items():
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        out.append(OptionInfo(name, type_name(f.annotation), default, f.description or ""))
    return out


def _one_line(method: str, options: type[MethodOptions], err: ValidationError) -> str:
    problems = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(options)"
        if e["type"] == "extra_forbidden":
            problems.append(f"unknown option {where!r}")
        elif e["type"] == "missing":
            problems.append(f"missing required option {where!r}")
        else:
            problems.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    valid = ", ".join(f"{i.name}: {i.type}" for i in describe_options(options))
    return f"model {method!r}: {'; '.join(problems)}. Valid options: {valid}"


def validate_options(method: str, options: type[OptionsT], values: Mapping[str, Any]) -> OptionsT:
    """``values`` validated into ``options``.

    Raises:
        ConfigError: a wrong type or value, an unknown or a missing option; one line naming
            the method, each problem, and the valid options with their types.
    """
    try:
        return options.model_validate(dict(values))
    except ValidationError as err:
        raise ConfigError(_one_line(method, options, err)) from None


def resolve_options(options_cls: type[OptionsT], options: OptionsT | None, kwargs: Mapping[str, Any]) -> OptionsT:
    """The constructor rule of every segmentor: an options instance, or keyword arguments
    validated into one (not both).

    Raises:
        ConfigError: both given, or the keywords do not validate (see :func:`validate_options`).
    """
    if options is not None:
        if kwargs:
            raise ConfigError(f"give either a {options_cls.__name__} or keyword options, "
                              f"not both (got {sorted(kwargs)})")
        if not isinstance(options, options_cls):
            raise ConfigError(f"expected {options_cls.__name__}, got {type(options).__name__}")
        return options
    name = getattr(options_cls, "method_name", None) or options_cls.__name__
    return validate_options(name, options_cls, kwargs)
