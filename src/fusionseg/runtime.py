"""Process-level runtime settings for CPU training, evaluation and benchmarks."""

from __future__ import annotations

import contextlib
import sys
import warnings

import torch

from .errors import ConfigError

__all__ = ["PRECISIONS", "autocast", "configure_cpu_allocator", "cpu_has_native_bf16",
           "resolve_precision", "setup_threads"]

#: ``train.precision`` values (Lightning's names; ``32`` = ``32-true``)
PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed")


def resolve_precision(precision: str | int | None, device: torch.device | str,
                      strict: bool = True) -> str:
    """The precision to run at on ``device``: ``None`` -> ``bf16-mixed`` on CUDA, ``32-true``
    elsewhere; ``32`` -> ``32-true``. With ``strict=False`` (evaluating or predicting with a
    checkpoint trained at ``16-mixed`` on a GPU), ``16-mixed`` off CUDA becomes ``bf16-mixed``.

    Raises:
        ConfigError: an unknown name, or (``strict``) ``16-mixed`` on a device other than CUDA
            (fp16 autocast needs a GPU; use ``bf16-mixed`` on CPU).
    """
    dev = torch.device(device).type
    if precision is None:
        return "bf16-mixed" if dev == "cuda" else "32-true"
    p = str(precision)
    if p not in PRECISIONS:
        raise ConfigError(f"precision {p!r} unknown; choose one of {', '.join(PRECISIONS)}")
    if p == "16-mixed" and dev != "cuda":
        if not strict:
            return "bf16-mixed"
        raise ConfigError("precision 16-mixed needs a CUDA GPU; use bf16-mixed on CPU")
    return "32-true" if p == "32" else p


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 BF16 or AMX); without it,
    bf16 convolutions and matmuls take slow reference paths."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(precision: str | int | None, device: torch.device | str):
    """A context manager running the model at ``precision`` on ``device``:
    :func:`torch.autocast` with bfloat16 (``bf16-mixed``, on CPU it uses AMX where the CPU has
    it) or float16 (``16-mixed``, CUDA), or nothing for ``32``. Losses and metrics are computed
    outside it, in float32.

    Raises:
        ConfigError: see :func:`resolve_precision`.
    """
    p = resolve_precision(precision, device)
    dev = torch.device(device).type
    if p == "bf16-mixed":
        if dev == "cpu" and not cpu_has_native_bf16():
            warnings.warn("bf16-mixed on a CPU without native bfloat16 (AVX-512 BF16 / AMX): "
                          "slower than 32 here (measured 8.6x on StitchFusion MiT-B0 on an "
                          "AVX2 CPU)", stacklevel=2)
        return torch.autocast(dev, dtype=torch.bfloat16)
    if p == "16-mixed":
        return torch.autocast(dev, dtype=torch.float16)
    return contextlib.nullcontext()


def configure_cpu_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the OS (glibc only).

    CPU training allocates and frees multi-MB activation buffers every step; by default glibc
    serves those with fresh ``mmap`` pages and unmaps them on free, so every step pays the
    kernel's page faults again (measured on 2 cores with MiT-B2 at 512x512: ~1M minor faults,
    2.5-5 s of system time per training step). This calls ``mallopt(M_MMAP_MAX, 0)`` and
    ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)`` so buffers are reused from the heap after the
    first step. Peak RSS grows a little (heap fragmentation, ~+5-10 %). Same effect as the
    environment variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>``.

    Process-wide and irreversible; meant for training / benchmark entry points, not for
    library import. Returns True when applied, False where glibc's ``mallopt`` is unavailable.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc <malloc.h>
    ok = mallopt(m_mmap_max, 0) == 1
    ok = mallopt(m_trim_threshold, 2**31 - 1) == 1 and ok
    return ok


def setup_threads(threads: int | None) -> None:
    """CPU runs: ``torch.set_num_threads(threads)`` when given, and heap reuse
    (:func:`configure_cpu_allocator`) when no GPU is used."""
    if threads:
        torch.set_num_threads(threads)
    if not torch.cuda.is_available():
        configure_cpu_allocator()
