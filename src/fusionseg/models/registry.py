"""Model registry: ``name -> segmentor class`` (or builder) (a :class:`fusionseg.registry.Registry`).

    register_model("sum_fusion", tiny=SUM_FUSION_TINY)(SumFusionSegmentor)

    model = create_model({"name": "sum_fusion", "modalities": ["rgb", "depth"], "num_classes": 25})

``cfg["name"]`` picks the entry; every other key is an option. A registered segmentor class
declares its options once, as a typed :class:`~fusionseg.models.options.MethodOptions` subclass
(``cls.Options``): the keys are validated into it (a wrong type, value or unknown key is a
one-line ConfigError naming the valid options and their types) and the class is built from it.
A plain builder function (user code) is still accepted; its keys are checked against its
signature. Generic keys handled here for every model, not passed to the builder:

* ``grad_checkpointing: true`` - activation checkpointing per backbone block
  (``model.set_grad_checkpointing(True)`` on the built model).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .options import MethodOptions, validate_options

__all__ = ["MODELS", "register_model", "create_model", "list_models", "get_builder",
           "options_of", "validate_model_options"]

#: registered builders, ``name -> builder(**kwargs) -> nn.Module``; each entry's ``info``
#: holds ``segmentor`` (the class the builder returns) and its ``tiny`` the test settings.
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(
    name: str,
    *,
    segmentor: type | None = None,
    tiny: Mapping[str, Any] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model builder under ``name``.

    Args:
        name: the ``model.name`` of configs.
        segmentor: the :class:`~fusionseg.models.segmentor.Segmentor` subclass the builder
            returns; :func:`fusionseg.models.weights.convert_checkpoint` asks it whether a file
            is in its method's released format.
        tiny: builder keyword arguments (``num_classes`` and ``modalities`` included) giving a
            tiny model, built by ``tests/models/test_contract.py``.

    Raises:
        ValueError: ``name`` is already registered to a different builder.
    """
    def deco(obj: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        cls = segmentor if segmentor is not None else (obj if isinstance(obj, type) else None)
        return MODELS.register(name, tiny=tiny, segmentor=cls)(obj)

    return deco


def options_of(name: str) -> type[MethodOptions] | None:
    """The typed options class of model ``name`` (``None`` for a plain builder function).

    Raises:
        ConfigError: unknown name.
    """
    obj = get_builder(name)
    opts = getattr(obj, "Options", None)
    return opts if isinstance(opts, type) and issubclass(opts, MethodOptions) else None


def validate_model_options(name: str, values: Mapping[str, Any]) -> MethodOptions | None:
    """``values`` (a model section without ``name`` and ``grad_checkpointing``) validated into
    model ``name``'s options; ``None`` for a plain builder function (checked at build time).

    Raises:
        ConfigError: unknown name; see :func:`~fusionseg.models.options.validate_options`.
    """
    opts = options_of(name)
    return None if opts is None else validate_options(name, opts, values)


def list_models() -> list[str]:
    """Sorted names of the registered models."""
    return MODELS.names()


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    return MODELS.get(name)


def create_model(cfg: Mapping[str, Any]) -> nn.Module:
    """Build a model from a config mapping.

    Args:
        cfg: ``{"name": <registered name>, **builder_kwargs}``, optionally with
            ``"grad_checkpointing": True`` (activation checkpointing per backbone block, see
            :meth:`~fusionseg.models.segmentor.Segmentor.set_grad_checkpointing`).

    Returns:
        The built ``nn.Module`` (a :class:`~fusionseg.models.segmentor.Segmentor` for the
        built-in segmentors).

    Raises:
        ValueError: missing ``name``, unknown name, a key the builder does not accept (the
            message names it and lists the allowed keys), or a required key that is missing;
            ``grad_checkpointing`` not a bool, or set for a model without
            ``set_grad_checkpointing`` or without a backbone.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"model config must be a mapping, got {type(cfg).__name__}")
    if "name" not in cfg:
        raise ConfigError(
            "model config needs a 'name' key; registered models: " + ", ".join(list_models())
        )
    kwargs = dict(cfg)
    name = kwargs.pop("name")
    grad_checkpointing = kwargs.pop("grad_checkpointing", False)
    if not isinstance(grad_checkpointing, bool):
        raise ConfigError(
            f"model.grad_checkpointing must be true or false, got {grad_checkpointing!r}"
        )
    builder = get_builder(name)
    options = validate_model_options(name, kwargs)
    model = builder(options) if options is not None else _call_builder(name, builder, kwargs)
    if grad_checkpointing:
        setter = getattr(model, "set_grad_checkpointing", None)
        if not callable(setter):
            raise ConfigError(
                f"model {name!r} ({type(model).__name__}) has no set_grad_checkpointing; "
                "grad_checkpointing needs a fusionseg Segmentor"
            )
        setter(True)
    return model


def _call_builder(name: str, builder: Callable[..., nn.Module], kwargs: dict[str, Any]
                  ) -> nn.Module:
    """A plain builder function called with ``kwargs`` checked against its signature."""
    params = inspect.signature(builder).parameters
    accepts_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    if not accepts_var_kw:
        for key in kwargs:
            if key not in allowed:
                raise ConfigError(
                    f"unknown key {key!r} in model config for {name!r}; allowed keys: "
                    + ", ".join(["name", *allowed, "grad_checkpointing"])
                )
    missing = [
        n for n in allowed if params[n].default is inspect.Parameter.empty and n not in kwargs
    ]
    if missing:
        raise ConfigError(
            f"model config for {name!r} is missing required key(s): {', '.join(missing)}"
        )
    return builder(**kwargs)
