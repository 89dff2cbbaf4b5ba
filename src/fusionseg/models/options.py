"""Typed method options: one pydantic model per method, the single source of its settings.

Each method declares its options once, as a :class:`MethodOptions` subclass beside its
segmentor (``models/methods/<method>/model.py``)::

    class SumFusionOptions(MethodOptions):
        backbone: str = Field("mit_b0", description="MiT encoder name (mit_b0 .. mit_b5)")
        reduce: Literal["mean", "sum", "gate"] = Field("mean", description="...")

    class SumFusionSegmentor(Segmentor):
        Options = SumFusionOptions

        def __init__(self, options: SumFusionOptions | None = None, /, **kwargs): ...

A method built on one registered backbone derives its options from :class:`BackboneOptions`,
which checks the backbone against the method (``backbone_types``, the arguments it passes) when
the config is read, and builds it (:meth:`BackboneOptions.build_backbone`).

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
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ..errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BackboneKwargs", "BackboneOptions", "DropPathRate", "MethodOptions", "OptionInfo",
           "Pretrained", "describe_options", "resolve_options", "type_name", "validate_options"]

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


#: type of a ``pretrained`` option: backbone weights, a local file or a catalogue name
Pretrained = Annotated[str | Path | None, Field(
    description="backbone weights: a local file or a catalogue name (None: random)")]
#: type of a ``backbone_kwargs`` option: backbone constructor overrides
BackboneKwargs = Annotated[dict[str, Any] | None, Field(
    description="extra backbone constructor overrides (e.g. tiny test widths)")]
#: type of a ``drop_path_rate`` option: the backbone's stochastic depth, in [0, 1)
DropPathRate = Annotated[float, Field(ge=0, lt=1, description="encoder stochastic depth")]


class BackboneOptions(MethodOptions):
    """Base of the options of a method built on one registered backbone.

    A subclass declares the fields ``backbone: str``, ``pretrained: Pretrained`` and
    ``backbone_kwargs: BackboneKwargs`` (and one per name in :attr:`backbone_overrides`, e.g.
    ``drop_path_rate: DropPathRate``) itself, with its own default and, where it says more,
    its own ``description``: declared here they would come first in ``fusionseg info`` (pydantic
    lists inherited fields before a subclass's own). A subclass that misses one is a
    ``TypeError`` when it is defined.

    Validation (config errors at config reading, see :func:`validate_options`):

    * ``backbone`` must be registered, build one of :attr:`backbone_types` (when set) and take
      every argument of :attr:`backbone_overrides`;
    * ``backbone_kwargs`` must not repeat ``pretrained`` or an argument of
      :attr:`backbone_overrides` (they are top-level options) and must be arguments the
      backbone takes.

    The checks use the class a backbone's builder declares
    (:func:`~fusionseg.models.backbones.backbone_class`); for a backbone that declares none
    they happen in :meth:`build_backbone` instead.
    """

    #: the backbone classes the method takes (empty: any registered backbone)
    backbone_types: ClassVar[tuple[type, ...]] = ()
    #: backbone constructor arguments the method passes from its options of the same name
    backbone_overrides: ClassVar[tuple[str, ...]] = ()

    if TYPE_CHECKING:
        backbone: str
        pretrained: str | Path | None
        backbone_kwargs: dict[str, Any] | None

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        needed = ("backbone", "pretrained", "backbone_kwargs", *cls.backbone_overrides)
        missing = [f for f in needed if f not in cls.model_fields]
        if missing:
            raise TypeError(f"{cls.__name__} must declare the backbone fields {missing}")

    @classmethod
    def _type_error(cls, name: str, built: type) -> str:
        """The message for backbone ``name`` building ``built``, not one of the types."""
        from .backbones import backbone_class, list_backbones

        fitting = [n for n in list_backbones()
                   if (c := backbone_class(n)) is not None and issubclass(c, cls.backbone_types)]
        kinds = " or ".join(t.__name__ for t in cls.backbone_types)
        return (f"{cls.method_name or cls.__name__} takes a backbone of type {kinds} "
                f"({', '.join(fitting)}), not {name!r} ({built.__name__})")

    @field_validator("backbone", check_fields=False)
    @classmethod
    def _usable_backbone(cls, v: str) -> str:
        from .backbones import backbone_class, backbone_parameters, list_backbones

        if v not in list_backbones():
            raise ValueError(f"unknown backbone {v!r}; registered: {', '.join(list_backbones())}")
        built = backbone_class(v)
        if built is not None and cls.backbone_types and not issubclass(built, cls.backbone_types):
            raise ValueError(cls._type_error(v, built))
        takes = backbone_parameters(v)
        lacking = [k for k in cls.backbone_overrides if takes is not None and k not in takes]
        if lacking:
            raise ValueError(f"{v!r} ({built.__name__}) takes no {', '.join(lacking)}, which "
                             f"{cls.method_name or cls.__name__} passes to its backbone from its "
                             f"option{'s' if len(lacking) > 1 else ''} of that name; choose a "
                             "backbone that takes it")
        return v

    @field_validator("backbone_kwargs", check_fields=False)
    @classmethod
    def _backbone_arguments(cls, v: dict[str, Any] | None,
                            info: ValidationInfo) -> dict[str, Any] | None:
        from .backbones import check_backbone_overrides

        clash = sorted({"pretrained", *cls.backbone_overrides} & set(v or {}))
        if clash:
            raise ValueError(f"must not repeat {clash}: set them as top-level model keys")
        # no backbone here when it did not validate (or is declared after backbone_kwargs):
        # create_backbone checks the arguments then
        if v and isinstance(info.data.get("backbone"), str):
            check_backbone_overrides(info.data["backbone"], v)
        return v

    def build_backbone(self) -> nn.Module:
        """The backbone: :func:`~fusionseg.models.backbones.create_backbone` of ``backbone``
        with ``pretrained`` loaded, the :attr:`backbone_overrides` options and
        ``backbone_kwargs``.

        Raises:
            ConfigError: the backbone is not one of :attr:`backbone_types` (a backbone whose
                builder declares no class: not checked before), or does not take an argument.
            FileNotFoundError, CheckpointMismatchError: from loading ``pretrained``.
        """
        from .backbones import create_backbone

        overrides = {k: getattr(self, k) for k in self.backbone_overrides}
        backbone = create_backbone(self.backbone, pretrained=self.pretrained, **overrides,
                                   **dict(self.backbone_kwargs or {}))
        if self.backbone_types and not isinstance(backbone, self.backbone_types):
            raise ConfigError(self._type_error(self.backbone, type(backbone)))
        return backbone


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
