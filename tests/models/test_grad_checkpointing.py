"""Activation (gradient) checkpointing: ``set_grad_checkpointing`` on every backbone and every
segmentor, and ``model.grad_checkpointing`` in configs.

Each test compares a model with checkpointing against a deep copy without it: the same logits,
the same parameter gradients, the same buffers (BatchNorm running statistics) after one
forward/backward in training mode, with the RNG seeded identically before each run (dropout,
stochastic depth and MCRM draw the same numbers; non-reentrant checkpointing restores the RNG
state for the recomputation). A spy on ``torch.utils.checkpoint.checkpoint`` checks that
checkpointing actually happens, and forward hooks that the blocks are recomputed in backward.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.utils.checkpoint as torch_checkpoint
from conftest import tiny_model_cfg
from test_contract import MODEL_NAMES, batch_for
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fusionseg.bench import make_random_batch, measure
from fusionseg.config import load_config, model_spec
from fusionseg.models import SegmentationOutput, Segmentor, create_backbone, create_model
from fusionseg.models.backbones import BACKBONES, Backbone, TransformerBackbone
from fusionseg.models.backbones.base import checkpoint_call
from fusionseg.models.backbones.hiera import Hiera
from fusionseg.models.backbones.resnet import ResNet
from fusionseg.models.backbones.sam_vit import SAM_TINY

# ----------------------------------------------------------------------------- model settings
#: SAM ViT with 4 taps, the last at its last block (MLE-SAM's SAM v1 encoder)
_SAM_4TAPS = {**SAM_TINY, "out_indices": (0, 1, 2, 3)}
#: tiny SAM ViT-B with its 256-channel neck (MoBaNet's "neck" design, as in test_mobanet.py)
_SAM_NECK = {"embed_dim": 32, "depth": 4, "num_heads": 2, "window_size": 3,
             "global_attn_indexes": [1, 3], "img_size": 64, "out_chans": 256}

#: (test id, create_model mapping): every registered model with its tiny settings, plus the
#: segmentor paths that run backbone blocks themselves in other variants
CASES: list[tuple[str, dict]] = [(n, tiny_model_cfg(n)) for n in MODEL_NAMES] + [
    ("mobanet_sam_neck", {"name": "mobanet", "backbone": "sam_vit_b",
                          "modalities": ["irrg", "dsm"], "num_classes": 3,
                          "backbone_kwargs": _SAM_NECK}),
    ("mle_sam_sam_v1", tiny_model_cfg("mle_sam", backbone="sam_vit_b",
                                      backbone_kwargs=_SAM_4TAPS)),
    ("mle_sam_trained_encoder", tiny_model_cfg("mle_sam", freeze_encoder=False)),
    ("stitchfusion_shared_sum", tiny_model_cfg("stitchfusion", adapter="shared", fusion="sum")),
    ("asymfusion_bn_stats_train", tiny_model_cfg("asymfusion", freeze_bn_stats=False)),
]


@pytest.fixture
def checkpoint_spy(monkeypatch):
    """Counts calls of ``torch.utils.checkpoint.checkpoint`` (the function fusionseg calls)."""
    calls = {"n": 0}
    real = torch_checkpoint.checkpoint

    def spy(fn, *args, **kwargs):
        calls["n"] += 1
        assert kwargs.get("use_reentrant") is False
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(torch_checkpoint, "checkpoint", spy)
    return calls


def _module_calls(model: nn.Module) -> tuple[dict, list]:
    """Forward-call counter over every submodule of the model's backbones."""
    count = {"n": 0}
    handles = []
    for bb in (m for m in model.modules() if isinstance(m, Backbone)):
        for sub in bb.modules():
            handles.append(sub.register_forward_pre_hook(
                lambda *_: count.__setitem__("n", count["n"] + 1)))
    return count, handles


def _loss(out) -> torch.Tensor:
    """A loss reaching the main logits, every auxiliary output and the extra loss terms."""
    if isinstance(out, torch.Tensor):
        return out.square().mean()
    assert isinstance(out, SegmentationOutput)
    loss = out.logits.square().mean()
    for a in out.aux.values():
        loss = loss + a.logits.square().mean()
    for t in out.losses.values():
        loss = loss + t
    return loss


