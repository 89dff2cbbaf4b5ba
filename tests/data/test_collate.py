"""Collate: present mask and zero-filling for samples that miss different modalities."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from fusionseg.data import Collate, DataError, check_sample, drop_modalities


def make(i: int, *mods: str, c: int = 3, h: int = 4, w: int = 5) -> dict:
    s = {m: torch.full((c, h, w), float(i + 1)) for m in mods}
    s["label"] = torch.full((h, w), i, dtype=torch.int64)
    s["meta"] = {"id": f"s{i}", "condition": None, "case": None, "paths": {}}
    return s


def test_missing_modalities_present_mask_and_zeros():
    samples = [make(0, "rgb", "depth"), make(1, "rgb"), make(2, "depth", "rgb")]
    batch = Collate(["rgb", "depth", "thermal"])(samples)
    assert batch["rgb"].shape == (3, 3, 4, 5) and batch["rgb"].dtype == torch.float32
    assert batch["depth"].shape == (3, 3, 4, 5)
    assert "thermal" not in batch  # absent from all samples
    assert batch["present"].dtype == torch.bool
    assert batch["present"].tolist() == [[True, True, False], [True, False, False], [True, True, False]]
    assert torch.all(batch["depth"][1] == 0)
    assert torch.all(batch["depth"][0] == 1) and torch.all(batch["depth"][2] == 3)
    assert batch["label"].shape == (3, 4, 5) and batch["label"].dtype == torch.int64
    assert [m["id"] for m in batch["meta"]] == ["s0", "s1", "s2"]


def test_all_present_has_no_mask_unless_asked():
    samples = [make(0, "rgb", "depth"), make(1, "rgb", "depth")]
    batch = Collate(["rgb", "depth"])(samples)
    assert "present" not in batch
    batch = Collate(["rgb", "depth"], always_present=True)(samples)
    assert batch["present"].all() and batch["present"].shape == (2, 2)


def test_column_order_follows_modalities_and_extra_keys_dropped():
    samples = [make(0, "depth", "rgb", "event"), make(1, "rgb")]
    batch = Collate(["depth", "rgb"])(samples)
    assert batch["present"].tolist() == [[True, True], [False, True]]
    assert "event" not in batch


def test_shape_mismatch_errors():
    with pytest.raises(DataError, match="different shapes") as ei:
        Collate(["rgb"])([make(0, "rgb"), make(1, "rgb", h=6)])
    assert "rgb" in str(ei.value) and "s0" in str(ei.value)
    no_label = make(1, "rgb")
    del no_label["label"]
    with pytest.raises(DataError, match="no label"):
        Collate(["rgb"])([make(0, "rgb"), no_label])


def test_dataloader_integration():
    samples = [make(0, "rgb", "depth"), make(1, "rgb"), make(2, "rgb", "depth"), make(3, "depth")]
    loader = DataLoader(samples, batch_size=2, collate_fn=Collate(["rgb", "depth"]))
    batches = list(loader)
    assert batches[0]["present"].tolist() == [[True, True], [True, False]]
    assert batches[1]["present"].tolist() == [[True, True], [False, True]]
    assert torch.all(batches[1]["rgb"][1] == 0)


def test_drop_modalities_sample_and_batch():
    s = make(0, "rgb", "depth", "event")
    kept = drop_modalities(s, ["rgb"])
    assert set(kept) == {"rgb", "label", "meta"} and "depth" in s
    batch = Collate(["rgb", "depth"])([make(0, "rgb", "depth"), make(1, "rgb")])
    sub = drop_modalities(batch, {"rgb"}, modalities=["rgb", "depth"])
    assert "depth" not in sub
    assert sub["present"].tolist() == [[True, False], [True, False]]
    with pytest.raises(ValueError, match="modalities="):
        drop_modalities(batch, ["rgb"])


def test_check_sample_size_mismatch_names_modalities_and_sample():
    s = make(0, "rgb")
    s["depth"] = torch.zeros(3, 8, 8)
    s["meta"]["paths"] = {"rgb": "/x/a_rgb.png", "depth": "/x/a_depth.png"}
    with pytest.raises(DataError) as ei:
        check_sample(s)
    msg = str(ei.value)
    assert "size mismatch" in msg and "rgb 4x5" in msg and "depth 8x8" in msg and "label 4x5" in msg
    assert "s0" in msg and "/x/a_depth.png" in msg
    bad = make(0, "rgb")
    bad["label"][0, 0] = 40
    with pytest.raises(DataError, match=r"\[40\] out of range"):
        check_sample(bad, num_classes=25)
