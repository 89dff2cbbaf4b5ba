"""MoBaNet speed on CPU: a training step, and whole-tile sliding-window throughput.

    python benchmarks/mobanet_step.py --backbone dinov2_vits14 --size 266 --batch 8 --steps 3
    python benchmarks/mobanet_step.py --slide --tile 2000 2500 --window 256 --stride 128

Training step: forward (MCRM on, hard-pixel auxiliary heads) + the loss through
SegmentationCriterion + backward + AdamW over the trainable parameters, random weights (speed
does not depend on them). Sliding window: one IRRG + DSM tile of the given size through
``predict_logits(mode="slide")`` in eval mode; prints seconds per tile and tiles per minute.
Also prints the fp32 GEMM calibration (GFLOPS of a 2048^3 matmul) so runs on a loaded machine
can be told apart. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import time

from _common import gemm_gflops, time_steps, train_step_fn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="dinov2_vits14")
    p.add_argument("--size", type=int, default=266)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--slide", action="store_true", help="measure sliding-window throughput")
    p.add_argument("--tile", type=int, nargs=2, default=(2000, 2500))
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--tiles", type=int, default=1)
    p.add_argument("--window-batch", type=int, default=8, help="windows per forward pass")
    p.add_argument("--bf16", action="store_true", help="torch.autocast(cpu, bfloat16)")
    args = p.parse_args()

    import torch

    from fusionseg.engine.losses import SegmentationCriterion
    from fusionseg.models import create_model
    from fusionseg.models.inference_modes import predict_logits
    from fusionseg.runtime import configure_cpu_allocator

    configure_cpu_allocator()
    torch.manual_seed(0)
    model = create_model({"name": "mobanet", "backbone": args.backbone,
                          "modalities": ["irrg", "dsm"], "num_classes": 6})
    counts = model.param_counts()
    amp = torch.autocast("cpu", torch.bfloat16) if args.bf16 else torch.autocast("cpu",
                                                                               enabled=False)
    base = {"backbone": args.backbone, "threads": torch.get_num_threads(), "bf16": args.bf16,
            "gemm_gflops": round(gemm_gflops(), 1), **counts}
    if not args.slide:
        s = args.size
        batch = {"irrg": torch.randn(args.batch, 3, s, s), "dsm": torch.rand(args.batch, 1, s, s),
                 "label": torch.randint(0, 6, (args.batch, s, s))}
        opt = torch.optim.AdamW(model.param_groups(2e-4, 0.05, 1.0))
        model.train()
        times = time_steps(train_step_fn(model, batch, opt, SegmentationCriterion("ce"), amp),
                           args.warmup, args.steps)
        print(json.dumps({**base, "what": "train_step", "size": s, "batch": args.batch,
                          "step_s_mean": sum(times) / len(times), "step_s_min": min(times)}))
        return
    h, w = args.tile
    tile = {"irrg": torch.randn(1, 3, h, w), "dsm": torch.rand(1, 1, h, w)}
    model.eval()
    times = []
    for _ in range(args.tiles):
        t = time.perf_counter()
        with torch.no_grad(), amp:
            predict_logits(model, tile, mode="slide", window=(args.window,) * 2,
                           window_batch=args.window_batch,
                           stride=(args.stride,) * 2)
        times.append(time.perf_counter() - t)
    sec = sum(times) / len(times)
    print(json.dumps({**base, "what": "slide", "tile": [h, w], "window": args.window,
                      "stride": args.stride, "window_batch": args.window_batch, "s_per_tile": sec, "tiles_per_min": 60 / sec}))


if __name__ == "__main__":
    main()
