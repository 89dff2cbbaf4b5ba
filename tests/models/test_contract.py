"""Contract tests over every registered backbone and model, built with the tiny settings each
declares at registration, and a sweep that builds the model of every shipped config.

A new backbone or method is covered here as soon as it registers (with ``tiny=``).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_cfg
from fixtures import toy_method  # noqa: F401  (registers toy_aux, a method with aux outputs)
from safetensors.torch import save_file
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fusionseg.config import load_config
from fusionseg.models import MODELS, Segmentor, create_backbone, create_model, load_checkpoint
from fusionseg.models.backbones import BACKBONES, Backbone, TransformerBackbone
from fusionseg.models.peft import PeftModule

ROOT = Path(__file__).resolve().parents[2]
BACKBONE_NAMES = BACKBONES.names()
MODEL_NAMES = MODELS.names()
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_every_entry_declares_tiny_settings():
    assert [e.name for e in BACKBONES.entries() if e.tiny is None] == []
    assert [e.name for e in MODELS.entries() if e.tiny is None] == []
    assert all(isinstance(e.info.get("segmentor"), type) for e in MODELS.entries())


# --------------------------------------------------------------------------- backbones
def tiny_backbone(name: str, seed: int = 0, **kw) -> Backbone:
    torch.manual_seed(seed)
    return create_backbone(name, **{**BACKBONES.entry(name).tiny, **kw}).eval()


def _sizes(multiple: int) -> list[tuple[int, int]]:
    if multiple == 1:
        return [(32, 32), (33, 47)]
    return [(2 * multiple, 3 * multiple)]


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_backbone_output_shapes(name):
    bb = tiny_backbone(name)
    assert isinstance(bb, Backbone)
    assert len(bb.out_channels) == len(bb.strides) and bb.input_multiple >= 1
    for h, w in _sizes(bb.input_multiple):
        outs = bb(torch.randn(2, bb.in_chans, h, w))
        assert len(outs) == len(bb.strides)
        for o, c, s in zip(outs, bb.out_channels, bb.strides, strict=True):
            assert o.shape == (2, c, math.ceil(h / s), math.ceil(w / s))
    with pytest.raises(ValueError, match=r"expects \[B"):
        bb(torch.randn(1, bb.in_chans + 1, 32, 32))


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_backbone_checkpoint_filter_is_idempotent_and_round_trips(name, tmp_path):
    bb = tiny_backbone(name)
    sd = bb.state_dict()
    again = type(bb).checkpoint_filter_fn(sd, bb)
    assert list(again) == list(sd) and all(again[k] is sd[k] for k in sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "bb.safetensors")
    loaded = create_backbone(name, pretrained=tmp_path / "bb.safetensors",
                             **BACKBONES.entry(name).tiny).eval()
    x = torch.randn(1, bb.in_chans, *_sizes(bb.input_multiple)[0])
    with torch.no_grad():
        for a, b in zip(bb(x), loaded(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_backbone_no_weight_decay_names_and_grad_checkpointing(name):
    bb = tiny_backbone(name)
    params = dict(bb.named_parameters())
    assert set(bb.no_weight_decay()) <= set(params)
    x = torch.randn(2, bb.in_chans, *_sizes(bb.input_multiple)[0], requires_grad=True)
    bb.train()

    def grads():
        torch.manual_seed(0)  # the same stochastic-depth draws in both runs
        bb.zero_grad()
        sum(o.square().mean() for o in bb(x)).backward()
        return {k: p.grad.clone() for k, p in params.items() if p.grad is not None}

    plain = grads()
    bb.set_grad_checkpointing(True)
    ckpt = grads()
    bb.set_grad_checkpointing(False)
    assert plain.keys() == ckpt.keys() and plain
    for k in plain:
        torch.testing.assert_close(plain[k], ckpt[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_transformer_stage_access_reproduces_forward(name):
    bb = tiny_backbone(name)
    if not isinstance(bb, TransformerBackbone):
        pytest.skip("not a transformer backbone")
    x = torch.randn(1, bb.in_chans, *_sizes(bb.input_multiple)[0])
    carry, outs = x, []
    with torch.no_grad():
        for s in range(bb.num_stages):
            tokens, h, w = bb.embed(s, carry)
            for blk in bb.blocks_of(s):
                tokens = tokens + blk.attn_residual(tokens, h, w)
                tokens = tokens + blk.mlp_residual(tokens, h, w)
            feat, carry = bb.finish_stage(s, tokens, h, w)
            outs.append(bb.tokens_to_map(feat, h, w))
        for a, b in zip(outs, bb(x), strict=True):
            torch.testing.assert_close(a, b)
    tok, h, w = bb.map_to_tokens(outs[0])
    if bb.num_prefix_tokens:
        tok = torch.cat([tok.new_zeros(1, bb.num_prefix_tokens, tok.shape[-1]), tok], dim=1)
    assert torch.equal(bb.tokens_to_map(tok, h, w), outs[0])


# --------------------------------------------------------------------------- models
def tiny_model(name: str, seed: int = 0) -> Segmentor:
    torch.manual_seed(seed)
    return create_model(tiny_model_cfg(name))


def batch_for(model: Segmentor, b: int = 2, h: int = 33, w: int = 47, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {m: torch.randn(b, 3, h, w, generator=g) for m in model.modalities}
    out["label"] = torch.zeros(b, h, w, dtype=torch.long)
    return out


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_output_shape_at_odd_sizes(name):
    model = tiny_model(name)
    assert isinstance(model, MODELS.entry(name).info["segmentor"])
    for h, w in ((33, 47), (30, 64)):
        batch = batch_for(model, h=h, w=w)
        with torch.no_grad():
            out = model.eval()(batch)
        assert out.shape == (2, model.num_classes, h, w)
        train_out = model.train()(batch)
        logits = train_out if isinstance(train_out, torch.Tensor) else train_out.logits
        assert logits.shape == (2, model.num_classes, h, w)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_absent_modality_is_zero_with_present_false(name):
    model = tiny_model(name).eval()
    if len(model.modalities) < 2:
        pytest.skip("one modality")
    batch = batch_for(model)
    gone = model.modalities[-1]
    absent = {k: v for k, v in batch.items() if k != gone}
    flagged = dict(batch)
    flagged[gone] = torch.randn_like(batch[gone]) * 100  # ignored: present is false
    flagged["present"] = torch.tensor([[m != gone for m in model.modalities]] * 2)
    streams = model.stream_inputs(absent)
    assert streams.names == model.modalities
    j = model.modalities.index(gone)
    assert not streams.present[:, j].any() and not streams.images[j].any()
    assert streams.present[:, :j].all()
    with torch.no_grad():
        torch.testing.assert_close(model(absent), model(flagged))


@pytest.mark.parametrize("flagged", ["zeros", "random"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sample_missing_a_modality_equals_that_sample_with_the_key_absent(name, flagged):
    """Per sample: a sample whose last modality is flagged absent (``present`` false; a zero or
    a random image, which must be ignored) gets the logits of that sample alone with the key
    absent, and the full sample next to it those of the full sample alone."""
    model = tiny_model(name).eval()
    if len(model.modalities) < 2:
        pytest.skip("one modality")
    batch = batch_for(model, h=32, w=32)
    gone = model.modalities[-1]
    g = torch.Generator().manual_seed(7)
    mixed = dict(batch)
    mixed[gone] = batch[gone].clone()
    mixed[gone][0] = 0.0 if flagged == "zeros" else 50 * torch.randn(3, 32, 32, generator=g)
    present = torch.ones(2, len(model.modalities), dtype=torch.bool)
    present[0, -1] = False
    mixed["present"] = present
    alone0 = {m: batch[m][:1] for m in model.modalities if m != gone}
    alone1 = {m: batch[m][1:] for m in model.modalities}
    with torch.no_grad():
        out = model(mixed)
        ref0, ref1 = model(alone0), model(alone1)
    assert out.shape == (2, model.num_classes, 32, 32)
    torch.testing.assert_close(out[:1], ref0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1:], ref1, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_modality_alone_gives_finite_logits(name):
    model = tiny_model(name).eval()
    batch = batch_for(model, h=32, w=32)
    for m in model.modalities:
        with torch.no_grad():
            out = model({m: batch[m], "label": batch["label"]})
        assert out.shape == (2, model.num_classes, 32, 32), m
        assert torch.isfinite(out).all(), m


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_frozen_backbone_stays_frozen_and_batchnorm_in_eval(name):
    model = tiny_model(name)
    model.freeze_backbone().train()
    frozen = {id(p) for p in model.backbone_parameters()}
    assert frozen and all(not p.requires_grad for p in model.backbone_parameters())
    for m in model.backbone_modules():
        assert all(not bn.training for bn in m.modules() if isinstance(bn, _BatchNorm))
    # a BatchNorm outside the backbone whose parameters are frozen stays in eval mode too
    bns = [bn for bn in model.modules() if isinstance(bn, _BatchNorm)]
    for bn in bns:
        for p in bn.parameters():
            p.requires_grad_(False)
    model.train()
    assert all(not bn.training for bn in bns)
    groups = model.param_groups(1e-3, 0.01, 10.0)
    assert not any(id(p) in frozen for g in groups for p in g["params"])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_strict_save_load_round_trip_and_idempotent_filter(name, tmp_path):
    model = tiny_model(name, seed=0).eval()
    sd = model.state_dict()
    again = type(model).checkpoint_filter_fn(sd, model)
    assert list(again) == list(sd) and all(again[k] is sd[k] for k in sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "m.safetensors")
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 1},
               tmp_path / "m.ckpt")
    batch = batch_for(model)
    with torch.no_grad():
        ref = model(batch)
        for f in ("m.safetensors", "m.ckpt"):
            other = load_checkpoint(tiny_model(name, seed=1), tmp_path / f).eval()
            torch.testing.assert_close(other(batch), ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_param_groups_cover_every_trainable_parameter_once(name):
    model = tiny_model(name)
    groups = model.param_groups(1e-3, 0.01, head_lr_mult=10.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    bb = {id(p) for p in model.backbone_parameters()}
    for g in groups:
        assert all((id(p) in bb) == g["name"].startswith("backbone") for p in g["params"])
        assert g["lr"] == (1e-3 if g["name"].startswith("backbone") else 1e-2)
        if g["weight_decay"] > 0:
            assert all(p.ndim > 1 for p in g["params"])


class _LoRA(PeftModule):
    """A delta injected into a backbone module (stand-in for LoRA)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(4, dim))
        self.b = nn.Parameter(torch.zeros(dim, 4))


