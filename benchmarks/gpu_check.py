"""GPU readiness check (issue 24, item 4): every registered method through the paths a GPU user
takes, one line per check, before anyone spends GPU hours on a run.

For every method registered with ``fusionseg.models.MODELS`` (its published recipe's model, or
with ``--tiny`` the tiny settings it registers):

* ``train``: one bf16-mixed training step (AdamW, cross-entropy) on ``--device``;
* ``emm``: one batch of the EMM protocol (every modality subset,
  :class:`fusionseg.engine.robustness.SubsetEvaluator`) at bf16-mixed on ``--device``;
* ``predict``: :func:`fusionseg.inference.predict` on two generated samples per modality
  (PNG files written from the modality specs) from a checkpoint written as training writes it;
  ``predict`` runs on the CPU (as the CLI does);
* ``onnx``: :func:`fusionseg.inference.export_onnx` of that checkpoint, checked against
  PyTorch with ONNX Runtime (CPU).

Then (not with ``--tiny``) the StitchFusion MiT-B2 4-modality (rgb, hha, event, lidar) row at
1024 x 1024, batch 2, bf16-mixed: training and inference images/s and the peak memory
(``torch.cuda.max_memory_allocated`` on CUDA, ``fusionseg.bench.measure``). Weights are random
(no download, no network). Each line is ``name  ok|FAIL  seconds  detail``; the exit status
is 1 when any check failed, 2 when the device is not there. Usage::

    python benchmarks/gpu_check.py                         # CUDA, the recipes' models
    python benchmarks/gpu_check.py --tiny --device cpu     # the test suite runs this
    python benchmarks/gpu_check.py --only stitchfusion mle_sam
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the model section of each method's published recipe (``--tiny`` off); methods not listed
#: (a method registered outside fusionseg) use their tiny settings
FULL_CONFIGS: dict[str, str] = {
    "sum_fusion": "configs/baselines/deliver_sum_fusion.yaml",
    "stitchfusion": "configs/stitchfusion/deliver_rgbdel.yaml",
    "mle_sam": "configs/mle_sam/deliver_rgbdel.yaml",
    "mobanet": "configs/mobanet/vaihingen.yaml",
    "asymfusion": "configs/asymfusion/nyudv2_rgbd.yaml",
}
#: models without a recipe config: their model section
FULL_MODELS: dict[str, dict] = {
    "segformer": {"name": "segformer", "backbone": "mit_b2", "modalities": ["rgb"]},
}
#: input size (px) per method: tiny (multiples of the encoders' strides and windows) and full
TINY_SIZES = {"mle_sam": 64, "mobanet": 42}
FULL_SIZES = {"mobanet": 252, "asymfusion": 480}
FULL_SIZE = 512
#: tiny overrides: AsymFusion's registered tiny RefineNet keeps 256 channels (a 256 MB ONNX
#: file); 16 exercise the same graph
TINY_OVERRIDES = {"asymfusion": {"decoder_channels": 16}}
#: the StitchFusion-B2 row
B2_CONFIG, B2_SIZE, B2_BATCH = "configs/stitchfusion/deliver_rgbdel.yaml", 1024, 2


def line(name: str, ok: bool | None, seconds: float, detail: str) -> str:
    """One report line: ``name  ok|FAIL|skip  seconds  detail``."""
    status = "skip" if ok is None else "ok" if ok else "FAIL"
    return f"{name:<28} {status:<4} {seconds:7.2f} s  {detail}"


def run_check(name: str, fn: Callable[[], str]) -> bool:
    """Run ``fn() -> detail``, print its line (an exception: FAIL with its last line), return
    whether it passed."""
    t = time.perf_counter()
    try:
        detail, ok = fn(), True
    except Exception as exc:  # noqa: BLE001 - every failure is a reported FAIL line
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        detail, ok = f"{type(exc).__name__}: {first}", False
        if "--verbose" in sys.argv:
            traceback.print_exc()
    print(line(name, ok, time.perf_counter() - t, detail), flush=True)
    return ok


def model_config(name: str, tiny: bool):
    """The run config of method ``name`` (a recipe's, or the registered tiny settings) and its
    input size (px)."""
    from fusionseg.config import config_from_dict, load_config
    from fusionseg.models import MODELS

    if tiny or (name not in FULL_CONFIGS and name not in FULL_MODELS):
        model = {"name": name, **dict(MODELS.entry(name).tiny or {}),
                 **TINY_OVERRIDES.get(name, {})}
        model = {k: list(v) if isinstance(v, tuple) else v for k, v in model.items()}
        size = TINY_SIZES.get(name, 32) if tiny else FULL_SIZE
        return config_from_dict({"name": name, "model": model,
                                 "data": {"crop_size": [size, size]}}), size
    size = FULL_SIZES.get(name, FULL_SIZE)
    if name in FULL_MODELS:
        cfg = config_from_dict({"name": name, "model": {"num_classes": 25, **FULL_MODELS[name]},
                                "data": {"crop_size": [size, size]}})
    else:
        cfg = load_config(ROOT / FULL_CONFIGS[name])
    cfg = cfg.model_copy(deep=True)
    cfg.model.num_classes = cfg.model.num_classes or 25
    cfg.data.crop_size = [size, size]
    cfg.model.pretrained = None  # random weights: nothing is downloaded
    return cfg, size


def channels_of(modalities: Sequence[str]) -> dict[str, int]:
    """Input channels of each modality (its spec's ``out_channels``; 3 when unregistered)."""
    from fusionseg.data.modalities import get_spec

    out = {}
    for m in modalities:
        try:
            out[m] = get_spec(m).out_channels
        except Exception:  # noqa: BLE001 - a modality without a registered spec
            out[m] = 3
    return out


def build(cfg):
    """The model of ``cfg`` with random weights (``model.pretrained`` is not read)."""
    from fusionseg.config import model_spec
    from fusionseg.models import create_model

    return create_model(model_spec(cfg, for_checkpoint=True))


def check_train(cfg, size: int, device: str, batch: int) -> str:
    """One bf16-mixed training step on a random batch; its time and peak memory."""
    from fusionseg.bench import make_random_batch, measure

    model = build(cfg).to(device)
    mods = list(cfg.model.modalities)
    b = make_random_batch(mods, batch, size, model.num_classes, device=device,
                          channels=channels_of(mods))
    r = measure(model, b, steps=1, warmup=0, inference=False, flops=False,
                precision="bf16-mixed")
    return (f"{r['train_step_s']:.3f} s/step, batch {batch} at {size} px, "
            f"peak {r['train_peak_memory_mb']:.0f} MB ({r['memory_kind']})")


def check_emm(cfg, size: int, device: str, batch: int) -> str:
    """One random batch through every EMM modality subset at bf16-mixed."""
    import torch

    from fusionseg.bench import make_random_batch
    from fusionseg.engine.robustness import (
        SubsetEvaluator,
        protocol_results,
        protocol_scenarios,
    )
    from fusionseg.models.inference_modes import inference_kwargs, predict_logits
    from fusionseg.runtime import autocast

    model = build(cfg).to(device).eval()
    mods = tuple(cfg.model.modalities)
    b = make_random_batch(mods, batch, size, model.num_classes, channels=channels_of(mods))
    ev = SubsetEvaluator(mods, [mods], model.num_classes, per_condition=False,
                         extra_scenarios=protocol_scenarios(mods, ["emm"]))

    def predict(sub: dict) -> torch.Tensor:
        with autocast("bf16-mixed", device):
            return predict_logits(model, sub, **inference_kwargs(cfg.eval)).float()

    with torch.no_grad():
        ev.update(b, predict, device)
    res = protocol_results(ev, "emm", {})
    n = len(res["subsets"])
    return f"{n} modality subset(s), batch {batch} at {size} px, mean mIoU {res['mean']}"


def write_checkpoint(cfg, path: Path):
    """A checkpoint as ``fusionseg train`` writes it (``model.`` keys, ``fusionseg_*``)."""
    import torch

    from fusionseg.data.modalities import get_spec

    model = build(cfg)
    k = model.num_classes
    torch.save({
        "state_dict": {f"model.{n}": v for n, v in model.state_dict().items()},
        "fusionseg_config": cfg.model_dump(mode="json"),
        "fusionseg_classes": [f"class{i}" for i in range(k)],
        "fusionseg_palette": [[(37 * i) % 256, (91 * i) % 256, (13 * i) % 256]
                              for i in range(k)],
        "fusionseg_specs": {m: get_spec(m).model_dump(mode="json")
                            for m in cfg.model.modalities},
        "fusionseg_precision": "bf16-mixed",
    }, path)
    return path


def write_inputs(modalities: Sequence[str], folder: Path, size: int, n: int = 2) -> list[str]:
    """``n`` random PNG files per modality under ``folder/<modality>/`` as its spec reads
    them (3 channels: RGB uint8; 1 channel: 16-bit for a 16-bit spec, else 8-bit gray);
    returns predict's ``MODALITY=DIR`` inputs."""
    import numpy as np
    from PIL import Image

    from fusionseg.data.modalities import get_spec

    rng = np.random.default_rng(0)
    for m in modalities:
        spec = get_spec(m)
        (folder / m).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            if spec.channels == 3:
                img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            elif spec.bit_depth == 16:
                img = Image.fromarray(rng.integers(0, 65536, (size, size), dtype=np.uint16))
            else:
                img = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8))
            img.save(folder / m / f"{i:04d}.png")
    return [f"{m}={folder / m}" for m in modalities]


