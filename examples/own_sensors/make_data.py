"""Write a small "own sensors" dataset in the generic folder layout, from synthcity renders.

It stands in for files a user's rig records: RGB frames, 16-bit depth PNGs in millimetres and
8-bit thermal PNGs, pixel-aligned, with index label PNGs. The layout is the one the ``folder``
dataset reads (see ``src/fusionseg/data/datasets/folder.py``)::

    OUT/dataset.yaml
    OUT/{train,val}/{rgb,depth,thermal}/{stem}.png
    OUT/{train,val}/label/{stem}.png          class ids 0..K-1, 255 = ignore
    OUT/frames/{stem}.png                     RGB + thermal packed in one RGBA PNG (MFNet-style),
                                              unlabelled, for ``fusionseg predict``

Usage::

    fusionseg data synth city --out data/synthcity --train 80 --val 20 --size 128
    python examples/own_sensors/make_data.py --synthcity data/synthcity --out data/own_sensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from fusionseg.data.datasets.deliver import DELIVER_CLASSES, DELIVER_PALETTE


def _stems(root: Path, split: str) -> list[tuple[str, Path]]:
    """``(stem, rgb file)`` of every synthcity sample of ``split`` (all conditions)."""
    files = sorted((root / "img").glob(f"*/{split}/*/*_rgb_front.png"))
    return [(f"{f.parts[-4]}_{f.parts[-2]}_{f.name.split('_')[0]}", f) for f in files]


def _partner(rgb_file: Path, folder: str, suffix: str) -> Path:
    rel = rgb_file.relative_to(rgb_file.parents[3])
    return rgb_file.parents[4] / folder / rel.parent / rgb_file.name.replace("_rgb_", f"_{suffix}_")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthcity", type=Path, default=Path("data/synthcity"))
    ap.add_argument("--out", type=Path, default=Path("data/own_sensors"))
    ap.add_argument("--frames", type=int, default=8, help="packed RGB+thermal frames to write")
    args = ap.parse_args()
    out: Path = args.out
    for split in ("train", "val"):
        for d in ("rgb", "depth", "thermal", "label"):
            (out / split / d).mkdir(parents=True, exist_ok=True)
        for stem, rgb_file in _stems(args.synthcity, split):
            rgb = np.asarray(Image.open(rgb_file))
            depth_mm = np.asarray(Image.open(_partner(rgb_file, "depth", "depth")))  # uint16 mm
            thermal = np.asarray(Image.open(_partner(rgb_file, "thermal", "thermal")))  # uint8
            raw = np.asarray(Image.open(_partner(rgb_file, "semantic", "semantic")))[..., 0]
            label = np.where((raw == 0) | (raw == 255), 255, raw.astype(np.int64) - 1)
            Image.fromarray(rgb).save(out / split / "rgb" / f"{stem}.png")
            Image.fromarray(depth_mm).save(out / split / "depth" / f"{stem}.png")
            Image.fromarray(thermal).save(out / split / "thermal" / f"{stem}.png")
            Image.fromarray(label.astype(np.uint8)).save(out / split / "label" / f"{stem}.png")
    (out / "frames").mkdir(exist_ok=True)
    for stem, rgb_file in _stems(args.synthcity, "val")[: args.frames]:
        rgb = np.asarray(Image.open(rgb_file))
        thermal = np.asarray(Image.open(_partner(rgb_file, "thermal", "thermal")))
        Image.fromarray(np.dstack([rgb, thermal])).save(out / "frames" / f"{stem}.png")
    description = {
        "name": "own_sensors",
        "classes": list(DELIVER_CLASSES),
        "palette": [list(map(int, c)) for c in DELIVER_PALETTE],
        "ignore_index": 255,
        "modalities": {
            "rgb": {"bit_depth": 8},
            # 16-bit millimetres -> metres; the default depth spec normalises 0..65.535 m
            "depth": {"bit_depth": 16, "scale": 0.001, "unit": "m"},
            "thermal": {"bit_depth": 8},
        },
    }
    (out / "dataset.yaml").write_text(yaml.safe_dump(description, sort_keys=False, default_flow_style=None))
    print(f"wrote {out} ({sum(1 for _ in (out / 'train' / 'rgb').iterdir())} train, "
          f"{sum(1 for _ in (out / 'val' / 'rgb').iterdir())} val, "
          f"{sum(1 for _ in (out / 'frames').iterdir())} packed frames)")


if __name__ == "__main__":
    main()
