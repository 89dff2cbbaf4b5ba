"""MUSES (adverse-condition driving; 19 Cityscapes classes; frame camera + event + LiDAR + radar).

Layout of the release plus the SDK's projection (``root`` is the ``muses`` folder)::

    root/frame_camera/{train,val,test}/{clear,fog,rain,snow}/{day,night}/{name}_frame_camera.png
    root/gt_semantic/{train,val}/{weather}/{time}/{name}_gt_labelTrainIds.png
    root/event_camera/... (.h5), lidar/... (.bin), radar/... (.png)   raw sensor data (not read)
    root/calib.json, root/meta.json
    root/projected_to_rgb/{event_camera,lidar,radar}/{split}/{weather}/{time}/
        {name}_{event_camera,lidar,radar}.{npz,npy,png}
    root/projected_to_rgb/channel_statistics_{event_camera,lidar,radar}.json   (optional)

The raw event/LiDAR/radar files are not images; the MUSES SDK (``scripts/
project_sensors_to_rgb.py --event_camera --lidar --radar [--output_file_type .png]``) projects
them into the 1920x1080 camera view, and this loader reads that projected form:

============ ============ =====================================================================
modality     folder       file -> tensor ``[3, H, W]`` (physical units, nearest interpolation)
============ ============ =====================================================================
rgb          frame_camera 8-bit RGB -> [0, 1], ImageNet normalization, photometric
event        event_camera counts of positive / negative events in the last 30 ms, third
                          channel 0: ``.npz``/``.npy`` uint8 ``[H, W, 3]``; ``.png`` 8-bit
lidar        lidar        range (m), intensity, height (m): ``.npz``/``.npy`` float ``[H, W, 3]``
                          as is; ``.png`` uint16 ``(value + 100) * 150``, read back as
                          ``raw / 150 - 100`` (pixels without a point read 0)
radar        radar        range (m), intensity, 0 (no height): same encodings as lidar
============ ============ =====================================================================

The SDK writes PNGs with OpenCV, which stores the channels in reverse (BGR) order; the loader
reverses them back, so PNG and NPZ inputs give identical tensors. ``.npz`` archives hold one
array (``arr_0``).

Normalization of event/lidar/radar: ``(x - mean) / std`` with the per-channel statistics that
the SDK's ``scripts/calculate_channel_statistics.py --save_as_json`` writes next to the
projections (``channel_statistics_{sensor}.json``; a std of 0, e.g. radar's empty height
channel, becomes 1). Without that file, rough fixed scales are used (:data:`MUSES_FALLBACK_NORM`;
run the script for proper statistics).

Label: ``gt_labelTrainIds`` PNG, Cityscapes train ids 0..18, 255 ignore; other values are an
error. The test split has no public labels (samples come without ``label``).

``meta``: ``id`` = ``{weather}/{time}/{name}``, ``condition`` = weather (``clear``, ``fog``,
``rain``, ``snow``), ``case`` = time of day (``day``, ``night``).

1500 train / 250 val / 750 test; results are reported on ``val``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from fusionseg.data.io import DataError, read_image
from fusionseg.data.modalities import ModalitySpec, NormStats, get_spec

from .base import MultimodalDataset, SampleRecord, register_dataset
from .options import DatasetOptions, one_or_several

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "MUSES",
    "MUSESOptions",
    "MUSES_FALLBACK_NORM",
    "MUSES_PNG_SCALE",
    "MUSES_PNG_SHIFT",
    "MUSES_SENSORS",
    "MUSES_TIMES",
    "MUSES_WEATHERS",
]

CITYSCAPES_CLASSES: list[str] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]

#: The Cityscapes colours of the 19 train ids, ``uint8 [19, 3]``.
CITYSCAPES_PALETTE: np.ndarray = np.array(
    [
        [128, 64, 128],
        [244, 35, 232],
        [70, 70, 70],
        [102, 102, 156],
        [190, 153, 153],
        [153, 153, 153],
        [250, 170, 30],
        [220, 220, 0],
        [107, 142, 35],
        [152, 251, 152],
        [70, 130, 180],
        [220, 20, 60],
        [255, 0, 0],
        [0, 0, 142],
        [0, 0, 70],
        [0, 60, 100],
        [0, 80, 100],
        [0, 0, 230],
        [119, 11, 32],
    ],
    dtype=np.uint8,
)

MUSES_WEATHERS: tuple[str, ...] = ("clear", "fog", "rain", "snow")
MUSES_TIMES: tuple[str, ...] = ("day", "night")

#: modality -> SDK sensor folder / file suffix
MUSES_SENSORS: dict[str, str] = {"event": "event_camera", "lidar": "lidar", "radar": "radar"}

#: The SDK's uint16 PNG encoding of LiDAR/radar: ``raw = (value + SHIFT) * SCALE``.
MUSES_PNG_SHIFT: float = 100.0
MUSES_PNG_SCALE: float = 150.0

#: Normalization used when ``channel_statistics_{sensor}.json`` is absent: rough scales, not
#: dataset statistics (event: raw counts; lidar: range m, intensity, height m; radar: range m,
#: intensity, empty).
MUSES_FALLBACK_NORM: dict[str, NormStats] = {
    "event": NormStats(mean=(0.0,), std=(1.0,)),
    "lidar": NormStats(mean=(0.0, 0.0, 0.0), std=(50.0, 50.0, 5.0)),
    "radar": NormStats(mean=(0.0, 0.0, 0.0), std=(50.0, 50.0, 1.0)),
}

_FORMATS = (".npz", ".npy", ".png")
_RGB_SUFFIX = "_frame_camera.png"
_LABEL_SUFFIX = "_gt_labelTrainIds.png"


def _sensor_spec(modality: str, fmt: str, norm: NormStats) -> ModalitySpec:
    """The spec of a projected sensor image in format ``fmt`` (``.npz``, ``.npy``, ``.png``)."""
    png = fmt == ".png"
    if modality == "event":
        return get_spec(
            "event", channels=3, repeat_to=None, bit_depth=8, scale=1.0, normalize=norm,
            interpolation="nearest",
        )
    return get_spec(
        modality,
        channels=3,
        repeat_to=None,
        bit_depth=16 if png else None,
        scale=1.0 / MUSES_PNG_SCALE if png else 1.0,
        offset=-MUSES_PNG_SHIFT if png else 0.0,
        unit="",
        normalize=norm,
        interpolation="nearest",
    )


def _load_stats(path: Path, modality: str) -> NormStats | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        mean = [float(v) for v in data["mean"]]
        std = [float(v) if float(v) > 0 else 1.0 for v in data["std"]]
        return NormStats(mean=tuple(mean), std=tuple(std))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"invalid channel statistics file ({err})", path=path, modality=modality) from err


class MUSESOptions(DatasetOptions):
    """The options of :class:`MUSES` (``data.options`` of a run config)."""

    conditions: list[str] | None = Field(
        None, description="keep only these weathers: clear, fog, rain, snow (one or several)")
    time_of_day: str | None = Field(None, description="keep only day or night")
    projection_folder: str = Field(
        "projected_to_rgb", description="folder of the SDK-projected sensors under the root")
    projected_format: Literal["auto", ".npz", ".npy", ".png"] = Field(
        "auto", description="sensor files: auto (what the first sample has) or one extension")

    _names = field_validator("conditions", mode="before")(one_or_several)

    @field_validator("conditions")
    @classmethod
    def _weathers(cls, v: list[str] | None) -> list[str] | None:
        bad = [c for c in v or [] if c not in MUSES_WEATHERS]
        if bad:
            raise ValueError(f"unknown MUSES weather(s) {bad} (valid: {', '.join(MUSES_WEATHERS)})")
        return v

    @field_validator("time_of_day")
    @classmethod
    def _time(cls, v: str | None) -> str | None:
        if v is not None and v not in MUSES_TIMES:
            raise ValueError(f"unknown MUSES time of day '{v}' (valid: day, night)")
        return v


@register_dataset("muses")
class MUSES(MultimodalDataset):
    """The MUSES dataset in its SDK-projected form (see the module docstring).

    Args:
        root: the ``muses`` folder (holding ``frame_camera/``), or a folder above it (see
            :meth:`~.base.MultimodalDataset.resolve_root`).
        split: ``train``, ``val`` or ``test``.
        modalities: any of ``rgb, event, lidar, radar`` (default ``["rgb"]``; the others need
            the SDK projection first).
        transform: applied to each Sample.
        **options: :class:`MUSESOptions`: ``conditions`` (keep only these weathers,
            ``clear``, ``fog``, ``rain``, ``snow``), ``time_of_day`` (keep only ``"day"`` or
            ``"night"``), ``projection_folder`` (folder of the projected sensors under
            ``root``), ``projected_format`` (``"auto"``: per modality, whichever of ``.npz``,
            ``.npy``, ``.png`` the first sample has; or one of those extensions), and the
            common ``max_samples`` (applied after filtering), ``check_files``, ``specs`` (on
            top of the format's spec).

    Attributes:
        formats: sensor modality -> the file extension read (``auto`` resolved).

    Raises:
        DataError: missing root or ``frame_camera/{split}``, missing projection folder for a
            selected sensor (naming the SDK step), unknown weather/time, no sample left; per
            sample: missing/unreadable file, wrong bit depth or channels, size mismatch,
            label values outside 0..18 and 255.
    """

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    available_modalities = ("rgb", "event", "lidar", "radar")
    default_modalities = ("rgb",)
    #: rgb, and the sensors' specs for ``.npz`` without statistics (replaced per format)
    default_specs = {
        "rgb": get_spec("rgb", bit_depth=8),
        **{m: _sensor_spec(m, ".npz", MUSES_FALLBACK_NORM[m]) for m in MUSES_SENSORS},
    }
    known_splits = ("train", "val", "test")
    check_bit_depths: dict[str, tuple[int, ...]] = {"label": (8,)}
    root_markers = ("frame_camera",)
    archive_folders = ("muses",)

    Options = MUSESOptions
    options: MUSESOptions

    def _prepare(self) -> None:
        """Empty per-instance format state (filled when the split is indexed)."""
        self.formats: dict[str, str] = {}
        self.check_bit_depths = dict(type(self).check_bit_depths)

    @classmethod
    def splits_in(cls, root: Path) -> list[str]:
        """The split folders of ``frame_camera/``."""
        d = root / "frame_camera"
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []

    def sensor_dir(self, modality: str) -> Path:
        """``root/{projection_folder}/{sensor}/{split}`` for a sensor modality."""
        return self.root / self.options.projection_folder / MUSES_SENSORS[modality] / self.split

    def _index(self) -> list[SampleRecord]:
        cam = self.root / "frame_camera" / self.split
        if not cam.is_dir():
            raise DataError(
                f"MUSES split '{self.split}' not found (expected frame_camera/{{split}}/"
                "{weather}/{time}/*_frame_camera.png)",
                path=cam,
            )
        rels = sorted(p.relative_to(cam).as_posix() for p in cam.rglob(f"*{_RGB_SUFFIX}"))
        gt_dir = self.root / "gt_semantic" / self.split
        has_gt = gt_dir.is_dir()
        weathers, time_of_day = self.options.conditions, self.options.time_of_day
        entries = []
        for rel in rels:
            parts = rel.split("/")
            weather = parts[0] if len(parts) >= 3 and parts[0] in MUSES_WEATHERS else None
            tod = parts[1] if len(parts) >= 3 and parts[1] in MUSES_TIMES else None
            if weathers is not None and weather not in weathers:
                continue
            if time_of_day is not None and tod != time_of_day:
                continue
            entries.append((rel[: -len(_RGB_SUFFIX)], weather, tod))
        if not entries:
            what = f"split '{self.split}'"
            if weathers is not None:
                what += f", weathers {weathers}"
            if time_of_day is not None:
                what += f", {time_of_day}"
            raise DataError(f"no MUSES samples (*{_RGB_SUFFIX}) found for {what}", path=cam)
        self._resolve_sensor_formats(entries[0][0])
        records = []
        for stem, weather, tod in entries:
            paths = {m: self._modality_path(stem, m) for m in self.modalities}
            label = gt_dir / f"{stem}{_LABEL_SUFFIX}" if has_gt else None
            records.append(
                SampleRecord(id=stem, paths=paths, label=label, condition=weather, case=tod)
            )
        return records

    def _modality_path(self, stem: str, modality: str) -> Path:
        if modality == "rgb":
            return self.root / "frame_camera" / self.split / f"{stem}{_RGB_SUFFIX}"
        sensor = MUSES_SENSORS[modality]
        return self.sensor_dir(modality) / f"{stem}_{sensor}{self.formats[modality]}"

    def _resolve_sensor_formats(self, first_stem: str) -> None:
        """Pick each sensor's file format and build its spec (format + statistics)."""
        for m in self.modalities:
            if m == "rgb":
                continue
            sensor = MUSES_SENSORS[m]
            folder = self.sensor_dir(m)
            if not folder.is_dir():
                raise DataError(
                    f"projected {sensor} data not found: run the MUSES SDK's "
                    f"scripts/project_sensors_to_rgb.py --{sensor} (output folder "
                    f"'{self.options.projection_folder}')",
                    path=folder,
                    modality=m,
                )
            fmt = self.options.projected_format
            if fmt == "auto":
                fmt = next(
                    (f for f in _FORMATS if (folder / f"{first_stem}_{sensor}{f}").is_file()), ""
                )
                if not fmt:
                    found = next(
                        (p.suffix for p in folder.rglob(f"*_{sensor}.*") if p.suffix in _FORMATS),
                        "",
                    )
                    fmt = found or ".npz"
            self.formats[m] = fmt
            stats_path = (self.root / self.options.projection_folder
                          / f"channel_statistics_{sensor}.json")
            norm = _load_stats(stats_path, m) or MUSES_FALLBACK_NORM[m]
            spec = _sensor_spec(m, fmt, norm)
            given = (self.options.specs or {}).get(m)
            if isinstance(given, ModalitySpec):
                spec = given
            elif given is not None:
                merged = {**spec.model_dump(), **dict(given)}
                merged.pop("name", None)
                spec = get_spec(m, **merged)
            self.specs[m] = spec
            self.check_bit_depths[m] = (8,) if m == "event" else ((16,) if fmt == ".png" else (32, 64))

    def read_modality(self, record: SampleRecord, modality: str) -> torch.Tensor:
        """Read one modality; SDK PNGs of the sensors get their channel order reversed back."""
        path = record.paths[modality]
        if modality == "rgb" or path.suffix.lower() != ".png":
            return super().read_modality(record, modality)
        raw = read_image(path, modality=modality)
        if raw.shape[2] >= 3:  # BGR(A) as OpenCV wrote it -> the SDK's channel order
            raw = np.ascontiguousarray(raw[:, :, [2, 1, 0]])
        return self.specs[modality].from_array(raw, path=path)
