"""An exported fusionseg model run by ONNX Runtime behind the segmentor's batch interface.

:class:`OnnxModel` opens a file written by :func:`fusionseg.inference.export.export_onnx`
and maps a batch dict (modality -> ``[B, C, H, W]``) to logits ``[B, K, H, W]`` like a
PyTorch segmentor, so it drops into :func:`fusionseg.models.inference_modes.predict_logits`
(whole image, sliding window, multi-scale, flip) in place of the PyTorch model.
``onnxruntime`` is imported when a session is opened, not with this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError, DataError, RunError

__all__ = ["OnnxModel", "first_line", "ort_session"]


def ort_session(model_bytes: bytes | str, threads: int | None, log_level: int = 3):
    """An ONNX Runtime CPU session of ``model_bytes`` (the model, or the path of its file) with
    ``threads`` intra-op threads (``None``: ``torch.get_num_threads()``), one inter-op thread,
    and ONNX Runtime's own log at ``log_level`` and above (3: errors, 4: fatal only)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.log_severity_level = log_level
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, cut at 300 characters (for one-line notes)."""
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= 300 else line[:297] + "..."


class OnnxModel:
    """An exported fusionseg model run by ONNX Runtime behind the segmentor's batch interface.

    ``model(batch) -> logits``: ``batch`` maps modality names to float tensors ``[B, C, H, W]``
    (normalised as in training); every exported modality must be present, other keys
    (``label``, ``meta``, modalities that were not exported) are ignored, and a ``present``
    entry (``bool[B, M]``, columns in the original model's modality order) must be true for
    the exported modalities. Returns float32 logits ``[B, K, H, W]`` on the CPU. A 1-channel
    tensor for a 3-channel input is repeated to 3 channels, as the PyTorch segmentor does. A
    file exported with a fixed batch of 1 runs a larger batch sample by sample; one exported
    at a fixed size takes that size only (use sliding-window inference with the window equal
    to :attr:`input_size`).

    ``eval()`` and ``to()`` return the model itself, so it drops into code written for an
    ``nn.Module`` (e.g. :func:`fusionseg.models.inference_modes.predict_logits`).

    Args:
        path: ONNX file written by :func:`fusionseg.inference.export.export_onnx`.
        threads: ONNX Runtime intra-op threads (``None``: ``torch.get_num_threads()``).

    Attributes:
        meta: the file's ``fusionseg_*`` metadata parsed back (the checkpoint's keys
            ``fusionseg_config``, ``fusionseg_classes``, ``fusionseg_palette``,
            ``fusionseg_specs`` where exported, plus ``fusionseg_modalities`` and
            ``fusionseg_export``).
        modalities: the exported modalities (the inputs), in order.
        input_size: ``(H, W)`` of a fixed-size export, ``None`` when the size is dynamic.
        fixed_batch: the batch size of a fixed-batch export, ``None`` when dynamic.
        num_classes: ``K`` (``None`` if the file does not say).

    Raises:
        CheckpointError: no file at ``path``; the file has no ``logits`` output.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: ONNX file not found")
        self.path = path
        self.session = ort_session(str(path), threads)
        custom = self.session.get_modelmeta().custom_metadata_map
        self.meta: dict[str, Any] = {k: json.loads(v) for k, v in custom.items()
                                     if k.startswith("fusionseg_")}
        inputs = self.session.get_inputs()
        self.modalities: list[str] = [i.name for i in inputs]
        self._channels = {i.name: i.shape[1] for i in inputs}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if "logits" not in outputs:
            raise CheckpointError(f"{path}: no 'logits' output (outputs: {sorted(outputs)})")
        shape = inputs[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        hw = shape[2:]
        self.input_size = tuple(hw) if all(isinstance(s, int) for s in hw) else None
        k = outputs["logits"].shape[1]
        self.num_classes = k if isinstance(k, int) else None
        export = self.meta.get("fusionseg_export", {})
        self._model_modalities = list(export.get("model_modalities") or self.modalities)

    def eval(self) -> OnnxModel:
        """No-op (inference only); returns ``self``."""
        return self

    def to(self, *args, **kwargs) -> OnnxModel:
        """No-op (ONNX Runtime on the CPU); returns ``self``."""
        return self

    def _inputs(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(batch, Mapping):
            raise DataError(f"a batch must be a dict of modality tensors, got "
                             f"{type(batch).__name__}")
        feeds: dict[str, np.ndarray] = {}
        ref: tuple[str, tuple[int, int, int]] | None = None
        for m in self.modalities:
            if m not in batch:
                raise DataError(f"modality {m!r} is missing from the batch; this ONNX model "
                                 f"was exported for {self.modalities} (export again with a "
                                 f"subset of modalities to run without it)")
            x = batch[m]
            if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise DataError(f"modality {m!r}: expected a float tensor [B, C, H, W], got "
                                 f"{shape}")
            c_in, c = self._channels[m], x.shape[1]
            if c != c_in:
                if c == 1 and c_in == 3:
                    x = x.expand(-1, 3, -1, -1)
                else:
                    raise DataError(f"modality {m!r} has {c} channels; the ONNX model takes "
                                     f"{c_in}")
            b, _, h, w = x.shape
            if ref is None:
                ref = (m, (b, h, w))
            elif (b, h, w) != ref[1]:
                raise DataError(f"modality {m!r} has batch/size {(b, h, w)} but {ref[0]!r} "
                                 f"has {ref[1]}; modalities must be pixel-aligned")
            feeds[m] = np.ascontiguousarray(x.detach().float().cpu().numpy())
        assert ref is not None
        b, h, w = ref[1]
        if self.input_size is not None and (h, w) != self.input_size:
            ih, iw = self.input_size
            raise DataError(f"this ONNX model was exported at the fixed size {ih}x{iw}, got "
                             f"{h}x{w}; resize the input or use sliding-window inference "
                             f"(eval.mode=slide, eval.window=[{ih}, {iw}])")
        present = batch.get("present")
        if present is not None:
            present = torch.as_tensor(present).to(torch.bool)
            if present.ndim != 2 or present.shape[1] != len(self._model_modalities):
                raise DataError(f"batch['present'] must be bool[B, "
                                 f"{len(self._model_modalities)}] with columns "
                                 f"{self._model_modalities}, got {tuple(present.shape)}")
            for m in self.modalities:
                gone = (~present[:, self._model_modalities.index(m)]).nonzero().flatten()
                if gone.numel():
                    raise DataError(f"modality {m!r} is flagged missing for sample(s) "
                                     f"{gone.tolist()}; an ONNX export has a fixed modality "
                                     f"set {self.modalities}")
        return feeds

    def __call__(self, batch: Mapping[str, Any]) -> Tensor:
        """Logits ``float32 [B, K, H, W]`` (CPU) of ``batch`` (see the class docstring).

        Raises:
            DataError: a modality of the export is missing, flagged missing in ``present``,
                not a float ``[B, C, H, W]`` tensor or has the wrong channel count (the
                message names it); modalities differ in batch or size; a fixed-size export
                gets another size.
            RunError: ONNX Runtime fails (e.g. a MiT map below the spatial-reduction
                kernel, inputs under ~29 px, whose padding branch the trace left out).
        """
        feeds = self._inputs(batch)
        b = next(iter(feeds.values())).shape[0]
        step = b if self.fixed_batch is None else self.fixed_batch
        if b % step:
            raise DataError(f"batch size {b} is not a multiple of the export's fixed batch "
                             f"{step}")
        try:
            outs = [self.session.run(["logits"], {m: v[i:i + step] for m, v in feeds.items()})[0]
                    for i in range(0, b, step)]
        except Exception as err:  # onnxruntime's own exception types
            h, w = next(iter(feeds.values())).shape[-2:]
            raise RunError(f"ONNX Runtime failed on batch {b} at {h}x{w} with {self!r} (an "
                               f"export is checked at its size and a second size only): "
                               f"{first_line(err)}") from err
        return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0]).float()

    forward = __call__

    def __repr__(self) -> str:
        size = "dynamic" if self.input_size is None else f"{self.input_size[0]}x" \
                                                          f"{self.input_size[1]}"
        return f"OnnxModel({str(self.path)!r}, modalities={self.modalities}, size={size})"
