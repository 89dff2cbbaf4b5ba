"""Dataset roots: every benchmark loader accepts the folder its official archive unpacks to and
that folder's parent (``MultimodalDataset.resolve_root``), and says which folder to point at
when given anything else."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from fixtures.deliver_tree import make_deliver_tree
from fixtures.fmb_tree import make_fmb_tree
from fixtures.isprs_tree import make_potsdam_tree, make_vaihingen_tree
from fixtures.mcubes_tree import make_mcubes_tree
from fixtures.mfnet_tree import make_mfnet_tree
from fixtures.muses_tree import make_muses_tree
from fixtures.nyudv2_tree import make_nyudv2_tree
from typer.testing import CliRunner

from fusionseg.cli import app
from fusionseg.data import DataError, create_dataset, get_dataset_class
from fusionseg.data.check import check_dataset

# name -> (archive folder, tree writer, split, modalities, options, class name, marker texts)
CASES = {
    "mcubes": ("multimodal_dataset", make_mcubes_tree, "train", None, {}, "MCubeS",
               ["list_folder/", "polL_color/"]),
    "deliver": ("DELIVER", make_deliver_tree, "train", ["rgb", "depth"], {}, "DELIVER",
                ["img/", "semantic/"]),
    "mfnet": ("ir_seg_dataset", make_mfnet_tree, "train", None, {}, "MFNet",
              ["images/ or rgb/ or img/ or ther/", "labels/"]),
    "fmb": ("FMB", make_fmb_tree, "test", None, {}, "FMB", ["*/Visible/"]),
    "nyudv2": ("NYUDepthv2", make_nyudv2_tree, "train", ["rgb", "hha", "depth"], {}, "NYUDv2",
               ["Label/ or Labels/", "RGB/ or HHA/ or Depth/"]),
    "muses": ("muses", make_muses_tree, "train", ["rgb", "lidar"], {}, "MUSES",
              ["frame_camera/"]),
    "vaihingen": ("ISPRS_semantic_labeling_Vaihingen",
                  lambda r: make_vaihingen_tree(r, tiles=["1", "3"]), "train", None,
                  {"tiles": ["1", "3"]}, "Vaihingen", ["top/"]),
    "potsdam": ("Potsdam", lambda r: make_potsdam_tree(r, tiles=["2_10"], kinds=("RGB",)),
                "train", ["rgb", "dsm"], {"tiles": ["2_10"]}, "Potsdam",
                ["top/ or 2_Ortho_RGB/ or 3_Ortho_IRRG/ or 4_Ortho_RGBIR/"]),
}
ISPRS = ("vaihingen", "potsdam")


def _build(name: str, at: Path):
    archive, make, split, mods, opts, *_ = CASES[name]
    return create_dataset(name, at, split, mods, **opts)


def _assert_same_first_sample(a, b) -> None:
    sa, sb = a[0], b[0]
    assert set(sa) == set(sb)
    for k in sa:
        if k != "meta":
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
    assert sa["meta"]["id"] == sb["meta"]["id"]
    assert sa["meta"]["paths"] == sb["meta"]["paths"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """name -> (parent, parent/<archive folder>) with the fixture's tree in the archive folder."""
    out = {}
    for name, (archive, make, *_) in CASES.items():
        parent = tmp_path_factory.mktemp(f"{name}_parent")
        make(parent / archive)
        out[name] = (parent, parent / archive)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_archive_folder_and_parent_give_the_same_samples(trees, name):
    parent, folder = trees[name]
    direct = _build(name, folder)
    above = _build(name, parent)
    assert direct.root == folder
    # ISPRS keeps the given folder (its file search spans three levels, so label archives
    # unpacked beside the image folder are found); every other loader records the resolved one
    assert above.root == (parent if name in ISPRS else folder)
    assert len(above) == len(direct) > 0
    assert [r.id for r in above.records] == [r.id for r in direct.records]
    _assert_same_first_sample(direct, above)
    cls = get_dataset_class(name)
    assert cls.resolve_root(folder) == folder
    assert cls.available_splits(parent) == cls.available_splits(folder) != []


