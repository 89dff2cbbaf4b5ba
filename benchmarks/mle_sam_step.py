"""MLE-SAM speed and memory on CPU: training step, inference forward, peak RSS.

    python benchmarks/mle_sam_step.py                          # Hiera-B+, 512 px, 2 and 4 modalities
    python benchmarks/mle_sam_step.py --backbone sam2.1_hiera_t --size 256 --modalities 4

Each configuration runs in its own subprocess (so peak RSS is its own): a training step =
forward (train mode, auxiliary head on) + the loss through SegmentationCriterion + backward +
AdamW over the trainable parameters (LoRA experts, routers, heads); inference = an eval-mode
forward under ``torch.no_grad``. Random weights (speed does not depend on them), batch 1 by
default. Prints the fp32 GEMM calibration (GFLOP/s of a 2048^3 matmul) so runs on a loaded
machine can be told apart, and one JSON line per configuration.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import gemm_gflops, peak_rss_gb, time_steps, train_step_fn

MODALITIES = ["rgb", "depth", "event", "lidar"]


def measure(args: argparse.Namespace) -> dict:
    import torch

    from fusionseg.engine.losses import SegmentationCriterion
    from fusionseg.models import create_model
    from fusionseg.runtime import configure_cpu_allocator

    configure_cpu_allocator()
    torch.manual_seed(0)
    mods = MODALITIES[: args.modalities]
    model = create_model({"name": "mle_sam", "backbone": args.backbone, "modalities": mods,
                          "num_classes": 25})
    s, b = args.size, args.batch
    batch = {m: torch.randn(b, 3, s, s) for m in mods}
    batch["label"] = torch.randint(0, 25, (b, s, s))
    out = {"backbone": args.backbone, "modalities": len(mods), "size": s, "batch": b,
           "threads": torch.get_num_threads(), **model.param_counts(),
           "trainable_over_trunk": round(model.trainable_fraction(), 4)}
    if args.what == "train":
        opt = torch.optim.AdamW(model.param_groups(6e-4, 0.01, 1.0))
        model.train()
        times = time_steps(train_step_fn(model, batch, opt, SegmentationCriterion("ce")),
                           args.warmup, args.steps)
    else:
        model.eval()
        with torch.no_grad():
            times = time_steps(lambda: model(batch), args.warmup, args.steps)
    out.update(what=args.what, s_mean=round(sum(times) / len(times), 3),
               s_min=round(min(times), 3),
               peak_rss_gb=round(peak_rss_gb(), 2))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="sam2.1_hiera_b+")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--modalities", type=int, nargs="+", default=[2, 4])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--what", choices=["train", "infer"], default=None,
                   help="(internal) measure one configuration in this process")
    args = p.parse_args()
    if args.what is not None:
        args.modalities = args.modalities[0]
        print(json.dumps(measure(args)), flush=True)
        return
    print(json.dumps({"gemm_gflops": round(gemm_gflops(), 1)}), flush=True)
    for n in args.modalities:
        for what in ("train", "infer"):
            cmd = [sys.executable, __file__, "--backbone", args.backbone, "--size",
                   str(args.size), "--batch", str(args.batch), "--modalities", str(n),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--what", what]
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
