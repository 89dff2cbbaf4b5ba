"""Sensor health at inference: is a modality's input dead?

A camera or sensor that fails in the field rarely stops delivering files: it delivers a black
(or uniform) frame, a white-out, NaNs, or the same frame again. :func:`check_modality` looks at
one modality's array **as read from the file** (``read_image``'s ``[H, W, C]`` in the file's
dtype, before any scaling or normalisation) and returns its status, checked in this order
(the first that applies wins):

- ``"nan"``: the fraction of NaN / +-inf values exceeds ``nonfinite`` (default 0: any), and
  some are NaN; ``"inf"``: the same, none NaN;
- ``"saturated"``: at least ``saturated`` (default 0.98) of the values (pixels x channels)
  sit at the maximum of the file's integer dtype (255 for 8-bit, 65535 for 16-bit); float
  files are not checked;
- ``"zero"``: every value is within ``constant`` of 0 (default 0: exactly all zero);
- ``"constant"``: every channel spans at most ``constant`` (max - min, raw file units;
  default 0: a flat image, also a solid colour);
- ``"frozen"``: the array equals the previous frame of the sequence for this modality within
  ``frozen`` (the largest absolute difference, raw file units; default 0: identical);
- ``"ok"``: none of the above.

Non-finite values below the ``nonfinite`` fraction are left out of the other checks. Each
threshold can be switched off on its own (``None``; ``off`` on the command line), and
:func:`parse_health` reads the command-line form (``--health saturated=0.99``, ``--health
off``). Everything is a few vectorised passes over the array (about 8 ms for a 1920 x 1080
8-bit RGB frame on one CPU core of the development machine), cheap next to decoding the file.

``fusionseg predict`` runs the checks per frame (:mod:`fusionseg.inference.sensors`) and drops
a dead modality from the sample, exactly as a modality that was not given (docs/predict.md,
"Sensor health").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError, DataError

__all__ = [
    "ABSENT",
    "DEAD_STATUSES",
    "HEALTH_KEYS",
    "OK",
    "SensorHealth",
    "Status",
    "check_modality",
    "parse_health",
    "resolve_health",
]

Status = Literal["ok", "nan", "inf", "saturated", "zero", "constant", "frozen"]
OK: str = "ok"
#: the sensors.csv entry of a modality that was not given at all (not a health status)
ABSENT: str = "absent"
DEAD_STATUSES: tuple[str, ...] = ("nan", "inf", "saturated", "zero", "constant", "frozen")


class SensorHealth(BaseModel):
    """Thresholds of the sensor health checks (each ``None`` = that check off).

    Attributes:
        nonfinite: fraction of NaN / +-inf values (0..1) **above** which the modality is dead;
            0 (default): any non-finite value. Raise it (e.g. 0.5) for float depth maps that
            mark invalid pixels with NaN.
        saturated: fraction of values (pixels x channels, 0 < f <= 1) **at or above** which an
            integer-typed array at its dtype's maximum is saturated; default 0.98.
        constant: value range (max - min per channel, raw file units, >= 0) at or below which
            every channel is flat: ``zero`` when every value is within it of 0, else
            ``constant``; default 0 (exactly flat).
        frozen: largest absolute difference to the previous frame (raw file units, >= 0) at or
            below which the frame is frozen; default 0 (bit-identical).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    nonfinite: float | None = Field(0.0, ge=0.0, lt=1.0)
    saturated: float | None = Field(0.98, gt=0.0, le=1.0)
    constant: float | None = Field(0.0, ge=0.0)
    frozen: float | None = Field(0.0, ge=0.0)


#: the keys of ``--health KEY=VALUE``
HEALTH_KEYS: tuple[str, ...] = tuple(SensorHealth.model_fields)


def _validated(values: Mapping[str, Any], what: str) -> SensorHealth:
    try:
        return SensorHealth.model_validate(dict(values))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'health'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid {what}: {problems} (keys: {', '.join(HEALTH_KEYS)})"
                          ) from None


def resolve_health(health: SensorHealth | Mapping[str, Any] | bool | None
                   ) -> SensorHealth | None:
    """``health`` as a :class:`SensorHealth`, or ``None`` when the checks are off.

    ``True``: the defaults; ``False`` / ``None``: off; a mapping: thresholds replacing the
    defaults (``{"saturated": 0.99, "frozen": None}``).

    Raises:
        ConfigError: an unknown key or a value out of range (naming it).
    """
    if health is None or health is False:
        return None
    if health is True:
        return SensorHealth()
    if isinstance(health, SensorHealth):
        return health
    if isinstance(health, Mapping):
        return _validated(health, "health thresholds")
    raise ConfigError(f"health must be a SensorHealth, a mapping, True or None, got "
                      f"{type(health).__name__}")


