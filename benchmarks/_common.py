"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this
module is importable as ``_common`` from their folder)."""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable


def gemm_gflops(n: int = 2048, reps: int = 3) -> float:
    """Best-of-``reps`` fp32 ``n^3`` matmul throughput (GFLOP/s) on the current torch threads:
    the calibration printed next to timings, so runs on a loaded machine can be told apart."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def time_steps(step: Callable[[], object], warmup: int, steps: int) -> list[float]:
    """Wall seconds of ``steps`` calls of ``step()`` after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def train_step_fn(model, batch: dict, opt, crit, amp=None) -> Callable[[], None]:
    """One training step: ``crit(model(batch), label)``, backward, ``opt.step()``, zero grads
    (``crit`` a :class:`~fusionseg.engine.losses.SegmentationCriterion`; the forward under the
    ``amp`` context, e.g. ``torch.autocast("cpu", torch.bfloat16)``, when given)."""
    amp = amp if amp is not None else contextlib.nullcontext()

    def step() -> None:
        with amp:
            out = model(batch)
        loss, _ = crit(out, batch["label"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB; Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
