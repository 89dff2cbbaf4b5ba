"""``fusionseg data check`` / :func:`fusionseg.data.check.check_dataset` on clean and broken trees.

Every broken-tree test plants several faults at once and asserts that each is reported (kind,
modality, count, file) and that the walk went on past the first."""

from __future__ import annotations

import io

import numpy as np
import pytest
import yaml
from fixtures.deliver_tree import deliver_path, make_deliver_tree
from fixtures.fmb_tree import make_fmb_tree
from fixtures.isprs_tree import make_potsdam_tree, make_vaihingen_tree
from fixtures.mcubes_tree import make_mcubes_tree, raw_gt
from fixtures.mfnet_tree import make_mfnet_tree
from fixtures.muses_tree import make_muses_tree
from fixtures.nyudv2_tree import make_nyudv2_tree
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from fusionseg.cli import app
from fusionseg.data import DataError
from fusionseg.data.check import check_dataset, print_report, probe_file

runner = CliRunner()


def _report_text(report) -> str:
    buf = io.StringIO()
    print_report(report, Console(file=buf, width=200, color_system=None))
    return buf.getvalue()


def _paths(report, kind):
    return [p.path for p in report.problems(kind)]


# --------------------------------------------------------------------------- clean trees


@pytest.mark.parametrize(
    "name,build",
    [
        ("deliver", make_deliver_tree),
        ("mcubes", make_mcubes_tree),
        ("muses", make_muses_tree),
        ("mfnet", make_mfnet_tree),
        ("fmb", make_fmb_tree),
        ("nyudv2", make_nyudv2_tree),
        ("vaihingen", lambda r: make_vaihingen_tree(r, dsm_offsets={"3": (2, -1)})),
        ("potsdam", make_potsdam_tree),
    ],
)
def test_clean_trees_pass(tmp_path, name, build):
    build(tmp_path / name)
    report = check_dataset(name, tmp_path / name)
    assert report.ok, "\n".join(report.lines())
    assert report.splits and all(n > 0 for n in report.splits.values())
    assert report.files_checked > 0
    assert "OK" in _report_text(report)
    result = runner.invoke(app, ["data", "check", "--dataset", name, "--root", str(tmp_path / name)])
    assert result.exit_code == 0, result.output
    assert "no problems found" in result.output


def test_probe_file_headers(tmp_path):
    from fixtures.mcubes_tree import _write_png16

    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "a.png")
    _write_png16(tmp_path / "b.png", np.zeros((5, 7, 3), np.uint16))
    Image.fromarray(np.zeros((5, 7), np.uint16)).save(tmp_path / "c.png")
    np.save(tmp_path / "d.npy", np.zeros((5, 7), np.float32))
    np.savez_compressed(tmp_path / "e.npz", np.zeros((5, 7, 3), np.float32))
    import tifffile

    tifffile.imwrite(tmp_path / "f.tif", np.zeros((5, 7, 4), np.uint8), photometric="rgb", extrasamples=[0])
    got = {p: probe_file(tmp_path / p) for p in ("a.png", "b.png", "c.png", "d.npy", "e.npz", "f.tif")}
    assert [(i.height, i.width, i.channels, i.bits) for i in got.values()] == [
        (5, 7, 3, 8), (5, 7, 3, 16), (5, 7, 1, 16), (5, 7, 1, 32), (5, 7, 3, 32), (5, 7, 4, 8),
    ]
    (tmp_path / "g.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable"):
        probe_file(tmp_path / "g.png")


# --------------------------------------------------------------------------- broken trees


def test_mcubes_broken_tree(tmp_path):
    root = tmp_path / "mc"
    names = make_mcubes_tree(root, splits={"train": 4, "val": 2, "test": 2})
    tr = names["train"]
    (root / "NIR_warped" / f"{tr[0]}.png").unlink()  # missing NIR
    (root / "NIR_warped" / f"{names['val'][1]}.png").unlink()  # another, in another split
    np.save(root / "polL_dolp" / f"{tr[1]}.npy", np.zeros((24, 224), np.float16))  # 16-bit float
    gt = raw_gt(24, 224, 2)
    gt[5, 200:204] = 30
    Image.fromarray(gt).save(root / "GT" / f"{tr[2]}.png")  # label out of range
    Image.fromarray(np.zeros((20, 224, 3), np.uint8)).save(root / "polL_color" / f"{tr[3]}.png")
    with open(root / "list_folder" / "train.txt", "a") as f:
        f.write("outscene_ghost\n")  # list entry without any file
    (root / "polL_aolp_cos" / f"{names['test'][0]}.npy").write_bytes(b"garbage")

    report = check_dataset("mcubes", root)
    assert not report.ok
    assert report.count("missing_file", "nir") == 2
    assert set(_paths(report, "missing_file")) == {
        str(root / "NIR_warped" / f"{tr[0]}.png"), str(root / "NIR_warped" / f"{names['val'][1]}.png")}
    assert report.count("bit_depth", "dolp") == 1
    assert _paths(report, "bit_depth") == [str(root / "polL_dolp" / f"{tr[1]}.npy")]
    assert report.count("label_values", "label") == 1
    assert "[30]" in report.problems("label_values")[0].message
    assert report.count("size_mismatch", "rgb") == 1 and report.count("size_mismatch") == 1
    mismatch = report.problems("size_mismatch")[0]
    assert mismatch.path == str(root / "polL_color" / f"{tr[3]}.png") and "rgb 20x224 vs" in mismatch.message
    assert report.count("list_entry_without_files") == 1
    entry = report.problems("list_entry_without_files")[0]
    assert entry.path == str(root / "list_folder" / "train.txt") and "outscene_ghost" in entry.message
    assert report.count("unreadable", "aolp:cos") == 1
    assert report.count("missing_file") == 2  # the ghost entry is not also counted per file
    text = _report_text(report)
    for words in ("missing file", "unexpected bit depth", "label values outside", "size mismatch",
                  "split list entry without files", "unreadable", "FAILED"):
        assert words in text, words
    d = report.to_dict()
    assert d["ok"] is False and d["counts"]["missing_file"] == 2

    result = runner.invoke(app, ["data", "check", "--dataset", "mcubes", "--root", str(root),
                                 "--split", "train"])
    assert result.exit_code == 1
    assert "outscene_ghost" in result.output and str(tr[0]) in result.output
    assert "split val" not in result.output  # only the split asked for
    clean = runner.invoke(app, ["data", "check", "--dataset", "mcubes", "--root", str(root),
                                "--split", "val", "--modalities", "rgb,aolp,dolp"])
    assert clean.exit_code == 0, clean.output


