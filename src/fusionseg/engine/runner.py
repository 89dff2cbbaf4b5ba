"""High-level train / evaluate entry points used by the CLI and the Python API.

``train(cfg)`` builds the model, the data and a Lightning Trainer (atomic best + last
checkpoints, CSV and TensorBoard logs, rich progress) and fits. ``evaluate(cfg, ckpt)`` runs
the validation split through a trained model and returns overall, per-class, per-condition
and (optionally) missing-modality results (:mod:`fusionseg.engine.robustness`).
``convert_weights(cfg, src, dst)`` converts a released checkpoint for the configured model.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from ..config import Config, ModelConfig, model_spec
from ..data.sample import Collate
from ..errors import ConfigError, RunError
from ..hub_files import read_model_source
from ..models import (
    MODELS,
    convert_checkpoint,
    count_parameters,
    create_model,
    init_from_checkpoint,
    load_checkpoint,
    load_state_dict_file,
)
from ..models.inference_modes import inference_kwargs, predict_logits
from ..models.weights import read_weights_file, to_model_keys
from ..runtime import (
    autocast,
    describe_precision,
    inference_precision,
    resolve_precision,
    setup_threads,
)
from .checkpoint import AtomicCheckpointIO, atomic_write_json
from .datamodule import SegDataModule, build_dataset
from .metrics import confusion_metric, metrics_from_confusion
from .module import SegmentationModule
from .resume import ResumeStateCallback
from .robustness import (
    PROTOCOLS,
    SubsetEvaluator,
    modality_subsets,
    protocol_markdown,
    protocol_results,
    protocol_scenarios,
    stream_reuse,
)


class _AllOutputs(torch.nn.Module):
    """Every named output of a segmentor (``named_outputs(batch) -> {name: logits}``), stacked
    along channels ``[B, n * K, H, W]`` so one forward pass serves them all (the inference modes
    average / resize per channel, so the split afterwards is exact)."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, batch: dict) -> torch.Tensor:
        out = self.model.named_outputs(batch)
        return torch.cat([out[n] for n in self.names], dim=1)


def _output_names(model: torch.nn.Module) -> list[str]:
    """Names of a multi-output segmentor's outputs (``Segmentor.output_names``), or []."""
    names = getattr(model, "output_names", None)
    return list(names()) if callable(names) else []


def build_model(cfg: Config, num_classes: int, for_checkpoint: bool = False) -> torch.nn.Module:
    """``create_model`` from the config's model section, filling ``num_classes``
    (see :func:`model_spec`).

    Raises:
        ConfigError: unknown model name or key; ``num_classes`` disagrees with the dataset.
    """
    return create_model(model_spec(cfg, num_classes, for_checkpoint))


def build_teacher(cfg: Config, num_classes: int) -> torch.nn.Module | None:
    """The frozen full-modality model of the robust second stage (``train.robust.teacher``).

    ``teacher: init`` is the ``train.init_from`` model, any other value a checkpoint path (or a
    saved model folder, or ``hf://ORG/NAME[@REVISION]``: :mod:`fusionseg.hub_files`). A
    fusionseg checkpoint is built from the model section stored in it (the teacher may differ
    from the student, e.g. a mean-fusion teacher for a gated student); any other file (a plain
    state dict, a released checkpoint) with the run's model section. Loaded strictly, in eval
    mode, without gradients.

    Returns:
        The teacher, or ``None`` when robust training is off or has no teacher.

    Raises:
        CheckpointError: unreadable, unsafe or mismatching file.
        ConfigError: the teacher's class count is not the run's.
    """
    r = cfg.train.robust
    if not (r.enabled and r.teacher):
        return None
    source, contents = read_model_source(
        cfg.train.init_from if r.teacher == "init" else r.teacher, read_weights_file)
    path = source.name
    stored = contents.get("fusionseg_config") if isinstance(contents, dict) else None
    tcfg = cfg
    if isinstance(stored, dict) and isinstance(stored.get("model"), dict):
        tcfg = cfg.model_copy(update={"model": ModelConfig.model_validate(stored["model"])})
    spec = model_spec(tcfg, None, for_checkpoint=True)
    if spec.get("num_classes") is None:
        spec["num_classes"] = num_classes
    if spec["num_classes"] != num_classes:
        raise ConfigError(f"train.robust.teacher {path}: {spec['num_classes']} classes, the run "
                          f"has {num_classes}; the teacher must predict the run's classes")
    teacher = create_model(spec)
    load_checkpoint(teacher, path, contents)
    return teacher.eval().requires_grad_(False)


