"""MFNet (RGB-thermal urban scenes; 9 classes; 640x480).

Two layouts are in use; both are read (``layout="auto"`` picks the one present):

``rgba`` — the original release (``ir_seg_dataset``)::

    root/images/{name}.png    8-bit RGBA: R, G, B and thermal in the 4th channel
    root/labels/{name}.png    8-bit class ids 0..8
    root/{train,val,test}.txt (and test_day.txt, test_night.txt): one name per line

``split`` — later reference code, thermal in its own folder::

    root/rgb/{name}.{png,jpg}   8-bit RGB (``img/`` in the StitchFusion release: read too)
    root/ther/{name}.{png,jpg}  8-bit thermal, 1 channel (or 3 equal channels)
    root/labels/{name}.png, root/*.txt as above

Modalities: ``rgb`` ``[3, H, W]`` in [0, 1] (ImageNet normalization); ``thermal`` ``[3, H, W]``
in [0, 1], the single channel repeated.

Label: channel 0, values 0..8 are the classes of :data:`MFNET_CLASSES`; class 0
``unlabeled`` is a real class that counts in mIoU (as in the reference code). 255 (not in the
release) is ignore; other values are an error.

Names end in ``D`` (day) or ``N`` (night): ``meta`` ``condition`` and ``case`` are ``"day"``
or ``"night"``. 1569 images: 784 train / 392 val / 393 test; the reference code evaluates on
``test.txt``, so reported numbers use ``split="test"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

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

__all__ = ["MFNET_CLASSES", "MFNET_PALETTE", "MFNET_SPECS", "MFNet"]

MFNET_CLASSES: list[str] = [
    "unlabeled",
    "car",
    "person",
    "bike",
    "curve",
    "car_stop",
    "guardrail",
    "color_cone",
    "bump",
]

#: MFNet colours, ``uint8 [9, 3]`` (unlabeled black).
MFNET_PALETTE: np.ndarray = np.array(
    [
        [0, 0, 0],
        [64, 0, 128],
        [64, 64, 0],
        [0, 128, 192],
        [0, 0, 192],
        [128, 128, 0],
        [64, 64, 128],
        [192, 128, 128],
        [192, 64, 0],
    ],
    dtype=np.uint8,
)

#: layout -> modality -> spec. In ``rgba`` both modalities read the same 4-channel file.
MFNET_SPECS: dict[str, dict[str, ModalitySpec]] = {
    "rgba": {
        "rgb": get_spec("rgb", bit_depth=8, file_channels=(0, 1, 2)),
        "thermal": get_spec("thermal", bit_depth=8, file_channels=(3,)),
    },
    "split": {
        "rgb": get_spec("rgb", bit_depth=8),
        "thermal": get_spec("thermal", bit_depth=8),  # 1 channel (or 3) -> 3
    },
}

#: layout -> modality -> folder
MFNET_FOLDERS: dict[str, dict[str, str]] = {
    "rgba": {"rgb": "images", "thermal": "images"},
    "split": {"rgb": "rgb", "thermal": "ther"},
}

_EXTS = (".png", ".jpg", ".jpeg")


#: folders of the RGB images in the ``split`` layout, in the order they are looked for (the
#: StitchFusion release reads ``img/``, semseg/datasets/MFNet.py:41)
SPLIT_RGB_FOLDERS = ("rgb", "img")


def _detect_layout(root: Path) -> str:
    if (root / "images").is_dir():
        return "rgba"
    if any((root / f).is_dir() for f in (*SPLIT_RGB_FOLDERS, "ther")):
        return "split"
    raise DataError(
        "MFNet layout not recognized: expected images/ (4-channel RGBA PNGs) or rgb/ (or img/) "
        "+ ther/",
        path=root,
    )


@register_dataset("mfnet")
class MFNet(MultimodalDataset):
    """The MFNet RGB-T dataset in either layout (see the module docstring).

    Args:
        root: folder holding ``images/`` (or ``rgb/``, ``ther/``), ``labels/`` and the lists
            (the unpacked ``ir_seg_dataset``), or a folder above it (see
            :meth:`~.base.MultimodalDataset.resolve_root`).
        split: a list file in ``root`` without ``.txt`` (``train``, ``val``, ``test``,
            ``test_day``, ``test_night``).
        modalities: any of ``rgb, thermal`` (default both).
        transform: applied to each Sample.
        layout: ``"auto"``, ``"rgba"`` or ``"split"``.
        max_samples: keep the first ``max_samples`` names of the list.
        check_files: check every sample's files when the dataset is built (see
            :class:`~fusionseg.data.datasets.base.MultimodalDataset`); False skips it.
        specs: per-modality spec overrides (on top of the layout's).

    Raises:
        DataError: missing root, unrecognized layout, missing or empty list file; per sample:
            missing/unreadable file, an ``images/`` PNG without the 4th (thermal) channel,
            wrong bit depth, size mismatch, label values outside 0..8 and 255.
    """

    classes = MFNET_CLASSES
    palette = MFNET_PALETTE
    available_modalities = ("rgb", "thermal")
    default_modalities = ("rgb", "thermal")
    check_bit_depths: dict[str, tuple[int, ...]] = {"label": (8,)}
    root_markers = (("images", *SPLIT_RGB_FOLDERS, "ther"), "labels")
    archive_folders = ("ir_seg_dataset", "MFNet")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        modalities: Sequence[str] | None = None,
        transform: Callable[[Sample], Sample] | None = None,
        *,
        layout: Literal["auto", "rgba", "split"] = "auto",
        max_samples: int | None = None,
        check_files: bool = True,
        specs: Mapping[str, ModalitySpec | Mapping[str, Any]] | None = None,
    ) -> None:
        if layout not in ("auto", "rgba", "split"):
            raise DataError(f"MFNet layout must be auto, rgba or split; got '{layout}'")
        root = self.resolve_root(root)
        if layout == "auto":
            layout = _detect_layout(root)
        self.layout = layout if layout != "auto" else "rgba"
        self.default_specs = MFNET_SPECS[self.layout]
        super().__init__(root, split, modalities, transform, specs=specs,
                         max_samples=max_samples, check_files=check_files)

    @classmethod
    def splits_in(cls, root: Path) -> list[str]:
        """The ``*.txt`` list files in ``root``."""
        return list_file_splits(root)

    def _index(self) -> list[SampleRecord]:
        lst, names = read_required_split("MFNet", self.split, self.root)
        folders = dict(MFNET_FOLDERS[self.layout])
        if self.layout == "split":
            folders["rgb"] = next((f for f in SPLIT_RGB_FOLDERS if (self.root / f).is_dir()),
                                  folders["rgb"])
        found: dict[str, dict[str, Path]] = {}
        default_ext: dict[str, str] = {}
        for m in self.modalities:
            folder = self.root / folders[m]
            if not folder.is_dir():
                raise DataError(
                    f"MFNet ({self.layout} layout): folder '{folders[m]}' not found",
                    path=folder,
                    modality=m,
                )
            found[m] = files_by_stem(folder, _EXTS)
            exts = sorted({p.suffix for p in found[m].values()})
            default_ext[m] = ".png" if not exts or ".png" in exts else exts[0]
        records = []
        for name in names:
            paths = {
                m: found[m].get(name, self.root / folders[m] / f"{name}{default_ext[m]}")
                for m in self.modalities
            }
            cond = {"D": "day", "N": "night"}.get(name[-1:].upper())
            records.append(
                SampleRecord(
                    id=name,
                    paths=paths,
                    label=self.root / "labels" / f"{name}.png",
                    condition=cond,
                    case=cond,
                    extra={"list_file": lst},
                )
            )
        return records
