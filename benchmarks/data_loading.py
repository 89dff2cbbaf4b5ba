"""Reading speed of every benchmark dataset class at native resolution, and the DataLoader with
2 workers, compared with a MiT-B2 training step on the same CPU.

For each dataset a small tree in the release's exact layout is written at the release's native
resolution into a temporary folder (the generators of ``tests/fixtures``: image-like content,
the real dtypes, bit depths and file names), then measured:

- ``read/s`` and ``read cpu s``: ``dataset[i]`` in this process with one torch thread, as in a
  DataLoader worker (decode + conversion to float tensors at native size, no transform): wall
  samples/s and CPU seconds per sample (``time.process_time``, so other load on the machine does
  not inflate it);
- ``+train tf cpu s``: CPU seconds per sample including the training transforms (random scale
  0.5-2, 512x512 crop, flip, photometric, normalize);
- ``loader/s`` and ``train loader/s``: samples/s through ``DataLoader(num_workers=2,
  batch_size=2)`` with the Collate, without (native size) and with the training transforms;
  persistent workers, after one warm-up epoch;
- ``of B2 step``: the CPU time to prepare one batch of 2 (with transforms) divided by the MiT-B2
  training step for batch 2 at 512x512 on these cores (5-9 s; measure yours with
  ``benchmarks/train_step.py``): the share of a step the loader takes even though its workers
  share the 2 cores with the training process.

Whole 6000x6000 Potsdam tiles (~0.9 GB of tensors per sample) are only read in-process; the
windowed rows show how such tiles are trained on. Example::

    python benchmarks/data_loading.py                       # all datasets
    python benchmarks/data_loading.py --datasets mfnet fmb --samples 16
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import torch  # noqa: E402
from fixtures.deliver_tree import make_deliver_tree  # noqa: E402
from fixtures.fmb_tree import make_fmb_tree  # noqa: E402
from fixtures.isprs_tree import make_potsdam_tree, make_vaihingen_tree  # noqa: E402
from fixtures.mcubes_tree import make_mcubes_tree  # noqa: E402
from fixtures.mfnet_tree import make_mfnet_tree  # noqa: E402
from fixtures.muses_tree import make_muses_tree  # noqa: E402
from fixtures.nyudv2_tree import make_nyudv2_tree  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from fusionseg.data import Collate, build_train_transforms, create_dataset  # noqa: E402


def _setup(n: int) -> dict[str, tuple[Callable[[Path], object], dict, str]]:
    """name -> (tree writer, create_dataset kwargs, native size text)."""
    per4 = max(1, n // 4)
    return {
        "deliver": (
            lambda r: make_deliver_tree(r, conditions=("cloud",), splits=("val",), per_split=n,
                                        size=1042, modalities=("rgb", "hha", "depth", "event", "lidar")),
            {"name": "deliver", "split": "val", "modalities": ["rgb", "hha", "event", "lidar"]},
            "1042x1042",
        ),
        "mcubes": (
            lambda r: make_mcubes_tree(r, splits={"val": n}, height=1024, width=1224),
            {"name": "mcubes", "split": "val", "modalities": ["rgb", "aolp", "dolp", "nir"]},
            "1024x1224 -> 1024x1032",
        ),
        "muses (npz)": (
            lambda r: make_muses_tree(r, splits={"val": per4}, height=1080, width=1920, fmt=".npz"),
            {"name": "muses", "split": "val", "modalities": ["rgb", "event", "lidar", "radar"]},
            "1080x1920",
        ),
        "muses (png)": (
            lambda r: make_muses_tree(r, splits={"val": per4}, height=1080, width=1920, fmt=".png"),
            {"name": "muses", "split": "val", "modalities": ["rgb", "event", "lidar", "radar"]},
            "1080x1920",
        ),
        "mfnet": (
            lambda r: make_mfnet_tree(r, splits={"test": n}, height=480, width=640),
            {"name": "mfnet", "split": "test", "modalities": ["rgb", "thermal"]},
            "480x640",
        ),
        "fmb": (
            lambda r: make_fmb_tree(r, splits={"test": n}, height=600, width=800),
            {"name": "fmb", "split": "test", "modalities": ["rgb", "thermal"]},
            "600x800",
        ),
        "nyudv2": (
            lambda r: make_nyudv2_tree(r, splits={"test": n}, height=480, width=640),
            {"name": "nyudv2", "split": "test", "modalities": ["rgb", "depth"]},
            "480x640",
        ),
        "vaihingen": (
            lambda r: make_vaihingen_tree(r, tiles=["1", "3"], height=2500, width=2000),
            {"name": "vaihingen", "split": "train", "modalities": ["irrg", "dsm"],
             "tiles": ["1"]},
            "2500x2000 tile",
        ),
        "vaihingen 1024 windows": (
            None,  # reuses the vaihingen tree
            {"name": "vaihingen", "split": "train", "modalities": ["irrg", "dsm"],
             "tiles": ["1", "3"], "tile_size": 1024, "stride": 512},
            "1024x1024 of 2500x2000",
        ),
        "potsdam": (
            lambda r: make_potsdam_tree(r, tiles=["2_10"], height=6000, width=6000, kinds=("RGB",)),
            {"name": "potsdam", "split": "train", "modalities": ["rgb", "dsm"], "tiles": ["2_10"]},
            "6000x6000 tile",
        ),
        "potsdam 1024 windows": (
            None,
            {"name": "potsdam", "split": "train", "modalities": ["rgb", "dsm"], "tiles": ["2_10"],
             "tile_size": 1024, "stride": 1024},
            "1024x1024 of 6000x6000",
        ),
    }


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def measure(ds, samples: int, workers: int, batch: int, loader: bool) -> dict[str, float]:
    """Per-sample costs in this process (one torch thread, as in a DataLoader worker) and,
    with ``loader``, DataLoader throughput without / with the training transforms."""
    n = min(samples, len(ds))
    train_tf = build_train_transforms(ds.specs, crop_size=(512, 512))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker (and immune to a busy second core)
    try:
        ds[0]  # first-touch costs (imports, page cache) out of the timing
        w0, c0 = time.perf_counter(), time.process_time()
        loaded = [ds[i] for i in range(n)]
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        c1 = time.process_time()
        for s in loaded:
            train_tf(s)
        tf_cpu = time.process_time() - c1
        del loaded
    finally:
        torch.set_num_threads(threads)
    out = {"n": n, "read_per_s": _rate(n, wall), "read_cpu": cpu / n, "train_cpu": (cpu + tf_cpu) / n}
    if not loader:
        return out
    for key, transform in (("loader", None), ("train_loader", train_tf)):
        ds.transform = transform
        sub = torch.utils.data.Subset(ds, range(n))
        dl = DataLoader(sub, batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
                        collate_fn=Collate(ds.modalities), drop_last=False)
        for _ in dl:  # warm-up epoch: worker start-up
            pass
        t0 = time.perf_counter()
        seen = 0
        for b in dl:
            seen += b["label"].shape[0]
        out[key] = _rate(seen, time.perf_counter() - t0)
        del dl
    ds.transform = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="*", default=None, help="subset of the rows (default all)")
    ap.add_argument("--samples", type=int, default=8, help="samples per dataset (tiles: fixed)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--step-seconds", type=float, nargs=2, default=(5.0, 9.0),
                    help="MiT-B2 training step (batch 2, 512x512) range on these cores")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the trees (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated trees")
    args = ap.parse_args()

    base = args.dir or Path(tempfile.mkdtemp(prefix="fusionseg_bench_data_"))
    base.mkdir(parents=True, exist_ok=True)
    rows = _setup(args.samples)
    names = args.datasets or list(rows)
    lo, hi = args.step_seconds
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs (load average {load:.1f}); DataLoader "
          f"{args.workers} workers, batch {args.batch}; trees in {base}")
    header = (f"{'dataset':<24} {'native size':<23} {'n':>3} {'read/s':>7} {'read cpu s':>10} "
              f"{'+train tf cpu s':>15} {'loader/s':>9} {'train loader/s':>14} {'of B2 step':>10}")
    print(header)
    print("-" * len(header))
    try:
        for name in names:
            writer, kwargs, size = rows[name]
            kwargs = dict(kwargs)
            ds_name = kwargs.pop("name")
            split = kwargs.pop("split")
            mods = kwargs.pop("modalities")
            root = base / ds_name if writer is None else base / name.split(" ")[0]
            if writer is not None and not root.exists():
                t0 = time.perf_counter()
                writer(root)
                print(f"  (wrote {name} tree in {time.perf_counter() - t0:.1f} s)", flush=True)
            ds = create_dataset(ds_name, root, split, mods, **kwargs)
            whole_big = "potsdam" == name  # ~0.9 GB of tensors per sample: no loader run
            r = measure(ds, args.samples, args.workers, args.batch, loader=not whole_big)
            per_batch = args.batch * r["train_cpu"]
            share = f"{100 * per_batch / hi:.0f}-{100 * per_batch / lo:.0f} %"
            print(f"{name:<24} {size:<23} {r['n']:>3} {r['read_per_s']:>7.2f} "
                  f"{r['read_cpu']:>10.3f} {r['train_cpu']:>15.3f} "
                  f"{r.get('loader', float('nan')):>9.2f} {r.get('train_loader', float('nan')):>14.2f} "
                  f"{share:>10}", flush=True)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\nread/s, read cpu s: dataset[i] in one process (1 torch thread), wall samples/s and CPU "
          f"s per sample at native size; +train tf cpu s: the same plus the training transforms "
          f"(scale, 512 crop, flip, photometric, normalize); loader/s, train loader/s: "
          f"DataLoader({args.workers} workers, batch {args.batch}) samples/s without / with them; "
          f"of B2 step: CPU time to prepare one batch of {args.batch} (with transforms) as a share "
          f"of a {lo:g}-{hi:g} s MiT-B2 training step (batch 2, 512x512) on these cores.")

if __name__ == "__main__":
    main()
