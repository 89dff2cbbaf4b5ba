"""DELIVER loader on a tiny generated tree in the release's layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.deliver_tree import ALL_MODALITIES, deliver_path, make_deliver_tree, raw_label
from PIL import Image
from torch.utils.data import DataLoader

from fusionseg.data import (
    Collate,
    DataError,
    build_train_transforms,
    check_dataset,
    create_dataset,
    list_datasets,
)
from fusionseg.data.datasets import DELIVER, DELIVER_CLASSES, DELIVER_PALETTE
from fusionseg.data.datasets.base import DatasetFilesError


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "DELIVER"
    stems = make_deliver_tree(root)
    return root, stems


def test_registered_and_classes():
    assert "deliver" in list_datasets()
    assert len(DELIVER_CLASSES) == 25 and DELIVER_CLASSES[0] == "Building" and DELIVER_CLASSES[-1] == "Truck"
    assert DELIVER_PALETTE.shape == (25, 3) and DELIVER_PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in DELIVER_PALETTE}) == 25


def test_read_back_shapes_dtypes_meta(tree):
    root, stems = tree
    ds = create_dataset("deliver", root, "train", list(ALL_MODALITIES))
    assert isinstance(ds, DELIVER)
    assert len(ds) == 4 and ds.num_classes == 25 and ds.ignore_index == 255
    assert ds.conditions == ["cloud", "night"]
    assert [r.id for r in ds.records] == sorted(s for s in stems if "/train/" in s)
    s = ds[0]
    for m in ALL_MODALITIES:
        assert s[m].shape == (3, 32, 32) and s[m].dtype == torch.float32, m
    assert s["label"].shape == (32, 32) and s["label"].dtype == torch.int64
    meta = s["meta"]
    assert meta["id"] == "cloud/train/MAP_1/000000"
    assert meta["condition"] == "cloud" and meta["case"] == "cloud"
    assert meta["paths"]["rgb"].endswith("img/cloud/train/MAP_1/000000_rgb_front.png")
    assert meta["paths"]["hha"].endswith("hha/cloud/train/MAP_1/000000_depth_front.png")
    assert meta["paths"]["depth"].endswith("depth/cloud/train/MAP_1/000000_depth_front.png")
    assert meta["paths"]["label"].endswith("semantic/cloud/train/MAP_1/000000_semantic_front.png")

    # values: rgb in [0, 1], depth in metres repeated to 3, thermal repeated, lidar RGBA cut
    raw_rgb = np.asarray(Image.open(meta["paths"]["rgb"]))
    np.testing.assert_allclose(s["rgb"].numpy(), raw_rgb.transpose(2, 0, 1) / 255.0, rtol=1e-6)
    raw_depth = np.asarray(Image.open(meta["paths"]["depth"]))
    np.testing.assert_allclose(s["depth"][1].numpy(), raw_depth * 0.001, rtol=1e-6)
    raw_lidar = np.asarray(Image.open(meta["paths"]["lidar"]))
    assert raw_lidar.shape[2] == 4
    np.testing.assert_allclose(s["lidar"].numpy(), raw_lidar[..., :3].transpose(2, 0, 1) / 255.0, rtol=1e-6)
    assert torch.equal(s["thermal"][0], s["thermal"][2])


def test_label_mapping(tree):
    root, _ = tree
    ds = create_dataset("deliver", root, "val", ["rgb"])
    for i in range(len(ds)):
        lab = ds[i]["label"].numpy()
        raw = np.asarray(Image.open(ds.records[i].label))[..., 0].astype(np.int64)
        expected = np.where((raw == 0) | (raw == 255), 255, raw - 1)
        np.testing.assert_array_equal(lab, expected)
        assert lab.min() >= 0 and set(np.unique(lab)) <= set(range(25)) | {255}
        assert np.all(lab[0] == 255) and np.all(lab[-1] == 255)  # raw 0 and raw 255 rows
    # every raw class 1..25 maps to 0..24
    decoded = ds.decode_label(np.arange(256, dtype=np.uint8).reshape(16, 16, 1))
    flat = decoded.reshape(-1)
    assert flat[0] == 255 and flat[255] == 255
    assert flat[1:26].tolist() == list(range(25))


def test_condition_and_case_filtering(tmp_path):
    root = tmp_path / "D"
    make_deliver_tree(root, conditions=("cloud", "fog", "night"), failures=("motionblur", "lidarjitter"))
    ds = create_dataset("deliver", root, "val", ["rgb"], conditions=["fog"])
    assert len(ds) == 4 and ds.conditions == ["fog"]
    assert all(r.condition == "fog" for r in ds.records)
    ds = create_dataset("deliver", root, "val", ["rgb"], conditions=["cloud", "night"])
    assert ds.conditions == ["cloud", "night"] and len(ds) == 8
    ds = create_dataset("deliver", root, "val", ["rgb"], case="night")
    assert len(ds) == 4 and {r.condition for r in ds.records} == {"night"}
    ds = create_dataset("deliver", root, "val", ["rgb"], case="motionblur")
    assert len(ds) == 3 and all("MAP_2_motionblur" in r.id for r in ds.records)
    assert {r.case for r in ds.records} == {"motionblur"}
    assert ds[0]["meta"]["case"] == "motionblur" and ds[0]["meta"]["condition"] == "cloud"
    ds = create_dataset("deliver", root, "train", ["rgb"])
    assert ds.cases == ["cloud", "fog", "lidarjitter", "motionblur", "night"]
    assert len(create_dataset("deliver", root, "train", ["rgb"], max_samples=3)) == 3
    with pytest.raises(DataError, match="unknown DELIVER case 'snow'"):
        create_dataset("deliver", root, "val", ["rgb"], case="snow")
    with pytest.raises(DataError, match="'sun'.* not found"):
        create_dataset("deliver", root, "val", ["rgb"], conditions=["sun"])
    with pytest.raises(DataError, match="no DELIVER samples"):
        create_dataset("deliver", root, "val", ["rgb"], conditions=["fog"], case="night")


def test_layout_errors(tree, tmp_path):
    root, _ = tree
    with pytest.raises(DataError) as ei:
        create_dataset("deliver", tmp_path / "missing", "train", ["rgb"])
    assert str(tmp_path / "missing") in str(ei.value)
    with pytest.raises(DataError, match="split 'test'") as ei:
        create_dataset("deliver", root, "test", ["rgb"])
    assert str(root / "img") in str(ei.value)
    with pytest.raises(DataError, match="no modality 'nir'"):
        create_dataset("deliver", root, "train", ["rgb", "nir"])
    with pytest.raises(DataError, match="unknown option.*'colour'"):
        create_dataset("deliver", root, "train", ["rgb"], colour=True)
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        create_dataset("nope", root, "train", ["rgb"])


def test_missing_modality_file(tree):
    root, stems = tree
    victim = deliver_path(root, "cloud/train/MAP_1/000001", "lidar")
    victim.unlink()
    # reported when the dataset is built ...
    with pytest.raises(DatasetFilesError) as built:
        create_dataset("deliver", root, "train", ["rgb", "lidar"])
    msg = str(built.value)
    assert "1 file problem in 4 samples" in msg and str(victim) in msg and "'lidar'" in msg
    assert "missing file (sample 'cloud/train/MAP_1/000001')" in msg
    # ... and, with the check skipped, when the sample is read
    ds = create_dataset("deliver", root, "train", ["rgb", "lidar"], check_files=False)
    ds[0]  # fine
    with pytest.raises(DataError) as ei:
        ds[1]
    msg = str(ei.value)
    assert str(victim) in msg and "'lidar'" in msg and "missing file" in msg
    # ... and by `fusionseg data check` (check_dataset), the one file named
    report = check_dataset("deliver", root, ["train"], ["rgb", "lidar"])
    assert report.counts == {"missing_file": 1}
    (problem,) = report.groups[("missing_file", "lidar")].examples
    assert problem.path == str(victim) and problem.split == "train"


def test_size_mismatch(tree):
    root, _ = tree
    p = deliver_path(root, "night/val/MAP_1/000006", "thermal")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(p)
    with pytest.raises(DatasetFilesError) as built:
        create_dataset("deliver", root, "val", ["rgb", "thermal"])
    assert f"{p} [modality 'thermal']: size mismatch: thermal 16x16 vs rgb 32x32" in str(built.value)
    ds = create_dataset("deliver", root, "val", ["rgb", "thermal"], check_files=False)
    idx = [r.id for r in ds.records].index("night/val/MAP_1/000006")
    with pytest.raises(DataError) as ei:
        ds[idx]
    msg = str(ei.value)
    assert "size mismatch" in msg and "thermal 16x16" in msg and "rgb 32x32" in msg
    assert "night/val/MAP_1/000006" in msg and str(p) in msg
    report = check_dataset("deliver", root, ["val"], ["rgb", "thermal"], deep=True)
    assert report.counts == {"size_mismatch": 1}
    (problem,) = report.groups[("size_mismatch", "thermal")].examples
    assert problem.path == str(p) and "thermal 16x16 vs rgb 32x32" in problem.message


def test_label_out_of_range(tree):
    root, _ = tree
    p = deliver_path(root, "cloud/val/MAP_1/000002", "label")
    sem = np.asarray(Image.open(p)).copy()
    sem[5, 5, 0] = 40
    Image.fromarray(sem).save(p)
    ds = create_dataset("deliver", root, "val", ["rgb"])
    with pytest.raises(DataError) as ei:
        ds[0]
    msg = str(ei.value)
    assert str(p) in msg and "out of range" in msg and "[40]" in msg


def test_wrong_depth_bit_depth(tree):
    root, _ = tree
    p = deliver_path(root, "cloud/train/MAP_1/000000", "depth")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(p)
    ds = create_dataset("deliver", root, "train", ["depth"])
    with pytest.raises(DataError, match="bit depth") as ei:
        ds[0]
    assert str(p) in str(ei.value) and "'depth'" in str(ei.value)


def test_through_transforms_and_loader(tree):
    root, _ = tree
    ds = create_dataset("deliver", root, "train", ["rgb", "depth", "lidar"])
    ds.transform = build_train_transforms(ds.specs, crop_size=(24, 24))
    loader = DataLoader(ds, batch_size=2, collate_fn=Collate(ds.modalities))
    batch = next(iter(loader))
    for m in ds.modalities:
        assert batch[m].shape == (2, 3, 24, 24)
    assert batch["label"].shape == (2, 24, 24) and "present" not in batch
    assert len(batch["meta"]) == 2


def test_fixture_label_pattern():
    raw = raw_label(32, 3)
    assert raw.dtype == np.uint8 and set(np.unique(raw)) <= set(range(26)) | {255}
