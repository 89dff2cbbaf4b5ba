"""Benchmark dataset loaders (MCubeS, MUSES, MFNet, FMB, NYUDv2, Vaihingen, Potsdam) on tiny
generated trees in each release's layout: shapes, dtypes, value ranges, label mapping, errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from fixtures.deliver_tree import make_deliver_tree
from fixtures.fmb_tree import make_fmb_tree
from fixtures.fmb_tree import raw_label as fmb_raw_label
from fixtures.isprs_tree import class_map, make_potsdam_tree, make_vaihingen_tree
from fixtures.mcubes_tree import make_mcubes_tree, raw_gt
from fixtures.mfnet_tree import make_mfnet_tree
from fixtures.muses_tree import SENSORS, make_muses_tree, raw_train_ids
from fixtures.nyudv2_tree import make_nyudv2_tree
from fixtures.nyudv2_tree import raw_label as nyu_raw_label
from PIL import Image
from torch.utils.data import DataLoader

from fusionseg.data import (
    Collate,
    DataError,
    build_eval_transforms,
    build_train_transforms,
    create_dataset,
    list_datasets,
)
from fusionseg.data.datasets import (
    CITYSCAPES_CLASSES,
    FMB_CLASSES,
    ISPRS_CLASSES,
    MCUBES_CLASSES,
    MFNET_CLASSES,
    NYUDV2_CLASSES,
    MCubeS,
    Potsdam,
    Vaihingen,
    read_split_list,
)
from fusionseg.data.datasets.isprs import decode_isprs_colours

ALL_NAMES = ["deliver", "mcubes", "muses", "mfnet", "fmb", "nyudv2", "vaihingen", "potsdam", "folder"]


def _check_sample(s, modalities, hw, channels=None):
    for m in modalities:
        c = (channels or {}).get(m, 3)
        assert s[m].shape == (c, *hw) and s[m].dtype == torch.float32, m
        assert torch.isfinite(s[m]).all(), m
    if "label" in s:
        assert s["label"].shape == hw and s["label"].dtype == torch.int64


def _png(path):
    return np.asarray(Image.open(path))


def test_every_dataset_registered_with_classes_and_palette():
    assert set(ALL_NAMES) <= set(list_datasets())
    from fusionseg.data import get_dataset_class

    expect = {"mcubes": 20, "muses": 19, "mfnet": 9, "fmb": 14, "nyudv2": 40, "vaihingen": 6,
              "potsdam": 6, "deliver": 25}
    for name, k in expect.items():
        cls = get_dataset_class(name)
        assert len(cls.classes) == k, name
        pal = np.asarray(cls.palette)
        assert pal.shape == (k, 3) and pal.dtype == np.uint8, name
        assert len({tuple(c) for c in pal}) == k, f"{name}: palette colours not distinct"
    assert MCUBES_CLASSES[0] == "asphalt" and MCUBES_CLASSES[-1] == "sky"
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[-1] == "bicycle"
    assert MFNET_CLASSES[0] == "unlabeled" and MFNET_CLASSES[-1] == "bump"
    assert FMB_CLASSES[0] == "Road" and FMB_CLASSES[-1] == "Pole"
    assert NYUDV2_CLASSES[0] == "wall" and NYUDV2_CLASSES[-1] == "otherprop"
    assert ISPRS_CLASSES[-1] == "clutter"


def test_read_split_list_formats(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("# comment\n12\n\nRGB/13.jpg Label/13.png\n  outscene_1  \n12\nx.npy\n")
    assert read_split_list(p) == ["12", "13", "outscene_1", "x"]
    with pytest.raises(DataError, match="split list file not found"):
        read_split_list(tmp_path / "nope.txt")


# ----------------------------------------------------------------------------------- MCubeS


@pytest.fixture(scope="module")
def mcubes(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcubes") / "multimodal_dataset"
    return root, make_mcubes_tree(root)


def test_mcubes_read_back(mcubes):
    root, names = mcubes
    ds = create_dataset("mcubes", root, "train")
    assert isinstance(ds, MCubeS) and ds.modalities == ["rgb", "aolp", "dolp", "nir"]
    assert [r.id for r in ds.records] == names["train"] and ds.num_classes == 20
    for i in range(3):
        s = ds[i]
        _check_sample(s, ds.modalities, (24, 32))  # 224 wide - 192 cropped
        name = names["train"][i]
        rgb = _png(root / "polL_color" / f"{name}.png") if i != 1 else None
        if rgb is not None:  # 8-bit
            np.testing.assert_allclose(s["rgb"].numpy(), rgb[:, 192:].transpose(2, 0, 1) / 255, rtol=1e-6)
        else:  # 16-bit colour PNG -> / 65535
            assert 0 <= float(s["rgb"].min()) and float(s["rgb"].max()) <= 1
            assert s["rgb"].unique().numel() > 256  # kept its 16-bit precision
        sin = np.load(root / "polL_aolp_sin" / f"{name}.npy")[:, 192:]
        cos = np.load(root / "polL_aolp_cos" / f"{name}.npy")[:, 192:]
        np.testing.assert_allclose(s["aolp"][0].numpy(), sin, rtol=1e-6)
        np.testing.assert_allclose(s["aolp"][1].numpy(), cos, rtol=1e-6)
        np.testing.assert_allclose(s["aolp"][2].numpy(), sin, rtol=1e-6)
        dolp = np.load(root / "polL_dolp" / f"{name}.npy")[:, 192:]
        for c in range(3):
            np.testing.assert_allclose(s["dolp"][c].numpy(), dolp, rtol=1e-6)
        nir = _png(root / "NIR_warped" / f"{name}.png")[:, 192:]
        scale = 255.0 if nir.dtype == np.uint8 else 65535.0
        np.testing.assert_allclose(s["nir"][1].numpy(), nir / scale, rtol=1e-5)
        assert s["meta"]["paths"]["aolp"].endswith(f"polL_aolp_sin/{name}.npy")
        # label: GT 0..19 kept, 255 ignore, cropped like the images
        np.testing.assert_array_equal(s["label"].numpy(), raw_gt(24, 224, i)[:, 192:])
    assert len(create_dataset("mcubes", root, "all")) == 7
    assert MCubeS.available_splits(root) == ["test", "train", "val"]


def test_mcubes_options_and_errors(mcubes, tmp_path):
    root, names = mcubes
    full = create_dataset("mcubes", root, "val", ["rgb", "nir"], crop_left=0)
    assert full[0]["rgb"].shape == (3, 24, 224)
    masked = create_dataset("mcubes", root, "val", ["nir"], nir_mask=True)[0]["label"]
    assert (masked[:, :8] == 255).all() and (masked[:, 8:] != 255).any()
    with pytest.raises(DataError, match="lists present: all, test, train, val"):
        create_dataset("mcubes", root, "trainval")
    with pytest.raises(DataError, match="no modality 'depth'"):
        create_dataset("mcubes", root, "train", ["rgb", "depth"])
    # bad GT value and narrow image
    other = tmp_path / "mc"
    got = make_mcubes_tree(other, splits={"train": 2}, width=192 + 16)
    gt = raw_gt(24, 208, 0)
    gt[3, 200] = 25
    Image.fromarray(gt).save(other / "GT" / f"{got['train'][0]}.png")
    ds = create_dataset("mcubes", other, "train", ["rgb"])
    with pytest.raises(DataError, match=r"out of range.*\[25\]"):
        ds[0]
    Image.fromarray(np.zeros((24, 100, 3), np.uint8)).save(other / "polL_color" / f"{got['train'][1]}.png")
    with pytest.raises(DataError, match="not wider than the 192 columns"):
        ds[1]


def test_mcubes_loader_with_transforms(mcubes):
    root, _ = mcubes
    ds = create_dataset("mcubes", root, "train")
    ds.transform = build_train_transforms(ds.specs, crop_size=(16, 16))
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=Collate(ds.modalities))))
    assert all(batch[m].shape == (3, 3, 16, 16) for m in ds.modalities)
    assert batch["label"].shape == (3, 16, 16)


# ----------------------------------------------------------------------------------- MUSES


@pytest.fixture(scope="module")
def muses(tmp_path_factory):
    base = tmp_path_factory.mktemp("muses")
    ids = make_muses_tree(base / "npz", fmt=".npz")
    make_muses_tree(base / "png", fmt=".png")  # same seed: same values, SDK's PNG encoding
    return base, ids


def test_muses_read_back_npz(muses):
    base, ids = muses
    root = base / "npz"
    mods = ["rgb", "event", "lidar", "radar"]
    ds = create_dataset("muses", root, "train", mods)
    assert [r.id for r in ds.records] == ids["train"] and len(ds) == 4
    assert ds.formats == {"event": ".npz", "lidar": ".npz", "radar": ".npz"}
    for i in range(len(ds)):
        s = ds[i]
        _check_sample(s, mods, (24, 32))
        rel = ds.records[i].id
        for m in ("event", "lidar", "radar"):
            arr = np.load(root / "projected_to_rgb" / SENSORS[m] / "train" / f"{rel}_{SENSORS[m]}.npz")["arr_0"]
            np.testing.assert_allclose(s[m].numpy(), arr.transpose(2, 0, 1).astype(np.float32), rtol=1e-6)
        assert s["meta"]["condition"] in ("clear", "fog") and s["meta"]["case"] in ("day", "night")
        assert s["meta"]["id"].startswith(f"{s['meta']['condition']}/{s['meta']['case']}/")
    s = ds[0]
    assert 0 <= float(s["lidar"][0].min()) and float(s["lidar"][0].max()) <= 200  # range (m)
    assert float(s["event"][2].abs().max()) == 0  # third event channel is empty
    # labels are Cityscapes train ids as stored
    lab = _png(root / "gt_semantic" / "train" / f"{ds.records[0].id}_gt_labelTrainIds.png")
    np.testing.assert_array_equal(s["label"].numpy(), lab.astype(np.int64))
    assert set(np.unique(s["label"].numpy())) <= set(range(19)) | {255}
    assert (s["label"][-1] == 255).all()
    np.testing.assert_array_equal(raw_train_ids(24, 32, 0), lab)


def test_muses_png_equals_npz(muses):
    base, _ = muses
    mods = ["rgb", "event", "lidar", "radar"]
    a = create_dataset("muses", base / "npz", "val", mods)
    b = create_dataset("muses", base / "png", "val", mods)
    assert b.formats == {"event": ".png", "lidar": ".png", "radar": ".png"}
    assert b.specs["lidar"].bit_depth == 16
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        for m in mods:
            np.testing.assert_allclose(sa[m].numpy(), sb[m].numpy(), atol=2e-3, err_msg=m)


def test_muses_filters_test_split_and_errors(muses, tmp_path):
    base, ids = muses
    root = base / "npz"
    fog = create_dataset("muses", root, "train", ["rgb"], conditions=["fog"])
    assert len(fog) == 2 and fog.conditions == ["fog"]
    night = create_dataset("muses", root, "val", ["rgb"], time_of_day="night")
    assert {r.case for r in night.records} == {"night"} and len(night) == 2
    test = create_dataset("muses", root, "test", ["rgb", "lidar"])
    assert "label" not in test[0] and test.records[0].label is None
    with pytest.raises(DataError, match="unknown MUSES weather"):
        create_dataset("muses", root, "train", ["rgb"], conditions=["sunny"])
    other = tmp_path / "muses"
    make_muses_tree(other, splits={"train": 1}, sensors=("lidar",))
    with pytest.raises(DataError, match="project_sensors_to_rgb.py --event_camera") as ei:
        create_dataset("muses", other, "train", ["rgb", "event"])
    assert ei.value.modality == "event"


def test_muses_channel_statistics_file(muses, tmp_path):
    base, _ = muses
    root = base / "npz"
    stats = root / "projected_to_rgb" / "channel_statistics_radar.json"
    stats.write_text(json.dumps({"mean": [3.0, 2.0, 0.0], "std": [10.0, 4.0, 0.0]}))
    try:
        ds = create_dataset("muses", root, "train", ["radar"])
        norm = ds.specs["radar"].normalize
        assert norm.mean == (3.0, 2.0, 0.0) and norm.std == (10.0, 4.0, 1.0)  # std 0 -> 1
        x = ds[0]["radar"]
        y = ds.specs["radar"].normalize_tensor(x)
        torch.testing.assert_close(y[0], (x[0] - 3.0) / 10.0)
    finally:
        stats.unlink()


# ----------------------------------------------------------------------------------- MFNet


@pytest.mark.parametrize("layout", ["rgba", "split"])
def test_mfnet_both_layouts(tmp_path, layout):
    root = tmp_path / "MFNet"
    names = make_mfnet_tree(root, layout=layout)
    ds = create_dataset("mfnet", root, "train")
    assert ds.layout == layout and ds.modalities == ["rgb", "thermal"]
    assert [r.id for r in ds.records] == names["train"]
    for i in range(len(ds)):
        s = ds[i]
        _check_sample(s, ds.modalities, (24, 32))
        name = names["train"][i]
        if layout == "rgba":
            raw = _png(root / "images" / f"{name}.png")
            assert raw.shape[2] == 4
            np.testing.assert_allclose(s["rgb"].numpy(), raw[..., :3].transpose(2, 0, 1) / 255, rtol=1e-6)
            ther = raw[..., 3]
        else:
            rgb = _png(root / "rgb" / f"{name}.png")
            np.testing.assert_allclose(s["rgb"].numpy(), rgb.transpose(2, 0, 1) / 255, rtol=1e-6)
            ther3 = _png(root / "ther" / f"{name}.jpg")  # 3-channel JPEG, taken as is
            np.testing.assert_allclose(s["thermal"].numpy(), ther3.transpose(2, 0, 1) / 255, rtol=1e-6)
            ther = ther3[..., 0]
        np.testing.assert_allclose(s["thermal"][0].numpy(), ther / 255, atol=0.05)
        if layout == "rgba":
            assert torch.equal(s["thermal"][0], s["thermal"][2])
        lab = _png(root / "labels" / f"{name}.png").astype(np.int64)
        np.testing.assert_array_equal(s["label"].numpy(), lab)  # class 0 is a class, no shift
        assert s["meta"]["condition"] == ("day" if name.endswith("D") else "night")
    assert 0 in ds[0]["label"]
    day = create_dataset("mfnet", root, "test_day")
    assert len(day) == 1 and day.conditions == ["day"]


def test_mfnet_reads_the_stitchfusion_release_img_folder(tmp_path):
    """The StitchFusion release names the RGB folder img/ (semseg/datasets/MFNet.py:41)."""
    root = tmp_path / "MFNet"
    names = make_mfnet_tree(root, layout="split")
    (root / "rgb").rename(root / "img")
    ds = create_dataset("mfnet", root, "train")
    assert ds.layout == "split" and [r.id for r in ds.records] == names["train"]
    name = names["train"][0]
    assert ds.records[0].paths["rgb"] == root / "img" / f"{name}.png"
    rgb = _png(root / "img" / f"{name}.png")
    np.testing.assert_allclose(ds[0]["rgb"].numpy(), rgb.transpose(2, 0, 1) / 255, rtol=1e-6)


def test_mfnet_errors(tmp_path):
    root = tmp_path / "MFNet"
    names = make_mfnet_tree(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a MFNet root"):
        create_dataset("mfnet", tmp_path / "empty", "train")
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "images" / f"{names['val'][0]}.png")
    ds = create_dataset("mfnet", root, "val")
    with pytest.raises(DataError, match="wrong channel count.*'thermal'|'thermal'.*wrong channel count"):
        ds[0]
    lab = _png(root / "labels" / f"{names['val'][1]}.png").copy()
    lab[0, 0] = 9
    Image.fromarray(lab).save(root / "labels" / f"{names['val'][1]}.png")
    with pytest.raises(DataError, match=r"out of range.*\[9\]"):
        ds[1]


# ----------------------------------------------------------------------------------- FMB


def test_fmb_read_back_and_label_shift(tmp_path):
    root = tmp_path / "FMB"
    names = make_fmb_tree(root)
    ds = create_dataset("fmb", root, "test")
    assert [r.id for r in ds.records] == names["test"] and ds.num_classes == 14
    for i in range(len(ds)):
        s = ds[i]
        _check_sample(s, ["rgb", "thermal"], (24, 32))
        raw = _png(root / "test" / "Infrared" / f"{ds.records[i].id}.png")
        ir = raw if raw.ndim == 2 else raw[..., 0]
        np.testing.assert_allclose(s["thermal"][1].numpy(), ir / 255, rtol=1e-6)
        expected = fmb_raw_label(24, 32, 3 + i).astype(np.int64) - 1
        expected[expected < 0] = 255
        np.testing.assert_array_equal(s["label"].numpy(), expected)
    assert 255 in ds[0]["label"] and 13 in torch.cat([ds[i]["label"].flatten() for i in range(2)])
    assert ds.decode_label(np.array([[[0], [1], [14], [255]]], np.uint8)).tolist() == [[255, 0, 13, 255]]
    assert create_dataset("fmb", root, "train").available_splits(root) == ["test", "train"]
    with pytest.raises(DataError, match="FMB split 'val' not found"):
        create_dataset("fmb", root, "val")
    lab = _png(root / "train" / "Label" / "00000.png").copy()
    lab[2, 2] = 15
    Image.fromarray(lab).save(root / "train" / "Label" / "00000.png")
    with pytest.raises(DataError, match=r"raw value\(s\) \[15\] decode to \[14\]"):
        create_dataset("fmb", root, "train")[0]


# ----------------------------------------------------------------------------------- NYUDv2


def test_nyudv2_read_back(tmp_path):
    root = tmp_path / "NYUDepthv2"
    names = make_nyudv2_tree(root)
    ds = create_dataset("nyudv2", root, "train")
    assert ds.modalities == ["rgb", "depth"] and [r.id for r in ds.records] == names["train"]
    test = create_dataset("nyudv2", root, "test", ["rgb", "hha", "depth"])  # "RGB/x.jpg Label/x.png"
    assert [r.id for r in test.records] == names["test"]
    for i, d in enumerate((ds, test)):
        s = d[0]
        _check_sample(s, d.modalities, (24, 32))
        name = d.records[0].id
        depth = _png(root / "Depth" / f"{name}.png")
        assert depth.dtype == np.uint16
        np.testing.assert_allclose(s["depth"][0].numpy(), depth * 0.001, rtol=1e-6)  # metres
        assert 0.5 <= float(s["depth"].min()) and float(s["depth"].max()) <= 9.6
        idx = 0 if i == 0 else len(names["train"])
        raw = nyu_raw_label(24, 32, idx).astype(np.int64)
        np.testing.assert_array_equal(s["label"].numpy(), np.where(raw == 0, 255, raw - 1))
    assert d.records[0].paths["rgb"].suffix == ".jpg"
    assert set(np.unique(test[1]["label"].numpy())) <= set(range(40)) | {255}
    raw_all = np.arange(42, dtype=np.uint8).reshape(1, 42, 1)
    dec = ds.decode_label(raw_all)[0]
    assert dec[0] == 255 and dec[1:41].tolist() == list(range(40)) and dec[41] == 40  # 41: out of range


def test_nyudv2_reads_the_stitchfusion_release_labels_folder(tmp_path):
    """The StitchFusion release names the label folder Labels/ (same 1..40 files)."""
    root = tmp_path / "NYUDv2"
    names = make_nyudv2_tree(root, modalities=("rgb", "hha"))
    (root / "Label").rename(root / "Labels")
    ds = create_dataset("nyudv2", root, "train", ["rgb", "hha"])
    name = names["train"][0]
    assert ds.records[0].label == root / "Labels" / f"{name}.png"
    raw = nyu_raw_label(24, 32, 0).astype(np.int64)
    np.testing.assert_array_equal(ds[0]["label"].numpy(), np.where(raw == 0, 255, raw - 1))


def test_nyudv2_hha_only_copy(tmp_path):
    root = tmp_path / "nyu"
    make_nyudv2_tree(root, modalities=("rgb", "hha"))
    ds = create_dataset("nyudv2", root, "train", ["rgb", "hha"])
    _check_sample(ds[0], ["rgb", "hha"], (24, 32))
    with pytest.raises(DataError, match="NYUDv2 folder 'Depth' not found") as ei:
        create_dataset("nyudv2", root, "train", ["rgb", "depth"])
    assert ei.value.modality == "depth"
    with pytest.raises(DataError, match="lists present: test, train"):
        create_dataset("nyudv2", root, "val")


def test_nyudv2_label_formats(tmp_path):
    """label_format "1-40" (default: 0 void) and "0-39" (255 void, the AsymFusion / CEN masks);
    a mismatch is noticed: a "1-40" file holding 255 warns, a "1-40" file read as "0-39" is a
    DataError naming the option; an unknown format is refused."""
    root = tmp_path / "nyu"
    make_nyudv2_tree(root, modalities=("rgb",))
    one = create_dataset("nyudv2", root, "train", ["rgb"])
    zero = create_dataset("nyudv2", root, "train", ["rgb"], label_format="0-39")
    raw = np.array([0, 1, 40], dtype=np.uint8).reshape(1, 3, 1)
    assert one.decode_label(raw)[0].tolist() == [255, 0, 39]
    rel = np.array([0, 1, 39, 255], dtype=np.uint8).reshape(1, 4, 1)
    assert zero.decode_label(rel)[0].tolist() == [0, 1, 39, 255]
    with pytest.raises(DataError, match="label_format '1-40'"):
        zero[0]  # the tree's 1..40 labels hold 40
    with pytest.warns(UserWarning, match="label_format: '0-39'"):
        assert one.decode_label(rel)[0].tolist() == [255, 0, 38, 255]  # shifted, wall lost
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one.decode_label(rel)  # once per dataset
        one[0]
    with pytest.raises(DataError, match="label_format must be one of"):
        create_dataset("nyudv2", root, "train", ["rgb"], label_format="0-40")


# ----------------------------------------------------------------------------------- ISPRS


@pytest.fixture(scope="module")
def vaihingen(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaihingen")
    make_vaihingen_tree(root, dsm_offsets={"3": (2, -1)})
    return root


def test_decode_isprs_colours():
    rgb = np.array([[[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0]],
                    [[255, 255, 0], [255, 0, 0], [0, 0, 0], [254, 0, 0]]], np.uint8)
    assert decode_isprs_colours(rgb).tolist() == [[0, 1, 2, 3], [4, 5, 255, 255]]


def test_vaihingen_tiles_and_labels(vaihingen):
    root = vaihingen
    train = create_dataset("vaihingen", root, "train")
    test = create_dataset("vaihingen", root, "test")
    assert isinstance(train, Vaihingen) and train.modalities == ["irrg", "dsm"]
    assert [r.id for r in train.records][:3] == ["1", "3", "5"] and len(train) == 16 and len(test) == 17
    assert train.label_variant == "full" and test.label_variant == "noBoundary"
    s = train[0]
    _check_sample(s, ["irrg", "dsm"], (40, 32), {"dsm": 1})
    raw = tifffile.imread(root / "top" / "top_mosaic_09cm_area1.tif")
    np.testing.assert_allclose(s["irrg"].numpy(), raw.transpose(2, 0, 1) / 255, rtol=1e-6)
    assert float(s["dsm"].min()) == 0.0 and float(s["dsm"].max()) == 1.0  # min-max per tile
    assert s["meta"]["paths"]["label"].endswith("gts_for_participants/top_mosaic_09cm_area1.tif")
    assert s["meta"]["paths"]["irrg"].endswith("top/top_mosaic_09cm_area1.tif")
    ids = class_map(40, 32, 0)
    expected = ids.copy()
    expected[1, 1] = 255  # off-colour pixel -> ignore
    np.testing.assert_array_equal(s["label"].numpy(), expected)
    t = test[0]  # area2, noBoundary: block edges ignore
    assert t["meta"]["paths"]["label"].endswith("top_mosaic_09cm_area2_noBoundary.tif")
    lab = t["label"].numpy()
    assert (lab == 255).sum() > 0 and set(np.unique(lab)) <= set(range(6)) | {255}
    full = create_dataset("vaihingen", root, "test", label_variant="full", tiles=["2"])[0]["label"]
    assert ((lab == 255) & (full.numpy() != 255)).sum() > 0
    # a DSM 2 rows taller and 1 column narrower than its tile is cropped/padded
    s3 = create_dataset("vaihingen", root, "train", tiles=["3"])[0]
    assert s3["dsm"].shape == (1, 41, 32) and s3["irrg"].shape == (3, 41, 32)


def test_vaihingen_windows_match_whole_tile(vaihingen):
    root = vaihingen
    whole = create_dataset("vaihingen", root, "test", tiles=["2", "4"])
    win = create_dataset("vaihingen", root, "test", tiles=["2", "4"], tile_size=16, stride=12)
    # tile 2 is 40 x 32 (k=16: 40 + 16 % 3 = 41 rows), windows cover it with the last aligned
    assert win.records[0].id == "2@0_0" and win[0]["meta"]["window"] == [0, 0, 16, 16]
    for i in range(len(win)):
        s = win[i]
        y, x, h, w = s["meta"]["window"]
        ref = whole[0] if s["meta"]["tile"] == "2" else whole[1]
        for k in ("irrg", "dsm"):
            torch.testing.assert_close(s[k], ref[k][:, y : y + h, x : x + w])
        torch.testing.assert_close(s["label"], ref["label"][y : y + h, x : x + w])
    # windows for the training split only: evaluation keeps whole tiles
    mixed = {"tile_size": 16, "tile_splits": ["train"]}
    assert len(create_dataset("vaihingen", root, "test", **mixed)) == 17
    assert len(create_dataset("vaihingen", root, "train", **mixed)) == 16 * 6  # 3 rows x 2 columns
    covered = torch.zeros(whole[0]["label"].shape, dtype=torch.bool)
    for r in win.records:
        if r.extra["tile"] == "2":
            y, x, h, w = r.extra["window"]
            covered[y : y + h, x : x + w] = True
    assert covered.all()


def test_vaihingen_errors(tmp_path):
    root = tmp_path / "v"
    make_vaihingen_tree(root, tiles=["1", "3"], dsm_offsets={"3": (30, 0)})
    dsm3 = root / "dsm" / "dsm_09cm_matching_area3.tif"
    # the DSM 30 px off (tolerance 16) is reported when the dataset is built ...
    with pytest.raises(DataError, match="1 file problem in 2 samples") as built:
        create_dataset("vaihingen", root, "train", tiles=["1", "3"])
    assert f"{dsm3} [modality 'dsm']: size mismatch: dsm 71x32 vs irrg 41x32" in str(built.value)
    # ... and, with the check skipped, when the sample is read
    ds = create_dataset("vaihingen", root, "train", tiles=["1", "3"], check_files=False)
    ds[0]
    with pytest.raises(DataError, match="size mismatch.*dsm 71x32, tile 41x32"):
        ds[1]
    with pytest.raises(DataError, match="unknown vaihingen split 'val'"):
        create_dataset("vaihingen", root, "val")
    # the other 14 train tiles of the fixed list are absent: 3 files each, plus the DSM
    with pytest.raises(DataError, match="43 file problems in 16 samples") as built:
        create_dataset("vaihingen", root, "train")
    assert "top_mosaic_09cm_area5.tif [modality 'irrg']: missing file (sample '5')" in str(built.value)
    ds = create_dataset("vaihingen", root, "train", check_files=False)
    with pytest.raises(DataError, match="missing file"):
        ds[2]


@pytest.mark.parametrize("folders", ["release", "spec"])
def test_potsdam_layouts_and_modalities(tmp_path, folders):
    root = tmp_path / "Potsdam"
    make_potsdam_tree(root, tiles=["2_10", "6_7", "2_13"], folders=folders)
    ds = create_dataset("potsdam", root, "train", ["rgb", "irrg", "rgbir", "nir", "dsm"], tiles=["2_10", "6_7"])
    assert isinstance(ds, Potsdam)
    s = ds[1]
    _check_sample(s, ds.modalities, (36, 36), {"rgbir": 4, "dsm": 1})
    paths = s["meta"]["paths"]
    assert paths["dsm"].endswith("dsm_potsdam_06_07.tif") and paths["rgb"].endswith("top_potsdam_6_7_RGB.tif")
    rgbir = tifffile.imread(paths["rgbir"])
    np.testing.assert_allclose(s["nir"][0].numpy(), rgbir[..., 3] / 255, rtol=1e-6)
    np.testing.assert_allclose(s["rgb"].numpy(), rgbir[..., :3].transpose(2, 0, 1) / 255, rtol=1e-6)
    np.testing.assert_allclose(s["irrg"][0].numpy(), rgbir[..., 3] / 255, rtol=1e-6)
    test = create_dataset("potsdam", root, "test", tiles=["2_13"])
    assert test.label_variant == "noBoundary"
    assert test[0]["meta"]["paths"]["label"].endswith("top_potsdam_2_13_label_noBoundary.tif")
    # the fixed lists (checked here without the files: 2 of 23 train, 1 of 14 test tiles exist)
    train = create_dataset("potsdam", root, "train", check_files=False).records
    assert len(train) == 23 and "7_10" not in [r.id for r in train]
    assert len(create_dataset("potsdam", root, "test", check_files=False).records) == 14
    with pytest.raises(DataError, match="63 file problems in 23 samples"):  # 21 tiles x rgb, dsm, label
        create_dataset("potsdam", root, "train")
    with pytest.raises(DataError, match="tile id must be 'row_col'"):
        create_dataset("potsdam", root, "train", tiles=["2-10"])


@pytest.mark.parametrize(
    "name,build",
    [
        ("mcubes", lambda r: make_mcubes_tree(r, splits={"val": 2})),
        ("muses", lambda r: make_muses_tree(r, splits={"val": 1})),
        ("mfnet", lambda r: make_mfnet_tree(r, splits={"val": 2})),
        ("fmb", lambda r: make_fmb_tree(r, splits={"val": 2})),
        ("nyudv2", lambda r: make_nyudv2_tree(r, splits={"val": 2})),
    ],
)
def test_eval_transforms_and_two_worker_loader(tmp_path, name, build):
    build(tmp_path / name)
    ds = create_dataset(name, tmp_path / name, "val")
    ds.transform = build_eval_transforms(ds.specs)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=Collate(ds.modalities))
    batch = next(iter(loader))
    assert batch["label"].shape[0] == 2 and batch["label"].dtype == torch.int64
    for m in ds.modalities:
        assert batch[m].dtype == torch.float32 and torch.isfinite(batch[m]).all()


# ----------------------------------------------------------------------------------- configs

BASELINE_TREES = {
    "deliver": make_deliver_tree,
    "mcubes": lambda r: make_mcubes_tree(r, splits={"train": 2, "test": 1}),
    "muses": lambda r: make_muses_tree(r, splits={"train": 1, "val": 1}),
    "mfnet": lambda r: make_mfnet_tree(r, splits={"train": 2, "test": 1}),
    "fmb": lambda r: make_fmb_tree(r, splits={"train": 2, "test": 1}),
    "nyudv2": lambda r: make_nyudv2_tree(r, splits={"train": 2, "test": 1}),
    "vaihingen": lambda r: make_vaihingen_tree(r, height=24, width=24),
    "potsdam": lambda r: make_potsdam_tree(r, height=24, width=24, kinds=("RGB",)),
}


@pytest.mark.parametrize("name", sorted(BASELINE_TREES))
def test_baseline_config_loads_and_reads_its_dataset(tmp_path, name):
    from typer.testing import CliRunner

    from fusionseg.cli import app
    from fusionseg.config import load_config
    from fusionseg.engine.datamodule import build_dataset

    path = Path(__file__).resolve().parents[2] / "configs" / "baselines" / f"{name}_sum_fusion.yaml"
    root = tmp_path / name
    BASELINE_TREES[name](root)
    cfg = load_config(path, [f"data.root={root}"])
    assert cfg.model.name == "sum_fusion" and cfg.data.dataset == name
    train = build_dataset(cfg, cfg.data.train_split, train=True)
    val = build_dataset(cfg, cfg.data.val_split, train=False)
    assert cfg.model.num_classes == train.num_classes
    s = train[0]
    assert s["label"].shape == tuple(cfg.data.crop_size)
    assert all(s[m].shape[-2:] == tuple(cfg.data.crop_size) for m in cfg.model.modalities)
    v = val[0]
    assert set(cfg.model.modalities) <= set(v)
    result = CliRunner().invoke(app, ["data", "check", str(path), "--set", f"data.root={root}"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("windows", [False, True])
def test_isprs_dsm_nodata_and_nan_are_filled_and_counted(tmp_path, windows):
    import tifffile
    from fixtures.isprs_tree import make_vaihingen_tree

    make_vaihingen_tree(tmp_path, tiles=["1"], height=40, width=32)
    path = tmp_path / "dsm" / "dsm_09cm_matching_area1.tif"
    dsm = tifffile.imread(path).astype(np.float32)
    dsm[:4, :4] = -9999.0  # a nodata sentinel
    dsm[10, 10] = np.nan
    tifffile.imwrite(path, dsm)
    opts = {"tile_size": 16, "stride": 16} if windows else {}
    ds = create_dataset("vaihingen", tmp_path, "x", ["irrg", "dsm"], tiles=["1"], **opts)
    samples = [ds[i] for i in range(len(ds))]
    valid = dsm[np.isfinite(dsm) & (dsm > -1000)]
    lo, hi = float(valid.min()), float(valid.max())
    first = samples[0]["dsm"][0]
    assert all(torch.isfinite(s["dsm"]).all() for s in samples)
    assert float(first[:4, :4].abs().max()) == 0.0  # filled with the lowest valid height
    torch.testing.assert_close(first[5, 5], torch.tensor((dsm[5, 5] - lo) / (hi - lo)))
    assert sum(ds.dsm_nodata.values()) == 16 + 1
