"""Generic folder layout for one's own data (dataset name ``"folder"``).

Layout::

    root/dataset.yaml
    root/{split}/{modality}/{stem}.{png,jpg,jpeg,tif,tiff,npy,npz}
    root/{split}/label/{stem}.png            (optional: a split without label/ is unlabelled)

``dataset.yaml`` (validated; unknown keys are errors naming the key and the file)::

    classes: [road, car, person]          # required; index = class id
    palette: [[128, 64, 128], [0, 0, 142], [220, 20, 60]]   # optional, one RGB per class
    ignore_index: 255                     # optional
    label_format: index                   # index (class ids in channel 0) | color (RGB
                                          #   colours of `palette`; other colours -> ignore)
    label_map: {0: 255, 1: 0, 2: 1, 3: 2} # optional raw value -> class id; when given every
                                          #   raw value must be listed (or be ignore_index)
    modalities:                           # modality -> ModalitySpec fields overriding the
      rgb: {}                             #   default spec of that name (a new name needs
      thermal: {channels: 1, repeat_to: 3, bit_depth: 16, normalize: minmax}   #   channels)

Stems are enumerated from the first selected modality's folder (sorted); each other
modality's file is found by stem with any supported extension. ``meta``: ``id`` = stem,
``condition`` and ``case`` = None, ``paths`` = modality/label -> file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fusionseg.data.io import DataError
from fusionseg.data.modalities import DEFAULT_SPECS, ModalitySpec, get_spec
from fusionseg.data.sample import IGNORE_INDEX

from .base import MultimodalDataset, SampleRecord, name_list, register_dataset

__all__ = ["FOLDER_EXTENSIONS", "FolderDataset", "FolderDatasetConfig", "default_palette"]

#: Extensions looked up for modality and label files, in order of preference.
FOLDER_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz")

LABEL_DIR = "label"
CONFIG_NAME = "dataset.yaml"


def default_palette(num_classes: int) -> np.ndarray:
    """Distinct deterministic colours ``uint8 [K, 3]`` (bit-interleaved class ids)."""
    pal = np.zeros((num_classes, 3), dtype=np.uint8)
    for k in range(num_classes):
        v, r, g, b = k, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (v & 1) << shift
            g |= ((v >> 1) & 1) << shift
            b |= ((v >> 2) & 1) << shift
            v >>= 3
        pal[k] = (r, g, b)
    return pal


class FolderDatasetConfig(BaseModel):
    """The schema of ``dataset.yaml`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    classes: list[str] = Field(min_length=1)
    palette: list[tuple[int, int, int]] | None = None
    ignore_index: int = IGNORE_INDEX
    label_format: Literal["index", "color"] = "index"
    label_map: dict[int, int] | None = None
    modalities: dict[str, dict[str, Any] | None] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> FolderDatasetConfig:
        k = len(self.classes)
        if len(set(self.classes)) != k:
            raise ValueError("classes must be unique")
        if self.palette is not None:
            if len(self.palette) != k:
                raise ValueError(f"palette has {len(self.palette)} colours for {k} classes")
            if any(not 0 <= c <= 255 for rgb in self.palette for c in rgb):
                raise ValueError("palette values must be in 0..255")
        if self.label_format == "color":
            if self.palette is None:
                raise ValueError("label_format 'color' needs a palette")
            if self.label_map is not None:
                raise ValueError("label_map cannot be combined with label_format 'color'")
        if self.label_map is not None:
            bad = [v for v in self.label_map.values() if v != self.ignore_index and not 0 <= v < k]
            if bad:
                raise ValueError(
                    f"label_map targets {bad} are not class ids 0..{k - 1} or {self.ignore_index}"
                )
        return self


def _format_validation(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}'")
        elif loc:
            parts.append(f"'{loc}': {e['msg']}")
        else:
            parts.append(e["msg"])
    return "; ".join(parts)


def load_folder_config(path: str | os.PathLike) -> FolderDatasetConfig:
    """Read and validate a ``dataset.yaml``.

    Raises:
        DataError: missing file, bad YAML, unknown key or invalid value (naming the key and
            the file).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"missing {CONFIG_NAME} (the folder dataset's description)", path=p)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"invalid YAML ({err})", path=p) from err
    if not isinstance(data, dict):
        raise DataError("expected a mapping with at least 'classes'", path=p)
    try:
        return FolderDatasetConfig.model_validate(data)
    except ValidationError as err:
        raise DataError(_format_validation(err), path=p) from err


def _files_by_stem(folder: Path, modality: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.suffix.lower() not in FOLDER_EXTENSIONS:
            continue
        prev = out.get(f.stem)
        if prev is not None:
            raise DataError(
                f"ambiguous files for stem '{f.stem}': {prev.name} and {f.name}",
                path=folder,
                modality=modality,
            )
        out[f.stem] = f
    return out


@register_dataset("folder")
class FolderDataset(MultimodalDataset):
    """Own data in the generic folder layout (see the module docstring).

    Args:
        root: folder holding ``dataset.yaml`` and the split folders.
        split: split folder name.
        modalities: modality folders to load, in order (default: the yaml's ``modalities``
            keys, else every folder of the split except ``label``, sorted).
        transform: applied to each Sample.
        **options: the common :class:`~.options.DatasetOptions`: ``max_samples`` (keep the
            first stems), ``check_files``, ``specs`` (extra per-modality spec overrides on top
            of the yaml's).

    Raises:
        DataError: missing root, ``dataset.yaml``, split or modality folder (naming the path);
            invalid yaml (naming the key and file); no files in the first modality's folder;
            per sample: missing file, wrong bit depth/channels, size mismatch, label value out
            of range or not in ``label_map``.
    """

    def _prepare(self) -> None:
        """Read ``dataset.yaml``: classes, palette, label decoding and the modality specs."""
        cfg_path = self.root / CONFIG_NAME
        self.config = load_folder_config(cfg_path)
        cfg = self.config
        self.classes = list(cfg.classes)
        self.palette = (
            np.asarray(cfg.palette, dtype=np.uint8)
            if cfg.palette is not None
            else default_palette(len(cfg.classes))
        )
        self.ignore_index = cfg.ignore_index
        self.label_value_channels = None if cfg.label_format == "color" else (0,)
        yaml_specs: dict[str, ModalitySpec] = {}
        for m, overrides in cfg.modalities.items():
            try:
                yaml_specs[m] = get_spec(m, **(overrides or {}))
            except DataError as err:
                raise DataError(
                    f"modalities.{m}: {err.problem}", path=cfg_path, modality=m
                ) from err
        self.default_specs = yaml_specs

    def _select_modalities(self, modalities: Sequence[str] | str | None) -> list[str]:
        """The given modalities, else the yaml's ``modalities`` keys, else every folder of the
        split except ``label`` (sorted).

        Raises:
            DataError: a modality with no spec (neither in the yaml nor built in), and those
                of :meth:`MultimodalDataset._select_modalities`.
        """
        split_dir = self.root / self.split
        if not modalities:
            if self.config.modalities:
                modalities = list(self.config.modalities)
            elif split_dir.is_dir():
                modalities = sorted(
                    d.name for d in split_dir.iterdir() if d.is_dir() and d.name != LABEL_DIR
                )
        for m in name_list(modalities) or []:
            if m not in self.default_specs and m not in DEFAULT_SPECS:
                raise DataError(
                    f"modality '{m}' has no spec: add it under 'modalities' with at least "
                    "'channels'",
                    path=self.root / CONFIG_NAME,
                    modality=m,
                )
        return super()._select_modalities(modalities)

    def _index(self) -> list[SampleRecord]:
        split_dir = self.root / self.split
        if not split_dir.is_dir():
            raise DataError(f"split '{self.split}' not found", path=split_dir)
        by_mod: dict[str, dict[str, Path]] = {}
        for m in self.modalities:
            folder = split_dir / m
            if not folder.is_dir():
                raise DataError("modality folder not found", path=folder, modality=m)
            by_mod[m] = _files_by_stem(folder, m)
        first = self.modalities[0]
        stems = sorted(by_mod[first])
        if not stems:
            raise DataError(
                f"no image files ({', '.join(FOLDER_EXTENSIONS)}) found",
                path=split_dir / first,
                modality=first,
            )
        label_dir = split_dir / LABEL_DIR
        labels = _files_by_stem(label_dir, "label") if label_dir.is_dir() else None
        records = []
        for stem in stems:
            paths = {
                m: by_mod[m].get(stem, split_dir / m / f"{stem}.*") for m in self.modalities
            }
            label = None
            if labels is not None:
                label = labels.get(stem, label_dir / f"{stem}.png")
            records.append(SampleRecord(id=stem, paths=paths, label=label))
        return records

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        """Class ids ``int64 [H, W]`` from a label file (see ``label_format``/``label_map``).

        Raises:
            DataError: a multi-channel index label whose channels differ, a colour label
                with fewer than 3 channels, raw values missing from ``label_map``.
        """
        cfg = self.config
        if cfg.label_format == "color":
            if raw.shape[2] < 3:
                raise DataError(
                    f"label_format 'color' needs an RGB label, file has {raw.shape[2]} channel(s)"
                )
            rgb = raw[:, :, :3].astype(np.int64)
            code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            out = np.full(code.shape, self.ignore_index, dtype=np.int64)
            for k, (r, g, b) in enumerate(cfg.palette or []):
                out[code == ((r << 16) | (g << 8) | b)] = k
            return out
        if raw.shape[2] > 1:
            first = raw[:, :, :1]
            body = raw[:, :, :3] if raw.shape[2] in (3, 4) else raw
            if not (body == first).all():
                raise DataError(
                    f"label must hold class ids in one channel, file has {raw.shape[2]} "
                    "different channels (use label_format: color for colour-coded labels)"
                )
        lab = raw[:, :, 0].astype(np.int64)
        if cfg.label_map is None:
            return lab
        values = np.unique(lab)
        unmapped = [int(v) for v in values if int(v) not in cfg.label_map and v != self.ignore_index]
        if unmapped:
            raise DataError(
                f"raw label value(s) {unmapped[:10]} not in label_map "
                f"(mapped: {sorted(cfg.label_map)})"
            )
        out = np.full(lab.shape, self.ignore_index, dtype=np.int64)
        for raw_v, cls in cfg.label_map.items():
            out[lab == raw_v] = cls
        return out
