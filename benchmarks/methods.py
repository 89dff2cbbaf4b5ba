"""Every method at its standard encoder and modalities: params, GFLOPs, inference latency,
training step and peak memory, one ``fusionseg bench`` subprocess per row.

Each row runs in a fresh process (peak RSS is a process high-water mark), after an fp32 GEMM
calibration in that process (``_common.gemm_gflops``) so a row measured on a loaded machine
can be told apart. ``% of peak`` is the forward's achieved FLOP rate (GFLOPs / latency) over
that calibration (bf16 rows: over the fp32 calibration too). Example::

    python benchmarks/methods.py --size 512 --batch 2 --steps 1 --precision 32 --out bench.json
    python benchmarks/methods.py --only stitchfusion --set model.grad_checkpointing=true

Rows (``ROWS``): the published recipe's config of each method; ``--size`` replaces the crop
(the DELIVER recipes train at 1024 px, MoBaNet at 256, AsymFusion at 500).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: name -> (config, standard size px)
ROWS: dict[str, tuple[str, int]] = {
    "sum_fusion": ("configs/baselines/deliver_sum_fusion.yaml", 1024),
    "stitchfusion": ("configs/stitchfusion/deliver_rgbdel.yaml", 1024),
    "mle_sam": ("configs/mle_sam/deliver_rgbdel.yaml", 1024),
    "mobanet": ("configs/mobanet/vaihingen.yaml", 256),
    "asymfusion": ("configs/asymfusion/nyudv2_rgbd.yaml", 500),
}

CALIBRATE = (
    "import sys; sys.path.insert(0, {bench!r}); import torch; torch.set_num_threads({threads}); "
    "from _common import gemm_gflops; print(gemm_gflops())"
)


def run_row(name: str, args: argparse.Namespace) -> dict:
    config, standard = ROWS[name]
    size = args.size or standard
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.json"
        cmd = [sys.executable, "-m", "fusionseg.cli", "bench", str(ROOT / config),
               "--size", str(size), "--batch", str(args.batch), "--steps", str(args.steps),
               "--json", str(out)]
        if args.precision:
            cmd += ["--precision", args.precision]
        for item in args.set or []:
            cmd += ["--set", item]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"name": name, "error": (proc.stderr or proc.stdout).strip()[-400:]}
        metrics = json.loads(out.read_text())
    threads = metrics.get("threads", 2)
    gemm = float(subprocess.run(
        [sys.executable, "-c", CALIBRATE.format(bench=str(ROOT / "benchmarks"), threads=threads)],
        capture_output=True, text=True, check=True).stdout.strip())
    rate = metrics["gflops"] / (metrics["latency_ms"] / 1e3) if metrics.get("gflops") else None
    return {"name": name, "config": config, "size": size, "gemm_gflops": gemm,
            "forward_gflops_per_s": rate,
            "fraction_of_peak": None if rate is None else rate / gemm, **metrics}


def fmt(row: dict) -> str:
    if "error" in row:
        return f"| {row['name']} | error: {row['error']} |"
    frac = row["fraction_of_peak"]
    return (f"| {row['name']} | {row['config']} | {row['size']} | {row['precision']} | "
            f"{row['params_total'] / 1e6:.1f} / {row['params_trainable'] / 1e6:.1f} | "
            f"{row['gflops']:.0f} | {row['latency_ms'] / 1e3:.2f} | {row['train_step_s']:.2f} | "
            f"{row['train_step_cpu_s']:.1f} | {row['train_peak_memory_mb'] / 1e3:.2f} | "
            f"{row['gemm_gflops']:.0f} | {'-' if frac is None else f'{100 * frac:.0f}%'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", choices=list(ROWS), help="rows to run (default all)")
    ap.add_argument("--size", type=int, default=None, help="square input px (default: each "
                    "recipe's crop)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--precision", default=None, help="32, bf16-mixed, 16-mixed (GPU)")
    ap.add_argument("--set", action="append", help="config override for every row")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()
    rows = []
    print("| method | config | px | precision | params M (total / trainable) | GFLOPs | "
          "inference s | train step s | train CPU s | train peak GB | GEMM GFLOP/s | "
          "% of peak |")
    print("| --- " * 12 + "|")
    for name in args.only or list(ROWS):
        row = run_row(name, args)
        rows.append(row)
        print(fmt(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
