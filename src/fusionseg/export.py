"""ONNX export of a fusionseg checkpoint and ONNX Runtime inference with the exported file.

:func:`export_onnx` turns a training checkpoint into an ONNX model for one fixed set of
modalities; :class:`OnnxModel` runs that file with ONNX Runtime behind the segmentor's batch
interface, so it drops into :func:`fusionseg.engine.inference.predict_logits` (whole image,
sliding window, multi-scale, flip) in place of the PyTorch model.

The ONNX graph::

    inputs   <modality>  float32 [B, C, H, W]   one per exported modality, in the model's
                                                modality order; normalised as in training
                                                (the checkpoint's ``fusionseg_specs``);
                                                C = the spec's ``out_channels`` (1 or 3)
    output   logits      float32 [B, K, H, W]   at the input size

    metadata_props (JSON strings)
        fusionseg_config     the run config           (checkpoint key of the same name)
        fusionseg_classes    class names              (idem, when the checkpoint has it)
        fusionseg_palette    [K, 3] colours           (idem)
        fusionseg_specs      modality specs           (idem; absent in old checkpoints)
        fusionseg_modalities the exported modalities, in input order
        fusionseg_export     {size, dynamic_batch, dynamic_size, exporter, opset, torch,
                              model_modalities, input_channels, notes}

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. With torch 2.13 the
``dynamo=True`` exporter (torch.export + onnxscript) exported only the SegFormer and sum-fusion
models of the registry (the presence-mask branches of the batch convention, ``torch.unique``
over presence patterns in AsymFusion and ``bool(mask.all())`` in the adapters, are
data-dependent guards for ``torch.export``) and took ~45 s per tiny model against ~1 s here.
Four operations the TorchScript exporter cannot translate are replaced, during the export
only, by equivalents (:func:`traceable_ops`): ``torch.block_diag`` (StitchFusion's batched
MultiAdapters), adaptive average pooling to sizes other than 1 (UperNet's pyramid pooling in
MoBaNet), tensor-valued ``scale_factor`` in ``F.interpolate`` (DINOv2's position-embedding
interpolation) and ``F.conv2d`` with a kernel computed in forward (FeatureCross's fused
depthwise kernel, whose shape the exporter does not infer).

Dynamic axes: the tracer records Python branches on shapes as taken at the traced size, so an
axis is only declared dynamic after the exported file reproduces PyTorch at a second batch
size and a second spatial size that is not a multiple of the model's ``input_multiple``; a
model that fails this falls back to a fixed size (and, failing again, a fixed batch of one),
and :class:`ExportReport` says why (``notes``). Models with padding to ``input_multiple``
are traced at a size that needs padding, so that the pad-and-crop path is in the graph.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CheckpointError, ConfigError, DataError, RunError
from .files import atomic_path

__all__ = [
    "DEFAULT_OPSET",
    "EXPORTER",
    "ExportReport",
    "OnnxExportError",
    "OnnxModel",
    "export_onnx",
    "traceable_ops",
]

#: ONNX opset of :func:`export_onnx` unless one is given (LayerNormalization is native from 17)
DEFAULT_OPSET = 17
#: opsets the TorchScript exporter of torch 2.13 writes that our models need (SDPA: >= 14)
_OPSETS = range(14, 21)
#: the exporter :func:`export_onnx` uses (``ExportReport.exporter``)
EXPORTER = "torchscript"
#: metadata keys copied from the checkpoint
_CKPT_KEYS = ("fusionseg_config", "fusionseg_classes", "fusionseg_palette", "fusionseg_specs")


class OnnxExportError(RunError):
    """The model could not be exported, or ONNX Runtime disagrees with PyTorch on the exported
    file beyond the tolerance (the message gives the largest absolute difference)."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        max_abs_diff: largest ``|logits_onnxruntime - logits_pytorch|`` over every comparison
            made (export size, and the second batch / spatial size of the dynamic-axis checks);
            ``None`` when none was made (``check=False`` with a static export).
        dynamic_batch: the batch axis is dynamic (else the file takes batch 1).
        dynamic_size: the spatial axes are dynamic (else the file takes ``size`` only).
        exporter: ``"torchscript"`` (see the module docstring).
        seconds: wall time of the export, checks included.
        modalities: the exported modalities (the ONNX inputs, in order).
        size: ``(H, W)`` the export was checked at (the fixed size when not ``dynamic_size``).
        opset: the ONNX opset.
        notes: why an axis fell back to static, one line per failed attempt.
    """

    path: Path
    max_abs_diff: float | None
    dynamic_batch: bool
    dynamic_size: bool
    exporter: str
    seconds: float
    modalities: list[str] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)
    opset: int = DEFAULT_OPSET
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- export-time ops
def _block_diag(*blocks: Tensor) -> Tensor:
    """``torch.block_diag`` from zero padding and concatenation (the TorchScript exporter has no
    ``aten::block_diag``). 0-d and 1-d blocks are taken as ``[1, 1]`` and ``[1, n]`` as
    ``torch.block_diag`` does. Exact: the result is bit-identical."""
    mats = [b.reshape(1, -1) if b.ndim < 2 else b for b in blocks]
    if any(m.ndim != 2 for m in mats):
        raise ValueError("block_diag takes 0-, 1- or 2-dimensional tensors")
    widths = [int(m.shape[1]) for m in mats]
    total, left, rows = sum(widths), 0, []
    dtype = functools.reduce(torch.promote_types, [m.dtype for m in mats])
    for m, w in zip(mats, widths, strict=True):
        rows.append(F.pad(m.to(dtype), (left, total - left - w)))
        left += w
    return torch.cat(rows, dim=0)


def _pool_matrix(n: int | Tensor, s: int, like: Tensor) -> Tensor:
    """``[s, n]`` averaging matrix of adaptive average pooling from ``n`` to ``s`` cells: row
    ``i`` averages input cells ``floor(i n / s) <= j < ceil((i + 1) n / s)`` (PyTorch's bins,
    ``aten/src/ATen/native/AdaptiveAveragePooling.cpp``, ``start_index`` / ``end_index``).
    Built from tensor ops, so a traced ``n`` stays symbolic in the ONNX graph."""
    i = torch.arange(s, device=like.device)
    start = torch.div(i * n, s, rounding_mode="floor")
    end = torch.div((i + 1) * n + s - 1, s, rounding_mode="floor")
    j = torch.arange(n, device=like.device)
    mask = ((j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])).to(like.dtype)
    return mask / mask.sum(dim=1, keepdim=True)


def _make_adaptive_avg_pool2d(original):
    def adaptive_avg_pool2d(x: Tensor, output_size) -> Tensor:
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if all(s == 1 for s in size) or x.ndim not in (3, 4):  # GlobalAveragePool: dynamic
            return original(x, output_size)
        h, w = x.shape[-2:]
        sh = h if size[0] is None else int(size[0])
        sw = w if size[1] is None else int(size[1])
        ph = _pool_matrix(h, sh, x) if size[0] is not None else None
        pw = _pool_matrix(w, sw, x) if size[1] is not None else None
        out = x if ph is None else torch.matmul(ph, x)
        return out if pw is None else torch.matmul(out, pw.t())

    return adaptive_avg_pool2d


def _make_interpolate(original):
    def interpolate(x: Tensor, size=None, scale_factor=None, *args, **kwargs) -> Tensor:
        if scale_factor is not None:
            seq = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,)
            seq = tuple(float(s) if isinstance(s, Tensor) else s for s in seq)
            scale_factor = seq if isinstance(scale_factor, (tuple, list)) else seq[0]
        return original(x, size, scale_factor, *args, **kwargs)

    return interpolate


def _make_conv2d(original):
    def conv2d(x: Tensor, weight: Tensor, *args, **kwargs) -> Tensor:
        if not isinstance(weight, nn.Parameter):  # a kernel computed in forward
            weight = weight.reshape([int(s) for s in weight.shape])
        return original(x, weight, *args, **kwargs)

    return conv2d


@contextlib.contextmanager
def traceable_ops() -> Iterator[None]:
    """Within the block, four functions are replaced by equivalents the TorchScript ONNX
    exporter translates; the originals come back on exit (also on errors).

    * ``torch.block_diag`` -> zero padding + concatenation (bit-identical);
    * ``F.adaptive_avg_pool2d`` to sizes other than 1 -> two matrix products with the
      averaging matrices of PyTorch's bins (equal up to float rounding; stays dynamic in the
      input size, where the exporter's own translation fixes the traced size or refuses sizes
      that do not divide the input);
    * ``F.interpolate`` with tensor-valued ``scale_factor`` (shapes are tensors while tracing)
      -> the same call with Python floats (the factor is then fixed at the traced size);
    * ``F.conv2d`` with a weight that is not a parameter (a kernel computed in forward) ->
      the same call on the weight reshaped to its own, now constant, shape (the exporter needs
      the kernel shape; the values are unchanged).

    The replacement is process-wide while the block runs; it is meant for an export, not for
    concurrent training in other threads.
    """
    saved = (torch.block_diag, F.adaptive_avg_pool2d, F.interpolate, F.conv2d)
    torch.block_diag = _block_diag
    F.adaptive_avg_pool2d = _make_adaptive_avg_pool2d(saved[1])
    F.interpolate = _make_interpolate(saved[2])
    F.conv2d = _make_conv2d(saved[3])
    try:
        yield
    finally:
        torch.block_diag, F.adaptive_avg_pool2d, F.interpolate, F.conv2d = saved


# --------------------------------------------------------------------------- wrapper
class _PositionalSegmentor(nn.Module):
    """``forward(*images) -> logits``: the exported modalities positionally, in ``names`` order,
    as the batch dict of the segmentor (base.py convention) with ``present`` true for them and
    false for the model's other modalities, whose keys are absent."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)
        cols = [m in self.names for m in model.modalities]
        self.register_buffer("present_row", torch.tensor(cols, dtype=torch.bool)[None],
                             persistent=False)

    def forward(self, *images: Tensor) -> Tensor:
        from .models.segmentor import logits_of

        batch: dict[str, Any] = dict(zip(self.names, images, strict=True))
        batch["present"] = self.present_row.expand(images[0].shape[0], -1)
        return logits_of(self.model(batch))


