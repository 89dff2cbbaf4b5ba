import os

import pytest
import torch
from torch import nn

from fusionseg.engine.checkpoint import atomic_torch_save
from fusionseg.engine.inference import predict_logits
from fusionseg.engine.masking import random_modality_dropout
from fusionseg.engine.module import warmup_poly_factor


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
