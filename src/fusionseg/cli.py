"""The ``fusionseg`` command line (typer + rich).

    fusionseg data synth city --out data/synthcity
    fusionseg train configs/quickstart.yaml [--set train.max_epochs=2 ...]
    fusionseg eval configs/quickstart.yaml --ckpt runs/.../best.ckpt [--missing all] [--protocol all]
    fusionseg predict --ckpt best.ckpt --input DIR --out preds/ [--input thermal=DIR:3 ...]
    fusionseg export --ckpt best.ckpt --out model.onnx [--modalities rgb,depth]
    fusionseg bench configs/quickstart.yaml --size 512 --batch 2 [--precision bf16-mixed] [--json m.json]
    fusionseg report runs/a runs/b --out report/
    fusionseg info

Bad input (config, data, checkpoint: a :class:`~fusionseg.errors.FusionsegError`) prints one
line naming the file, modality and problem and exits with status 2; any other exception is a
bug in fusionseg and prints its traceback, a line asking to report it, and exits with status 1.
Set ``FUSIONSEG_DEBUG=1`` to let both propagate.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Multimodal semantic segmentation: train, evaluate, benchmark, predict.")
data_app = typer.Typer(no_args_is_help=True,
                       help="Datasets: render the built-in ones, check, convert depth.")
synth_app = typer.Typer(no_args_is_help=True, help="Render a built-in synthetic dataset.")
weights_app = typer.Typer(no_args_is_help=True,
                          help="Pretrained weights: list the catalogue, fetch, convert.")
app.add_typer(data_app, name="data")
data_app.add_typer(synth_app, name="synth")
app.add_typer(weights_app, name="weights")
hub_app = typer.Typer(no_args_is_help=True,
                      help="Whole trained models on the Hugging Face hub: save, push "
                           "(docs/hub.md).")
app.add_typer(hub_app, name="hub")

console = Console()
err_console = Console(stderr=True)

SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override: key.sub=value")]


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (DataLoader worker tracebacks reduced to the cause)."""
    text = str(exc)
    if "Original Traceback" in text:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        text = lines[-1] if lines else text
        if ": " in text and text.split(": ", 1)[0].endswith("Error"):
            text = text.split(": ", 1)[1]
    return " ".join(text.split())


#: OSError numbers that describe the machine, not a bug: disk full, quota, read-only file
#: system, permission denied
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                 errno.EPERM})


