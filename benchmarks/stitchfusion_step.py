"""StitchFusion speed and memory: training step, inference, peak RSS, ours vs released-style.

Each (model, mode) runs in its own subprocess, so that the peak RSS (a process high-water mark)
belongs to that configuration alone. Models:

* ``ours``: ``create_model({"name": "stitchfusion", ...})`` (streams batched through the shared
  encoder, SDPA attention);
* ``release``: ``tests/reference/stitchfusion_release.py``, a literal re-implementation of the
  authors' released code (one stream at a time, explicit attention matrices), the
  "released-style" baseline;
* ``official``: the authors' released code itself (``stitchfusion('stitchfusion-B2', ...)``
  from ``semseg/models/stitchfusion.py`` of https://github.com/LiBingyu01/StitchFusion), imported
  from a local checkout given with ``--official PATH`` (nothing of it ships with fusionseg); its
  backbone is hard-wired to pairwise adapters (``Block_every_one``) + FeatureCross;
* ``sum``: the ``sum_fusion`` baseline (no adapters, no FeatureCross), for reference.

A training step is forward + cross-entropy on random labels + backward + AdamW step, in train
mode (fused AdamW for fusionseg's models, as its engine runs it; the default AdamW for the
release's, as its ``semseg/optimizers.py`` builds it); inference is one forward in eval mode under ``torch.inference_mode``. On CPU, fusionseg's processes keep
freed buffers in the heap (``fusionseg.runtime.configure_cpu_allocator``, which ``fusionseg
train`` / ``eval`` / ``predict`` / ``bench`` call) and the release's use glibc's defaults, as
each code base's own scripts run; ``--allocator all`` gives both the heap reuse (a comparison
of the model code alone), ``--allocator system`` neither. Times are the mean
(and min) wall time over ``--steps`` timed repetitions after ``--warmup`` untimed ones; ``CPU
s`` is the process CPU time per repetition (all threads), a load-independent measure of the
work on a shared machine. Example (the
target configuration: MiT-B2, pairwise + FeatureCross, 2 modalities, 512x512, batch 2)::

    python benchmarks/stitchfusion_step.py --backbone mit_b2 --modalities 2 --size 512 \\
        --batch 2 --steps 3 --models ours release

and against the authors' code itself (a clone of their repository at ``../StitchFusion``)::

    python benchmarks/stitchfusion_step.py --models ours official --official ../StitchFusion

On a GPU (``--device cuda``), ``--bf16`` runs under bf16 autocast and the script also reports
images/s of inference and ``torch.cuda.max_memory_allocated``, e.g. the 4-modality 1024x1024
configuration::

    python benchmarks/stitchfusion_step.py --device cuda --bf16 --modalities 4 --size 1024 \\
        --batch 2 --models ours
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODALITIES = ["rgb", "depth", "event", "lidar", "thermal", "nir", "aolp", "dolp"]
DIMS = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3), 512),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3), 512),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3), 512),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3), 512),
}


ALLOCATOR_NOTE = {
    "fusionseg": "fusionseg's processes (as its commands run), glibc defaults for the release",
    "all": "every process",
    "system": "none (glibc defaults everywhere)",
}


def import_official(root: Path):
    """Import the released ``semseg.models.stitchfusion`` class from a checkout at ``root``.

    ``semseg/__init__.py`` of the release also imports its datasets (and ``tabulate``); only
    the model subpackage is needed, so ``semseg`` is registered as a bare namespace first.

    Raises:
        FileNotFoundError: ``root`` has no ``semseg/models/stitchfusion.py``.
    """
    import importlib
    import types

    if not (root / "semseg" / "models" / "stitchfusion.py").is_file():
        raise FileNotFoundError(f"{root}: no semseg/models/stitchfusion.py (a StitchFusion checkout?)")
    pkg = types.ModuleType("semseg")
    pkg.__path__ = [str(root / "semseg")]
    sys.modules["semseg"] = pkg
    return importlib.import_module("semseg.models.stitchfusion").stitchfusion


def build(args: argparse.Namespace, which: str, mods: list[str]):
    """``(model, call(images list) -> logits)``."""
    if which == "official":
        if args.adapter != "pairwise" or args.fusion != "featurecross":
            raise SystemExit("the official model is pairwise + featurecross only")
        variant = args.backbone.split("_")[1].upper()
        cls = import_official(args.official)
        model = cls(f"stitchfusion-{variant}", args.num_classes, [f"m{i}" for i in range(len(mods))])
        return model, lambda xs: model(list(xs))
    if which == "release":
        sys.path.insert(0, str(ROOT / "tests"))
        from reference.stitchfusion_release import StitchFusionRelease

        dims, depths, dec = DIMS[args.backbone]
        model = StitchFusionRelease(
            args.num_classes,
            len(mods),
            (args.adapter,) * 4,
            args.fusion,
            embed_dims=dims,
            depths=depths,
            decoder_dim=dec,
        )
        return model, lambda xs: model(xs)

    from fusionseg.models import create_model

    spec = {
        "backbone": args.backbone,
        "modalities": mods,
        "num_classes": args.num_classes,
    }
    if which == "sum":
        spec["name"] = "sum_fusion"
    else:
        spec.update(name="stitchfusion", adapter=args.adapter, fusion=args.fusion,
                    freeze_backbone=args.freeze_backbone)
    model = create_model(spec)
    return model, lambda xs: model(dict(zip(mods, xs, strict=True)))


def dev_is_cpu(args: argparse.Namespace) -> bool:
    return args.device == "cpu"


def child(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    which, mode = args.child.split(":")
    # fusionseg's train / eval / predict / bench keep freed buffers in the heap on CPU
    # (fusionseg.runtime.configure_cpu_allocator); "ours" and "sum" run as those commands run
    # them, the released code as its own scripts do (glibc's defaults) unless --allocator all.
    if dev_is_cpu(args) and (args.allocator == "all"
                             or (args.allocator == "fusionseg" and which in ("ours", "sum"))):
        from fusionseg.runtime import configure_cpu_allocator

        configure_cpu_allocator()
    mods = MODALITIES[: args.modalities]
    dev = torch.device(args.device)
    model, call = build(args, which, mods)
    model.to(dev)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(args.batch, 3, args.size, args.size, generator=g).to(dev) for _ in mods]
    label = torch.randint(0, args.num_classes, (args.batch, args.size, args.size), generator=g)
    label = label.to(dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    params = [p for p in model.parameters() if p.requires_grad]
    res: dict = {
        "model": which,
        "mode": mode,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in params),
    }
    if mode == "train":
        model.train()
        # Each code base's own optimizer: fusionseg's engine uses the fused AdamW kernel
        # (engine.module.supports_fused_adamw), the release's get_optimizer the default one.
        fused = which in ("ours", "sum") and dev.type in ("cpu", "cuda")
        opt = torch.optim.AdamW(params, lr=1e-5, fused=fused or None)

        def step() -> None:
            with amp:
                loss = F.cross_entropy(call(xs), label, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode(), amp:
                call(xs)

    times, cpu = [], []
    for i in range(args.warmup + args.steps):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    res["s_mean"] = sum(times) / len(times)
    res["s_min"] = min(times)
    res["cpu_s_mean"] = sum(cpu) / len(cpu)
    res["images_per_s"] = args.batch / res["s_mean"]
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if dev.type == "cuda":
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mit_b2", choices=sorted(DIMS))
    ap.add_argument("--modalities", type=int, default=2)
    ap.add_argument("--adapter", default="pairwise", choices=["shared", "pairwise", "directional"])
    ap.add_argument("--fusion", default="featurecross", choices=["sum", "featurecross"])
    ap.add_argument("--freeze-backbone", action="store_true")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--num-classes", type=int, default=25)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--models", nargs="+", default=["ours", "release"],
                    choices=["ours", "release", "official", "sum"])
    ap.add_argument("--official", type=Path, help="checkout of the authors' StitchFusion repository")
    ap.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument("--allocator", default="fusionseg", choices=["fusionseg", "all", "system"],
                    help="CPU heap reuse (fusionseg.runtime.configure_cpu_allocator): in "
                         "fusionseg's processes only, as its commands run them (fusionseg); in "
                         "every process, the release's too (all); in none (system)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if "official" in args.models and args.official is None and not args.child:
        ap.error("--models official needs --official PATH (a clone of LiBingyu01/StitchFusion)")
    if args.child:
        child(args)
        return
    print(
        f"StitchFusion {args.backbone} {args.adapter} + {args.fusion}, {args.modalities} "
        f"modalities, {args.size}x{args.size}, batch {args.batch}, {args.device}"
        f"{' bf16' if args.bf16 else ''}; {args.steps} timed after {args.warmup} warm-up; "
        f"heap reuse: {ALLOCATOR_NOTE[args.allocator]}"
    )
    print(f"{'model':>8} {'mode':>6} {'s (mean)':>9} {'s (min)':>8} {'CPU s':>7} {'img/s':>7} "
          f"{'peak RSS MB':>12} {'params M':>9} {'trainable M':>12}")
    passthrough = list(sys.argv[1:])
    for flag in ("--models", "--modes"):  # drop these and their values
        if flag in passthrough:
            i = passthrough.index(flag)
            j = i + 1
            while j < len(passthrough) and not passthrough[j].startswith("--"):
                j += 1
            del passthrough[i:j]
    results = []
    for which in args.models:
        for mode in args.modes:
            proc = subprocess.run(
                [sys.executable, __file__, *passthrough, "--child", f"{which}:{mode}"],
                capture_output=True,
                text=True,
            )
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"{which:>8} {mode:>6} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(line[len("RESULT "):])
            results.append(r)
            extra = f"  cuda peak {r['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in r else ""
            print(
                f"{which:>8} {mode:>6} {r['s_mean']:>9.2f} {r['s_min']:>8.2f} {r['cpu_s_mean']:>7.2f} "
                f"{r['images_per_s']:>7.2f} {r['peak_rss_mb']:>12.0f} "
                f"{r['params_total'] / 1e6:>9.3f} {r['params_trainable'] / 1e6:>12.3f}{extra}"
            )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
