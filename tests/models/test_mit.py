"""MiT backbone: shapes, attention semantics, official key names, strict checkpoint loading."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_MIT
from safetensors.torch import save_file

from fusionseg.errors import CheckpointError
from fusionseg.models import create_backbone
from fusionseg.models.backbones import list_backbones
from fusionseg.models.backbones.mit import Attention, Block, MixVisionTransformer
from fusionseg.models.weights import CheckpointMismatchError, load_state_dict_file

# conftest.TINY_MIT with two blocks in stage 2 and more heads: the key-name and attention tests
# need a second block and multi-head attention
TINY = {**TINY_MIT, "depths": [1, 2, 1, 1], "num_heads": [1, 2, 2, 4]}


def tiny_mit(**kw) -> MixVisionTransformer:
    torch.manual_seed(0)
    return create_backbone("mit_b0", **{**TINY, **kw}).eval()


@pytest.mark.parametrize("size", [(64, 64), (50, 70), (32, 32), (33, 97), (16, 16)])
def test_output_shapes_and_strides(size):
    m = tiny_mit()
    h, w = size
    outs = m(torch.randn(2, 3, h, w))
    assert len(outs) == 4
    for o, c, s in zip(outs, m.out_channels, (4, 8, 16, 32), strict=True):
        assert tuple(o.shape) == (2, c, math.ceil(h / s), math.ceil(w / s))
        assert torch.isfinite(o).all()
    assert m.out_channels == [8, 16, 32, 64]


def test_official_settings():
    b0, b2 = create_backbone("mit_b0"), create_backbone("mit_b2")
    assert b0.out_channels == [32, 64, 160, 256]
    assert b2.out_channels == [64, 128, 320, 512]
    assert (
        b2.depths == [3, 4, 6, 3] and b2.num_heads == [1, 2, 5, 8] and b2.sr_ratios == [8, 4, 2, 1]
    )
    # stochastic depth: linear 0 -> 0.1 over all 16 blocks
    assert isinstance(b2.block1[0].drop_path, torch.nn.Identity)
    assert b2.block4[2].drop_path.p == pytest.approx(0.1)
    assert b2.block2[0].drop_path.p == pytest.approx(0.1 * 3 / 15)
    assert b2.block1[0].norm1.eps == 1e-6 and b2.norm4.eps == 1e-6


def _expected_mit_params(dims, depths, mlp_ratio=4, sr=(8, 4, 2, 1), in_chans=3):
    """Parameter count from the architecture description (SegFormer Sec. 3.1)."""
    total, prev = 0, in_chans
    for i, (c, d) in enumerate(zip(dims, depths, strict=True)):
        k = 7 if i == 0 else 3
        total += prev * c * k * k + c + 2 * c  # patch-embed conv + LayerNorm
        hid = mlp_ratio * c
        blk = 2 * c  # norm1
        blk += c * c + c + c * 2 * c + 2 * c + c * c + c  # q, kv, proj
        if sr[i] > 1:
            blk += c * c * sr[i] ** 2 + c + 2 * c  # sr conv + norm
        blk += 2 * c  # norm2
        blk += c * hid + hid + hid * 9 + hid + hid * c + c  # fc1, dwconv, fc2
        total += d * blk + 2 * c  # blocks + stage norm
        prev = c
    return total


def test_mit_b2_param_count_matches_paper():
    m = create_backbone("mit_b2")
    n = sum(p.numel() for p in m.parameters())
    assert n == _expected_mit_params((64, 128, 320, 512), (3, 4, 6, 3))
    assert round(n / 1e6, 1) == 24.2  # SegFormer paper: MiT-B2 encoder 24.2M


def test_official_key_names():
    keys = set(tiny_mit().state_dict())
    for k in [
        "patch_embed1.proj.weight",
        "patch_embed4.norm.bias",
        "block1.0.norm1.weight",
        "block1.0.attn.q.weight",
        "block1.0.attn.kv.bias",
        "block1.0.attn.sr.weight",
        "block1.0.attn.norm.weight",
        "block1.0.attn.proj.weight",
        "block1.0.norm2.weight",
        "block2.1.mlp.fc1.weight",
        "block2.1.mlp.dwconv.dwconv.weight",
        "block2.1.mlp.fc2.bias",
        "norm4.weight",
    ]:
        assert k in keys, k
    assert not any(k.startswith("block4.0.attn.sr") for k in keys)  # sr ratio 1 in stage 4
    assert not any(k.startswith("head.") for k in keys)
    m = tiny_mit()
    assert m.patch_embed1.proj.kernel_size == (7, 7) and m.patch_embed1.proj.stride == (4, 4)
    assert m.patch_embed2.proj.kernel_size == (3, 3) and m.patch_embed2.proj.stride == (2, 2)


def _naive_attention(attn: Attention, x, h, w):
    """Explicit softmax(q k^T / sqrt(d)) v, as in the official NVlabs code."""
    b, n, c = x.shape
    nh, d = attn.num_heads, c // attn.num_heads
    q = attn.q(x).reshape(b, n, nh, d).permute(0, 2, 1, 3)
    if attn.sr_ratio > 1:
        x_ = x.permute(0, 2, 1).reshape(b, c, h, w)
        x_ = attn.norm(attn.sr(x_).reshape(b, c, -1).permute(0, 2, 1))
    else:
        x_ = x
    kv = attn.kv(x_).reshape(b, -1, 2, nh, d).permute(2, 0, 3, 1, 4)
    a = (q @ kv[0].transpose(-2, -1)) * d**-0.5
    out = (a.softmax(-1) @ kv[1]).transpose(1, 2).reshape(b, n, c)
    return attn.proj(out)


@pytest.mark.parametrize("sr,heads,hw", [(4, 2, (12, 17)), (1, 4, (5, 7)), (2, 1, (8, 8))])
def test_attention_matches_explicit_formula(sr, heads, hw):
    torch.manual_seed(0)
    attn = Attention(16, num_heads=heads, sr_ratio=sr)
    h, w = hw
    x = torch.randn(2, h * w, 16)
    torch.testing.assert_close(attn(x, h, w), _naive_attention(attn, x, h, w), atol=1e-5, rtol=1e-4)


def test_block_parts_and_stage_access_compose_to_forward():
    m = tiny_mit()
    x = torch.randn(2, 3, 50, 70)
    ref = m(x)
    feats, cur = [], x
    for i in range(4):
        tok, h, w = m.embed(i, cur)
        for blk in m.blocks_of(i):
            assert isinstance(blk, Block)
            tok = tok + blk.drop_path(blk.attn(blk.norm1(tok), h, w))
            tok = tok + blk.drop_path(blk.mlp(blk.norm2(tok), h, w))
        cur = m.tokens_to_map(m.norm_of(i)(tok), h, w)
        feats.append(cur)
    for a, b in zip(feats, ref, strict=True):
        torch.testing.assert_close(a, b)
    assert m.blocks_of(1) is m.block2 and m.norm_of(3) is m.norm4
    with pytest.raises(IndexError):
        m.blocks_of(4)


def test_unknown_backbone_lists_known_names():
    with pytest.raises(ValueError, match="mit_b0.*mit_b5"):
        create_backbone("mit_b9")
    assert [n for n in list_backbones() if n.startswith("mit_")] == [f"mit_b{i}" for i in range(6)]


# ----------------------------------------------------------------------- checkpoints
def _official_state(m: MixVisionTransformer) -> dict:
    """State dict in the official ImageNet file layout: backbone keys + classifier head."""
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["head.weight"] = torch.randn(1000, m.out_channels[-1])
    sd["head.bias"] = torch.randn(1000)
    return sd


@pytest.mark.parametrize("fmt", ["plain", "nested_state_dict", "nested_model", "safetensors"])
def test_official_checkpoint_loads_strictly(tmp_path, fmt):
    src = tiny_mit()
    sd = _official_state(src)
    if fmt == "safetensors":
        path = tmp_path / "mit_tiny.safetensors"
        save_file(sd, str(path))
    else:
        path = tmp_path / "mit_tiny.pth"
        obj = {"plain": sd, "nested_state_dict": {"state_dict": sd, "meta": {"epoch": 1}}}.get(
            fmt, {"model": sd}
        )
        torch.save(obj, path)
    torch.manual_seed(123)  # different random init
    dst = create_backbone("mit_b0", pretrained=path, **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(dst(x), src(x), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_checkpoint_missing_key_raises(tmp_path):
    sd = _official_state(tiny_mit())
    del sd["block2.1.mlp.fc2.bias"]
    path = tmp_path / "missing.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError, match="missing.*block2.1.mlp.fc2.bias") as ei:
        create_backbone("mit_b0", pretrained=path, **TINY)
    assert str(path) in str(ei.value)
    assert ei.value.missing == ["block2.1.mlp.fc2.bias"]
    assert isinstance(ei.value, ValueError)


def test_checkpoint_extra_key_and_shape_mismatch_raise(tmp_path):
    sd = _official_state(tiny_mit())
    sd["block1.0.attn.extra.weight"] = torch.zeros(3)
    sd["norm4.weight"] = torch.zeros(65)
    path = tmp_path / "extra.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError) as ei:
        create_backbone("mit_b0", pretrained=path, **TINY)
    msg = str(ei.value)
    assert "unexpected" in msg and "block1.0.attn.extra.weight" in msg
    assert "norm4.weight" in msg and "[65]" in msg and "[64]" in msg


def test_mismatch_message_lists_first_keys_and_count(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({f"foo.{i}": torch.zeros(1) for i in range(25)}, path)
    with pytest.raises(CheckpointMismatchError, match=r"25 unexpected key\(s\).*\+15 more"):
        create_backbone("mit_b0", pretrained=path, **TINY)


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth"):
        create_backbone("mit_b0", pretrained=tmp_path / "nope.pth", **TINY)
    p = tmp_path / "notsd.pth"
    torch.save({"epoch": 3, "lr": 0.1}, p)
    with pytest.raises(ValueError, match="notsd.pth.*not a state dict"):
        load_state_dict_file(p)
    g = tmp_path / "garbage.pth"
    g.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_state_dict_file(g)


@pytest.mark.parametrize("wrap", ["module.", "mmseg"])
def test_filter_strips_ddp_and_segmentation_checkpoint_prefixes(tmp_path, wrap):
    src = tiny_mit()
    sd = _official_state(src)
    if wrap == "module.":
        sd = {f"module.{k}": v for k, v in sd.items()}
    else:  # a whole mmseg SegFormer checkpoint: backbone.* + decode_head.*
        sd = {**{f"backbone.{k}": v for k, v in sd.items()},
              "decode_head.linear_pred.weight": torch.zeros(19, 8, 1, 1)}
    torch.save({"state_dict": sd}, tmp_path / "seg.pth")
    dst = create_backbone("mit_b0", pretrained=tmp_path / "seg.pth", **TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    for a, b in zip(dst(x), src(x), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_filter_without_a_model_renames_only():
    """``checkpoint_filter_fn(sd)`` (no instance): wrappers stripped, classifier dropped."""
    from fusionseg.models.backbones.mit import checkpoint_filter_fn

    own = tiny_mit().state_dict()
    sd = _official_state(tiny_mit())
    for wrapped in ({f"module.{k}": v for k, v in sd.items()},
                    {**{f"backbone.{k}": v for k, v in sd.items()},
                     "decode_head.linear_pred.weight": torch.zeros(19, 8, 1, 1)}):
        got = checkpoint_filter_fn(wrapped)
        assert list(got) == list(own) and all(got[k] is sd[k] for k in own)
