"""NYUDv2 (RGB-D indoor scenes; 40 classes; 640x480).

Layout in use by the RGB-D reference code (the 1449 labelled frames of NYU Depth V2,
exported from ``nyu_depth_v2_labeled.mat`` with the 40-class mapping of Gupta et al.)::

    root/RGB/{name}.jpg      8-bit RGB (.png accepted)
    root/HHA/{name}.png      8-bit 3-channel HHA encoding of the depth
    root/Depth/{name}.png    16-bit depth in millimetres
    root/Label/{name}.png    8-bit: 0 = void, 1..40 = classes
    root/train.txt, root/test.txt   one entry per line (``12``, ``12.jpg`` or
                                    ``RGB/12.jpg Label/12.png``: the first token's stem)

Modalities: ``rgb`` ``[3, H, W]`` in [0, 1]; ``hha`` ``[3, H, W]`` in [0, 1]; ``depth``
``[3, H, W]`` in metres (``raw * 0.001``, repeated), normalized by 65.535 m. (AsymFusion's
``raw / 5000`` input is the spec override ``{"depth": {"scale": 0.0002, "unit": "",
"normalize": None}}`` that its method config sets.) Only the selected modalities' folders need
to exist: either ``HHA/`` or ``Depth/`` is enough.

Label shift: raw 0 (void) -> ignore 255, raw 1..40 -> classes 0..39 of
:data:`NYUDV2_CLASSES`; raw 255 is ignore as well; anything else is an error.

795 train / 654 test; results are reported on ``test``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionseg.data.io import DataError
from fusionseg.data.modalities import ModalitySpec, get_spec
from fusionseg.data.sample import Sample

from .base import (
    MultimodalDataset,
    SampleRecord,
    files_by_stem,
    list_file_splits,
    read_required_split,
    register_dataset,
)

__all__ = ["NYUDV2_CLASSES", "NYUDV2_FOLDERS", "NYUDV2_PALETTE", "NYUDV2_SPECS", "NYUDv2"]

NYUDV2_CLASSES: list[str] = [
    "wall",
    "floor",
    "cabinet",
    "bed",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "bookshelf",
    "picture",
    "counter",
    "blinds",
    "desk",
    "shelves",
    "curtain",
    "dresser",
    "pillow",
    "mirror",
    "floor mat",
    "clothes",
    "ceiling",
    "books",
    "refrigerator",
    "television",
    "paper",
    "towel",
    "shower curtain",
    "box",
    "whiteboard",
    "person",
    "night stand",
    "toilet",
    "sink",
    "lamp",
    "bathtub",
    "bag",
    "otherstructure",
    "otherfurniture",
    "otherprop",
]


def _spread_palette(n: int) -> np.ndarray:
    """``n`` distinct colours spread over hue and lightness (deterministic)."""
    import colorsys

    out = np.zeros((n, 3), dtype=np.uint8)
    for k in range(n):
        h = (k * 0.618033988749895) % 1.0
        v = (0.95, 0.75, 0.55)[k % 3]
        s = (0.55, 0.85)[(k // 3) % 2]
        out[k] = [round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v)]
    return out


#: One colour per class, ``uint8 [40, 3]``.
NYUDV2_PALETTE: np.ndarray = _spread_palette(len(NYUDV2_CLASSES))

#: modality -> folder
NYUDV2_FOLDERS: dict[str, str] = {"rgb": "RGB", "hha": "HHA", "depth": "Depth", "label": "Label"}

NYUDV2_SPECS: dict[str, ModalitySpec] = {
    "rgb": get_spec("rgb", bit_depth=8),
    "hha": get_spec("hha", bit_depth=8),
    "depth": get_spec("depth"),  # 16-bit mm -> m, repeated to 3, / 65.535 m
}

_EXTS = (".png", ".jpg", ".jpeg")


@register_dataset("nyudv2")
class NYUDv2(MultimodalDataset):
    """The NYUDv2 40-class RGB-D dataset (see the module docstring).

    Args:
        root: folder holding ``RGB/``, ``HHA/`` and/or ``Depth/``, ``Label/`` and the lists
            (e.g. ``NYUDepthv2``), or a folder above it (see
            :meth:`~.base.MultimodalDataset.resolve_root`).
        split: a list file in ``root`` without ``.txt`` (``train``, ``test``).
        modalities: any of ``rgb, hha, depth`` (default ``["rgb", "depth"]``).
        transform: applied to each Sample.
        max_samples: keep the first ``max_samples`` names of the list.
        check_files: check every sample's files when the dataset is built (see
            :class:`~fusionseg.data.datasets.base.MultimodalDataset`); False skips it.
        specs: per-modality spec overrides.

    Raises:
        DataError: missing root, list file or a selected modality's folder (naming it); per
            sample: missing/unreadable file, depth that is not 16-bit, size mismatch, raw label
            values above 40 (other than 255).
    """

    classes = NYUDV2_CLASSES
    palette = NYUDV2_PALETTE
    available_modalities = ("rgb", "hha", "depth")
    default_modalities = ("rgb", "depth")
    default_specs = NYUDV2_SPECS
    check_bit_depths: dict[str, tuple[int, ...]] = {"label": (8,)}
    root_markers = ("Label", ("RGB", "HHA", "Depth"))
    archive_folders = ("NYUDepthv2", "NYUDv2")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        modalities: Sequence[str] | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        *,
        max_samples: int | None = None,
        check_files: bool = True,
        specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(root, split, modalities, transform, specs=specs,
                         max_samples=max_samples, check_files=check_files)

    @classmethod
    def splits_in(cls, root: Path) -> list[str]:
        """The ``*.txt`` list files in ``root``."""
        return list_file_splits(root)

    def _index(self) -> list[SampleRecord]:
        lst, names = read_required_split("NYUDv2", self.split, self.root)
        found: dict[str, dict[str, Path]] = {}
        default_ext: dict[str, str] = {}
        for m in [*self.modalities, "label"]:
            folder = self.root / NYUDV2_FOLDERS[m]
            if m != "label" and not folder.is_dir():
                raise DataError(
                    f"NYUDv2 folder '{NYUDV2_FOLDERS[m]}' not found", path=folder, modality=m
                )
            found[m] = files_by_stem(folder, _EXTS)
            exts = sorted({p.suffix for p in found[m].values()})
            default_ext[m] = ".jpg" if m == "rgb" else ".png"
            if exts and default_ext[m] not in exts:
                default_ext[m] = exts[0]
        records = []
        for name in names:
            paths = {
                m: found[m].get(name, self.root / NYUDV2_FOLDERS[m] / f"{name}{default_ext[m]}")
                for m in self.modalities
            }
            label = found["label"].get(
                name, self.root / NYUDV2_FOLDERS["label"] / f"{name}{default_ext['label']}"
            )
            records.append(
                SampleRecord(id=name, paths=paths, label=label, extra={"list_file": lst})
            )
        return records

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        """Channel 0: raw 0 (void) and 255 -> ignore 255; raw 1..40 -> 0..39."""
        r = raw[:, :, 0].astype(np.int64)
        out = r - 1
        out[(r == 0) | (r == 255)] = self.ignore_index
        return out
