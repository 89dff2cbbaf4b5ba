"""DINOv2 ViT: official key names and strict loading, Hugging Face conversion checked against a
tiny random ``transformers`` model, position-embedding interpolation, taps."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from fusionseg.models import CheckpointMismatchError, create_backbone
from fusionseg.models.backbones.dinov2 import DINOV2_SETTINGS, DinoVisionTransformer

TINY = dict(embed_dim=32, depth=3, num_heads=2, out_indices=(0, 1, 2), img_size=56)


def tiny(name="dinov2_vits14", seed=0, **kw) -> DinoVisionTransformer:
    torch.manual_seed(seed)
    m = create_backbone(name, **{**TINY, **kw}).eval()
    with torch.no_grad():  # random LayerScale and tokens, so every parameter matters
        for n, p in m.named_parameters():
            if n.endswith(("gamma", "cls_token", "register_tokens")) or n == "pos_embed":
                p.normal_(0, 0.5)
    return m


def test_official_key_names_and_shapes():
    m = tiny("dinov2_vits14_reg4", num_register_tokens=4)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes["cls_token"] == (1, 1, 32) and shapes["mask_token"] == (1, 32)
    assert shapes["pos_embed"] == (1, 1 + 4 * 4, 32) and shapes["register_tokens"] == (1, 4, 32)
    assert shapes["patch_embed.proj.weight"] == (32, 3, 14, 14)
    assert shapes["blocks.0.attn.qkv.weight"] == (96, 32) and shapes["blocks.2.ls2.gamma"] == (32,)
    assert {"blocks.0.mlp.fc1.weight", "blocks.0.norm1.weight", "norm.bias"} <= set(shapes)
    assert len([k for k in shapes if k.startswith("blocks.")]) == 3 * 14


def test_full_size_settings_on_meta_device():
    with torch.device("meta"):
        s = create_backbone("dinov2_vits14")
        g = create_backbone("dinov2_vitg14_reg4")
        large = create_backbone("dinov2_vitl14")
    assert s.pos_embed.shape == (1, 1370, 384) and s.out_indices == [2, 5, 8, 11]
    assert large.out_indices == [5, 11, 17, 23] and len(large.blocks) == 24
    assert g.blocks[0].mlp.w12.weight.shape == (8192, 1536)
    assert g.blocks[0].mlp.w3.weight.shape == (1536, 4096)
    assert g.register_tokens.shape == (1, 4, 1536) and g.out_indices == [9, 19, 29, 39]
    assert g.interpolate_offset == 0.0 and g.interpolate_antialias
    assert DINOV2_SETTINGS["dinov2_vitb14"]["embed_dim"] == 768


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_official_checkpoint_loads_strictly(tmp_path, fmt):
    src = tiny()
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / f"dinov2_tiny_pretrain.{fmt}"
    torch.save(sd, path) if fmt == "pth" else save_file(sd, path)
    dst = create_backbone("dinov2_vits14", pretrained=path, **TINY).eval()
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        for a, b in zip(dst(x), src(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    del sd["blocks.1.ls1.gamma"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointMismatchError, match="blocks.1.ls1.gamma"):
        create_backbone("dinov2_vits14", pretrained=tmp_path / "broken.pth", **TINY)
    # another backbone size: the error lists keys and shapes
    with pytest.raises(CheckpointMismatchError, match=r"qkv.weight: checkpoint \[96, 32\]"):
        create_backbone("dinov2_vits14", pretrained=path, **{**TINY, "embed_dim": 64})


def test_position_embeddings_of_another_grid_are_resized(tmp_path):
    src = tiny(img_size=28)  # 2 x 2 grid
    torch.save(src.state_dict(), tmp_path / "small.pth")
    dst = create_backbone("dinov2_vits14", pretrained=tmp_path / "small.pth", **TINY)
    assert dst.pos_embed.shape == (1, 17, 32)


def test_sides_must_be_multiples_of_14():
    m = tiny()
    assert m.input_multiple == 14 and m.strides == (14, 14, 14)
    with pytest.raises(ValueError, match="multiples of 14"):
        m(torch.randn(1, 3, 30, 28))
    outs = m(torch.randn(2, 3, 28, 70))
    assert [o.shape for o in outs] == [(2, 32, 2, 5)] * 3


def test_official_interpolation_uses_scale_factor_with_offset():
    m = tiny()
    pe = m.interpolate_pos_encoding(3, 5)
    patch = m.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(patch, scale_factor=(3.1 / 4, 5.1 / 4), mode="bicubic")
    torch.testing.assert_close(pe[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 15, 32))
    assert m.interpolate_pos_encoding(4, 4) is m.pos_embed


# --------------------------------------------------------------------------- Hugging Face
def _hf_model(registers: int = 0, swiglu: bool = False):
    transformers = pytest.importorskip("transformers")  # only these tests need it
    torch.manual_seed(0)
    kw = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=56,
              patch_size=14, layerscale_value=0.7, use_swiglu_ffn=swiglu)
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kw)
        model = transformers.Dinov2WithRegistersModel(cfg)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**kw))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lambda" in n or "token" in n or "position" in n:
                p.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("registers, swiglu", [(0, False), (2, False), (0, True)])
@pytest.mark.parametrize("source", ["save_pretrained", "state_dict"])
def test_hf_checkpoint_converts_to_the_same_patch_tokens(tmp_path, registers, swiglu, source):
    hf = _hf_model(registers, swiglu)
    if source == "save_pretrained":  # the hub's key names
        hf.save_pretrained(tmp_path / "hf")
        path = tmp_path / "hf" / "model.safetensors"
        assert any(".attention.attention.query." in k for k in load_file(path))
    else:  # the module names transformers holds in memory
        path = tmp_path / "hf_sd.safetensors"
        save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, path)
    name = "dinov2_vitg14" if swiglu else ("dinov2_vits14_reg4" if registers else "dinov2_vits14")
    ours = create_backbone(name, pretrained=path, **TINY, num_register_tokens=registers,
                           interpolate_offset=0.0, interpolate_antialias=bool(registers)).eval()
    for size in ((56, 56), (42, 70)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            ref = hf(pixel_values=x, output_hidden_states=True)
            taps = ours(x)
        p = 1 + registers
        for i, tap in enumerate(taps):
            expect = hf.layernorm(ref.hidden_states[i + 1])[:, p:]
            got = tap.flatten(2).transpose(1, 2)
            torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(taps[-1].flatten(2).transpose(1, 2),
                                   ref.last_hidden_state[:, p:], rtol=1e-4, atol=1e-5)


def test_weights_convert_cli_writes_official_keys_from_a_hf_file(tmp_path):
    from typer.testing import CliRunner

    from fusionseg.cli import app
    from fusionseg.models.weights import convert_backbone_checkpoint

    transformers = pytest.importorskip("transformers")
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "hf")
    out = convert_backbone_checkpoint(tmp_path / "hf" / "model.safetensors",
                                      tmp_path / "ours.safetensors",
                                      create_backbone("dinov2_vits14", **TINY))
    sd = load_file(out)
    assert "blocks.0.attn.qkv.weight" in sd and "pos_embed" in sd
    ours = create_backbone("dinov2_vits14", pretrained=out, **TINY)  # strict
    assert ours.blocks[2].ls2.gamma.shape == (32,)
    # the CLI route needs a full-size file: a ViT-S sized random Hugging Face model
    torch.manual_seed(0)
    small = transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518))
    small.save_pretrained(tmp_path / "small")
    res = CliRunner().invoke(app, ["weights", "convert", str(tmp_path / "small" /
                                                             "model.safetensors"),
                                   str(tmp_path / "vits14.pth"), "--backbone", "dinov2_vits14"])
    assert res.exit_code == 0, res.output
    create_backbone("dinov2_vits14", pretrained=tmp_path / "vits14.pth")


def test_filter_without_a_model_resizes_nothing():
    """``checkpoint_filter_fn(sd)`` (no instance): prefixes stripped, the classifier dropped,
    the position embedding kept at its grid; with the model it is resized to the model's."""
    from fusionseg.models.backbones.dinov2 import checkpoint_filter_fn

    sd = tiny(img_size=28).state_dict()
    file = {**{f"module.{k}": v for k, v in sd.items()}, "module.head.weight": torch.zeros(5, 32)}
    got = checkpoint_filter_fn(file)
    assert list(got) == list(sd) and got["pos_embed"] is sd["pos_embed"]
    dst = tiny()  # a 4 x 4 grid (img_size 56)
    assert type(dst).checkpoint_filter_fn(file, dst)["pos_embed"].shape == (1, 17, 32)
