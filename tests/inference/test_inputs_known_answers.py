"""Known answers for predict's input parsing (:mod:`fusionseg.inference.inputs`).

Tiny files (4x4 px) are written under ``tmp_path``; every expected value and error text is
written out by hand. Errors must name the file, the modality and the problem, so the tests
check ``problem``, ``path`` and ``modality`` of each :class:`DataError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel
from torch.testing import assert_close

from fusionseg.config import config_from_dict
from fusionseg.data.datasets import DatasetOptions, register_dataset
from fusionseg.data.datasets.base import DATASETS
from fusionseg.data.io import DataError
from fusionseg.data.modalities import get_spec
from fusionseg.inference.inputs import (
    FileInput,
    InputSource,
    match_stems,
    open_inputs,
    parse_input,
    select_channels,
    source_files,
)

RGB = get_spec("rgb")  # 3 channels, any bit depth, [0, 1], no repeat
DEPTH = get_spec("depth")  # 16-bit mm -> m, 1 channel repeated to 3
SPECS = {"rgb": RGB, "depth": DEPTH}
EXTS = ".png .jpg .jpeg .tif .tiff .npy .npz .bmp"


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rgb(h: int = 4, w: int = 4) -> np.ndarray:
    """Pixel values 0, 1, 2, ... (R, G, B interleaved)."""
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)


def _depth(h: int = 4, w: int = 4) -> np.ndarray:
    return np.full((h, w), 1000, dtype=np.uint16)


def _cfg(dataset: str = "deliver", options: dict | None = None):
    return config_from_dict({
        "name": "t",
        "model": {"name": "sum_fusion", "backbone": "mit_b0", "modalities": ["rgb", "depth"],
                  "num_classes": 3},
        "data": {"dataset": dataset, "val_split": "holdout", "options": options or {}},
    })


# --------------------------------------------------------------------------- parse_input
def test_parse_input_identifier_without_equals_is_a_plain_path():
    """No '=': the whole text is a path, even when it looks like a modality name."""
    assert parse_input("frames") == InputSource(None, "frames")
    # text before '=' that is no identifier: a plain path holding '='
    assert parse_input("my dir/x=1") == InputSource(None, "my dir/x=1")


def test_parse_input_channel_selection_without_modality_shows_the_form():
    with pytest.raises(DataError) as err:
        parse_input("no/such/dir:3")
    assert err.value.problem == ("input 'no/such/dir:3': a channel selection needs a modality, "
                                 "e.g. thermal=DIR:3")


def test_parse_input_errors_name_the_modality():
    with pytest.raises(DataError) as err:
        parse_input("rgb=")
    assert err.value.modality == "rgb"
    assert err.value.problem == "input 'rgb=': no folder, glob or file after '='"
    with pytest.raises(DataError) as err:
        parse_input("label=d:1")
    assert err.value.modality == "label"
    assert err.value.problem == "input 'label=d:1': labels take channel 0; no channel selection"


# --------------------------------------------------------------------------- source_files
def test_source_files_double_star_glob_recurses(tmp_path):
    """'**' reaches files at any depth: root/x.png and root/s1/s2/y.png."""
    x = _png(tmp_path / "x.png", _rgb())
    y = _png(tmp_path / "s1" / "s2" / "y.png", _rgb())
    assert source_files(InputSource("rgb", f"{tmp_path}/**/*.png")) == {"x": x, "y": y}


def test_source_files_keeps_only_image_files(tmp_path):
    a = _png(tmp_path / "cam" / "a.png", _rgb())
    (tmp_path / "cam" / "notes.txt").write_text("not an image")
    (tmp_path / "cam" / "b.png").mkdir()  # a folder with an image-like name
    assert source_files(InputSource("rgb", str(tmp_path / "cam"))) == {"a": a}


def test_source_files_missing_source_names_path_and_modality(tmp_path):
    text = str(tmp_path / "nothing")
    with pytest.raises(DataError) as err:
        source_files(InputSource("depth", text))
    assert err.value.problem == "no such folder, file or glob match"
    assert err.value.path == text and err.value.modality == "depth"


def test_source_files_folder_without_images_lists_the_extensions(tmp_path):
    (tmp_path / "cam").mkdir()
    (tmp_path / "cam" / "notes.txt").write_text("not an image")
    text = str(tmp_path / "cam")
    with pytest.raises(DataError) as err:
        source_files(InputSource("depth", text))
    assert err.value.problem == f"no image files ({EXTS})"
    assert err.value.path == text and err.value.modality == "depth"


def test_source_files_two_files_of_one_stem_are_an_error(tmp_path):
    png = _png(tmp_path / "cam" / "a.png", _rgb())
    tif = tmp_path / "cam" / "a.tif"
    tif.write_bytes(png.read_bytes())
    text = str(tmp_path / "cam")
    with pytest.raises(DataError) as err:
        source_files(InputSource("rgb", text))
    assert err.value.problem == (f"two files with stem 'a': {png} and {tif}; stems match files "
                                 "across modalities, so they must be unique")
    assert err.value.path == text and err.value.modality == "rgb"


# --------------------------------------------------------------------------- match_stems
def _stems(names: str) -> dict[str, Path]:
    return {s: Path(f"{s}.png") for s in names}


def test_match_stems_names_each_modality_and_its_lacking_stems():
    files = {"rgb": _stems("abc"), "depth": _stems("az")}
    with pytest.raises(DataError) as err:
        match_stems(files)
    assert err.value.problem == ("samples are matched by file stem across modalities; "
                                 "'rgb' has no file for stem(s) z; "
                                 "'depth' has no file for stem(s) b, c")
    assert err.value.modality == "rgb"
    assert match_stems({"rgb": _stems("ba"), "depth": _stems("ab")}) == ["a", "b"]


def test_match_stems_shows_five_stems_and_counts_the_rest():
    """6 lacking stems b..g: the first 5 and '(+1 more)'; exactly 5: all, no count."""
    with pytest.raises(DataError) as err:
        match_stems({"rgb": _stems("abcdefg"), "depth": _stems("a")})
    assert err.value.problem == ("samples are matched by file stem across modalities; "
                                 "'depth' has no file for stem(s) b, c, d, e, f (+1 more)")
    assert err.value.modality == "depth"
    with pytest.raises(DataError) as err:
        match_stems({"rgb": _stems("abcdef"), "depth": _stems("a")})
    assert err.value.problem == ("samples are matched by file stem across modalities; "
                                 "'depth' has no file for stem(s) b, c, d, e, f")


def test_match_stems_of_nothing():
    with pytest.raises(DataError) as err:
        match_stems({})
    assert err.value.problem == "no inputs given"


# --------------------------------------------------------------------------- FileInput
def test_file_input_needs_a_modality_besides_labels():
    with pytest.raises(DataError) as err:
        FileInput({"label": _stems("a")}, SPECS)
    assert err.value.problem == "no modality input given (only labels)"


def test_file_input_names_the_first_modality_without_a_spec():
    files = {"rgb": _stems("a"), "thermal": _stems("a"), "nir": _stems("a")}
    with pytest.raises(DataError) as err:
        FileInput(files, SPECS)
    assert err.value.problem == "no spec for modality 'thermal'"
    assert err.value.modality == "thermal"


def test_file_input_sample_meta_label_and_transform(tmp_path):
    """rgb = pixel values / 255; label = channel 0 as int64; meta names every file."""
    rgb = _png(tmp_path / "rgb" / "s.png", _rgb())
    label_ids = np.array([[0, 1, 2, 0]] * 4, dtype=np.uint8)
    label = _png(tmp_path / "label" / "s.png", label_ids)
    ds = FileInput({"rgb": {"s": rgb}, "label": {"s": label}}, SPECS)
    sample = ds[0]
    assert sample["meta"] == {"id": "s", "condition": None,
                              "paths": {"rgb": str(rgb), "label": str(label)}}
    assert sample["label"].dtype == torch.int64
    assert sample["label"].tolist() == [[0, 1, 2, 0]] * 4
    assert_close(sample["rgb"], torch.arange(48, dtype=torch.float32).reshape(4, 4, 3)
                 .permute(2, 0, 1) / 255)
    tagged = FileInput({"rgb": {"s": rgb}}, SPECS, transform=lambda s: {"id": s["meta"]["id"]})
    assert tagged[0] == {"id": "s"}


def test_file_input_modality_sizes_must_agree(tmp_path):
    """rgb 4x6 and depth 5x6: the widths agree, the heights do not."""
    rgb = _png(tmp_path / "rgb" / "s.png", _rgb(4, 6))
    depth = _png(tmp_path / "depth" / "s.png", _depth(5, 6))
    ds = FileInput({"rgb": {"s": rgb}, "depth": {"s": depth}}, SPECS)
    with pytest.raises(DataError) as err:
        ds[0]
    assert err.value.problem == "sample 's': modality sizes differ (rgb 4x6, depth 5x6)"
    assert err.value.path == str(rgb)


def test_file_input_channel_counts_may_differ(tmp_path):
    """rgb [3, 4, 4] with dsm [1, 4, 4] (min-max of 0..15 -> k / 15): sizes agree."""
    rgb = _png(tmp_path / "rgb" / "s.png", _rgb())
    dsm = tmp_path / "dsm" / "s.npy"
    dsm.parent.mkdir()
    np.save(dsm, np.arange(16, dtype=np.float32).reshape(4, 4))
    sample = FileInput({"rgb": {"s": rgb}, "dsm": {"s": dsm}}, {"rgb": RGB, "dsm": get_spec("dsm")})[0]
    assert sample["rgb"].shape == (3, 4, 4)
    assert_close(sample["dsm"], torch.arange(16, dtype=torch.float32).reshape(1, 4, 4) / 15)


def test_file_input_unreadable_label_names_the_label(tmp_path):
    rgb = _png(tmp_path / "rgb" / "s.png", _rgb())
    label = tmp_path / "label" / "s.png"
    label.parent.mkdir()
    label.write_bytes(b"not a png")
    ds = FileInput({"rgb": {"s": rgb}, "label": {"s": label}}, SPECS)
    with pytest.raises(DataError) as err:
        ds[0]
    assert err.value.modality == "label" and err.value.path == str(label)


# --------------------------------------------------------------------------- reading (_read)
def test_unreadable_modality_file_names_the_modality(tmp_path):
    rgb = tmp_path / "rgb" / "s.png"
    rgb.parent.mkdir()
    rgb.write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        FileInput({"rgb": {"s": rgb}}, SPECS)[0]
    assert err.value.modality == "rgb" and err.value.path == str(rgb)


def test_npz_is_read_at_the_specs_key(tmp_path):
    """The archive's first array is zeros; the spec's key 'height' holds 0..15 -> k / 15."""
    path = tmp_path / "dsm" / "s.npz"
    path.parent.mkdir()
    np.savez(path, first=np.zeros((4, 4), np.float32),
             height=np.arange(16, dtype=np.float32).reshape(4, 4))
    spec = get_spec("dsm", npz_key="height")
    x = FileInput({"dsm": {"s": path}}, {"dsm": spec})[0]["dsm"]
    assert_close(x, torch.arange(16, dtype=torch.float32).reshape(1, 4, 4) / 15)


def test_other_fit_errors_keep_the_file(tmp_path):
    """HHA of an all-zero depth fails inside the spec: the error still names the file."""
    path = _png(tmp_path / "depth" / "s.png", np.zeros((4, 4), np.uint16))
    spec = get_spec("depth", encode="hha", intrinsics=[2.0, 2.0, 2.0, 2.0])
    with pytest.raises(DataError) as err:
        FileInput({"depth": {"s": path}}, {"depth": spec})[0]
    assert err.value.problem.startswith("encode: hha: depth has no valid pixel")
    assert err.value.path == str(path) and err.value.modality == "depth"


def test_wrong_bit_depth_hint_names_the_scale_override(tmp_path):
    path = _png(tmp_path / "depth" / "s.png", np.full((4, 4), 7, np.uint8))
    with pytest.raises(DataError) as err:
        FileInput({"depth": {"s": path}}, SPECS)[0]
    assert err.value.problem.startswith("wrong bit depth: file is 8-bit (uint8)")
    assert err.value.problem.endswith(
        "if this 8-bit file is right, say how to read it, e.g. --spec depth.bit_depth=8 "
        "--spec depth.scale=<unit per count> (or auto for [0, 1])")
    assert err.value.path == str(path) and err.value.modality == "depth"


# --------------------------------------------------------------------------- select_channels
def test_select_channels_of_wrong_length_names_what_the_model_takes():
    """rgb takes 3 (no repeat_to), so 2 selected channels are refused."""
    with pytest.raises(DataError) as err:
        select_channels(RGB, (0, 1))
    assert err.value.problem == "the input selects 2 channel(s) [0, 1] but the model's 'rgb' takes 3"
    assert err.value.modality == "rgb"
    got = select_channels(get_spec("thermal"), (3,))
    assert got.file_channels == (3,) and got.channels == 1 and got.repeat_to == 3


def test_select_channels_invalid_index_is_an_invalid_channel_selection():
    with pytest.raises(DataError) as err:
        select_channels(get_spec("thermal"), (-1,))
    assert err.value.problem.startswith("invalid channel selection: ")
    assert "file_channels must be >= 0, got [-1]" in err.value.problem
    assert err.value.modality == "thermal"


# --------------------------------------------------------------------------- open_inputs errors
def test_open_inputs_of_nothing():
    with pytest.raises(DataError) as err:
        open_inputs([], _cfg(), SPECS)
    assert err.value.problem == "no inputs given"


def test_open_inputs_takes_one_folder_at_most(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with pytest.raises(DataError) as err:
        open_inputs([str(a), str(b)], _cfg(), SPECS)
    assert err.value.problem == f"at most one folder or dataset root among the inputs, got {a}, {b}"


def test_open_inputs_missing_folder_names_it(tmp_path):
    with pytest.raises(DataError) as err:
        open_inputs(tmp_path / "missing", _cfg(), SPECS)
    assert err.value.problem == "input folder not found"
    assert err.value.path == str(tmp_path / "missing")


def test_open_inputs_dataset_root_cannot_take_modality_inputs(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError) as err:
        open_inputs([str(root), f"rgb={tmp_path}"], _cfg(), SPECS)
    assert err.value.problem == (f"{root}: a dataset root cannot be combined with per-modality "
                                 "inputs (MODALITY=PATH)")
    assert err.value.path == str(root)


def test_open_inputs_unknown_or_repeated_modality_is_named(tmp_path):
    cam = tmp_path / "cam"
    _png(cam / "a.png", _rgb())
    with pytest.raises(DataError) as err:
        open_inputs([f"thermal={cam}"], _cfg(), SPECS)
    assert err.value.problem == (f"input 'thermal={cam}': the model has no modality 'thermal' "
                                 "(modalities: rgb, depth; or label)")
    assert err.value.modality == "thermal"
    with pytest.raises(DataError) as err:
        open_inputs([f"rgb={cam}", f"rgb={cam}"], _cfg(), SPECS)
    assert err.value.problem == "modality 'rgb' given twice among the inputs"
    assert err.value.modality == "rgb"


def test_open_inputs_folder_form_names_the_modality_folder(tmp_path):
    _png(tmp_path / "own" / "rgb" / "a.png", _rgb())
    (tmp_path / "own" / "depth").mkdir()
    (tmp_path / "own" / "depth" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as err:
        open_inputs(tmp_path / "own", _cfg(), SPECS)
    assert err.value.modality == "depth"
    assert err.value.path == str(tmp_path / "own" / "depth")


# --------------------------------------------------------------------------- dataset roots
class _Recording(torch.utils.data.Dataset):
    """Stands in for a dataset class: keeps the arguments it was built with."""

    Options = DatasetOptions

    def __init__(self, root, split, modalities=None, transform=None, **options):
        self.args = (root, split, modalities, transform)
        self.options = options

    def __len__(self) -> int:
        return 0


class _OptionsWithoutCheckFiles(BaseModel):
    specs: dict | None = None


class _RecordingWithoutCheckFiles(_Recording):
    """A dataset class whose options have no ``check_files``."""

    Options = _OptionsWithoutCheckFiles


@pytest.fixture
def recording(monkeypatch):
    """Registers the recording classes for this test only."""
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))
    register_dataset("ki_recording")(_Recording)
    register_dataset("ki_recording_nocheck")(_RecordingWithoutCheckFiles)


def test_dataset_root_is_built_by_the_configs_dataset_class(tmp_path, recording):
    root = tmp_path / "root"
    (root / "val").mkdir(parents=True)  # neither modality folders nor img/: a dataset root
    cfg = _cfg("ki_recording", {"max_samples": 2})
    ds = open_inputs(root, cfg, SPECS)
    assert isinstance(ds, _Recording)
    assert ds.args == (str(root), "holdout", ["rgb", "depth"], None)
    assert ds.options == {"max_samples": 2, "specs": SPECS}
    ds = open_inputs(root, cfg, SPECS, split="test", dataset_specs={"depth": {"scale": 0.01}})
    assert ds.args == (str(root), "test", ["rgb", "depth"], None)
    assert ds.options == {"max_samples": 2, "specs": {"depth": {"scale": 0.01}}}


def test_dataset_root_check_files_false_only_where_the_class_takes_it(tmp_path, recording):
    root = tmp_path / "root"
    root.mkdir()
    ds = open_inputs(root, _cfg("ki_recording"), SPECS, check_files=False)
    assert ds.options == {"specs": SPECS, "check_files": False}
    assert ds.options["check_files"] is False
    ds = open_inputs(root, _cfg("ki_recording_nocheck"), SPECS, check_files=False)
    assert ds.options == {"specs": SPECS}


def test_a_root_with_img_is_a_dataset_root_even_with_modality_folders(tmp_path, recording):
    root = tmp_path / "root"
    _png(root / "rgb" / "a.png", _rgb())
    (root / "img").mkdir()
    ds = open_inputs(root, _cfg("ki_recording"), SPECS)
    assert isinstance(ds, _Recording) and ds.args[0] == str(root)
