import os

import pytest
import torch
from torch import nn

from fusionseg.engine.checkpoint import atomic_torch_save
from fusionseg.engine.masking import random_modality_dropout
from fusionseg.engine.module import warmup_cosine_factor, warmup_poly_factor
from fusionseg.models.inference_modes import predict_logits


class PointwiseModel(nn.Module):
    """Sum of 1x1 convs over present modalities: translation-equivariant, no context."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, batch):
        return sum(self.conv(batch[m]) for m in ("rgb", "depth") if m in batch)


def test_slide_inference_equals_whole_for_pointwise_model():
    torch.manual_seed(0)
    model = PointwiseModel().eval()
    batch = {"rgb": torch.randn(2, 3, 37, 50), "depth": torch.randn(2, 3, 37, 50)}
    whole = predict_logits(model, batch)
    slide = predict_logits(model, batch, mode="slide", window=(16, 16), stride=(11, 11))
    assert torch.allclose(whole, slide, atol=1e-5)
    big_window = predict_logits(model, batch, mode="slide", window=(64, 64), stride=(32, 32))
    assert torch.allclose(whole, big_window, atol=1e-5)
    flip = predict_logits(model, batch, flip=True, scales=[1.0])
    assert torch.allclose(whole, flip, atol=1e-5)
    ms = predict_logits(model, batch, scales=[0.5, 1.0])
    assert ms.shape == whole.shape
    with pytest.raises(ValueError):
        predict_logits(model, batch, mode="tile")


def test_modality_dropout_keeps_one_and_zeros_dropped():
    g = torch.Generator().manual_seed(0)
    batch = {"rgb": torch.ones(64, 3, 2, 2), "depth": torch.ones(64, 3, 2, 2)}
    out = random_modality_dropout(batch, ["rgb", "depth"], p=0.9, generator=g)
    present = out["present"]
    assert present.any(1).all()
    assert (~present).any()
    for j, m in enumerate(["rgb", "depth"]):
        assert torch.all(out[m][~present[:, j]] == 0)
        assert torch.all(out[m][present[:, j]] == 1)


def test_warmup_poly_schedule():
    assert warmup_poly_factor(0, 100, 10, 0.1, 0.9) == pytest.approx(0.1)
    assert warmup_poly_factor(5, 100, 10, 0.1, 0.9) == pytest.approx(0.55)
    assert warmup_poly_factor(10, 100, 10, 0.1, 0.9) == pytest.approx(0.9 ** 0.9)
    assert warmup_poly_factor(100, 100, 10, 0.1, 0.9) == 0.0


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"step": 2, "x": Boom()}, path)
    assert torch.load(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_warmup_cosine_schedule():
    assert warmup_cosine_factor(0, 110, 10, 0.1, 0.01) == pytest.approx(0.1)
    assert warmup_cosine_factor(10, 110, 10, 0.1, 0.01) == pytest.approx(1.0)
    assert warmup_cosine_factor(60, 110, 10, 0.1, 0.01) == pytest.approx(0.505)
    assert warmup_cosine_factor(110, 110, 10, 0.1, 0.01) == pytest.approx(0.01)
    assert warmup_cosine_factor(500, 110, 10, 0.1, 0.01) == pytest.approx(0.01)


class _PixelwiseModel(torch.nn.Module):
    """Logits from 1x1 convolutions only: sliding-window and whole-image inference agree."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(3, 8, 1)
        self.b = torch.nn.Conv2d(1, 8, 1)
        self.c = torch.nn.Conv2d(8, 6, 1)
        self.calls = []

    def forward(self, batch):
        self.calls.append(tuple(batch["irrg"].shape[-2:]))
        return self.c(torch.relu(self.a(batch["irrg"]) + self.b(batch["dsm"])))


@pytest.mark.parametrize("size, window, stride", [((203, 251), (64, 64), (32, 32)),
                                                  ((100, 77), (64, 48), (40, 30)),
                                                  ((50, 40), (64, 64), (32, 32))])
def test_sliding_window_covers_every_pixel_and_equals_whole_image(size, window, stride):
    g = torch.Generator().manual_seed(0)
    batch = {"irrg": torch.randn(2, 3, *size, generator=g),
             "dsm": torch.randn(2, 1, *size, generator=g)}
    model = _PixelwiseModel().eval()
    whole = predict_logits(model, batch, mode="whole")
    model.calls.clear()
    slide = predict_logits(model, batch, mode="slide", window=window, stride=stride)
    assert slide.shape == (2, 6, *size)

    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)
    assert all(c == tuple(window) for c in model.calls)  # every window at full size
    # several windows per forward pass: the same result
    batched = predict_logits(model, {**batch, "present": torch.ones(2, 2, dtype=torch.bool)},
                             mode="slide", window=window, stride=stride, window_batch=5)
    torch.testing.assert_close(batched, slide, rtol=1e-5, atol=1e-6)
    # a constant model: the count-normalised sum is 1 wherever a window landed, i.e. everywhere
    ones = predict_logits(lambda b: torch.ones(b["irrg"].shape[0], 1, *b["irrg"].shape[-2:]),
                          batch, mode="slide", window=window, stride=stride)
    assert torch.equal(ones, torch.ones_like(ones))


def test_staged_learning_rates_per_group():
    from fusionseg.config import config_from_dict
    from fusionseg.engine.module import stage_factor_fn

    t = config_from_dict({"train": {"lr": 5e-4, "head_lr_mult": 6.0, "schedule": "stages",
                                    "optimizer": "sgd", "lr_stages": [
                                        {"epochs": 2, "lr": 5e-4, "head_lr_mult": 6.0},
                                        {"epochs": 2, "lr": 2.5e-4, "head_lr_mult": 6.0},
                                        {"epochs": 1, "lr": 1e-4, "head_lr_mult": 7.0}]}}).train
    enc, dec = stage_factor_fn(t, "backbone", 10), stage_factor_fn(t, "rest_no_decay", 10)
    assert [enc(s) * 5e-4 for s in (0, 19, 20, 39, 40, 99)] == pytest.approx(
        [5e-4, 5e-4, 2.5e-4, 2.5e-4, 1e-4, 1e-4])
    assert [dec(s) * 3e-3 for s in (0, 25, 45)] == pytest.approx([3e-3, 1.5e-3, 7e-4])
    from fusionseg.config import ConfigError

    with pytest.raises(ConfigError, match="lr_stages"):
        config_from_dict({"train": {"schedule": "stages"}})


def test_json_results_are_strict_json_with_null_for_nan(tmp_path):
    import json
    import math

    import torch

    from fusionseg.engine.checkpoint import atomic_write_json, json_safe

    obj = {"IoU": [1.5, float("nan"), float("inf")], "n": torch.tensor(2.0),
           "nested": ({"x": -math.inf},)}
    assert json_safe(obj) == {"IoU": [1.5, None, None], "n": 2.0, "nested": [{"x": None}]}
    path = atomic_write_json(obj, tmp_path / "sub" / "r.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["IoU"] == [1.5, None, None]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left
