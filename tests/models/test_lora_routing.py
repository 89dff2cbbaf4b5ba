"""Mixture of per-modality LoRA experts on fused qkv projections, and MLE-SAM's modality
routing: exact algebra against explicit computations, frozen weights untouched, subsets."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fusionseg.models import create_backbone
from fusionseg.models.methods.mle_sam.routing import ModalityRouter
from fusionseg.models.peft import PeftModule
from fusionseg.models.peft.lora import (
    LoRAQKV,
    inject_lora_experts,
    lora_modules,
    set_active_experts,
)

TINY_VIT = dict(embed_dim=16, depth=2, num_heads=2, out_indices=(0, 1), img_size=28)


def _randomise_lora(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_lora_updates_only_q_and_v_with_the_chunk_expert():
    torch.manual_seed(0)
    base = nn.Linear(8, 12)
    ref = copy.deepcopy(base)
    w = LoRAQKV(base, ["rgb", "depth"], rank=3, alpha=6.0)
    assert w.weight is base.weight and w.lora.scale == 2.0
    _randomise_lora(w)
    x = torch.randn(4, 5, 8)  # 2 streams x 2 samples
    torch.testing.assert_close(w(x), ref(x))  # no active experts: the plain projection
    w.active = ("depth", "rgb")
    out = w(x)
    plain = ref(x)
    for chunk, name in ((slice(0, 2), "depth"), (slice(2, 4), "rgb")):
        e = w.lora.experts[name]
        dq = x[chunk] @ e["q"].lora_A.T @ e["q"].lora_B.T * 2.0
        dv = x[chunk] @ e["v"].lora_A.T @ e["v"].lora_B.T * 2.0
        torch.testing.assert_close(out[chunk, :, :4], plain[chunk, :, :4] + dq)
        torch.testing.assert_close(out[chunk, :, 4:8], plain[chunk, :, 4:8])  # k untouched
        torch.testing.assert_close(out[chunk, :, 8:], plain[chunk, :, 8:] + dv)
    with pytest.raises(ValueError, match="not divisible"):
        w.active = ("rgb", "depth", "rgb")
        w(x)
    with pytest.raises(ValueError, match="unknown LoRA expert"):
        w.active = ("thermal",)
        w(x)


def test_initial_lora_is_the_identity_and_a_is_kaiming():
    w = LoRAQKV(nn.Linear(64, 96), ["a"], rank=32)
    a = w.lora.experts["a"]["q"].lora_A.detach()
    assert a.shape == (32, 64) and float(a.abs().max()) <= (1 / 64) ** 0.5 + 1e-6
    assert float(a.std()) > 0.05 and float(w.lora.experts["a"]["v"].lora_B.detach().abs().sum()) == 0
    x = torch.randn(2, 64)
    w.active = ("a",)
    torch.testing.assert_close(w(x), nn.functional.linear(x, w.weight, w.bias))


def test_injected_encoder_keeps_its_keys_and_frozen_weights_get_no_gradient():
    torch.manual_seed(0)
    bb = create_backbone("dinov2_vits14", **TINY_VIT)
    keys = set(bb.state_dict())
    wrappers = inject_lora_experts(bb, ["rgb", "depth"], rank=2)
    assert len(wrappers) == 2 and lora_modules(bb) == wrappers
    new = set(bb.state_dict())
    assert keys <= new
    assert all(".attn.qkv.lora.experts." in k for k in new - keys)
    assert all(isinstance(w.lora, PeftModule) and not isinstance(w, PeftModule)
               for w in wrappers)
    for n, p in bb.named_parameters():
        p.requires_grad_(".lora." in n)
    _randomise_lora(bb)
    frozen = {n: p.detach().clone() for n, p in bb.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in bb.parameters() if p.requires_grad], lr=1e-2)
    set_active_experts(bb, ["rgb", "depth"])
    for _ in range(2):
        loss = sum(o.square().mean() for o in bb(torch.randn(4, 3, 28, 28)))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in bb.parameters() if not p.requires_grad)
        assert all(p.grad is not None for p in bb.parameters() if p.requires_grad)
        opt.step()
    for n, p in bb.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_stream_batch_equals_each_stream_alone_with_its_expert():
    torch.manual_seed(1)
    bb = create_backbone("dinov2_vits14", **TINY_VIT).eval()
    inject_lora_experts(bb, ["rgb", "depth", "lidar"], rank=2, shared=True)
    _randomise_lora(bb)
    x_rgb, x_lidar = torch.randn(2, 3, 28, 28), torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        set_active_experts(bb, ["lidar", "rgb"])
        both = bb(torch.cat([x_lidar, x_rgb]))
        set_active_experts(bb, ["rgb"])
        alone = bb(x_rgb)
        set_active_experts(bb, None)
        plain = bb(x_rgb)
    torch.testing.assert_close(both[-1][2:], alone[-1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone[-1], plain[-1], atol=1e-3)


def test_grad_checkpointing_recomputes_with_the_same_experts():
    torch.manual_seed(2)
    bb = create_backbone("dinov2_vits14", **TINY_VIT)
    inject_lora_experts(bb, ["a", "b"], rank=2)
    _randomise_lora(bb)
    x = torch.randn(4, 3, 28, 28)
    grads = []
    for ckpt in (False, True):
        bb.zero_grad()
        bb.set_grad_checkpointing(ckpt)
        set_active_experts(bb, ["b", "a"])
        sum(o.sum() for o in bb(x)).backward()
        grads.append(bb.blocks[0].attn.qkv.lora.experts["a"]["q"].lora_A.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


# --------------------------------------------------------------------------- routing
def _router(**kw) -> ModalityRouter:
    torch.manual_seed(0)
    return ModalityRouter(4, 3, **kw)


def test_pixel_routing_is_a_softmax_over_present_modalities():
    r = _router(integrate=None)
    feats = torch.randn(3, 2, 4, 5, 6)
    present = torch.tensor([[True, True, True], [True, False, True]])
    out = r(feats, present)
    w = r.last_weights
    assert w.shape == (2, 3, 5, 6)
    torch.testing.assert_close(w.sum(1), torch.ones(2, 5, 6))
    assert float(w[1, 1].abs().max()) == 0.0
    s = torch.einsum("mbchw,mc->bmhw", feats, r.gate_weight) + r.gate_bias.view(1, 3, 1, 1)
    ref = torch.softmax(s[1, [0, 2]], dim=0)
    torch.testing.assert_close(w[1, [0, 2]], ref)
    torch.testing.assert_close(out[1], ref[0] * feats[0, 1] + ref[1] * feats[2, 1])


def test_missing_modality_values_do_not_matter_and_top_k():
    r = _router(gate="image", top_k=1, integrate="conv")
    feats = torch.randn(3, 2, 4, 5, 6)
    present = torch.tensor([[True, False, True], [False, True, True]])
    out = r(feats, present)
    noisy = feats.clone()
    noisy[1, 0] = 100.0
    noisy[0, 1] = -7.0
    torch.testing.assert_close(r(noisy, present), out)
    w = r.last_weights
    assert w.shape == (2, 3, 1, 1) and torch.equal((w > 0).sum(1).flatten(), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="at least one present"):
        r(feats, torch.tensor([[False, False, False], [True, True, True]]))
    with pytest.raises(ValueError, match=r"expects \[3, B, 4"):
        r(feats[:2], present)


def test_mean_integration_averages_present_streams():
    r = _router(weighted=False, integrate="mean")
    feats = torch.randn(3, 1, 4, 2, 2)
    out = r(feats, torch.tensor([[True, False, True]]))
    torch.testing.assert_close(out[0], 0.5 * (feats[0, 0] + feats[2, 0]))
    with pytest.raises(ValueError, match="needs the weighted or"):
        ModalityRouter(4, 3, weighted=False, integrate=None)
