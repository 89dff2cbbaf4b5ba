"""Process-level runtime settings for CPU training, evaluation and benchmarks."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import torch

from .errors import ConfigError

__all__ = ["AUTO_ENV", "BF16_CPU_FLAGS", "PRECISIONS", "auto_precision", "autocast",
           "configure_cpu_allocator", "cpu_flags", "cpu_has_native_bf16", "cuda_has_bf16",
           "describe_precision", "inference_precision", "resolve_precision", "setup_threads"]

#: ``train.precision`` values (Lightning's names; ``32`` = ``32-true``; ``auto``, the default,
#: picks ``bf16-mixed`` where the hardware runs it natively, see :func:`auto_precision`)
PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed")

#: /proc/cpuinfo flags of a CPU that runs bfloat16 matmuls natively (Intel AMX, AVX-512 BF16)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")

#: environment variable pinning what ``auto`` resolves to (:func:`auto_precision`)
AUTO_ENV = "FUSIONSEG_AUTO_PRECISION"


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (its first ``flags`` line); empty where that
    file is missing or unreadable (not Linux). Tests monkeypatch this function to fake a CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cuda_has_bf16() -> bool:
    """Whether a CUDA GPU is there and runs bfloat16 natively (``torch.cuda.is_bf16_supported``:
    compute capability 8.0+, e.g. A100 / H100; False on a V100 or T4, and without a GPU)."""
    try:
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    except (AssertionError, RuntimeError):
        return False


def auto_precision(device: torch.device | str) -> tuple[str, str]:
    """What ``precision: auto`` gives on ``device``, and why: ``("bf16-mixed", reason)`` on a
    CUDA GPU with bf16 support (:func:`cuda_has_bf16`) or a CPU with AMX or AVX-512 BF16
    (:func:`cpu_has_native_bf16`), ``("32-true", reason)`` elsewhere. bf16 autocast on a CPU
    without them takes oneDNN's reference paths: 8.6x slower than fp32 on an AVX2 EPYC
    (issue 24), while AMX made a StitchFusion MiT-B2 training step 1.9x faster.

    The environment variable ``FUSIONSEG_AUTO_PRECISION`` (a name of :data:`PRECISIONS` other
    than ``auto``) pins the answer, e.g. ``32-true`` for results that must not depend on the
    machine (the test suite sets it)."""
    pinned = os.environ.get(AUTO_ENV)
    if pinned:
        if pinned not in PRECISIONS or pinned == "auto":
            raise ConfigError(f"{AUTO_ENV}={pinned!r}: choose one of "
                              f"{', '.join(p for p in PRECISIONS if p != 'auto')}")
        return ("32-true" if pinned == "32" else pinned), f"auto: {AUTO_ENV}={pinned}"
    if torch.device(device).type == "cuda":
        if cuda_has_bf16():
            return "bf16-mixed", "auto: this CUDA GPU supports bf16"
        return "32-true", "auto: no CUDA GPU with bf16 support"
    if cpu_has_native_bf16():
        found = [f for f in BF16_CPU_FLAGS if f in cpu_flags()]
        how = f" ({', '.join(found)})" if found else ""
        return "bf16-mixed", f"auto: this CPU runs bf16 natively{how}"
    return "32-true", "auto: this CPU has no AMX or AVX-512-BF16"


def describe_precision(precision: str | int | None, device: torch.device | str,
                       strict: bool = True) -> str:
    """One line for the start of a run: ``"precision: 32-true (auto: this CPU has no AMX or
    AVX-512-BF16)"`` or ``"precision: bf16-mixed (train.precision)"``.

    Raises:
        ConfigError: see :func:`resolve_precision`.
    """
    resolved = resolve_precision(precision, device, strict=strict)
    why = auto_precision(device)[1] if _is_auto(precision) else "train.precision"
    return f"precision: {resolved} ({why})"


def inference_precision(configured: str | int | None, stored: str | None,
                        device: torch.device | str) -> tuple[str, str]:
    """The precision to evaluate or predict at on ``device``, and why.

    ``configured`` (``train.precision`` of the config in use, e.g. ``eval --set
    train.precision=32`` or ``predict --config``) wins when it is not ``auto``; else the
    precision the checkpoint was trained at (``stored``: its ``fusionseg_precision``) where
    this device runs it natively (``16-mixed`` off CUDA becomes ``bf16-mixed``); else (no
    stored value, an old or released file, or bf16 on a CPU without AMX / AVX-512 BF16, where
    it is several times slower than fp32) ``auto`` on this device.

    Raises:
        ConfigError: an unknown ``configured`` name.
    """
    if not _is_auto(configured):
        return resolve_precision(configured, device, strict=False), "train.precision"
    auto, why = auto_precision(device)
    if stored is None or str(stored) not in PRECISIONS or _is_auto(stored):
        return auto, why
    p = resolve_precision(stored, device, strict=False)
    if p == "bf16-mixed" and auto != "bf16-mixed":
        return auto, f"{why}; the checkpoint was trained at {stored}"
    return p, "the checkpoint's training precision"


def _is_auto(precision: str | int | None) -> bool:
    return precision is None or str(precision) == "auto"


def resolve_precision(precision: str | int | None, device: torch.device | str,
                      strict: bool = True) -> str:
    """The precision to run at on ``device``: ``auto`` or ``None`` -> :func:`auto_precision`
    (``bf16-mixed`` where the hardware runs bf16 natively, ``32-true`` elsewhere); ``32`` ->
    ``32-true``. With ``strict=False`` (evaluating or predicting with a checkpoint trained at
    ``16-mixed`` on a GPU), ``16-mixed`` off CUDA becomes ``bf16-mixed``.

    Raises:
        ConfigError: an unknown name, or (``strict``) ``16-mixed`` on a device other than CUDA
            (fp16 autocast needs a GPU; use ``bf16-mixed`` on CPU).
    """
    dev = torch.device(device).type
    if _is_auto(precision):
        return resolve_precision(auto_precision(dev)[0], dev, strict)
    p = str(precision)
    if p not in PRECISIONS:
        raise ConfigError(f"precision {p!r} unknown; choose one of {', '.join(PRECISIONS)}")
    if p == "16-mixed" and dev != "cuda":
        if not strict:
            return "bf16-mixed"
        raise ConfigError("precision 16-mixed needs a CUDA GPU; use bf16-mixed on CPU")
    return "32-true" if p == "32" else p


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (AMX or AVX-512 BF16: a flag of
    :data:`BF16_CPU_FLAGS` in :func:`cpu_flags`); without it, oneDNN's bf16 convolutions and
    matmuls take slow reference paths. Where ``/proc/cpuinfo`` cannot be read (not Linux),
    oneDNN's own check answers."""
    flags = cpu_flags()
    if flags:
        return any(f in flags for f in BF16_CPU_FLAGS)
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
