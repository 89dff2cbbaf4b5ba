"""SAM v1 ViT image encoder: official key names and settings, strict loading of a whole-SAM
file, Hugging Face conversion checked against a tiny random ``transformers`` model (neck
embedding and taps), position-embedding / relative-position resizing, windows, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from fusionseg.models import CheckpointMismatchError, create_backbone
from fusionseg.models.backbones.sam_vit import (
    SAM_SETTINGS,
    SamVisionTransformer,
    get_rel_pos,
    resize_rel_pos,
)
from fusionseg.models.layers import window_partition, window_unpartition

TINY = dict(embed_dim=32, depth=4, num_heads=2, window_size=3, global_attn_indexes=(1, 3),
            img_size=64, out_chans=16)


def randomize_(m: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter (zero-initialised tables would hide terms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.ndim == 1 and n.endswith("weight"):  # norms
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return m


def tiny(seed=0, **kw) -> SamVisionTransformer:
    torch.manual_seed(seed)
    return randomize_(create_backbone("sam_vit_b", **{**TINY, **kw}), seed).eval()


def test_official_key_names_and_shapes():
    m = tiny()
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes["patch_embed.proj.weight"] == (32, 3, 16, 16)
    assert shapes["pos_embed"] == (1, 4, 4, 32)
    block0 = {k[len("blocks.0."):] for k in shapes if k.startswith("blocks.0.")}
    assert block0 == {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                      "attn.proj.weight", "attn.proj.bias", "attn.rel_pos_h", "attn.rel_pos_w",
                      "norm2.weight", "norm2.bias", "mlp.lin1.weight", "mlp.lin1.bias",
                      "mlp.lin2.weight", "mlp.lin2.bias"}
    assert shapes["blocks.0.attn.qkv.weight"] == (96, 32)
    assert shapes["blocks.0.attn.rel_pos_h"] == (2 * 3 - 1, 16)  # window block: 2 * window - 1
    assert shapes["blocks.1.attn.rel_pos_w"] == (2 * 4 - 1, 16)  # global block: 2 * grid - 1
    assert {k for k in shapes if k.startswith("neck.")} == {
        "neck.0.weight", "neck.1.weight", "neck.1.bias", "neck.2.weight", "neck.3.weight",
        "neck.3.bias"}
    assert shapes["neck.2.weight"] == (16, 16, 3, 3)
    assert len(shapes) == 3 + 4 * 14 + 6
    assert m.out_indices == [1, 3] and m.strides == (16, 16) and m.num_prefix_tokens == 0
    assert m.no_weight_decay() == {"pos_embed"} | {f"blocks.{i}.attn.rel_pos_{a}"
                                                   for i in range(4) for a in "hw"}
    assert isinstance(m.blocks[0].attn.qkv, nn.Linear)  # LoRA injection point


@pytest.mark.parametrize("name", list(SAM_SETTINGS))
def test_full_size_settings_on_meta_device(name):
    transformers = pytest.importorskip("transformers")
    s = SAM_SETTINGS[name]
    with torch.device("meta"):
        m = create_backbone(name)
        hf = transformers.SamVisionModel(transformers.SamVisionConfig(
            hidden_size=s["embed_dim"], num_hidden_layers=s["depth"],
            num_attention_heads=s["num_heads"], global_attn_indexes=list(s["global_attn_indexes"])))
    c, hd = s["embed_dim"], s["embed_dim"] // s["num_heads"]
    assert m.pos_embed.shape == (1, 64, 64, c) and len(m.blocks) == s["depth"]
    assert m.out_indices == list(s["global_attn_indexes"])
    g = s["global_attn_indexes"][0]
    assert m.blocks[g].window_size == 0 and m.blocks[g].attn.rel_pos_h.shape == (127, hd)
    assert m.blocks[0].window_size == 14 and m.blocks[0].attn.rel_pos_w.shape == (27, hd)
    assert m.neck[0].weight.shape == (256, c, 1, 1) and m.blocks[0].norm1.eps == 1e-6
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in hf.parameters())


def _whole_sam_file(enc: SamVisionTransformer, path, drop: str | None = None):
    sd = {f"image_encoder.{k}": v.clone() for k, v in enc.state_dict().items() if k != drop}
    sd["prompt_encoder.point_embeddings.0.weight"] = torch.zeros(1, 8)
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 8)
    torch.save(sd, path)
    return path


def test_whole_sam_checkpoint_loads_strictly(tmp_path):
    src = tiny()
    dst = create_backbone("sam_vit_b", pretrained=_whole_sam_file(src, tmp_path / "sam.pth"),
                          **TINY).eval()
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        for a, b in zip(dst(x), src(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(dst.forward_neck(x), src.forward_neck(x), rtol=0, atol=0)
    # DataParallel prefix on top
    torch.save({f"module.{k}": v for k, v in torch.load(tmp_path / "sam.pth").items()},
               tmp_path / "ddp.pth")
    create_backbone("sam_vit_b", pretrained=tmp_path / "ddp.pth", **TINY)
    broken = _whole_sam_file(src, tmp_path / "broken.pth", drop="blocks.2.attn.rel_pos_h")
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.2\.attn\.rel_pos_h"):
        create_backbone("sam_vit_b", pretrained=broken, **TINY)
    with pytest.raises(CheckpointMismatchError, match=r"qkv.weight: checkpoint \[96, 32\]"):
        create_backbone("sam_vit_b", pretrained=tmp_path / "sam.pth", **{**TINY, "embed_dim": 64})


def test_without_neck_the_neck_keys_are_dropped(tmp_path):
    src = tiny()
    m = create_backbone("sam_vit_b", pretrained=_whole_sam_file(src, tmp_path / "sam.pth"),
                        **TINY, neck=False)
    assert m.neck is None and not any(k.startswith("neck.") for k in m.state_dict())
    with pytest.raises(RuntimeError, match="neck=False"):
        m.forward_neck(torch.randn(1, 3, 32, 32))


def test_position_tables_of_another_grid_are_resized(tmp_path):
    src = tiny(img_size=32)  # 2 x 2 grid, global tables of 3 rows
    torch.save(src.state_dict(), tmp_path / "small.pth")
    dst = create_backbone("sam_vit_b", pretrained=tmp_path / "small.pth", **TINY)
    assert dst.pos_embed.shape == (1, 4, 4, 32)
    expect = F.interpolate(src.pos_embed.permute(0, 3, 1, 2), size=(4, 4), mode="bicubic",
                           align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(dst.pos_embed.data, expect)
    assert dst.blocks[1].attn.rel_pos_h.shape == (7, 16)
    torch.testing.assert_close(dst.blocks[1].attn.rel_pos_h.data,
                               resize_rel_pos(src.blocks[1].attn.rel_pos_h.data, 7))
    torch.testing.assert_close(dst.blocks[0].attn.rel_pos_h.data,  # window tables unchanged
                               src.blocks[0].attn.rel_pos_h.data, rtol=0, atol=0)
    # at forward, another grid gets the table resized to it
    tok, gh, gw = src.prepare_tokens(torch.zeros(1, 3, 48, 80))
    pe = F.interpolate(src.pos_embed.permute(0, 3, 1, 2), size=(3, 5), mode="bicubic",
                       align_corners=False)
    bias = src.patch_embed.proj.bias
    torch.testing.assert_close(tok, (pe + bias[None, :, None, None]).flatten(2).transpose(1, 2))


def test_rel_pos_lookup_and_windows():
    table = torch.arange(5.0)[:, None]  # a 3-position table, already 2 * 3 - 1 rows
    r = get_rel_pos(3, table)[..., 0]
    assert torch.equal(r, torch.tensor([[2.0, 1, 0], [3, 2, 1], [4, 3, 2]]))  # i - j + 2
    assert get_rel_pos(5, table).shape == (5, 5, 1)  # interpolated to 9 rows
    x = torch.randn(2, 5, 7, 4)
    win, padded = window_partition(x, 3)
    assert win.shape == (2 * 2 * 3, 3, 3, 4) and padded == (6, 9)
    assert torch.equal(win[0], x[0, :3, :3]) and torch.equal(win[1], x[0, :3, 3:6])
    assert torch.equal(win[6], x[1, :3, :3])  # batch outermost
    assert win[5, 2].abs().sum() == 0  # the padding row of the last window of sample 0
    assert torch.equal(window_unpartition(win, 3, padded, (5, 7)), x)


def test_sides_must_be_multiples_of_16_and_qkv_is_called_as_a_module():
    m = tiny()
    assert m.input_multiple == 16
    with pytest.raises(ValueError, match="multiples of 16"):
        m(torch.randn(1, 3, 40, 32))
    with pytest.raises(ValueError, match=r"expects \[B, 3"):
        m(torch.randn(1, 1, 32, 32))
    calls = []

    class Wrapped(nn.Module):  # stands in for a LoRA wrapper around the frozen qkv
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(tuple(x.shape))
            return self.inner(x)

    m.blocks[0].attn.qkv = Wrapped(m.blocks[0].attn.qkv)
    outs = m(torch.randn(2, 3, 32, 48))
    assert [o.shape for o in outs] == [(2, 32, 2, 3)] * 2
    assert calls == [(2, 3, 3, 32)]  # the 2 x 3 grid padded to one 3 x 3 window per sample


# --------------------------------------------------------------------------- Hugging Face
def _hf(window=3):
    transformers = pytest.importorskip("transformers")  # only these tests need it
    torch.manual_seed(0)
    cfg = transformers.SamVisionConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                       image_size=64, patch_size=16, window_size=window,
                                       global_attn_indexes=[1, 3], output_channels=16)
    return randomize_(transformers.SamVisionModel(cfg), seed=1).eval()


@pytest.mark.parametrize("source", ["save_pretrained", "state_dict", "sam_model"])
def test_hf_checkpoint_converts_to_the_same_embedding_and_taps(tmp_path, source):
    hf = _hf()
    if source == "save_pretrained":  # the hub's key names
        hf.save_pretrained(tmp_path / "hf")
        path = tmp_path / "hf" / "model.safetensors"
        assert "vision_encoder.neck.conv1.weight" in load_file(path)
    else:  # the in-memory names; "sam_model": a whole SamModel file around them
        sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
        if source == "sam_model":
            sd["shared_image_embedding.positional_embedding"] = torch.zeros(2, 8)
            sd["prompt_encoder.not_a_point_embed.weight"] = torch.zeros(1, 8)
            sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 8)
        path = tmp_path / "hf_sd.safetensors"
        save_file(sd, path)
    ours = create_backbone("sam_vit_b", pretrained=path, **TINY, out_indices=(1, 2)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        emb = ours.forward_neck(x)
        taps = ours(x)
    torch.testing.assert_close(emb, ref.last_hidden_state, rtol=1e-5, atol=1e-5)
    for i, tap in zip((1, 2), taps, strict=True):  # hidden_states[i + 1]: output of layer i
        torch.testing.assert_close(tap.permute(0, 2, 3, 1), ref.hidden_states[i + 1],
                                   rtol=1e-5, atol=1e-5)
    assert emb.abs().mean() > 0.1  # not a degenerate comparison


def test_hf_layers_agree_at_a_smaller_non_square_grid():
    """Hugging Face accepts only its native size; its layers and neck take any grid, so the
    encoder is rebuilt from them around the same resized position embedding."""
    hf = _hf().vision_encoder
    ours = create_backbone("sam_vit_b", **TINY)
    ours.load_state_dict(type(ours).checkpoint_filter_fn(hf.state_dict(), ours))
    ours.eval()
    x = torch.randn(2, 3, 48, 80)  # grid 3 x 5: windows padded, rel tables interpolated
    with pytest.raises(ValueError, match="doesn't match model"):
        hf(pixel_values=x)
    with torch.no_grad():
        h = hf.patch_embed.projection(x).permute(0, 2, 3, 1)
        h = h + F.interpolate(hf.pos_embed.permute(0, 3, 1, 2), size=(3, 5), mode="bicubic",
                              align_corners=False).permute(0, 2, 3, 1)
        states = []
        for layer in hf.layers:
            h = layer(h)
            states.append(h)
        expect = hf.neck(h)
        got = ours.forward_neck(x)
        taps = ours(x)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(taps[0].permute(0, 2, 3, 1), states[1], rtol=1e-5, atol=1e-5)
