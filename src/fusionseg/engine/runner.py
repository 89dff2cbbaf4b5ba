"""High-level train / evaluate entry points used by the CLI and the Python API.

``train(cfg)`` builds the model, the data and a Lightning Trainer (atomic best + last
checkpoints, CSV and TensorBoard logs, rich progress) and fits. ``evaluate(cfg, ckpt)`` runs
the validation split through a trained model and returns overall, per-class, per-condition
and (optionally) missing-modality results.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..config import Config
from ..data.datamodule import SegDataModule, build_dataset
from ..data.sample import Collate
from ..models import create_model, load_checkpoint
from .checkpoint import AtomicCheckpointIO
from .inference import predict_logits
from .metrics import confusion_metric, metrics_from_confusion
from .module import SegmentationModule


class RunError(RuntimeError):
    """A run cannot start (e.g. it would overwrite an earlier run's checkpoints)."""


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """``{"total": ..., "trainable": ...}`` parameter counts."""
    if hasattr(model, "param_counts"):
        return dict(model.param_counts())
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def build_model(cfg: Config, num_classes: int, for_checkpoint: bool = False) -> torch.nn.Module:
    """``create_model`` from the config's model section, filling ``num_classes``.

    ``for_checkpoint=True`` skips ``model.pretrained`` (the checkpoint about to be loaded
    replaces those weights, so an ImageNet file need not be present to evaluate).

    Raises:
        ValueError: unknown model name or key; ``num_classes`` disagrees with the dataset.
    """
    spec = cfg.model.to_dict()
    if for_checkpoint:
        spec["pretrained"] = None
    if spec.get("num_classes") is None:
        spec["num_classes"] = num_classes
    elif spec["num_classes"] != num_classes:
        raise ValueError(f"model.num_classes={spec['num_classes']} but dataset "
                         f"{cfg.data.dataset!r} has {num_classes} classes")
    return create_model(spec)


def _next_run_dir(cfg: Config) -> Path:
    base = Path(cfg.train.out_dir) / cfg.name
    n = 0
    while (base / f"version_{n}").exists():
        n += 1
    return base / f"version_{n}"


def _setup_threads(cfg: Config) -> None:
    """CPU runs: thread count from the config, and heap reuse instead of per-step page faults
    (see :func:`fusionseg.bench.configure_cpu_allocator`)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if not torch.cuda.is_available():
        from ..bench import configure_cpu_allocator

        configure_cpu_allocator()


def _precision(cfg: Config) -> str:
    if cfg.train.precision:
        return cfg.train.precision
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def train(cfg: Config, run_dir: str | Path | None = None, resume: str | Path | None = None,
          console=None) -> dict[str, Any]:
    """Train the configured model; return run dir, checkpoint paths and last val metrics.

    Args:
        run_dir: where checkpoints and logs go; default ``{out_dir}/{name}/version_{n}``.
        resume: a ``last.ckpt`` to continue from (optimizer, schedule, epoch restored).

    Raises:
        RunError: ``run_dir`` already holds checkpoints and ``resume`` is not given.
        DataError, ConfigError, ValueError: bad data or config, before anything is written.
    """
    _setup_threads(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = SegDataModule(cfg)
    dm.setup("fit")
    ds = dm.val_set
    model = build_model(cfg, ds.num_classes)
    module = SegmentationModule(model, cfg, ds.classes, conditions=getattr(ds, "conditions", []),
                                palette=getattr(ds, "palette", None),
                                ignore_index=getattr(ds, "ignore_index", 255))
    if resume is not None:
        resume = Path(resume)
        if not resume.is_file():
            raise RunError(f"{resume}: checkpoint to resume from not found")
        run_dir = Path(run_dir) if run_dir else resume.parent.parent
    else:
        run_dir = Path(run_dir) if run_dir else _next_run_dir(cfg)
        ckpt_dir = run_dir / "checkpoints"
        if ckpt_dir.exists() and any(ckpt_dir.glob("*.ckpt")):
            raise RunError(f"{run_dir}: holds checkpoints of an earlier run; pass --resume "
                           f"{ckpt_dir / 'last.ckpt'} or choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))

    counts = count_parameters(model)
    msg = (f"model {cfg.model.name} ({cfg.model.backbone}, modalities "
           f"{'+'.join(cfg.model.modalities)}): {counts['total'] / 1e6:.3f} M parameters, "
           f"{counts['trainable'] / 1e6:.3f} M trainable")
    (console.print if console else print)(msg)

    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    ckpt_cb = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best",
                              monitor="val/mIoU", mode="max", save_top_k=1, save_last=True,
                              enable_version_counter=False, auto_insert_metric_name=False)
    callbacks = [ckpt_cb, LearningRateMonitor(logging_interval="step")]
    if cfg.train.progress:
        callbacks.append(RichProgressBar(leave=True))
    loggers = [CSVLogger(save_dir=str(run_dir), name="", version="csv"),
               TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="",
                                 default_hp_metric=False)]
    t = cfg.train
    trainer = L.Trainer(
        max_epochs=t.max_epochs, max_steps=t.max_steps, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=_precision(cfg), accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, check_val_every_n_epoch=t.val_every_n_epochs,
        log_every_n_steps=t.log_every_n_steps, callbacks=callbacks, logger=loggers,
        plugins=[AtomicCheckpointIO()], enable_progress_bar=t.progress,
        enable_model_summary=False, default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    return {
        "run_dir": str(run_dir),
        "best_ckpt": ckpt_cb.best_model_path or None,
        "last_ckpt": str(run_dir / "checkpoints" / "last.ckpt"),
        "metrics": module.last_val_metrics,
        "params": counts,
    }


def drop_modalities(batch: dict, modalities: list[str], keep) -> dict:
    """Copy of ``batch`` without the modalities not in ``keep`` (absent keys; the
    ``"present"`` columns, in ``modalities`` order, set False for them)."""
    out = {k: v for k, v in batch.items() if k not in modalities or k in keep}
    if "present" in batch:
        present = batch["present"].clone()
        for j, m in enumerate(modalities):
            if m not in keep:
                present[:, j] = False
        out["present"] = present
    return out


def modality_subsets(modalities: list[str], which: str | list[list[str]] = "all") -> list[tuple]:
    """Non-empty subsets of ``modalities`` for the missing-modality protocol.

    ``which="all"`` gives every non-empty subset (largest first); a list of lists is taken as
    given (each checked to be a subset).

    Raises:
        ValueError: a listed subset names a modality the model does not have.
    """
    if which == "all":
        out = []
        for r in range(len(modalities), 0, -1):
            out.extend(itertools.combinations(modalities, r))
        return out
    subsets = []
    for s in which:
        unknown = [m for m in s if m not in modalities]
        if unknown:
            raise ValueError(f"missing-modality subset {s} names {unknown}, not in {modalities}")
        subsets.append(tuple(s))
    return subsets


@torch.no_grad()
def evaluate(cfg: Config, ckpt: str | Path, missing: str | list | None = None,
             split: str | None = None, write_json: bool = True,
             max_batches: int | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on the validation split.

    Returns:
        ``{"overall": metrics, "classes": [...], "per_condition": {cond: metrics},
        "missing": {"rgb+depth": {"mIoU": ..., "per_condition": {...}}, ...}, "json": path}``
        where metrics are those of :func:`metrics_from_confusion` (percent).

    Raises:
        CheckpointMismatchError: the checkpoint does not match the configured model.
        DataError: bad data.
    """
    _setup_threads(cfg)
    if split:
        cfg = cfg.model_copy(deep=True)
        cfg.data.val_split = split
    ds = build_dataset(cfg, cfg.data.val_split, train=False)
    model = build_model(cfg, ds.num_classes, for_checkpoint=True)
    load_checkpoint(model, ckpt)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    loader = DataLoader(ds, batch_size=cfg.data.val_batch_size, shuffle=False,
                        num_workers=cfg.data.num_workers,
                        collate_fn=Collate(list(cfg.data.modalities)))
    subsets = [tuple(cfg.model.modalities)]
    if missing:
        subsets = modality_subsets(list(cfg.model.modalities), missing)
    k = ds.num_classes
    e = cfg.eval
    cms = {s: confusion_metric(k, ds.ignore_index) for s in subsets}
    cond_cms: dict[tuple, dict[str, Any]] = {s: {} for s in subsets}
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        label = batch["label"]
        metas = batch.get("meta") or []
        for s in subsets:
            sub = drop_modalities(batch, cfg.model.modalities, keep=s)
            sub = {kk: (v.to(device) if isinstance(v, torch.Tensor) else v)
                   for kk, v in sub.items()}
            logits = predict_logits(model, sub, mode=e.mode, window=e.window, stride=e.stride,
                                    scales=e.scales, flip=e.flip)
            pred = logits.argmax(1).cpu()
            cms[s].update(pred, label)
            for j, m in enumerate(metas):
                c = m.get("condition", "all")
                if c not in cond_cms[s]:
                    cond_cms[s][c] = confusion_metric(k, ds.ignore_index)
                cond_cms[s][c].update(pred[j:j + 1], label[j:j + 1])
    full = subsets[0]

    def _summ(s):
        res = metrics_from_confusion(cms[s].compute(), e.miou, e.ignore_classes)
        res["per_condition"] = {c: metrics_from_confusion(cm.compute(), e.miou,
                                                          e.ignore_classes)
                                for c, cm in sorted(cond_cms[s].items())}
        return res

    main = _summ(full)
    result: dict[str, Any] = {
        "checkpoint": str(ckpt),
        "dataset": cfg.data.dataset,
        "split": cfg.data.val_split,
        "modalities": list(full),
        "classes": list(ds.classes),
        "overall": {kk: v for kk, v in main.items() if kk != "per_condition"},
        "per_condition": main["per_condition"],
    }
    if missing:
        result["missing"] = {}
        for s in subsets:
            r = main if s == full else _summ(s)
            result["missing"]["+".join(s)] = {
                "mIoU": r["mIoU"], "OA": r["OA"],
                "per_condition": {c: v["mIoU"] for c, v in r["per_condition"].items()},
            }
    if write_json:
        out = Path(ckpt).with_name(Path(ckpt).stem + f"_eval_{cfg.data.val_split}.json")
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2, allow_nan=True))
        os.replace(tmp, out)
        result["json"] = str(out)
    return result
