"""Dataset loaders and their registry.

``create_dataset(name, root, split, modalities, transform=None, **options)`` builds a
registered dataset; ``list_datasets()`` names them. Each loader module registers itself with
``@register_dataset(name)`` when imported below.
"""

from .base import (
    DatasetFilesError,
    MultimodalDataset,
    SampleRecord,
    create_dataset,
    dataset_options,
    files_by_stem,
    get_dataset_class,
    list_datasets,
    read_split_list,
    register_dataset,
)
from .deliver import DELIVER, DELIVER_CLASSES, DELIVER_PALETTE
from .fmb import FMB, FMB_CLASSES, FMB_PALETTE
from .folder import FolderDataset
from .isprs import ISPRS_CLASSES, ISPRS_PALETTE, ISPRSDataset, Potsdam, Vaihingen
from .mcubes import MCUBES_CLASSES, MCUBES_PALETTE, MCubeS
from .mfnet import MFNET_CLASSES, MFNET_PALETTE, MFNet
from .muses import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, MUSES
from .nyudv2 import NYUDV2_CLASSES, NYUDV2_PALETTE, NYUDv2

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "DELIVER",
    "DELIVER_CLASSES",
    "DELIVER_PALETTE",
    "DatasetFilesError",
    "FMB",
    "FMB_CLASSES",
    "FMB_PALETTE",
    "ISPRSDataset",
    "ISPRS_CLASSES",
    "ISPRS_PALETTE",
    "MCUBES_CLASSES",
    "MCUBES_PALETTE",
    "MCubeS",
    "MFNET_CLASSES",
    "MFNET_PALETTE",
    "MFNet",
    "MUSES",
    "NYUDV2_CLASSES",
    "NYUDV2_PALETTE",
    "NYUDv2",
    "FolderDataset",
    "MultimodalDataset",
    "Potsdam",
    "SampleRecord",
    "Vaihingen",
    "create_dataset",
    "dataset_options",
    "files_by_stem",
    "get_dataset_class",
    "list_datasets",
    "read_split_list",
    "register_dataset",
]
