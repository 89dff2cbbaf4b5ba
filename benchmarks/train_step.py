"""Training-step time and peak RSS of sum fusion with 1, 2 and 4 modalities.

Each configuration runs in its own subprocess so that the peak RSS (a process high-water mark)
is per configuration. Example::

    python benchmarks/train_step.py --backbone mit_b2 --size 512 --batch 2 --steps 3

Target on 2 CPU cores: MiT-B2 sum fusion, 2 modalities, 512x512, batch 2: < 10 s per training
step and < 5 GB peak RSS.

Columns: mean and min wall time per step (forward + cross-entropy + backward + AdamW), the
process CPU time per step (all threads), peak RSS, and a GEMM calibration (fp32 GFLOPS of a
2048^3 matmul measured in the same process just before) that shows whether other load on the
machine slowed the run: compare runs only at similar calibration numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import gemm_gflops

MODALITIES = ["rgb", "depth", "event", "lidar", "thermal", "nir"]


def child(args: argparse.Namespace) -> None:
    import torch

    from fusionseg.bench import make_random_batch, measure
    from fusionseg.models import create_model
    from fusionseg.runtime import configure_cpu_allocator

    tuned = False if args.no_malloc_tuning else configure_cpu_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mods = MODALITIES[: args.child]
    model = create_model(
        {
            "name": "sum_fusion",
            "backbone": args.backbone,
            "modalities": mods,
            "num_classes": args.num_classes,
            "batch_modalities": not args.no_batch_modalities,
        }
    )
    batch = make_random_batch(mods, args.batch, args.size, args.num_classes)
    calib = gemm_gflops()
    res = measure(model, batch, steps=args.steps, warmup=args.warmup, inference=False, flops=False)
    res.update(modalities=mods, malloc_tuned=tuned, gemm_gflops=calib)
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mit_b2")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--num-classes", type=int, default=25)
    ap.add_argument("--modality-counts", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument(
        "--no-batch-modalities",
        action="store_true",
        help="run one encoder pass per modality instead of one concatenated batch",
    )
    ap.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="do not call fusionseg.runtime.configure_cpu_allocator() in the measured process",
    )
    ap.add_argument("--json", action="store_true", help="also print each result as JSON")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    print(
        f"sum_fusion {args.backbone}, {args.size}x{args.size}, batch {args.batch}, "
        f"{args.steps} timed steps after {args.warmup} warm-up, "
        f"batch_modalities={not args.no_batch_modalities}, "
        f"malloc_tuning={not args.no_malloc_tuning}"
    )
    print(
        f"{'modalities':>10} {'step s mean':>12} {'step s min':>11} {'cpu s/step':>11} "
        f"{'peak RSS MB':>12} {'GEMM GFLOPS':>12}"
    )
    flags = [
        f"--backbone={args.backbone}",
        f"--size={args.size}",
        f"--batch={args.batch}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--num-classes={args.num_classes}",
        f"--threads={args.threads}",
    ]
    flags += ["--no-batch-modalities"] * args.no_batch_modalities
    flags += ["--no-malloc-tuning"] * args.no_malloc_tuning
    for n in args.modality_counts:
        proc = subprocess.run(
            [sys.executable, __file__, *flags, "--child", str(n)], capture_output=True, text=True
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{n:>10} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(line[len("RESULT ") :])
        print(
            f"{n:>10} {r['train_step_s']:>12.2f} {r['train_step_s_min']:>11.2f} "
            f"{r['train_step_cpu_s']:>11.2f} {r['peak_memory_mb']:>12.0f} "
            f"{r['gemm_gflops']:>12.0f}",
            flush=True,
        )
        if args.json:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
