"""Memory of a long ``fusionseg predict`` run: does RSS stay flat over thousands of frames?

Generates ``--frames`` small RGB + 16-bit depth frames (``DIR/rgb/*.png``, ``DIR/depth/*.png``,
the folder input form) and a randomly initialised tiny sum-fusion MiT-B0 checkpoint in the
fusionseg checkpoint format (``model.``-prefixed state dict, ``fusionseg_config`` /
``_classes`` / ``_palette`` / ``_specs``) in a temporary folder, then runs the command line,
``python -m fusionseg.cli predict``, in a child process over them. While it runs, the child's
RSS (psutil when installed, else ``VmRSS`` of ``/proc/PID/status``) and the number of masks on
disk are sampled every ``--poll`` seconds; the report gives the RSS once ``--every`` frames
are done and at each further multiple, the RSS after frame 100 and after the last frame (the
end of the prediction loop), the growth between those two in % (target: below 5 %), the peak
RSS (``VmHWM``, which includes writing the video), the wall time and the CPU. Example::

    python benchmarks/predict_soak.py                           # 2000 frames, 64 x 64
    python benchmarks/predict_soak.py --frames 500 --overlay --video gif
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = ["road", "car", "person", "sky"]
PALETTE = [[128, 64, 128], [0, 0, 142], [220, 20, 60], [70, 130, 180]]


def make_frames(root: Path, frames: int, size: int, seed: int = 0) -> None:
    """``root/rgb/{i:05d}.png`` (8-bit RGB) and ``root/depth/{i:05d}.png`` (16-bit, mm) for
    ``i < frames``: smooth gradients with noise, ``size`` x ``size`` px."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    for i in range(frames):
        shift = (i % 50) / 50.0
        base = np.outer(ramp, np.roll(ramp, int(shift * size)))
        rgb = np.stack([base, base[::-1], base.T], axis=-1) * 200
        rgb = rgb + rng.normal(0, 12, rgb.shape)
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(root / "rgb" / f"{i:05d}.png")
        depth = 1000 + base * 19000 + rng.normal(0, 50, base.shape)
        Image.fromarray(np.clip(depth, 0, 65535).astype(np.uint16)).save(
            root / "depth" / f"{i:05d}.png")


def make_checkpoint(path: Path, size: int) -> Path:
    """A randomly initialised tiny rgb + depth sum-fusion MiT-B0 (the registry's tiny MiT
    settings), saved the way training writes checkpoints."""
    import torch

    from fusionseg.config import config_from_dict
    from fusionseg.data.datasets.deliver import DELIVER_SPECS
    from fusionseg.engine.runner import model_spec
    from fusionseg.models import create_model
    from fusionseg.models.backbones import BACKBONES

    tiny = {k: list(v) for k, v in BACKBONES.entry("mit_b0").tiny.items()}
    modalities = ["rgb", "depth"]
    cfg = config_from_dict({
        "name": "soak",
        "model": {"name": "sum_fusion", "backbone": "mit_b0", "modalities": modalities,
                  "decoder_dim": 16, "backbone_kwargs": tiny, "num_classes": len(CLASSES)},
        "data": {"dataset": "deliver", "crop_size": [size, size]},
    })
    torch.manual_seed(0)
    model = create_model(model_spec(cfg, len(CLASSES), for_checkpoint=True))
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "fusionseg_config": cfg.model_dump(mode="json"),
                "fusionseg_classes": CLASSES, "fusionseg_palette": PALETTE,
                "fusionseg_specs": {m: DELIVER_SPECS[m].model_dump(mode="json")
                                    for m in modalities}}, path)
    return path


def rss_mb(pid: int) -> tuple[float, float] | None:
    """``(RSS, peak RSS)`` of process ``pid`` in MiB (RSS from psutil when installed, else
    ``VmRSS``; the peak is ``VmHWM``), or ``None`` once the process has exited."""
    status = _proc_status_kb(pid)
    try:
        import psutil
    except ImportError:
        rss_kb = status.get("VmRSS")
    else:
        try:
            rss_kb = psutil.Process(pid).memory_info().rss / 1024
        except psutil.Error:
            rss_kb = None
    if rss_kb is None:  # gone, or a zombie not yet reaped
        return None
    return rss_kb / 1024, status.get("VmHWM", rss_kb) / 1024