def test_param_group_rule_for_injected_modules_and_no_weight_decay_names(monkeypatch):
    model = tiny_model("sum_fusion")
    blk = model.backbone.blocks_of(0)[0]
    blk.attn.lora = _LoRA(blk.attn.dim)
    injected = {id(model.backbone.blocks_of(0)[0].attn.lora.a), id(blk.attn.lora.b)}
    monkeypatch.setattr(type(model.backbone), "no_weight_decay",
                        lambda self: {"patch_embed1.proj.weight"})
    assert "backbone.patch_embed1.proj.weight" in model.no_weight_decay()
    model.freeze_backbone()
    assert blk.attn.lora.a.requires_grad and not blk.attn.q.weight.requires_grad
    groups = {g["name"]: g for g in model.param_groups(1e-3, 0.01, 10.0)}
    assert set(groups) == {"rest", "rest_no_decay"}  # the backbone is frozen
    assert injected <= {id(p) for p in groups["rest"]["params"]}
    assert groups["rest"]["lr"] == pytest.approx(1e-2)
    model.freeze_backbone(False)
    groups = {g["name"]: g for g in model.param_groups(1e-3, 0.01, 10.0)}
    nwd = {id(p) for p in groups["backbone_no_decay"]["params"]}
    assert id(model.backbone.patch_embed1.proj.weight) in nwd
    assert not injected & {id(p) for g in groups.values() if g["name"].startswith("backbone")
                           for p in g["params"]}


# --------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_builds_its_model(path):
    cfg = load_config(path)
    spec = cfg.model.to_dict()
    spec["pretrained"] = None  # no weights here; every key and value is still checked
    spec["num_classes"] = spec.get("num_classes") or 5
    builder = MODELS.get(spec["name"])
    if "backbone_kwargs" in inspect.signature(builder).parameters:
        # the method's tiny backbone settings where it declares them (FeatureCross needs
        # widths >= 16), else the backbone's
        tiny = (MODELS.entry(spec["name"]).tiny or {}).get("backbone_kwargs") or (
            BACKBONES.entry(spec.get("backbone", "mit_b0")).tiny or {})
        spec["backbone_kwargs"] = {**tiny, **(spec.get("backbone_kwargs") or {})}
    model = create_model(spec)
    assert isinstance(model, Segmentor) and model.modalities == cfg.model.modalities
    with torch.no_grad():
        out = model.eval()(batch_for(model, b=1, h=32, w=32))
    assert out.shape == (1, spec["num_classes"], 32, 32)