# --------------------------------------------------------------------------- checkpoint
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, Tensor)):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _input_channels(names: Sequence[str], specs: Mapping[str, Any] | None) -> dict[str, int]:
    """Channels per exported input: the checkpoint spec's ``out_channels`` (default spec of the
    modality without one); a value other than 1 or 3 becomes 3 (what the encoders take)."""
    from .data.modalities import ModalitySpec, get_spec

    out = {}
    for m in names:
        try:
            spec = (ModalitySpec.model_validate(specs[m]) if specs and m in specs
                    else get_spec(m))
            c = int(spec.out_channels)
        except (KeyError, ValueError, DataError):  # a modality without a default spec
            c = 3
        out[m] = c if c in (1, 3) else 3
    return out


def _choose_modalities(model_modalities: list[str], modalities: Sequence[str] | None
                       ) -> list[str]:
    if modalities is None:
        return list(model_modalities)
    if isinstance(modalities, str):
        modalities = [modalities]
    chosen = list(modalities)
    unknown = [m for m in chosen if m not in model_modalities]
    if unknown:
        raise ConfigError(f"modalities {unknown} are not the model's; it has {model_modalities}")
    if not chosen:
        raise ConfigError(f"export needs at least one modality of {model_modalities}")
    dup = sorted({m for m in chosen if chosen.count(m) > 1})
    if dup:
        raise ConfigError(f"duplicate modalities {dup}")
    return [m for m in model_modalities if m in chosen]