def _proc_status_kb(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status`` (empty once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


def count_pngs(folder: Path) -> int:
    """Finished PNGs in ``folder`` (temporary ``.*.tmp`` files of atomic writes not counted)."""
    try:
        return sum(1 for e in os.scandir(folder) if e.name.endswith(".png")
                   and not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def cpu_name() -> str:
    """The CPU model and whether it has AMX (bf16 matrix units): ``lscpu`` / /proc/cpuinfo."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    isa = "AMX (amx_bf16)" if "amx_bf16" in flags else (
        "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2")
    return f"{model}, {os.cpu_count()} logical CPUs, {isa}"


def soak(work: Path, frames: int, size: int, every: int, poll: float, overlay: bool,
         video: str | None) -> dict:
    """Generate the inputs, run ``fusionseg predict`` in a child process and sample its RSS.

    Returns:
        A dict: the command, ``frames``, ``samples`` (``[frames done, RSS MiB]`` at each
        multiple of ``every``), ``rss_after_100_mb``, ``rss_end_mb`` (when the last frame's
        mask is on disk: the end of the prediction loop), ``growth_pct`` (between those two),
        ``rss_exit_mb`` (the last sample, after the video if any), ``peak_rss_mb`` (VmHWM, the
        video included), ``wall_s`` (the predict command), ``exit_code``, ``cpu``.

    Raises:
        RuntimeError: the predict command failed (its output is in the message).
    """
    inputs, out = work / "frames", work / "out"
    t0 = time.perf_counter()
    make_frames(inputs, frames, size)
    ckpt = make_checkpoint(work / "soak.ckpt", size)
    print(f"generated {frames} frames ({size}x{size} rgb + depth) and a checkpoint in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    cmd = [sys.executable, "-m", "fusionseg.cli", "predict", "--ckpt", str(ckpt),
           "--input", str(inputs), "--out", str(out)]
    if overlay:
        cmd.append("--overlay")
    if video:
        cmd += ["--video", str(out / f"run.{video}")]
    log = work / "predict.log"
    t0 = time.perf_counter()
    with open(log, "w") as log_file:
        child = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        trace: list[tuple[int, float, float]] = []  # (frames done, RSS, peak)
        while child.poll() is None:
            mem = rss_mb(child.pid)
            if mem is not None:
                trace.append((count_pngs(out / "masks"), *mem))
            time.sleep(poll)
    wall = time.perf_counter() - t0
    if child.returncode != 0:
        raise RuntimeError(f"predict exited {child.returncode}:\n{log.read_text()[-3000:]}")
    done = [t for t in trace if t[0] >= min(100, frames)]
    if not done:
        raise RuntimeError("no RSS sample after frame 100: the run was too short to measure")
    marks, samples = list(range(every, frames + 1, every)), []
    for mark in marks:
        first = next((t for t in trace if t[0] >= mark), None)
        if first is not None:
            samples.append([first[0], round(first[1], 1)])
    at_100 = done[0][1]
    end = next((t[1] for t in trace if t[0] >= frames), trace[-1][1])  # the last frame's turn
    return {
        "command": " ".join(cmd), "frames": frames, "size": size,
        "samples": samples, "rss_after_100_mb": round(at_100, 1), "rss_end_mb": round(end, 1),
        "growth_pct": round(100 * (end - at_100) / at_100, 2),
        "rss_exit_mb": round(trace[-1][1], 1),
        "peak_rss_mb": round(max(t[2] for t in trace), 1), "wall_s": round(wall, 1),
        "frames_per_s": round(frames / wall, 1), "exit_code": child.returncode,
        "cpu": cpu_name(), "summary": log.read_text().strip().splitlines()[-1:],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64, help="frame side in px")
    ap.add_argument("--every", type=int, default=100, help="report RSS every N frames")
    ap.add_argument("--poll", type=float, default=0.2, help="seconds between RSS samples")
    ap.add_argument("--overlay", action="store_true", help="also write overlays")
    ap.add_argument("--video", choices=["gif", "mp4"], help="also write a video")
    ap.add_argument("--workdir", type=Path, help="keep the inputs and outputs here "
                    "(default: a temporary folder, removed)")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fusionseg_soak_") as tmp:
        work = args.workdir or Path(tmp)
        res = soak(work, args.frames, args.size, args.every, args.poll, args.overlay,
                   args.video)
    for done, rss in res["samples"]:
        print(f"  frame {done:>6}: RSS {rss:8.1f} MiB")
    print(f"command: {res['command']}")
    print(f"frames {res['frames']} ({res['size']}x{res['size']}), wall {res['wall_s']} s "
          f"({res['frames_per_s']} frames/s), CPU {res['cpu']}")
    print(f"RSS after frame 100: {res['rss_after_100_mb']} MiB, after the last frame: "
          f"{res['rss_end_mb']} MiB, growth {res['growth_pct']:+.2f} % (target < 5 %); "
          f"last sample {res['rss_exit_mb']} MiB, peak {res['peak_rss_mb']} MiB"
          + (" (the video included)" if res["command"].count("--video") else ""))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