def convert_weights(cfg: Config, src: str | Path, dst: str | Path) -> Path:
    """Convert ``src`` (e.g. a released StitchFusion ``.pth``) for the configured model and
    write its state dict to ``dst`` (``.safetensors`` or a torch file).

    The model is built without ``pretrained``; ``num_classes``, when the config leaves it
    unset, comes from the checkpoint (the segmentor's ``infer_num_classes``). The weights are
    loaded strictly, so a mismatch is reported now, not at evaluation.

    Raises:
        FileNotFoundError, ValueError, CheckpointMismatchError: unreadable source, bad config,
            unknown class count, or weights that do not fit the model.
    """
    spec = model_spec(cfg, for_checkpoint=True)
    if spec.get("num_classes") is None:
        cls = MODELS.entry(cfg.model.name).info.get("segmentor")
        infer = getattr(cls, "infer_num_classes", None)
        k = infer(to_model_keys(load_state_dict_file(src), None, segmentor=cls)) if infer else None
        if k is None:
            raise ConfigError(f"model.num_classes is not set and {src} does not tell the class "
                             f"count; set model.num_classes")
        spec["num_classes"] = k
    return convert_checkpoint(src, dst, model=create_model(spec))


def _next_run_dir(cfg: Config) -> Path:
    base = Path(cfg.train.out_dir) / cfg.name
    n = 0
    while (base / f"version_{n}").exists():
        n += 1
    return base / f"version_{n}"


