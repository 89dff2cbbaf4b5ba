"""Modality specifications: how a modality's file is read, scaled, normalized and resized.

The value pipeline of one modality, and where each step happens::

    file --read_image--> raw [H, W, C_file] (file dtype)
         --ModalitySpec.load--> select ``file_channels`` / drop alpha, check bit depth and
                                channel count, ``x = raw * scale + offset`` (physical units),
                                non-finite -> 0, [``encode``], "minmax" (per image), repeat to
                                ``repeat_to``
                             -> float32 [C, H, W] in physical units
         --transforms (geometry, photometric)-->
         --Normalize (last transform) = ModalitySpec.normalize_tensor--> model input

"Physical units" are the spec's ``unit``: metres for depth and DSM; for plain intensity images
(rgb, hha, thermal, event, lidar, nir, irrg) ``scale="auto"`` maps the integer range to
``[0, 1]`` (uint8 / 255, uint16 / 65535), unit ``""``.

Normalization modes (``normalize``), applied to physical values ``x``:

- ``"imagenet"``: ``(x - mean) / std`` with ImageNet mean/std (for ``x`` in ``[0, 1]``); a
  1-channel tensor uses the average of the three, other channel counts cycle them.
- ``"divide255"``: ``x / 255`` (for specs that keep raw 8-bit counts with ``scale=1``).
- ``"minmax"``: per image and channel ``(x - min) / (max - min)`` (0 where constant). It needs
  the whole image (MoBaNet normalizes each DSM tile), so it is applied in ``load`` before any
  crop; ``normalize_tensor`` leaves it unchanged.
- ``NormStats(mean=[...], std=[...])`` (or the dict ``{"mean": [...], "std": [...]}``):
  ``(x - mean) / std`` with lists of length 1 or ``out_channels``.
- ``None``: unchanged.

Image padding in the transforms uses :meth:`ModalitySpec.pad_value`, the physical value that
becomes exactly 0 after normalization.

Encodings (``encode``), computed from the physical values at load time, before any crop:

- ``"hha"``: a 1-channel depth map in metres (``scale`` and ``offset`` must give metres)
  becomes its HHA encoding (:func:`fusionseg.data.depth_geometry.depth_to_hha`, with the
  spec's ``intrinsics``), 3 channels in ``[0, 1]`` exactly as the ``hha`` spec reads the
  8-bit HHA PNG of the same depth. Setting ``encode: hha`` on a spec (:func:`get_spec`,
  :func:`resolve_specs`) also sets ``normalize`` to the ``hha`` default (ImageNet) and drops
  ``repeat_to``, unless given with it; so raw depth feeds a model trained on HHA images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fusionseg.data.io import DataError, bit_depth_of, read_image

__all__ = [
    "DEFAULT_SPECS",
    "DEPTH_MAX_RANGE_M",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModalitySpec",
    "NormStats",
    "encoding_defaults",
    "get_spec",
    "resolve_specs",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Depth normalization range: 16-bit millimetre depth saturates at 65.535 m, so depth in
#: metres is divided by this to land in [0, 1].
DEPTH_MAX_RANGE_M: float = 65.535


class NormStats(BaseModel):
    """Explicit normalization ``(x - mean) / std``; lists of length 1 (broadcast) or C."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @model_validator(mode="after")
    def _check(self) -> NormStats:
        if not self.mean or not self.std:
            raise ValueError("mean and std must be non-empty")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {list(self.std)}")
        if len(self.mean) != len(self.std) and 1 not in (len(self.mean), len(self.std)):
            raise ValueError(
                f"mean and std lengths differ ({len(self.mean)} vs {len(self.std)})"
            )
        return self


NormalizeMode = Literal["imagenet", "divide255", "minmax"]


def _per_channel(values: tuple[float, ...], c: int) -> list[float]:
    if len(values) == c:
        return list(values)
    if len(values) == 1:
        return list(values) * c
    if c == 1:
        return [float(np.mean(values))]
    return [values[i % len(values)] for i in range(c)]