def test_counts_and_example_limit(tmp_path):
    root = tmp_path / "fmb"
    make_fmb_tree(root, splits={"train": 9, "test": 1})
    for i in range(9):
        (root / "train" / "Infrared" / f"{i:05d}.png").unlink()
    report = check_dataset("fmb", root, max_examples=3)
    group = report.groups[("missing_file", "thermal")]
    assert group.count == 9 and len(group.examples) == 3
    assert "... and 6 more" in _report_text(report)


def test_muses_broken_tree(tmp_path):
    root = tmp_path / "muses"
    make_muses_tree(root, fmt=".png", splits={"train": 1, "val": 1})
    proj = root / "projected_to_rgb"
    lidar = sorted((proj / "lidar" / "train").rglob("*.png"))
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(lidar[0])  # 8-bit, expected 16-bit
    event = sorted((proj / "event_camera" / "val").rglob("*.png"))
    event[0].unlink()
    gts = sorted((root / "gt_semantic" / "val").rglob("*.png"))
    lab = np.asarray(Image.open(gts[1])).copy()
    lab[0, 0] = 19
    Image.fromarray(lab).save(gts[1])
    report = check_dataset("muses", root, modalities=["rgb", "event", "lidar", "radar"])
    assert report.count("bit_depth", "lidar") == 1 and _paths(report, "bit_depth") == [str(lidar[0])]
    assert report.count("missing_file", "event") == 1 and _paths(report, "missing_file") == [str(event[0])]
    assert report.count("label_values", "label") == 1 and _paths(report, "label_values") == [str(gts[1])]
    assert report.num_problems == 3


def test_mfnet_broken_tree(tmp_path):
    root = tmp_path / "mf"
    names = make_mfnet_tree(root)
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "images" / f"{names['train'][0]}.png")
    (root / "train.txt").write_text((root / "train.txt").read_text() + "09999D\n")
    lab = np.asarray(Image.open(root / "labels" / f"{names['val'][0]}.png")).copy()
    lab[3, 3] = 12
    Image.fromarray(lab).save(root / "labels" / f"{names['val'][0]}.png")
    report = check_dataset("mfnet", root, splits=["train", "val"])
    assert report.count("channels", "thermal") == 1  # RGB PNG without the thermal channel
    assert "at least 4" in report.problems("channels")[0].message
    assert report.count("list_entry_without_files") == 1
    assert "09999D" in report.problems("list_entry_without_files")[0].message
    assert report.count("label_values") == 1
    assert report.num_problems == 3


def test_nyudv2_and_fmb_faults(tmp_path):
    root = tmp_path / "nyu"
    names = make_nyudv2_tree(root)
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(root / "Depth" / f"{names['train'][0]}.png")
    Image.fromarray(np.zeros((24, 33, 3), np.uint8)).save(root / "HHA" / f"{names['test'][1]}.png")
    report = check_dataset("nyudv2", root)
    assert report.count("bit_depth", "depth") == 1
    assert "8-bit file, expected 16-bit" in report.problems("bit_depth")[0].message
    assert report.count("size_mismatch", "hha") == 1
    assert report.num_problems == 2

    root = tmp_path / "fmb"
    make_fmb_tree(root)
    (root / "test" / "Infrared" / "00003.png").unlink()
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "train" / "Infrared" / "00001.png")
    report = check_dataset("fmb", root)
    assert report.count("missing_file", "thermal") == 1
    assert report.ok is False and report.num_problems == 1  # 3 equal channels are fine


