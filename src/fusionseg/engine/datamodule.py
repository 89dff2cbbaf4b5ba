"""The LightningDataModule of a training run, and the datasets of a run config.

:func:`build_dataset` builds the configured dataset of a split with the train or eval
transforms of the ``data`` section; :class:`SegDataModule` hands Lightning the training loader
of the resumable data stream (:mod:`fusionseg.data.stream`) and the validation loader. They
read a run config (:class:`~fusionseg.config.Config`), so they live in the engine: the data
layer does not import ``fusionseg.config`` (``tests/test_layering.py``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..config import Config
from ..data.datasets import create_dataset
from ..data.sample import Collate
from ..data.stream import EpochSampler, ResumableLoader, SeededAugmentation
from ..data.transforms import build_eval_transforms, build_train_transforms

__all__ = ["SegDataModule", "build_dataset"]


def build_dataset(cfg: Config, split: str, train: bool):
    """The configured dataset for ``split`` with train or eval transforms.

    The dataset checks its files when built (``data.options.check_files``, default true), so a
    missing, unreadable or mis-sized file stops the run before training starts, all such
    problems in one error.

    Raises:
        DataError: missing root or split, unknown dataset (from ``create_dataset``); a
            :class:`~fusionseg.data.datasets.base.DatasetFilesError` for the problems of the
            split's files.
    """
    d = cfg.data
    probe = create_dataset(d.dataset, d.root, split, d.modalities, **d.options)
    if train:
        misalign = d.misalign.model_dump() if d.misalign is not None else None
        tf = build_train_transforms(probe.specs, crop_size=d.crop_size, scale_range=d.scale_range,
                                    flip_prob=d.flip_prob, photometric=d.photometric,
                                    vflip_prob=d.vflip_prob, misalign=misalign,
                                    reference=cfg.model.modalities[0])
    else:
        tf = build_eval_transforms(probe.specs, size=d.eval_size,
                                   label_interpolation=d.eval_label_interpolation,
                                   crop=d.eval_crop, pre_size=d.eval_pre_size)
    probe.transform = tf
    return probe


class SegDataModule(L.LightningDataModule):
    """Train and validation loaders over the configured dataset and modalities.

    Batches follow the Sample convention (see :mod:`fusionseg.data.sample`): modality ->
    ``[B, C, H, W]`` float32, ``"label"`` ``[B, H, W]`` int64, ``"meta"`` list of dicts, and
    ``"present"`` ``bool[B, M]`` when samples miss different modalities.

    The training loader is a :class:`~fusionseg.data.stream.ResumableLoader` (order and
    augmentation seeded by ``cfg.seed``, epoch and sample index; see
    :mod:`fusionseg.data.stream`), sharded over the trainer's ranks under DDP, so the trainer
    runs with ``use_distributed_sampler=False``.
    Validation is sequential (a ``DistributedSampler`` without shuffling under DDP). Neither
    loader draws from torch's global RNG (each has its own ``generator`` for the workers' base
    seed), so loading data does not move the RNG the model's randomness uses.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.train_set = None
        self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = build_dataset(self.cfg, self.cfg.data.train_split, train=True)
        if self.val_set is None:
            self.val_set = build_dataset(self.cfg, self.cfg.data.val_split, train=False)

    def _ranks(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _loader_kwargs(self, batch_size: int) -> dict[str, Any]:
        d = self.cfg.data
        return dict(batch_size=batch_size, num_workers=d.num_workers,
                    persistent_workers=d.num_workers > 0, collate_fn=Collate(list(d.modalities)),
                    pin_memory=False, generator=torch.Generator().manual_seed(self.cfg.seed))

    def train_dataloader(self) -> ResumableLoader:
        world, rank = self._ranks()
        sampler = EpochSampler(len(self.train_set), self.cfg.seed, shuffle=True,
                               num_replicas=world, rank=rank)
        return ResumableLoader(SeededAugmentation(self.train_set, self.cfg.seed), sampler,
                               drop_last=True, **self._loader_kwargs(self.cfg.data.batch_size))

    def val_dataloader(self) -> DataLoader:
        world, rank = self._ranks()
        sampler = (DistributedSampler(self.val_set, world, rank, shuffle=False)
                   if world > 1 else None)
        return DataLoader(self.val_set, sampler=sampler, shuffle=False, drop_last=False,
                          **self._loader_kwargs(self.cfg.data.val_batch_size))
