"""Run configuration: pydantic models of the YAML config files under ``configs/``.

A config has four sections, ``model``, ``data``, ``train`` and ``eval``, plus ``seed`` and
``name``. Every section forbids unknown keys, so a mistyped key is an error that names it
rather than a silently ignored setting. ``--set key.sub=value`` overrides on the command line
go through :func:`apply_overrides` before validation.

Example::

    cfg = load_config("configs/quickstart.yaml", overrides=["train.max_epochs=2"])
    cfg.model.modalities  # ['rgb', 'depth', 'lidar', 'thermal']
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError


class _Strict(BaseModel):
    # NaN / inf is no valid value of any float setting (a learning rate, a probability ...);
    # ``.nan`` / ``.inf`` in YAML or ``--set`` is an error naming the key
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class ModelConfig(_Strict):
    """Model section; passed to :func:`fusionseg.models.create_model` as a dict.

    ``name`` picks a registered model (``fusionseg info`` lists them); method-specific keys
    (``adapter``, ``fusion``, ``backbone_kwargs``, ...) are further keys of this section,
    validated here by method name against the method's typed options
    (:class:`~fusionseg.models.options.MethodOptions`; ``fusionseg info METHOD`` lists them):
    a wrong type, value or unknown key fails when the config is read.
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str = "sum_fusion"
    #: encoder name; None (unset): the method's own default (``fusionseg info METHOD``),
    #: filled in when the config is read
    backbone: str | None = None
    modalities: list[str] = Field(default_factory=lambda: ["rgb"])
    num_classes: int | None = None  # None: taken from the dataset
    #: encoder weights: a local file / Hugging Face folder, or a catalogue name (``fusionseg
    #: weights list``; ``fusionseg weights fetch NAME`` stores it in $FUSIONSEG_WEIGHTS)
    pretrained: str | None = None

    @field_validator("modalities")
    @classmethod
    def _check_modalities(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one modality")
        twice = sorted({m for m in v if v.count(m) > 1})
        if twice:
            raise ValueError(f"duplicate modalities {twice}")
        return v

    @model_validator(mode="after")
    def _check_method_options(self) -> ModelConfig:
        from .models.registry import MODELS, options_of, validate_model_options  # imports torch

        if self.name not in MODELS:  # a model registered later: create_model checks it
            return self
        options = options_of(self.name)
        if self.backbone is None and options is not None and "backbone" in options.model_fields:
            self.backbone = options.model_fields["backbone"].default
        values = self.to_dict()
        values.pop("name")
        values.pop("grad_checkpointing", None)
        if values["num_classes"] is None:  # taken from the dataset later
            values["num_classes"] = 1
        validate_model_options(self.name, values)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Return the dict for ``create_model`` (extra builder keys included; an unset
        ``backbone`` left out, so the method's default applies)."""
        out = self.model_dump()
        if out.get("backbone") is None:
            out.pop("backbone", None)
        return out


class MisalignConfig(_Strict):
    """Training augmentation against imperfect registration (``data.misalign``,
    :class:`fusionseg.data.transforms.RandomMisalign`): each modality but the first is, with
    probability ``prob`` (per sample and modality), rotated by up to ``max_rotation`` degrees
    about the image centre and shifted by up to ``max_shift`` pixels of the training crop per
    axis (uniform, either sign); the first modality and the label stay. ``data.misalign:
    true`` turns it on with these defaults."""

    prob: float = Field(0.5, ge=0.0, le=1.0)
    max_shift: float = Field(4.0, ge=0.0, le=1024.0)  # pixels, per axis
    max_rotation: float = Field(2.0, ge=0.0, le=180.0)  # degrees


class DataConfig(_Strict):
    """Data section: which dataset, where, which modalities, and the transforms."""

    dataset: str = "deliver"
    root: str = "data/synthcity"
    modalities: list[str] | None = None  # None (default): the model's modalities
    train_split: str = "train"
    val_split: str = "val"
    options: dict[str, Any] = Field(default_factory=dict)  # dataset-specific (conditions, case)
    crop_size: tuple[int, int] = (256, 256)
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip_prob: float = 0.5
    vflip_prob: float = 0.0  # vertical flips (aerial data)
    photometric: bool = True
    eval_size: tuple[int, int] | None = None  # resize for evaluation (None: native size)
    #: the label's nearest rule when ``eval_size`` resizes it: ``nearest`` (pixel-centre
    #: aligned) or ``nearest-legacy`` (torchvision / OpenCV, what most releases use); they
    #: differ at non-integer factors only
    eval_label_interpolation: Literal["nearest", "nearest-legacy"] = "nearest"
    #: centre crop ``[H, W]`` of every modality and the label after the eval resize (None: no
    #: crop), e.g. the centre 1024 x 1024 of MCubeS's 1024 x 1032 that its releases score
    eval_crop: tuple[int, int] | None = None
    #: a first evaluation resize ``[H, W]`` before ``eval_size`` (None: one resize), for
    #: releases that resize twice (StitchFusion MFNet: 480x640 -> 640x853 -> 640x864)
    eval_pre_size: tuple[int, int] | None = None
    batch_size: int = 8
    val_batch_size: int = 4
    num_workers: int = 2
    #: probability to drop each modality per sample in training (never all); ``train.robust``
    #: is the full recipe (dropout + rectangles + consistency)
    modality_dropout: float = 0.0
    #: modalities of the model fed as missing (absent) in training and validation, e.g. an
    #: optical-only baseline of a two-stream method: ``missing_modalities: [dsm]``
    missing_modalities: list[str] = Field(default_factory=list)
    #: misregistration augmentation of every modality but the first (None / false: off)
    misalign: MisalignConfig | None = None

    @field_validator("misalign", mode="before")
    @classmethod
    def _misalign_switch(cls, v: Any) -> Any:
        """``misalign: true`` -> the defaults, ``false`` -> off."""
        if isinstance(v, bool):
            return {} if v else None
        return v


class RobustConfig(_Strict):
    """Robust training against sensor failure (:mod:`fusionseg.engine.robust_training`).

    ``train.robust: true`` turns it on with these defaults; a mapping sets them (``{enabled:
    true, modality_dropout: {depth: 0.5, thermal: 0.5}}``).
    """

    enabled: bool = False
    #: drop probability per sample of each modality (or ``{modality: p}``); never all dropped
    modality_dropout: float | dict[str, float] = 0.25
    rect_prob: float = 0.25  # per sample: one kept modality loses a random rectangle
    rect_area: tuple[float, float] = (0.1, 0.3)  # fraction of the image
    rect_aspect: tuple[float, float] = (0.5, 2.0)  # width / height
    consistency_weight: float = 1.0  # KL from the full-modality half or the teacher (0: none)
    corrupt_weight: float = 1.0  # weight of the corrupted half's loss against the full half's
    temperature: float = 2.0
    #: modality subsets: per-modality ``dropout`` or a ``uniform`` subset size k ~ U{1..M}
    sampling: Literal["dropout", "uniform"] = "dropout"
    #: probability that a sample keeps every modality (None: what the sampling gives)
    full_share: float | None = Field(default=None, ge=0.0, le=1.0)
    #: second stage: distil from a frozen full-modality model, ``init`` (= train.init_from)
    #: or a checkpoint path; None: the same network's full-input half of a doubled batch
    teacher: str | None = None
    feature_weight: float = Field(default=0.0, ge=0.0)  # fused-feature MSE to the teacher

    @model_validator(mode="before")
    @classmethod
    def _switch(cls, data: Any) -> Any:
        """``robust: true`` / ``false`` -> ``{enabled: ...}``; a non-empty mapping without
        ``enabled`` means on."""
        if isinstance(data, bool):
            return {"enabled": data}
        if isinstance(data, dict) and data and "enabled" not in data:
            return {**data, "enabled": True}
        return data


#: ``class_weight`` values computed from the training split (fusionseg.engine.class_balance)
FREQUENCY_WEIGHTINGS = ("inverse_frequency", "median_frequency")


def _check_class_weight(value: Any, key: str) -> None:
    if value is None:
        return
    if isinstance(value, str):
        if value not in FREQUENCY_WEIGHTINGS:
            raise ValueError(f"{key}: {value!r} is no class weighting; use a list of K numbers "
                             f"or one of {list(FREQUENCY_WEIGHTINGS)}")
        return
    numbers = isinstance(value, list) and value and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not numbers:
        raise ValueError(f"{key}: a list of K numbers or one of {list(FREQUENCY_WEIGHTINGS)}, "
                         f"got {value!r}")
    if not all(math.isfinite(v) and v >= 0 for v in value) or not any(v > 0 for v in value):
        raise ValueError(f"{key}: weights must be finite, >= 0 and not all 0, got {value}")


def check_loss_spec(loss: Any) -> None:
    """Check the shape of a ``train.loss`` mapping (the names and options of the losses are
    checked when the engine builds them, :func:`fusionseg.engine.losses.build_loss`).

    ``{name, <options>, class_weight?, terms?: [{name, weight?, <options>, class_weight?}]}``.

    Raises:
        ValueError: one line naming the key: no ``name``; a ``weight`` outside ``terms`` (class
            weights are ``class_weight``); a bad ``class_weight``; ``terms`` not a list of such
            mappings, a term's ``weight`` not a number >= 0, a term with ``terms``.
    """
    if not isinstance(loss, dict) or not isinstance(loss.get("name"), str):
        raise ValueError(f"loss: a loss name or a mapping with a 'name', got {loss!r}")
    if "weight" in loss:
        raise ValueError("loss.weight: class weights are loss.class_weight ([w_0, ...], "
                         "median_frequency or inverse_frequency); a mixing weight is 'weight' "
                         "of an entry of loss.terms")
    _check_class_weight(loss.get("class_weight"), "loss.class_weight")
    terms = loss.get("terms")
    if terms is None:
        return
    if not isinstance(terms, list):
        raise ValueError(f"loss.terms: a list of loss specs ({{name: dice, weight: 0.5}}), "
                         f"got {terms!r}")
    for i, term in enumerate(terms):
        key = f"loss.terms[{i}]"
        if isinstance(term, str):
            continue
        if not isinstance(term, dict) or not isinstance(term.get("name"), str):
            raise ValueError(f"{key}: a loss name or a mapping with a 'name', got {term!r}")
        w = term.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, int | float) or not (
                math.isfinite(w) and w >= 0):
            raise ValueError(f"{key}.weight: the term's mixing weight, a number >= 0, got {w!r}")
        if "terms" in term:
            raise ValueError(f"{key}: a term cannot have terms of its own")
        _check_class_weight(term.get("class_weight"), f"{key}.class_weight")


class TrainConfig(_Strict):
    """Optimisation and trainer settings (AdamW, linear warm-up then poly or cosine decay)."""

    max_epochs: int = 10
    max_steps: int = -1
    lr: float = 6e-5
    head_lr_mult: float = 10.0
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    warmup_steps: int | None = None  # overrides warmup_epochs when set
    warmup_ratio: float = 0.1
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9  # SGD
    #: poly / cosine after the warm-up, per iteration; stages: constant rates per stage
    schedule: Literal["poly", "cosine", "stages"] = "poly"
    #: ``schedule: stages``: ``[{epochs: 100, lr: 5.0e-4, head_lr_mult: 6.0}, ...]``
    lr_stages: list[dict[str, float]] = Field(default_factory=list)
    poly_power: float = 0.9
    min_lr: float = 0.0  # end of the cosine schedule (as a fraction min_lr / lr of every group)
    #: iterations per epoch (Lightning ``limit_train_batches``); None: one pass over the data
    epoch_steps: int | None = None
    #: main loss spec: a registered loss and its options, e.g. ``{name: ohem, thresh: 0.7,
    #: min_kept_frac: 0.0625}``; a bare name (``ce``) is accepted. ``class_weight: [w_0, ...]``
    #: / ``median_frequency`` / ``inverse_frequency`` weights the classes; ``terms: [{name:
    #: dice, weight: 0.5}, ...]`` adds weighted loss terms (docs/losses.md)
    loss: dict[str, Any] = Field(default_factory=lambda: {"name": "ohem"})
    #: per-name weights of auxiliary outputs, replacing the weights the method declares
    aux_weights: dict[str, float] = Field(default_factory=dict)
    #: robust training against sensor failure: ``robust: true`` (see :class:`RobustConfig`)
    robust: RobustConfig = Field(default_factory=RobustConfig)
    accelerator: str = "auto"
    #: devices per node: 1 (default: one GPU, or the CPU), N, or "auto" / -1 for all of them;
    #: data.batch_size is per device (docs/scaling.md)
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    #: Lightning's name (32, bf16-mixed, 16-mixed) or auto (None too): bf16-mixed where the
    #: hardware runs bf16 natively (a CUDA GPU with bf16, a CPU with AMX or AVX-512 BF16), 32
    #: elsewhere (:func:`fusionseg.runtime.auto_precision`); the resolved value is printed at
    #: the start of a run and stored in its checkpoints (``fusionseg_precision``)
    precision: str | None = "auto"
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    val_every_n_epochs: int = 1
    log_every_n_steps: int = 10
    #: also write ``last.ckpt`` every this many optimizer steps (None: only at the end of each
    #: epoch); ``--resume last.ckpt`` continues exactly from there, mid-epoch too
    checkpoint_every_n_steps: int | None = Field(default=None, ge=1)
    #: start from the weights of a trained model: a fusionseg checkpoint (``best.ckpt``), a
    #: plain state dict or a method's released file, loaded strictly into the configured model
    #: (read like every checkpoint: weights only, never code); a new run, unlike ``--resume``
    init_from: str | None = None
    out_dir: str = "runs"
    progress: bool = True
    threads: int | None = None  # torch.set_num_threads on CPU; None leaves torch's default
    #: torch.compile the model for training (in place: checkpoint keys unchanged); a mapping
    #: is passed to ``torch.compile`` (``{mode: max-autotune}``, ``{backend: eager}``)
    compile: bool | dict[str, Any] = False
    #: channels-last memory format for the model and its 4-D inputs (faster convolutions on
    #: GPU tensor cores, e.g. AsymFusion's ResNet; no gain for the ViT / MiT encoders on CPU)
    channels_last: bool = False

    @model_validator(mode="before")
    @classmethod
    def _loss_spec(cls, data: Any) -> Any:
        """``loss: ce`` -> ``{name: ce}``; the keys of configs and checkpoints written before
        the loss became a mapping (``ohem_thresh``, ``ohem_min_kept_frac``, ``aux_weight``)
        are folded in."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        loss = data.get("loss", {"name": "ohem"})
        if isinstance(loss, str):
            loss = {"name": loss}
        elif isinstance(loss, dict):
            loss = dict(loss)
        legacy = {"ohem_thresh": "thresh", "ohem_min_kept_frac": "min_kept_frac"}
        for old, new in legacy.items():
            if old in data:
                value = data.pop(old)
                if isinstance(loss, dict) and loss.get("name") == "ohem":
                    loss.setdefault(new, value)
        if "aux_weight" in data:
            value = data.pop("aux_weight")
            if value != 0.4:  # the old default, which the methods' weights now carry
                raise ValueError(
                    f"train.aux_weight={value} is no longer read; set per-output weights in "
                    f"train.aux_weights, e.g. {{aux: {value}}}"
                )
        check_loss_spec(loss)
        data["loss"] = loss
        if data.get("schedule") == "stages" and not data.get("lr_stages"):
            raise ValueError("schedule: stages needs lr_stages: [{epochs, lr, head_lr_mult}, ...]")
        return data


class EvalConfig(_Strict):
    """Evaluation settings: inference mode and mIoU convention."""

    mode: Literal["whole", "slide"] = "whole"
    window: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    window_batch: int = 1  # sliding windows per forward pass (throughput; same result)
    # sliding-window placement: "aligned" (each window once, the last one aligned to the edge)
    # or "clamped" (the ISPRS code's loop, as the MoBaNet release: a start every stride, starts
    # past the edge moved back to the last position and summed once per move)
    slide_positions: Literal["aligned", "clamped"] = "aligned"
    flip: bool = False
    scales: list[float] = Field(default_factory=lambda: [1.0])
    miou: Literal["nanmean", "zero"] = "nanmean"
    ignore_classes: list[int] = Field(default_factory=list)  # excluded from mIoU/mF1 (clutter)
    per_condition: bool = True  # metrics per meta["condition"] (DELIVER / synthcity weather)


class Config(_Strict):
    """A whole run: ``model``, ``data``, ``train``, ``eval``, ``seed`` and ``name``."""

    name: str = "run"
    seed: int = 3407
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _fill_modalities(self) -> Config:
        if self.data.modalities is None:
            self.data.modalities = list(self.model.modalities)
        if sorted(self.data.modalities) != sorted(self.model.modalities):
            raise ValueError(f"data.modalities {self.data.modalities} must be the model's "
                             f"modalities {self.model.modalities}")
        # one order everywhere: the batch's "present" columns follow model.modalities
        self.data.modalities = list(self.model.modalities)
        unknown = [m for m in self.data.missing_modalities if m not in self.model.modalities]
        if unknown or len(self.data.missing_modalities) >= len(self.model.modalities):
            raise ValueError(f"data.missing_modalities {self.data.missing_modalities} must name "
                             f"some but not all of the model's modalities {self.model.modalities}")
        r = self.train.robust
        if r.enabled and r.teacher == "init" and not self.train.init_from:
            raise ValueError("train.robust.teacher: init needs train.init_from (the trained "
                             "model the second stage starts from and distils from)")
        return self


#: deepest nesting of lists / mappings an override value may have
MAX_OVERRIDE_DEPTH = 32


def _parse_value(text: str) -> Any:
    """Parse an override value with YAML rules (``2`` -> int, ``[a,b]`` -> list, ``null``).

    Text that is no YAML value (``[a``, ``!!int x``, an integer of thousands of digits,
    brackets nested past the parser's recursion limit) stays the string as given."""
    try:
        return yaml.safe_load(text)
    except Exception:  # YAMLError, and ValueError / RecursionError ... from its constructors
        return text


def _check_value(value: Any, item: str) -> None:
    """Refuse an override value no run config can hold: one nested deeper than
    :data:`MAX_OVERRIDE_DEPTH`, one that repeats a list / mapping (YAML anchors and aliases:
    ``&a [*a]`` is a list that contains itself), or binary data (``!!binary``); a run writes
    its config as JSON.

    Raises:
        ConfigError: naming the override.
    """
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, bytes | bytearray):
            raise ConfigError(f"override {_show(item)}: binary values are not supported")
        if not isinstance(node, dict | list | tuple | set | frozenset):
            continue
        if depth >= MAX_OVERRIDE_DEPTH:
            raise ConfigError(
                f"override {_show(item)}: nested deeper than {MAX_OVERRIDE_DEPTH} levels"
            )
        if id(node) in seen:
            raise ConfigError(
                f"override {_show(item)}: YAML anchors / aliases (&name, *name) are not supported"
            )
        seen.add(id(node))
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else list(node)
        stack += [(c, depth + 1) for c in children]


def _printable(text: str) -> str:
    """``text`` on one line: characters that are not printable (newlines, tabs, controls) as
    their escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _show(item: str) -> str:
    """An override or key quoted for a message, on one line."""
    return f"'{_printable(item)}'"


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config dict and return a new dict.

    The key is a dotted path of non-empty names (blanks around names are ignored); the value
    is YAML (see :func:`_parse_value`); both are split at the first ``=``. A path through a
    ``true`` / ``false`` switch (``train.robust: false`` and ``train.robust.modality_dropout=
    0.5``) replaces the switch by its section: the keys set, on unless ``enabled`` says off.

    Raises:
        ConfigError: an override without ``=``, with an empty key name (``a..b``, ``.a``), a
            path through a value that is not a section, or a value no config can hold (see
            :func:`_check_value`). The message names the override.
    """
    out = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {_show(item)} must look like key.sub=value")
        key, value = item.split("=", 1)
        parts = [part.strip() for part in key.split(".")]
        if not all(parts):
            raise ConfigError(
                f"override {_show(item)}: the key must be names joined by dots, like "
                "train.max_epochs (one is empty)"
            )
        parsed = _parse_value(value)
        _check_value(parsed, item)
        node = out
        for part in parts[:-1]:
            if isinstance(node.get(part), bool):
                # a section written as its switch (``robust: false``): a key set inside it
                # makes it the section, which such sections read as on unless ``enabled``
                # is set too (``train.robust.modality_dropout=0.5`` turns robust training on)
                node[part] = {}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {_show(item)}: {_show(part)} is not a section")
        node[parts[-1]] = parsed
    return out


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown config key '{loc}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {loc or 'config'}: {msg}")
    return _printable("; ".join(lines))


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a raw dict into a :class:`Config`.

    Raises:
        ConfigError: unknown or mistyped keys; the message names ``source`` and the key.
    """
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides and validate it.

    Raises:
        ConfigError: missing file, invalid YAML, unknown or mistyped key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    return config_from_dict(apply_overrides(raw, overrides), source=str(path))


def model_spec(cfg: Config, num_classes: int | None = None,
               for_checkpoint: bool = False) -> dict[str, Any]:
    """The ``create_model`` mapping of the config's model section.

    Args:
        num_classes: the dataset's class count; fills ``model.num_classes`` when unset.
        for_checkpoint: drop ``model.pretrained`` (weights about to be loaded from a checkpoint
            replace those, so an ImageNet file need not be present).

    Raises:
        ConfigError: ``model.num_classes`` disagrees with ``num_classes``.
    """
    spec = cfg.model.to_dict()
    if for_checkpoint:
        spec["pretrained"] = None
    if spec.get("num_classes") is None:
        spec["num_classes"] = num_classes
    elif num_classes is not None and spec["num_classes"] != num_classes:
        raise ConfigError(f"model.num_classes={spec['num_classes']} but dataset "
                         f"{cfg.data.dataset!r} has {num_classes} classes")
    return spec
