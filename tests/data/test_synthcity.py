"""synthcity renderer: layout, encodings, determinism, conditions and failures (small and fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusionseg.data.synthetic.city import (
    CONDITIONS,
    FAILURES,
    MODALITY_FILES,
    SYNTHCITY_CLASSES,
    render_city,
    render_sample,
    sample_plan,
)

SIZE = 48
N_TRAIN, N_VAL = 5, 5


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthcity_a")
    calls = []
    summary = render_city(out, n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=3, workers=1,
                          failure_fraction=0.4, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (N_TRAIN + N_VAL, N_TRAIN + N_VAL)
    return out, summary


def test_class_list():
    assert len(SYNTHCITY_CLASSES) == 25
    assert SYNTHCITY_CLASSES[0] == "Building" and SYNTHCITY_CLASSES[12] == "Sky"
    assert SYNTHCITY_CLASSES[21] == "Terrain" and SYNTHCITY_CLASSES[24] == "Truck"


def test_layout_and_names(rendered):
    out, summary = rendered
    assert summary["total"] == N_TRAIN + N_VAL
    assert summary["splits"]["train"]["total"] == N_TRAIN
    meta = json.loads((out / "synthcity.json").read_text())
    assert meta["classes"] == list(SYNTHCITY_CLASSES)
    assert meta["options"]["size"] == SIZE
    assert len(meta["samples"]) == N_TRAIN + N_VAL
    for s in meta["samples"]:
        for folder, suffix in MODALITY_FILES.items():
            p = (out / folder / s["condition"] / s["split"] / s["map_dir"]
                 / f"{s['id']}_{suffix}_front.png")
            assert p.is_file(), p
    rgb = sorted(out.glob("img/*/*/*/*.png"))
    assert len(rgb) == N_TRAIN + N_VAL
    for p in rgb:
        cond, split, map_dir, name = p.parts[-4:]
        assert cond in CONDITIONS and split in ("train", "val")
        assert map_dir.startswith("MAP_") and name.endswith("_rgb_front.png")
        assert len(name.split("_")[0]) == 6
        # DELIVER's reference loader derives every other path from the RGB path like this.
        hha = Path(str(p).replace("/img/", "/hha/").replace("_rgb", "_depth"))
        lbl = Path(str(p).replace("/img/", "/semantic/").replace("_rgb", "_semantic"))
        assert hha.is_file() and lbl.is_file()
    ids = sorted(p.name[:6] for p in out.glob("img/*/train/*/*.png"))
    assert ids == [f"{i:06d}" for i in range(N_TRAIN)]


def test_dtypes_and_encodings(rendered):
    out, _ = rendered
    for p in sorted(out.glob("img/*/*/*/*.png")):
        def read(folder, suffix, p=p):
            q = Path(str(p).replace("/img/", f"/{folder}/").replace("_rgb", f"_{suffix}"))
            return Image.open(q)

        rgb = Image.open(p)
        assert rgb.mode == "RGB" and rgb.size == (SIZE, SIZE)
        depth = read("depth", "depth")
        assert depth.mode in ("I;16", "I;16B", "I")
        d = np.array(depth)
        assert d.dtype == np.uint16 or d.max() <= 65535
        for folder, suffix in (("hha", "depth"), ("lidar", "lidar"), ("event", "event")):
            im = read(folder, suffix)
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
        ev = np.array(read("event", "event"))
        assert ev[..., 2].max() == 0
        th = read("thermal", "thermal")
        assert th.mode == "L"
        sem = np.array(read("semantic", "semantic"))
        assert sem.shape == (SIZE, SIZE, 3) and sem.dtype == np.uint8
        lbl = sem[..., 0]
        assert lbl.max() <= 25 and (lbl > 0).mean() > 0.95
        assert sem[..., 1:].max() == 0
        # depth has no return exactly on sky; LiDAR is sparse
        sky = lbl == SYNTHCITY_CLASSES.index("Sky") + 1
        assert (d[sky] == 0).all() and (d[~sky] > 0).all()
        lid = np.array(read("lidar", "lidar"))
        assert (lid[..., 0] > 0).mean() < 0.8


def test_conditions_and_cases(rendered, tmp_path):
    out, summary = rendered
    for split in ("train", "val"):
        assert set(summary["splits"][split]["conditions"]) == set(CONDITIONS)
    assert {p.name for p in out.glob("img/*")} == set(CONDITIONS)
    assert sum(summary["splits"][s]["cases"]["none"] for s in ("train", "val")) == 6
    render_city(tmp_path, n_train=N_TRAIN, n_val=2, size=32, seed=0, workers=1,
                failure_fraction=1.0)
    dirs = {p.name for p in tmp_path.glob("img/*/*/*")}
    for f in FAILURES:
        assert any(d.endswith("_" + f) for d in dirs), f
    assert all("_" in d[4:] for d in dirs)


def test_sample_plan():
    plan = sample_plan("train", 40, seed=1, failure_fraction=0.25)
    assert [p["condition"] for p in plan[:5]] == list(CONDITIONS)
    assert sum(p["failure"] is not None for p in plan) == 10
    assert {p["map_dir"].split("_")[1] for p in plan} == {"0", "1"}


def test_deterministic(rendered, tmp_path):
    out, _ = rendered
    a = _files(out)
    b_dir, c_dir, d_dir = tmp_path / "b", tmp_path / "c", tmp_path / "d"
    render_city(b_dir, n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=3, workers=1,
                failure_fraction=0.4)
    assert _files(b_dir) == a
    render_city(c_dir, n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=3, workers=2,
                failure_fraction=0.4)
    assert _files(c_dir) == a
    render_city(d_dir, n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=4, workers=1,
                failure_fraction=0.4)
    d = _files(d_dir)
    common = set(a) & set(d)
    assert any(a[k] != d[k] for k in common if k.endswith(".png")) or set(a) != set(d)


def test_night_much_darker_than_sun():
    sun = [render_sample(np.random.default_rng(i), 64, "sun")["img"].mean() for i in range(4)]
    night = [render_sample(np.random.default_rng(i), 64, "night")["img"].mean() for i in range(4)]
    assert np.mean(night) < 0.4 * np.mean(sun)


def test_fog_hides_far_rgb_but_not_depth():
    fog = render_sample(np.random.default_rng(7), 64, "fog")
    sun = render_sample(np.random.default_rng(7), 64, "sun")
    far = fog["depth"] > 40_000
    if far.sum() > 20:
        assert fog["img"][far].std() < sun["img"][far].std()
    assert (fog["depth"] == sun["depth"]).all()  # same geometry, weather-independent depth
