"""Prediction on a dataset split or on a plain folder of modality images.

Two input forms:

- a dataset root in the layout of the checkpoint's dataset (e.g. DELIVER / synthcity), read
  through the same dataset class as training (``--split`` picks the split);
- a folder ``DIR/{modality}/{stem}.{png,jpg,tif,npy}`` with one sub-folder per modality of
  the model (and optionally ``DIR/label/{stem}.png`` with class ids), read with the default
  :class:`~fusionseg.data.modalities.ModalitySpec` of each modality. A modality folder that is
  absent is a missing modality (its key is left out), so a model can run on RGB alone.

For each sample it writes ``out/masks/{id}.png`` (colorized prediction) and
``out/panels/{id}.png`` (each modality, the label when present, the prediction).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import Config, config_from_dict, load_config
from .data.io import DataError
from .engine.inference import predict_logits
from .engine.runner import model_spec
from .models import create_model, load_checkpoint
from .runtime import autocast, resolve_precision
from .viz import colorize, default_palette, sample_panel, save_panel

_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")


def _checkpoint_meta(ckpt: Path) -> dict:
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: checkpoint not found")
    obj = torch.load(ckpt, map_location="cpu", weights_only=False)
    return obj if isinstance(obj, dict) else {}


class FolderInput(torch.utils.data.Dataset):
    """``root/{modality}/{stem}.*`` samples (see module docstring); labels from ``root/label``.

    Raises:
        DataError: no modality folder of the model exists, or a folder has no images.
    """

    def __init__(self, root: Path, modalities: list[str], transform=None):
        from .data.modalities import get_spec

        self.root = Path(root)
        self.modalities = [m for m in modalities if (self.root / m).is_dir()]
        if not self.modalities:
            raise DataError(f"{root}: none of the model's modality folders "
                            f"{modalities} exists (expected {root}/<modality>/<stem>.png)")
        self.specs = {m: get_spec(m) for m in self.modalities}
        first = self.root / self.modalities[0]
        self.stems = sorted(p.stem for p in first.iterdir() if p.suffix.lower() in _EXTS)
        if not self.stems:
            raise DataError(f"{first}: no images found", modality=self.modalities[0])
        self.transform = transform

    def _find(self, folder: Path, stem: str, modality: str) -> Path:
        for ext in _EXTS:
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
        raise DataError(f"{folder / stem}.*: missing file", modality=modality)

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, i: int) -> dict:
        stem = self.stems[i]
        sample: dict = {"meta": {"id": stem, "condition": None, "paths": {}}}
        for m in self.modalities:
            path = self._find(self.root / m, stem, m)
            sample[m] = self.specs[m].load(path)
            sample["meta"]["paths"][m] = str(path)
        label_dir = self.root / "label"
        if label_dir.is_dir():
            path = self._find(label_dir, stem, "label")
            sample["label"] = torch.from_numpy(
                np.asarray(Image.open(path), dtype=np.int64))
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


def predict(ckpt: str | Path, input_dir: str | Path, out_dir: str | Path,
            config: str | Path | None = None, split: str | None = None,
            max_samples: int | None = None) -> int:
    """Predict every sample of ``input_dir`` and write masks and panels; return the count.

    Raises:
        FileNotFoundError: checkpoint or input missing.
        ValueError: the checkpoint holds no config and none is given.
        CheckpointMismatchError: checkpoint and model disagree.
    """
    from .data.datasets import create_dataset
    from .data.transforms import build_eval_transforms

    ckpt, input_dir, out_dir = Path(ckpt), Path(input_dir), Path(out_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: input folder not found")
    meta = _checkpoint_meta(ckpt)
    if config is not None:
        cfg: Config = load_config(config)
    elif "fusionseg_config" in meta:
        cfg = config_from_dict(meta["fusionseg_config"], source=str(ckpt))
    else:
        raise ValueError(f"{ckpt}: holds no fusionseg config; pass --config")
    modalities = list(cfg.model.modalities)
    classes = meta.get("fusionseg_classes")
    if any((input_dir / m).is_dir() for m in modalities) and not (input_dir / "img").is_dir():
        ds = FolderInput(input_dir, modalities)
    else:
        ds = create_dataset(cfg.data.dataset, str(input_dir), split or cfg.data.val_split,
                            modalities, **cfg.data.options)
        classes = classes or list(ds.classes)
    ds.transform = build_eval_transforms(ds.specs, size=cfg.data.eval_size)
    num_classes = cfg.model.num_classes or (len(classes) if classes else None)
    if num_classes is None:
        raise ValueError(f"{ckpt}: number of classes unknown; set model.num_classes")
    # the checkpoint replaces the backbone weights: model.pretrained is not read
    model = create_model(model_spec(cfg, num_classes, for_checkpoint=True))
    load_checkpoint(model, ckpt)
    model.eval()
    palette = meta.get("fusionseg_palette") or getattr(ds, "palette", None)
    palette = np.asarray(palette if palette is not None else default_palette(num_classes),
                         dtype=np.uint8)
    e = cfg.eval
    precision = resolve_precision(cfg.train.precision, "cpu", strict=False)
    n = len(ds) if max_samples is None else min(len(ds), max_samples)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sample = ds[i]
        batch = {m: sample[m][None] for m in modalities if m in sample}
        with autocast(precision, "cpu"):
            logits = predict_logits(model, batch, mode=e.mode, window=e.window,
                                    stride=e.stride, scales=e.scales, flip=e.flip,
                                    window_batch=e.window_batch)
        pred = logits.float().argmax(1)[0]
        name = str(sample["meta"]["id"]).replace("/", "_")
        Image.fromarray(colorize(pred, palette)).save(out_dir / "masks" / f"{name}.png")
        cond = sample["meta"].get("condition")
        save_panel(out_dir / "panels" / f"{name}.png",
                   sample_panel(sample, modalities, pred, palette),
                   title=f"{name}" + (f" ({cond})" if cond else ""))
    return n
