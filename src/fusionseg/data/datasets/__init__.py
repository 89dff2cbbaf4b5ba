"""Dataset loaders and their registry.

``create_dataset(name, root, split, modalities, transform=None, **options)`` builds a
registered dataset; ``list_datasets()`` names them. Each loader module registers itself with
``@register_dataset(name)`` when imported below.
"""

from .base import (
    MultimodalDataset,
    SampleRecord,
    create_dataset,
    get_dataset_class,
    list_datasets,
    register_dataset,
)
from .deliver import DELIVER, DELIVER_CLASSES, DELIVER_PALETTE
from .folder import FolderDataset

__all__ = [
    "DELIVER",
    "DELIVER_CLASSES",
    "DELIVER_PALETTE",
    "FolderDataset",
    "MultimodalDataset",
    "SampleRecord",
    "create_dataset",
    "get_dataset_class",
    "list_datasets",
    "register_dataset",
]