# --------------------------------------------------------------------------- checks
def _session(model_bytes: bytes | str, threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


class _Reference:
    """Seeded random inputs and their PyTorch logits, cached per ``(B, H, W)``."""

    def __init__(self, wrapper: nn.Module, names: list[str], channels: dict[str, int]):
        self.wrapper, self.names, self.channels = wrapper, names, channels
        self.cache: dict[tuple[int, int, int], tuple[list[Tensor], Tensor]] = {}

    def get(self, b: int, h: int, w: int) -> tuple[list[Tensor], Tensor]:
        key = (b, h, w)
        if key not in self.cache:
            g = torch.Generator().manual_seed(1000 * b + 10 * h + w)
            xs = [torch.randn(b, self.channels[m], h, w, generator=g) for m in self.names]
            with torch.no_grad():
                ref = self.wrapper(*xs).float()
            self.cache[key] = (xs, ref)
        return self.cache[key]


def _tolerance(ref: Tensor) -> float:
    """Accepted ``max |onnx - torch|``: ``1e-3`` relative to the logits' scale (float32 kernels
    of the two runtimes differ by ~1e-6 relative; a shape branch fixed at the traced size gives
    errors of the logits' own size, or a runtime error)."""
    return 1e-3 * max(1.0, float(ref.abs().max()))


def _compare(sess, refs: _Reference, b: int, h: int, w: int) -> tuple[float, float]:
    xs, ref = refs.get(b, h, w)
    out = sess.run(["logits"], {m: x.numpy() for m, x in zip(refs.names, xs, strict=True)})[0]
    if tuple(out.shape) != tuple(ref.shape):
        raise OnnxExportError(f"ONNX logits {tuple(out.shape)} != PyTorch {tuple(ref.shape)} "
                              f"at batch {b}, {h}x{w}")
    return float(np.abs(out - ref.numpy()).max()), _tolerance(ref)


def _probe_size(h: int, w: int, k: int) -> tuple[int, int]:
    """A second spatial size for the dynamic-axis check: larger than ``(h, w)`` and, when the
    model pads to multiples of ``k > 1``, not a multiple of ``k``."""
    def side(n: int, extra: int) -> int:
        n = n + max(k, 4) + extra
        return n + 1 if k > 1 and n % k == 0 else n

    return side(h, 1), side(w, 3)


def _trace_size(h: int, w: int, k: int) -> tuple[int, int]:
    """Size traced for a dynamic export: ``(h, w)``, or ``(h + 1, w + 1)`` when ``h`` and ``w``
    are both multiples of ``k > 1`` (the segmentors' pad-to-multiple and crop then run in the
    trace and so are in the graph)."""
    if k > 1 and h % k == 0 and w % k == 0:
        return h + 1, w + 1
    return h, w


def _torch_export(wrapper: nn.Module, names: list[str], channels: dict[str, int], b: int,
                  h: int, w: int, opset: int, dyn_batch: bool, dyn_size: bool) -> bytes:
    xs = tuple(torch.zeros(b, channels[m], h, w) for m in names)
    axes: dict[int, str] = {}
    if dyn_batch:
        axes[0] = "batch"
    if dyn_size:
        axes.update({2: "height", 3: "width"})
    dynamic_axes = {n: dict(axes) for n in [*names, "logits"]} if axes else None
    buf = io.BytesIO()
    with warnings.catch_warnings(), traceable_ops(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
        torch.onnx.export(wrapper, xs, buf, input_names=names, output_names=["logits"],
                          dynamic_axes=dynamic_axes, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    return buf.getvalue()


def _with_metadata(model_bytes: bytes, meta: Mapping[str, Any],
                   logits_shape: Sequence[int | str]) -> bytes:
    """The exported model with ``meta`` as JSON ``metadata_props`` and the output declared
    ``logits [*logits_shape]`` (the exporter's shape inference loses the class axis behind
    the final resize)."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    del dims[:]
    for d in logits_shape:
        dim = dims.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = int(d)
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, json.dumps(_jsonable(v))
    proto.producer_name = "fusionseg"
    proto.doc_string = "fusionseg segmentor; inputs: normalised modalities [B, C, H, W]; " \
                       "output: logits [B, K, H, W]"
    return proto.SerializeToString()


# --------------------------------------------------------------------------- export
def export_onnx(ckpt: Path, out: Path, modalities: list[str] | None = None,
                size: tuple[int, int] | None = None, opset: int | None = None,
                check: bool = True, dynamic: bool = True) -> ExportReport:
    """Export a fusionseg checkpoint to ONNX for a fixed set of modalities.

    The model is built as ``fusionseg predict`` builds it
    (:func:`fusionseg.predict.load_predictor`: config from the checkpoint's
    ``fusionseg_config``, ``create_model``, ``load_checkpoint``) and traced in eval mode with the TorchScript
    exporter (see the module docstring for the graph, the metadata and why this exporter).
    A subset of the model's modalities exports the model with the others absent (missing, as
    in the batch convention of ``segmentors/base.py``).

    With ``dynamic`` the batch and spatial axes are declared dynamic when the exported file
    reproduces PyTorch (ONNX Runtime, CPU) at a second batch size and a second spatial size;
    otherwise the spatial size is fixed to ``size`` (and, if that fails too, the batch to 1).
    The report says which and why. The file is written atomically (temporary file in the same
    folder, then ``os.replace``), only after the checks pass.

    Args:
        ckpt: fusionseg checkpoint (``fusionseg train``'s ``best.ckpt`` / ``last.ckpt``).
        out: the ONNX file to write.
        modalities: exported modalities (model order is kept); ``None``: all of the model's.
        size: ``(H, W)`` px to trace and check at, the fixed size of a static export;
            ``None``: the config's ``data.crop_size``.
        opset: ONNX opset, 14..20 (default :data:`DEFAULT_OPSET`).
        check: compare ONNX Runtime with PyTorch on a seeded random input at ``size`` (batch
            2, or 1 for a fixed batch). The second-size comparisons that decide the dynamic
            axes run whenever ``dynamic`` is true.
        dynamic: try dynamic batch and spatial axes (``False``: batch 1 at ``size``).

    Returns:
        :class:`ExportReport`.

    Raises:
        CheckpointError: no checkpoint at ``ckpt``; a file that cannot be read safely (one
            that names Python objects is refused, never unpickled); no fusionseg config in it;
            checkpoint and model disagree (``CheckpointMismatchError``).
        ConfigError: unknown, duplicate or no modalities; a non-positive size; an opset
            outside 14..20; the class count unknown.
        OnnxExportError (a ``RunError``): the exporter fails at every attempt, or ONNX Runtime and PyTorch
            differ by more than ``1e-3 * max(1, max|logits|)`` at ``size``.
    """
    from .predict import load_predictor  # the one checkpoint -> model path (predict's)

    t0 = time.perf_counter()
    ckpt, out = Path(ckpt), Path(out)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset not in _OPSETS:
        raise ConfigError(f"opset {opset} not supported; use {_OPSETS.start}..{_OPSETS.stop - 1}")
    model, meta, cfg = load_predictor(ckpt=ckpt)
    meta = {k: meta[k] for k in _CKPT_KEYS if meta.get(k) is not None}
    h, w = (int(s) for s in (size if size is not None else cfg.data.crop_size))
    if h < 1 or w < 1:
        raise ConfigError(f"size must be positive, got {(h, w)}")
    names = _choose_modalities(list(model.modalities), modalities)
    channels = _input_channels(names, meta.get("fusionseg_specs"))
    wrapper = _PositionalSegmentor(model, names).eval()
    refs = _Reference(wrapper, names, channels)
    k = int(getattr(model, "input_multiple", 1))
    ph, pw = _probe_size(h, w, k)

    # (dynamic batch, dynamic size, traced batch, traced size, checks (b, h, w) before writing)
    attempts = []
    if dynamic:
        attempts.append((True, True, 2, _trace_size(h, w, k), [(1, ph, pw)]))
        attempts.append((True, False, 2, (h, w), [(1, h, w)]))
    attempts.append((False, False, 1, (h, w), []))
    notes: list[str] = []
    diffs: list[float] = []
    chosen = None
    for dyn_b, dyn_s, tb, (th, tw), probes in attempts:
        label = ("dynamic batch and size" if dyn_s else
                 "dynamic batch, fixed size" if dyn_b else "fixed batch and size")
        sess, measured = None, []
        try:
            data = _torch_export(wrapper, names, channels, tb, th, tw, opset, dyn_b, dyn_s)
            if probes:
                sess = _session(data, None)
                for pb, qh, qw in probes:
                    diff, tol = _compare(sess, refs, pb, qh, qw)
                    if not diff <= tol:
                        raise OnnxExportError(f"max |onnx - torch| {diff:.3g} > {tol:.3g} "
                                              f"at batch {pb}, {qh}x{qw}")
                    measured.append(diff)
        except Exception as err:  # noqa: BLE001 - every failure of an attempt is a note
            if not probes:
                earlier = "".join(f"; before: {n}" for n in notes)
                raise OnnxExportError(f"{ckpt}: ONNX export ({label}) failed: "
                                      f"{type(err).__name__}: {err}{earlier}") from err
            notes.append(f"{label}: {type(err).__name__}: {_first_line(err)}")
            continue
        diffs.extend(measured)
        chosen = (dyn_b, dyn_s, data, sess)
        break
    assert chosen is not None
    dyn_b, dyn_s, data, sess = chosen
    if check:
        sess = sess or _session(data, None)
        b = 2 if dyn_b else 1
        diff, tol = _compare(sess, refs, b, h, w)
        if not diff <= tol:
            raise OnnxExportError(f"{ckpt}: ONNX Runtime differs from PyTorch by {diff:.3g} "
                                  f"(> {tol:.3g}) at batch {b}, {h}x{w}; nothing written")
        diffs.append(diff)
    export_meta = dict(meta)
    export_meta["fusionseg_modalities"] = names
    export_meta["fusionseg_export"] = {
        "size": [h, w], "dynamic_batch": dyn_b, "dynamic_size": dyn_s, "exporter": EXPORTER,
        "opset": opset, "torch": torch.__version__, "model_modalities": list(model.modalities),
        "input_channels": channels, "notes": notes,
    }
    logits_shape = ["batch" if dyn_b else 1, int(model.num_classes),
                    *(["height", "width"] if dyn_s else [h, w])]
    with atomic_path(out) as tmp:
        tmp.write_bytes(_with_metadata(data, export_meta, logits_shape))
    return ExportReport(path=out, max_abs_diff=max(diffs) if diffs else None,
                        dynamic_batch=dyn_b, dynamic_size=dyn_s, exporter=EXPORTER,
                        seconds=time.perf_counter() - t0, modalities=names, size=(h, w),
                        opset=opset, notes=notes)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= 300 else line[:297] + "..."


# --------------------------------------------------------------------------- inference
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
    ``nn.Module`` (e.g. :func:`fusionseg.engine.inference.predict_logits`).

    Args:
        path: ONNX file written by :func:`export_onnx`.
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
        self.session = _session(str(path), threads)
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
                               f"{_first_line(err)}") from err
        return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0]).float()

    forward = __call__

    def __repr__(self) -> str:
        size = "dynamic" if self.input_size is None else f"{self.input_size[0]}x" \
                                                          f"{self.input_size[1]}"
        return f"OnnxModel({str(self.path)!r}, modalities={self.modalities}, size={size})"
