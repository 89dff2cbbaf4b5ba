"""Model benchmarks: parameters, FLOPs, inference latency, training-step time, peak memory.

:func:`measure` returns a plain dict (the CLI formats it). Conventions:

* ``gflops``: floating-point operations of one forward pass (eval, no grad) counted by
  :class:`torch.utils.flop_counter.FlopCounterMode`, 2 FLOPs per multiply-accumulate;
  ``gmacs = gflops / 2`` is the convention of most segmentation papers' "GFLOPs" (fvcore /
  mmcv count one MAC as one FLOP). Matrix products, convolutions and attention are counted;
  elementwise ops, norms and interpolation are not. The CPU attention kernel
  (``_scaled_dot_product_flash_attention_for_cpu``), which the built-in counter misses, is
  counted with the standard attention formula.
* ``latency_ms``: mean wall time of one forward in eval mode under ``torch.no_grad``.
* ``train_step_s``: mean wall time of forward + cross-entropy on random labels + backward +
  AdamW step, in train mode. This changes the model's parameters and optimizer-free state
  (BatchNorm running statistics); benchmark a throw-away model.
* ``peak_memory_mb``: on CUDA ``torch.cuda.max_memory_allocated`` over the measurement; on CPU
  the peak resident set size of the whole process (``resource.getrusage``, a high-water mark
  since process start: run one configuration per process for per-configuration numbers).
* ``train_peak_memory_mb``: peak memory of the training steps (weights, gradients, AdamW state
  and the activations kept for backward - what activation checkpointing reduces). The
  training steps run first, before the FLOP count and the inference timing, so that nothing
  else can set it: on CUDA ``max_memory_allocated`` from a reset at the start of training to
  its end; on CPU the process's peak RSS at the end of training (a high-water mark since
  process start, so in a fresh process: model construction + training; ``fusionseg bench``
  is one).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .errors import ConfigError
from .models.segmentor import count_parameters, logits_of
from .runtime import autocast, configure_cpu_allocator, resolve_precision

__all__ = [
    "configure_cpu_allocator",
    "count_flops",
    "count_parameters",
    "make_random_batch",
    "measure",
    "peak_rss_mb",
]

Batch = dict[str, Any]


def make_random_batch(
    modalities: Sequence[str],
    batch: int = 2,
    size: int | tuple[int, int] = 512,
    num_classes: int = 19,
    device: str | torch.device = "cpu",
    seed: int = 0,
    channels: Mapping[str, int] | None = None,
) -> Batch:
    """A random batch in the fusionseg batch convention.

    Returns ``{m: float32 [batch, C_m, H, W] for m in modalities, "label": int64 [batch, H, W]
    in [0, num_classes)}``; ``C_m = channels.get(m, 3)``.
    """
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    out: Batch = {}
    for m in modalities:
        c = (channels or {}).get(m, 3)
        out[m] = torch.randn(batch, c, h, w, generator=g).to(device)
    out["label"] = torch.randint(0, num_classes, (batch, h, w), generator=g).to(device)
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / (1024.0 * 1024.0)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _flop_mapping() -> dict:
    ops = torch.ops.aten
    mapping = {}
    if hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[ops._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flops
    return mapping


def count_flops(model: nn.Module, batch: Batch) -> int:
    """FLOPs of one forward of ``model(batch)`` in eval mode without grad (2 per MAC)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as fc:
            model(batch)
    finally:
        model.train(was_training)
    return int(fc.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_size(batch: Batch) -> int:
    for v in batch.values():
        if isinstance(v, Tensor) and v.ndim == 4:
            return int(v.shape[0])
    return 0


def measure(
    model: nn.Module,
    batch: Batch | None = None,
    *,
    batch_fn: Callable[[], Batch] | None = None,
    steps: int = 5,
    warmup: int = 1,
    inference: bool = True,
    train: bool = True,
    flops: bool = True,
    lr: float = 6e-5,
    ignore_index: int = 255,
    precision: str | None = "auto",
) -> dict[str, Any]:
    """Benchmark ``model`` on a batch (``batch``, or a fresh one from ``batch_fn()`` per step).

    Args:
        model: a segmentor, ``model(batch) -> logits [B, K, H, W]`` or an object with
            ``.logits``; it is measured on the device of its first parameter.
        batch / batch_fn: the input batch (dict with modality tensors and ``"label"``
            int64 ``[B, H, W]``; a missing label is drawn at random); exactly one is needed.
        steps / warmup: timed and untimed iterations for latency and training.
        inference / train / flops: which parts to measure.
        lr: AdamW learning rate of the training steps.
        precision: ``auto`` / ``32`` / ``bf16-mixed`` / ``16-mixed`` (GPU), see
            :func:`fusionseg.runtime.autocast`; ``auto`` (or ``None``): bf16-mixed where the
            hardware runs it natively, 32 elsewhere (:func:`fusionseg.runtime.auto_precision`).
            The forward passes run under autocast, the loss in float32.

    Returns:
        dict with ``params_total``, ``params_trainable``, ``device``, ``batch_size``,
        ``input_size`` ([H, W]), ``threads``, ``steps``, ``warmup``, ``precision``, and as
        measured:
        ``gflops``, ``gmacs``, ``latency_ms``, ``latency_ms_min``, ``train_step_s``,
        ``train_step_s_min``, ``train_step_cpu_s`` (process CPU time per step, all threads;
        less sensitive than wall time to other load on the machine), ``train_peak_memory_mb``
        (see the module docstring), ``peak_memory_mb``, ``memory_kind``
        (``"cuda_max_allocated"`` or ``"cpu_peak_rss"``, for both memory numbers).

    Raises:
        ValueError: neither or both of ``batch`` and ``batch_fn``; ``steps < 1``; a bad
            ``precision``.
    """
    if (batch is None) == (batch_fn is None):
        raise ValueError("pass exactly one of batch or batch_fn")
    if steps < 1 or warmup < 0:
        raise ConfigError(f"steps must be >= 1 and warmup >= 0, got {steps}, {warmup}")
    get = batch_fn if batch_fn is not None else (lambda: batch)
    was_training = model.training
    first = get()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    h, w = next(v.shape[-2:] for v in first.values() if isinstance(v, Tensor) and v.ndim == 4)
    res: dict[str, Any] = {
        **{f"params_{k}": v for k, v in count_parameters(model).items()},
        "device": str(device),
        "batch_size": _batch_size(first),
        "input_size": [int(h), int(w)],
        "threads": torch.get_num_threads(),
        "steps": steps,
        "warmup": warmup,
        "precision": resolve_precision(precision, device),
    }
    amp = res["precision"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if train:
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr) if params else None
        num_classes = getattr(model, "num_classes", None)
        times, cpu_times = [], []
        for i in range(warmup + steps):
            b = get()
            label = b.get("label")
            _sync(device)
            t0 = time.perf_counter()
            c0 = time.process_time()
            with autocast(amp, device):
                logits = logits_of(model(b))
            logits = logits.float()
            if label is None:
                label = torch.randint(
                    0,
                    num_classes or logits.shape[1],
                    (logits.shape[0], *logits.shape[-2:]),
                    device=logits.device,
                )
            loss = F.cross_entropy(logits, label.to(logits.device), ignore_index=ignore_index)
            loss.backward()
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                cpu_times.append(time.process_time() - c0)
            del logits, loss
        res["train_step_s"] = sum(times) / len(times)
        res["train_step_s_min"] = min(times)
        res["train_step_cpu_s"] = sum(cpu_times) / len(cpu_times)
        res["train_peak_memory_mb"] = (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else peak_rss_mb()
        )
        del opt, params  # the AdamW state is not part of what follows

    if flops:
        f = count_flops(model, first)
        res["gflops"] = f / 1e9
        res["gmacs"] = f / 2e9

    if inference:
        model.eval()
        times = []
        with torch.no_grad():
            for i in range(warmup + steps):
                b = get()
                _sync(device)
                t0 = time.perf_counter()
                with autocast(amp, device):
                    model(b)
                _sync(device)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        res["latency_ms"] = 1e3 * sum(times) / len(times)
        res["latency_ms_min"] = 1e3 * min(times)

    model.train(was_training)

    if device.type == "cuda":
        res["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        res["memory_kind"] = "cuda_max_allocated"
    else:
        res["peak_memory_mb"] = peak_rss_mb()
        res["memory_kind"] = "cpu_peak_rss"
    return res
