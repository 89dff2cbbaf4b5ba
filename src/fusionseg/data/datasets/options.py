"""Typed dataset options: one pydantic model per dataset, the single source of its settings.

Every dataset takes :class:`DatasetOptions` (``max_samples``, ``check_files``, ``specs``); a
dataset with settings of its own declares them once, as a subclass beside the dataset, and sets
it as the class's ``Options``::

    class DeliverOptions(DatasetOptions):
        conditions: list[str] | None = Field(None, description="keep only these conditions")
        case: str | None = Field(None, description="keep one case: a condition or a failure")

    @register_dataset("deliver")
    class DELIVER(MultimodalDataset):
        Options = DeliverOptions

The base constructor ``MultimodalDataset(root, split, modalities=None, transform=None,
**options)`` validates the keyword options into ``dataset.options`` (:func:`validate_options`:
an unknown option or a wrong value is one :class:`~fusionseg.errors.DataError` line naming the
dataset, the problem and the valid options with their types); the dataset reads
``self.options.<name>``. The ``data.options`` of a run config are these keywords, and
``fusionseg info DATASET`` prints them (:func:`describe_options`: name, type as declared,
default and the field's one-line ``description``).

Per-dataset normalisation (one name or several, ids as strings) and checks that keep a
dataset's own wording live on the model as validators.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fusionseg.data.io import DataError
from fusionseg.data.modalities import ModalitySpec

__all__ = ["DatasetOptions", "OptionInfo", "describe_options", "name_list", "one_or_several",
           "validate_options"]

OptionsT = TypeVar("OptionsT", bound="DatasetOptions")


def name_list(names: str | Sequence[str] | None) -> list[str] | None:
    """An option naming one or several things (conditions, tiles, splits) as a list: a single
    string -> ``[string]``, None stays None."""
    if names is None:
        return None
    return [names] if isinstance(names, str) else list(names)


def one_or_several(value: Any) -> Any:
    """A ``mode="before"`` validator for an option naming one thing or several
    (``conditions: fog`` or ``[fog, night]``): a single string becomes ``[string]``; anything
    else is left to the field's type. Use it as
    ``_names = field_validator("conditions", mode="before")(one_or_several)``."""
    return [value] if isinstance(value, str) else value


class DatasetOptions(BaseModel):
    """The options every dataset takes; the base of each dataset's own options.

    Subclasses add their fields, each with a default and a one-line ``description``. Unknown
    keys are errors (``extra="forbid"``); instances are frozen.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_samples: int | None = Field(
        None, ge=0, description="keep only the first N samples (after filtering)")
    check_files: bool = Field(
        True, description="check every sample's files (existence, headers, sizes) when built")
    specs: dict[str, ModalitySpec | dict] | None = Field(
        None, description="per-modality spec overrides: a ModalitySpec or fields on the default")

    @field_validator("specs", mode="plain")
    @classmethod
    def _spec_overrides(cls, v: Any) -> dict[str, Any] | None:
        """Kept as given (a dict of fields is merged onto the dataset's spec later, see
        :func:`~fusionseg.data.modalities.resolve_specs`); only the shape is checked."""
        if v is None:
            return None
        if not isinstance(v, Mapping):
            raise ValueError(f"specs must map modality names to overrides, got {type(v).__name__}")
        bad = [str(k) for k, s in v.items()
               if not isinstance(k, str) or not (s is None or isinstance(s, (ModalitySpec, Mapping)))]
        if bad:
            raise ValueError(f"specs of {bad} must be a ModalitySpec or a mapping of its fields")
        return dict(v)


class OptionInfo(NamedTuple):
    """One option as ``fusionseg info DATASET`` shows it."""

    name: str
    type: str
    default: str
    doc: str


def _declared_type(options: type[DatasetOptions], name: str) -> str:
    """The annotation of field ``name`` as written in the class that declares it."""
    for klass in options.__mro__:
        annotation = klass.__dict__.get("__annotations__", {}).get(name)
        if annotation is not None:
            return annotation if isinstance(annotation, str) else repr(annotation)
    return "Any"


def describe_options(options: type[DatasetOptions]) -> list[OptionInfo]:
    """Every field of ``options``: the dataset's own in declaration order, then the common ones
    of :class:`DatasetOptions`; each with its type as declared, its default (``required`` when
    there is none) and its one-line description."""
    names = sorted(options.model_fields, key=lambda n: n in DatasetOptions.model_fields)
    out = []
    for name in names:
        f = options.model_fields[name]
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        out.append(OptionInfo(name, _declared_type(options, name), default, f.description or ""))
    return out


#: pydantic's bound errors -> the comparison they name
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
           "less_than": "<"}


def _problem(e: Mapping[str, Any]) -> str:
    """One validation error as a clause: ``unknown option 'x'``, ``tile_size must be >= 1, got
    0``, ``layout must be one of 'auto', 'rgba' or 'split', got 'rgb'``, a validator's own
    sentence, else ``<option>: <pydantic's message> (got <value>)``."""
    where = ".".join(str(p) for p in e["loc"]) or "(options)"
    if e["type"] == "extra_forbidden":
        return f"unknown option {where!r}"
    if e["type"] in _BOUNDS:
        bound = next(iter(e["ctx"].values()))
        return f"{where} must be {_BOUNDS[e['type']]} {bound}, got {e['input']!r}"
    if e["type"] == "literal_error":
        return f"{where} must be one of {e['ctx']['expected']}, got {e['input']!r}"
    if e["type"] == "value_error":  # a validator's own sentence; it names the option
        text = str(e["ctx"]["error"])
        return text if not e["loc"] or str(e["loc"][0]) in text else f"{where}: {text}"
    return f"{where}: {e['msg']} (got {e.get('input')!r})"


def validate_options(dataset: str, options: type[OptionsT], values: Mapping[str, Any]) -> OptionsT:
    """``values`` (a dataset's keyword options) validated into ``options``.

    Raises:
        DataError: an unknown option or a wrong type or value; one line naming the dataset,
            each problem, and the valid options with their types.
    """
    try:
        return options.model_validate(dict(values))
    except ValidationError as err:
        problems = "; ".join(_problem(e) for e in err.errors())
        valid = ", ".join(f"{i.name}: {i.type}" for i in describe_options(options))
        raise DataError(f"dataset {dataset!r}: {problems}. Valid options: {valid}") from None