def _step(model: nn.Module, batch: dict, seed: int = 0):
    """One seeded training forward/backward: ``(logits, {name: grad}, {name: buffer})``."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(batch)
    _loss(out).backward()
    logits = out if isinstance(out, torch.Tensor) else out.logits
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    return logits.detach(), grads, buffers


#: (test id, config, batch kind): every case with every modality present, and the registered
#: models with their first modality absent (streams skipped or run alone: other code paths)
RUNS = [(i, c, "full") for i, c in CASES] + [
    (f"{n}-first_absent", tiny_model_cfg(n), "first_absent") for n in MODEL_NAMES
    if len(tiny_model_cfg(n)["modalities"]) > 1
]


# ----------------------------------------------------------------------------- every model
@pytest.mark.parametrize(("cfg", "kind"), [(c, k) for _, c, k in RUNS],
                         ids=[i for i, _, _ in RUNS])
def test_checkpointing_keeps_logits_gradients_and_buffers(cfg, kind, checkpoint_spy):
    torch.manual_seed(0)
    plain = create_model(cfg)
    ckpt = copy.deepcopy(plain).set_grad_checkpointing(True)
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    backbones = [m for m in ckpt.modules() if isinstance(m, Backbone)]
    assert backbones and all(bb.grad_checkpointing for bb in backbones)
    batch = batch_for(plain, h=32, w=32)
    if kind == "first_absent":
        del batch[plain.modalities[0]]

    calls_plain, h1 = _module_calls(plain)
    ref = _step(plain, batch)
    assert checkpoint_spy["n"] == 0  # off by default
    calls_ckpt, h2 = _module_calls(ckpt)
    got = _step(ckpt, batch)
    for h in h1 + h2:
        h.remove()
    assert checkpoint_spy["n"] > 0
    # the blocks ran again in backward (the recomputation), so more backbone calls
    assert calls_ckpt["n"] > calls_plain["n"]

    torch.testing.assert_close(got[0], ref[0])
    assert got[1].keys() == ref[1].keys() and ref[1]
    for k in ref[1]:
        torch.testing.assert_close(got[1][k], ref[1][k], msg=f"gradient of {k}")
    assert got[2].keys() == ref[2].keys()
    for k in ref[2]:  # BatchNorm statistics updated once, as without checkpointing
        torch.testing.assert_close(got[2][k], ref[2][k], msg=f"buffer {k}")


@pytest.mark.parametrize("cfg", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_checkpointing_is_off_in_eval_and_without_grad(cfg, checkpoint_spy):
    torch.manual_seed(0)
    model = create_model(cfg).set_grad_checkpointing(True)
    batch = batch_for(model, h=32, w=32)
    model.eval()
    _loss(model(batch)).backward()  # gradients on, eval mode: no checkpointing
    with torch.no_grad():
        model.train()(batch)  # training mode, no gradients: no checkpointing
    assert checkpoint_spy["n"] == 0
    model.set_grad_checkpointing(False)
    assert not any(m.grad_checkpointing for m in model.modules() if isinstance(m, Backbone))
    _loss(model.train()(batch)).backward()
    assert checkpoint_spy["n"] == 0


# ----------------------------------------------------------------------------- backbones
def _blocks_run(bb: Backbone) -> int:
    """Blocks one ``forward`` runs, counted from the architecture's own lists."""
    if isinstance(bb, TransformerBackbone):
        return sum(len(bb.blocks_of(s)) for s in range(bb.num_stages))
    if isinstance(bb, Hiera):
        return len(bb.blocks)
    if isinstance(bb, ResNet):
        return sum(len(bb.stage(i)) for i in range(4))
    raise AssertionError(f"unknown backbone type {type(bb).__name__}")


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_checkpoints_each_block_once(name, checkpoint_spy):
    torch.manual_seed(0)
    bb = create_backbone(name, **BACKBONES.entry(name).tiny).train()
    m = bb.input_multiple
    size = (32, 32) if m == 1 else (2 * m, 2 * m)
    x = torch.randn(2, bb.in_chans, *size)
    torch.manual_seed(1)
    ref = bb(x)
    assert checkpoint_spy["n"] == 0
    bb.set_grad_checkpointing(True)
    assert bb.grad_checkpointing_active
    torch.manual_seed(1)  # the same stochastic-depth draws
    outs = bb(x)
    assert checkpoint_spy["n"] == _blocks_run(bb) > 0
    for a, b in zip(outs, ref, strict=True):
        torch.testing.assert_close(a, b)
    bb.eval()
    assert not bb.grad_checkpointing_active


