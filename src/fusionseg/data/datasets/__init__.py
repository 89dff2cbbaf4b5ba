"""Dataset loaders and their registry.

``create_dataset(name, root, split, modalities, transform=None, **options)`` builds a
registered dataset; ``list_datasets()`` names them. Each loader module registers itself with
``@register_dataset(name)`` when imported below. A dataset's keyword options are its
``Options`` model (:class:`~.options.DatasetOptions` and the dataset's own subclass, e.g.
:class:`~.deliver.DeliverOptions`); :func:`~.options.describe_options` lists them.
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
from .deliver import DELIVER, DELIVER_CLASSES, DELIVER_PALETTE, DeliverOptions
from .fmb import FMB, FMB_CLASSES, FMB_PALETTE
from .folder import FolderDataset
from .isprs import ISPRS_CLASSES, ISPRS_PALETTE, ISPRSDataset, ISPRSOptions, Potsdam, Vaihingen
from .mcubes import MCUBES_CLASSES, MCUBES_PALETTE, MCubeS, MCubeSOptions
from .mfnet import MFNET_CLASSES, MFNET_PALETTE, MFNet, MFNetOptions
from .muses import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, MUSES, MUSESOptions
from .nyudv2 import NYUDV2_CLASSES, NYUDV2_PALETTE, NYUDv2, NYUDv2Options
from .options import DatasetOptions, describe_options

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "DELIVER",
    "DELIVER_CLASSES",
    "DELIVER_PALETTE",
    "DatasetFilesError",
    "DatasetOptions",
    "DeliverOptions",
    "FMB",
    "FMB_CLASSES",
    "FMB_PALETTE",
    "ISPRSDataset",
    "ISPRSOptions",
    "ISPRS_CLASSES",
    "ISPRS_PALETTE",
    "MCUBES_CLASSES",
    "MCUBES_PALETTE",
    "MCubeS",
    "MCubeSOptions",
    "MFNET_CLASSES",
    "MFNET_PALETTE",
    "MFNet",
    "MFNetOptions",
    "MUSES",
    "MUSESOptions",
    "NYUDV2_CLASSES",
    "NYUDV2_PALETTE",
    "NYUDv2",
    "NYUDv2Options",
    "FolderDataset",
    "MultimodalDataset",
    "Potsdam",
    "SampleRecord",
    "Vaihingen",
    "create_dataset",
    "dataset_options",
    "describe_options",
    "files_by_stem",
    "get_dataset_class",
    "list_datasets",
    "read_split_list",
    "register_dataset",
]
