"""SAM 2.1 Hiera trunk and FPN neck: official key names and strict loading of an official-format
file, Hugging Face conversion checked against a tiny random ``transformers`` SAM 2 model, input
sides, grad checkpointing, the batch-outermost layout the per-stream LoRA wrappers rely on."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fusionseg.models import CheckpointMismatchError, create_backbone
from fusionseg.models.backbones.hiera import HIERA_TINY, SAM21_HIERA_SETTINGS, Hiera
from fusionseg.models.methods.mle_sam.fpn_neck import Sam2FpnNeck, sine_position_encoding

NAMES = list(SAM21_HIERA_SETTINGS)
D = 16  # tiny neck width


def tiny(name="sam2.1_hiera_t", seed=0, **kw) -> Hiera:
    torch.manual_seed(seed)
    m = create_backbone(name, **{**HIERA_TINY, **kw}).eval()
    with torch.no_grad():  # the official init is zero; random so that they matter
        m.pos_embed.normal_(0, 0.5)
        m.pos_embed_window.normal_(0, 0.5)
    return m


def tiny_neck(trunk: Hiera, seed=0) -> Sam2FpnNeck:
    torch.manual_seed(seed)
    return Sam2FpnNeck.from_trunk(trunk, d_model=D).eval()


# --------------------------------------------------------------------------- key names
def test_official_key_names_and_shapes_tiny():
    m = tiny()
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes["patch_embed.proj.weight"] == (8, 3, 7, 7)
    assert shapes["pos_embed"] == (1, 8, 3, 5) and shapes["pos_embed_window"] == (1, 8, 4, 4)
    assert shapes["blocks.0.attn.qkv.weight"] == (24, 8)
    assert shapes["blocks.1.attn.qkv.weight"] == (48, 8)  # Linear(dim, 3 * dim_out)
    assert shapes["blocks.1.proj.weight"] == (16, 8) and shapes["blocks.1.norm2.weight"] == (16,)
    assert shapes["blocks.5.mlp.layers.0.weight"] == (256, 64)
    assert shapes["blocks.5.mlp.layers.1.weight"] == (64, 256)
    assert "blocks.0.proj.weight" not in shapes and "blocks.3.proj.weight" not in shapes
    per_block = {"norm1", "attn.qkv", "attn.proj", "norm2", "mlp.layers.0", "mlp.layers.1"}
    expect = {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "pos_embed_window"}
    for i in range(6):
        mods = per_block | ({"proj"} if i in (1, 2, 5) else set())
        expect |= {f"blocks.{i}.{n}.{w}" for n in mods for w in ("weight", "bias")}
    assert set(shapes) == expect
    assert [b.window_size for b in m.blocks] == [4, 4, 4, 0, 4, 4]
    assert [b.q_stride for b in m.blocks] == [None, (2, 2), (2, 2), None, None, (2, 2)]
    assert [b.attn.num_heads for b in m.blocks] == [1, 2, 4, 4, 4, 8]
    assert m.out_channels == [8, 16, 32, 64] and m.channel_list == [64, 32, 16, 8]
    assert m.strides == (4, 8, 16, 32) and m.input_multiple == 32
    assert m.no_weight_decay() == {"pos_embed", "pos_embed_window"}
    neck = tiny_neck(m)
    assert {k: tuple(v.shape) for k, v in neck.state_dict().items()} == {
        **{f"convs.{i}.conv.weight": (D, c, 1, 1) for i, c in enumerate([64, 32, 16, 8])},
        **{f"convs.{i}.conv.bias": (D,) for i in range(4)}}


@pytest.mark.parametrize("name, dim, depth, bkg, win, glob, heads", [
    ("sam2.1_hiera_t", 96, 12, 7, 8, (5, 7, 9), 1),
    ("sam2.1_hiera_s", 96, 16, 7, 8, (7, 10, 13), 1),
    ("sam2.1_hiera_b+", 112, 24, 14, 8, (12, 16, 20), 2),
    ("sam2.1_hiera_l", 144, 48, 7, 8, (23, 33, 43), 2),
])
def test_full_size_settings_on_meta_device(name, dim, depth, bkg, win, glob, heads):
    with torch.device("meta"):
        m = create_backbone(name)
        neck = Sam2FpnNeck.from_trunk(m)
    assert len(m.blocks) == depth and m.out_channels == [dim, 2 * dim, 4 * dim, 8 * dim]
    assert m.pos_embed.shape == (1, dim, bkg, bkg)
    assert m.pos_embed_window.shape == (1, dim, win, win)
    assert [i for i, b in enumerate(m.blocks) if b.window_size == 0] == list(glob)
    ends = m.stage_ends
    assert ends[-1] == depth - 1 and [b.q_stride is not None for b in m.blocks].count(True) == 3
    for s, e in enumerate(ends[:-1]):  # first block of the next stage: pooled, wider, lagging
        nxt = m.blocks[e + 1]
        assert nxt.q_stride == (2, 2) and nxt.proj.weight.shape == (2 ** (s + 1) * dim,
                                                                    2 ** s * dim)
        assert nxt.attn.qkv.weight.shape == (3 * 2 ** (s + 1) * dim, 2 ** s * dim)
        assert nxt.window_size in (0, SAM21_HIERA_SETTINGS[name]["window_spec"][s])
    assert m.blocks[-1].attn.num_heads == 8 * heads
    assert neck.backbone_channel_list == [8 * dim, 4 * dim, 2 * dim, dim]
    assert neck.convs[0].conv.weight.shape == (256, 8 * dim, 1, 1)
    if name == "sam2.1_hiera_l":
        assert [m.blocks[i].window_size for i in (0, 2, 8, 9, 44, 47)] == [8, 8, 4, 16, 16, 8]


# --------------------------------------------------------------------------- official file
def _official_file(tmp_path, trunk, neck):
    sd = {f"image_encoder.trunk.{k}": v.clone() for k, v in trunk.state_dict().items()}
    sd.update({f"image_encoder.neck.{k}": v.clone() for k, v in neck.state_dict().items()})
    sd["sam_mask_decoder.iou_token.weight"] = torch.ones(1, D)
    sd["maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 4)
    return sd


def test_official_checkpoint_loads_strictly(tmp_path):
    src = tiny("sam2.1_hiera_b+")
    src_neck = tiny_neck(src)
    sd = _official_file(tmp_path, src, src_neck)
    torch.save({"model": sd}, tmp_path / "sam2.1_hiera_tiny.pt")
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    dst = create_backbone("sam2.1_hiera_b+", pretrained=path, **HIERA_TINY).eval()
    dst_neck = tiny_neck(dst, seed=1).load_pretrained(path)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        a, b = src(x), dst(x)
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v, rtol=0, atol=0)
        for u, v in zip(src_neck(a), dst_neck(b), strict=True):
            torch.testing.assert_close(u, v, rtol=0, atol=0)
    # filters are idempotent on our own keys
    own = dst.state_dict()
    assert list(type(dst).checkpoint_filter_fn(own, dst)) == list(own)
    assert list(type(dst_neck).checkpoint_filter_fn(dst_neck.state_dict(), dst_neck)) == list(
        dst_neck.state_dict())

    broken = dict(sd)
    del broken["image_encoder.trunk.blocks.2.proj.weight"]
    del broken["image_encoder.neck.convs.3.conv.bias"]
    torch.save({"model": broken}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.2\.proj\.weight"):
        create_backbone("sam2.1_hiera_b+", pretrained=tmp_path / "broken.pt", **HIERA_TINY)
    with pytest.raises(CheckpointMismatchError, match=r"convs\.3\.conv\.bias"):
        tiny_neck(dst).load_pretrained(tmp_path / "broken.pt")
    with pytest.raises(CheckpointMismatchError, match=r"qkv.weight: checkpoint \[24, 8\]"):
        create_backbone("sam2.1_hiera_b+", pretrained=path, **{**HIERA_TINY, "embed_dim": 16})


# --------------------------------------------------------------------------- inputs, training
def test_sides_must_be_multiples_of_32():
    m = tiny()
    with pytest.raises(ValueError, match="multiples of 32"):
        m(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match=r"expects \[B, 3"):
        m(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="expects 4 maps"):
        tiny_neck(m)(m(torch.randn(1, 3, 32, 32))[:3])


def test_grad_checkpointing_gives_the_same_gradients_and_recomputes():
    m = tiny(drop_path_rate=0.2).train()
    neck = tiny_neck(m)
    x = torch.randn(2, 3, 64, 96, requires_grad=True)
    calls = [0]
    m.blocks[4].register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))

    def grads():
        torch.manual_seed(0)  # the same stochastic-depth draws in both runs
        m.zero_grad()
        x.grad = None
        sum(o.square().mean() for o in neck(m(x))).backward()
        return {**{k: p.grad.clone() for k, p in m.named_parameters()}, "x": x.grad.clone()}

    plain = grads()
    assert calls[0] == 1
    m.set_grad_checkpointing(True)
    ckpt = grads()
    assert calls[0] == 3  # forward + recomputation in backward
    for k in plain:
        torch.testing.assert_close(plain[k], ckpt[k], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        m(x)
    assert calls[0] == 4  # no recomputation without gradients


class _SecondHalfShift(nn.Module):
    """Wraps a ``qkv`` Linear; adds ``delta`` to the output of the second half of dim 0 (a
    stand-in for a per-stream LoRA that splits dim 0 into equal chunks)."""

    def __init__(self, lin: nn.Linear, delta: float) -> None:
        super().__init__()
        self.lin, self.delta = lin, delta

    def forward(self, x):
        out = self.lin(x)
        n = x.shape[0]
        assert n % 2 == 0
        return torch.cat([out[: n // 2], out[n // 2:] + self.delta])


def test_qkv_is_called_with_the_batch_outermost():
    m = tiny()
    shifted = copy.deepcopy(m)  # the reference for stream 2: every qkv bias + delta
    with torch.no_grad():
        for blk in shifted.blocks:
            blk.attn.qkv.bias += 0.3
    wrapped = copy.deepcopy(m)
    for blk in wrapped.blocks:
        blk.attn.qkv = _SecondHalfShift(blk.attn.qkv, 0.3)
    a, b = torch.randn(2, 3, 64, 96), torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        both = wrapped(torch.cat([a, b]))
        for out, ra, rb in zip(both, m(a), shifted(b), strict=True):
            torch.testing.assert_close(out[:2], ra, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out[2:], rb, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(m(b)[-1], shifted(b)[-1])


def test_sine_position_encoding_matches_the_official_formula():
    x = torch.zeros(2, 5, 3, 4)
    pe = sine_position_encoding(x, 8)
    assert pe.shape == (2, 8, 3, 4)
    y = torch.arange(1, 4.0) / (3 + 1e-6) * 2 * torch.pi
    dim_t = 10000 ** (2 * (torch.arange(4) // 2) / 4)
    torch.testing.assert_close(pe[0, 0, :, 1], (y / dim_t[0]).sin())
    torch.testing.assert_close(pe[1, 3, :, 2], (y / dim_t[3]).cos())
    xs = torch.arange(1, 5.0) / (4 + 1e-6) * 2 * torch.pi
    torch.testing.assert_close(pe[0, 6, 0], (xs / dim_t[2]).sin())


# --------------------------------------------------------------------------- Hugging Face
def _hf_sam2(seed=0):
    """A tiny random transformers ``Sam2Model`` with the trunk settings of ``HIERA_TINY``."""
    transformers = pytest.importorskip("transformers")  # only these tests need it
    torch.manual_seed(seed)
    hiera = transformers.Sam2HieraDetConfig(
        hidden_size=8, num_attention_heads=1, blocks_per_stage=[1, 1, 3, 1],
        embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 2, 4, 8],
        window_size_per_stage=[4, 4, 4, 2], global_attention_blocks=[3],
        window_positional_embedding_background_size=[3, 5], image_size=[64, 64])
    vision = transformers.Sam2VisionConfig(
        backbone_config=hiera, backbone_channel_list=[64, 32, 16, 8], fpn_hidden_size=D,
        backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]])
    cfg = transformers.Sam2Config(
        vision_config=vision,
        prompt_encoder_config=transformers.Sam2PromptEncoderConfig(hidden_size=D, image_size=64),
        mask_decoder_config=transformers.Sam2MaskDecoderConfig(hidden_size=D))
    model = transformers.Sam2Model(cfg).eval()
    with torch.no_grad():
        for n, p in model.vision_encoder.named_parameters():
            if "pos_embed" in n:
                p.normal_(0, 0.5)
            elif "norm" in n:
                p.normal_(1.0 if n.endswith("weight") else 0.0, 0.2)
    return model


@pytest.mark.parametrize("source", ["save_pretrained", "state_dict", "vision_model"])
def test_hf_checkpoint_converts_to_the_same_maps(tmp_path, source):
    hf = _hf_sam2()
    enc = hf.vision_encoder
    if source == "save_pretrained":  # the hub's file names
        hf.save_pretrained(tmp_path / "hf")
        path = tmp_path / "hf" / "model.safetensors"
        keys = set(load_file(path))
        assert "vision_encoder.backbone.blocks.0.layer_norm1.weight" in keys
        assert "vision_encoder.neck.convs.0.weight" in keys
    elif source == "state_dict":  # what transformers holds in memory (Sam2Model)
        path = tmp_path / "hf_sd.safetensors"
        save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, path)
    else:  # a Sam2VisionModel's state dict: backbone.* / neck.*
        path = tmp_path / "hf_vision.safetensors"
        save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, path)
    ours = create_backbone("sam2.1_hiera_s", pretrained=path, **HIERA_TINY).eval()
    neck = Sam2FpnNeck.from_trunk(ours, d_model=D).load_pretrained(path).eval()
    for size in ((64, 64), (64, 96)):  # the config's native size, and a non-square one
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            stages = enc.backbone(x).intermediate_hidden_states  # [B, H, W, C], high res first
            fpn, pos = enc.neck(stages)  # lowest resolution first
            ref = enc(x)
            feats = ours(x)
            outs = neck(feats)
        assert len(feats) == len(stages) == 4
        for got, want in zip(feats, stages, strict=True):
            torch.testing.assert_close(got, want.permute(0, 3, 1, 2), rtol=1e-4, atol=1e-5)
        for got, want in zip(outs, fpn[::-1], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        for got, want in zip(neck.position_encoding(outs), pos[::-1], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        # SAM 2's scalp: the model keeps the 3 highest resolutions
        assert len(ref.fpn_hidden_states) == 3
        for got, want in zip(outs[:3], ref.fpn_hidden_states, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