def test_resnet_batchnorm_statistics_update_once_under_checkpointing():
    torch.manual_seed(0)
    plain = create_backbone("resnet50", **BACKBONES.entry("resnet50").tiny).train()
    ckpt = copy.deepcopy(plain).set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    for model in (plain, ckpt):
        sum(o.square().mean() for o in model(x)).backward()
    bns = [(n, m) for n, m in ckpt.named_modules() if isinstance(m, _BatchNorm)]
    assert bns
    ref = dict(plain.named_modules())
    for n, bn in bns:
        assert int(bn.num_batches_tracked) == 1, n
        assert bn.track_running_stats  # restored after the recomputation
        torch.testing.assert_close(bn.running_mean, ref[n].running_mean)
        torch.testing.assert_close(bn.running_var, ref[n].running_var)


def test_checkpoint_call_matches_a_plain_call_with_dropout_and_batchnorm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Dropout(0.5))
    twin = copy.deepcopy(net)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    torch.manual_seed(5)
    a = net(x)
    a.sum().backward()
    ga = x.grad.clone()
    x.grad = None
    torch.manual_seed(5)
    b = checkpoint_call(twin, x)
    b.sum().backward()
    torch.testing.assert_close(b, a)
    torch.testing.assert_close(x.grad, ga)
    torch.testing.assert_close(twin[0].weight.grad, net[0].weight.grad)
    assert int(twin[1].num_batches_tracked) == 1
    torch.testing.assert_close(twin[1].running_var, net[1].running_var)


# ----------------------------------------------------------------------------- config keys
def test_create_model_handles_grad_checkpointing_key():
    cfg = tiny_model_cfg("stitchfusion")
    model = create_model({**cfg, "grad_checkpointing": True})
    assert model.grad_checkpointing and model.backbone.grad_checkpointing
    assert not create_model({**cfg, "grad_checkpointing": False}).backbone.grad_checkpointing
    with pytest.raises(ValueError, match="model.grad_checkpointing must be true or false"):
        create_model({**cfg, "grad_checkpointing": "yes"})
    with pytest.raises(ValueError, match=r"unknown option 'foo'.*Valid options"):
        create_model({**cfg, "foo": 1})


def test_segmentor_without_backbone_refuses_checkpointing():
    class NoBackbone(Segmentor):
        def __init__(self):
            super().__init__(["rgb"], 2)
            self.encoder = nn.Conv2d(3, 2, 1)

    with pytest.raises(ValueError, match="NoBackbone has no fusionseg Backbone"):
        NoBackbone().set_grad_checkpointing(True)
    assert not NoBackbone().set_grad_checkpointing(False).grad_checkpointing


def test_run_config_set_option_turns_it_on(tmp_path: Path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(
        "model:\n  name: sum_fusion\n  modalities: [rgb, depth]\n  num_classes: 3\n"
        "  decoder_dim: 16\n  backbone_kwargs: {embed_dims: [8, 16, 32, 64], "
        "depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2]}\n"
    )
    cfg = load_config(cfg_file, ["model.grad_checkpointing=true"])
    model = create_model(model_spec(cfg))
    assert model.backbone.grad_checkpointing
    assert not create_model(model_spec(load_config(cfg_file))).backbone.grad_checkpointing


# ----------------------------------------------------------------------------- bench
def test_bench_reports_a_training_peak_memory():
    torch.manual_seed(0)
    model = create_model(tiny_model_cfg("sum_fusion")).set_grad_checkpointing(True)
    batch = make_random_batch(model.modalities, batch=2, size=32, num_classes=3)
    res = measure(model, batch, steps=1, warmup=0, flops=False)
    assert 0 < res["train_peak_memory_mb"] <= res["peak_memory_mb"]
    assert "train_peak_memory_mb" not in measure(model, batch, steps=1, warmup=0, flops=False,
                                                 train=False)
