"""MCubeS (multimodal material segmentation; 20 classes; RGB + AoLP + DoLP + NIR).

Layout of the release (``multimodal_dataset.zip``; ``root`` is the ``multimodal_dataset``
folder, or its parent or grandparent)::

    root/polL_color/{name}.png        RGB, 8-bit (16-bit accepted), 1224 x 1024
    root/polL_aolp_sin/{name}.npy     sin(AoLP), float [H, W] in [-1, 1]
    root/polL_aolp_cos/{name}.npy     cos(AoLP), float [H, W] in [-1, 1]
    root/polL_dolp/{name}.npy         DoLP, float [H, W] in [0, 1]
    root/NIR_warped/{name}.png        NIR warped to the RGB view, 8- or 16-bit gray
    root/NIR_warped_mask/{name}.png   white = pixels without valid NIR (optional use)
    root/GT/{name}.png                material ids 0..19, 255 = unlabelled
    root/list_folder/{train,val,test,all}.txt   one name per line

(``SS/``, ``SSGT4MS/`` hold Cityscapes-style semantic guidance and are not read.)

Modality -> files and spec (see :data:`MCUBES_SPECS`):

======== ===================================== ==============================================
modality files                                 tensor
======== ===================================== ==============================================
rgb      polL_color/{name}.png                 [3, H, W] in [0, 1] (uint8 / 255, uint16 /
                                               65535), ImageNet normalization
aolp     polL_aolp_sin + polL_aolp_cos (.npy)  [3, H, W] = [sin, cos, sin], not normalized
dolp     polL_dolp/{name}.npy                  [3, H, W] (DoLP repeated), not normalized
nir      NIR_warped/{name}.png                 [3, H, W] in [0, 1] (repeated), ImageNet
======== ===================================== ==============================================

Every modality and the label lose their left ``crop_left`` = 192 columns (1224 -> 1032 wide,
1024 high), as the reference code does (the polarization camera's left border has no NIR).

Label: ``GT/{name}.png`` channel 0, values 0..19 are the classes of :data:`MCUBES_CLASSES`,
255 is ignore; anything else is an error. With ``nir_mask=True`` the pixels that
``NIR_warped_mask`` marks white (invalid NIR) become ignore too (the release's README excludes
them from the loss; the DELIVER-lineage reference code does not, hence off by default).

Splits: the list files; 302 train / 96 val / 102 test. The reference code evaluates on
``test.txt`` (its "val" loader reads it), so reported numbers use ``split="test"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from fusionseg.data.io import DataError, read_image
from fusionseg.data.modalities import ModalitySpec, get_spec
from fusionseg.data.sample import LABEL_KEY

from .base import MultimodalDataset, SampleRecord, register_dataset
from .options import DatasetOptions

__all__ = [
    "MCUBES_CLASSES",
    "MCUBES_FILES",
    "MCUBES_LEFT_CROP",
    "MCubeSOptions",
    "MCUBES_PALETTE",
    "MCUBES_SPECS",
    "MCubeS",
]

MCUBES_CLASSES: list[str] = [
    "asphalt",
    "concrete",
    "metal",
    "road_marking",
    "fabric",
    "glass",
    "plaster",
    "plastic",
    "rubber",
    "sand",
    "gravel",
    "ceramic",
    "cobblestone",
    "brick",
    "grass",
    "wood",
    "leaf",
    "water",
    "human",
    "sky",
]

#: One colour per material, ``uint8 [20, 3]``.
MCUBES_PALETTE: np.ndarray = np.array(
    [
        [64, 64, 64],  # asphalt
        [160, 160, 150],  # concrete
        [90, 120, 170],  # metal
        [250, 250, 250],  # road_marking
        [200, 60, 160],  # fabric
        [120, 210, 230],  # glass
        [230, 210, 170],  # plaster
        [250, 120, 30],  # plastic
        [30, 30, 30],  # rubber
        [220, 190, 110],  # sand
        [140, 120, 100],  # gravel
        [180, 220, 200],  # ceramic
        [110, 80, 70],  # cobblestone
        [170, 60, 40],  # brick
        [90, 200, 60],  # grass
        [150, 100, 40],  # wood
        [30, 120, 40],  # leaf
        [30, 60, 200],  # water
        [220, 20, 60],  # human
        [120, 170, 240],  # sky
    ],
    dtype=np.uint8,
)

#: Columns cut from the left of every image (1224 -> 1032 wide).
MCUBES_LEFT_CROP: int = 192

#: file key -> (folder, extension); ``aolp`` is the sin file, ``aolp:cos`` its partner.
MCUBES_FILES: dict[str, tuple[str, str]] = {
    "rgb": ("polL_color", ".png"),
    "aolp": ("polL_aolp_sin", ".npy"),
    "aolp:cos": ("polL_aolp_cos", ".npy"),
    "dolp": ("polL_dolp", ".npy"),
    "nir": ("NIR_warped", ".png"),
    "nir_mask": ("NIR_warped_mask", ".png"),
    "label": ("GT", ".png"),
}

#: The MCubeS specs: rgb and nir scale by their bit depth to [0, 1]; aolp/dolp stay as stored.
MCUBES_SPECS: dict[str, ModalitySpec] = {
    "rgb": get_spec("rgb"),
    "aolp": get_spec("aolp"),  # 3 channels [sin, cos, sin], scale 1, not normalized
    "dolp": get_spec("dolp"),  # 1 -> 3 channels, scale 1, not normalized
    "nir": get_spec("nir"),  # 8/16-bit -> [0, 1], 1 -> 3 channels
}

LIST_DIR = "list_folder"


class MCubeSOptions(DatasetOptions):
    """The options of :class:`MCubeS` (``data.options`` of a run config)."""

    crop_left: int = Field(
        MCUBES_LEFT_CROP, ge=0, description="columns cut from the left (0 keeps the full width)")
    nir_mask: bool = Field(
        False, description="label pixels with invalid NIR (NIR_warped_mask) become ignore")

@register_dataset("mcubes")
class MCubeS(MultimodalDataset):
    """The MCubeS dataset (see the module docstring for layout, specs, crop and label).

    Args:
        root: the ``multimodal_dataset`` folder (holding ``list_folder/`` and ``polL_color/``)
            or a folder above it (see :meth:`~.base.MultimodalDataset.resolve_root`).
        split: a list file name in ``list_folder/`` without ``.txt`` (``train``, ``val``,
            ``test``, ``all``).
        modalities: any of ``rgb, aolp, dolp, nir`` (default: all four).
        transform: applied to each Sample.
        **options: :class:`MCubeSOptions`: ``crop_left`` (columns cut from the left, default
            192; 0 keeps the full width), ``nir_mask`` (set label pixels with invalid NIR,
            white in ``NIR_warped_mask``, to ignore), and the common ``max_samples`` (the
            first names of the list), ``check_files``, ``specs``.

    Samples follow the list order. ``meta``: ``id`` = name, ``condition``/``case`` = None,
    ``paths`` = modality/label -> file (``aolp`` names the sin file).

    Raises:
        DataError: missing root or list file (naming it and the lists present), an empty list;
            per sample: missing or unreadable file, sin/cos shapes that differ, an image not
            wider than ``crop_left``, size mismatch, label values outside 0..19 and 255.
    """

    classes = MCUBES_CLASSES
    palette = MCUBES_PALETTE
    available_modalities = ("rgb", "aolp", "dolp", "nir")
    default_modalities = ("rgb", "aolp", "dolp", "nir")
    default_specs = MCUBES_SPECS
    root_markers = (LIST_DIR, "polL_color")
    archive_folders = ("multimodal_dataset",)
    split_list_dir = LIST_DIR
    #: bit depths ``fusionseg data check`` accepts per file key
    check_bit_depths: dict[str, tuple[int, ...]] = {
        "rgb": (8, 16),
        "nir": (8, 16),
        "aolp": (32, 64),
        "aolp:cos": (32, 64),
        "dolp": (32, 64),
        "nir_mask": (8,),
        "label": (8,),
    }
    #: channel counts ``fusionseg data check`` accepts per file key (the .npy files are 2-D)
    check_channels: dict[str, tuple[int, ...]] = {"aolp": (1,), "aolp:cos": (1,), "dolp": (1,)}

    Options = MCubeSOptions
    options: MCubeSOptions

    @classmethod
    def splits_in(cls, root: Path) -> list[str]:
        """The list files in ``list_folder/`` (without ``all``, the union of the others)."""
        lists = super().splits_in(root)
        return [s for s in lists if s != "all"] or lists

    def list_file(self) -> Path:
        """The split's list file ``root/list_folder/{split}.txt``."""
        return self.root / LIST_DIR / f"{self.split}.txt"

    def file_path(self, name: str, key: str) -> Path:
        """The file of ``key`` (a modality, ``aolp:cos``, ``nir_mask`` or ``label``)."""
        folder, ext = MCUBES_FILES[key]
        return self.root / folder / f"{name}{ext}"

    def _index(self) -> list[SampleRecord]:
        lst, names = self.read_split_names("; expected root/list_folder/{split}.txt")
        return [
            SampleRecord(
                id=name,
                paths={m: self.file_path(name, m) for m in self.modalities},
                label=self.file_path(name, LABEL_KEY),
                extra={"list_file": lst},
            )
            for name in names
        ]

    def record_files(self, record: SampleRecord) -> list[tuple[str, Path | None]]:
        files = super().record_files(record)
        if "aolp" in self.modalities:
            files.insert(self.modalities.index("aolp") + 1, ("aolp:cos", self.file_path(record.id, "aolp:cos")))
        if self.options.nir_mask:
            files.append(("nir_mask", self.file_path(record.id, "nir_mask")))
        return files

    # ------------------------------------------------------------------ reading
    def _crop(self, x: torch.Tensor | np.ndarray, path: Path, key: str):
        width = x.shape[-1] if isinstance(x, torch.Tensor) else x.shape[1]
        crop = self.options.crop_left
        if crop == 0:
            return x
        if width <= crop:
            raise DataError(
                f"image is {width} px wide, not wider than the {crop} columns "
                "cropped from the left (MCubeS images are 1224 wide)",
                path=path,
                modality=key,
            )
        if isinstance(x, torch.Tensor):
            return x[..., crop:].contiguous()
        return x[:, crop:]

    def read_modality(self, record: SampleRecord, modality: str) -> torch.Tensor:
        """Read one modality, cropped: ``float32 [3, H, W - crop_left]``.

        ``aolp`` stacks the sin and cos files as ``[sin, cos, sin]``. The crop is taken from
        the raw array, before the conversion to float.

        Raises:
            DataError: missing/unreadable file, sin/cos of different shapes, narrow image.
        """
        path = record.paths[modality]
        spec = self.specs[modality]
        raw = self._crop(read_image(path, modality=modality, key=spec.npz_key), path, modality)
        if modality == "aolp":
            cos_path = self.file_path(record.id, "aolp:cos")
            cos = self._crop(read_image(cos_path, modality="aolp"), cos_path, "aolp")
            if raw.shape != cos.shape or raw.shape[2] != 1:
                raise DataError(
                    f"AoLP sin {raw.shape[:2]} x {raw.shape[2]} ch and cos {cos.shape[:2]} x "
                    f"{cos.shape[2]} ch must be single maps of one size (cos file: {cos_path})",
                    path=path,
                    modality="aolp",
                )
            raw = np.concatenate([raw, cos, raw], axis=2)
        return spec.from_array(raw, path=path)

    def read_record_label(self, record: SampleRecord) -> torch.Tensor:
        """Cropped label ``int64 [H, W - crop_left]``; with ``nir_mask`` invalid NIR -> 255."""
        assert record.label is not None
        lab = self._crop(self.read_label(record.label), record.label, LABEL_KEY)
        if self.options.nir_mask:
            mpath = self.file_path(record.id, "nir_mask")
            mask = self._crop(read_image(mpath, modality="nir_mask"), mpath, "nir_mask")
            if mask.shape[:2] != tuple(lab.shape):
                raise DataError(
                    f"NIR mask is {mask.shape[0]}x{mask.shape[1]}, label {lab.shape[0]}x"
                    f"{lab.shape[1]} (after the crop)",
                    path=mpath,
                    modality="nir_mask",
                )
            invalid = torch.from_numpy(np.ascontiguousarray(mask[:, :, 0] > 0))
            lab = lab.masked_fill(invalid, self.ignore_index)
        return lab
