"""NYUDv2 (RGB-D indoor scenes; 40 classes; 640x480).

Layout in use by the RGB-D reference code (CMX, DFormer: the 1449 labelled frames of NYU Depth
V2, exported from ``nyu_depth_v2_labeled.mat`` with the 40-class mapping of Gupta et al.)::

    root/RGB/{name}.jpg      8-bit RGB (.png accepted)
    root/HHA/{name}.png      8-bit 3-channel HHA encoding of the depth
    root/Depth/{name}.png    16-bit depth in millimetres (raw 1000 = 1 m)
    root/Label/{name}.png    8-bit: 0 = void, 1..40 = classes (``label_format="1-40"``);
                             ``Labels/`` (the StitchFusion release's name) is read too
    root/train.txt, root/test.txt   one entry per line (``12``, ``12.jpg`` or
                                    ``RGB/12.jpg Label/12.png``: the first token's stem)

Modalities: ``rgb`` ``[3, H, W]`` in [0, 1]; ``hha`` ``[3, H, W]`` in [0, 1]; ``depth``
``[3, H, W]`` in metres (``raw * 0.001``, repeated), normalized by 65.535 m. Only the selected
modalities' folders need to exist: either ``HHA/`` or ``Depth/`` is enough.

Depth from elsewhere: the AsymFusion / CEN releases (DrSleep's NYUDv2 preprocessing) store
depth PNGs in units of 1/5000 m (raw 5000 = 1 m); such files placed in ``Depth/`` need the spec
override ``{"depth": {"scale": 0.0002}}`` to be read as metres. The AsymFusion recipe feeds
the model metres without normalization (``{"depth": {"scale": 0.001, "normalize": None}}`` on
the millimetre files of this layout), which is what its release feeds it.

Labels (``label_format``):

- ``"1-40"`` (default, this layout): raw 0 (void) -> ignore 255, raw 1..40 -> classes 0..39 of
  :data:`NYUDV2_CLASSES`; raw 255 is ignore as well, but a file holding it gets a warning (once
  per dataset): 255 is the void of the other encoding, whose masks read as "1-40" lose class
  0 (wall) and shift every other class by one without an error;
- ``"0-39"`` (the AsymFusion / CEN / light-weight-refinenet ``masks/``): raw 0..39 are the
  classes, raw 255 is void -> ignore. A raw value 40..254 is an error that names the file (a
  "1-40" mask read as "0-39" fails on its first ``otherprop`` pixel).

Anything else is an error.

795 train / 654 test; results are reported on ``test``.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
from pydantic import Field

from fusionseg.data.io import DataError
from fusionseg.data.modalities import ModalitySpec, get_spec

from .base import (
    MultimodalDataset,
    SampleRecord,
    StemFiles,
    decode_void_zero_label,
    register_dataset,
)
from .options import DatasetOptions

__all__ = ["NYUDV2_CLASSES", "NYUDV2_LABEL_FORMATS", "NYUDV2_FOLDERS", "NYUDV2_PALETTE",
           "NYUDV2_SPECS", "NYUDv2", "NYUDv2Options"]

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
#: label folders in the order they are looked for (the StitchFusion release reads ``Labels/``)
LABEL_FOLDERS = ("Label", "Labels")

NYUDV2_SPECS: dict[str, ModalitySpec] = {
    "rgb": get_spec("rgb", bit_depth=8),
    "hha": get_spec("hha", bit_depth=8),
    "depth": get_spec("depth"),  # 16-bit mm -> m, repeated to 3, / 65.535 m
}

_EXTS = (".png", ".jpg", ".jpeg")

#: ``label_format`` values: ``"1-40"`` (0 = void; this layout) and ``"0-39"`` (255 = void; the
#: masks of the AsymFusion / CEN / light-weight-refinenet releases)
NYUDV2_LABEL_FORMATS: tuple[str, ...] = ("1-40", "0-39")


class NYUDv2Options(DatasetOptions):
    """The options of :class:`NYUDv2` (``data.options`` of a run config)."""

    label_format: Literal["1-40", "0-39"] = Field(
        "1-40", description="1-40 (0 = void, 1..40 = classes) or 0-39 (255 = void; AsymFusion/CEN)")

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
        **options: :class:`NYUDv2Options`: ``label_format`` (``"1-40"``, the default: 0 =
            void, 1..40 = classes; or ``"0-39"``: 0..39 = classes, 255 = void, the release
            masks of AsymFusion / CEN; see the module docstring), and the common
            ``max_samples`` (the first names of the list), ``check_files``, ``specs``.

    Raises:
        DataError: missing root, list file or a selected modality's folder (naming it); an
            unknown ``label_format``; per sample: missing/unreadable file, depth that is not
            16-bit, size mismatch, raw label values above 40 (other than 255) with "1-40",
            raw values 40..254 with "0-39".

    Warns:
        UserWarning: (once per dataset) a "1-40" label file holding raw 255, the void value
            of the "0-39" encoding.
    """

    classes = NYUDV2_CLASSES
    palette = NYUDV2_PALETTE
    available_modalities = ("rgb", "hha", "depth")
    default_modalities = ("rgb", "depth")
    default_specs = NYUDV2_SPECS
    check_bit_depths: dict[str, tuple[int, ...]] = {"label": (8,)}
    root_markers = (LABEL_FOLDERS, ("RGB", "HHA", "Depth"))
    archive_folders = ("NYUDepthv2", "NYUDv2")
    split_list_dir = ""  # the ``*.txt`` lists lie in the root

    Options = NYUDv2Options
    options: NYUDv2Options
    #: set on the instance once the "1-40" label with raw 255 warning is given
    _warned_255: bool = False

    def _index(self) -> list[SampleRecord]:
        lst, names = self.read_split_names()
        found: dict[str, StemFiles] = {}
        folders = dict(NYUDV2_FOLDERS)
        folders["label"] = next((f for f in LABEL_FOLDERS if (self.root / f).is_dir()),
                                folders["label"])
        for m in [*self.modalities, "label"]:
            folder = self.root / folders[m]
            if m != "label" and not folder.is_dir():
                raise DataError(
                    f"NYUDv2 folder '{folders[m]}' not found", path=folder, modality=m
                )
            found[m] = StemFiles.scan(folder, _EXTS, preferred=".jpg" if m == "rgb" else ".png")
        records = []
        for name in names:
            paths = {m: found[m].path(name) for m in self.modalities}
            records.append(SampleRecord(id=name, paths=paths, label=found["label"].path(name),
                                        extra={"list_file": lst}))
        return records

    def decode_label(self, raw: np.ndarray) -> np.ndarray:
        """Channel 0, by ``label_format``: "1-40": raw 0 (void) and 255 -> ignore 255, raw
        1..40 -> 0..39; "0-39": raw 0..39 as they are, raw 255 -> ignore, 40..254 an error."""
        r = raw[:, :, 0].astype(np.int64)
        if self.options.label_format == "0-39":
            bad = (r >= len(NYUDV2_CLASSES)) & (r != 255)
            if bad.any():
                vals = np.unique(r[bad])[:10].tolist()
                raise DataError(
                    f"label value out of range for label_format '0-39' (0..39 = classes, 255 = "
                    f"void): raw value(s) {vals} ({int(bad.sum())} pixel(s)); a mask with 0 = "
                    "void and 1..40 = classes (the NYUDepthv2 Label/ export) needs "
                    "label_format '1-40'")
            out = r.copy()
            out[r == 255] = self.ignore_index
            return out
        if not self._warned_255 and bool((r == 255).any()):
            self._warned_255 = True
            warnings.warn(
                "NYUDv2 label file holds raw 255, the void value of the '0-39' encoding (the "
                "masks of the AsymFusion / CEN releases), while label_format is '1-40' (0 = "
                "void, 1..40 = classes): read as '1-40' such a mask loses class 0 (wall) and "
                "shifts every other class by one. If your Label/ files are those masks, set "
                "data.options.label_format: '0-39' (reported once per dataset)",
                UserWarning, stacklevel=2)
        return decode_void_zero_label(raw, self.ignore_index)
