"""Prediction on a dataset split, on a folder of modality images, or on per-modality files.

Input forms (``inputs`` of :func:`predict`, one ``--input`` each; see ``docs/predict.md``):

- ``ROOT``: a dataset root in the layout of the checkpoint's dataset (e.g. DELIVER /
  synthcity), read through the same dataset class as training (``split`` picks the split);
- ``DIR`` holding ``DIR/{modality}/{stem}.*`` (one sub-folder per modality of the model, and
  optionally ``DIR/label/{stem}.png`` with class ids in channel 0). A modality folder that is
  absent is a missing modality (its key is left out), so a model can run on RGB alone;
- ``MODALITY=SOURCE[:I,J,...]``: ``SOURCE`` is a folder (its image files), a glob
  (``*``/``?``/``[``; ``**`` recurses) or one file; the optional ``:I,J`` suffix selects the
  file's channels by **0-based** index (the MFNet packing, RGB + thermal in one RGBA PNG:
  ``rgb=DIR:0,1,2 thermal=DIR:3``). ``label=SOURCE`` gives labels. Any number of these may be
  combined, also with one ``DIR`` (an explicit modality replaces ``DIR/{modality}``).

Files are matched across modalities by file stem (``a.png`` in one source goes with
``a.tif`` in another); a stem without a partner in every given modality is a
:class:`~fusionseg.data.io.DataError` naming the modality and the stems.

Modality specs: the files are read with the training run's
:class:`~fusionseg.data.modalities.ModalitySpec` (bit depth, channels, scale, normalization)
stored as ``fusionseg_specs`` in the checkpoint (or the ONNX metadata). An older checkpoint
without them falls back, with one warning, to the specs of the dataset class named by
``data.dataset`` of its config. ``spec_overrides`` (``--spec depth.bit_depth=8``) replace
fields. A file that does not fit (an 8-bit depth PNG for a model trained on 16-bit
millimetres, a wrong channel count) is a ``DataError`` naming the file, the modality, the
problem, the spec the model was trained on and the override that would read it.

Outputs, per sample ``{id}``: ``out/masks/{id}.png`` (colorized prediction),
``out/panels/{id}.png`` (each modality, the label when present, the prediction, a legend of
the classes present), with ``overlay`` ``out/overlays/{id}.png`` (the colour mask blended on
the RGB image at alpha 0.5; without RGB on the first present modality's visualisation), with
``video`` an animated GIF (or MP4) of the overlays (panels without ``overlay``), sorted by id.

Long runs: every output is written atomically; a sample whose files cannot be used is
skipped and listed in ``out/failed.txt`` (``on_error="skip"``; the run raises
:class:`PredictionIncomplete` at the end), and ``skip_existing`` continues an interrupted run
without redoing the samples whose outputs all exist (see :func:`predict`).

Large images run sliding-window inference automatically (:func:`inference_settings`).

Sensor health (``health``, on by default): each frame's modalities are checked as read from
the file (:mod:`fusionseg.health`: NaN/inf, saturated, all zero, constant, frozen = identical
to the previous frame in the run's order); a dead modality is dropped from the sample exactly
as a modality that was not given, ``out/sensors.csv`` says per frame which sensors were used,
and a frame whose every modality is dead is a failed sample.
"""

from __future__ import annotations

import csv
import glob as globlib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from PIL import Image
from pydantic import ValidationError

from .config import Config, config_from_dict, load_config, model_spec
from .data.io import IMAGE_EXTENSIONS, DataError, bit_depth_of, read_image
from .data.modalities import ModalitySpec, resolve_specs
from .data.sample import drop_modalities
from .engine.inference import inference_kwargs, predict_logits
from .errors import CheckpointError, ConfigError
from .files import atomic_path
from .health import ABSENT, OK, SensorHealth, check_modality, resolve_health
from .models import create_model, load_checkpoint
from .models.weights import read_weights_file
from .runtime import autocast, resolve_precision
from .viz import (
    check_video_path,
    class_legend,
    colorize,
    default_palette,
    modality_image,
    overlay_mask,
    sample_panel,
    save_panel,
    save_video,
)

__all__ = [
    "DeadSensors",
    "FailedSample",
    "FileInput",
    "InputSource",
    "PredictionIncomplete",
    "PredictionSummary",
    "SampleOutputs",
    "inference_settings",
    "load_predictor",
    "match_stems",
    "open_inputs",
    "parse_input",
    "parse_spec_overrides",
    "predict",
    "sample_outputs",
    "source_files",
    "training_specs",
]

