"""DELIVER (CARLA; 25 classes; RGB + depth/HHA + event + LiDAR; 5 conditions, 5 sensor failures).

Layout (the release's, as the reference code reads it)::

    root/{img,hha,depth,event,lidar,thermal,semantic}/{cloud,fog,night,rain,sun}/{train,val,test}/
        MAP_*/NNNNNN_{rgb,depth,event,lidar,thermal,semantic}_front.png

Modality -> folder, file suffix, spec (see :data:`DELIVER_SPECS`):

======== ======== ========= ==========================================================
modality folder   suffix    file / spec
======== ======== ========= ==========================================================
rgb      img      _rgb      8-bit RGB -> [0, 1], ImageNet normalization
hha      hha      _depth    3-channel 8-bit HHA (what the reference code calls "depth")
depth    depth    _depth    16-bit millimetres -> metres, 1 channel repeated to 3,
                            normalized by 65.535 m (the 16-bit range) to [0, 1]
event    event    _event    8-bit image (1 or 3 channels, RGBA cut to 3) -> 3, nearest
lidar    lidar    _lidar    8-bit range-view image (1 or 3 ch, RGBA cut to 3) -> 3, nearest
thermal  thermal  _thermal  1-channel 8-bit, repeated to 3 (not in the real release;
                            written by fusionseg's synthetic renderer)
======== ======== ========= ==========================================================

Label: channel 0 of ``semantic/.../*_semantic_front.png``; raw 1..25 -> classes 0..24, raw 0
and 255 -> ignore 255; any other raw value is an error.

Cases: the five conditions (folder names) and five sensor failures (``motionblur``,
``overexposure``, ``underexposure``, ``lidarjitter``, ``eventlowres``), the latter matched as
substrings of the sample's relative path as the reference loader does (fusionseg's renderer
writes failure samples under ``MAP_{k}_{failure}``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from fusionseg.data.io import DataError
from fusionseg.data.modalities import ModalitySpec, get_spec

from .base import MultimodalDataset, SampleRecord, decode_void_zero_label, register_dataset
from .options import DatasetOptions, one_or_several

__all__ = [
    "DELIVER",
    "DELIVER_CASES",
    "DELIVER_CLASSES",
    "DELIVER_CONDITIONS",
    "DELIVER_FAILURES",
    "DELIVER_FOLDERS",
    "DELIVER_PALETTE",
    "DeliverOptions",
    "DELIVER_SPECS",
]

DELIVER_CLASSES: list[str] = [
    "Building",
    "Fence",
    "Other",
    "Pedestrian",
    "Pole",
    "RoadLine",
    "Road",
    "SideWalk",
    "Vegetation",
    "Cars",
    "Wall",
    "TrafficSign",
    "Sky",
    "Ground",
    "Bridge",
    "RailTrack",
    "GroundRail",
    "TrafficLight",
    "Static",
    "Dynamic",
    "Water",
    "Terrain",
    "TwoWheeler",
    "Bus",
    "Truck",
]

#: CARLA-style colours for the 25 classes, ``uint8 [25, 3]`` (CARLA's CityScapesPalette where
#: CARLA has the class; Cars/TwoWheeler/Bus/Truck split CARLA's vehicle colour by Cityscapes').
DELIVER_PALETTE: np.ndarray = np.array(
    [
        [70, 70, 70],  # Building
        [100, 40, 40],  # Fence
        [55, 90, 80],  # Other
        [220, 20, 60],  # Pedestrian
        [153, 153, 153],  # Pole
        [157, 234, 50],  # RoadLine
        [128, 64, 128],  # Road
        [244, 35, 232],  # SideWalk
        [107, 142, 35],  # Vegetation
        [0, 0, 142],  # Cars
        [102, 102, 156],  # Wall
        [220, 220, 0],  # TrafficSign
        [70, 130, 180],  # Sky
        [81, 0, 81],  # Ground
        [150, 100, 100],  # Bridge
        [230, 150, 140],  # RailTrack
        [180, 165, 180],  # GroundRail
        [250, 170, 30],  # TrafficLight
        [110, 190, 160],  # Static
        [170, 120, 50],  # Dynamic
        [45, 60, 150],  # Water
        [145, 170, 100],  # Terrain
        [119, 11, 32],  # TwoWheeler
        [0, 60, 100],  # Bus
        [0, 0, 70],  # Truck
    ],
    dtype=np.uint8,
)

DELIVER_CONDITIONS: tuple[str, ...] = ("cloud", "fog", "night", "rain", "sun")
DELIVER_FAILURES: tuple[str, ...] = (
    "motionblur",
    "overexposure",
    "underexposure",
    "lidarjitter",
    "eventlowres",
)
DELIVER_CASES: tuple[str, ...] = DELIVER_CONDITIONS + DELIVER_FAILURES

#: modality -> (top-level folder, file-name suffix); "label" is the semantic folder.
DELIVER_FOLDERS: dict[str, tuple[str, str]] = {
    "rgb": ("img", "rgb"),
    "hha": ("hha", "depth"),
    "depth": ("depth", "depth"),
    "event": ("event", "event"),
    "lidar": ("lidar", "lidar"),
    "thermal": ("thermal", "thermal"),
    "label": ("semantic", "semantic"),
}

#: The DELIVER modality specs (bit depths pinned to the release's files).
DELIVER_SPECS: dict[str, ModalitySpec] = {
    "rgb": get_spec("rgb", bit_depth=8),
    "hha": get_spec("hha", bit_depth=8),
    "depth": get_spec("depth"),  # 16-bit mm -> m, 1 -> 3 channels, / 65.535 m
    "event": get_spec("event", bit_depth=8),
    "lidar": get_spec("lidar", bit_depth=8),
    "thermal": get_spec("thermal", bit_depth=8),
}

_RGB_SUFFIX = "_rgb_front.png"


class DeliverOptions(DatasetOptions):
    """The options of :class:`DELIVER` (``data.options`` of a run config)."""

    conditions: list[str] | None = Field(
        None, description="keep only these condition folders, e.g. [fog, night] (one or several)")
    case: str | None = Field(
        None, description="keep one case: a condition, or a sensor failure (path substring)")

    _names = field_validator("conditions", mode="before")(one_or_several)

    @field_validator("case")
    @classmethod
    def _known_case(cls, v: str | None) -> str | None:
        if v is not None and v not in DELIVER_CASES:
            raise ValueError(f"unknown DELIVER case '{v}' (valid: {', '.join(DELIVER_CASES)})")
        return v


@register_dataset("deliver")
class DELIVER(MultimodalDataset):
    """The DELIVER dataset (see the module docstring for layout, specs, label and cases).

    Args:
        root: folder holding ``img/``, ``semantic/`` and the other modality folders (the
            unpacked ``DELIVER`` folder), or a folder above it (see
            :meth:`~.base.MultimodalDataset.resolve_root`).
        split: ``train``, ``val`` or ``test``.
        modalities: any of ``rgb, hha, depth, event, lidar, thermal`` (default
            ``["rgb"]``).
        transform: applied to each Sample (see :mod:`fusionseg.data.transforms`).
        **options: :class:`DeliverOptions`: ``conditions`` (keep only these condition
            folders, e.g. ``["fog", "night"]``), ``case`` (keep one case: a condition, its
            folder, or a sensor failure, a substring of the relative path), and the common
            ``max_samples`` (applied after filtering), ``check_files``, ``specs``.

    Files are enumerated from ``img/`` (sorted by relative path). ``meta``: ``id`` = relative
    path without suffix (e.g. ``"fog/train/MAP_1/000001"``), ``condition`` = condition
    folder, ``case`` = failure name found in the path else the condition, ``paths`` =
    modality/label -> file.

    Raises:
        DataError: missing root, no ``img/*/{split}`` folder, unknown condition or case, no
            sample left after filtering; per sample: missing modality or label file (naming
            it and the modality), wrong bit depth/channels, size mismatch, raw label values
            outside 0..25 and 255.
    """

    classes = DELIVER_CLASSES
    palette = DELIVER_PALETTE
    available_modalities = ("rgb", "hha", "depth", "event", "lidar", "thermal")
    default_modalities = ("rgb",)
    default_specs = DELIVER_SPECS
    root_markers = ("img", "semantic")
    archive_folders = ("DELIVER",)
    Options = DeliverOptions
    options: DeliverOptions

    @classmethod
    def splits_in(cls, root: Path) -> list[str]:
        """The split folders found in any ``img/{condition}/``."""
        img = root / "img"
        conds = [c for c in img.iterdir() if c.is_dir()] if img.is_dir() else []
        return sorted({s.name for c in conds for s in c.iterdir() if s.is_dir()})

    def _index(self) -> list[SampleRecord]:
        img_root = self.root / "img"
        if not img_root.is_dir():
            raise DataError(
                "DELIVER layout: folder 'img' not found (expected "
                "img/{cloud,fog,night,rain,sun}/{train,val,test}/MAP_*/*_rgb_front.png)",
                path=img_root,
            )
        cond_dirs = sorted(d for d in img_root.iterdir() if d.is_dir())
        found = [d.name for d in cond_dirs]
        conditions, case = self.options.conditions, self.options.case
        if conditions is not None:
            unknown = [c for c in conditions if c not in found]
            if unknown:
                raise DataError(
                    f"condition(s) {', '.join(map(repr, unknown))} not found "
                    f"(present: {', '.join(found) or 'none'})",
                    path=img_root,
                )
            cond_dirs = [d for d in cond_dirs if d.name in conditions]
        split_dirs = [d / self.split for d in cond_dirs if (d / self.split).is_dir()]
        if not split_dirs:
            raise DataError(
                f"split '{self.split}' not found in any condition folder",
                path=img_root / "*" / self.split,
            )
        files: list[Path] = []
        for sd in split_dirs:
            files.extend(p for p in sd.glob(f"*/*{_RGB_SUFFIX}") if p.is_file())
        rel_files = sorted(p.relative_to(img_root).as_posix() for p in files)

        records: list[SampleRecord] = []
        for rel in rel_files:
            condition = rel.split("/", 1)[0]
            rel_dir = rel.rsplit("/", 1)[0]
            failure = next((f for f in DELIVER_FAILURES if f in rel_dir), None)
            if case is not None:
                if case in DELIVER_CONDITIONS:
                    if condition != case:
                        continue
                elif case not in rel_dir:
                    continue
            stem_rel = rel[: -len(_RGB_SUFFIX)]
            paths = {m: self._path(stem_rel, m) for m in self.modalities}
            records.append(
                SampleRecord(
                    id=stem_rel,
                    paths=paths,
                    label=self._path(stem_rel, "label"),
                    condition=condition,
                    case=failure or condition,
                )
            )
        if not records:
            what = f"split '{self.split}'"
            if case is not None:
                what += f", case '{case}'"
            if conditions is not None:
                what += f", conditions {conditions}"
            raise DataError(f"no DELIVER samples found for {what}", path=img_root)
        return records

    def _path(self, stem_rel: str, modality: str) -> Path:
        folder, suffix = DELIVER_FOLDERS[modality]
        return self.root / folder / f"{stem_rel}_{suffix}_front.png"

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        """Channel 0 of the semantic PNG: raw 1..25 -> 0..24; raw 0 and 255 -> 255.

        Other raw values map outside ``0..24`` and are reported by ``read_label``.
        """
        return decode_void_zero_label(raw, self.ignore_index)
