"""AsymFusion training step on CPU: time and peak memory (run one configuration per process).

    python benchmarks/asymfusion_step.py --backbone resnet50 --size 480 640 --batch 2 --steps 3

Forward (both streams, shift-shuffle fusion, per-stream + ensemble logits) + the loss through
SegmentationCriterion (NLL of every stream and of the ensemble) + backward + SGD (momentum 0.9,
the published optimiser), random weights, encoder BN statistics frozen as released. Prints one
JSON line with the mean / min step time, the peak RSS of the process (MB) and a fp32 GEMM
calibration (GFLOPS of a 2048^3 matmul) that tells a loaded machine apart.
"""

from __future__ import annotations

import argparse
import json

from _common import gemm_gflops, peak_rss_gb, time_steps, train_step_fn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, nargs=2, default=(480, 640))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--classes", type=int, default=40)
    args = p.parse_args()

    import torch

    from fusionseg.engine.losses import SegmentationCriterion
    from fusionseg.models import create_model
    from fusionseg.runtime import configure_cpu_allocator

    configure_cpu_allocator()
    gemm = gemm_gflops()
    torch.manual_seed(0)
    model = create_model({"name": "asymfusion", "backbone": args.backbone,
                          "modalities": ["rgb", "depth"], "num_classes": args.classes}).train()
    h, w = args.size
    batch = {"rgb": torch.randn(args.batch, 3, h, w), "depth": torch.randn(args.batch, 1, h, w),
             "label": torch.randint(0, args.classes, (args.batch, h, w))}
    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=5e-4,
                          momentum=0.9, weight_decay=1e-5)
    times = time_steps(train_step_fn(model, batch, opt, SegmentationCriterion("ce")),
                       args.warmup, args.steps)
    print(json.dumps({"backbone": args.backbone, "size": [h, w], "batch": args.batch,
                      "threads": torch.get_num_threads(), "gemm_gflops": round(gemm, 1),
                      **model.param_counts(), "step_s_mean": sum(times) / len(times),
                      "step_s_min": min(times),
                      "peak_rss_mb": peak_rss_gb() * 1024}))


if __name__ == "__main__":
    main()
