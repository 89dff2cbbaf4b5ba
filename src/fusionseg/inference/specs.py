"""The modality specs prediction reads files with: stored in the checkpoint, overridden by hand.

A trained model expects each modality as its training run read it
(:class:`~fusionseg.data.modalities.ModalitySpec`: bit depth, channels, scale, normalisation).
The training run stores those specs as ``fusionseg_specs`` in the checkpoint (and an export
copies them into the ONNX metadata); :func:`training_specs` takes them from there, falls back
for older checkpoints to the specs of the training dataset class, and applies the
``--spec modality.field=value`` overrides parsed by :func:`parse_spec_overrides`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import ValidationError

from ..config import Config
from ..data.io import DataError
from ..data.modalities import ModalitySpec, encoding_defaults, resolve_specs

__all__ = [
    "apply_spec_overrides",
    "describe_spec",
    "parse_spec_overrides",
    "stored_specs",
    "training_specs",
    "validated_spec",
]


def parse_spec_overrides(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["depth.bit_depth=8", "depth.scale=0.01"]`` -> ``{"depth": {"bit_depth": 8,
    "scale": 0.01}}``; values are parsed with ``yaml.safe_load`` (``null``, ``[3]``,
    ``auto``; note that YAML reads ``1e-3`` as text, which the spec's validation accepts).

    Raises:
        DataError: an item not of the form ``modality.field=value``.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        modality, dot, field = key.strip().partition(".")
        if not sep or not dot or not modality or not field or "." in field:
            raise DataError(f"spec override {item!r} must look like modality.field=value "
                            "(e.g. depth.bit_depth=8)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        out.setdefault(modality, {})[field] = parsed
    return out


def validated_spec(modality: str, data: Mapping[str, Any], what: str) -> ModalitySpec:
    """``data`` as the :class:`ModalitySpec` of ``modality``.

    Raises:
        DataError: an invalid field, one line per problem, naming ``what`` and the modality.
    """
    try:
        return ModalitySpec.model_validate({**data, "name": modality})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in err.errors())
        raise DataError(f"invalid {what}: {problems}", modality=modality) from None


def apply_spec_overrides(specs: Mapping[str, ModalitySpec],
                         overrides: Mapping[str, Mapping[str, Any]] | None
                         ) -> dict[str, ModalitySpec]:
    """``specs`` with the fields of ``overrides[modality]`` replaced (validated).

    Raises:
        DataError: an override for a modality not in ``specs``, an unknown field or an invalid
            value (naming the modality and field).
    """
    out = dict(specs)
    for modality, fields in (overrides or {}).items():
        if modality not in out:
            raise DataError(f"spec override for '{modality}', which the model does not take "
                            f"(modalities: {', '.join(out)})", modality=modality)
        if "name" in fields:
            raise DataError("spec override cannot rename a modality", modality=modality)
        out[modality] = validated_spec(
            modality, {**out[modality].model_dump(), **encoding_defaults(fields),
                       **dict(fields)}, "spec override")
    return out


def stored_specs(meta: Mapping[str, Any]) -> dict[str, ModalitySpec] | None:
    """The ``fusionseg_specs`` of a checkpoint as ModalitySpecs, or ``None`` when absent.

    Raises:
        DataError: a stored spec that does not validate.
    """
    raw = meta.get("fusionseg_specs")
    if not raw:
        return None
    return {m: validated_spec(m, d, "stored spec (fusionseg_specs)") for m, d in raw.items()}


def training_specs(meta: Mapping[str, Any], cfg: Config,
                   spec_overrides: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> dict[str, ModalitySpec]:
    """The modality specs predict reads files with, for each of ``cfg.model.modalities``.

    From ``meta["fusionseg_specs"]`` (the training dataset's specs); without them (a
    checkpoint written before they were stored) the specs of the dataset class
    ``cfg.data.dataset`` with ``cfg.data.options["specs"]`` applied, and one ``UserWarning``.
    Then ``spec_overrides`` replace fields.

    Raises:
        DataError: a model modality missing from the stored specs, an invalid override,
            an unknown dataset.
    """
    from ..data.datasets import get_dataset_class

    modalities = list(cfg.model.modalities)
    stored = stored_specs(meta)
    if stored is not None:
        lacking = [m for m in modalities if m not in stored]
        if lacking:
            raise DataError(f"{meta.get('source', 'checkpoint')}: fusionseg_specs has no spec "
                            f"for modality {', '.join(lacking)}", modality=lacking[0])
        specs = {m: stored[m] for m in modalities}
    else:
        cls = get_dataset_class(cfg.data.dataset)
        defaults = dict(getattr(cls, "default_specs", {}) or {})
        specs = resolve_specs(modalities, cfg.data.options.get("specs"), defaults)
        warnings.warn(
            f"{meta.get('source', 'checkpoint')}: holds no fusionseg_specs (written before "
            f"they were stored); reading files with the specs of dataset "
            f"'{cfg.data.dataset}' - check bit depths and scales, or pass --spec",
            UserWarning, stacklevel=2)
    return apply_spec_overrides(specs, spec_overrides)


def describe_spec(spec: ModalitySpec) -> str:
    """A short text of what a spec reads: ``"16-bit, 1 channel(s), raw * 0.001 -> m"``."""
    bits = f"{spec.bit_depth}-bit" if spec.bit_depth else "any bit depth"
    chans = f"{spec.channels} channel(s)"
    if spec.file_channels is not None:
        chans += f" (file channels {list(spec.file_channels)})"
    scale = "integer range -> [0, 1]" if spec.scale == "auto" else f"raw * {spec.scale:g}"
    if spec.offset:
        scale += f" + {spec.offset:g}"
    encoded = f", encoded as {spec.encode.upper()}" if spec.encode else ""
    return f"{bits}, {chans}, {scale}" + (f" -> {spec.unit}" if spec.unit else "") + encoded
