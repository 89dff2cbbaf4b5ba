"""Checkpoints written by an older fusionseg load into this one and give the same logits.

Run ``write`` with the OLD code importable (a git worktree of an older commit), then ``check``
with the current code::

    git worktree add /tmp/pre 15157bb
    PYTHONPATH=/tmp/pre/src python benchmarks/checkpoint_compat.py write /tmp/compat \\
        --ckpt runs/r22/std/checkpoints/last.ckpt --ckpt runs/r22/sf_kd/checkpoints/last.ckpt
    python benchmarks/checkpoint_compat.py check /tmp/compat

``write`` builds every registered model from its tiny settings (seed 0), saves its state dict
(``OUT/<name>.pt``) and its eval logits on a fixed random batch; for each ``--ckpt`` (a
fusionseg training checkpoint) it builds the model of the checkpoint's stored config, loads it
and saves its logits. ``check`` rebuilds each model with the current code from the same
settings (another seed, so nothing carries over but the file), loads the file through
``load_checkpoint`` and prints the largest absolute logit difference (0 expected: the same
operations in the same order). Exit status 1 when any differs by more than ``--tol``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def _batch(modalities, num_classes, size=64):
    from fusionseg.bench import make_random_batch

    return make_random_batch(list(modalities), batch=2, size=size, num_classes=num_classes,
                             seed=1)


def _logits(model, batch):
    from fusionseg.models import logits_of

    with torch.no_grad():
        return logits_of(model.eval()({k: v for k, v in batch.items() if k != "label"}))


def _ckpt_model_cfg(path: Path) -> dict:
    from fusionseg.serialization import read_checkpoint

    meta = read_checkpoint(path)
    model = dict(meta["fusionseg_config"]["model"])
    if model.get("num_classes") is None:  # taken from the dataset at training time
        model["num_classes"] = len(meta["fusionseg_classes"])
    model["pretrained"] = None  # the checkpoint holds every weight
    return model


def write(out: Path, ckpts: list[Path]) -> None:
    from fusionseg.models import MODELS, create_model, load_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    index = {}
    for name in MODELS.names():
        tiny = dict(MODELS.entry(name).tiny)
        torch.manual_seed(0)
        model = create_model({"name": name, **tiny})
        torch.save(model.state_dict(), out / f"{name}.pt")
        batch = _batch(tiny["modalities"], tiny["num_classes"])
        torch.save(_logits(model, batch), out / f"{name}.logits.pt")
        index[name] = {"cfg": {"name": name, **tiny}, "file": f"{name}.pt"}
    for i, path in enumerate(ckpts):
        cfg = _ckpt_model_cfg(path)
        model = load_checkpoint(create_model(cfg), path)
        key = f"ckpt{i}"
        batch = _batch(cfg["modalities"], cfg["num_classes"])
        torch.save(_logits(model, batch), out / f"{key}.logits.pt")
        index[key] = {"cfg": cfg, "file": str(path.resolve())}
    (out / "index.json").write_text(json.dumps(index, indent=1, default=str))
    print(f"wrote {len(index)} models to {out}")


def check(out: Path, tol: float) -> int:
    from fusionseg.models import create_model, load_checkpoint

    index = json.loads((out / "index.json").read_text())
    worst = 0.0
    for key, item in index.items():
        cfg = item["cfg"]
        torch.manual_seed(123)
        model = create_model(cfg)
        path = Path(item["file"])
        load_checkpoint(model, path if path.is_absolute() else out / path)
        diff = float((_logits(model, _batch(cfg["modalities"], cfg["num_classes"]))
                      - torch.load(out / f"{key}.logits.pt", weights_only=True)).abs().max())
        worst = max(worst, diff)
        print(f"{key:13s} {cfg['name']:13s} max |logits(new) - logits(old)| = {diff:.3g}"
              f"  ({path})")
    print(f"largest difference {worst:.3g} (tolerance {tol:g})")
    return int(worst > tol)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["write", "check"])
    p.add_argument("out", type=Path)
    p.add_argument("--ckpt", type=Path, action="append", default=[],
                   help="a fusionseg training checkpoint (write mode)")
    p.add_argument("--tol", type=float, default=0.0)
    a = p.parse_args()
    if a.mode == "write":
        write(a.out, a.ckpt)
        return 0
    return check(a.out, a.tol)


if __name__ == "__main__":
    sys.exit(main())
