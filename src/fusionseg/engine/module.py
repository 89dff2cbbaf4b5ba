"""LightningModule wrapping any fusionseg segmentor: losses, optimizer, schedule, metrics.

Optimizer and schedule follow the SegFormer / DELIVER / StitchFusion recipes: AdamW with
weight decay on weights only (none on norms and biases), the learning rate multiplied by
``head_lr_mult`` for parameters outside the backbone, a linear warm-up from
``warmup_ratio * lr`` over ``warmup_epochs`` and then poly decay ``(1 - t/T) ** power`` per
iteration.

Validation accumulates a confusion matrix (torchmetrics, synced across DDP processes) overall
and per condition (``meta["condition"]``) and logs ``val/mIoU``, ``val/OA``, ``val/mAcc`` and
``val/mIoU_<condition>``.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from ..config import Config
from .inference import logits_of, predict_logits
from .losses import build_loss
from .masking import random_modality_dropout
from .metrics import confusion_metric, metrics_from_confusion


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 head_lr_mult: float = 1.0) -> list[dict]:
    """AdamW groups: (backbone | rest) x (decay | no decay).

    Biases and norm weights (all 1-d parameters) get no weight decay. Parameters whose name does not
    start with ``backbone.`` get ``lr * head_lr_mult``. Frozen parameters are left out.
    """
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_backbone = name.startswith("backbone.")
        no_decay = p.ndim <= 1  # biases and norm scales/shifts
        groups.setdefault((is_backbone, no_decay), []).append(p)
    out = []
    for (is_backbone, no_decay), params in groups.items():
        out.append({
            "params": params,
            "lr": lr if is_backbone else lr * head_lr_mult,
            "weight_decay": 0.0 if no_decay else weight_decay,
        })
    return out


def warmup_poly_factor(step: int, total: int, warmup: int, warmup_ratio: float,
                       power: float) -> float:
    """LR factor at ``step``: linear warm-up from ``warmup_ratio`` to 1, then poly decay."""
    if warmup > 0 and step < warmup:
        return warmup_ratio + (1 - warmup_ratio) * step / warmup
    t = min(step, total) / max(total, 1)
    return max((1 - t) ** power, 0.0)


class SegmentationModule(L.LightningModule):
    """Train / validate a segmentor built by :func:`fusionseg.models.create_model`.

    Args:
        model: ``model(batch) -> logits [B, K, H, W]`` (or an output with ``.logits``/``.aux``).
        cfg: the resolved run config (stored in every checkpoint as ``fusionseg_config``).
        class_names: K names, for logging and the checkpoint.
        conditions: condition names for per-condition validation metrics.
        palette: ``[K, 3]`` uint8 colours, stored in the checkpoint for ``predict``.
    """

    def __init__(self, model: nn.Module, cfg: Config, class_names: list[str],
                 conditions: list[str] | None = None, palette=None, ignore_index: int = 255):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.class_names = list(class_names)
        self.palette = None if palette is None else [list(map(int, c)) for c in palette]
        self.ignore_index = ignore_index
        t = cfg.train
        self.criterion = build_loss(t.loss, ignore_index,
                                    **({"thresh": t.ohem_thresh,
                                        "min_kept_frac": t.ohem_min_kept_frac}
                                       if t.loss == "ohem" else {}))
        k = len(self.class_names)
        self.val_cm = confusion_metric(k, ignore_index)
        self.conditions = list(conditions or [])
        self.val_cm_cond = nn.ModuleDict({c: confusion_metric(k, ignore_index)
                                          for c in self.conditions})
        self.last_val_metrics: dict = {}

    # -- training -------------------------------------------------------------------------
    def forward(self, batch: dict):
        return self.model(batch)

    def training_step(self, batch: dict, batch_idx: int):
        if self.cfg.data.modality_dropout > 0:
            batch = random_modality_dropout(batch, list(self.cfg.model.modalities),
                                            self.cfg.data.modality_dropout)
        out = self.model(batch)
        label = batch["label"]
        loss = self.criterion(logits_of(out), label)
        self.log("train/main_loss", loss, batch_size=label.shape[0])
        for name, aux in (getattr(out, "aux", None) or {}).items():
            aux_loss = self.criterion(aux, label)
            self.log(f"train/{name}_loss", aux_loss, batch_size=label.shape[0])
            loss = loss + self.cfg.train.aux_weight * aux_loss
        self.log("train/loss", loss, prog_bar=True, batch_size=label.shape[0])
        return loss

    # -- validation -----------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int):
        e = self.cfg.eval
        logits = predict_logits(self.model, batch, mode=e.mode, window=e.window,
                                stride=e.stride, scales=e.scales, flip=e.flip)
        pred = logits.argmax(1)
        label = batch["label"]
        self.val_cm.update(pred, label)
        metas = batch.get("meta") or []
        for c in self.conditions:
            idx = [i for i, m in enumerate(metas) if m.get("condition") == c]
            if idx:
                self.val_cm_cond[c].update(pred[idx], label[idx])

    def on_validation_epoch_end(self):
        e = self.cfg.eval
        res = metrics_from_confusion(self.val_cm.compute(), e.miou, e.ignore_classes)
        self.val_cm.reset()
        self.log("val/mIoU", res["mIoU"], prog_bar=True, sync_dist=False)
        self.log("val/OA", res["OA"])
        self.log("val/mAcc", res["mAcc"])
        self.log("val/mF1", res["mF1"])
        per_cond = {}
        for c, cm in self.val_cm_cond.items():
            counts = cm.compute()
            cm.reset()
            if counts.sum() > 0:
                per_cond[c] = metrics_from_confusion(counts, e.miou, e.ignore_classes)["mIoU"]
                self.log(f"val/mIoU_{c}", per_cond[c])
        res["per_condition"] = per_cond
        self.last_val_metrics = res

    # -- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self):
        t = self.cfg.train
        opt = torch.optim.AdamW(param_groups(self.model, t.lr, t.weight_decay, t.head_lr_mult),
                                lr=t.lr, betas=(0.9, 0.999))
        total = int(self.trainer.estimated_stepping_batches)
        if not math.isfinite(total) or total <= 0:
            total = max(t.max_steps, 1)
        steps_per_epoch = max(total // max(self.trainer.max_epochs or 1, 1), 1)
        warmup = int(round(t.warmup_epochs * steps_per_epoch)) if t.max_epochs > 0 else 0
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_poly_factor(s, total, warmup, t.warmup_ratio, t.poly_power))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["fusionseg_config"] = self.cfg.model_dump(mode="json")
        checkpoint["fusionseg_classes"] = self.class_names
        checkpoint["fusionseg_palette"] = self.palette
        checkpoint["fusionseg_conditions"] = self.conditions
