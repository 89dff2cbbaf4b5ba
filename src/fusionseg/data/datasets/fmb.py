"""FMB (RGB-infrared urban scenes; 14 classes; 800x600).

Layout of the release (SegMiF's ``FMB`` folder)::

    root/{train,test}/Visible/{name}.png    8-bit RGB
    root/{train,test}/Infrared/{name}.png   8-bit infrared, 1 channel (or 3 equal channels)
    root/{train,test}/Label/{name}.png      8-bit ids: 0 = unlabelled, 1..14 = classes
    (root/{train,test}/color/ holds colourized labels and is not read)

Modalities: ``rgb`` ``[3, H, W]`` in [0, 1]; ``thermal`` (the infrared image) ``[3, H, W]``
in [0, 1], the single channel repeated; both ImageNet-normalized.

Label shift: raw 0 -> ignore 255, raw 1..14 -> classes 0..13 of :data:`FMB_CLASSES`; raw 255
is ignore as well; anything else is an error.

1220 train / 280 test; results are reported on ``test``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusionseg.data.io import DataError
from fusionseg.data.modalities import ModalitySpec, get_spec

from .base import (
    MultimodalDataset,
    SampleRecord,
    StemFiles,
    decode_void_zero_label,
    register_dataset,
)

__all__ = ["FMB", "FMB_CLASSES", "FMB_FOLDERS", "FMB_PALETTE", "FMB_SPECS"]

FMB_CLASSES: list[str] = [
    "Road",
    "Sidewalk",
    "Building",
    "Traffic Lamp",
    "Traffic Sign",
    "Vegetation",
    "Sky",
    "Person",
    "Car",
    "Truck",
    "Bus",
    "Motorcycle",
    "Bicycle",
    "Pole",
]

#: FMB colours, ``uint8 [14, 3]``.
FMB_PALETTE: np.ndarray = np.array(
    [
        [228, 228, 179],  # Road
        [133, 57, 181],  # Sidewalk
        [177, 162, 67],  # Building
        [50, 178, 200],  # Traffic Lamp
        [199, 45, 132],  # Traffic Sign
        [84, 172, 66],  # Vegetation
        [79, 73, 179],  # Sky
        [166, 99, 76],  # Person
        [253, 121, 66],  # Car
        [91, 165, 137],  # Truck
        [152, 97, 155],  # Bus
        [140, 153, 105],  # Motorcycle
        [158, 215, 222],  # Bicycle
        [90, 113, 135],  # Pole
    ],
    dtype=np.uint8,
)

#: modality -> folder inside the split folder
FMB_FOLDERS: dict[str, str] = {"rgb": "Visible", "thermal": "Infrared", "label": "Label"}

FMB_SPECS: dict[str, ModalitySpec] = {
    "rgb": get_spec("rgb", bit_depth=8),
    "thermal": get_spec("thermal", bit_depth=8),
}

_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


@register_dataset("fmb")
class FMB(MultimodalDataset):
    """The FMB RGB-infrared dataset (see the module docstring).

    Args:
        root: the ``FMB`` folder holding ``train/`` and ``test/``, or a folder above it (see
            :meth:`~.base.MultimodalDataset.resolve_root`).
        split: ``train`` or ``test``.
        modalities: any of ``rgb, thermal`` (default both).
        transform: applied to each Sample.
        max_samples: keep the first ``max_samples`` (sorted) names.
        check_files: check every sample's files when the dataset is built (see
            :class:`~fusionseg.data.datasets.base.MultimodalDataset`); False skips it.
        specs: per-modality spec overrides.

    Samples are the files of ``{split}/Visible`` sorted by name. ``meta``: ``id`` = name.

    Raises:
        DataError: missing root, split or ``Visible`` folder, no image; per sample: missing
            or unreadable file, wrong bit depth, size mismatch, raw label values above 14
            (other than 255).
    """

    classes = FMB_CLASSES
    palette = FMB_PALETTE
    available_modalities = ("rgb", "thermal")
    default_modalities = ("rgb", "thermal")
    default_specs = FMB_SPECS
    check_bit_depths: dict[str, tuple[int, ...]] = {"label": (8,)}
    root_markers = ("*/Visible",)  # {split}/Visible
    archive_folders = ("FMB",)

    @classmethod
    def splits_in(cls, root: Path) -> list[str]:
        """The sub-folders of ``root`` that hold a ``Visible/`` folder."""
        return sorted(d.name for d in root.iterdir() if (d / FMB_FOLDERS["rgb"]).is_dir())

    def _index(self) -> list[SampleRecord]:
        split_dir = self.root / self.split
        vis = split_dir / FMB_FOLDERS["rgb"]
        if not vis.is_dir():
            present = self.splits_in(self.root)
            raise DataError(
                f"FMB split '{self.split}' not found (expected {{split}}/Visible/*.png; splits "
                f"present: {', '.join(present) or 'none'})",
                path=vis,
            )
        primary = StemFiles.scan(vis, _EXTS, follow_folder=False)  # missing files: {name}.png
        if not primary.files:
            raise DataError("no images found in the FMB Visible folder", path=vis)
        found = {}
        for m in self.modalities:
            folder = split_dir / FMB_FOLDERS[m]
            if m != "rgb" and not folder.is_dir():
                raise DataError(
                    f"FMB folder '{FMB_FOLDERS[m]}' not found", path=folder, modality=m
                )
            found[m] = primary if m == "rgb" else StemFiles.scan(folder, _EXTS, follow_folder=False)
        labels = StemFiles.scan(split_dir / FMB_FOLDERS["label"], _EXTS, follow_folder=False)
        records = []
        for name in sorted(primary.files):
            paths = {m: found[m].path(name) for m in self.modalities}
            records.append(SampleRecord(id=name, paths=paths, label=labels.path(name)))
        return records

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        """Channel 0: raw 0 and 255 -> ignore 255; raw 1..14 -> 0..13 (others out of range)."""
        return decode_void_zero_label(raw, self.ignore_index)
