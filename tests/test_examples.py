"""examples/own_sensors: the README's "Your own sensors" data step gives a folder dataset that
the folder loader and `data check` accept, with packed frames `predict` reads by channel."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from fixtures.deliver_tree import make_deliver_tree  # noqa: E402

from fusionseg.data.check import check_dataset  # noqa: E402
from fusionseg.data.datasets import create_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_own_sensors_example_writes_a_valid_folder_dataset(tmp_path):
    src = tmp_path / "synthcity"
    make_deliver_tree(src, conditions=("cloud",), per_split=2, size=32)
    out = tmp_path / "own"
    subprocess.run([sys.executable, str(ROOT / "examples" / "own_sensors" / "make_data.py"),
                    "--synthcity", str(src), "--out", str(out), "--frames", "2"], check=True)
    mods = ["rgb", "depth", "thermal"]
    report = check_dataset("folder", out, splits=["train", "val"], modalities=mods)
    assert report.ok, report
    ds = create_dataset("folder", str(out), "val", mods)
    assert len(ds) == 2 and ds.specs["depth"].scale == 0.001
    record = ds.records[0]
    stem = record.id
    raw_depth = np.asarray(Image.open(out / "val" / "depth" / f"{stem}.png")).astype(np.float64)
    assert raw_depth.max() > 255  # 16-bit millimetres
    np.testing.assert_allclose(ds.read_modality(record, "depth")[0].numpy(),
                               raw_depth / 1000.0, rtol=1e-6)  # metres
    frame = np.asarray(Image.open(out / "frames" / f"{stem}.png"))
    thermal = np.asarray(Image.open(out / "val" / "thermal" / f"{stem}.png"))
    assert frame.shape[-1] == 4
    np.testing.assert_array_equal(frame[..., 3], thermal)
