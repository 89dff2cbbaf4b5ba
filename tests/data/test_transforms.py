"""Joint transforms: label/image alignment, photometric on rgb only, padding, determinism."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionseg.data import build_eval_transforms, build_train_transforms, get_spec
from fusionseg.data.transforms import (
    ColorJitter,
    Compose,
    GaussianBlur,
    Normalize,
    PadToMultiple,
    RandomHorizontalFlip,
    RandomScaleCrop,
    Resize,
)

K = 10.0  # image value = label id * K


def block_label(row_sizes: list[int], col_sizes: list[int], values: np.ndarray) -> torch.Tensor:
    """A label made of rectangular blocks (every block at least 2 px on each side)."""
    rows = np.repeat(np.arange(len(row_sizes)), row_sizes)
    cols = np.repeat(np.arange(len(col_sizes)), col_sizes)
    return torch.from_numpy(values[rows][:, cols].astype(np.int64))


def painted_sample(label: torch.Tensor) -> dict:
    img = label.to(torch.float32) * K
    return {
        "lidar": img[None].repeat(3, 1, 1),  # nearest-mode modality
        "hha": img[None].repeat(3, 1, 1).clone(),  # bilinear-mode modality
        "label": label,
        "meta": {"id": "x"},
    }


sizes = st.lists(st.integers(2, 8), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    rows=sizes,
    cols=sizes,
    data=st.data(),
    crop=st.tuples(st.integers(4, 40), st.integers(4, 40)),
    seed=st.integers(0, 2**31 - 1),
)
def test_scale_crop_flip_keeps_alignment(rows, cols, data, crop, seed):
    values = np.array(
        data.draw(st.lists(st.integers(0, 9), min_size=len(rows) * len(cols), max_size=len(rows) * len(cols)))
    ).reshape(len(rows), len(cols))
    label = block_label(rows, cols, values)
    t = Compose(
        [
            RandomScaleCrop(crop, (0.5, 2.0), interpolation={"lidar": "nearest", "hha": "bilinear"}),
            RandomHorizontalFlip(0.5),
        ]
    )
    out = t(painted_sample(label), torch.Generator().manual_seed(seed))
    lab, lidar, hha = out["label"], out["lidar"], out["hha"]
    assert lab.shape == crop and lidar.shape == (3, *crop) and hha.shape == (3, *crop)
    assert lab.dtype == torch.int64

    valid = lab != 255
    # nearest-mode modality: exact everywhere
    assert torch.equal(lidar[0][valid], lab[valid].to(torch.float32) * K)
    # padding: label 255, image 0 (the default fill)
    assert torch.all(lidar[:, ~valid] == 0) and torch.all(hha[:, ~valid] == 0)
    # bilinear modality: exact away from label edges (window radius 3 covers scale <= 2)
    r = 3
    h, w = crop
    lf = lab.to(torch.float32)[None, None]
    pad = torch.nn.functional.pad(lf, (r, r, r, r), value=-1.0)
    win_max = torch.nn.functional.max_pool2d(pad, 2 * r + 1, stride=1)[0, 0]
    win_min = -torch.nn.functional.max_pool2d(-pad, 2 * r + 1, stride=1)[0, 0]
    interior = (win_max == win_min) & valid
    assert torch.allclose(hha[0][interior], lab[interior].to(torch.float32) * K, atol=1e-3)


def test_photometric_only_touches_rgb():
    g = torch.Generator().manual_seed(0)
    s = {
        "rgb": torch.rand(3, 16, 16),
        "depth": torch.rand(3, 16, 16) * 40,
        "thermal": torch.rand(3, 16, 16),
        "label": torch.zeros(16, 16, dtype=torch.int64),
    }
    t = Compose([ColorJitter(p=1.0, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1), GaussianBlur(p=1.0)])
    out = t(s, g)
    assert not torch.allclose(out["rgb"], s["rgb"])
    assert out["rgb"].min() >= 0 and out["rgb"].max() <= 1
    for k in ("depth", "thermal", "label"):
        assert torch.equal(out[k], s[k])
    # the builder routes photometric ops by spec.photometric
    specs = {m: get_spec(m) for m in ("rgb", "depth", "thermal")}
    train = build_train_transforms(specs, (16, 16), (1.0, 1.0), flip_prob=0.0, jitter_p=1.0, blur_p=1.0, normalize=False)
    out = train(s, torch.Generator().manual_seed(1))
    assert not torch.allclose(out["rgb"], s["rgb"])
    assert torch.equal(out["depth"], s["depth"]) and torch.equal(out["thermal"], s["thermal"])


def test_padding_gives_ignore_and_zero_after_normalize():
    specs = {"rgb": get_spec("rgb"), "depth": get_spec("depth"), "lidar": get_spec("lidar")}
    s = {
        "rgb": torch.rand(3, 10, 12),
        "depth": torch.rand(3, 10, 12) * 50,
        "lidar": torch.rand(3, 10, 12),
        "label": torch.randint(0, 5, (10, 12)),
    }
    t = build_train_transforms(specs, (24, 20), (1.0, 1.0), flip_prob=0.0, photometric=False)
    out = t(s, torch.Generator().manual_seed(0))
    assert out["label"].shape == (24, 20)
    assert torch.all(out["label"][10:, :] == 255) and torch.all(out["label"][:, 12:] == 255)
    assert torch.equal(out["label"][:10, :12], s["label"])
    for m in specs:
        assert torch.allclose(out[m][:, 10:, :], torch.zeros(1), atol=1e-6), m
        assert torch.allclose(out[m][:, :, 12:], torch.zeros(1), atol=1e-6), m
        assert torch.allclose(out[m][:, :10, :12], specs[m].normalize_tensor(s[m]), atol=1e-5), m


def test_determinism_with_seed():
    specs = {m: get_spec(m) for m in ("rgb", "lidar")}
    s = {"rgb": torch.rand(3, 30, 40), "lidar": torch.rand(3, 30, 40), "label": torch.randint(0, 4, (30, 40))}
    t = build_train_transforms(specs, (16, 16), jitter_p=0.5, blur_p=0.5, cat_max_ratio=0.75)
    a = t(s, torch.Generator().manual_seed(123))
    b = t(s, torch.Generator().manual_seed(123))
    for k in ("rgb", "lidar", "label"):
        assert torch.equal(a[k], b[k])
    outs = [t(s, torch.Generator().manual_seed(i))["label"] for i in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    # python's random.Random works as the source too
    c = t(s, random.Random(5))
    d = t(s, random.Random(5))
    assert torch.equal(c["rgb"], d["rgb"]) and torch.equal(c["label"], d["label"])
    # global torch RNG when no generator is passed
    torch.manual_seed(9)
    e = t(s)
    torch.manual_seed(9)
    f = t(s)
    assert torch.equal(e["label"], f["label"])
    # the input sample is not modified
    assert s["rgb"].shape == (3, 30, 40)


def test_eval_transforms_resize_and_pad():
    specs = {m: get_spec(m) for m in ("rgb", "event")}
    s = {
        "rgb": torch.rand(3, 20, 30),
        "event": torch.rand(3, 20, 30),
        "label": torch.randint(0, 3, (20, 30)),
        "meta": {"id": "a"},
    }
    out = build_eval_transforms(specs, (24, 36))(s)
    assert out["rgb"].shape == (3, 24, 36) and out["label"].shape == (24, 36)
    out = build_eval_transforms(specs, (24, 36), resize_label=False)(s)
    assert out["rgb"].shape == (3, 24, 36) and out["label"].shape == (20, 30)
    out = build_eval_transforms(specs, pad_multiple=16)(s)
    assert out["rgb"].shape == (3, 32, 32) and out["meta"]["unpadded_size"] == (20, 30)
    assert torch.all(out["label"][20:] == 255) and torch.allclose(out["rgb"][:, 20:], torch.zeros(1), atol=1e-6)
    assert "unpadded_size" not in s["meta"]
    kept = Resize(40, keep_ratio=True)(s)
    assert kept["rgb"].shape == (3, 27, 40)
    assert Normalize(specs)(s)["rgb"].shape == (3, 20, 30)
    assert PadToMultiple(8)(s)["label"].shape == (24, 32)


def test_nearest_label_values_preserved():
    lab = torch.randint(0, 25, (17, 23))
    lab[0] = 255
    out = RandomScaleCrop((13, 29), (0.6, 1.7))({"label": lab, "rgb": torch.rand(3, 17, 23)}, torch.Generator().manual_seed(3))
    assert set(out["label"].unique().tolist()) <= set(lab.unique().tolist()) | {255}


def test_invalid_arguments():
    with pytest.raises(ValueError):
        RandomScaleCrop((0, 4))
    with pytest.raises(ValueError):
        RandomScaleCrop(8, (2.0, 1.0))
    with pytest.raises(ValueError):
        RandomScaleCrop(8, interpolation={"rgb": "bicubic"})
    with pytest.raises(ValueError):
        GaussianBlur(kernel_size=4)


def test_vertical_flip_moves_rows_of_every_modality_and_the_label():
    from fusionseg.data.transforms import RandomVerticalFlip

    s = {"rgb": torch.arange(12.0).view(1, 3, 4).expand(3, 3, 4).clone(),
         "dsm": torch.arange(12.0).view(1, 3, 4), "label": torch.arange(12).view(3, 4)}
    out = RandomVerticalFlip(1.0)(s)
    assert torch.equal(out["label"][0], s["label"][2])
    assert torch.equal(out["dsm"][0, 0], s["dsm"][0, 2]) and torch.equal(out["rgb"][1, 0], s["rgb"][1, 2])
    assert RandomVerticalFlip(0.0)(s) is s


def test_label_interpolation_legacy_is_torchvision_nearest():
    """``nearest-legacy`` takes source pixel ``floor(dst * in / out)`` (torch's legacy nearest,
    torchvision's InterpolationMode.NEAREST); the default stays pixel-centre aligned."""
    import math

    import torch.nn.functional as F

    rows = torch.arange(30)[:, None].expand(30, 7).contiguous()
    s = {"rgb": torch.rand(3, 30, 7), "label": rows, "meta": {"id": "r"}}
    for out_h in (45, 40, 20, 64):
        legacy = Resize((out_h, 7), label_interpolation="nearest-legacy")(s)["label"][:, 0]
        assert legacy.tolist() == [math.floor(d * 30 / out_h) for d in range(out_h)]
        exact = Resize((out_h, 7))(s)["label"][:, 0]
        assert exact.tolist() == [math.floor((d + 0.5) * 30 / out_h) for d in range(out_h)]
    lab = torch.randint(0, 9, (30, 40))
    lab[0] = 255
    s = {"rgb": torch.rand(3, 30, 40), "label": lab, "meta": {"id": "l"}}
    specs = {"rgb": get_spec("rgb")}
    for size in ((40, 53), (17, 23), (60, 80)):
        want = F.interpolate(lab[None, None].float(), size=size, mode="nearest")[0, 0].long()
        out = build_eval_transforms(specs, size, label_interpolation="nearest-legacy")(s)
        assert torch.equal(out["label"], want) and out["rgb"].shape == (3, *size)
        # images are resampled as before (bilinear): only the label's rule changes
        assert torch.equal(out["rgb"], build_eval_transforms(specs, size)(s)["rgb"])
    with pytest.raises(ValueError):
        Resize(8, label_interpolation="bilinear")


@pytest.mark.parametrize("rule, mode", [("nearest", "nearest-exact"),
                                        ("nearest-legacy", "nearest")])
def test_config_eval_label_interpolation_reaches_the_eval_resize(tmp_path, rule, mode):
    """``data.eval_label_interpolation`` picks the label's nearest rule of the evaluation
    resize (32 -> 48 px: a non-integer factor, where the two rules differ)."""
    import sys
    from pathlib import Path

    import torch.nn.functional as F

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fixtures.deliver_tree import make_deliver_tree

    from fusionseg.config import config_from_dict
    from fusionseg.engine.datamodule import build_dataset

    root = tmp_path / "deliver"
    make_deliver_tree(root, conditions=("cloud",), splits=("val",), per_split=1,
                      modalities=("rgb",))
    cfg = config_from_dict({"model": {"name": "sum_fusion", "modalities": ["rgb"]},
                            "data": {"dataset": "deliver", "root": str(root),
                                     "eval_size": [48, 48],
                                     "eval_label_interpolation": rule}})
    ds = build_dataset(cfg, "val", train=False)
    raw = build_dataset(cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"eval_size": None})}), "val", train=False)[0]["label"]
    want = F.interpolate(raw[None, None].float(), size=(48, 48), mode=mode)[0, 0].long()
    assert torch.equal(ds[0]["label"], want)