def check_predict(ckpt: Path, cfg, size: int, tmp: Path) -> str:
    """``fusionseg predict`` on generated PNGs; raises when nothing was written."""
    from fusionseg.inference import predict

    inputs = write_inputs(list(cfg.model.modalities), tmp / "inputs", size)
    summary = predict(ckpt, inputs, tmp / "pred", on_error="stop")
    masks = sorted((tmp / "pred").rglob("*.png"))
    if not summary.written:
        raise RuntimeError(f"nothing written: {summary.lines()}")
    return f"{len(summary.written)} samples at {size} px on the CPU, {len(masks)} PNGs written"


def check_onnx(ckpt: Path, size: int, tmp: Path, tiny: bool, exporter: str = "auto") -> str:
    """Export with dynamic axes for tiny models; full models at a fixed size (the dynamic
    axes' extra ONNX Runtime comparisons at two more sizes take minutes on a CPU)."""
    from fusionseg.inference import export_onnx

    rep = export_onnx(ckpt, tmp / "model.onnx", size=(size, size), dynamic=tiny,
                      exporter=exporter)
    diff = "not checked" if rep.max_abs_diff is None else f"{rep.max_abs_diff:.1e}"
    return (f"{rep.exporter} exporter, opset {rep.opset}, {size} px, "
            f"max |ort - torch| {diff}")


