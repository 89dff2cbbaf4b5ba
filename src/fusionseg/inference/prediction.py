"""Prediction: run a trained model on input files and write masks, panels, overlays, a video.

:func:`predict` is ``fusionseg predict`` (``docs/predict.md``): the model comes from a
checkpoint or an ONNX export (:mod:`fusionseg.inference.loading`), the inputs from a dataset
root, a ``DIR/{modality}`` folder or per-modality files (:mod:`fusionseg.inference.inputs`),
read with the training run's modality specs (:mod:`fusionseg.inference.specs`).

Outputs, per sample ``{id}`` (:mod:`fusionseg.inference.outputs`): ``out/masks/{id}.png``
(colorized prediction), ``out/panels/{id}.png`` (each modality, the label when present, the
prediction, a legend of the classes present), with ``overlay`` ``out/overlays/{id}.png`` (the
colour mask blended on the RGB image at alpha 0.5; without RGB on the first present
modality's visualisation), with ``video`` an animated GIF (or MP4) of the overlays (panels
without ``overlay``), sorted by id.

Long runs: every output is written atomically; a sample whose files cannot be used is
skipped and listed in ``out/failed.txt`` (``on_error="skip"``; the run raises
:class:`~fusionseg.inference.outputs.PredictionIncomplete` at the end), and ``skip_existing``
continues an interrupted run without redoing the samples whose outputs all exist.

Large images run sliding-window inference automatically (:func:`inference_settings`).

Sensor health (``health``, on by default): each frame's modalities are checked as read from
the file (:mod:`fusionseg.inference.health`: NaN/inf, saturated, all zero, constant, frozen =
identical to the previous frame in the run's order); a dead modality is dropped from the
sample exactly as a modality that was not given, ``out/sensors.csv`` says per frame which
sensors were used, and a frame whose every modality is dead is a failed sample
(:mod:`fusionseg.inference.sensors`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..data.io import DataError
from ..errors import ConfigError
from ..models.inference_modes import inference_kwargs, predict_logits
from ..runtime import autocast, inference_precision
from ..viz import (
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
from .health import SensorHealth, resolve_health
from .inputs import LABEL, FileInput, open_inputs
from .loading import load_predictor
from .outputs import (
    FAILURES_FILE,
    ON_ERROR_CHOICES,
    FailedSample,
    OnError,
    PredictionIncomplete,
    PredictionSummary,
    SampleOutputs,
    one_line,
    output_name,
    record_failure,
    sample_outputs,
    save_png,
)
from .sensors import SENSORS_FILE, DeadSensorsError, SensorMonitor
from .specs import stored_specs, training_specs

__all__ = ["inference_settings", "model_precision", "predict", "prediction_palette"]


def inference_settings(cfg: Config, size: Sequence[int], max_pixels: int | None = None,
                       fixed_size: Sequence[int] | None = None) -> dict[str, Any]:
    """Keyword arguments of :func:`~fusionseg.models.inference_modes.predict_logits` for an
    input of ``size = (H, W)``.

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
        save_png(outputs.mask, mask_rgb)
        cond = sample["meta"].get("condition")
        legend = class_legend(self.classes, self.palette, pred, sample.get(LABEL))
        save_panel(outputs.panel, sample_panel(sample, self.modalities, pred, self.palette),
                   title=name + (f" ({cond})" if cond else ""), legend=legend)
        if outputs.overlay is not None:
            base = _overlay_base(sample, self.modalities, self.specs)
            save_png(outputs.overlay, overlay_mask(base, mask_rgb, 0.5))


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
                     monitor: SensorMonitor | None = None) -> PredictionSummary:
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
            if monitor is not None and not isinstance(err, DeadSensorsError):
                monitor.forget()  # a frame not read: the next one's predecessor is unknown
            record_failure(summary, FailedSample(name, one_line(str(err))))
            continue
        predictor.write(sample, predictor.classify(sample), outputs)
        summary.written.append(name)
    return summary


def prediction_palette(meta: Mapping[str, Any], num_classes: int | None,
                       dataset: Any = None) -> np.ndarray:
    """The ``[K, 3]`` uint8 class colours of a prediction run: the checkpoint's
    (``fusionseg_palette``), else the dataset's ``palette``, else
    :func:`~fusionseg.viz.default_palette` of ``num_classes`` (256 when unknown)."""
    palette = meta.get("fusionseg_palette")
    if palette is None:
        palette = getattr(dataset, "palette", None)
    if palette is None or len(palette) == 0:
        palette = default_palette(num_classes or 256)
    return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)


def model_precision(cfg: Config, meta: Mapping[str, Any]) -> str:
    """The autocast precision of a torch model on the CPU: ``train.precision`` of the config
    (``--config``, else the checkpoint's) unless ``auto``, else the checkpoint's training
    precision (``fusionseg_precision``) where this CPU runs it natively, else ``auto`` here
    (:func:`fusionseg.runtime.inference_precision`)."""
    stored = meta.get("fusionseg_precision")
    return inference_precision(cfg.train.precision, stored if isinstance(stored, str) else None,
                               "cpu")[0]


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
            (``--spec depth.bit_depth=8``, parsed by
            :func:`~fusionseg.inference.specs.parse_spec_overrides`).
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
            thresholds, a :class:`~fusionseg.inference.health.SensorHealth` or a mapping of
            thresholds, ``None`` / ``False`` off. Each frame's modalities are checked as read
            from the file (:func:`fusionseg.inference.health.check_modality`; ``frozen``
            against the previous frame in the run's order); a dead one is dropped from the
            sample as if not given, ``out/sensors.csv`` gets a row ``id,<status per model
            modality>`` (``ok``, the reason, or ``absent``), the summary a ``dead sensors``
            line per frame (``summary.dead``), and a frame with every modality dead (or, for
            an ONNX model, a dead exported input) fails like a bad file. Off: no checks, no
            sensors.csv.

    Returns:
        The :class:`PredictionSummary` (counts, names written / skipped, the video).

    Raises:
        PredictionIncomplete: ``on_error="skip"`` and some samples failed (raised last).
        DataError: ``on_error="stop"`` and a sample's files cannot be used; and, in both
            modes, input forms, stems and specs that do not fit (see
            :func:`~fusionseg.inference.inputs.open_inputs`,
            :class:`~fusionseg.inference.inputs.FileInput`), raised before any prediction.
        ConfigError: a bad ``on_error``, ``fps``, ``max_pixels``, ``health`` or video path, a
            missing MP4 writer (all raised before any prediction); no config stored and none
            given.
        CheckpointError: the checkpoint is missing, unsafe or does not fit the model.
    """
    from ..data.transforms import build_eval_transforms

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
    palette = prediction_palette(meta, num_classes, ds)
    predictor = _Predictor(model=model, cfg=cfg, specs=ds.specs, classes=classes,
                           palette=palette, num_classes=num_classes or len(palette),
                           precision=model_precision(cfg, meta),
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
        monitor = SensorMonitor(thresholds, modalities, ds.specs, out_dir, required,
                                carry_over=skip_existing)
    summary = _predict_samples(ds, n, predictor, out_dir, overlay=overlay, on_error=on_error,
                               skip_existing=skip_existing, monitor=monitor)
    if video is not None and summary.done:
        frames = (sample_outputs(out_dir, name, overlay).frame for name in summary.done)
        summary.video = save_video(frames, video, fps=fps)
    if summary.failed:
        raise PredictionIncomplete(summary)
    return summary
