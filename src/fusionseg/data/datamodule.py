"""LightningDataModule built from the ``data`` section of a run config."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from ..config import Config
from .datasets import create_dataset
from .sample import Collate
from .transforms import build_eval_transforms, build_train_transforms


def build_dataset(cfg: Config, split: str, train: bool):
    """The configured dataset for ``split`` with train or eval transforms.

    Raises:
        DataError: missing root or split, unknown dataset (from ``create_dataset``).
    """
    d = cfg.data
    probe = create_dataset(d.dataset, d.root, split, d.modalities, **d.options)
    if train:
        tf = build_train_transforms(probe.specs, crop_size=d.crop_size, scale_range=d.scale_range,
                                    flip_prob=d.flip_prob, photometric=d.photometric,
                                    vflip_prob=d.vflip_prob)
    else:
        tf = build_eval_transforms(probe.specs, size=d.eval_size)
    probe.transform = tf
    return probe


class SegDataModule(L.LightningDataModule):
    """Train and validation loaders over the configured dataset and modalities.

    Batches follow the Sample convention (see :mod:`fusionseg.data.sample`): modality ->
    ``[B, C, H, W]`` float32, ``"label"`` ``[B, H, W]`` int64, ``"meta"`` list of dicts, and
    ``"present"`` ``bool[B, M]`` when samples miss different modalities.
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

    def _loader(self, ds, batch_size: int, shuffle: bool) -> DataLoader:
        d = self.cfg.data
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle,
                          num_workers=d.num_workers, persistent_workers=d.num_workers > 0,
                          collate_fn=Collate(list(d.modalities)), pin_memory=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.cfg.data.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.cfg.data.val_batch_size, shuffle=False)
