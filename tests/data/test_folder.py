"""Generic folder dataset: dataset.yaml with per-modality specs, label maps, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.folder_tree import FOLDER_YAML as YAML
from fixtures.folder_tree import make_folder_tree as write_tree
from PIL import Image

from fusionseg.data import DataError, create_dataset, list_datasets
from fusionseg.data.datasets import FolderDataset


def test_read_back(tmp_path):
    root = write_tree(tmp_path / "own")
    assert "folder" in list_datasets()
    ds = create_dataset("folder", root, "train", None)
    assert isinstance(ds, FolderDataset)
    assert ds.modalities == ["rgb", "thermal"] and len(ds) == 3
    assert ds.classes == ["road", "car", "person"] and ds.num_classes == 3
    assert ds.palette.shape == (3, 3) and ds.palette[1].tolist() == [0, 0, 142]
    assert ds.specs["thermal"].bit_depth == 16 and ds.specs["thermal"].out_channels == 3
    s = ds[1]
    assert s["rgb"].shape == (3, 12, 16) and s["thermal"].shape == (3, 12, 16)
    assert s["thermal"].dtype == torch.float32
    assert float(s["thermal"].min()) == 0.0 and float(s["thermal"].max()) == pytest.approx(1.0)
    assert s["label"].dtype == torch.int64 and set(s["label"].unique().tolist()) == {0, 1, 2}
    assert s["meta"]["id"] == "b" and s["meta"]["paths"]["thermal"].endswith("thermal/b.tif")
    assert s["meta"]["condition"] is None
    assert create_dataset("folder", root, "train", ["thermal"]).modalities == ["thermal"]


def test_unknown_yaml_key_names_key_and_file(tmp_path):
    root = write_tree(tmp_path / "own", cfg={**YAML, "clases": ["x"]})
    with pytest.raises(DataError) as ei:
        create_dataset("folder", root, "train", None)
    msg = str(ei.value)
    assert "unknown key 'clases'" in msg and str(root / "dataset.yaml") in msg


def test_unknown_spec_field_names_modality_and_file(tmp_path):
    cfg = {**YAML, "modalities": {"rgb": {}, "thermal": {"channels": 1, "bitdepth": 16}}}
    root = write_tree(tmp_path / "own", cfg=cfg)
    with pytest.raises(DataError) as ei:
        create_dataset("folder", root, "train", None)
    msg = str(ei.value)
    assert "bitdepth" in msg and "thermal" in msg and str(root / "dataset.yaml") in msg


def test_wrong_bit_depth_from_yaml_spec(tmp_path):
    cfg = {**YAML, "modalities": {"rgb": {}, "thermal": {"channels": 1, "repeat_to": 3, "bit_depth": 8}}}
    root = write_tree(tmp_path / "own", cfg=cfg)
    ds = create_dataset("folder", root, "train", None)
    with pytest.raises(DataError, match="16-bit.*expects 8-bit") as ei:
        ds[0]
    assert "a.tif" in str(ei.value) and "'thermal'" in str(ei.value)


def test_label_map_and_errors(tmp_path):
    labels = [np.full((12, 16), v, np.uint8) for v in (10, 20, 30)]
    labels[2][0, 0] = 0
    cfg = {**YAML, "label_map": {10: 0, 20: 1, 30: 2, 0: 255}}
    ds = create_dataset("folder", write_tree(tmp_path / "m", cfg=cfg, labels=labels), "train", None)
    assert ds[0]["label"].unique().tolist() == [0]
    assert ds[2]["label"][0, 0] == 255 and ds[2]["label"][1, 1] == 2
    labels[1][3, 3] = 99
    ds = create_dataset("folder", write_tree(tmp_path / "m2", cfg=cfg, labels=labels), "train", None)
    with pytest.raises(DataError, match=r"\[99\] not in label_map") as ei:
        ds[1]
    assert "label/b.png" in str(ei.value)
    labels = [np.full((12, 16), 7, np.uint8)] * 3
    ds = create_dataset("folder", write_tree(tmp_path / "r", labels=labels), "train", None)
    with pytest.raises(DataError, match=r"out of range: raw value\(s\) \[7\]"):
        ds[0]


def test_color_labels(tmp_path):
    cfg = {**YAML, "label_format": "color"}
    root = write_tree(tmp_path / "c", cfg=cfg)
    lab = np.zeros((12, 16, 3), np.uint8)
    lab[:, :8] = (0, 0, 142)
    lab[:, 8:] = (1, 2, 3)  # unknown colour -> ignore
    for stem in "abc":
        Image.fromarray(lab).save(root / "train" / "label" / f"{stem}.png")
    out = create_dataset("folder", root, "train", None)[0]["label"]
    assert torch.all(out[:, :8] == 1) and torch.all(out[:, 8:] == 255)


def test_layout_errors(tmp_path):
    root = write_tree(tmp_path / "own")
    with pytest.raises(DataError, match="split 'val' not found") as ei:
        create_dataset("folder", root, "val", None)
    assert str(root / "val") in str(ei.value)
    (root / "train" / "thermal" / "b.tif").unlink()
    with pytest.raises(DataError, match="1 file problem in 3 samples") as ei:
        create_dataset("folder", root, "train", None)  # found when the dataset is built
    assert f"{root / 'train' / 'thermal' / 'b.*'} [modality 'thermal']: missing file (sample 'b')" in str(ei.value)
    ds = create_dataset("folder", root, "train", None, check_files=False)
    with pytest.raises(DataError, match="missing file") as ei:
        ds[1]
    assert "thermal" in str(ei.value) and "b." in str(ei.value)
    with pytest.raises(DataError, match="modality folder not found"):
        create_dataset("folder", root, "train", ["rgb", "depth"])
    with pytest.raises(DataError, match="no spec"):
        create_dataset("folder", root, "train", ["rgb", "radar"])
    (root / "dataset.yaml").unlink()
    with pytest.raises(DataError, match="missing dataset.yaml"):
        create_dataset("folder", root, "train", None)
    with pytest.raises(DataError, match="root not found"):
        create_dataset("folder", tmp_path / "none", "train", None)


def test_unlabelled_split(tmp_path):
    root = write_tree(tmp_path / "own", split="test")
    for f in (root / "test" / "label").iterdir():
        f.unlink()
    (root / "test" / "label").rmdir()
    s = create_dataset("folder", root, "test", None)[0]
    assert "label" not in s and s["rgb"].shape == (3, 12, 16)


def test_float_labels_must_hold_whole_class_ids(tmp_path):
    """A float label (TIFF / .npy) is read as class ids only when every value is a whole
    number: 1.7 is not silently class 1, NaN not a huge negative id."""
    ds = create_dataset("folder", write_tree(tmp_path / "own"), "train", None)
    whole = np.array([[0.0, 1.0], [2.0, 255.0]], np.float32)[:, :, None]
    assert ds.label_from_array(whole, "l.tif").tolist() == [[0, 1], [2, 255]]
    for bad, shown in ((1.7, "1.7"), (np.nan, "nan")):
        raw = whole.copy()
        raw[0, 1, 0] = bad
        with pytest.raises(DataError, match=rf"l\.tif \[modality 'label'\]: label holds "
                                            rf"non-integer class ids \[{shown}\] \(1 pixel"):
            ds.label_from_array(raw, "l.tif")