def prepare_for_training(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """Apply ``train.channels_last`` and ``train.compile`` to ``model`` in place.

    ``torch.compile`` runs through :meth:`torch.nn.Module.compile`, so parameter names and
    checkpoints are those of the uncompiled model. Returns ``model``.
    """
    t = cfg.train
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    if t.compile:
        model.compile(**(t.compile if isinstance(t.compile, dict) else {}))
    return model


def _train_device(cfg: Config) -> str:
    return "cuda" if torch.cuda.is_available() and cfg.train.accelerator != "cpu" else "cpu"


def _precision(cfg: Config) -> str:
    """Lightning's precision for ``train.precision`` (``auto``:
    :func:`fusionseg.runtime.auto_precision` on the training device)."""
    return resolve_precision(cfg.train.precision, _train_device(cfg))


def may_skip_modality_parameters(cfg: Config) -> bool:
    """Whether a training batch can lack a modality in every sample of a process's batch.

    True with ``data.missing_modalities``, ``data.modality_dropout > 0`` or ``train.robust``:
    then StitchFusion, MLE-SAM and AsymFusion skip that modality's own parameters (adapters,
    LoRA expert, BatchNorms) in the step, and those get no gradient.
    """
    return bool(cfg.data.missing_modalities) or cfg.data.modality_dropout > 0 or bool(
        cfg.train.robust.enabled
    )


def resolve_strategy(cfg: Config) -> str:
    """Lightning's strategy for ``train.strategy``.

    Plain DDP (``"ddp"``, or ``"auto"`` with several devices or nodes) stops at the first step
    in which a trainable parameter got no gradient. When
    :func:`may_skip_modality_parameters` says that can happen, DDP runs as
    ``"ddp_find_unused_parameters_true"`` instead (one more pass over the autograd graph per
    step; see docs/scaling.md). Any other value is returned unchanged.
    """
    t = cfg.train
    s = t.strategy
    devices = t.devices
    if devices in ("auto", -1, "-1"):  # all of them: several GPUs if there are several
        count = torch.cuda.device_count() if t.accelerator != "cpu" else 1
    else:
        count = int(devices) if str(devices).strip().isdigit() else 1
    several = t.num_nodes > 1 or count > 1
    if (s == "ddp" or (s == "auto" and several)) and may_skip_modality_parameters(cfg):
        return "ddp_find_unused_parameters_true"
    return s


def train(cfg: Config, run_dir: str | Path | None = None, resume: str | Path | None = None,
          console=None) -> dict[str, Any]:
    """Train the configured model; return run dir, checkpoint paths and last val metrics.

    Args:
        run_dir: where checkpoints and logs go; default ``{out_dir}/{name}/version_{n}``.
        resume: a ``last.ckpt`` to continue from. Model, optimizer, schedule, loop counters,
            the position in the training data (mid-epoch too) and the random state are
            restored, so the run ends with the weights an uninterrupted run ends with
            (bit-identical on CPU; :mod:`fusionseg.engine.resume`). ``train.init_from`` is
            ignored then.

    ``train.init_from`` starts a new run from a trained model's weights (a checkpoint, a saved
    model folder or ``hf://ORG/NAME[@REVISION]``: :mod:`fusionseg.hub_files`; loaded strictly
    with :func:`fusionseg.models.init_from_checkpoint`, so through the safe reader; a head
    whose class count differs is re-initialised and the run says so); optimizer, schedule,
    counters and run dir start fresh.

    Checkpoints (``{run_dir}/checkpoints``, written atomically): ``best.ckpt`` (highest
    ``val/mIoU``, after validation) and ``last.ckpt`` at the end of every epoch (after its
    validation), and ``last.ckpt`` also every ``train.checkpoint_every_n_steps`` optimizer
    steps when that is set.

    Raises:
        RunError: ``run_dir`` already holds checkpoints and ``resume`` is not given.
        CheckpointError: ``train.init_from`` is missing, unsafe, unreadable or does not fit
            the model.
        DataError, ConfigError: bad data or config, before anything is written.
    """
    setup_threads(cfg.train.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = SegDataModule(cfg)
    dm.setup("fit")
    ds = dm.val_set
    init_from = cfg.train.init_from if resume is None else None  # --resume restores all
    # weights from init_from replace the pretrained encoder's: model.pretrained is not read
    model = build_model(cfg, ds.num_classes, for_checkpoint=init_from is not None)
    init_lines: list[str] = []
    if init_from is not None:
        source, contents = read_model_source(init_from, read_weights_file)
        report = init_from_checkpoint(model, source.name, contents)
        init_lines = [f"initialised from {init_from}", *report.lines()]
    prepare_for_training(model, cfg)
    teacher = build_teacher(cfg, ds.num_classes)
    if teacher is not None:
        init_lines.append(f"robust second stage: distilling from the frozen model "
                          f"{cfg.train.init_from if cfg.train.robust.teacher == 'init' else cfg.train.robust.teacher}")
    module = SegmentationModule(model, cfg, ds.classes, conditions=getattr(ds, "conditions", []),
                                palette=getattr(ds, "palette", None),
                                ignore_index=getattr(ds, "ignore_index", 255),
                                specs=getattr(ds, "specs", None), teacher=teacher)
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
    # under DDP every process runs this function; only global rank 0 (Lightning reads RANK /
    # LOCAL_RANK / SLURM_PROCID) creates the run dir; the others may have picked the next
    # version_N here but use rank 0's (ModelCheckpoint broadcasts its dirpath)
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cfg.model_dump(mode="json"), run_dir / "config.json")

    counts = count_parameters(model)
    msg = (f"model {cfg.model.name} ({cfg.model.backbone}, modalities "
           f"{'+'.join(cfg.model.modalities)}): {counts['total'] / 1e6:.3f} M parameters, "
           f"{counts['trainable'] / 1e6:.3f} M trainable")
    precision_line = describe_precision(cfg.train.precision, _train_device(cfg))
    for line in [*init_lines, msg, precision_line]:
        console.print(line, markup=False) if console else print(line)

    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    ckpt_dir = run_dir / "checkpoints"
    ckpt_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/mIoU", mode="max",
                              save_top_k=1, enable_version_counter=False,
                              auto_insert_metric_name=False)
    # last.ckpt as its own monitor-less checkpoint ("the latest"), written at the end of every
    # epoch: Lightning 2.6's save_last=True on the best checkpoint rewrites last.ckpt only in
    # epochs where best.ckpt improved, so a resume could go back several epochs
    last_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                              save_on_train_epoch_end=True, enable_version_counter=False)
    callbacks = [ckpt_cb, last_cb, ResumeStateCallback(),
                 LearningRateMonitor(logging_interval="step")]
    if cfg.train.checkpoint_every_n_steps:
        # last.ckpt also at the end of every n-th optimizer step
        callbacks.append(ModelCheckpoint(
            dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
            every_n_train_steps=cfg.train.checkpoint_every_n_steps,
            save_on_train_epoch_end=False, enable_version_counter=False))
    if cfg.train.progress:
        callbacks.append(RichProgressBar(leave=True))
    loggers = [CSVLogger(save_dir=str(run_dir), name="", version="csv"),
               TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="",
                                 default_hp_metric=False)]
    t = cfg.train
    trainer = L.Trainer(
        max_epochs=t.max_epochs, max_steps=t.max_steps, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=resolve_strategy(cfg),
        precision=_precision(cfg), accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, check_val_every_n_epoch=t.val_every_n_epochs,
        log_every_n_steps=t.log_every_n_steps, callbacks=callbacks, logger=loggers,
        limit_train_batches=t.epoch_steps,
        plugins=[AtomicCheckpointIO()], enable_progress_bar=t.progress,
        enable_model_summary=False, default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
        # the datamodule shards the training data itself (EpochSampler), so that the order
        # survives a resume; Lightning must not replace its sampler
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    ckpt_dir = Path(ckpt_cb.dirpath)  # rank 0's on every rank
    return {
        "run_dir": str(ckpt_dir.parent),
        "best_ckpt": ckpt_cb.best_model_path or None,
        "last_ckpt": str(ckpt_dir / "last.ckpt"),
        "metrics": module.last_val_metrics,
        "params": counts,
    }


def parse_protocols(protocol: str | list[str] | None) -> list[str]:
    """``"all"`` -> ``["emm", "rmm", "nm", "mam"]``; ``"emm,nm"`` or a list -> those; ``None`` -> [].

    Raises:
        ConfigError: an unknown protocol name.
    """
    if not protocol:
        return []
    names = protocol.split(",") if isinstance(protocol, str) else list(protocol)
    names = [n.strip().lower() for n in names if n.strip()]
    if "all" in names:
        return list(PROTOCOLS)
    bad = [n for n in names if n not in PROTOCOLS]
    if bad:
        raise ConfigError(f"unknown --protocol {', '.join(bad)}: choose emm, rmm, nm, mam or all")
    return [p for p in PROTOCOLS if p in names]


def _trained_specs(contents: Any, specs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The modality specs a fusionseg checkpoint was trained with (``fusionseg_specs``) where
    they differ from ``specs`` (the config's, resolved by the dataset), with one warning naming
    the modalities and fields; ``{}`` for a file without stored specs (a released checkpoint)
    or when they agree."""
    stored = contents.get("fusionseg_specs") if isinstance(contents, dict) else None
    if not isinstance(stored, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    changes: list[str] = []
    for m, spec in specs.items():
        saved = stored.get(m)
        if not isinstance(saved, dict):
            continue
        now = spec.model_dump(mode="json")
        # fields the file lacks (added to ModalitySpec after it was written) keep defaults
        fields = sorted(k for k in saved if k != "name" and now.get(k) != saved[k])
        if fields:
            out[m] = {k: v for k, v in saved.items() if k != "name"}
            changes.append(f"{m}: " + ", ".join(f"{k} {saved.get(k)!r} (config {now.get(k)!r})"
                                                for k in fields))
    if changes:
        warnings.warn("the checkpoint was trained with other modality specs than the config "
                      "gives; evaluating with the checkpoint's: " + "; ".join(changes),
                      stacklevel=3)
    return out


@torch.no_grad()
def evaluate(cfg: Config, ckpt: str | Path, missing: str | list | None = None,
             split: str | None = None, write_json: bool = True,
             max_batches: int | None = None, protocol: str | list[str] | None = None,
             seed: int = 0) -> dict[str, Any]:
    """Evaluate a checkpoint (or a saved model folder, or ``hf://ORG/NAME[@REVISION]``:
    :mod:`fusionseg.hub_files`) on the validation split.

    The model runs (autocast) at ``train.precision`` when the config sets one other than
    ``auto``, else at the precision the checkpoint was trained at (``fusionseg_precision``)
    where this device runs it natively, else at ``auto``'s choice here
    (:func:`fusionseg.runtime.inference_precision`); the metrics in float32. The result's
    ``precision`` and ``precision_reason`` say which and why.

    Args:
        missing: ``"all"`` or a list of modality subsets to evaluate besides the full set.
        protocol: robustness protocols (:mod:`fusionseg.engine.robustness`): ``"emm"``,
            ``"rmm"``, ``"nm"``, ``"mam"`` (misaligned modalities), a comma list or ``"all"``; each writes
            ``{stem}_{protocol}_{split}.json`` and ``.md`` next to the checkpoint, and a plot
            ``{stem}_robustness_{split}.png``. All run in the same pass over the data. (A
            saved folder: the files go inside it with stem ``model``; ``hf://ORG/NAME``: into
            the working directory with stem ``ORG--NAME``.)
        seed: seed of the protocols' random corruptions.

    Returns:
        ``{"overall": metrics, "classes": [...], "per_condition": {cond: metrics},
        "missing": {"rgb+depth": {"mIoU": ..., "per_condition": {...}}, ...},
        "outputs": {"rgb": {"OA", "mAcc", "mIoU"}, ..., "ensemble": {...}},
        "protocols": {"emm": {...}, ...}, "json": path, "files": [paths]}`` where metrics are
        those of :func:`metrics_from_confusion` (percent); ``outputs`` only for models with
        several outputs (``Segmentor.output_names``, e.g. AsymFusion).

    The data is read with the modality specs the checkpoint was trained with
    (``fusionseg_specs``, stored by every fusionseg training run) where they differ from the
    config's, with a warning: a recipe whose input conventions changed keeps evaluating its
    earlier checkpoints correctly. Files without stored specs (released checkpoints) are read
    with the config's specs.

    Raises:
        CheckpointError: the checkpoint is missing, unsafe or does not match the configured
            model (``CheckpointMismatchError``).
        DataError: bad data.
        ConfigError: an unknown protocol.
    """
    protocols = parse_protocols(protocol)
    setup_threads(cfg.train.threads)
    if split:
        cfg = cfg.model_copy(deep=True)
        cfg.data.val_split = split
    source, contents = read_model_source(ckpt, read_weights_file)
    ckpt = source.name  # the hf:// URI or the path, for messages and the result files
    ds = build_dataset(cfg, cfg.data.val_split, train=False)
    trained = _trained_specs(contents, ds.specs)
    if trained:
        # the model was trained on other inputs than the config's specs give (e.g. a recipe
        # whose conventions changed since): read the data as it was trained on
        cfg = cfg.model_copy(deep=True)
        cfg.data.options["specs"] = {**dict(cfg.data.options.get("specs") or {}), **trained}
        ds = build_dataset(cfg, cfg.data.val_split, train=False)
    model = build_model(cfg, ds.num_classes, for_checkpoint=True)
    load_checkpoint(model, ckpt, contents)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    loader = DataLoader(ds, batch_size=cfg.data.val_batch_size, shuffle=False,
                        num_workers=cfg.data.num_workers,
                        collate_fn=Collate(list(cfg.data.modalities)))
    full = tuple(cfg.model.modalities)
    requested = modality_subsets(full, missing) if missing else []
    subsets = requested if full in requested else [full, *requested]
    e = cfg.eval
    evaluator = SubsetEvaluator(full, subsets, ds.num_classes, ds.ignore_index,
                                per_condition=e.per_condition,
                                extra_scenarios=protocol_scenarios(full, protocols), seed=seed)

    stored = contents.get("fusionseg_precision") if isinstance(contents, dict) else None
    precision, precision_reason = inference_precision(
        cfg.train.precision, stored if isinstance(stored, str) else None, device)

    def predict(sub: dict) -> torch.Tensor:
        with autocast(precision, device):
            logits = predict_logits(model, sub, **inference_kwargs(e))
        return logits.float()

    # independent streams (sum fusion, MLE-SAM): each modality encoded once per batch
    reuse = stream_reuse(model, inference_kwargs(e), lambda: autocast(precision, device))

    # methods with several outputs (AsymFusion: one per stream + the ensemble) are also scored
    # per output, with every modality present
    outputs = _output_names(model)
    out_cms = {n: confusion_metric(ds.num_classes, ds.ignore_index) for n in outputs}
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        evaluator.update(batch, predict, device, reuse=reuse)
        if outputs:
            sub = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                   for k, v in batch.items()}
            with autocast(precision, device):
                stacked = predict_logits(_AllOutputs(model, outputs), sub,
                                         **inference_kwargs(e)).float()
            for n, logits in zip(outputs, stacked.chunk(len(outputs), dim=1), strict=True):
                out_cms[n].update(logits.argmax(1).cpu(), batch["label"])
    main = evaluator.metrics(full, e.miou, e.ignore_classes)
    result: dict[str, Any] = {
        "checkpoint": str(ckpt),
        "dataset": cfg.data.dataset,
        "split": cfg.data.val_split,
        "modalities": list(full),
        "precision": precision,
        "precision_reason": precision_reason,
        "miou": e.miou,
        "classes": list(ds.classes),
        "overall": {kk: v for kk, v in main.items() if kk != "per_condition"},
        "per_condition": main["per_condition"],
    }
    if missing:
        result["missing"] = evaluator.table(e.miou, e.ignore_classes, requested)
    if outputs:
        result["outputs"] = {}
        for n, cm in out_cms.items():
            r = metrics_from_confusion(cm.compute(), e.miou, e.ignore_classes)
            result["outputs"][n] = {"OA": r["OA"], "mAcc": r["mAcc"], "mIoU": r["mIoU"]}
    if protocols:
        header = {"checkpoint": str(ckpt), "dataset": cfg.data.dataset,
                  "split": cfg.data.val_split, "modalities": list(full), "seed": seed}
        result["protocols"] = {p: protocol_results(evaluator, p, header, e.miou,
                                                   e.ignore_classes) for p in protocols}
    if write_json:
        base = source.results_base
        stem, sp = base.stem, cfg.data.val_split
        out = base.with_name(f"{stem}_eval_{sp}.json")
        # strict JSON: null for classes absent from the data; the protocols have their own files
        atomic_write_json({k: v for k, v in result.items() if k != "protocols"}, out)
        result["json"] = str(out)
        result["files"] = [str(out)]
        for p, res in result.get("protocols", {}).items():
            pj = base.with_name(f"{stem}_{p}_{sp}.json")
            atomic_write_json(res, pj)
            pm = pj.with_suffix(".md")
            pm.write_text(protocol_markdown(res))
            result["files"] += [str(pj), str(pm)]
        if protocols:
            from ..viz import plot_robustness
            png = base.with_name(f"{stem}_robustness_{sp}.png")
            result["files"].append(str(plot_robustness(result["protocols"], png)))
    return result
