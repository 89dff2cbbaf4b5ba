"""ONNX Runtime vs PyTorch inference latency of exported fusionseg models (CPU, fp32).

Models (random weights, seeded; the model sections of the shipped configs):

* ``quickstart``: ``configs/quickstart.yaml`` (sum fusion, MiT-B0 shared over rgb / depth /
  thermal, SegFormer head, 25 classes);
* ``stitchfusion_b2``: ``configs/synthcity/stitchfusion.yaml`` with ``backbone: mit_b2``
  (pairwise MultiAdapters, four modalities, 25 classes).

Each model is written as a training-style checkpoint, exported by
:func:`fusionseg.inference.export_onnx` at ``--size`` (its parity check included) and timed on
the same seeded batch: PyTorch (``torch.inference_mode``, eval) and ONNX Runtime
(:class:`fusionseg.inference.OnnxModel`, CPUExecutionProvider), both with ``--threads`` intra-op
threads (``torch.set_num_threads``, ``intra_op_num_threads``). The table gives the median
wall milliseconds over ``--runs`` calls after ``--warmup`` untimed ones, and
``torch / ort`` (> 1: ONNX Runtime is faster). A GEMM throughput line calibrates the numbers
on a shared machine. Example::

    python benchmarks/onnx_latency.py --size 512 --runs 10 --warmup 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gemm_gflops, time_steps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "quickstart": (ROOT / "configs" / "quickstart.yaml", {}),
    "stitchfusion_b2": (ROOT / "configs" / "synthcity" / "stitchfusion.yaml",
                        {"backbone": "mit_b2"}),
}
NUM_CLASSES = 25  # DELIVER / synthcity


def write_checkpoint(name: str, size: int, path: Path) -> tuple[Path, torch.nn.Module]:
    """Random-weight checkpoint of model ``name`` in the layout training writes."""
    from fusionseg.config import config_from_dict, load_config
    from fusionseg.engine.runner import model_spec
    from fusionseg.models import create_model

    cfg_path, model_overrides = MODELS[name]
    raw = load_config(cfg_path).model_dump(mode="json")
    raw["model"].update(model_overrides, num_classes=NUM_CLASSES, pretrained=None)
    raw["data"]["crop_size"] = [size, size]
    cfg = config_from_dict(raw, source=str(cfg_path))
    torch.manual_seed(0)
    model = create_model(model_spec(cfg, for_checkpoint=True)).eval()
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "fusionseg_config": cfg.model_dump(mode="json")}, path)
    return path, model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--static", action="store_true", help="export with fixed batch and size")
    args = p.parse_args(argv)

    from fusionseg.inference import OnnxModel, export_onnx

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, {args.size}x{args.size}, "
          f"batch {args.batch}; GEMM {gemm_gflops():.0f} GFLOP/s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            ckpt, model = write_checkpoint(name, args.size, Path(tmp) / f"{name}.ckpt")
            report = export_onnx(ckpt, Path(tmp) / f"{name}.onnx", dynamic=not args.static)
            onnx_model = OnnxModel(report.path, threads=args.threads)
            g = torch.Generator().manual_seed(0)
            batch = {m: torch.randn(args.batch, 3, args.size, args.size, generator=g)
                     for m in model.modalities}

            def run_torch(model=model, batch=batch):
                with torch.inference_mode():
                    return model(batch)

            t_torch = time_steps(run_torch, args.warmup, args.runs)
            t_ort = time_steps(lambda om=onnx_model, b=batch: om(b), args.warmup, args.runs)
            diff = float((onnx_model(batch) - run_torch()).abs().max())
            params = sum(q.numel() for q in model.parameters()) / 1e6
            mt, mo = statistics.median(t_torch) * 1e3, statistics.median(t_ort) * 1e3
            rows.append((name, f"{params:.1f}", f"{report.seconds:.0f}",
                         "dyn" if report.dynamic_size else "static", f"{diff:.1e}",
                         f"{mt:.0f}", f"{mo:.0f}", f"{mt / mo:.2f}"))
            del onnx_model, model
    head = ("model", "params M", "export s", "size axes", "max|diff|", "torch ms",
            "ort ms", "torch/ort")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    for r in [head, None, *rows]:
        if r is None:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        else:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
