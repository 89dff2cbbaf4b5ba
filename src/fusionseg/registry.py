"""One registry style for models, backbones, datasets and losses.

Every kind of pluggable component has one :class:`Registry`; entries register themselves in the
file that defines them, with a decorator::

    BACKBONES = Registry("backbone")

    @BACKBONES.register("mit_b0", tiny={"embed_dims": (8, 16, 32, 64), ...})
    def mit_b0(**overrides) -> MixVisionTransformer: ...

    BACKBONES.get("mit_b0")        # the registered object
    BACKBONES.names()              # sorted names
    BACKBONES.entry("mit_b0").tiny # the tiny test settings declared at registration

``tiny`` is a mapping of keyword arguments that build a very small instance of the entry (a
few thousand parameters); ``tests/models/test_contract.py`` builds every registered model and
backbone with it, so a new entry is covered by the contract tests as soon as it registers.
Other keyword arguments of :meth:`Registry.register` are kept as ``entry.info``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import ConfigError

__all__ = ["Registry", "RegistryEntry"]

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """One registered object with what was declared about it.

    Attributes:
        name: registered name.
        obj: the class or builder function.
        tiny: keyword arguments building a tiny instance (for the contract tests), or ``None``.
        info: any other keyword given to :meth:`Registry.register` (e.g. ``segmentor=`` for
            model builders).
    """

    name: str
    obj: T
    tiny: Mapping[str, Any] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> object mapping with a registration decorator and helpful errors.

    Args:
        kind: what is registered ("model", "backbone", ...), used in error messages.
        error: exception class raised for an unknown name (:class:`~fusionseg.errors.ConfigError`
            by default: a name comes from a config; the dataset registry raises ``DataError``).
    """

    def __init__(self, kind: str, error: type[Exception] = ConfigError) -> None:
        self.kind = kind
        self.error = error
        self._entries: dict[str, RegistryEntry[T]] = {}

    def register(
        self, name: str, *, tiny: Mapping[str, Any] | None = None, **info: Any
    ) -> Callable[[T], T]:
        """Decorator registering ``obj`` as ``name``; returns ``obj`` unchanged.

        Registering the same object (or one with the same qualified name, as happens when a
        module is re-imported) again replaces the entry.

        Raises:
            ValueError: ``name`` is already registered to a different object.
        """

        def deco(obj: T) -> T:
            old = self._entries.get(name)
            if old is not None and old.obj is not obj and _qualname(old.obj) != _qualname(obj):
                raise ValueError(
                    f"{self.kind} name {name!r} is already registered ({_qualname(old.obj)})"
                )
            self._entries[name] = RegistryEntry(name, obj, None if tiny is None else dict(tiny),
                                                dict(info))
            return obj

        return deco

    def get(self, name: str) -> T:
        """The object registered as ``name``.

        Raises:
            self.error: unknown name (the message lists the registered names).
        """
        return self.entry(name).obj

    def entry(self, name: str) -> RegistryEntry[T]:
        """The :class:`RegistryEntry` of ``name`` (raises like :meth:`get`)."""
        try:
            return self._entries[name]
        except KeyError:
            raise self.error(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: "
                f"{', '.join(self.names()) or '(none)'}"
            ) from None

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def entries(self) -> list[RegistryEntry[T]]:
        """All entries, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