def test_isprs_faults(tmp_path):
    root = tmp_path / "v"
    make_vaihingen_tree(root, dsm_offsets={"3": (2, -1), "5": (40, 0)})
    (root / "gts_eroded_for_participants" / "top_mosaic_09cm_area4_noBoundary.tif").unlink()
    report = check_dataset("vaihingen", root)
    assert report.count("size_mismatch", "dsm") == 1  # area5 (40 rows off); area3 is tolerated
    assert "dsm_09cm_matching_area5.tif" in _paths(report, "size_mismatch")[0]
    assert report.count("missing_file", "label") == 1
    assert _paths(report, "missing_file")[0].endswith("top_mosaic_09cm_area4_noBoundary.tif")
    assert report.num_problems == 2
    # tiled: each tile's files checked once, not once per window
    tiled = check_dataset("vaihingen", root, options={"tile_size": 8})
    assert tiled.count("size_mismatch") == 1 and tiled.count("missing_file") == 1

    root = tmp_path / "p"
    make_potsdam_tree(root, tiles=["2_10", "2_11", "2_13"])
    (root / "1_DSM" / "dsm_potsdam_02_11.tif").write_bytes(b"II*\x00garbage")
    report = check_dataset("potsdam", root, splits=["train"], options={"tiles": ["2_10", "2_11"]})
    assert report.count("unreadable", "dsm") == 1 and report.num_problems == 1
    report = check_dataset("potsdam", root, splits=["test"])  # 13 of 14 test tiles absent
    assert report.count("missing_file", "rgb") == 13 and report.count("missing_file", "label") == 13


def test_absent_modality_is_a_note_unless_asked(tmp_path):
    root = tmp_path / "D"
    make_deliver_tree(root, modalities=("rgb", "depth", "event", "lidar"))
    report = check_dataset("deliver", root)
    assert report.ok, report.lines()
    assert any("'hha' has no files" in n for n in report.notes)
    assert report.modalities["train"] == ["rgb", "depth", "event", "lidar"]
    asked = check_dataset("deliver", root, modalities=["rgb", "thermal"])
    assert asked.count("missing_file", "thermal") == 8
    # a single file missing is a problem even in auto mode
    deliver_path(root, "cloud/train/MAP_1/000001", "lidar").unlink()
    report = check_dataset("deliver", root, splits=["train"])
    assert report.count("missing_file", "lidar") == 1


def test_layout_problems_and_config(tmp_path):
    report = check_dataset("mcubes", tmp_path / "nowhere")
    assert not report.ok and report.count("layout") == 1
    root = tmp_path / "mc"
    make_mcubes_tree(root, splits={"train": 2})
    report = check_dataset("mcubes", root, splits=["train", "val"])
    assert report.count("layout") == 1 and "list file not found" in report.problems("layout")[0].message
    assert report.splits == {"train": 2}  # went on with the other split
    with pytest.raises(DataError, match="unknown dataset"):
        check_dataset("nope", root)
    result = runner.invoke(app, ["data", "check", "--dataset", "nope", "--root", str(root)])
    assert result.exit_code == 2

    cfg = {
        "model": {"name": "sum_fusion", "backbone": "mit_b0", "modalities": ["rgb", "aolp", "nir"]},
        "data": {"dataset": "mcubes", "root": str(root), "train_split": "train", "val_split": "train",
                 "options": {"nir_mask": True}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "rgb, aolp, nir" in result.output
    (root / "NIR_warped_mask" / sorted((root / "NIR_warped_mask").iterdir())[0].name).unlink()
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 1 and "nir_mask" in result.output


def test_deep_check_finds_truncated_pixels(tmp_path):
    root = tmp_path / "fmb"
    make_fmb_tree(root, splits={"train": 2})
    p = root / "train" / "Visible" / "00001.png"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    assert check_dataset("fmb", root).ok  # headers only
    deep = check_dataset("fmb", root, deep=True)
    assert deep.count("load") + deep.count("unreadable") == 1
    args = ["data", "check", "--dataset", "fmb", "--root", str(root), "--split", "train"]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, [*args, "--deep"])
    assert res.exit_code == 1 and "FAILED: 1 problem(s)" in res.output


def test_folder_dataset_faults(tmp_path):
    from test_folder import write_tree

    root = write_tree(tmp_path / "own", stems=("a", "b", "c", "d"))
    assert check_dataset("folder", root).ok
    (root / "train" / "thermal" / "c.tif").unlink()
    import tifffile

    tifffile.imwrite(root / "train" / "thermal" / "b.tif", np.zeros((12, 16), np.uint8))
    Image.fromarray(np.zeros((10, 16, 3), np.uint8)).save(root / "train" / "rgb" / "a.jpg")
    Image.fromarray(np.full((12, 16), 3, np.uint8)).save(root / "train" / "label" / "d.png")
    report = check_dataset("folder", root)
    assert report.splits == {"train": 4}
    assert report.count("missing_file", "thermal") == 1
    assert report.count("bit_depth", "thermal") == 1
    assert report.count("size_mismatch", "rgb") == 1
    assert report.count("label_values", "label") == 1
    assert report.num_problems == 4
    result = runner.invoke(app, ["data", "check", "--dataset", "folder", "--root", str(root)])
    assert result.exit_code == 1