LABEL = "label"
_GLOB_CHARS = re.compile(r"[*?\[]")
_CHANNELS = re.compile(r"^(?P<path>.+):(?P<idx>\d+(?:,\d+)*)$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ----------------------------------------------------------------------------- model loading
def _meta_value(meta: Mapping, key: str) -> Any:
    value = meta.get(key)
    if isinstance(value, str):
        try:  # ONNX metadata is text; a parsed .meta already holds the objects
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def load_predictor(ckpt: str | Path | None = None, onnx: str | Path | None = None,
                   config: str | Path | None = None) -> tuple[Any, dict, Config]:
    """Load a model for prediction from a checkpoint or an exported ONNX file.

    Args:
        ckpt: a fusionseg / Lightning checkpoint (``state_dict`` with the ``model.`` prefix and
            ``fusionseg_config`` / ``fusionseg_classes`` / ``fusionseg_palette`` /
            ``fusionseg_specs``), or a plain state dict together with ``config``.
        onnx: an ONNX file written by ``fusionseg export``, run through
            :class:`fusionseg.export.OnnxModel` (imported only here).
        config: a YAML config replacing the one stored in the checkpoint / ONNX metadata.

    Returns:
        ``(model, meta, cfg)``: the model in eval mode (a ``torch.nn.Module``, or the
        ``OnnxModel``; both map a batch dict to logits ``[B, K, H, W]``), the checkpoint's
        ``fusionseg_*`` entries (JSON text already parsed) plus ``"source"`` (the file, for
        messages), and the run config.

    Raises:
        ConfigError: neither or both of ``ckpt`` / ``onnx``; an invalid config; the number of
            classes unknown.
        CheckpointError: the file is missing, cannot be read safely (a checkpoint naming
            Python objects beyond tensors and plain containers is refused, never unpickled:
            :func:`fusionseg.serialization.read_checkpoint`), holds no config and none is given,
            or does not fit the model (:class:`CheckpointMismatchError`).
    """
    if (ckpt is None) == (onnx is None):
        raise ConfigError("give exactly one of a checkpoint (--ckpt) or an ONNX file (--onnx)")
    source = Path(ckpt if ckpt is not None else onnx)
    contents: object = None
    if onnx is not None:
        if not source.is_file():
            raise CheckpointError(f"{source}: ONNX file not found")
        from .export import OnnxModel

        model = OnnxModel(source).eval()
        raw = dict(getattr(model, "meta", {}) or {})
    else:
        contents = read_weights_file(source)  # never unpickles code (weights_only=True)
        raw = contents if isinstance(contents, dict) else {}
        model = None
    meta = {k: _meta_value(raw, k) for k in raw if str(k).startswith("fusionseg_")}
    if config is not None:
        cfg = load_config(config)
    elif isinstance(meta.get("fusionseg_config"), dict):
        cfg = config_from_dict(meta["fusionseg_config"], source=str(source))
    else:
        raise CheckpointError(f"{source}: holds no fusionseg config; pass --config")
    if model is None:
        classes = meta.get("fusionseg_classes")
        num_classes = cfg.model.num_classes or (len(classes) if classes else None)
        if num_classes is None:
            raise ConfigError(f"{source}: number of classes unknown; set model.num_classes")
        # the checkpoint replaces the backbone weights: model.pretrained is not read
        model = create_model(model_spec(cfg, num_classes, for_checkpoint=True))
        load_checkpoint(model, source, contents)
        model.eval()
    meta["source"] = str(source)
    return model, meta, cfg


# ----------------------------------------------------------------------------- modality specs
def parse_spec_overrides(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["depth.bit_depth=8", "depth.scale=0.01"]`` -> ``{"depth": {"bit_depth": 8,
    "scale": 0.01}}``; values are parsed with ``yaml.safe_load`` (``null``, ``[3]``,
    ``auto``; note that YAML reads ``1e-3`` as text, which the spec's validation accepts).

    Raises:
        DataError: an item not of the form ``modality.field=value``.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        modality, dot, field = key.strip().partition(".")
        if not sep or not dot or not modality or not field or "." in field:
            raise DataError(f"spec override {item!r} must look like modality.field=value "
                            "(e.g. depth.bit_depth=8)")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        out.setdefault(modality, {})[field] = parsed
    return out


def _validated(modality: str, data: Mapping[str, Any], what: str) -> ModalitySpec:
    try:
        return ModalitySpec.model_validate({**data, "name": modality})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in err.errors())
        raise DataError(f"invalid {what}: {problems}", modality=modality) from None


def apply_spec_overrides(specs: Mapping[str, ModalitySpec],
                         overrides: Mapping[str, Mapping[str, Any]] | None
                         ) -> dict[str, ModalitySpec]:
    """``specs`` with the fields of ``overrides[modality]`` replaced (validated).

    Raises:
        DataError: an override for a modality not in ``specs``, an unknown field or an invalid
            value (naming the modality and field).
    """
    out = dict(specs)
    for modality, fields in (overrides or {}).items():
        if modality not in out:
            raise DataError(f"spec override for '{modality}', which the model does not take "
                            f"(modalities: {', '.join(out)})", modality=modality)
        if "name" in fields:
            raise DataError("spec override cannot rename a modality", modality=modality)
        out[modality] = _validated(modality, {**out[modality].model_dump(), **dict(fields)},
                                   "spec override")
    return out


def stored_specs(meta: Mapping[str, Any]) -> dict[str, ModalitySpec] | None:
    """The ``fusionseg_specs`` of a checkpoint as ModalitySpecs, or ``None`` when absent.

    Raises:
        DataError: a stored spec that does not validate.
    """
    raw = meta.get("fusionseg_specs")
    if not raw:
        return None
    return {m: _validated(m, d, "stored spec (fusionseg_specs)") for m, d in raw.items()}


def training_specs(meta: Mapping[str, Any], cfg: Config,
                   spec_overrides: Mapping[str, Mapping[str, Any]] | None = None
                   ) -> dict[str, ModalitySpec]:
    """The modality specs predict reads files with, for each of ``cfg.model.modalities``.

    From ``meta["fusionseg_specs"]`` (the training dataset's specs); without them (a
    checkpoint written before they were stored) the specs of the dataset class
    ``cfg.data.dataset`` with ``cfg.data.options["specs"]`` applied, and one ``UserWarning``.
    Then ``spec_overrides`` replace fields.

    Raises:
        DataError: a model modality missing from the stored specs, an invalid override,
            an unknown dataset.
    """
    from .data.datasets import get_dataset_class

    modalities = list(cfg.model.modalities)
    stored = stored_specs(meta)
    if stored is not None:
        lacking = [m for m in modalities if m not in stored]
        if lacking:
            raise DataError(f"{meta.get('source', 'checkpoint')}: fusionseg_specs has no spec "
                            f"for modality {', '.join(lacking)}", modality=lacking[0])
        specs = {m: stored[m] for m in modalities}
    else:
        cls = get_dataset_class(cfg.data.dataset)
        defaults = dict(getattr(cls, "default_specs", {}) or {})
        specs = resolve_specs(modalities, cfg.data.options.get("specs"), defaults)
        warnings.warn(
            f"{meta.get('source', 'checkpoint')}: holds no fusionseg_specs (written before "
            f"they were stored); reading files with the specs of dataset "
            f"'{cfg.data.dataset}' - check bit depths and scales, or pass --spec",
            UserWarning, stacklevel=2)
    return apply_spec_overrides(specs, spec_overrides)


def describe_spec(spec: ModalitySpec) -> str:
    """A short text of what a spec reads: ``"16-bit, 1 channel(s), raw * 0.001 -> m"``."""
    bits = f"{spec.bit_depth}-bit" if spec.bit_depth else "any bit depth"
    chans = f"{spec.channels} channel(s)"
    if spec.file_channels is not None:
        chans += f" (file channels {list(spec.file_channels)})"
    scale = "integer range -> [0, 1]" if spec.scale == "auto" else f"raw * {spec.scale:g}"
    if spec.offset:
        scale += f" + {spec.offset:g}"
    return f"{bits}, {chans}, {scale}" + (f" -> {spec.unit}" if spec.unit else "")


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class InputSource:
    """One ``--input``: ``modality=None`` for a dataset root / ``DIR/{modality}`` folder.

    Attributes:
        modality: a model modality, ``"label"``, or ``None``.
        path: folder, glob or file as given.
        channels: 0-based file channel indices (the ``:I,J`` suffix) or ``None``.
    """

    modality: str | None
    path: str
    channels: tuple[int, ...] | None = None


def parse_input(text: str | Path) -> InputSource:
    """Parse one input: ``PATH`` or ``MODALITY=SOURCE[:I,J,...]`` (0-based channels).

    A trailing ``:digits[,digits]`` is always a channel selection. The text before a first
    ``=`` counts as a modality name only if it is an identifier.

    Raises:
        DataError: an empty source, or a channel selection on a plain ``PATH``.
    """
    text = str(text)
    name, sep, rest = text.partition("=")
    if not sep or not _NAME.match(name):
        if _CHANNELS.match(text) and not Path(text).exists():
            raise DataError(f"input {text!r}: a channel selection needs a modality, e.g. "
                            "thermal=DIR:3")
        return InputSource(None, text)
    m = _CHANNELS.match(rest)
    path, channels = (m["path"], tuple(int(i) for i in m["idx"].split(","))) if m else (rest,
                                                                                      None)
    if not path:
        raise DataError(f"input {text!r}: no folder, glob or file after '='", modality=name)
    if channels is not None and name == LABEL:
        raise DataError(f"input {text!r}: labels take channel 0; no channel selection",
                        modality=name)
    return InputSource(name, path, channels)


def source_files(source: InputSource) -> dict[str, Path]:
    """``{stem: file}`` of a per-modality source (a folder, a glob, or one file).

    Only files with an image extension (``.png .jpg .jpeg .tif .tiff .npy .npz .bmp``) count.

    Raises:
        DataError: nothing matches, or two files share a stem (naming modality and files).
    """
    text, m = source.path, source.modality
    p = Path(text)
    if _GLOB_CHARS.search(text):
        files = [Path(f) for f in sorted(globlib.glob(text, recursive=True))]
    elif p.is_dir():
        files = sorted(p.iterdir())
    elif p.is_file():
        files = [p]
    else:
        raise DataError("no such folder, file or glob match", path=text, modality=m)
    files = [f for f in files if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise DataError(f"no image files ({' '.join(IMAGE_EXTENSIONS)})", path=text,
                        modality=m)
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise DataError(f"two files with stem '{f.stem}': {out[f.stem]} and {f}; stems "
                            "match files across modalities, so they must be unique",
                            path=text, modality=m)
        out[f.stem] = f
    return out


def _some(stems: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(stems[:n])
    return shown + (f" (+{len(stems) - n} more)" if len(stems) > n else "")


def match_stems(files: Mapping[str, Mapping[str, Path]]) -> list[str]:
    """The sorted stems present in every modality of ``files`` (modality -> stem -> file).

    Raises:
        DataError: some stems lack a partner; the message names, per modality, the stems it
            has no file for.
    """
    if not files:
        raise DataError("no inputs given")
    union = sorted(set().union(*(set(f) for f in files.values())))
    problems, first = [], None
    for modality, by_stem in files.items():
        lacking = [s for s in union if s not in by_stem]
        if lacking:
            first = first or modality
            problems.append(f"'{modality}' has no file for stem(s) {_some(lacking)}")
    if problems:
        raise DataError("samples are matched by file stem across modalities; "
                        + "; ".join(problems), modality=first)
    return union


class FileInput(torch.utils.data.Dataset):
    """Samples from per-modality file lists matched by stem, read with given specs.

    Args:
        files: modality (or ``"label"``) -> ``{stem: file}`` (see :func:`source_files`).
        specs: modality -> ModalitySpec (the training run's, see :func:`training_specs`).
        channels: modality -> 0-based file channel indices replacing the spec's
            ``file_channels`` (their count must be the spec's ``channels`` or ``repeat_to``).
        transform: applied to each sample (e.g. the eval transforms).

    Samples: ``{modality: float32 [C, H, W], "label": int64 [H, W] (channel 0 of the label
    file), "meta": {"id": stem, "condition": None, "paths": {...}}}``, stems sorted.

    Raises:
        DataError: at construction, unmatched stems, a modality without a spec, a channel
            selection of the wrong length; per sample, a file that does not fit its spec
            (naming file, modality, problem, the trained spec and the override that reads
            it), modalities of different sizes.
    """

    def __init__(self, files: Mapping[str, Mapping[str, Path]],
                 specs: Mapping[str, ModalitySpec],
                 channels: Mapping[str, tuple[int, ...]] | None = None, transform=None):
        self.files = {k: dict(v) for k, v in files.items()}
        self.modalities = [m for m in self.files if m != LABEL]
        if not self.modalities:
            raise DataError("no modality input given (only labels)")
        lacking = [m for m in self.modalities if m not in specs]
        if lacking:
            raise DataError(f"no spec for modality '{lacking[0]}'", modality=lacking[0])
        self.specs = {m: _select_channels(specs[m], (channels or {}).get(m))
                      for m in self.modalities}
        self.stems = match_stems(self.files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, i: int) -> dict:
        stem = self.stems[i]
        sample: dict = {"meta": {"id": stem, "condition": None, "paths": {}}}
        for m in self.modalities:
            path = self.files[m][stem]
            sample[m] = _read(self.specs[m], path)
            sample["meta"]["paths"][m] = str(path)
        sizes = {m: tuple(sample[m].shape[-2:]) for m in self.modalities}
        if len(set(sizes.values())) > 1:
            raise DataError(f"sample '{stem}': modality sizes differ "
                            f"({', '.join(f'{m} {h}x{w}' for m, (h, w) in sizes.items())})",
                            path=self.files[self.modalities[0]][stem])
        if LABEL in self.files:
            path = self.files[LABEL][stem]
            raw = read_image(path, modality=LABEL)
            sample[LABEL] = torch.from_numpy(raw[..., 0].astype(np.int64))
            sample["meta"]["paths"][LABEL] = str(path)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


def _select_channels(spec: ModalitySpec, channels: tuple[int, ...] | None) -> ModalitySpec:
    if channels is None:
        return spec
    counts = [spec.channels] + ([spec.repeat_to] if spec.repeat_to else [])
    if len(channels) not in counts:
        raise DataError(f"the input selects {len(channels)} channel(s) {list(channels)} but "
                        f"the model's '{spec.name}' takes "
                        f"{' or '.join(map(str, sorted(set(counts))))}", modality=spec.name)
    return _validated(spec.name, {**spec.model_dump(), "file_channels": list(channels),
                                  "channels": len(channels)}, "channel selection")


def _read(spec: ModalitySpec, path: Path) -> torch.Tensor:
    """``spec.load(path)`` whose fit errors also name the trained spec and the fix."""
    array = read_image(path, modality=spec.name, key=spec.npz_key)
    try:
        return spec.from_array(array, path=path)
    except DataError as err:
        m = spec.name
        if err.problem.startswith("wrong bit depth"):
            hint = (f"if this {bit_depth_of(array)}-bit file is right, say how to read it, e.g. "
                    f"--spec {m}.bit_depth={bit_depth_of(array)} --spec {m}.scale=<unit per "
                    "count> (or auto for [0, 1])")
        elif err.problem.startswith("wrong channel count"):
            hint = (f"select the file's channels with {m}=PATH:I[,J] (0-based) or "
                    f"--spec {m}.file_channels=null")
        else:
            raise
        raise DataError(f"{err.problem}; the model was trained on {describe_spec(spec)}; "
                        f"{hint}", path=path, modality=m) from None


def _is_modality_folder(root: Path, modalities: Sequence[str]) -> bool:
    return any((root / m).is_dir() for m in modalities) and not (root / "img").is_dir()


def open_inputs(inputs: str | Path | Sequence[str | Path], cfg: Config,
                specs: Mapping[str, ModalitySpec], split: str | None = None,
                dataset_specs: Mapping[str, Any] | None = None,
                check_files: bool = True) -> torch.utils.data.Dataset:
    """The dataset of samples for the given ``--input`` values (forms: module docstring).

    Args:
        inputs: one input or a list of them.
        cfg: the run config (model modalities; dataset name and options for a dataset root).
        specs: the specs to read per-modality / folder inputs with (:func:`training_specs`).
        split: split of a dataset root (default ``cfg.data.val_split``).
        dataset_specs: the ``specs`` option given to the dataset class for a dataset root
            (default: ``specs``).
        check_files: False builds a dataset root with ``check_files=False`` (where the class
            takes it), so a sample with a broken file fails alone when it is read, instead of
            the whole dataset at construction (``predict`` with ``on_error="skip"``).

    Returns:
        A :class:`FileInput`, or the dataset class's instance for a dataset root; its
        ``transform`` is left unset.

    Raises:
        DataError: a plain path that does not exist, an unknown modality name, a modality
            given twice, a dataset root combined with other inputs, unmatched stems, and the
            dataset's own errors.
    """
    from .data.datasets import create_dataset, dataset_options, get_dataset_class

    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise DataError("no inputs given")
    modalities = list(cfg.model.modalities)
    sources = [parse_input(x) for x in items]
    plain = [s for s in sources if s.modality is None]
    named = [s for s in sources if s.modality is not None]
    if len(plain) > 1:
        raise DataError(f"at most one folder or dataset root among the inputs, got "
                        f"{', '.join(s.path for s in plain)}")
    files: dict[str, dict[str, Path]] = {}
    if plain:
        root = Path(plain[0].path)
        if not root.is_dir():
            raise DataError("input folder not found", path=root)
        if not _is_modality_folder(root, modalities):
            if named:
                raise DataError(f"{root}: a dataset root cannot be combined with "
                                "per-modality inputs (MODALITY=PATH)", path=root)
            options = dict(cfg.data.options)
            options["specs"] = dict(specs if dataset_specs is None else dataset_specs)
            accepted = dataset_options(get_dataset_class(cfg.data.dataset))
            if not check_files and (accepted is None or "check_files" in accepted):
                options["check_files"] = False
            return create_dataset(cfg.data.dataset, str(root), split or cfg.data.val_split,
                                  modalities, **options)
        for m in [*modalities, LABEL]:
            if (root / m).is_dir():
                files[m] = source_files(InputSource(m, str(root / m)))
    given: set[str] = set()
    channels: dict[str, tuple[int, ...]] = {}
    for s in named:
        if s.modality not in (*modalities, LABEL):
            raise DataError(f"input '{s.modality}={s.path}': the model has no modality "
                            f"'{s.modality}' (modalities: {', '.join(modalities)}; or label)",
                            modality=s.modality)
        if s.modality in given:
            raise DataError(f"modality '{s.modality}' given twice among the inputs",
                            modality=s.modality)
        given.add(s.modality)
        files[s.modality] = source_files(s)
        if s.channels is not None:
            channels[s.modality] = s.channels
    order = [m for m in [*modalities, LABEL] if m in files]
    return FileInput({m: files[m] for m in order}, specs, channels)


# ----------------------------------------------------------------------------- inference
def inference_settings(cfg: Config, size: Sequence[int], max_pixels: int | None = None,
                       fixed_size: Sequence[int] | None = None) -> dict[str, Any]:
    """Keyword arguments of :func:`~fusionseg.engine.inference.predict_logits` for an input of
    ``size = (H, W)``.

    ``eval.mode: slide`` in the config: its window and stride, always. Otherwise whole-image
    inference, unless ``H * W`` exceeds ``max_pixels`` (default: 4 x the training crop area
    ``data.crop_size``): then sliding windows of the crop size with a stride of 2/3 of it
    (rounded), so memory stays at the training crop's. Scales, flip and window batch come
    from ``cfg.eval``.

    ``fixed_size = (h, w)``: the model takes that input size only (an ONNX file exported at
    a fixed size, ``OnnxModel.input_size``): any other size runs sliding windows of it (stride
    2/3), smaller images padded; this takes precedence over the rules above.

    Raises:
        ConfigError: ``max_pixels < 1``.
    """
    e = cfg.eval
    out: dict[str, Any] = inference_kwargs(e)
    if fixed_size is not None:
        fh, fw = (int(v) for v in fixed_size)
        if tuple(size) == (fh, fw) and list(e.scales) == [1.0]:
            return {**out, "mode": "whole"}
        return {**out, "mode": "slide", "window": (fh, fw),
                "stride": (max(1, round(2 * fh / 3)), max(1, round(2 * fw / 3)))}
    if e.mode == "slide":
        return out
    ch, cw = cfg.data.crop_size
    budget = 4 * ch * cw if max_pixels is None else int(max_pixels)
    if budget < 1:
        raise ConfigError(f"max_pixels must be >= 1, got {max_pixels}")
    h, w = size
    if h * w > budget:
        out.update(mode="slide", window=(ch, cw),
                   stride=(max(1, round(2 * ch / 3)), max(1, round(2 * cw / 3))))
    return out


def _overlay_base(sample: dict, modalities: Sequence[str], specs: Mapping[str, Any]
                  ) -> np.ndarray:
    """The image an overlay is drawn on: RGB in its own colours, else the first modality."""
    if "rgb" in sample and "rgb" in specs:
        x = specs["rgb"].denormalize_tensor(sample["rgb"].float()).clamp(0, 1)
        return np.rint(x[:3].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    first = next(m for m in modalities if m in sample)
    return modality_image(sample[first], first)


# ----------------------------------------------------------------------------- outputs
OnError = Literal["skip", "stop"]
ON_ERROR_CHOICES: tuple[str, ...] = ("skip", "stop")
FAILURES_FILE = "failed.txt"
SENSORS_FILE = "sensors.csv"
DEAD_LINES_SHOWN = 20  # summary lines naming frames with dead sensors, the rest counted


@dataclass(frozen=True)
class SampleOutputs:
    """The files a run writes for one sample (:func:`sample_outputs`).

    Attributes:
        mask: ``out/masks/{name}.png``.
        panel: ``out/panels/{name}.png``.
        overlay: ``out/overlays/{name}.png``, or ``None`` when overlays are not written.
    """

    mask: Path
    panel: Path
    overlay: Path | None = None

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file of the sample, in the order they are written."""
        return (self.mask, self.panel) + (() if self.overlay is None else (self.overlay,))

    @property
    def frame(self) -> Path:
        """The sample's video frame: the overlay when overlays are written, else the panel."""
        return self.panel if self.overlay is None else self.overlay

    def exist(self) -> bool:
        """Whether every file of the sample is there (each is written atomically, so a file
        that exists is complete)."""
        return all(p.is_file() for p in self.paths)


def output_name(sample_id: Any) -> str:
    """The file stem of a sample's outputs: its id with ``/`` replaced by ``_``."""
    return str(sample_id).replace("/", "_")


def sample_outputs(out_dir: str | Path, name: str, overlay: bool = False) -> SampleOutputs:
    """The output files of sample ``name`` (:func:`output_name`) under ``out_dir``."""
    out_dir = Path(out_dir)
    return SampleOutputs(mask=out_dir / "masks" / f"{name}.png",
                         panel=out_dir / "panels" / f"{name}.png",
                         overlay=out_dir / "overlays" / f"{name}.png" if overlay else None)


@dataclass(frozen=True)
class FailedSample:
    """A sample skipped because its input files could not be used.

    Attributes:
        id: the sample's output name (:func:`output_name`; ``#{index}`` when the input cannot
            tell the id without reading the files).
        error: the :class:`DataError` message on one line (it names the file and modality).
    """

    id: str
    error: str


@dataclass(frozen=True)
class DeadSensors:
    """A frame predicted without some of its modalities because their sensors were dead.

    Attributes:
        id: the sample's output name (:func:`output_name`).
        dead: modality -> health status (``"zero"``, ``"frozen"``...; :mod:`fusionseg.health`).
        used: the modalities the model ran on, in the model's order.
    """

    id: str
    dead: dict[str, str]
    used: tuple[str, ...]

    def line(self) -> str:
        """``"dead sensors {id}: depth frozen, thermal zero; ran on rgb"``."""
        dead = ", ".join(f"{m} {s}" for m, s in self.dead.items())
        return f"dead sensors {self.id}: {dead}; ran on {', '.join(self.used)}"


@dataclass
class PredictionSummary:
    """What a :func:`predict` run did with each of its ``total`` samples.

    Attributes:
        out_dir: the output folder.
        total: the samples of the run (after ``max_samples``).
        written: output names of the samples predicted and written by this run.
        skipped_existing: output names skipped because all their outputs existed
            (``skip_existing``).
        failed: the samples skipped because of a data problem (``on_error="skip"``), a
            frame whose every modality is dead among them.
        dead: the frames predicted without some dead modality (sensor health), in run order.
        sensors: ``out/sensors.csv`` when sensor health ran, else ``None``.
        video: the video written, or ``None``.
    """

    out_dir: Path
    total: int = 0
    written: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    failed: list[FailedSample] = field(default_factory=list)
    dead: list[DeadSensors] = field(default_factory=list)
    sensors: Path | None = None
    video: Path | None = None

    @property
    def failures_file(self) -> Path | None:
        """``out/failed.txt`` (one ``{id}<TAB>{error}`` line per failure) when any failed."""
        return self.out_dir / FAILURES_FILE if self.failed else None

    @property
    def done(self) -> list[str]:
        """Output names of the samples whose outputs are all on disk, sorted."""
        return sorted([*self.written, *self.skipped_existing])

    def lines(self) -> list[str]:
        """The summary as text lines: the counts, one line per frame run without a dead
        sensor (the first :data:`DEAD_LINES_SHOWN`, then a count), one per failed sample."""
        head = (f"{self.total} sample(s): {len(self.written)} written, "
                f"{len(self.skipped_existing)} skipped (outputs existed), "
                f"{len(self.failed)} failed; outputs in {self.out_dir}")
        if self.video is not None:
            head += f", video {self.video}"
        dead = [d.line() for d in self.dead[:DEAD_LINES_SHOWN]]
        if len(self.dead) > DEAD_LINES_SHOWN:
            dead.append(f"dead sensors in {len(self.dead) - DEAD_LINES_SHOWN} more frame(s); "
                        f"see {self.sensors}")
        return [head] + dead + [f"failed {f.id}: {f.error}" for f in self.failed]


class PredictionIncomplete(DataError):
    """Raised at the end of an ``on_error="skip"`` run in which some samples failed, after
    every other output (and the video) is written. ``summary`` is the run's
    :class:`PredictionSummary`; the message is one line naming the failed samples."""

    def __init__(self, summary: PredictionSummary):
        self.summary = summary
        ids = [f.id for f in summary.failed]
        super().__init__(
            f"{len(ids)} of {summary.total} sample(s) failed on their input files and were "
            f"skipped: {_some(ids)}; the other {len(summary.done)} have their outputs; the "
            f"reasons are in {summary.failures_file}; fix those files and re-run with "
            "--skip-existing to predict only what is missing")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _record_failure(summary: PredictionSummary, failure: FailedSample) -> None:
    """Add ``failure`` to the summary and append it to ``out/failed.txt`` right away, so an
    interrupted run keeps the failures found so far."""
    summary.failed.append(failure)
    path = summary.out_dir / FAILURES_FILE
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{failure.id}\t{failure.error}\n")


class _DeadSensorsError(DataError):
    """A frame refused by sensor health (every modality dead, or a dead one the model needs);
    unlike a file that cannot be read, it leaves the frozen check's previous frame known."""


class _SensorMonitor:
    """Sensor health of one run: checks each frame's modalities on their arrays as read
    from the files named in ``meta["paths"]`` (read a second time: the samples hold scaled
    tensors only), remembers the previous frame per modality (``frozen``), writes
    ``out/sensors.csv`` (one row per checked frame, appended as the run goes) and drops the
    dead modalities.

    Args:
        health: the thresholds.
        modalities: the model's modalities (the CSV columns).
        specs: modality -> spec the files are read with (``npz_key``, ``file_channels``).
        out_dir: the output folder.
        required: modalities the model cannot run without (an ONNX export's inputs), or
            ``None`` (a torch model runs on any non-empty subset).
        carry_over: keep the rows of an earlier ``sensors.csv`` for the samples that
            ``skip_existing`` skips.
    """

    def __init__(self, health: SensorHealth, modalities: Sequence[str],
                 specs: Mapping[str, ModalitySpec], out_dir: Path,
                 required: Sequence[str] | None, carry_over: bool) -> None:
        self.health = health
        self.modalities = list(modalities)
        self.specs = specs
        self.required = None if required is None else list(required)
        self.path = out_dir / SENSORS_FILE
        self.previous: dict[str, np.ndarray] = {}
        self.previous_paths: Mapping[str, Any] | None = None  # of a skipped previous frame
        header = ["id", *self.modalities]
        self.old_rows: dict[str, list[str]] = {}
        if carry_over and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            if rows and rows[0] == header:
                self.old_rows = {r[0]: r for r in rows[1:] if len(r) == len(header)}
        self._append(header, mode="w")

    def _append(self, row: Sequence[str], mode: str = "a") -> None:
        with open(self.path, mode, newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(row)

    def forget(self) -> None:
        """The next frame's predecessor is unknown (a sample that failed to read)."""
        self.previous.clear()
        self.previous_paths = None

    def skipped(self, name: str, paths: Mapping[str, Any] | None) -> None:
        """Sample ``name`` was skipped (outputs existed): keep its earlier row, if any; its
        files ``paths`` (modality -> file, when known) are read only if the next frame is
        checked (its ``frozen`` predecessor)."""
        self.forget()
        self.previous_paths = paths
        if name in self.old_rows:
            self._append(self.old_rows[name])

    def _previous(self, m: str) -> np.ndarray | None:
        if m in self.previous or not self.previous_paths or m not in self.previous_paths:
            return self.previous.get(m)
        try:  # the previous frame was skipped: read its file now
            return self._raw({"meta": {"paths": self.previous_paths}}, m)
        except DataError:
            return None

    def _raw(self, sample: dict, m: str) -> np.ndarray | None:
        """Modality ``m`` as read from its file (``meta["paths"][m]``), ``file_channels``
        selected; ``None`` when the sample names no file for it."""
        spec = self.specs.get(m)
        path = sample["meta"].get("paths", {}).get(m)
        if path is None or spec is None:
            return None
        array = read_image(path, modality=m, key=spec.npz_key)
        channels = spec.file_channels
        if channels is not None and all(i < array.shape[2] for i in channels):
            array = array[:, :, list(channels)]
        return array

    def check(self, sample: dict, name: str) -> tuple[dict, DeadSensors | None]:
        """Check the sample's modalities, write its CSV row; returns the sample without its
        dead modalities (:func:`~fusionseg.data.sample.drop_modalities`, as if never given)
        and what was dropped (``None``: all healthy).

        Raises:
            DataError: every given modality is dead, or a dead one is an input the model
                cannot run without (an ONNX export); naming the first dead file and modality.
        """
        paths = sample["meta"].get("paths", {})
        statuses: dict[str, str] = {}
        for m in self.modalities:
            if m not in sample:
                statuses[m] = ABSENT
                self.previous.pop(m, None)
                continue
            array = self._raw(sample, m)
            if array is None:  # nothing to check against: trusted
                statuses[m] = OK
                self.previous.pop(m, None)
                continue
            statuses[m] = check_modality(array, self._previous(m), self.health,
                                         path=paths.get(m), modality=m)
            self.previous[m] = array
        self.previous_paths = None
        self._append([name, *(statuses[m] for m in self.modalities)])
        dead = {m: s for m, s in statuses.items() if s not in (OK, ABSENT)}
        if not dead:
            return sample, None
        used = tuple(m for m in self.modalities if statuses[m] == OK)
        first = next(iter(dead))
        desc = ", ".join(f"{m} {s}" for m, s in dead.items())
        if not used:
            raise _DeadSensorsError(
                f"every given modality is dead ({desc}): nothing to predict from (sensor "
                f"health; see {SENSORS_FILE}, --health off predicts anyway)",
                path=paths.get(first), modality=first)
        needed = [m for m in dead if self.required is not None and m in self.required]
        if needed:
            raise _DeadSensorsError(
                f"dead sensor(s) {desc}, and this ONNX model was exported for "
                f"{', '.join(self.required or [])} and cannot run without '{needed[0]}'; "
                "predict with --ckpt, export without it (fusionseg export --modalities ...), "
                "or --health off", path=paths.get(needed[0]), modality=needed[0])
        return drop_modalities(sample, used), DeadSensors(name, dead, used)


def _save_png(path: Path, image: np.ndarray) -> None:
    """Write an ``[H, W, 3]`` uint8 image as PNG, atomically (no truncated file on a kill)."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


# ----------------------------------------------------------------------------- the run
@dataclass(frozen=True, eq=False)
class _Predictor:
    """The model and what drawing its outputs needs, fixed for one run.

    Attributes:
        model: a ``torch.nn.Module`` or an ``OnnxModel`` (batch dict -> logits [B, K, H, W]).
        cfg: the run config.
        specs: the dataset's modality specs (to show RGB in its own colours on overlays).
        classes: class names or ``None``.
        palette: ``[K, 3]`` uint8 colours.
        num_classes: label values must be below it (or 255, ignore).
        precision: the autocast precision for a torch model.
        max_pixels: see :func:`inference_settings`.
    """

    model: Any
    cfg: Config
    specs: Mapping[str, Any]
    classes: list[str] | None
    palette: np.ndarray
    num_classes: int
    precision: str
    max_pixels: int | None

    @property
    def modalities(self) -> list[str]:
        return list(self.cfg.model.modalities)

    def classify(self, sample: dict) -> torch.Tensor:
        """Class ids ``int64 [H, W]`` of one transformed sample."""
        batch = {m: sample[m][None] for m in self.modalities if m in sample}
        size = tuple(next(iter(batch.values())).shape[-2:])
        is_torch = isinstance(self.model, torch.nn.Module)
        fixed = None if is_torch else getattr(self.model, "input_size", None)
        settings = inference_settings(self.cfg, size, self.max_pixels, fixed_size=fixed)
        if is_torch:
            with autocast(self.precision, "cpu"):
                logits = predict_logits(self.model, batch, **settings)
        else:
            logits = predict_logits(self.model, batch, **settings)
        return logits.float().argmax(1)[0]

    def check_label(self, sample: dict, ignore_index: int = 255) -> None:
        """Raises DataError: a label value outside ``0..num_classes-1`` and ``ignore_index``
        (naming the label file)."""
        label = sample.get(LABEL)
        if label is None:
            return
        bad = (label != ignore_index) & ((label < 0) | (label >= self.num_classes))
        if bool(bad.any()):
            values = torch.unique(label[bad])[:10].tolist()
            raise DataError(f"label value(s) {values} outside the model's classes "
                            f"0..{self.num_classes - 1} (and ignore {ignore_index})",
                            path=sample["meta"].get("paths", {}).get(LABEL), modality=LABEL)

    def write(self, sample: dict, pred: torch.Tensor, outputs: SampleOutputs) -> None:
        """Write the mask, the panel and (when asked) the overlay of one sample, each
        atomically; the mask first, so a sample interrupted midway lacks a later file."""
        name = outputs.mask.stem
        mask_rgb = colorize(pred, self.palette)
        _save_png(outputs.mask, mask_rgb)
        cond = sample["meta"].get("condition")
        legend = class_legend(self.classes, self.palette, pred, sample.get(LABEL))
        save_panel(outputs.panel, sample_panel(sample, self.modalities, pred, self.palette),
                   title=name + (f" ({cond})" if cond else ""), legend=legend)
        if outputs.overlay is not None:
            base = _overlay_base(sample, self.modalities, self.specs)
            _save_png(outputs.overlay, overlay_mask(base, mask_rgb, 0.5))


def _known_id(ds: Any, index: int) -> str | None:
    """The id of sample ``index`` without reading its files, when the input can tell."""
    if isinstance(ds, FileInput):
        return ds.stems[index]
    records = getattr(ds, "records", None)
    return None if records is None else str(records[index].id)


def _known_paths(ds: Any, index: int) -> dict[str, str] | None:
    """Modality -> file of sample ``index`` without reading them, when the input can tell."""
    if isinstance(ds, FileInput):
        stem = ds.stems[index]
        return {m: str(ds.files[m][stem]) for m in ds.modalities}
    records = getattr(ds, "records", None)
    paths = None if records is None else getattr(records[index], "paths", None)
    return None if paths is None else {m: str(p) for m, p in paths.items()}


def _read_sample(ds: Any, index: int, predictor: _Predictor) -> dict:
    """Sample ``index`` read and transformed, its label checked.

    Raises:
        DataError: the sample's files cannot be used (unreadable, corrupt, wrong bit depth
            or channels, sizes that differ, label values out of range).
    """
    sample = ds[index]
    predictor.check_label(sample)
    return sample


def _predict_samples(ds: Any, n: int, predictor: _Predictor, out_dir: Path, *,
                     overlay: bool, on_error: str, skip_existing: bool,
                     monitor: _SensorMonitor | None = None) -> PredictionSummary:
    """Predict samples ``0..n-1`` of ``ds`` and write their outputs (see :func:`predict`);
    ``monitor``: sensor health checks.

    Raises:
        DataError: with ``on_error="stop"``, the first sample whose files cannot be used (or
            whose every modality is dead).
    """
    summary = PredictionSummary(out_dir=out_dir, total=n,
                                sensors=None if monitor is None else monitor.path)
    for index in range(n):
        known = _known_id(ds, index)
        if (skip_existing and known is not None
                and sample_outputs(out_dir, output_name(known), overlay).exist()):
            summary.skipped_existing.append(output_name(known))
            if monitor is not None:
                monitor.skipped(output_name(known), _known_paths(ds, index))
            continue
        name = output_name(known) if known is not None else f"#{index}"
        try:
            sample = _read_sample(ds, index, predictor)
            name = output_name(sample["meta"]["id"])
            outputs = sample_outputs(out_dir, name, overlay)
            if skip_existing and known is None and outputs.exist():
                summary.skipped_existing.append(name)
                if monitor is not None:
                    monitor.skipped(name, sample["meta"].get("paths"))
                continue
            if monitor is not None:
                sample, dead = monitor.check(sample, name)
                if dead is not None:
                    summary.dead.append(dead)
        except DataError as err:
            if on_error == "stop":
                raise
            if monitor is not None and not isinstance(err, _DeadSensorsError):
                monitor.forget()  # a frame not read: the next one's predecessor is unknown
            _record_failure(summary, FailedSample(name, _one_line(str(err))))
            continue
        predictor.write(sample, predictor.classify(sample), outputs)
        summary.written.append(name)
    return summary


def predict(ckpt: str | Path | None, inputs: str | Path | Sequence[str | Path],
            out_dir: str | Path, config: str | Path | None = None, split: str | None = None,
            max_samples: int | None = None, *, onnx: str | Path | None = None,
            spec_overrides: Mapping[str, Mapping[str, Any]] | None = None,
            overlay: bool = False, video: str | Path | None = None, fps: float = 2.0,
            max_pixels: int | None = None, on_error: OnError = "skip",
            skip_existing: bool = False,
            health: SensorHealth | Mapping[str, Any] | bool | None = True
            ) -> PredictionSummary:
    """Predict every sample of ``inputs`` and write masks, panels (and overlays, a video).

    Long runs: a sample whose files cannot be used (a :class:`DataError`: unreadable or
    corrupt, wrong bit depth or channels, modalities of different sizes, label values out of
    range) is skipped with ``on_error="skip"`` (the default) and appended to
    ``out/failed.txt`` as ``{id}<TAB>{error}``; every other sample is written, and the run
    then raises :class:`PredictionIncomplete` (a DataError, one line; ``.summary``). With
    ``on_error="stop"`` the first such sample stops the run with its DataError. Any other
    exception is a bug and stops the run in both modes. Every output is written atomically
    (temporary file + rename), so ``skip_existing`` can trust any output file it finds.

    Args:
        ckpt: checkpoint (``--ckpt``); ``None`` with ``onnx``.
        inputs: one or more inputs (``--input``, repeatable): a dataset root, a
            ``DIR/{modality}/*`` folder, or ``MODALITY=DIR|GLOB|FILE[:I,J]`` (0-based channel
            indices); see the module docstring.
        out_dir: output folder (``--out``).
        config: config replacing the stored one (``--config``).
        split: split of a dataset root (``--split``; default ``data.val_split``).
        max_samples: at most this many samples (``--max-samples``).
        onnx: an exported ONNX model instead of ``ckpt`` (``--onnx``).
        spec_overrides: ``{modality: {field: value}}`` replacing fields of the training specs
            (``--spec depth.bit_depth=8``, parsed by :func:`parse_spec_overrides`).
        overlay: also write ``out/overlays/{id}.png``, the mask blended on RGB at alpha 0.5
            (``--overlay``).
        video: ``*.gif`` or ``*.mp4`` of the frames sorted by id: the overlays with
            ``overlay``, else the panels (``--video``); MP4 needs PyAV or imageio-ffmpeg. Built
            at the end from the frame files on disk, so it also holds the samples that
            ``skip_existing`` skipped; failed samples have no frame.
        fps: video frame rate (``--fps``).
        max_pixels: input pixels above which sliding-window inference runs (``--max-pixels``;
            default 4 x the training crop area; see :func:`inference_settings`).
        on_error: ``"skip"`` or ``"stop"`` (``--on-error``), see above.
        skip_existing: skip a sample whose outputs (mask, panel, and overlay with
            ``overlay``) all exist, e.g. to continue an interrupted run (``--skip-existing``).
        health: sensor health checks (``--health``): ``True`` (default) with the default
            thresholds, a :class:`~fusionseg.health.SensorHealth` or a mapping of thresholds,
            ``None`` / ``False`` off. Each frame's modalities are checked as read from the
            file (:func:`fusionseg.health.check_modality`; ``frozen`` against the previous
            frame in the run's order); a dead one is dropped from the sample as if not given,
            ``out/sensors.csv`` gets a row ``id,<status per model modality>`` (``ok``, the
            reason, or ``absent``), the summary a ``dead sensors`` line per frame
            (``summary.dead``), and a frame with every modality dead (or, for an ONNX model,
            a dead exported input) fails like a bad file. Off: no checks, no sensors.csv.

    Returns:
        The :class:`PredictionSummary` (counts, names written / skipped, the video).

    Raises:
        PredictionIncomplete: ``on_error="skip"`` and some samples failed (raised last).
        DataError: ``on_error="stop"`` and a sample's files cannot be used; and, in both
            modes, input forms, stems and specs that do not fit (see :func:`open_inputs`,
            :class:`FileInput`), raised before any prediction.
        ConfigError: a bad ``on_error``, ``fps``, ``max_pixels``, ``health`` or video path, a
            missing MP4 writer (all raised before any prediction); no config stored and none
            given.
        CheckpointError: the checkpoint is missing, unsafe or does not fit the model.
    """
    from .data.transforms import build_eval_transforms

    out_dir = Path(out_dir)
    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, "
                          f"got {on_error!r}")
    if video is not None:
        video = check_video_path(video)
        if fps <= 0:
            raise ConfigError(f"video fps must be > 0, got {fps}")
    thresholds = resolve_health(health)
    model, meta, cfg = load_predictor(ckpt=ckpt, onnx=onnx, config=config)
    modalities = list(cfg.model.modalities)
    specs = training_specs(meta, cfg, spec_overrides)
    dataset_specs: dict[str, Any] | None = None
    if stored_specs(meta) is None:  # an old checkpoint: a dataset root reads its own specs
        dataset_specs = {m: {**dict((cfg.data.options.get("specs") or {}).get(m) or {}),
                             **dict((spec_overrides or {}).get(m) or {})}
                         for m in modalities}
    # skipping: a broken file of a dataset root fails its sample alone, not the whole run
    ds = open_inputs(inputs, cfg, specs, split=split, dataset_specs=dataset_specs,
                     check_files=on_error == "stop")
    ds.transform = build_eval_transforms(
        ds.specs, size=cfg.data.eval_size, pre_size=cfg.data.eval_pre_size,
        label_interpolation=cfg.data.eval_label_interpolation)  # no eval_crop: whole masks
    classes = meta.get("fusionseg_classes") or list(getattr(ds, "classes", []) or []) or None
    num_classes = cfg.model.num_classes or (len(classes) if classes else None)
    palette = meta.get("fusionseg_palette")
    if palette is None:
        palette = getattr(ds, "palette", None)
    if palette is None or len(palette) == 0:
        palette = default_palette(num_classes or 256)
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    predictor = _Predictor(model=model, cfg=cfg, specs=ds.specs, classes=classes,
                           palette=palette, num_classes=num_classes or len(palette),
                           precision=resolve_precision(cfg.train.precision, "cpu", strict=False),
                           max_pixels=max_pixels)
    n = len(ds) if max_samples is None else min(len(ds), max_samples)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FAILURES_FILE).unlink(missing_ok=True)  # the failures of this run only
    monitor = None
    if thresholds is None:
        (out_dir / SENSORS_FILE).unlink(missing_ok=True)  # no stale sensor rows
    else:
        required = None if isinstance(model, torch.nn.Module) else list(
            getattr(model, "modalities", modalities))
        monitor = _SensorMonitor(thresholds, modalities, ds.specs, out_dir, required,
                                 carry_over=skip_existing)
    summary = _predict_samples(ds, n, predictor, out_dir, overlay=overlay, on_error=on_error,
                               skip_existing=skip_existing, monitor=monitor)
    if video is not None and summary.done:
        frames = (sample_outputs(out_dir, name, overlay).frame for name in summary.done)
        summary.video = save_video(frames, video, fps=fps)
    if summary.failed:
        raise PredictionIncomplete(summary)
    return summary