def _print_error(message: str) -> None:
    # escaped: "[modality 'rgb']" in a message is text, not rich markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def cli_errors(fn):
    """Run a command: a user error (:class:`~fusionseg.errors.FusionsegError`) is one red line
    and exit status 2, and so is an ``OSError`` that describes the machine (disk full, quota,
    read-only or forbidden folder); any other exception is a bug in fusionseg: its traceback,
    one line asking to report it, and exit status 1. ``FUSIONSEG_DEBUG=1`` re-raises all of
    them as they are."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import FusionsegError
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("FUSIONSEG_DEBUG"):
                raise
            if isinstance(exc, FusionsegError):
                _print_error(one_line(exc))
                raise typer.Exit(2) from None
            if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
                # a full disk, a read-only or forbidden folder: the machine's state, not a bug
                where = f"{exc.filename}: " if exc.filename else ""
                _print_error(f"{where}{exc.strerror or exc}")
                raise typer.Exit(2) from None
            traceback.print_exc()
            err_console.print("[bold red]internal error[/] (a bug in fusionseg, not in your "
                              "input): please report it with the traceback above and the "
                              "output of `fusionseg info`", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
    return wrapper


def _fmt(v: float | None) -> str:
    """A metric with 2 decimals; ``-`` for None (JSON null) or NaN."""
    return "-" if v is None or v != v else f"{v:.2f}"


def print_results(res: dict) -> None:
    """Print the overall, per-class, per-condition and missing-modality tables."""
    ov = res["overall"]
    if res.get("precision"):
        why = f" ({res['precision_reason']})" if res.get("precision_reason") else ""
        console.print(f"precision: {res['precision']}{why}", markup=False, highlight=False)
    convention = {"nanmean": "mIoU over the classes present (nanmean)",
                  "zero": "mIoU over every class, absent ones 0"}.get(res.get("miou", ""), "")
    t = Table(title=f"{res['dataset']} {res['split']} ({'+'.join(res['modalities'])})")
    for col in ("mIoU", "OA", "mAcc", "mF1"):
        t.add_column(col, justify="right")
    t.add_row(*[_fmt(ov[c]) for c in ("mIoU", "OA", "mAcc", "mF1")])
    console.print(t)
    if convention:
        console.print(convention, highlight=False, soft_wrap=True)
    t = Table(title="per class")
    t.add_column("class")
    t.add_column("IoU", justify="right")
    t.add_column("Acc", justify="right")
    for name, iou, acc in zip(res["classes"], ov["IoU"], ov["Acc"], strict=True):
        if iou == iou:
            t.add_row(name, _fmt(iou), _fmt(acc))
    console.print(t)
    if res.get("per_condition"):
        t = Table(title="per condition")
        t.add_column("condition")
        t.add_column("mIoU", justify="right")
        t.add_column("OA", justify="right")
        for c, m in res["per_condition"].items():
            t.add_row(c, _fmt(m["mIoU"]), _fmt(m["OA"]))
        console.print(t)
    if res.get("outputs"):
        t = Table(title="per output (all modalities present)")
        for col in ("output", "pixel acc", "mean acc", "mIoU"):
            t.add_column(col, justify="right" if col != "output" else "left")
        for name, m in res["outputs"].items():
            t.add_row(name, _fmt(m["OA"]), _fmt(m["mAcc"]), _fmt(m["mIoU"]))
        console.print(t)
    if res.get("missing"):
        conds = sorted({c for m in res["missing"].values() for c in m["per_condition"]})
        t = Table(title="missing modalities (mIoU)")
        t.add_column("modalities")
        t.add_column("all", justify="right")
        for c in conds:
            t.add_column(c, justify="right")
        for name, m in res["missing"].items():
            t.add_row(name, _fmt(m["mIoU"]), *[_fmt(m["per_condition"].get(c, float("nan")))
                                               for c in conds])
        console.print(t)


def print_protocols(protocols: dict) -> None:
    """Print the EMM / RMM / NM / MAM tables of ``evaluate(..., protocol=...)``."""
    from .engine.robustness import FAILURE_PROBABILITIES, subset_name
    ps = [str(p) for p in FAILURE_PROBABILITIES]
    f = _fmt
    if "emm" in protocols:
        r = protocols["emm"]
        t = Table(title="EMM: entire-missing modality (mIoU)")
        t.add_column("present")
        t.add_column("missing")
        t.add_column("mIoU", justify="right")
        for e in r["subsets"]:
            t.add_row(subset_name(e["present"]), subset_name(e["missing"]) or "-", f(e["mIoU"]))
        t.add_section()
        t.add_row("[bold]mean[/]", "", f"[bold]{f(r['mean'])}[/]")
        for p in ps:
            t.add_row(f"E\\[p={p}]", "", f(r["expectation"][p]))
        console.print(t)
    if "rmm" in protocols:
        rs = protocols["rmm"]["ratios"]
        t = Table(title="RMM: random-missing modality (mIoU; failed modalities lose r of "
                        "their pixels)")
        t.add_column("intact")
        t.add_column("failed")
        for b in rs:
            t.add_column(f"r={b['r']}", justify="right")
        for i, e in enumerate(rs[0]["subsets"]):
            t.add_row(subset_name(e["present"]), subset_name(e["missing"]) or "-",
                      *[f(b["subsets"][i]["mIoU"]) for b in rs])
        t.add_section()
        t.add_row("[bold]mean[/]", "", *[f"[bold]{f(b['mean'])}[/]" for b in rs])
        for p in ps:
            t.add_row(f"E\\[p={p}]", "", *[f(b["expectation"][p]) for b in rs])
        console.print(t)
    if "nm" in protocols:
        r = protocols["nm"]
        t = Table(title="NM: noisy modalities (mIoU)")
        for col in ("level", "s&p density", "Gaussian std", "s&p + Gaussian", "s&p only"):
            t.add_column(col, justify="right" if col != "level" else "left")
        t.add_row("clean", "0", "0", f(r["clean"]), f(r["clean"]))
        for lv in r["levels"]:
            t.add_row(lv["level"], str(lv["density"]), str(lv["std"]), f(lv["mIoU"]),
                      f(lv["mIoU_salt_pepper_only"]))
        console.print(t)
    if "mam" in protocols:
        r = protocols["mam"]
        t = Table(title=f"MAM: {subset_name(r['moved'])} misaligned against {r['reference']} "
                        "(mIoU)")
        for col in ("level", "shift (% of side)", "rotation (deg)", "mIoU"):
            t.add_column(col, justify="right")
        for lv in r["levels"]:
            t.add_row(str(lv["level"]), f"{lv['shift'] * 100:g}", f"{lv['rotation']:g}",
                      f(lv["mIoU"]))
        console.print(t)


@app.command()
@cli_errors
def train(config: Path, set: SetOpt = None,
          run_dir: Annotated[Path | None, typer.Option(help="Output dir (default: "
                                                       "runs/NAME/version_N)")] = None,
          resume: Annotated[Path | None, typer.Option(help="last.ckpt to resume")] = None):
    """Train a model from a YAML config."""
    from .config import load_config
    from .engine.runner import train as run_train
    cfg = load_config(config, set)
    out = run_train(cfg, run_dir=run_dir, resume=resume, console=console)
    m = out["metrics"]
    if m:
        console.print(f"val mIoU {m['mIoU']:.2f}  OA {m['OA']:.2f}  mAcc {m['mAcc']:.2f}")
        if m.get("per_condition"):
            console.print("per condition: " + "  ".join(
                f"{c} {v:.2f}" for c, v in m["per_condition"].items()))
    console.print(f"checkpoints: best {out['best_ckpt']}  last {out['last_ckpt']}")


@app.command("eval")
@cli_errors
def eval_cmd(config: Path, ckpt: Annotated[Path, typer.Option(
                 help="checkpoint, saved model DIR or hf://ORG/NAME[@REV] to evaluate")],
             set: SetOpt = None,
             missing: Annotated[str | None, typer.Option(
                 help="'all' (every modality subset) or subsets like 'rgb;rgb,depth'")] = None,
             split: Annotated[str | None, typer.Option(help="split (default data.val_split)")]
             = None,
             max_batches: Annotated[int | None, typer.Option(help="stop after N batches")]
             = None,
             protocol: Annotated[str | None, typer.Option(
                 help="robustness protocols: emm, rmm, nm, mam (misaligned modalities); "
                      "a comma list or all")] = None,
             seed: Annotated[int, typer.Option(help="seed of the protocols' corruptions")] = 0):
    """Evaluate a checkpoint: overall, per-class, per-condition tables; with --missing, every
    modality subset; with --protocol, the sensor-failure benchmark (EMM / RMM / NM) and the
    misaligned-modalities protocol (MAM)."""
    from .config import load_config
    from .engine.runner import evaluate
    cfg = load_config(config, set)
    subsets = missing
    if missing and missing != "all":
        subsets = [[m.strip() for m in s.split(",") if m.strip()] for s in missing.split(";")]
    res = evaluate(cfg, ckpt, missing=subsets, split=split, max_batches=max_batches,
                   protocol=protocol, seed=seed)
    print_results(res)
    if res.get("protocols"):
        print_protocols(res["protocols"])
    console.print("results written to " + ", ".join(res["files"]))


@app.command()
@cli_errors
def predict(input: Annotated[list[str], typer.Option(
                help="dataset root | DIR with DIR/{modality}/ | MODALITY=DIR|GLOB|FILE[:I,J] "
                     "(0-based channels of a packed file); repeatable")],
            out: Annotated[Path, typer.Option(help="output dir for masks and panels")],
            ckpt: Annotated[Path | None, typer.Option(
                help="fusionseg checkpoint, saved model DIR or hf://ORG/NAME[@REV]")] = None,
            onnx: Annotated[Path | None, typer.Option(
                help="an exported ONNX model (fusionseg export) instead of --ckpt")] = None,
            config: Annotated[Path | None, typer.Option(
                help="config (default: the one stored in the checkpoint)")] = None,
            split: Annotated[str | None, typer.Option(help="split when INPUT is a dataset root")]
            = None,
            max_samples: Annotated[int | None, typer.Option(help="at most N samples")] = None,
            spec: Annotated[list[str] | None, typer.Option(
                help="override a stored modality spec field: MODALITY.FIELD=VALUE, e.g. "
                     "depth.bit_depth=8; repeatable")] = None,
            overlay: Annotated[bool, typer.Option(
                help="also write the mask blended on the RGB image (out/overlays)")] = False,
            video: Annotated[Path | None, typer.Option(
                help="write the frames (overlays with --overlay, else panels) as .gif or .mp4")]
            = None,
            fps: Annotated[float, typer.Option(help="video frame rate")] = 2.0,
            max_pixels: Annotated[int | None, typer.Option(
                help="sliding-window inference above this many input pixels "
                     "(default: 4x the training crop area)")] = None,
            on_error: Annotated[str, typer.Option(
                metavar="[skip|stop]",
                help="a sample whose files cannot be read or do not fit: skip it, list it in "
                     "OUT/failed.txt, write all others, exit 2 at the end (skip); or stop at "
                     "the first one with its error (stop)")] = "skip",
            skip_existing: Annotated[bool, typer.Option(
                help="skip samples whose outputs (mask, panel, overlay with --overlay) all "
                     "exist: continue an interrupted run")] = False,
            health: Annotated[list[str] | None, typer.Option(
                metavar="off|KEY=VALUE",
                help="sensor health: a modality whose frame is NaN/inf, saturated, all zero, "
                     "constant or frozen (= previous frame) is dropped as missing and listed in "
                     "OUT/sensors.csv; 'off' disables it; KEY=VALUE sets a threshold (or off): "
                     "nonfinite=0 saturated=0.98 constant=0 frozen=0; repeatable")] = None,
            geotiff: Annotated[bool | None, typer.Option(
                "--geotiff/--no-geotiff",
                help="write georeferenced masks OUT/{stem}.tif (default: when every input is "
                     "MODALITY=... .tif files with a CRS); --no-geotiff: PNG masks and panels")]
            = None,
            tile_memory_mb: Annotated[float | None, typer.Option(
                help="GeoTIFF: memory budget (MB) of one block; larger rasters are read and "
                     "predicted window by window (default 512)")] = None,
            cog: Annotated[bool, typer.Option(
                help="GeoTIFF: write Cloud-Optimized GeoTIFF masks (tiled, overviews)")]
            = False):
    """Predict masks for a dataset split, a folder or per-modality files; write colorized
    masks and panels with a class legend (docs/predict.md).

    GeoTIFF inputs (an orthophoto and a DSM of any size) give georeferenced mask GeoTIFFs
    instead, predicted window by window ("GeoTIFF orthophotos and DSMs" in docs/predict.md).

    Ends with a summary (written, skipped because their outputs existed, failed with the
    reason, one line each); exit status 2 when any sample failed."""
    from .errors import ConfigError
    from .inference import PredictionIncomplete, parse_health, parse_spec_overrides
    from .inference import predict as run_predict
    from .inference.geotiff import DEFAULT_TILE_MEMORY_MB, looks_georeferenced, predict_geotiff
    from .runtime import setup_threads
    setup_threads(None)  # on CPU: reuse freed buffers (runtime.configure_cpu_allocator)
    if geotiff is None:
        geotiff = looks_georeferenced(input)
    if not geotiff and (cog or tile_memory_mb is not None):
        raise ConfigError("--cog and --tile-memory-mb are for GeoTIFF masks: the inputs are "
                          "not MODALITY=... GeoTIFFs with a CRS (add --geotiff to force it)")
    if geotiff and (overlay or video is not None or (health and health != ["off"])):
        raise ConfigError("--overlay, --video and --health are for PNG outputs; GeoTIFF "
                          "prediction writes masks only (use --no-geotiff for PNGs)")
    try:
        if geotiff:
            summary = predict_geotiff(
                ckpt, input, out, config=config, max_samples=max_samples, onnx=onnx,
                spec_overrides=parse_spec_overrides(spec), max_pixels=max_pixels,
                tile_memory_mb=DEFAULT_TILE_MEMORY_MB if tile_memory_mb is None
                else tile_memory_mb, cog=cog, on_error=on_error, skip_existing=skip_existing)
        else:
            summary = run_predict(ckpt, input, out, config=config, split=split,
                                  max_samples=max_samples, onnx=onnx,
                                  spec_overrides=parse_spec_overrides(spec), overlay=overlay,
                                  video=video, fps=fps, max_pixels=max_pixels,
                                  on_error=on_error, skip_existing=skip_existing,
                                  health=parse_health(health))
    except PredictionIncomplete as exc:
        for line in exc.summary.lines():
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        raise
    for line in summary.lines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
@cli_errors
def export(ckpt: Annotated[Path, typer.Option(
               help="fusionseg checkpoint, saved model DIR or hf://ORG/NAME[@REV]")],
           out: Annotated[Path, typer.Option(help="the ONNX file to write")],
           modalities: Annotated[str | None, typer.Option(
               help="comma-separated modalities to export (default: all of the model's)")]
           = None,
           size: Annotated[tuple[int, int] | None, typer.Option(
               help="H W to trace and check at (default: data.crop_size)")] = None,
           opset: Annotated[int | None, typer.Option(help="ONNX opset")] = None,
           dynamic: Annotated[bool, typer.Option(
               help="dynamic batch and spatial axes where the model allows")] = True,
           check: Annotated[bool, typer.Option(
               help="compare ONNX Runtime with PyTorch after export")] = True,
           exporter: Annotated[str, typer.Option(
               metavar="[auto|dynamo|torchscript]",
               help="auto: the torch.export-based exporter, the TorchScript one where that "
                    "fails (docs/export.md)")] = "auto"):
    """Export a checkpoint to ONNX (inputs named after the modalities, output ``logits``),
    checked against PyTorch with ONNX Runtime (docs/export.md)."""
    from .inference import export_onnx
    mods = [m.strip() for m in modalities.split(",") if m.strip()] if modalities else None
    rep = export_onnx(ckpt, out, modalities=mods, size=tuple(size) if size else None,
                      opset=opset, check=check, dynamic=dynamic, exporter=exporter)
    axes = ", ".join(a for a, on in (("batch", rep.dynamic_batch),
                                     ("height/width", rep.dynamic_size)) if on) or "none"
    diff = "not checked" if rep.max_abs_diff is None else f"{rep.max_abs_diff:.2e}"
    console.print(f"wrote {rep.path} ({rep.exporter} exporter): inputs "
                  f"{', '.join(rep.modalities)} at {rep.size[0]}x{rep.size[1]}, opset "
                  f"{rep.opset}, dynamic axes: {axes}; max |onnxruntime - pytorch| = {diff} "
                  f"({rep.seconds:.1f} s)")
    if rep.fallback:
        console.print(f"  note: not the dynamo exporter: {rep.fallback}", markup=False)
    for note in rep.notes:
        console.print(f"  note: {note}", markup=False)


@app.command()
@cli_errors
def bench(config: Path, set: SetOpt = None,
          size: Annotated[int, typer.Option(help="square input size (px)")] = 512,
          batch: Annotated[int, typer.Option(help="batch size")] = 2,
          steps: Annotated[int, typer.Option(help="timed steps")] = 3,
          num_classes: Annotated[int | None, typer.Option(help="classes if not in config")]
          = None,
          precision: Annotated[str | None, typer.Option(
              help="auto, 32, bf16-mixed or 16-mixed (GPU); default: train.precision of the "
                   "config (auto: bf16-mixed where the hardware runs it natively)")]
          = None,
          json_out: Annotated[Path | None, typer.Option(
              "--json", help="also write the metrics to this JSON file")] = None):
    """Params (total / trainable), GFLOPs, inference latency, train-step time, peak memory."""
    from .bench import make_random_batch, measure
    from .config import load_config, model_spec
    from .models import create_model
    from .runtime import setup_threads
    setup_threads(None)  # as train / eval run: on CPU, reuse freed buffers
    cfg = load_config(config, set)
    # random weights: speed and memory do not depend on them, so model.pretrained is not read
    spec = model_spec(cfg, for_checkpoint=True)
    spec["num_classes"] = spec.get("num_classes") or num_classes or 25
    model = create_model(spec)
    batch_ = make_random_batch(cfg.model.modalities, batch, size, spec["num_classes"])
    res = measure(model, batch_, steps=steps, precision=precision or cfg.train.precision)
    t = Table(title=f"{cfg.model.name} {cfg.model.backbone} {'+'.join(cfg.model.modalities)} "
                    f"{size}x{size} batch {batch}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in res.items():
        t.add_row(k, f"{v:,.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int)
                  else str(v))
    console.print(t)
    if json_out is not None:
        from .engine.checkpoint import atomic_write_json
        atomic_write_json(res, json_out)
        console.print(f"metrics written to {json_out}")


@app.command()
@cli_errors
def report(run_dirs: Annotated[list[Path], typer.Argument(help="run dirs (each with config.json)")],
           out: Annotated[Path, typer.Option(help="output dir for report.md and report.png")]
           = Path("report")):
    """One comparison table across runs (method, modalities, params, mIoU overall and per
    condition, EMM mean and expectations) as Markdown and on the console, and a bar chart."""
    from .report import report_command
    report_command(run_dirs, out, console)


@synth_app.command("city")
@cli_errors
def synth_city(out: Annotated[Path, typer.Option(help="output root (DELIVER layout)")],
               train: Annotated[int, typer.Option(help="train samples")] = 400,
               val: Annotated[int, typer.Option(help="val samples")] = 100,
               size: Annotated[int, typer.Option(help="image size (px)")] = 256,
               seed: Annotated[int, typer.Option(help="random seed")] = 0,
               workers: Annotated[int | None, typer.Option(help="processes")] = None):
    """Render synthcity: street scenes with rgb, depth, hha, lidar, event, thermal."""
    from rich.progress import Progress

    from .data.synthetic.city import render_city
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("rendering synthcity", total=train + val)

        def cb(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        summary = render_city(out, n_train=train, n_val=val, size=size, seed=seed,
                              workers=workers, progress=cb)
    console.print(f"synthcity: {train} train + {val} val samples at {size}x{size} in {out}")
    return summary


@synth_app.command("aerial")
@cli_errors
def synth_aerial(out: Annotated[Path, typer.Option(help="output root (ISPRS Vaihingen layout)")],
                 tiles: Annotated[int, typer.Option(
                     help="tiles, 1..33 (33: every id of the Vaihingen train/test lists)")] = 33,
                 size: Annotated[int, typer.Option(help="tile size (px); a tile is 90 m across")] = 1000,
                 seed: Annotated[int, typer.Option(help="random seed")] = 0,
                 workers: Annotated[int | None, typer.Option(help="processes")] = None):
    """Render synthaerial: IRRG orthophoto tiles with a DSM (metres) and ISPRS colour labels.

    The tiles of each split are listed in OUT/splits/{train,test}.txt, which the vaihingen
    loader reads instead of its fixed tile lists, so any --tiles reads completely."""
    from rich.progress import Progress

    from .data.synthetic.aerial import render_aerial
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("rendering synthaerial", total=tiles)

        def cb(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        summary = render_aerial(out, n_tiles=tiles, size=size, seed=seed, workers=workers,
                                progress=cb)
    sp = summary["splits"]
    console.print(f"synthaerial: {sp['train']['total']} train + {sp['test']['total']} test tiles "
                  f"at {size}x{size} ({summary['gsd_m'] * 100:.1f} cm) in {out}")
    return summary


@data_app.command("check")
@cli_errors
def data_check(config: Annotated[Path | None, typer.Argument(help="run config")] = None,
               dataset: Annotated[str | None, typer.Option(help="dataset name")] = None,
               root: Annotated[Path | None, typer.Option(help="dataset root")] = None,
               split: Annotated[list[str] | None, typer.Option(help="split(s) to check")] = None,
               modalities: Annotated[str | None, typer.Option(
                   help="comma-separated modalities (default: all the dataset has)")] = None,
               deep: Annotated[bool, typer.Option(
                   help="also read every sample in full (pixels, label values): finds files "
                        "cut in their pixel data, which headers alone do not show; slower")]
               = False,
               set: SetOpt = None):
    """Walk a dataset and report every problem found; exit 1 if there is any."""
    from .data.check import check_dataset, print_report
    from .errors import ConfigError
    options: dict = {}
    if config is not None:
        from .config import load_config
        cfg = load_config(config, set)
        dataset = dataset or cfg.data.dataset
        root = root or Path(cfg.data.root)
        split = split or [cfg.data.train_split, cfg.data.val_split]
        mods = list(cfg.data.modalities)
        options = dict(cfg.data.options)
    else:
        if dataset is None or root is None:
            raise ConfigError("give a CONFIG, or --dataset NAME and --root DIR")
        mods = None
    if modalities:
        mods = [m.strip() for m in modalities.split(",") if m.strip()]
    report = check_dataset(dataset, root, splits=split, modalities=mods, options=options,
                           deep=deep)
    print_report(report, console)
    if not report.ok:
        raise typer.Exit(1)


WorkersOpt = Annotated[int | None, typer.Option(help="processes (default: every core)")]


@data_app.command("depth2hha")
@cli_errors
def data_depth2hha(
        depth: Annotated[str, typer.Argument(
            help="depth image (16-bit PNG, TIFF, .npy), folder of them, or glob pattern")],
        out: Annotated[Path, typer.Option(help="output folder: one {stem}.png per input")],
        intrinsics: Annotated[str, typer.Option(
            help="FX,FY,CX,CY of the depth image in pixels")],
        depth_scale: Annotated[float, typer.Option(
            help="metres per stored unit (0.001: millimetres)")] = 0.001,
        workers: WorkersOpt = None):
    """Encode depth images as HHA (disparity, height, angle; Gupta et al., ECCV 2014)."""
    from .data.depth_convert import depth_to_hha_files, parse_intrinsics
    res = depth_to_hha_files(depth, out, parse_intrinsics(intrinsics), depth_scale, workers)
    sizes = ", ".join(f"{h}x{w}" for h, w in res.sizes)
    console.print(f"depth2hha: {len(res.outputs)} HHA image(s) ({sizes}, 8-bit, 3 channels) "
                  f"in {out}", soft_wrap=True)


@data_app.command("disparity2depth")
@cli_errors
def data_disparity2depth(
        disp: Annotated[str, typer.Argument(
            help="disparity image (PNG, TIFF, .npy), folder of them, or glob pattern")],
        out: Annotated[Path, typer.Option(help="output folder: one 16-bit {stem}.png per input")],
        baseline: Annotated[float, typer.Option(help="stereo baseline in metres")],
        focal: Annotated[float, typer.Option(help="focal length in pixels")],
        scale: Annotated[float, typer.Option(
            help="disparity pixels per stored unit (KITTI 16-bit PNG: 0.00390625)")] = 1.0,
        depth_scale: Annotated[float, typer.Option(
            help="metres per unit of the written depth (0.001: millimetres)")] = 0.001,
        workers: WorkersOpt = None):
    """Convert stereo disparity to depth (focal * baseline / disparity; 0 where d <= 0)."""
    from .data.depth_convert import disparity_to_depth_files
    res = disparity_to_depth_files(disp, out, baseline, focal, scale, depth_scale, workers)
    sizes = ", ".join(f"{h}x{w}" for h, w in res.sizes)
    console.print(f"disparity2depth: {len(res.outputs)} depth image(s) ({sizes}, 16-bit, "
                  f"{depth_scale:g} m per unit) in {out}", soft_wrap=True)


@weights_app.command("convert")
@cli_errors
def weights_convert(src: Annotated[Path, typer.Argument(
                        help="a checkpoint file, or a Hugging Face model folder (config.json + "
                             "model.safetensors / pytorch_model.bin)")],
                    dst: Annotated[Path, typer.Argument(
                        help="output: .safetensors, or a torch.save file otherwise")],
                    config: Annotated[Path | None, typer.Option(
                        help="run config of the model the weights are for")] = None,
                    backbone: Annotated[str | None, typer.Option(
                        help="a pretrained-encoder file for this backbone (e.g. "
                             "dinov2_vits14 from a Hugging Face facebook/dinov2-small file)")]
                    = None):
    """Convert a checkpoint to fusionseg's format, detecting what SRC is by itself.

    Without options SRC is recognised: a pretrained encoder (SegFormer / MiT, DINOv2, SAM 2.1
    Hiera, SAM ViT, ResNet; official or Hugging Face keys; a Hugging Face folder's config.json
    gives the exact architecture, a bare file's depths and widths are read from its keys) is
    written in the official key names of the detected backbone; otherwise the registered
    methods are asked which released format SRC is in. With --backbone SRC is an encoder of
    that backbone; with --config the weights are loaded into the configured model strictly
    (mismatches are reported now).
    """
    if backbone is not None:
        from .models import create_backbone
        from .models.weights import convert_backbone_checkpoint
        out = convert_backbone_checkpoint(src, dst, create_backbone(backbone))
    elif config is not None:
        from .config import load_config
        from .engine.runner import convert_weights
        out = convert_weights(load_config(config), src, dst)
    else:
        from .models.weights import convert_backbone_checkpoint, convert_checkpoint, detect_backbone
        found = detect_backbone(src)
        if found is not None:
            console.print(f"detected {found.describe()}", highlight=False, soft_wrap=True)
            out = convert_backbone_checkpoint(src, dst, found.build(), found.metadata())
        else:
            out = convert_checkpoint(src, dst)
    console.print(f"wrote {out}", highlight=False, soft_wrap=True)


@weights_app.command("list")
def weights_list(directory: Annotated[Path | None, typer.Option(
                     "--dir", help="weights directory (default $FUSIONSEG_WEIGHTS or "
                                   "~/.cache/fusionseg/weights)")] = None):
    """The pretrained encoders each method starts from: catalogue name (model.pretrained),
    backbone, methods, official file and source, approximate size, published checksum, Hugging
    Face hub file, and whether it is in the weights directory."""
    from .models.catalogue import list_pretrained, local_path, weights_dir
    t = Table(title=f"pretrained encoders (weights directory {weights_dir(directory)})")
    for col, kw in (("name", {"no_wrap": True}), ("backbone", {"no_wrap": True}),
                    ("methods", {}), ("file", {"overflow": "fold"}), ("MB ~", {"justify": "right"}),
                    ("checksum", {"overflow": "fold"}), ("official source", {"overflow": "fold"}),
                    ("hub", {"overflow": "fold"}), ("here", {})):
        t.add_column(col, **kw)
    for e in list_pretrained():
        hub = f"{e.hf_repo}/{e.hf_filename}" + (" (transformers)" if e.hf_format ==
                                                 "transformers" else "") if e.hf_repo else "-"
        t.add_row(e.name, e.backbone, ", ".join(e.methods), e.filename,
                  f"{e.size_mb:,.0f}" if e.size_mb else "-", e.checksum_text(),
                  e.url or e.source, hub, "yes" if local_path(e, directory).is_file() else "-")
    console.print(t)


@weights_app.command("fetch")
@cli_errors
def weights_fetch(name: Annotated[str, typer.Argument(help="catalogue name (weights list)")],
                  directory: Annotated[Path | None, typer.Option(
                      "--dir", help="weights directory (default $FUSIONSEG_WEIGHTS or "
                                    "~/.cache/fusionseg/weights)")] = None,
                  force: Annotated[bool, typer.Option(help="download again")] = False):
    """Download a catalogue entry into the weights directory (Hugging Face hub, else the
    official URL; checksum verified where published; hub conversions renamed to the official
    keys), so that model.pretrained: NAME finds it. Offline: one line naming the URL to
    download and where to put the file, exit status 2."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from .models.catalogue import WEIGHTS_ENV, fetch, get_pretrained, local_path, weights_dir
    entry = get_pretrained(name)
    if local_path(entry, directory).is_file() and not force:
        console.print(f"{entry.name}: already at {local_path(entry, directory)}",
                      highlight=False, soft_wrap=True)
        return
    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(f"fetching {entry.filename}", total=None)
        path = fetch(entry.name, directory, force=force,
                     progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"{entry.name}: stored at {path}", highlight=False, soft_wrap=True)
    if directory is not None and weights_dir(directory).resolve() != weights_dir().resolve():
        console.print(f"set {WEIGHTS_ENV}={weights_dir(directory)} so that model.pretrained: "
                      f"{entry.name} finds it", highlight=False, soft_wrap=True)


@app.command()
@cli_errors
def info(
    method: Annotated[str | None, typer.Argument(
        help="a model (or else dataset) name: print its options (type, default, one line "
             "each)")] = None,
):
    """List models, backbones, datasets and modalities; with METHOD, that model's options (a
    dataset's, for a name that is no model)."""
    import torch

    from . import __version__
    from .data import list_datasets
    from .data.modalities import DEFAULT_SPECS
    from .engine.losses import LOSSES
    from .models import list_models
    from .models.backbones import list_backbones
    if method is not None:
        from .data.datasets import describe_options as describe_dataset_options
        from .data.datasets import get_dataset_class
        from .models.options import describe_options
        from .models.registry import get_builder, options_of
        if method not in list_models() and method in list_datasets():
            dataset = get_dataset_class(method)
            rows, section = describe_dataset_options(dataset.Options), "data.options"
        else:
            options = options_of(method)
            if options is None:
                doc = (get_builder(method).__doc__ or "").strip().splitlines()
                console.print(f"{method}: a builder function without typed options"
                              + (f" ({doc[0]})" if doc else ""), highlight=False)
                return
            rows, section = describe_options(options), "model"
        t = Table(title=f"{method} options ({section}.<option> in a config)")
        for col in ("option", "type", "default", "description"):
            t.add_column(col, overflow="fold")
        for o in rows:
            t.add_row(escape(o.name), escape(o.type), escape(o.default), escape(o.doc))
        console.print(t)
        return
    console.print(f"fusionseg {__version__}  torch {torch.__version__}  "
                  f"cuda {'yes' if torch.cuda.is_available() else 'no'}  "
                  f"python {sys.version.split()[0]}")
    t = Table(title="registry")
    t.add_column("kind")
    t.add_column("names")
    t.add_row("models", ", ".join(list_models()))
    t.add_row("backbones", ", ".join(list_backbones()))
    t.add_row("datasets", ", ".join(list_datasets()))
    t.add_row("losses", ", ".join(LOSSES.names()))
    t.add_row("modalities", ", ".join(DEFAULT_SPECS))
    console.print(t)


@hub_app.command("save")
@cli_errors
def hub_save(ckpt: Annotated[str, typer.Argument(help="a training checkpoint (best.ckpt)")],
             directory: Annotated[Path, typer.Argument(
                 metavar="DIR", help="folder to write model.safetensors, config.json, "
                                     "README.md to")],
             config: Annotated[Path | None, typer.Option(
                 help="run config (default: the one stored in the checkpoint)")] = None,
             repo_id: Annotated[str, typer.Option(
                 help="the ORG/NAME the model card's usage lines name")] = "ORG/NAME",
             license: Annotated[str | None, typer.Option(
                 help="the card's license id (default: the pretrained encoder's)")] = None):
    """Write a checkpoint as a saved model folder: the weights it predicts with
    (safetensors), its config, classes, palette and modality specs (JSON) and a model card.
    --ckpt DIR of predict / eval / export and train.init_from read the folder."""
    from .hub import save_pretrained
    saved = save_pretrained(ckpt, directory, config=config, repo_id=repo_id, license=license)
    console.print(f"wrote {saved.directory}: {', '.join(f.name for f in saved.files)} "
                  f"({saved.tensors} tensors, {saved.nbytes / 1e6:.1f} MB)",
                  highlight=False, soft_wrap=True)


@hub_app.command("push")
@cli_errors
def hub_push(ckpt: Annotated[str, typer.Argument(help="a training checkpoint (best.ckpt)")],
             repo_id: Annotated[str, typer.Argument(help="ORG/NAME on the Hugging Face hub")],
             private: Annotated[bool, typer.Option(help="create the repository private")]
             = False,
             revision: Annotated[str | None, typer.Option(
                 help="branch to push to (created when missing; default: main)")] = None,
             config: Annotated[Path | None, typer.Option(
                 help="run config (default: the one stored in the checkpoint)")] = None,
             license: Annotated[str | None, typer.Option(
                 help="the card's license id (default: the pretrained encoder's)")] = None):
    """Save a checkpoint (as hub save does) and upload it to the model repository REPO_ID
    (created when missing; log in first: `hf auth login` or HF_TOKEN)."""
    from .hub import push_to_hub
    url = push_to_hub(ckpt, repo_id, private=private, revision=revision, config=config,
                      license=license)
    console.print(f"pushed to hf://{repo_id}{'@' + revision if revision else ''}: {url}",
                  highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