class ModalitySpec(BaseModel):
    """How one modality is read, checked, converted to physical units, normalized and resized.

    Attributes:
        name: modality name (``rgb``, ``depth``, ``thermal`` ...).
        channels: channels taken from the file (after ``file_channels`` selection). Without
            ``repeat_to`` this is also what the model gets.
        file_channels: indices of the file's channels to take (MFNet thermal: ``(3,)`` of an
            RGBA PNG); ``None`` takes all (an extra trailing alpha channel is dropped when
            ``drop_alpha``).
        repeat_to: repeat a ``channels``-channel map to this many channels (1 -> 3 for
            RGB-pretrained encoders). A file that already has ``repeat_to`` channels is taken
            as is. The model gets ``out_channels = repeat_to or channels``.
        drop_alpha: with ``file_channels=None``, a file with one channel more than expected
            (RGBA, gray+alpha) loses its last channel.
        bit_depth: expected bits per sample (8, 16, 32 = float32/int32, 64); ``None``: any.
        scale: raw -> physical units factor, or ``"auto"`` (integer files to ``[0, 1]`` by
            their dtype maximum; float files unchanged).
        offset: added after scaling (``physical = raw * scale + offset``).
        unit: the physical unit after scaling (``"m"`` for depth and DSM, ``""`` for [0, 1]).
        normalize: see the module docstring.
        interpolation: ``"bilinear"`` for dense images, ``"nearest"`` for sparse maps (LiDAR,
            event), used by the geometric transforms.
        photometric: colour jitter and blur apply (True only for rgb by default).
        npz_key: array name for ``.npz`` files (default: the first array).
        encode: ``"hha"``: turn the depth (metres after ``scale``) into its 3-channel HHA
            encoding at load time (module docstring); ``None``: no encoding.
        intrinsics: ``(fx, fy, cx, cy)`` in pixels of the full-size depth image, for
            ``encode="hha"``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    channels: int = Field(ge=1)
    file_channels: tuple[int, ...] | None = None
    repeat_to: int | None = Field(default=None, ge=1)
    drop_alpha: bool = True
    bit_depth: Literal[8, 16, 32, 64] | None = None
    scale: float | Literal["auto"] = "auto"
    offset: float = 0.0
    unit: str = ""
    normalize: NormalizeMode | NormStats | None = "imagenet"
    interpolation: Literal["bilinear", "nearest"] = "bilinear"
    photometric: bool = False
    npz_key: str | None = None
    encode: Literal["hha"] | None = None
    intrinsics: tuple[float, float, float, float] | None = None

    @field_validator("file_channels")
    @classmethod
    def _check_file_channels(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None:
            if len(v) == 0:
                raise ValueError("file_channels must be non-empty (or null for all channels)")
            if any(i < 0 for i in v):
                raise ValueError(f"file_channels must be >= 0, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _check_consistency(self) -> ModalitySpec:
        if self.file_channels is not None and len(self.file_channels) != self.channels:
            raise ValueError(
                f"modality '{self.name}': file_channels {list(self.file_channels)} select "
                f"{len(self.file_channels)} channel(s) but channels={self.channels}"
            )
        if self.repeat_to is not None and self.repeat_to % self.channels != 0:
            raise ValueError(
                f"modality '{self.name}': repeat_to={self.repeat_to} is not a multiple of "
                f"channels={self.channels}"
            )
        if isinstance(self.normalize, NormStats):
            c = self.out_channels
            for field in ("mean", "std"):
                n = len(getattr(self.normalize, field))
                if n not in (1, c):
                    raise ValueError(
                        f"modality '{self.name}': normalize.{field} has {n} values, "
                        f"expected 1 or {c}"
                    )
        if isinstance(self.scale, float) and self.scale == 0:
            raise ValueError(f"modality '{self.name}': scale must be non-zero")
        if self.encode == "hha":
            self._check_hha()
        return self

    def _check_hha(self) -> None:
        where = f"modality '{self.name}': encode: hha"
        if self.intrinsics is None:
            raise ValueError(f"{where} needs intrinsics: [fx, fy, cx, cy] (pixels) of the "
                             "depth image")
        if not all(np.isfinite(self.intrinsics)) or min(self.intrinsics[:2]) <= 0:
            raise ValueError(f"{where}: intrinsics {list(self.intrinsics)} need finite values "
                             "and focal lengths fx, fy > 0")
        if self.channels != 1:
            raise ValueError(f"{where} takes a 1-channel depth file, got channels="
                             f"{self.channels}")
        if self.scale == "auto":
            raise ValueError(f"{where} needs depth in metres: set scale (metres per stored "
                             "unit, e.g. 0.001 for millimetres)")
        if self.repeat_to is not None:
            raise ValueError(f"{where} gives 3 channels itself: repeat_to must be null, got "
                             f"{self.repeat_to}")

    # ------------------------------------------------------------------ derived properties
    @property
    def out_channels(self) -> int:
        """Channels delivered to the model: 3 with ``encode="hha"``, else ``repeat_to`` if
        set, else ``channels``."""
        if self.encode == "hha":
            return 3
        return self.repeat_to or self.channels

    def _accepted_counts(self) -> list[int]:
        counts = [self.channels]
        if self.repeat_to is not None and self.repeat_to != self.channels:
            counts.append(self.repeat_to)
        return counts

    def scale_for(self, dtype: np.dtype) -> float:
        """The raw -> physical factor for a file of ``dtype`` (resolves ``scale="auto"``)."""
        if self.scale != "auto":
            return float(self.scale)
        dtype = np.dtype(dtype)
        if dtype.kind in "iu":
            return 1.0 / float(np.iinfo(dtype).max)
        if dtype.kind == "b":
            return 1.0
        return 1.0

    # ------------------------------------------------------------------ reading
    def load(self, path: str | os.PathLike, *, normalize: bool = False) -> torch.Tensor:
        """Read ``path`` into a ``float32`` tensor ``[out_channels, H, W]``.

        Steps: read (keeping dtype), check bit depth, select channels, check channel count,
        ``raw * scale + offset``, non-finite values -> 0, ``"minmax"``, repeat; with
        ``normalize=True`` also :meth:`normalize_tensor` (the training pipeline instead
        normalizes last, after the transforms).

        Raises:
            DataError: missing/unreadable file, wrong bit depth, wrong channel count; the
                message names the file and this modality.
        """
        array = read_image(path, modality=self.name, key=self.npz_key)
        return self.from_array(array, path=path, normalize=normalize)

    def from_array(
        self,
        array: np.ndarray,
        *,
        path: str | os.PathLike | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Convert a raw array ``[H, W]`` or ``[H, W, C]`` like :meth:`load` does.

        ``path`` is only used in error messages. Returns ``float32 [out_channels, H, W]``.

        Raises:
            DataError: not 2-D/3-D, not of an integer, float or bool dtype, empty, wrong bit
                depth, wrong channel count; the message names ``path`` and this modality.
        """
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3:
            raise DataError(
                f"expected an image array [H, W, C], got shape {tuple(array.shape)}",
                path=path,
                modality=self.name,
            )
        if array.dtype.kind not in "biuf":  # complex would lose its imaginary part silently
            raise DataError(
                f"expected a numeric image array, got dtype {array.dtype}",
                path=path,
                modality=self.name,
            )
        if array.size == 0:  # e.g. a crop past the edge; "minmax" cannot reduce it
            raise DataError(
                f"empty image array of shape {tuple(array.shape)}", path=path, modality=self.name
            )
        if self.bit_depth is not None:
            bits = bit_depth_of(array)
            if bits != self.bit_depth:
                raise DataError(
                    f"wrong bit depth: file is {bits}-bit ({array.dtype}), modality "
                    f"'{self.name}' expects {self.bit_depth}-bit",
                    path=path,
                    modality=self.name,
                )
        c_file = array.shape[2]
        if self.file_channels is not None:
            bad = [i for i in self.file_channels if i >= c_file]
            if bad:
                raise DataError(
                    f"wrong channel count: file has {c_file} channel(s), modality "
                    f"'{self.name}' takes channel index {bad[0]} "
                    f"(file_channels={list(self.file_channels)})",
                    path=path,
                    modality=self.name,
                )
            array = array[:, :, list(self.file_channels)]
        accepted = self._accepted_counts()
        c = array.shape[2]
        if c not in accepted and self.file_channels is None and self.drop_alpha:
            if c - 1 in accepted:
                array = array[:, :, : c - 1]
                c -= 1
        if c not in accepted:
            expected = " or ".join(str(n) for n in accepted)
            raise DataError(
                f"wrong channel count: file has {c_file} channel(s), modality '{self.name}' "
                f"expects {expected}",
                path=path,
                modality=self.name,
            )
        scale = self.scale_for(array.dtype)
        if self.encode == "hha":
            x = self._encode_hha(array, scale, path)
        else:
            x = torch.from_numpy(np.array(array.transpose(2, 0, 1), dtype=np.float32))
            if scale != 1.0:
                x = x * scale
            if self.offset != 0.0:
                x = x + self.offset
            if not torch.isfinite(x).all():
                x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        if self.normalize == "minmax":
            lo = x.amin(dim=(1, 2), keepdim=True)
            hi = x.amax(dim=(1, 2), keepdim=True)
            span = hi - lo
            x = torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), torch.zeros_like(x))
        if self.repeat_to is not None and x.shape[0] != self.repeat_to:
            x = x.repeat(self.repeat_to // x.shape[0], 1, 1)
        x = x.contiguous()
        if normalize:
            x = self.normalize_tensor(x)
        return x

    def _encode_hha(self, array: np.ndarray, scale: float,
                    path: str | os.PathLike | None) -> torch.Tensor:
        """``[H, W, 1]`` raw depth -> HHA ``float32 [3, H, W]`` in ``[0, 1]`` (uint8 / 255,
        as the ``hha`` spec reads an HHA PNG); depth in metres computed in float64."""
        from fusionseg.data.depth_geometry import depth_to_hha

        depth_m = array[:, :, 0].astype(np.float64) * scale + self.offset
        try:
            hha = depth_to_hha(depth_m, self.intrinsics)
        except DataError as err:
            raise DataError(f"encode: hha: {err.problem}", path=path,
                            modality=self.name) from None
        return torch.from_numpy(hha.transpose(2, 0, 1).astype(np.float32)) * (1.0 / 255.0)

    # ------------------------------------------------------------------ normalization
    def _mean_std(self, c: int) -> tuple[list[float], list[float]] | None:
        norm = self.normalize
        if norm is None or norm == "minmax":
            return None
        if norm == "imagenet":
            return _per_channel(IMAGENET_MEAN, c), _per_channel(IMAGENET_STD, c)
        if norm == "divide255":
            return [0.0] * c, [255.0] * c
        assert isinstance(norm, NormStats)
        return _per_channel(norm.mean, c), _per_channel(norm.std, c)

    def _mean_std_like(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-channel mean and std for ``x`` (``[..., C, H, W]``) as ``[C, 1, 1]`` tensors of
        its dtype and device, or None where this spec does not normalize."""
        c = x.shape[-3]
        ms = self._mean_std(c)
        if ms is None:
            return None
        mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device).view(c, 1, 1) for v in ms)
        return mean, std

    def normalize_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize physical values ``x`` (``[C, H, W]`` or ``[B, C, H, W]``) for the model."""
        ms = self._mean_std_like(x)
        if ms is None:
            return x
        mean, std = ms
        return (x - mean) / std

    def denormalize_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize_tensor` (for visualization); ``[C,H,W]`` or ``[B,C,H,W]``."""
        ms = self._mean_std_like(x)
        if ms is None:
            return x
        mean, std = ms
        return x * std + mean

    def pad_value(self, channels: int | None = None) -> list[float]:
        """Per-channel physical value that becomes exactly 0 after :meth:`normalize_tensor`.

        Used as the image fill value by the padding transforms, so padded pixels are 0 in the
        model's input space (ImageNet: the mean colour; minmax/None/divide255: 0).
        """
        c = channels or self.out_channels
        ms = self._mean_std(c)
        return [0.0] * c if ms is None else [float(m) for m in ms[0]]


def _spec(**kw: Any) -> ModalitySpec:
    return ModalitySpec(**kw)


#: Default specs for the field's modality names. Units after ``load``:
#:
#: - ``rgb``: 8-bit (or 16-bit) colour -> [0, 1]; ImageNet normalization; photometric.
#: - ``depth``: 16-bit PNG in millimetres -> metres (``scale=0.001``), 1 channel repeated to
#:   3; normalized by ``DEPTH_MAX_RANGE_M`` (65.535 m) to [0, 1].
#: - ``hha``: 3-channel 8-bit HHA encoding -> [0, 1]; ImageNet normalization.
#: - ``thermal``: 1-channel 8/16-bit -> [0, 1], repeated to 3; ImageNet normalization.
#: - ``event``, ``lidar``: image renderings (1 or 3 channels, RGBA cut to 3) -> [0, 1],
#:   repeated to 3; nearest interpolation (sparse); ImageNet normalization.
#: - ``aolp``: 3 float channels (sin, cos, sin of the angle, in [-1, 1]); not normalized.
#: - ``dolp``: 1 float channel in [0, 1] repeated to 3; not normalized.
#: - ``nir``: 1-channel 8/16-bit -> [0, 1], repeated to 3; ImageNet normalization.
#: - ``dsm``: 1-channel float32 heights in metres; min-max per tile to [0, 1].
#: - ``irrg``: 3-channel 8-bit false colour (IR, R, G) -> [0, 1]; ImageNet normalization.
DEFAULT_SPECS: dict[str, ModalitySpec] = {
    "rgb": _spec(name="rgb", channels=3, photometric=True),
    "depth": _spec(
        name="depth",
        channels=1,
        repeat_to=3,
        bit_depth=16,
        scale=0.001,
        unit="m",
        normalize=NormStats(mean=(0.0,), std=(DEPTH_MAX_RANGE_M,)),
    ),
    "hha": _spec(name="hha", channels=3),
    "thermal": _spec(name="thermal", channels=1, repeat_to=3),
    "event": _spec(name="event", channels=1, repeat_to=3, interpolation="nearest"),
    "lidar": _spec(name="lidar", channels=1, repeat_to=3, interpolation="nearest"),
    "aolp": _spec(name="aolp", channels=3, scale=1.0, normalize=None),
    "dolp": _spec(name="dolp", channels=1, repeat_to=3, scale=1.0, normalize=None),
    "nir": _spec(name="nir", channels=1, repeat_to=3),
    "dsm": _spec(name="dsm", channels=1, scale=1.0, unit="m", normalize="minmax"),
    "irrg": _spec(name="irrg", channels=3),
}


def encoding_defaults(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that setting ``encode`` in ``overrides`` implies, less those it gives.

    ``encode: hha`` reads depth as the ``hha`` spec reads an HHA image: ``normalize`` as
    the ``hha`` default (ImageNet) and no ``repeat_to``. ``{}`` without ``encode``.
    """
    if overrides.get("encode") != "hha":
        return {}
    implied = {"normalize": DEFAULT_SPECS["hha"].normalize, "repeat_to": None}
    return {k: v for k, v in implied.items() if k not in overrides}


def get_spec(name: str, **overrides: Any) -> ModalitySpec:
    """The default spec of ``name`` with ``overrides`` applied (validated).

    A name outside :data:`DEFAULT_SPECS` defines a new modality; it needs at least
    ``channels`` among the overrides.

    Raises:
        DataError: unknown name without ``channels``, or an invalid/unknown override (the
            message names the modality and the offending field).
    """
    base = DEFAULT_SPECS.get(name)
    if base is None and "channels" not in overrides:
        raise DataError(
            f"unknown modality '{name}' (known: {', '.join(DEFAULT_SPECS)}); "
            "give at least 'channels' to define a new one",
            modality=name,
        )
    data = base.model_dump() if base is not None else {}
    data.update(encoding_defaults(overrides))
    if "channels" in overrides and "repeat_to" not in overrides and base is not None:
        # Changing the file channel count invalidates a default repeat that no longer fits.
        rep = data.get("repeat_to")
        try:
            channels = int(overrides["channels"])
        except (TypeError, ValueError):
            channels = 0  # not a count: the validation below names the field
        if rep is not None and channels > 0 and rep % channels != 0:
            data["repeat_to"] = None
    if "channels" in overrides and "file_channels" not in overrides:
        data["file_channels"] = None
    data.update(overrides)
    data["name"] = name
    try:
        return ModalitySpec.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in err.errors()
        )
        raise DataError(f"invalid modality spec: {problems}", modality=name) from err


def resolve_specs(
    modalities: list[str] | tuple[str, ...],
    specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
    defaults: Mapping[str, ModalitySpec] | None = None,
) -> dict[str, ModalitySpec]:
    """Specs for ``modalities``: ``specs[name]`` (a spec, or a dict of overrides on top of the
    default) else ``defaults[name]`` (e.g. a dataset's own) else :func:`get_spec` ``(name)``."""
    out: dict[str, ModalitySpec] = {}
    for m in modalities:
        given = (specs or {}).get(m)
        base = (defaults or {}).get(m)
        if isinstance(given, ModalitySpec):
            out[m] = given
        elif given is not None:
            if base is not None:
                merged = {**base.model_dump(), **encoding_defaults(given), **dict(given)}
                merged.pop("name", None)
                out[m] = get_spec(m, **merged)
            else:
                out[m] = get_spec(m, **dict(given))
        elif base is not None:
            out[m] = base
        else:
            out[m] = get_spec(m)
    return out
