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

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from fusionseg.data.io import DataError
from fusionseg.data.modalities import ModalitySpec, get_spec

from .base import MultimodalDataset, SampleRecord, StemFiles, register_dataset
from .options import DatasetOptions

__all__ = ["MFNET_CLASSES", "MFNET_PALETTE", "MFNET_SPECS", "MFNet", "MFNetOptions"]

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


class MFNetOptions(DatasetOptions):
    """The options of :class:`MFNet` (``data.options`` of a run config)."""

    layout: Literal["auto", "rgba", "split"] = Field(
        "auto", description="auto (from the folders), rgba (images/) or split (rgb/ + ther/)")

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
        **options: :class:`MFNetOptions`: ``layout`` (``"auto"``, ``"rgba"`` or
            ``"split"``), and the common ``max_samples`` (the first names of the list),
            ``check_files``, ``specs`` (on top of the layout's).

    Attributes:
        layout: the layout read, ``"rgba"`` or ``"split"`` (``auto`` resolved).

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
    split_list_dir = ""  # the ``*.txt`` lists lie in the root
    Options = MFNetOptions
    options: MFNetOptions

    def _prepare(self) -> None:
        """The layout (``auto``: detected from the root's folders) and its specs.

        Raises:
            DataError: ``auto`` and neither layout's folders in the root.
        """
        layout = self.options.layout
        self.layout = _detect_layout(self.root) if layout == "auto" else layout
        self.default_specs = MFNET_SPECS[self.layout]

    def _index(self) -> list[SampleRecord]:
        lst, names = self.read_split_names()
        folders = dict(MFNET_FOLDERS[self.layout])
        if self.layout == "split":
            folders["rgb"] = next((f for f in SPLIT_RGB_FOLDERS if (self.root / f).is_dir()),
                                  folders["rgb"])
        found: dict[str, StemFiles] = {}
        for m in self.modalities:
            folder = self.root / folders[m]
            if not folder.is_dir():
                raise DataError(
                    f"MFNet ({self.layout} layout): folder '{folders[m]}' not found",
                    path=folder,
                    modality=m,
                )
            found[m] = StemFiles.scan(folder, _EXTS)
        records = []
        for name in names:
            paths = {m: found[m].path(name) for m in self.modalities}
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
