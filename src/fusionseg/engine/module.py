"""LightningModule wrapping any fusionseg segmentor: losses, optimizer, schedule, metrics.

Losses: :class:`~fusionseg.engine.losses.SegmentationCriterion` over the segmentor's output -
the configured loss on the main logits, plus whatever auxiliary logits and extra terms the
method returns in training (:class:`~fusionseg.models.SegmentationOutput`); each term is
logged as ``train/loss_<name>`` and the total as ``train/loss``. The engine knows no method.
Class weights that ``train.loss`` computes from label frequencies (``class_weight:
median_frequency``) are resolved in :meth:`SegmentationModule.setup` from the training split
(:mod:`fusionseg.engine.class_balance`) and printed; docs/losses.md.

Optimizer and schedule follow the SegFormer / DELIVER / StitchFusion recipes: AdamW over the
segmentor's own :meth:`~fusionseg.models.Segmentor.param_groups` (weight decay on weights only,
the learning rate multiplied by ``head_lr_mult`` outside the backbone), a linear warm-up from
``warmup_ratio * lr`` over ``warmup_epochs`` (or ``warmup_steps``) and then, per iteration,
poly decay ``(1 - t/T) ** power`` (``train.schedule: poly``) or cosine decay to ``min_lr``
(``train.schedule: cosine``, e.g. MoBaNet).

Validation accumulates a confusion matrix (torchmetrics, synced across DDP processes) overall
and per condition (``meta["condition"]``) and logs ``val/mIoU``, ``val/OA``, ``val/mAcc`` and
``val/mIoU_<condition>``.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from ..config import Config
from ..data.sample import drop_modalities
from ..models.inference_modes import inference_kwargs, predict_logits
from ..models.segmentor import logits_of
from .class_balance import class_frequency, class_weights
from .losses import SegmentationCriterion, check_class_weight_count, frequency_weightings
from .masking import random_modality_dropout
from .metrics import confusion_metric, metrics_from_confusion
from .robust_training import FeatureTap, RobustTraining, feature_distillation


def supports_fused_adamw(groups: list[dict]) -> bool:
    """Whether ``torch.optim.AdamW(..., fused=True)`` can update every parameter of ``groups``.

    The fused kernel (one multi-tensor kernel per step instead of a loop of small ops; about 3x
    faster on CPU for a 28 M-parameter model) needs floating-point parameters on a CPU or CUDA
    device; anything else keeps the default implementation.
    """
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 head_lr_mult: float = 1.0) -> list[dict]:
    """The model's AdamW groups: ``model.param_groups(...)`` for a
    :class:`~fusionseg.models.Segmentor`; for any other module one learning rate, no decay on
    1-D parameters."""
    if hasattr(model, "param_groups"):
        return model.param_groups(lr, weight_decay, head_lr_mult)
    params = [p for p in model.parameters() if p.requires_grad]
    return [g for g in (
        {"name": "rest", "params": [p for p in params if p.ndim > 1], "lr": lr,
         "weight_decay": weight_decay},
        {"name": "rest_no_decay", "params": [p for p in params if p.ndim <= 1], "lr": lr,
         "weight_decay": 0.0},
    ) if g["params"]]


def warmup_poly_factor(step: int, total: int, warmup: int, warmup_ratio: float,
                       power: float) -> float:
    """LR factor at ``step``: linear warm-up from ``warmup_ratio`` to 1, then poly decay
    ``(1 - step/total) ** power`` (mmseg / SegFormer: the decay counts from step 0)."""
    if warmup > 0 and step < warmup:
        return warmup_ratio + (1 - warmup_ratio) * step / warmup
    t = min(step, total) / max(total, 1)
    return max((1 - t) ** power, 0.0)


def warmup_cosine_factor(step: int, total: int, warmup: int, warmup_ratio: float,
                         min_ratio: float = 0.0) -> float:
    """LR factor at ``step``: linear warm-up from ``warmup_ratio`` to 1 over ``warmup`` steps,
    then cosine from 1 down to ``min_ratio`` at ``total`` (over the steps after the warm-up)."""
    if warmup > 0 and step < warmup:
        return warmup_ratio + (1 - warmup_ratio) * step / warmup
    t = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def stage_factor_fn(t, group: str, steps_per_epoch: int):
    """``step -> factor`` of ``train.schedule: stages`` for the parameter group named ``group``:
    constant learning rates per stage, ``stage.lr`` for the backbone groups and ``stage.lr *
    stage.head_lr_mult`` for the rest (AsymFusion / CEN: encoder 5e-4, 2.5e-4, 1e-4; decoder
    3e-3, 1.5e-3, 7e-4 over 3 x 100 epochs). Relative to the group's base (``lr``, or ``lr *
    head_lr_mult``); after the last stage the last one's rates hold. The release builds new
    optimisers per stage (momentum restarts); here the momentum buffers carry over."""
    bounds, rates = [], []
    end = 0
    for st in t.lr_stages:
        end += int(st["epochs"]) * steps_per_epoch
        bounds.append(end)
        backbone = group.startswith("backbone")
        lr = float(st["lr"]) if backbone else float(st["lr"]) * float(
            st.get("head_lr_mult", t.head_lr_mult))
        base = t.lr if backbone else t.lr * t.head_lr_mult
        rates.append(lr / base if base > 0 else 0.0)

    def factor(step: int) -> float:
        for b, r in zip(bounds, rates, strict=True):
            if step < b:
                return r
        return rates[-1]

    return factor


def lr_factor_fn(t, total: int, warmup: int):
    """The schedule ``step -> factor`` of ``train.schedule`` (``poly`` or ``cosine``) for a
    :class:`~fusionseg.config.TrainConfig` ``t``."""
    if t.schedule == "cosine":
        min_ratio = t.min_lr / t.lr if t.lr > 0 else 0.0
        return lambda s: warmup_cosine_factor(s, total, warmup, t.warmup_ratio, min_ratio)
    return lambda s: warmup_poly_factor(s, total, warmup, t.warmup_ratio, t.poly_power)


class SegmentationModule(L.LightningModule):
    """Train / validate a segmentor built by :func:`fusionseg.models.create_model`.

    Args:
        model: ``model(batch) -> logits [B, K, H, W]`` (or an output with ``.logits``/``.aux``).
        cfg: the resolved run config (stored in every checkpoint as ``fusionseg_config``).
        class_names: K names, for logging and the checkpoint.
        conditions: condition names for per-condition validation metrics.
        palette: ``[K, 3]`` uint8 colours, stored in the checkpoint for ``predict``.
        specs: the dataset's :class:`~fusionseg.data.modalities.ModalitySpec` per modality
            (how files were read, scaled to physical units and normalised), stored in the
            checkpoint as ``fusionseg_specs`` so ``predict`` applies the training run's specs.
        teacher: the frozen full-modality model of the robust second stage
            (``train.robust.teacher``); kept out of the module's parameters and checkpoints,
            run in eval mode without gradients.
    """

    def __init__(self, model: nn.Module, cfg: Config, class_names: list[str],
                 conditions: list[str] | None = None, palette=None, ignore_index: int = 255,
                 specs: dict | None = None, teacher: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.class_names = list(class_names)
        self.palette = None if palette is None else [list(map(int, c)) for c in palette]
        self.ignore_index = ignore_index
        self.specs = dict(specs or {})
        t = cfg.train
        k = len(self.class_names)
        check_class_weight_count(t.loss, k)
        # frequency class weights (train.loss.class_weight: median_frequency) are resolved in
        # setup("fit"), from the training split's labels
        self.criterion = SegmentationCriterion(t.loss, ignore_index, t.aux_weights)
        self.val_cm = confusion_metric(k, ignore_index)
        self.conditions = list(conditions or []) if cfg.eval.per_condition else []
        self.val_cm_cond = nn.ModuleDict({c: confusion_metric(k, ignore_index)
                                          for c in self.conditions})
        self.last_val_metrics: dict = {}
        r = t.robust
        self.robust = RobustTraining(
            list(cfg.model.modalities), r.modality_dropout, r.rect_prob, r.rect_area,
            r.rect_aspect, r.consistency_weight, r.temperature, ignore_index, r.corrupt_weight,
            r.sampling, r.full_share, distill=teacher is not None, feature_weight=r.feature_weight,
        ) if r.enabled else None
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self._teacher = [teacher] if teacher is not None else []  # a list: not a submodule

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher of the robust second stage, or ``None``."""
        return self._teacher[0] if self._teacher else None

    def setup(self, stage: str) -> None:
        """At ``fit``: resolve frequency class weights from the datamodule's training split
        (:meth:`resolve_class_weights`) and print the class weights in use."""
        if stage != "fit":
            return
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        train_set = getattr(dm, "train_set", None)
        if self.criterion.pending and train_set is not None:
            self.resolve_class_weights(train_set)
        else:
            self._print_class_weights("")

    def resolve_class_weights(self, train_set) -> None:
        """Compute the frequency class weights of ``train.loss`` from ``train_set``'s labels
        (cached next to the data, :func:`fusionseg.engine.class_balance.class_frequency`) and
        build the criterion with them; print them.

        Raises:
            DataError: the split has no labels, or one fails to load.
        """
        if not self.criterion.pending:
            return
        freq, path = class_frequency(train_set)
        where = f"{len(train_set.records)} {train_set.split} labels" + (
            f", counts cached in {path}" if path is not None else "")
        self.criterion.resolve_class_weights(lambda name: class_weights(name, freq))
        self._print_class_weights(f" ({', '.join(frequency_weightings(self.cfg.train.loss))} "
                                  f"from {where})")

    def _print_class_weights(self, source: str) -> None:
        specs = [self.criterion.spec, *(t for t in self.criterion.spec.get("terms") or []
                                        if isinstance(t, dict))]
        if rank_zero_only.rank != 0:
            return
        for spec in specs:
            cw = spec.get("class_weight")
            if isinstance(cw, list | tuple) and len(cw) == len(self.class_names):
                pairs = ", ".join(f"{n} {float(w):.3g}" for n, w in zip(self.class_names, cw,
                                                                         strict=True))
                print(f"class weights of loss {spec['name']}{source}: {pairs}")

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device).eval()

    # -- training -------------------------------------------------------------------------
    def forward(self, batch: dict):
        return self.model(batch)

    def _prepare_batch(self, batch: dict) -> dict:
        """Remove ``data.missing_modalities`` (absent key, ``present`` column false); with
        ``train.channels_last`` the 4-D image tensors become channels-last (same values)."""
        if self.cfg.train.channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last)
                     if isinstance(v, torch.Tensor) and v.dim() == 4 else v
                     for k, v in batch.items()}
        missing = self.cfg.data.missing_modalities
        if not missing:
            return batch
        mods = list(self.cfg.model.modalities)
        return drop_modalities(batch, [m for m in mods if m not in missing], modalities=mods)

    def training_step(self, batch: dict, batch_idx: int):
        batch = self._prepare_batch(batch)
        if self.cfg.data.modality_dropout > 0:
            batch = random_modality_dropout(batch, list(self.cfg.model.modalities),
                                            self.cfg.data.modality_dropout)
        if self.robust is not None and self.teacher is not None:
            return self._distillation_step(batch)
        changed = None
        if self.robust is not None:  # [x; x'] in one forward pass (see robust_training)
            batch, changed = self.robust.paired_batch(batch)
        out = self.model(batch)
        label = batch["label"]
        if self.robust is not None:
            loss, terms = self.robust.halves_loss(self.criterion, out, label)
        else:
            loss, terms = self.criterion(out, label)
        if changed is not None and self.robust.consistency_weight > 0:
            kl = self.robust.consistency_loss(logits_of(out), label, changed)
            terms = {**terms, "consistency": kl.detach()}
            loss = loss + kl
        if len(terms) > 1:
            for name, value in terms.items():
                self.log(f"train/loss_{name}", value, batch_size=label.shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=label.shape[0])
        return loss

    def _distillation_step(self, batch: dict):
        """The robust second stage: the student on a modality subset of each sample, the
        frozen teacher on the full input (see :mod:`fusionseg.engine.robust_training`)."""
        r = self.robust
        student_batch, _ = r.corrupt(batch)
        label = batch["label"]
        with torch.no_grad(), FeatureTap(self.teacher) as t_tap:
            t_logits = logits_of(self.teacher(batch))
        with FeatureTap(self.model) as s_tap:
            out = self.model(student_batch)
        loss, terms = self.criterion(out, label)
        if r.consistency_weight > 0:
            kl = r.distillation_loss(logits_of(out), t_logits, label)
            terms = {**terms, "distill": kl.detach()}
            loss = loss + kl
        if r.feature_weight > 0 and s_tap.value is not None and t_tap.value is not None:
            feat = r.feature_weight * feature_distillation(s_tap.value, t_tap.value)
            terms = {**terms, "distill_feature": feat.detach()}
            loss = loss + feat
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value, batch_size=label.shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=label.shape[0])
        return loss

    # -- validation -----------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int):
        batch = self._prepare_batch(batch)
        e = self.cfg.eval
        logits = predict_logits(self.model, batch, **inference_kwargs(e))
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
        groups = param_groups(self.model, t.lr, t.weight_decay, t.head_lr_mult)
        if t.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
        else:
            opt = torch.optim.AdamW(groups, lr=t.lr, betas=(0.9, 0.999),
                                    fused=supports_fused_adamw(groups) or None)
        total = int(self.trainer.estimated_stepping_batches)
        if not math.isfinite(total) or total <= 0:
            total = max(t.max_steps, 1)
        steps_per_epoch = max(total // max(self.trainer.max_epochs or 1, 1), 1)
        warmup = int(round(t.warmup_epochs * steps_per_epoch)) if t.max_epochs > 0 else 0
        if t.warmup_steps is not None:
            warmup = int(t.warmup_steps)
        if t.schedule == "stages":
            fns = [stage_factor_fn(t, g.get("name", "rest"), steps_per_epoch)
                   for g in opt.param_groups]
        else:
            fns = lr_factor_fn(t, total, warmup)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fns)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["fusionseg_config"] = self.cfg.model_dump(mode="json")
        # the precision the run trained at (train.precision: auto resolved on this hardware)
        checkpoint["fusionseg_precision"] = str(self.trainer.precision)
        checkpoint["fusionseg_classes"] = self.class_names
        checkpoint["fusionseg_palette"] = self.palette
        checkpoint["fusionseg_conditions"] = self.conditions
        checkpoint["fusionseg_specs"] = {m: s.model_dump(mode="json")
                                         for m, s in self.specs.items()}
