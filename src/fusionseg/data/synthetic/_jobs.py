"""The process pool the built-in renderers share."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["run_jobs"]


def run_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int | None = None,
             progress: Callable[[int, int], None] | None = None,
             chunksize: int | None = 1) -> list[Any]:
    """``[fn(j) for j in jobs]`` in ``workers`` processes (default: every core; 1 = in this
    process), results in completion order; ``progress(done, total)`` after each job.
    ``chunksize=None`` sends ``total / (4 workers)`` jobs at a time (at most 8), for many small
    jobs.

    Fork where available: it skips re-importing the package (``fusionseg.data`` pulls in torch)
    in every worker, and the renderers' jobs only run numpy / Pillow / tifffile code, so forking
    a process with torch loaded is safe. Every job seeds its own RNG, so the output does not
    depend on ``workers``.
    """
    total = len(jobs)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    workers = max(1, min(workers, total)) if total else 1
    results: list[Any] = []

    def done(r: Any) -> None:
        results.append(r)
        if progress is not None:
            progress(len(results), total)

    if workers == 1:
        for j in jobs:
            done(fn(j))
        return results
    if chunksize is None:
        chunksize = max(1, min(8, total // (4 * workers)))
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods and os.name == "posix" else "spawn")
    with ctx.Pool(workers) as pool:
        for r in pool.imap_unordered(fn, jobs, chunksize=chunksize):
            done(r)
    return results
