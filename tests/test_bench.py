"""fusionseg.bench on a tiny model."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MIT
from torch import nn

from fusionseg.bench import count_flops, make_random_batch, measure
from fusionseg.models import count_parameters, create_model


def tiny_model():
    torch.manual_seed(0)
    return create_model(
        {
            "name": "sum_fusion",
            "modalities": ["rgb", "depth"],
            "num_classes": 4,
            "decoder_dim": 16,
            "backbone_kwargs": TINY_MIT,
        }
    )


def test_make_random_batch():
    b = make_random_batch(
        ["rgb", "depth"], batch=3, size=(32, 48), num_classes=4, channels={"depth": 1}
    )
    assert b["rgb"].shape == (3, 3, 32, 48) and b["depth"].shape == (3, 1, 32, 48)
    assert b["rgb"].dtype == torch.float32
    assert b["label"].dtype == torch.int64 and int(b["label"].max()) < 4


def test_count_parameters():
    m = tiny_model()
    c = count_parameters(m)
    assert c["total"] == c["trainable"] == sum(p.numel() for p in m.parameters())
    m.freeze_backbone()
    assert count_parameters(m)["trainable"] < c["total"]


def test_measure_tiny_model():
    m = tiny_model()
    b = make_random_batch(["rgb", "depth"], batch=2, size=32, num_classes=4)
    r = measure(m, b, steps=1, warmup=1)
    for key in (
        "params_total",
        "params_trainable",
        "gflops",
        "gmacs",
        "latency_ms",
        "train_step_s",
        "train_step_cpu_s",
        "peak_memory_mb",
    ):
        assert r[key] > 0, key
    assert r["memory_kind"] == "cpu_peak_rss" and r["device"] == "cpu"
    assert r["batch_size"] == 2 and r["input_size"] == [32, 32]
    assert r["gmacs"] == pytest.approx(r["gflops"] / 2)
    assert m.training  # mode restored (a fresh module is in training mode)
    m.eval()
    r2 = measure(m, batch_fn=lambda: b, steps=1, warmup=0, train=False, flops=False)
    assert "train_step_s" not in r2 and "gflops" not in r2 and r2["latency_ms"] > 0
    assert not m.training
    with pytest.raises(ValueError):
        measure(m, b, batch_fn=lambda: b)


def test_flops_count_cpu_attention():
    """The CPU SDPA kernel is counted: 4 * B * H * N * M * d for q k^T and attn v."""

    class Attn(nn.Module):
        def forward(self, batch):
            q = batch["rgb"].flatten(2).transpose(1, 2)[:, None]  # [B, 1, N, 3]
            return torch.nn.functional.scaled_dot_product_attention(q, q[:, :, :5], q[:, :, :5])

    b = {"rgb": torch.randn(2, 3, 4, 4)}
    assert count_flops(Attn(), b) == 4 * 2 * 1 * 16 * 5 * 3


def test_precision_resolution_and_autocast():
    from fusionseg.runtime import autocast, resolve_precision

    # unset = auto, pinned to 32-true by conftest (tests/engine/test_precision.py fakes hardware)
    assert resolve_precision(None, "cpu") == "32-true"
    assert resolve_precision(None, "cuda") == "32-true"
    assert resolve_precision("32", "cpu") == "32-true"
    assert resolve_precision("16-mixed", "cpu", strict=False) == "bf16-mixed"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        resolve_precision("16-mixed", "cpu")
    with pytest.raises(ValueError, match="unknown"):
        resolve_precision("fp8", "cpu")
    m = tiny_model().eval()
    b = make_random_batch(["rgb", "depth"], batch=1, size=32, num_classes=4)
    with torch.no_grad():
        full = m(b)
        with autocast("bf16-mixed", "cpu"):
            half = m(b)
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32
    # bf16 keeps ~3 significant digits: logits agree to a few percent of their spread
    assert (half.float() - full).abs().max() < 0.05 * (full.max() - full.min())


def test_measure_in_bf16():
    m = tiny_model()
    b = make_random_batch(["rgb", "depth"], batch=2, size=32, num_classes=4)
    r = measure(m, b, steps=1, warmup=0, flops=False, precision="bf16-mixed")
    assert r["precision"] == "bf16-mixed" and r["train_step_s"] > 0 and r["latency_ms"] > 0
    assert measure(m, b, steps=1, warmup=0, flops=False, train=False)["precision"] == "32-true"
