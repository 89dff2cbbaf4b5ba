"""Datasets check their files when they are built (``check_files=True``, the default).

Tiny trees (32-48 px) with planted faults: each test knows how many problems there are, of
which kind, in which file, and what the one-line error says about them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from fixtures.deliver_tree import deliver_path, make_deliver_tree
from fixtures.isprs_tree import make_vaihingen_tree
from fixtures.mcubes_tree import make_mcubes_tree
from PIL import Image
from typer.testing import CliRunner

from fusionseg.cli import app
from fusionseg.config import load_config
from fusionseg.data import DataError, create_dataset
from fusionseg.data.check import check_dataset
from fusionseg.data.datasets.base import FILE_PROBLEMS_SHOWN, DatasetFilesError
from fusionseg.data.synthetic import render_aerial
from fusionseg.engine.datamodule import build_dataset
from fusionseg.inference import open_inputs

runner = CliRunner()
MODS = ["rgb", "depth"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def deliver(tmp_path) -> Path:
    """A DELIVER tree of 32 px samples; train: cloud 000000-000003, night 000008-000011."""
    root = tmp_path / "DELIVER"
    make_deliver_tree(root, per_split=4, modalities=("rgb", "hha", "depth", "event", "lidar"))
    return root


def _train(rel: str) -> str:
    return f"{rel[:5]}/train/MAP_1/{rel[6:]}"


def _build_error(*args, **kwargs) -> DatasetFilesError:
    with pytest.raises(DatasetFilesError) as ei:
        create_dataset(*args, **kwargs)
    return ei.value


# --------------------------------------------------------------------------- one problem each


def test_clean_tree_builds(deliver):
    assert len(create_dataset("deliver", deliver, "train", MODS)) == 8


def test_missing_partner_file(deliver):
    victim = deliver_path(deliver, _train("cloud/000001"), "depth")
    victim.unlink()
    err = _build_error("deliver", deliver, "train", MODS)
    assert isinstance(err, DataError)  # the CLI prints it as one line, exit status 2
    assert err.path == str(deliver)
    assert [(p.kind, p.modality, p.path) for p in err.problems] == [
        ("missing_file", "depth", str(victim))]
    text = str(err)
    assert "dataset 'deliver' split 'train': 1 file problem in 8 samples" in text
    assert f"{victim} [modality 'depth']: missing file (sample 'cloud/train/MAP_1/000001')" in text


@pytest.mark.parametrize("content", [b"", b"\x89PNG garbage, not an image"], ids=["empty", "garbage"])
def test_unreadable_header(deliver, content):
    victim = deliver_path(deliver, _train("night/000009"), "label")
    victim.write_bytes(content)
    err = _build_error("deliver", deliver, "train", MODS)
    assert [(p.kind, p.modality, p.path) for p in err.problems] == [
        ("unreadable", "label", str(victim))]
    assert f"{victim} [modality 'label']: unreadable" in str(err)


def test_size_mismatch_across_modalities(deliver):
    victim = deliver_path(deliver, _train("cloud/000002"), "depth")
    Image.fromarray(np.full((16, 24), 3000, np.uint16)).save(victim)
    err = _build_error("deliver", deliver, "train", MODS)
    assert [(p.kind, p.modality, p.path) for p in err.problems] == [
        ("size_mismatch", "depth", str(victim))]
    assert (f"{victim} [modality 'depth']: size mismatch: depth 16x24 vs rgb 32x32 "
            "(H x W; sample 'cloud/train/MAP_1/000002')") in str(err)


def test_only_the_selected_modalities_are_checked(deliver):
    deliver_path(deliver, _train("cloud/000001"), "event").unlink()
    assert len(create_dataset("deliver", deliver, "train", MODS)) == 8
    err = _build_error("deliver", deliver, "train", ["rgb", "event"])
    assert [p.modality for p in err.problems] == ["event"]


# --------------------------------------------------------------------------- many problems


def _plant_seven(root: Path) -> list[tuple[str, str, Path]]:
    """Seven problems in the train split of ``deliver`` (rgb + depth + label), in record order
    (rgb files are the index: a sample without one is no sample, so rgb stays)."""
    p = {k: deliver_path(root, _train(rel), m) for k, (rel, m) in {
        "a": ("cloud/000000", "depth"), "b": ("cloud/000001", "depth"),
        "c": ("cloud/000002", "label"), "d": ("cloud/000003", "depth"),
        "e": ("night/000008", "depth"), "f": ("night/000008", "label"),
        "g": ("night/000010", "depth")}.items()}
    p["a"].unlink()
    p["b"].write_bytes(b"")
    p["c"].write_bytes(b"garbage")
    Image.fromarray(np.zeros((16, 16), np.uint16)).save(p["d"])
    p["e"].unlink()
    p["f"].unlink()
    Image.fromarray(np.zeros((20, 32), np.uint16)).save(p["g"])
    return [("missing_file", "depth", p["a"]), ("unreadable", "depth", p["b"]),
            ("unreadable", "label", p["c"]), ("size_mismatch", "depth", p["d"]),
            ("missing_file", "depth", p["e"]), ("missing_file", "label", p["f"]),
            ("size_mismatch", "depth", p["g"])]


def test_all_problems_in_one_error(deliver):
    planted = _plant_seven(deliver)
    err = _build_error("deliver", deliver, "train", MODS)
    assert [(p.kind, p.modality, Path(p.path)) for p in err.problems] == planted
    text = str(err)
    assert "\n" not in text
    assert "dataset 'deliver' split 'train': 7 file problems in 8 samples: " in text
    assert FILE_PROBLEMS_SHOWN == 5
    for _, modality, path in planted[:5]:
        assert f"{path} [modality '{modality}']" in text
    for _, _, path in planted[5:]:
        assert str(path) not in text
    assert "; and 2 more; " in text
    assert (f"`fusionseg data check --dataset deliver --root {deliver} --split train "
            "--modalities rgb,depth`") in text
    assert "check_files=False" in text


def test_the_named_command_lists_them_all(deliver):
    _plant_seven(deliver)
    command = re.search(r"`fusionseg (data check [^`]+)`", str(_build_error(
        "deliver", deliver, "train", MODS))).group(1)
    result = runner.invoke(app, shlex.split(command))
    assert result.exit_code == 1, result.output  # a report, not a construction error (2)
    assert "FAILED: 7 problem(s)" in result.output
    report = check_dataset("deliver", deliver, splits=["train"], modalities=MODS,
                           options={"check_files": True})  # the walk never stops at building
    assert report.counts == {"missing_file": 3, "unreadable": 2, "size_mismatch": 2}


# --------------------------------------------------------------------------- skipping it


def test_skip_switch_defers_problems_to_loading(deliver):
    _plant_seven(deliver)
    ds = create_dataset("deliver", deliver, "train", MODS, check_files=False)
    assert len(ds) == 8
    ds[5]  # night/000009: untouched
    with pytest.raises(DataError, match="missing file"):
        ds[0]


def test_datamodule_and_predict_check_through_the_constructor(tmp_path):
    root = tmp_path / "DELIVER"
    make_deliver_tree(root, modalities=("rgb", "hha", "event", "lidar"))
    victim = deliver_path(root, "night/val/MAP_1/000006", "hha")
    victim.unlink()
    config = CONFIGS / "baselines" / "deliver_sum_fusion.yaml"
    cfg = load_config(config, [f"data.root={root}"])
    assert len(build_dataset(cfg, "train", train=True)) == 4  # train is complete
    with pytest.raises(DatasetFilesError, match="1 file problem in 4 samples") as ei:
        build_dataset(cfg, "val", train=False)
    assert str(victim) in str(ei.value)
    with pytest.raises(DatasetFilesError, match="1 file problem in 4 samples"):
        open_inputs(str(root), cfg, {}, split="val")
    off = load_config(config, [f"data.root={root}", "data.options.check_files=false"])
    assert len(build_dataset(off, "val", train=False)) == 4
    assert len(open_inputs(str(root), off, {}, split="val")) == 4


# --------------------------------------------------------------------------- other layouts


def test_multi_file_modality_part(tmp_path):
    root = tmp_path / "mc"
    names = make_mcubes_tree(root, splits={"train": 3})
    victim = root / "polL_aolp_cos" / f"{names['train'][1]}.npy"
    victim.unlink()
    assert len(create_dataset("mcubes", root, "train", ["rgb", "dolp"])) == 3
    err = _build_error("mcubes", root, "train", ["rgb", "aolp"])
    assert [(p.kind, p.modality, p.path) for p in err.problems] == [
        ("missing_file", "aolp:cos", str(victim))]


def test_isprs_windows_count_a_file_once_and_tolerance_holds(tmp_path):
    root = tmp_path / "v"
    make_vaihingen_tree(root, tiles=["1", "3"], dsm_offsets={"1": (2, -1), "3": (30, 0)})
    label3 = root / "gts_for_participants" / "top_mosaic_09cm_area3.tif"
    # tile 1's DSM is within the 16 px tolerance; tile 3's is 30 rows off
    err = _build_error("vaihingen", root, "train", tiles=["1", "3"])
    assert [(p.kind, p.modality) for p in err.problems] == [("size_mismatch", "dsm")]
    assert len(create_dataset("vaihingen", root, "train", tiles=["1", "3"],
                              dsm_size_tolerance=30)) == 2
    label3.unlink()
    # 6 windows per tile (40 or 41 x 32 in 16 px windows), the missing label counted once
    err = _build_error("vaihingen", root, "train", tiles=["1", "3"], tile_size=16,
                       dsm_size_tolerance=30)
    assert "1 file problem in 12 samples" in str(err)
    assert [(p.kind, p.modality, p.path) for p in err.problems] == [
        ("missing_file", "label", str(label3))]


def test_release_tree_with_a_missing_tile_is_reported(tmp_path):
    root = tmp_path / "Vaihingen"
    make_vaihingen_tree(root)
    (root / "top" / "top_mosaic_09cm_area5.tif").unlink()
    assert len(create_dataset("vaihingen", root, "test")) == 17
    err = _build_error("vaihingen", root, "train")  # the fixed list: 16 tiles, none dropped
    assert "1 file problem in 16 samples" in str(err)
    assert [(p.kind, p.modality, Path(p.path).name) for p in err.problems] == [
        ("missing_file", "irrg", "top_mosaic_09cm_area5.tif")]


def test_synthaerial_list_entry_without_files(tmp_path):
    render_aerial(tmp_path, n_tiles=4, size=32, seed=0, workers=1)
    lst = tmp_path / "splits" / "train.txt"
    with open(lst, "a") as f:
        f.write("9\n")
    err = _build_error("vaihingen", tmp_path, "train")
    assert "1 file problem in 3 samples" in str(err)
    assert [(p.kind, p.path) for p in err.problems] == [("list_entry_without_files", str(lst))]
    assert f"{lst}: list entry without files: entry '9' has no files" in str(err)