def parse_health(items: Sequence[str] | None) -> SensorHealth | None:
    """The ``--health`` options: none -> the defaults; ``["off"]`` -> ``None`` (no checks);
    ``["saturated=0.99", "frozen=off"]`` -> those thresholds replaced (``off`` switches one
    check off; ``on`` alone is the defaults).

    Raises:
        ConfigError: ``off`` combined with thresholds, an item not ``KEY=VALUE``, an unknown
            key, or a value that is not a number in range.
    """
    items = [str(i).strip() for i in (items or [])]
    if not items or items == ["on"]:
        return SensorHealth()
    if "off" in items:
        if len(items) > 1:
            raise ConfigError("--health off cannot be combined with thresholds "
                              f"(got {' '.join(items)})")
        return None
    values: dict[str, float | None] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in HEALTH_KEYS:
            raise ConfigError(f"--health {item!r}: expected off, or KEY=VALUE with KEY one of "
                              f"{', '.join(HEALTH_KEYS)} (e.g. saturated=0.99, frozen=off)")
        if value.lower() == "off":
            values[key] = None
            continue
        try:
            values[key] = float(value)
        except ValueError:
            raise ConfigError(f"--health {item!r}: {value!r} is not a number (or off)") from None
    return _validated(values, "--health")


def _flat_channels(a: np.ndarray, tol: float, has_nan: bool) -> float | None:
    """``max |value|`` when every channel of ``a [H, W, C]`` spans at most ``tol`` (NaNs
    ignored when ``has_nan``), else ``None``. One global min / max first (contiguous, fast);
    per channel only when the channels differ from each other."""
    amin, amax = (np.nanmin, np.nanmax) if has_nan else (np.min, np.max)
    if has_nan and bool(np.isnan(a).all()):
        return None  # nothing finite to judge (non-finite values tolerated: nonfinite=off)
    lo, hi = float(amin(a)), float(amax(a))
    if hi - lo > tol:
        if a.shape[2] == 1:
            return None
        for c in range(a.shape[2]):  # a solid colour: each channel flat on its own
            ch = a[:, :, c]
            if has_nan and bool(np.isnan(ch).all()):
                continue
            if float(amax(ch)) - float(amin(ch)) > tol:
                return None
    return max(abs(lo), abs(hi))


def check_modality(array: np.ndarray, previous: np.ndarray | None = None,
                   thresholds: SensorHealth | None = None, *, path: Any = None,
                   modality: str | None = None) -> Status:
    """The health status of one modality's raw array (see the module docstring).

    Args:
        array: the values as read from the file: ``[H, W]`` or ``[H, W, C]``, any integer,
            bool or float dtype (``read_image``'s output, channels already selected).
        previous: the same modality's array of the previous frame, or ``None`` (first frame,
            or unknown): the ``frozen`` check needs it. A different shape or dtype is never
            frozen.
        thresholds: :class:`SensorHealth` (default: its defaults).
        path, modality: only named in errors.

    Returns:
        ``"ok"`` or one of :data:`DEAD_STATUSES`.

    Raises:
        DataError: ``array`` is not 2-D / 3-D, empty, or not numeric (naming ``path`` and
            ``modality``).
    """
    t = SensorHealth() if thresholds is None else thresholds
    a = np.asarray(array)
    if a.ndim not in (2, 3) or a.size == 0 or a.dtype.kind not in "biuf":
        raise DataError(f"sensor health: expected a non-empty numeric [H, W] or [H, W, C] "
                        f"array, got {a.dtype} {tuple(a.shape)}", path=path, modality=modality)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    finite = a
    if a.dtype.kind == "f":
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            if t.nonfinite is not None and bad / a.size > t.nonfinite:
                return "nan" if bool(np.isnan(a).any()) else "inf"
            finite = np.where(np.isfinite(a), a, np.nan)  # left out of the checks below
    if t.saturated is not None and a.dtype.kind in "iu":
        top = np.iinfo(a.dtype).max
        if np.count_nonzero(a == top) >= t.saturated * a.size:
            return "saturated"
    if t.constant is not None:
        flat = _flat_channels(finite, t.constant, finite is not a)
        if flat is not None:
            return "zero" if flat <= t.constant else "constant"
    if t.frozen is not None and previous is not None:
        p = np.asarray(previous)
        if p.ndim == 2:
            p = p[:, :, None]
        if p.shape == a.shape and p.dtype == a.dtype:
            if t.frozen == 0:
                same = np.array_equal(a, p, equal_nan=a.dtype.kind == "f")
            else:
                with np.errstate(invalid="ignore"):
                    diff = np.abs(a.astype(np.float64) - p.astype(np.float64))
                    close = (diff <= t.frozen) | (a == p)
                if a.dtype.kind == "f":
                    close |= np.isnan(a) & np.isnan(p)
                same = bool(np.all(close))
            if same:
                return "frozen"
    return OK
