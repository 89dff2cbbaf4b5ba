"""ONNX export of a fusionseg checkpoint, checked against PyTorch with ONNX Runtime.

:func:`export_onnx` turns a training checkpoint into an ONNX model for one fixed set of
modalities; :class:`~fusionseg.inference.onnx_model.OnnxModel` runs the file behind the
segmentor's batch interface (``docs/export.md``).

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
        fusionseg_export     {size, dynamic_batch, dynamic_size, exporter, fallback, opset,
                              torch, model_modalities, input_channels, notes}

Exporters (``exporter=``; ``docs/export.md`` says which model uses which, and why):

* ``"dynamo"``: ``torch.export.export`` (non-strict) captures the model with symbolic batch and
  spatial sizes, and ``torch.onnx.export(exported_program, dynamo=True)`` (onnxscript)
  translates it. A model whose forward branches on tensor values (the presence checks of the
  missing-modality code, ``bool(present.any())``, ``torch.unique`` over presence patterns,
  finiteness checks) cannot be captured: ``torch.export`` stops at the first such
  data-dependent branch (``GuardOnDataDependentSymNode``).
* ``"torchscript"``: the deprecated TorchScript-based exporter
  (``torch.onnx.export(..., dynamo=False)``). It traces one run, so value-dependent branches
  are taken as at the traced input (right for an export, whose modality set is fixed). The
  few operations it cannot translate take an export-safe form inside the modules that use
  them (:mod:`fusionseg.models.export_ops`); nothing is patched process-wide.
* ``"auto"`` (default): ``"dynamo"``, and ``"torchscript"`` when that fails;
  :attr:`ExportReport.fallback` says why.

Dynamic axes: an axis is only declared dynamic after the exported file reproduces PyTorch at
a second batch size and a second spatial size that is not a multiple of the model's
``input_multiple``; an export that fails this falls back to a fixed size (and, failing
again, a fixed batch of one), and :class:`ExportReport` says why (``notes``). The
TorchScript tracer records Python branches on shapes as taken at the traced size, so models
that pad to ``input_multiple`` are traced at a size that needs padding (the pad-and-crop path
is then in the graph). ``torch.export`` specialises a size axis whose feature map has one
cell (0/1 specialisation), so the dynamo exporter traces dynamic sizes at 64 px or more.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError, RunError
from ..files import atomic_path
from ..models.segmentor import logits_of
from .loading import load_checkpoint_model
from .onnx_model import first_line, ort_session

__all__ = [
    "DEFAULT_OPSETS",
    "EXPORTERS",
    "ExportReport",
    "OnnxExportError",
    "export_onnx",
]

#: the ``exporter`` choices of :func:`export_onnx`
EXPORTERS = ("auto", "dynamo", "torchscript")
#: ONNX opset per exporter unless one is given: the dynamo exporter's own translations are
#: written for opset 18 (a lower one is a version conversion); the TorchScript exporter's
#: LayerNormalization is native from 17
DEFAULT_OPSETS = {"dynamo": 18, "torchscript": 17}
#: opsets :func:`export_onnx` accepts (SDPA needs >= 14; torch 2.13's TorchScript exporter
#: writes up to 20)
_OPSETS = range(14, 21)
#: smallest traced side of a dynamic-size dynamo export (see the module docstring)
_DYNAMO_MIN_TRACE = 64
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
            made on the written file (export size, and the second batch / spatial size of the
            dynamic-axis checks); ``None`` when none was made (``check=False``, static).
        dynamic_batch: the batch axis is dynamic (else the file takes batch 1).
        dynamic_size: the spatial axes are dynamic (else the file takes ``size`` only).
        exporter: ``"dynamo"`` or ``"torchscript"``, the one that wrote the file.
        seconds: wall time of the export, checks included.
        modalities: the exported modalities (the ONNX inputs, in order).
        size: ``(H, W)`` the export was checked at (the fixed size when not ``dynamic_size``).
        opset: the ONNX opset of the file.
        notes: why an axis fell back to static with the exporter that wrote the file, one
            line per failed attempt.
        fallback: with ``exporter="auto"``, why the dynamo exporter was not used (its failed
            attempts, one line); ``None`` when it wrote the file or was not asked for.
    """

    path: Path
    max_abs_diff: float | None
    dynamic_batch: bool
    dynamic_size: bool
    exporter: str
    seconds: float
    modalities: list[str] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)
    opset: int = DEFAULT_OPSETS["torchscript"]
    notes: list[str] = field(default_factory=list)
    fallback: str | None = None


