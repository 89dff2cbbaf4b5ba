"""Registry, Segmentor base (batch convention, freezing), sum_fusion, SegFormer head, checkpoints."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MIT
from safetensors.torch import save_file
from torch import nn

from fusionseg.models import (
    CheckpointMismatchError,
    SegmentationOutput,
    Segmentor,
    create_model,
    list_models,
    load_checkpoint,
)
from fusionseg.models.heads.segformer import SegFormerHead
from fusionseg.models.registry import register_model

TINY = TINY_MIT


def tiny(modalities=("rgb", "depth"), num_classes=5, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = {
        "name": "sum_fusion",
        "backbone": "mit_b0",
        "modalities": list(modalities),
        "num_classes": num_classes,
        "decoder_dim": 16,
        "backbone_kwargs": TINY,
        **kw,
    }
    return create_model(cfg)


def rand_batch(mods, b=2, h=32, w=48, channels=None):
    g = torch.Generator().manual_seed(1)
    out = {m: torch.randn(b, (channels or {}).get(m, 3), h, w, generator=g) for m in mods}
    out["label"] = torch.zeros(b, h, w, dtype=torch.long)
    out["meta"] = [{"id": str(i)} for i in range(b)]
    return out


def test_registry_lists_builders():
    assert {"sum_fusion", "segformer"} <= set(list_models())


@pytest.mark.parametrize("mods", [["rgb"], ["rgb", "depth"], ["rgb", "depth", "thermal"]])
def test_sum_fusion_shapes(mods):
    m = tiny(mods)
    out = m(rand_batch(mods, h=50, w=70))
    assert isinstance(out, torch.Tensor)
    assert tuple(out.shape) == (2, 5, 50, 70)
    m.eval()
    with torch.no_grad():
        assert tuple(m(rand_batch(mods, b=1, h=64, w=64)).shape) == (1, 5, 64, 64)


def test_default_decoder_dim():
    m = create_model({"name": "segformer", "num_classes": 3, "backbone_kwargs": TINY})
    assert m.decode_head.embed_dim == 256 and m.modalities == ["rgb"]
    m2 = create_model(
        {"name": "sum_fusion", "backbone": "mit_b2", "num_classes": 3, "backbone_kwargs": TINY}
    )
    assert m2.decode_head.embed_dim == 512


def test_one_channel_is_repeated_and_bad_channels_raise():
    m = tiny().eval()
    b = rand_batch(["rgb", "depth"], channels={"depth": 1})
    b3 = dict(b, depth=b["depth"].repeat(1, 3, 1, 1))
    with torch.no_grad():
        torch.testing.assert_close(m(b), m(b3))
    with pytest.raises(ValueError, match=r"'depth' has 2 channels"):
        m(rand_batch(["rgb", "depth"], channels={"depth": 2}))


def test_missing_modality_is_absent_key():
    m = tiny().eval()
    b = rand_batch(["rgb"])
    with torch.no_grad():
        out = m(b)
        zeros = dict(b, depth=torch.zeros_like(b["rgb"]), present=torch.tensor([[1, 0], [1, 0]]))
        torch.testing.assert_close(m(zeros), out)
    with pytest.raises(ValueError, match="none of the model's modalities"):
        m({"event": torch.randn(2, 3, 32, 32)})


def test_present_mask_equals_running_sample_without_modality():
    m = tiny(["rgb", "depth", "thermal"]).eval()
    with torch.no_grad():  # non-zero biases, so that a zero image has non-zero features
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = rand_batch(["rgb", "depth", "thermal"], b=3)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    for i, mod in [(1, "depth"), (2, "rgb"), (2, "thermal")]:
        b[mod][i] = 0
    b["present"] = present
    with torch.no_grad():
        out = m(b)
        full0 = m({k: b[k][:1] for k in ("rgb", "depth", "thermal")})
        s1 = m({"rgb": b["rgb"][1:2], "thermal": b["thermal"][1:2]})
        s2 = m({"depth": b["depth"][2:3]})
    torch.testing.assert_close(out[0:1], full0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1:2], s1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[2:3], s2, atol=1e-5, rtol=1e-4)
    # the mask matters: a zero image is not an absent modality
    with torch.no_grad():
        no_mask = m({k: v for k, v in b.items() if k != "present"})
    assert not torch.allclose(no_mask[1:2], s1, atol=1e-4)
    m.batch_modalities = False
    with torch.no_grad():
        torch.testing.assert_close(m(b), out, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"present"):
        m(dict(b, present=torch.ones(3, 2, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"sample\(s\) \[0\]"):
        m(dict(b, present=torch.tensor([[0, 0, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)))


def test_batched_and_sequential_modalities_agree():
    m = tiny(["rgb", "depth"]).eval()
    b = rand_batch(["rgb", "depth"])
    with torch.no_grad():
        a = m(b)
        m.batch_modalities = False
        torch.testing.assert_close(m(b), a, atol=1e-5, rtol=1e-4)


def test_size_mismatch_across_modalities_raises():
    m = tiny()
    b = rand_batch(["rgb"])
    b["depth"] = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="'depth'.*pixel-aligned"):
        m(b)


def test_config_errors():
    with pytest.raises(ValueError, match=r"unknown option 'foo'.*Valid options:.*modalities: "
                       r"tuple\[str, \.\.\.\]"):
        create_model({"name": "sum_fusion", "num_classes": 3, "foo": 1})
    with pytest.raises(ValueError, match=r"decoder_dim: .*valid integer.*'wide'"):
        create_model({"name": "sum_fusion", "num_classes": 3, "decoder_dim": "wide"})
    with pytest.raises(ValueError, match=r"reduce: .*'mean', 'sum' or 'gate'.*'max'"):
        create_model({"name": "sum_fusion", "num_classes": 3, "reduce": "max"})
    with pytest.raises(ValueError, match="unknown model 'nope'.*sum_fusion"):
        create_model({"name": "nope"})
    with pytest.raises(ValueError, match="num_classes"):
        create_model({"name": "sum_fusion"})
    with pytest.raises(ValueError, match="must not repeat"):
        create_model(
            {"name": "sum_fusion", "num_classes": 3, "backbone_kwargs": {"drop_path_rate": 0.2}}
        )
    with pytest.raises(ValueError, match="unknown backbone"):
        create_model({"name": "sum_fusion", "num_classes": 3, "backbone": "resnet9"})


def test_freeze_backbone_counts():
    m = tiny(freeze_backbone=True)
    counts = m.param_counts()
    head = sum(p.numel() for p in m.decode_head.parameters())
    bb = sum(p.numel() for p in m.backbone.parameters())
    assert counts == {"total": head + bb, "trainable": head}
    assert all(not p.requires_grad for p in m.backbone.parameters())
    m.train()
    assert m.decode_head.linear_fuse.bn.training  # the head's BN is not frozen
    m.freeze_backbone(False)
    assert m.param_counts()["trainable"] == head + bb


class _BNSegmentor(Segmentor):
    def __init__(self):
        super().__init__(["rgb"], 2)
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.head = nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))

    def forward(self, batch):
        ((_, x, _),) = self._modality_inputs(batch)
        return self.head(self.backbone(x))


def test_frozen_batchnorm_stays_in_eval_mode():
    m = _BNSegmentor()
    m.freeze_backbone()
    m.train()
    assert m.training and not m.backbone[1].training and m.head[0].training
    before = m.backbone[1].running_mean.clone()
    m({"rgb": torch.randn(2, 3, 8, 8) + 5})
    torch.testing.assert_close(m.backbone[1].running_mean, before)
    m.eval().train()
    assert not m.backbone[1].training
    m.freeze_backbone(False)
    assert m.backbone[1].training


def test_segmentation_output_dataclass():
    o = SegmentationOutput(torch.zeros(1, 2, 4, 4))
    assert o.aux == {}


def test_register_custom_model(monkeypatch):
    from fusionseg.models import MODELS

    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))  # undone after the test

    @register_model("_test_dummy")
    def build(num_classes: int, modalities=("rgb",)):
        return _BNSegmentor()

    assert "_test_dummy" in list_models()
    assert isinstance(create_model({"name": "_test_dummy", "num_classes": 2}), _BNSegmentor)


# ----------------------------------------------------------------------- SegFormer head
def test_segformer_head_composed_equals_reference():
    torch.manual_seed(0)
    head = SegFormerHead([8, 16, 32, 64], num_classes=4, embed_dim=12)
    for mod in head.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
    head.eval()
    sizes = [(13, 18), (7, 9), (4, 5), (2, 3)]
    feats = [torch.randn(2, c, *s) for c, s in zip([8, 16, 32, 64], sizes, strict=True)]
    out = head(feats)
    assert tuple(out.shape) == (2, 4, 13, 18)
    head.fused = False
    torch.testing.assert_close(head(feats), out, atol=1e-5, rtol=1e-4)
    keys = set(head.state_dict())
    assert {
        "linear_c1.proj.weight",
        "linear_fuse.conv.weight",
        "linear_fuse.bn.running_var",
    } <= keys
    assert "linear_fuse.conv.bias" not in keys and "linear_pred.bias" in keys
    assert head.linear_fuse.conv.in_channels == 48


def test_segformer_head_concat_order_is_c4_first():
    """Only stage 4 mapped through the first E input channels of linear_fuse gives output."""
    torch.manual_seed(0)
    head = SegFormerHead([2, 2, 2, 2], num_classes=1, embed_dim=3, dropout=0.0).eval()
    with torch.no_grad():
        head.linear_fuse.conv.weight.zero_()
        head.linear_fuse.conv.weight[:, :3] = torch.eye(3)[:, :, None, None]
        for i in range(1, 5):
            getattr(head, f"linear_c{i}").proj.bias.zero_()
    feats = [torch.zeros(1, 2, s, s) for s in (8, 4, 2, 1)]
    feats[3] = torch.ones(1, 2, 1, 1)
    for fused in (True, False):
        head.fused = fused
        a = head.fuse_composed(feats) if fused else head.fuse_reference(feats)
        assert a.abs().sum() > 0
    feats[3] = torch.zeros(1, 2, 1, 1)
    feats[0] = torch.ones(1, 2, 8, 8)
    bn = head.linear_fuse.bn
    base = torch.relu(bn.bias - bn.running_mean * bn.weight / (bn.running_var + bn.eps).sqrt())
    for fused in (True, False):
        a = head.fuse_composed(feats) if fused else head.fuse_reference(feats)
        torch.testing.assert_close(a, base.view(1, 3, 1, 1).expand_as(a))


# ----------------------------------------------------------------------- checkpoints
def test_load_checkpoint_round_trip(tmp_path):
    src = tiny().eval()
    b = rand_batch(["rgb", "depth"])
    with torch.no_grad():
        ref = src(b)
    sd = src.state_dict()
    plain = tmp_path / "model.pth"
    torch.save(sd, plain)
    light = tmp_path / "last.ckpt"
    torch.save(
        {
            "epoch": 3,
            "global_step": 10,
            "state_dict": {
                **{f"model.{k}": v for k, v in sd.items()},
                "criterion.weight": torch.ones(5),
            },
            "hyper_parameters": {"config": {"model": {"name": "sum_fusion"}}},
        },
        light,
    )
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    for path in (plain, light, st):
        dst = tiny(seed=99).eval()
        assert load_checkpoint(dst, path) is dst
        with torch.no_grad():
            torch.testing.assert_close(dst(b), ref, atol=0, rtol=0)


def test_load_checkpoint_mismatch(tmp_path):
    path = tmp_path / "k7.pth"
    torch.save(tiny(num_classes=7).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"k7.pth.*decode_head.linear_pred.weight"):
        load_checkpoint(tiny(num_classes=5), path)
    sd = tiny().state_dict()
    sd.pop("decode_head.linear_fuse.bn.running_mean")
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError, match="missing.*running_mean"):
        load_checkpoint(tiny(), path)
