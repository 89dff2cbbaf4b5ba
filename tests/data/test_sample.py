"""Known answers for the Sample convention: sample_where, check_sample errors, Collate edge
cases and drop_modalities (messages name the modality / sample / file, as the project requires)."""

from __future__ import annotations

import re

import pytest
import torch

from fusionseg.data.sample import Collate, DataError, check_sample, drop_modalities, sample_where

PATHS = {"rgb": "/d/rgb/a.png", "label": "/d/label/a.png"}


def _img(c: int = 3, h: int = 4, w: int = 4, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(c, h, w, dtype=dtype)


def _lab(h: int = 4, w: int = 4, value: int = 0) -> torch.Tensor:
    return torch.full((h, w), value, dtype=torch.int64)


# ---------------------------------------------------------------- sample_where


def test_sample_where_names_id_and_files_in_order():
    """id then "files: k=v, k=v", the parts joined by "; "."""
    s = {"meta": {"id": "a", "paths": dict(PATHS)}}
    assert sample_where(s) == "sample 'a'; files: rgb=/d/rgb/a.png, label=/d/label/a.png"


def test_sample_where_skips_empty_paths():
    assert sample_where({"meta": {"id": "a", "paths": {}}}) == "sample 'a'"


def test_sample_where_files_only_without_id():
    assert sample_where({"meta": {"paths": {"rgb": "/x.png"}}}) == "files: rgb=/x.png"


def test_sample_where_falls_back_to_sample():
    """A meta dict with neither id nor paths, and no meta at all, both read "sample"."""
    assert sample_where({"meta": {}}) == "sample"
    assert sample_where({"meta": {"id": None, "paths": None}}) == "sample"
    assert sample_where({"rgb": _img()}) == "sample"


def test_sample_where_batch_lists_ids():
    """A batch's meta is a list: the ids in order (non-dict entries skipped)."""
    assert sample_where({"meta": [{"id": "a"}, {"id": "b"}, "junk"]}) == "batch of samples ['a', 'b']"


# ---------------------------------------------------------------- check_sample


def test_check_sample_wrong_ndim_names_modality_and_shape():
    s = {"rgb": torch.zeros(4, 4), "meta": {"id": "a"}}
    with pytest.raises(DataError) as ei:
        check_sample(s)
    assert ei.value.modality == "rgb"
    assert str(ei.value) == "[modality 'rgb']: modality tensor must be [C, H, W], got shape (4, 4) (sample 'a')"


def test_check_sample_wrong_dtype_names_modality_and_dtype():
    s = {"depth": _img(1, dtype=torch.float64), "meta": {"id": "a"}}
    with pytest.raises(DataError) as ei:
        check_sample(s)
    assert ei.value.modality == "depth"
    assert str(ei.value) == "[modality 'depth']: modality tensor must be float32, got torch.float64 (sample 'a')"


def test_check_sample_label_3d_tensor_is_rejected_with_its_shape():
    s = {"label": torch.zeros(1, 4, 4, dtype=torch.int64), "meta": {"id": "a"}}
    with pytest.raises(DataError, match=re.escape("label must be a tensor [H, W], got (1, 4, 4) (sample 'a')")):
        check_sample(s)


def test_check_sample_label_not_a_tensor_names_its_type():
    s = {"label": [[0, 1], [1, 0]], "meta": {"id": "a"}}
    with pytest.raises(DataError, match=re.escape("label must be a tensor [H, W], got <class 'list'> (sample 'a')")):
        check_sample(s)


def test_check_sample_label_wrong_dtype():
    s = {"label": torch.zeros(4, 4, dtype=torch.int32), "meta": {"id": "a"}}
    with pytest.raises(DataError, match=re.escape("label must be int64, got torch.int32 (sample 'a')")):
        check_sample(s)


def test_check_sample_size_mismatch_lists_every_size():
    s = {"rgb": _img(), "depth": _img(1, 2, 2), "label": _lab(), "meta": {"id": "a"}}
    with pytest.raises(DataError) as ei:
        check_sample(s)
    assert str(ei.value) == (
        "size mismatch across modalities (H x W): rgb 4x4, depth 2x2, label 4x4 (sample 'a')"
    )


def test_check_sample_label_equal_to_num_classes_is_out_of_range():
    """num_classes=3: valid 0..2 and 255; value 3 is the first bad one."""
    s = {"rgb": _img(), "label": _lab(value=3)}
    with pytest.raises(DataError) as ei:
        check_sample(s, num_classes=3)
    assert str(ei.value) == "label value(s) [3] out of range: valid are 0..2 and ignore 255 (sample)"
    assert ei.value.path is None
    check_sample({"rgb": _img(), "label": _lab(value=2)}, num_classes=3)
    check_sample({"rgb": _img(), "label": _lab(value=255)}, num_classes=3)


def test_check_sample_out_of_range_lists_at_most_ten_smallest_values():
    """Bad values 2..12 (11 distinct): the message shows the ten smallest, 2..11."""
    label = torch.arange(0, 16, dtype=torch.int64).reshape(4, 4)
    label[label > 12] = 0
    with pytest.raises(DataError) as ei:
        check_sample({"label": label}, num_classes=2)
    assert ei.value.problem.startswith("label value(s) [2, 3, 4, 5, 6, 7, 8, 9, 10, 11] out of range")


def test_check_sample_out_of_range_error_carries_label_path():
    s = {"rgb": _img(), "label": _lab(value=7), "meta": {"id": "a", "paths": dict(PATHS)}}
    with pytest.raises(DataError) as ei:
        check_sample(s, num_classes=4, ignore_index=9)
    assert ei.value.path == "/d/label/a.png"
    assert str(ei.value).startswith("/d/label/a.png: label value(s) [7] out of range: valid are 0..3 and ignore 9")


def test_check_sample_out_of_range_without_label_path_has_no_path():
    s = {"label": _lab(value=7), "meta": {"id": "a", "paths": None}}
    with pytest.raises(DataError) as ei:
        check_sample(s, num_classes=4)
    assert ei.value.path is None


# ---------------------------------------------------------------- Collate


def test_collate_accepts_a_single_modality_name():
    batch = Collate("rgb")([{"rgb": _img()}])
    assert batch["rgb"].shape == (1, 3, 4, 4)


def test_collate_empty_list_error_message():
    with pytest.raises(DataError, match="^cannot collate an empty list of samples$"):
        Collate(["rgb"])([])


def test_collate_modality_absent_everywhere_does_not_stop_later_ones():
    """depth (first column) is in no sample; rgb after it is still batched."""
    batch = Collate(["depth", "rgb"])([{"rgb": _img()}, {"rgb": _img()}])
    assert "depth" not in batch
    assert batch["rgb"].shape == (2, 3, 4, 4)
    assert batch["present"].tolist() == [[False, True], [False, True]]


def test_collate_meta_defaults_to_empty_dict():
    a = {"rgb": _img(), "meta": {"id": "a"}}
    batch = Collate(["rgb"])([{"rgb": _img()}, a])
    assert batch["meta"] == [{}, {"id": "a"}]


def test_collate_shape_mismatch_ids_tolerate_missing_meta():
    """A sample without meta reports id None."""
    samples = [{"rgb": _img()}, {"rgb": _img(3, 2, 2), "meta": {"id": "b"}}]
    with pytest.raises(DataError, match=re.escape("(samples [None, 'b'])")):
        Collate(["rgb"])(samples)


def test_collate_two_label_shapes_raise_data_error_naming_shapes_and_samples():
    samples = [{"label": _lab(2, 2), "meta": {"id": "a"}}, {"label": _lab(4, 4), "meta": {"id": "b"}}]
    with pytest.raises(DataError) as ei:
        Collate(["rgb"])(samples)
    assert str(ei.value) == "cannot batch labels of different shapes [(2, 2), (4, 4)] (samples ['a', 'b'])"


def test_collate_label_shape_error_tolerates_missing_meta():
    samples = [{"label": _lab(2, 2)}, {"label": _lab(4, 4), "meta": {"id": "b"}}]
    with pytest.raises(DataError, match=re.escape("(samples [None, 'b'])")):
        Collate(["rgb"])(samples)


def test_collate_partial_labels_name_the_unlabelled_samples():
    samples = [
        {"rgb": _img(), "label": _lab(), "meta": {"id": "a"}},
        {"rgb": _img(), "meta": {"id": "b"}},
        {"rgb": _img(), "label": _lab(), "meta": {"id": "c"}},
    ]
    with pytest.raises(DataError) as ei:
        Collate(["rgb"])(samples)
    assert str(ei.value) == "some samples in the batch have no label: ['b']"


# ---------------------------------------------------------------- drop_modalities


def test_drop_modalities_single_name_string_is_one_modality():
    """keep="rgb" keeps rgb (not the letters r, g, b)."""
    s = {"rgb": _img(), "depth": _img(1), "label": _lab()}
    out = drop_modalities(s, "rgb")
    assert sorted(out) == ["label", "rgb"]


def test_drop_modalities_batch_without_modalities_message():
    batch = {"rgb": torch.zeros(2, 3, 4, 4), "present": torch.ones(2, 2, dtype=torch.bool)}
    with pytest.raises(ValueError) as ei:
        drop_modalities(batch, ["rgb"])
    assert str(ei.value) == "drop_modalities on a batch with 'present' needs modalities= (its column order)"


def test_drop_modalities_column_count_mismatch_message():
    batch = {"rgb": torch.zeros(2, 3, 4, 4), "present": torch.ones(2, 2, dtype=torch.bool)}
    with pytest.raises(ValueError) as ei:
        drop_modalities(batch, ["rgb"], modalities=["rgb", "depth", "ir"])
    assert str(ei.value) == "modalities has 3 names but 'present' has 2 columns"


def test_drop_modalities_zero_column_mask_stays_bool():
    """A present mask with no columns (modalities=[]) stays an empty bool mask."""
    batch = {"present": torch.zeros(2, 0, dtype=torch.bool)}
    out = drop_modalities(batch, [], modalities=[])
    assert out["present"].dtype == torch.bool and out["present"].shape == (2, 0)


def test_drop_modalities_mask_follows_present_device():
    """The column mask is moved to the mask's device (here the 'meta' device)."""
    present = torch.ones(2, 2, dtype=torch.bool, device="meta")
    out = drop_modalities({"present": present}, ["rgb"], modalities=["rgb", "depth"])
    assert out["present"].device.type == "meta" and out["present"].shape == (2, 2)