def check_b2_row(device: str) -> str:
    """The StitchFusion MiT-B2 rgb+hha+event+lidar 1024 px row: images/s and peak memory."""
    import torch

    from fusionseg.bench import make_random_batch, measure
    from fusionseg.config import load_config

    cfg = load_config(ROOT / B2_CONFIG)
    cfg.model.pretrained = None
    cfg.model.num_classes = cfg.model.num_classes or 25
    model = build(cfg).to(device)
    mods = list(cfg.model.modalities)
    b = make_random_batch(mods, B2_BATCH, B2_SIZE, model.num_classes, device=device,
                          channels=channels_of(mods))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    r = measure(model, b, steps=3, warmup=1, flops=False, precision="bf16-mixed")
    return (f"{cfg.model.backbone} {'+'.join(mods)} {B2_SIZE}px batch {B2_BATCH} bf16-mixed: "
            f"train {B2_BATCH / r['train_step_s']:.2f} images/s "
            f"(peak {r['train_peak_memory_mb']:.0f} MB), inference "
            f"{B2_BATCH * 1000 / r['latency_ms']:.2f} images/s (peak {r['peak_memory_mb']:.0f} "
            f"MB, {r['memory_kind']})")


def method_checks(name: str, args: argparse.Namespace) -> bool:
    """The four checks of method ``name``; True when all passed."""
    cfg, size = model_config(name, args.tiny)
    ok = run_check(f"{name}/train_bf16", lambda: check_train(cfg, size, args.device, args.batch))
    ok &= run_check(f"{name}/emm_batch", lambda: check_emm(cfg, size, args.device, args.batch))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ckpt = tmp / "model.ckpt"

        def predict() -> str:
            write_checkpoint(cfg, ckpt)
            return check_predict(ckpt, cfg, size, tmp)

        # full models export at 256 px (252: a multiple of DINOv2's 14 px patches)
        export_size = size if args.tiny else min(size, 252 if name == "mobanet" else 256)
        ok &= run_check(f"{name}/predict", predict)
        ok &= run_check(f"{name}/onnx_export",
                        lambda: check_onnx(ckpt, export_size, tmp, args.tiny, args.exporter))
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; 0 when all passed, 1 when any failed, 2 when ``--device`` is absent."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--tiny", action="store_true",
                    help="the methods' tiny settings at 32-64 px; no StitchFusion-B2 row")
    ap.add_argument("--only", nargs="+", help="these methods (default: every registered one)")
    ap.add_argument("--batch", type=int, default=2, help="batch size of train and emm")
    ap.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"],
                    help="ONNX exporter (auto: dynamo, TorchScript where that fails)")
    ap.add_argument("--verbose", action="store_true", help="tracebacks of failed checks")
    args = ap.parse_args(argv)

    import torch

    from fusionseg.models import MODELS

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA GPU here (use --device cpu)", flush=True)
        return 2
    where = (torch.cuda.get_device_name(torch.device(args.device))
             if args.device.startswith("cuda") else "CPU")
    print(f"gpu_check on {args.device} ({where}), torch {torch.__version__}, "
          f"{'tiny' if args.tiny else 'recipe'} models", flush=True)
    names = args.only or list(MODELS.names())
    ok = True
    t0 = time.perf_counter()
    for name in names:
        ok &= method_checks(name, args)
    if args.tiny:
        print(line("stitchfusion_b2_4mod_1024", None, 0.0, "skipped with --tiny"), flush=True)
    else:
        ok &= run_check("stitchfusion_b2_4mod_1024", lambda: check_b2_row(args.device))
    print(f"{'all checks passed' if ok else 'some checks FAILED'} in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
