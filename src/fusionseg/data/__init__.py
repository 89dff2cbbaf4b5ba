"""Data layer: readers, modality specs, the Sample convention, joint transforms, datasets.

See :mod:`fusionseg.data.sample` for the Sample/batch convention and
:mod:`fusionseg.data.modalities` for the value pipeline (load -> transforms -> Normalize).
"""

from .check import CheckReport, check_dataset
from .datasets import (
    MultimodalDataset,
    create_dataset,
    get_dataset_class,
    list_datasets,
    register_dataset,
)
from .io import DataError, read_image
from .modalities import DEFAULT_SPECS, ModalitySpec, NormStats, get_spec
from .sample import IGNORE_INDEX, Collate, Sample, check_sample, drop_modalities
from .transforms import (
    Compose,
    Normalize,
    build_eval_transforms,
    build_train_transforms,
)

__all__ = [
    "CheckReport",
    "DEFAULT_SPECS",
    "IGNORE_INDEX",
    "Collate",
    "Compose",
    "DataError",
    "ModalitySpec",
    "MultimodalDataset",
    "NormStats",
    "Normalize",
    "Sample",
    "build_eval_transforms",
    "build_train_transforms",
    "check_dataset",
    "check_sample",
    "create_dataset",
    "drop_modalities",
    "get_dataset_class",
    "get_spec",
    "list_datasets",
    "read_image",
    "register_dataset",
]