@pytest.mark.parametrize("name", list(CASES))
def test_unrelated_folder_names_dataset_and_markers(tmp_path, name):
    empty = tmp_path / "downloads"
    empty.mkdir()
    (empty / "notes").mkdir()
    *_, label, markers = CASES[name]
    with pytest.raises(DataError) as ei:
        _build(name, empty)
    err = ei.value
    assert err.path == str(empty)
    assert f"not a {label} root: expected {', '.join(markers)}; point data.root" in err.problem
    assert "closest" not in err.problem
    assert "\n" not in str(err)
    with pytest.raises(DataError, match=f"not a {label} root"):
        get_dataset_class(name).available_splits(empty)


@pytest.mark.parametrize("name", list(CASES))
def test_two_candidate_trees_are_named(trees, tmp_path, name):
    _, folder = trees[name]
    both = tmp_path / "both"
    for copy in ("copy_a", "copy_b"):
        shutil.copytree(folder, both / copy)
    label = CASES[name][5]
    with pytest.raises(DataError, match=f"holds 2 {label} roots") as ei:
        _build(name, both)
    assert str(both / "copy_a") in ei.value.problem and str(both / "copy_b") in ei.value.problem
    assert ei.value.path == str(both)


def test_mcubes_archive_folder_two_levels_down(trees, tmp_path):
    """``downloads/MCubeS/multimodal_dataset``: found below a folder that holds other things."""
    _, folder = trees["mcubes"]
    top = tmp_path / "downloads"
    shutil.copytree(folder, top / "MCubeS" / "multimodal_dataset")
    (top / "other_project").mkdir()
    ds = create_dataset("mcubes", top, "val")
    assert ds.root == top / "MCubeS" / "multimodal_dataset"
    assert len(ds) == len(create_dataset("mcubes", folder, "val")) == 2
    # two archive folders two levels down are ambiguous too
    shutil.copytree(folder, top / "MCubeS_copy" / "multimodal_dataset")
    with pytest.raises(DataError, match="holds 2 MCubeS roots"):
        create_dataset("mcubes", top, "val")


def test_partial_tree_below_is_named_and_damaged_root_keeps_the_loader_error(trees, tmp_path):
    _, folder = trees["mcubes"]
    parent = tmp_path / "dl"
    shutil.copytree(folder, parent / "multimodal_dataset")
    shutil.rmtree(parent / "multimodal_dataset" / "list_folder")
    with pytest.raises(DataError) as ei:
        create_dataset("mcubes", parent, "train")
    msg = ei.value.problem
    assert "not a MCubeS root" in msg
    assert re.search(
        rf"closest: {re.escape(str(parent / 'multimodal_dataset'))} has polL_color/ but lacks "
        r"list_folder/", msg), msg
    # pointed at the damaged folder itself: the loader's own, more precise error
    with pytest.raises(DataError, match="list file not found"):
        create_dataset("mcubes", parent / "multimodal_dataset", "train")


def test_missing_root_and_file_root(tmp_path):
    with pytest.raises(DataError, match="dataset root not found") as ei:
        create_dataset("mcubes", tmp_path / "nowhere", "train")
    assert ei.value.path == str(tmp_path / "nowhere")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="root is not a folder"):
        create_dataset("fmb", tmp_path / "f.txt", "train")
    assert get_dataset_class("mcubes").available_splits(tmp_path / "nowhere") == []


def test_data_check_reads_the_parent_and_cli_names_the_folder(trees, tmp_path):
    parent, folder = trees["mcubes"]
    report = check_dataset("mcubes", parent)
    assert report.ok, report.lines()
    assert report.splits == {"train": 3, "val": 2, "test": 2}
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["data", "check", "--dataset", "mcubes", "--root", str(empty)])
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "not a MCubeS root: expected list_folder/, polL_color/" in out


def test_data_check_finds_deliver_splits_from_the_parent(trees):
    parent, folder = trees["deliver"]
    from_parent, from_folder = check_dataset("deliver", parent), check_dataset("deliver", folder)
    assert from_parent.ok and from_parent.splits == from_folder.splits
    assert set(from_parent.splits) >= {"train", "val"}
