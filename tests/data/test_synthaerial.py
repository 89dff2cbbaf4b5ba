"""synthaerial renderer: Vaihingen layout read by the real loader, determinism, the properties
that make the DSM necessary, ``fusionseg data check`` and the CLI (small tiles, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from fusionseg.cli import app
from fusionseg.data import DataError, create_dataset
from fusionseg.data.check import check_dataset
from fusionseg.data.datasets.isprs import (
    ISPRS_COLOURS,
    VAIHINGEN_TEST_TILES,
    VAIHINGEN_TRAIN_TILES,
    decode_isprs_colours,
)
from fusionseg.data.synthetic import SYNTHAERIAL_CLASSES, render_aerial
from fusionseg.data.synthetic.aerial import TILE_IDS, _cast_shadows, render_tile, tile_split
from fusionseg.errors import ConfigError

runner = CliRunner()
SIZE = 64
IMPERVIOUS, BUILDING, LOW_VEG, TREE, CAR, CLUTTER = range(6)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _paths(root: Path, tile: str) -> dict[str, Path]:
    return {
        "irrg": root / "top" / f"top_mosaic_09cm_area{tile}.tif",
        "dsm": root / "dsm" / f"dsm_09cm_matching_area{tile}.tif",
        "label": root / "gts_for_participants" / f"top_mosaic_09cm_area{tile}.tif",
        "nob": root / "gts_eroded_for_participants" / f"top_mosaic_09cm_area{tile}_noBoundary.tif",
    }


@pytest.fixture(scope="module")
def full_tree(tmp_path_factory) -> tuple[Path, dict]:
    """Every tile id of both Vaihingen splits (the default tile count), tiny tiles."""
    out = tmp_path_factory.mktemp("synthaerial_full")
    calls = []
    summary = render_aerial(out, size=SIZE, seed=2, workers=1,
                            progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (33, 33)
    return out, summary


@pytest.fixture(scope="module")
def big_tiles(tmp_path_factory) -> list[dict]:
    """A few larger tiles, read back from disk, for the measured properties."""
    out = tmp_path_factory.mktemp("synthaerial_big")
    render_aerial(out, n_tiles=6, size=128, seed=0, workers=2)
    meta = json.loads((out / "synthaerial.json").read_text())
    tiles = []
    for info in meta["tiles"]:
        p = _paths(out, info["id"])
        tiles.append({
            "info": info,
            "irrg": tifffile.imread(p["irrg"]).astype(np.float64),
            "dsm": tifffile.imread(p["dsm"]).astype(np.float64),
            "label": decode_isprs_colours(tifffile.imread(p["label"])),
        })
    return tiles


# --------------------------------------------------------------------------- layout and loader


def test_tile_ids_and_splits(full_tree):
    out, summary = full_tree
    assert list(TILE_IDS) == sorted(VAIHINGEN_TRAIN_TILES + VAIHINGEN_TEST_TILES, key=int)
    assert summary["total"] == 33
    assert summary["splits"]["train"]["tiles"] == VAIHINGEN_TRAIN_TILES
    assert summary["splits"]["test"]["tiles"] == VAIHINGEN_TEST_TILES
    meta = json.loads((out / "synthaerial.json").read_text())
    assert meta["classes"] == list(SYNTHAERIAL_CLASSES)
    assert meta["colours"] == [list(c) for c in ISPRS_COLOURS]
    assert meta["options"]["size"] == SIZE and meta["options"]["n_tiles"] == 33
    assert [t["id"] for t in meta["tiles"]] == list(TILE_IDS)
    assert all(t["split"] == tile_split(t["id"]) for t in meta["tiles"])
    with pytest.raises(ValueError):
        tile_split("9")


def test_files_dtypes_and_units(full_tree):
    out, _ = full_tree
    palette = {tuple(c) for c in ISPRS_COLOURS}
    for tile in TILE_IDS:
        p = _paths(out, tile)
        irrg = tifffile.imread(p["irrg"])
        assert irrg.dtype == np.uint8 and irrg.shape == (SIZE, SIZE, 3)
        dsm = tifffile.imread(p["dsm"])
        assert dsm.dtype == np.float32 and dsm.shape == (SIZE, SIZE)
        assert np.isfinite(dsm).all() and 230 < dsm.min() and dsm.max() < 340  # metres a.s.l.
        full = tifffile.imread(p["label"])
        nob = tifffile.imread(p["nob"])
        assert full.dtype == nob.dtype == np.uint8 and full.shape == nob.shape == (SIZE, SIZE, 3)
        assert {tuple(c) for c in np.unique(full.reshape(-1, 3), axis=0)} <= palette
        black = (nob == 0).all(-1)
        assert black.any() and (nob[~black] == full[~black]).all()
        # at this pixel size the erosion radius is 1 px: every black pixel borders another class
        ids = decode_isprs_colours(full)
        pad = np.pad(ids, 1, mode="edge")
        nb = [pad[1:-1, :-2], pad[1:-1, 2:], pad[:-2, 1:-1], pad[2:, 1:-1]]
        differs = np.zeros_like(black)
        for n in nb:
            differs |= n != ids
        assert (differs[black]).all()
        assert (black[differs]).all()


@pytest.mark.parametrize("split,n", [("train", 16), ("test", 17)])
def test_vaihingen_loader_reads_every_split(full_tree, split, n):
    out, _ = full_tree
    ds = create_dataset("vaihingen", out, split, ["irrg", "dsm"])
    assert len(ds) == n and ds.num_classes == 6
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s["irrg"].shape == (3, SIZE, SIZE) and s["irrg"].dtype == torch.float32
        assert s["dsm"].shape == (1, SIZE, SIZE) and s["dsm"].dtype == torch.float32
        assert float(s["dsm"].min()) == 0.0 and float(s["dsm"].max()) == 1.0  # per-tile min-max
        assert s["label"].shape == (SIZE, SIZE) and s["label"].dtype == torch.int64
        vals = set(torch.unique(s["label"]).tolist())
        assert vals <= {0, 1, 2, 3, 4, 5, 255}
        if split == "train":  # full labels
            assert 255 not in vals
        else:  # noBoundary labels for evaluation
            assert 255 in vals
        seen |= vals - {255}
    # every class in the full labels; clutter (0.6-3 m) may be eroded away at 1.4 m pixels
    assert seen == set(range(6)) if split == "train" else seen >= set(range(5))


def test_loader_windows_and_partial_render(full_tree, tmp_path):
    out, _ = full_tree
    ds = create_dataset("vaihingen", out, "train", ["irrg", "dsm"], tile_size=32, tile_splits=["train"])
    assert len(ds) == 16 * 4
    s = ds[5]
    assert s["irrg"].shape == (3, 32, 32) and s["label"].shape == (32, 32)
    # fewer tiles than the split lists: the loader reads the render's own lists
    summary = render_aerial(tmp_path, n_tiles=5, size=32, seed=0, workers=1)
    assert summary["splits"]["train"]["tiles"] == ["1", "3", "5"]
    assert summary["splits"]["test"]["tiles"] == ["2", "4"]
    for split, ids in (("train", ["1", "3", "5"]), ("test", ["2", "4"])):
        ds = create_dataset("vaihingen", tmp_path, split, ["irrg", "dsm"])
        assert [r.id for r in ds.records] == ids
        assert ds[0]["irrg"].shape == (3, 32, 32)
    # tiles=[...] still replaces the split's list
    assert [r.id for r in create_dataset("vaihingen", tmp_path, "train", tiles=["5"]).records] == ["5"]


@pytest.mark.parametrize("n_tiles,train,test", [
    (1, ["1"], []),
    (4, ["1", "3"], ["2", "4"]),
    (7, ["1", "3", "5", "7"], ["2", "4", "6"]),
])
def test_any_tile_count_reads_completely(tmp_path, n_tiles, train, test):
    out = tmp_path / f"aerial{n_tiles}"
    render_aerial(out, n_tiles=n_tiles, size=32, seed=3, workers=1)
    lists = sorted(p.name for p in (out / "splits").iterdir())
    assert lists == (["test.txt", "train.txt"] if test else ["train.txt"])
    meta = json.loads((out / "synthaerial.json").read_text())
    assert meta["split_lists"] == {"train": "splits/train.txt", **({"test": "splits/test.txt"} if test else {})}
    for split, ids in (("train", train), ("test", test)):
        if not ids:
            with pytest.raises(DataError, match="vaihingen split 'test': list file not found"):
                create_dataset("vaihingen", out, split)
            continue
        ds = create_dataset("vaihingen", out, split)  # the loader's defaults
        assert [r.id for r in ds.records] == ids
        for i in range(len(ds)):  # every sample loads
            s = ds[i]
            assert s["irrg"].shape == (3, 32, 32) and s["label"].shape == (32, 32)
    report = check_dataset("vaihingen", out)
    assert report.ok, "\n".join(report.lines())
    assert report.splits == {"train": len(train), **({"test": len(test)} if test else {})}


def test_rerender_with_fewer_tiles_removes_stale_list(tmp_path):
    render_aerial(tmp_path, n_tiles=4, size=32, seed=0, workers=1)
    assert (tmp_path / "splits" / "test.txt").read_text().split("\n")[1:] == ["2", "4", ""]
    render_aerial(tmp_path, n_tiles=1, size=32, seed=0, workers=1)
    assert not (tmp_path / "splits" / "test.txt").exists()
    assert [r.id for r in create_dataset("vaihingen", tmp_path, "train").records] == ["1"]


def test_bad_options(tmp_path):
    for kwargs in ({"n_tiles": 0}, {"n_tiles": 34}, {"size": 8}, {"seed": -1}, {"gsd": 0.0},
                   {"boundary_px": -1}):
        with pytest.raises(ConfigError):  # a user error: one line on the command line
            render_aerial(tmp_path, **{"size": 32, "workers": 1, **kwargs})


# --------------------------------------------------------------------------- determinism


def test_deterministic_bytes(tmp_path):
    a, b, c, d = (tmp_path / k for k in "abcd")
    render_aerial(a, n_tiles=3, size=48, seed=5, workers=1)
    render_aerial(b, n_tiles=3, size=48, seed=5, workers=2)
    render_aerial(c, n_tiles=3, size=48, seed=6, workers=1)
    render_aerial(d, n_tiles=2, size=48, seed=5, workers=1)
    fa, fb, fc, fd = _files(a), _files(b), _files(c), _files(d)
    assert len(fa) == 3 * 4 + 2 + 1  # tiles, splits/{train,test}.txt, synthaerial.json
    assert fa == fb  # worker count does not matter
    tifs = [k for k in fa if k.endswith(".tif")]
    assert all(fa[k] != fc[k] for k in tifs)  # another seed: every file differs
    # a tile is the same tile whatever the tile count
    assert all(fd[k] == fa[k] for k in fd if k.endswith(".tif"))


# --------------------------------------------------------------------------- the DSM is needed


def _ndsm(t: dict) -> np.ndarray:
    """DSM minus a plane fitted to the ground pixels (impervious and low vegetation)."""
    dsm, lab = t["dsm"], t["label"]
    yy, xx = np.mgrid[0 : dsm.shape[0], 0 : dsm.shape[1]]
    g = (lab == IMPERVIOUS) | (lab == LOW_VEG)
    coef = np.linalg.lstsq(np.c_[xx[g], yy[g], np.ones(g.sum())], dsm[g], rcond=None)[0]
    return dsm - (coef[0] * xx + coef[1] * yy + coef[2])


def test_grey_roofs_look_like_roads_but_stand_higher(big_tiles):
    roofs, roads, building_px, road_like_px, road_like_building = [], [], 0, 0, 0
    for t in big_tiles:
        irrg, lab = t["irrg"], t["label"]
        nd = _ndsm(t)
        road_colour = np.median(irrg[lab == IMPERVIOUS], axis=0)
        road_like = np.abs(irrg - road_colour).max(-1) <= 12
        grey = road_like & (lab == BUILDING)
        building_px += int((lab == BUILDING).sum())
        road_like_px += int(road_like.sum())
        road_like_building += int(grey.sum())
        roofs.append(nd[grey])
        roads.append(nd[road_like & (lab == IMPERVIOUS)])
    assert sum(t["info"]["road_grey_roofs"] for t in big_tiles) >= 3
    # roofs with the road's colour exist in numbers: by colour alone they pass for road
    assert road_like_building / building_px > 0.08
    assert road_like_building / road_like_px > 0.05
    roofs, roads = np.concatenate(roofs), np.concatenate(roads)
    # ... but the DSM sets them apart: eaves >= 3 m above the ground
    assert np.median(roofs) > 3.0 and np.percentile(roofs, 10) > 2.0
    assert abs(np.median(roads)) < 0.5 and np.percentile(roads, 90) < 1.0


def test_trees_look_like_low_vegetation_but_stand_higher(big_tiles):
    trees, lows, col_t, col_l = [], [], [], []
    for t in big_tiles:
        irrg, lab = t["irrg"], t["label"]
        nd = _ndsm(t)
        trees.append(nd[lab == TREE])
        lows.append(nd[lab == LOW_VEG])
        col_t.append(irrg[lab == TREE])
        col_l.append(irrg[lab == LOW_VEG])
    trees, lows = np.concatenate(trees), np.concatenate(lows)
    col_t, col_l = np.concatenate(col_t).mean(0), np.concatenate(col_l).mean(0)
    # same vegetation colour (bright NIR, so red in IRRG) ...
    assert col_t[0] > col_t[1] + 40 and col_l[0] > col_l[1] + 40
    assert np.abs(col_t - col_l).max() < 40
    # ... different heights
    assert np.median(trees) > 4.0 and np.percentile(trees, 10) > 2.0
    assert abs(np.median(lows)) < 0.3 and np.percentile(lows, 95) < 1.0


def test_cars_and_clutter_are_low_objects(big_tiles):
    cars, clutter = [], []
    for t in big_tiles:
        nd = _ndsm(t)
        cars.append(nd[t["label"] == CAR])
        clutter.append(nd[t["label"] == CLUTTER])
    cars, clutter = np.concatenate(cars), np.concatenate(clutter)
    assert cars.size and clutter.size
    assert 0.5 < np.median(cars) < 2.0
    assert 0.1 < np.median(clutter) < 3.0


def test_render_tile_shapes_and_terrain_slope():
    res = render_tile(np.random.default_rng(0), 96, 90 / 96)
    assert res["irrg"].shape == (96, 96, 3) and res["irrg"].dtype == np.uint8
    assert res["dsm"].shape == (96, 96) and res["dsm"].dtype == np.float32
    assert res["label"].shape == (96, 96) and res["label"].max() <= 5
    assert res["label_colour"].shape == res["label_noBoundary"].shape == (96, 96, 3)
    assert 0.5 <= res["info"]["terrain_slope_percent"] <= 5.0


def test_cast_shadows_fall_away_from_the_sun():
    h = np.zeros((60, 60), np.float32)
    h[28:32, 28:32] = 10.0  # a 10 m tower on flat ground, 1 m pixels
    lit = _cast_shadows(h, 1.0, (0.0, -1.0), 1.0, eps=0.05)  # sun to the north, 45 degrees
    assert lit[:28].all() and lit[28:32, 28:32].all()  # towards the sun and the roof: lit
    assert not lit[32:41, 29:31].any()  # 10 m shadow to the south
    assert lit[43:, :].all()
    lit = _cast_shadows(h, 1.0, (1.0, 0.0), 1.0, eps=0.05)  # sun to the east
    assert not lit[29:31, 19:28].any() and lit[:, 32:].all()


# --------------------------------------------------------------------------- check and CLI


def test_data_check_passes(full_tree):
    out, _ = full_tree
    report = check_dataset("vaihingen", out)
    assert report.ok, "\n".join(report.lines())
    assert report.splits == {"train": 16, "test": 17}
    result = runner.invoke(app, ["data", "check", "--dataset", "vaihingen", "--root", str(out)])
    assert result.exit_code == 0, result.output
    assert "no problems found" in result.output


def test_cli_synth_aerial(tmp_path):
    out = tmp_path / "aerial"
    result = runner.invoke(app, ["data", "synth", "aerial", "--out", str(out), "--tiles", "3",
                                 "--size", "40", "--seed", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "synthaerial: 2 train + 1 test tiles at 40x40" in result.output
    for tile in ("1", "2", "3"):
        assert all(p.is_file() for p in _paths(out, tile).values())
    meta = json.loads((out / "synthaerial.json").read_text())
    assert meta["options"]["seed"] == 1 and meta["splits"]["train"]["tiles"] == ["1", "3"]
    assert [r.id for r in create_dataset("vaihingen", out, "test").records] == ["2"]
    bad = runner.invoke(app, ["data", "synth", "aerial", "--out", str(out), "--tiles", "40"])
    assert bad.exit_code == 2  # a user error (one line), not an internal error
    assert "n_tiles must be 1..33" in bad.output and "Traceback" not in bad.output