def test_center_crop_known_windows():
    """``crop`` cuts the window at ``round((H - h) / 2), round((W - w) / 2)`` (Python round, as
    torchvision and the MCubeS release's FixScaleCrop) from every modality and the label,
    after the resize; 1024 x 1032 -> 1024 x 1024 keeps columns 4..1027."""
    from fusionseg.data.transforms import CenterCrop
    from fusionseg.errors import ConfigError, DataError

    h, w = 6, 10
    grid = (torch.arange(h)[:, None] * 100 + torch.arange(w)[None, :])
    s = {"rgb": grid.float()[None].repeat(3, 1, 1), "dsm": grid.float()[None],
         "label": grid.clone(), "meta": {"id": "c"}}
    for (ch, cw), (top, left) in {(6, 8): (0, 1), (4, 4): (1, 3), (3, 5): (2, 2),
                                  (5, 7): (0, 2), (6, 10): (0, 0)}.items():
        out = CenterCrop((ch, cw))(s)
        want = grid[top:top + ch, left:left + cw]
        assert torch.equal(out["label"], want), (ch, cw)
        assert torch.equal(out["dsm"][0], want.float()) and torch.equal(out["rgb"][2], want.float())
    assert CenterCrop((6, 10))(s) is s
    assert torch.equal(s["label"], grid)  # input untouched
    big = {"rgb": torch.zeros(3, 1024, 1032), "label": torch.arange(1032).expand(1024, 1032)}
    out = build_eval_transforms({"rgb": get_spec("rgb")}, crop=(1024, 1024))(big)
    assert out["rgb"].shape == (3, 1024, 1024)
    assert out["label"][0, 0].item() == 4 and out["label"][0, -1].item() == 1027
    # after the resize: 6 x 10 -> 12 x 20 (nearest label: each pixel twice), centre 8 x 8
    out = build_eval_transforms({"rgb": get_spec("rgb")}, (12, 20), crop=8)(
        {"rgb": s["rgb"], "label": s["label"]})
    assert torch.equal(out["label"], grid.repeat_interleave(2, 0).repeat_interleave(2, 1)[2:10, 6:14])
    with pytest.raises(DataError, match="smaller"):
        CenterCrop((7, 4))(s)
    with pytest.raises(DataError, match="label"):
        build_eval_transforms({"rgb": get_spec("rgb")}, (12, 20), resize_label=False, crop=8)(s)
    with pytest.raises(ConfigError):
        CenterCrop((0, 4))


def test_config_eval_crop_reaches_the_eval_transforms(tmp_path):
    """``data.eval_crop`` centre-crops the evaluation samples of ``build_dataset`` (MCubeS: the
    left 192 columns cut by the loader, then the centre crop)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fixtures.mcubes_tree import make_mcubes_tree

    from fusionseg.config import config_from_dict
    from fusionseg.engine.datamodule import build_dataset

    root = tmp_path / "multimodal_dataset"
    make_mcubes_tree(root, splits={"test": 1}, height=24, width=192 + 32)
    data = {"dataset": "mcubes", "root": str(root)}
    model = {"name": "sum_fusion", "modalities": ["rgb", "nir"]}
    full = build_dataset(config_from_dict({"model": model, "data": data}), "test", train=False)[0]
    cfg = config_from_dict({"model": model, "data": {**data, "eval_crop": [24, 24]}})
    assert cfg.data.eval_crop == (24, 24)
    out = build_dataset(cfg, "test", train=False)[0]
    assert full["label"].shape == (24, 32) and out["label"].shape == (24, 24)
    assert torch.equal(out["label"], full["label"][:, 4:28])
    assert torch.equal(out["nir"], full["nir"][:, :, 4:28])