# --------------------------------------------------------------------------- wrapper
class _PositionalSegmentor(nn.Module):
    """``forward(*images) -> logits``: the exported modalities positionally, in ``names`` order,
    as the batch dict of the segmentor. The model's other modalities are absent keys: missing,
    in the batch convention of ``models/segmentor.py`` (no ``present`` entry is needed: every
    exported modality is present for every sample)."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, *images: Tensor) -> Tensor:
        return logits_of(self.model(dict(zip(self.names, images, strict=True))))


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
    from ..data.modalities import ModalitySpec, get_spec

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
    """``(max |onnx - torch|, tolerance)`` at batch ``b``, ``h x w``."""
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


def _trace_size(h: int, w: int, k: int, minimum: int = 1) -> tuple[int, int]:
    """Size traced for a dynamic export: ``(h, w)``, each side raised to ``minimum``, and one
    pixel more when both are multiples of ``k > 1`` (the segmentors' pad-to-multiple and crop
    then run in the trace and so are in the graph)."""
    h, w = max(h, minimum), max(w, minimum)
    if k > 1 and h % k == 0 and w % k == 0:
        return h + 1, w + 1
    return h, w


# --------------------------------------------------------------------------- exporters
@dataclass(frozen=True)
class _Attempt:
    """One export try: which axes are dynamic, the traced input, and the ``(b, h, w)`` checks
    that must pass before the file is accepted."""

    dynamic_batch: bool
    dynamic_size: bool
    batch: int
    size: tuple[int, int]
    checks: tuple[tuple[int, int, int], ...]

    @property
    def label(self) -> str:
        return ("dynamic batch and size" if self.dynamic_size else
                "dynamic batch, fixed size" if self.dynamic_batch else "fixed batch and size")


def _attempts(exporter: str, h: int, w: int, k: int, dynamic: bool, check: bool
              ) -> list[_Attempt]:
    """The tries of one exporter, most dynamic first. A dynamic try is checked at a second
    batch (and size); with ``check`` every try is also checked at batch 2 (1 when fixed) and
    ``(h, w)``."""
    at_size = ((2, h, w),) if check else ()
    out = []
    if dynamic:
        minimum = _DYNAMO_MIN_TRACE if exporter == "dynamo" else 1
        ph, pw = _probe_size(h, w, k)
        out.append(_Attempt(True, True, 2, _trace_size(h, w, k, minimum),
                            ((1, ph, pw), *at_size)))
        out.append(_Attempt(True, False, 2, (h, w), ((1, h, w), *at_size)))
    out.append(_Attempt(False, False, 1, (h, w), ((1, h, w),) if check else ()))
    return out


def _dynamo_export(wrapper: nn.Module, names: list[str], channels: dict[str, int],
                   attempt: _Attempt, opset: int) -> bytes:
    """``torch.export.export`` (non-strict) + ``torch.onnx.export(program, dynamo=True)``.

    Raises:
        OnnxExportError: the file has another opset than ``opset`` (a failed conversion).
        Exception: whatever ``torch.export`` (e.g. ``GuardOnDataDependentSymNode``) or the
            ONNX translation raise.
    """
    h, w = attempt.size
    xs = tuple(torch.zeros(attempt.batch, channels[m], h, w) for m in names)
    axes: dict[int, Any] = {}
    if attempt.dynamic_batch:
        axes[0] = torch.export.Dim.DYNAMIC
    if attempt.dynamic_size:
        axes.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    shapes = (tuple(dict(axes) for _ in names),) if axes else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # a failed capture prints its partial graph (thousands of lines) to stderr before
        # raising; the error itself (message, model file and line) goes into the notes
        with contextlib.redirect_stderr(io.StringIO()):
            program = torch.export.export(wrapper, xs, dynamic_shapes=shapes, strict=False)
        onnx_program = torch.onnx.export(program, (), dynamo=True, input_names=names,
                                         output_names=["logits"], opset_version=opset,
                                         verbose=False, optimize=True)
    proto = onnx_program.model_proto
    written = _opset_of(proto)
    if written != opset:
        raise OnnxExportError(f"the dynamo exporter wrote opset {written}, not the requested "
                              f"{opset} (a failed version conversion)")
    return proto.SerializeToString()


def _torchscript_export(wrapper: nn.Module, names: list[str], channels: dict[str, int],
                        attempt: _Attempt, opset: int) -> bytes:
    """The TorchScript-based ``torch.onnx.export(..., dynamo=False)`` (one trace).

    Raises:
        Exception: whatever the tracer or the exporter raise (e.g. an operator it cannot
            translate).
    """
    h, w = attempt.size
    xs = tuple(torch.zeros(attempt.batch, channels[m], h, w) for m in names)
    axes: dict[int, str] = {}
    if attempt.dynamic_batch:
        axes[0] = "batch"
    if attempt.dynamic_size:
        axes.update({2: "height", 3: "width"})
    dynamic_axes = {n: dict(axes) for n in [*names, "logits"]} if axes else None
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
        torch.onnx.export(wrapper, xs, buf, input_names=names, output_names=["logits"],
                          dynamic_axes=dynamic_axes, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    return buf.getvalue()


def _export_bytes(exporter: str, wrapper: nn.Module, names: list[str],
                  channels: dict[str, int], attempt: _Attempt, opset: int) -> bytes:
    """The ONNX model of ``attempt`` written by ``exporter`` (``"dynamo"``/``"torchscript"``)."""
    if exporter == "dynamo":
        return _dynamo_export(wrapper, names, channels, attempt, opset)
    return _torchscript_export(wrapper, names, channels, attempt, opset)


def _opset_of(proto) -> int:
    """The default-domain opset of an ONNX ``ModelProto``."""
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _data_dependent(err: BaseException) -> bool:
    """Whether ``err`` (or its cause) is ``torch.export`` stopping at a branch on tensor values,
    which no choice of dynamic axes avoids."""
    seen: BaseException | None = err
    while seen is not None:
        if "DataDependent" in type(seen).__name__:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _where(err: BaseException) -> str:
    """`` at <file>:<line>``: the innermost fusionseg model frame of ``err``'s traceback (the
    model code an exporter stopped at), or ``""``."""
    tb, found = err.__traceback__, ""
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "/fusionseg/models/" in path:
            found = f" at {path.split('/fusionseg/', 1)[1]}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found


@dataclass
class _Written:
    """An accepted export: the try, the ONNX bytes, the differences measured on them."""

    attempt: _Attempt
    data: bytes
    diffs: list[float]
    notes: list[str]


class _ExporterFailed(Exception):
    """Every try of one exporter failed; ``notes`` says how (one line each, last try last)."""

    def __init__(self, notes: list[str]):
        super().__init__("; ".join(notes))
        self.notes = notes


def _run_attempts(exporter: str, wrapper: nn.Module, names: list[str],
                  channels: dict[str, int], refs: _Reference, attempts: list[_Attempt],
                  opset: int) -> _Written:
    """The first of ``attempts`` whose export succeeds and passes its checks.

    Raises:
        _ExporterFailed: none did (a data-dependent ``torch.export`` failure ends the tries of
            the dynamo exporter at once: other axes fail the same way).
    """
    notes: list[str] = []
    for attempt in attempts:
        try:
            data = _export_bytes(exporter, wrapper, names, channels, attempt, opset)
            diffs = []
            if attempt.checks:
                sess = ort_session(data, None, log_level=4)  # failures raise: no log
                for b, h, w in attempt.checks:
                    diff, tol = _compare(sess, refs, b, h, w)
                    if not diff <= tol:
                        raise OnnxExportError(f"ONNX Runtime differs from PyTorch by "
                                              f"{diff:.3g} (> {tol:.3g}) at batch {b}, {h}x{w}")
                    diffs.append(diff)
        except Exception as err:  # noqa: BLE001 - every failure of a try is a note
            notes.append(f"{exporter}, {attempt.label}: {type(err).__name__}: "
                         f"{first_line(err)}{_where(err)}")
            if exporter == "dynamo" and _data_dependent(err):
                break
            continue
        return _Written(attempt, data, diffs, notes)
    raise _ExporterFailed(notes)


def _with_metadata(model_bytes: bytes, meta: Mapping[str, Any],
                   logits_shape: Sequence[int | str]) -> bytes:
    """The exported model with ``meta`` as JSON ``metadata_props``, the output declared
    ``logits [*logits_shape]`` (the TorchScript exporter's shape inference loses the class axis
    behind the final resize) and the symbolic input axes named ``batch``, ``height``,
    ``width`` (the dynamo exporter names them after its symbols)."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    graph = proto.graph
    names = {}
    for value in graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param and axis in (0, 2, 3):
                names[dim.dim_param] = {0: "batch", 2: "height", 3: "width"}[axis]
    for value in [*graph.input, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
    dims = graph.output[0].type.tensor_type.shape.dim
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
def export_onnx(ckpt: str | Path, out: str | Path, modalities: Sequence[str] | None = None,
                size: tuple[int, int] | None = None, opset: int | None = None,
                check: bool = True, dynamic: bool = True, exporter: str = "auto"
                ) -> ExportReport:
    """Export a fusionseg checkpoint to ONNX for a fixed set of modalities.

    The model is built as ``fusionseg predict`` builds it
    (:func:`fusionseg.inference.loading.load_checkpoint_model`: the checkpoint read once, its
    ``fusionseg_config``, ``create_model``, ``load_checkpoint``) and exported in eval mode
    (see the module docstring for the graph, the metadata and the exporters). A subset of
    the model's modalities exports the model with the others absent (missing, as in the
    batch convention of ``models/segmentor.py``).

    With ``dynamic`` the batch and spatial axes are declared dynamic when the exported file
    reproduces PyTorch (ONNX Runtime, CPU) at a second batch size and a second spatial size;
    otherwise the spatial size is fixed to ``size`` (and, if that fails too, the batch to 1).
    The report says which and why. The file is written atomically (temporary file in the same
    folder, then ``os.replace``), only after the checks pass.

    Args:
        ckpt: fusionseg checkpoint (``fusionseg train``'s ``best.ckpt`` / ``last.ckpt``).
        out: the ONNX file to write.
        modalities: exported modalities (model order is kept); ``None``: all of the model's.
        size: ``(H, W)`` px to check at, the fixed size of a static export; ``None``: the
            config's ``data.crop_size``.
        opset: ONNX opset, 14..20; ``None``: :data:`DEFAULT_OPSETS` of the exporter.
        check: compare ONNX Runtime with PyTorch on a seeded random input at ``size`` (batch
            2, or 1 for a fixed batch). The second-size comparisons that decide the dynamic
            axes run whenever ``dynamic`` is true.
        dynamic: try dynamic batch and spatial axes (``False``: batch 1 at ``size``).
        exporter: ``"auto"`` (dynamo, else TorchScript), ``"dynamo"`` or ``"torchscript"``.

    Returns:
        :class:`ExportReport`.

    Raises:
        CheckpointError: no checkpoint at ``ckpt``; a file that cannot be read safely (one
            that names Python objects is refused, never unpickled); no fusionseg config in it;
            checkpoint and model disagree (``CheckpointMismatchError``).
        ConfigError: unknown, duplicate or no modalities; a non-positive size; an opset
            outside 14..20; an unknown exporter; the class count unknown.
        OnnxExportError (a ``RunError``): every try of every exporter asked for failed (to
            export, or to reproduce PyTorch within ``1e-3 * max(1, max|logits|)``); the
            message lists the tries. Nothing is written then.
    """
    t0 = time.perf_counter()
    ckpt, out = Path(ckpt), Path(out)
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown exporter {exporter!r}; use {', '.join(EXPORTERS)}")
    if opset is not None and int(opset) not in _OPSETS:
        raise ConfigError(f"opset {opset} not supported; use {_OPSETS.start}..{_OPSETS.stop - 1}")
    model, meta, cfg = load_checkpoint_model(ckpt)
    meta = {k: meta[k] for k in _CKPT_KEYS if meta.get(k) is not None}
    h, w = (int(s) for s in (size if size is not None else cfg.data.crop_size))
    if h < 1 or w < 1:
        raise ConfigError(f"size must be positive, got {(h, w)}")
    names = _choose_modalities(list(model.modalities), modalities)
    channels = _input_channels(names, meta.get("fusionseg_specs"))
    wrapper = _PositionalSegmentor(model, names).eval()
    refs = _Reference(wrapper, names, channels)
    k = int(getattr(model, "input_multiple", 1))

    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    failed: list[str] = []  # the tries of the exporters that failed entirely
    for used in order:
        used_opset = DEFAULT_OPSETS[used] if opset is None else int(opset)
        try:
            written = _run_attempts(used, wrapper, names, channels, refs,
                                    _attempts(used, h, w, k, dynamic, check), used_opset)
            break
        except _ExporterFailed as err:
            failed.extend(err.notes)
    else:
        raise OnnxExportError(f"{ckpt}: ONNX export failed, nothing written: {failed[-1]}"
                              + "".join(f"; before: {n}" for n in failed[:-1]))
    fallback = "; ".join(failed) or None
    attempt = written.attempt
    export_meta = dict(meta)
    export_meta["fusionseg_modalities"] = names
    export_meta["fusionseg_export"] = {
        "size": [h, w], "dynamic_batch": attempt.dynamic_batch,
        "dynamic_size": attempt.dynamic_size, "exporter": used, "fallback": fallback,
        "opset": used_opset, "torch": torch.__version__,
        "model_modalities": list(model.modalities), "input_channels": channels,
        "notes": written.notes,
    }
    logits_shape = ["batch" if attempt.dynamic_batch else 1, int(model.num_classes),
                    *(["height", "width"] if attempt.dynamic_size else [h, w])]
    data = _with_metadata(written.data, export_meta, logits_shape)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return ExportReport(path=out, max_abs_diff=max(written.diffs) if written.diffs else None,
                        dynamic_batch=attempt.dynamic_batch, dynamic_size=attempt.dynamic_size,
                        exporter=used, seconds=time.perf_counter() - t0, modalities=names,
                        size=(h, w), opset=used_opset, notes=written.notes, fallback=fallback)
