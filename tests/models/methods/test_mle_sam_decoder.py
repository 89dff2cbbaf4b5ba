"""SAM 2 prompt-free semantic decoder: official key names and shapes, numerical agreement with a
tiny random ``transformers`` ``Sam2Model`` mask decoder, loading an official-format file (class
tokens / hypernetworks cycled), strict-loading errors, gradients and output shapes."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from fusionseg.models.methods.mle_sam.decoder import (
    Sam2SemanticDecoder,
    checkpoint_filter_fn,
    convert_hf_sam2_decoder,
    random_fourier_image_pe,
)
from fusionseg.models.weights import CheckpointMismatchError

C, DEPTH, HEADS, MLP_DIM = 32, 2, 2, 64
TINY = dict(transformer_dim=C, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP_DIM)
EXTRA = {"no_mask_embed", "positional_encoding_gaussian_matrix", "no_mem_embed"}


def official_decoder_shapes(c: int, depth: int, mlp_dim: int, n_mask: int = 4,
                            iou_hidden: int = 256) -> dict[str, tuple]:
    """Key -> shape of an official ``sam_mask_decoder`` (SAM 2.1 settings: high-res features,
    object-score MLP head, rate-2 cross-attention), written from
    ``sam2/modeling/sam/{mask_decoder,transformer}.py``."""
    s: dict[str, tuple] = {}

    def lin(name, i, o):
        s[f"{name}.weight"], s[f"{name}.bias"] = (o, i), (o,)

    def norm(name, d=c):
        s[f"{name}.weight"], s[f"{name}.bias"] = (d,), (d,)

    def attn(name, inner):
        for p in ("q_proj", "k_proj", "v_proj"):
            lin(f"{name}.{p}", c, inner)
        lin(f"{name}.out_proj", inner, c)

    for i in range(depth):
        p = f"transformer.layers.{i}."
        attn(p + "self_attn", c)
        norm(p + "norm1")
        attn(p + "cross_attn_token_to_image", c // 2)
        norm(p + "norm2")
        lin(p + "mlp.layers.0", c, mlp_dim)
        lin(p + "mlp.layers.1", mlp_dim, c)
        norm(p + "norm3")
        norm(p + "norm4")
        attn(p + "cross_attn_image_to_token", c // 2)
    attn("transformer.final_attn_token_to_image", c // 2)
    norm("transformer.norm_final_attn")
    s["iou_token.weight"], s["obj_score_token.weight"] = (1, c), (1, c)
    s["mask_tokens.weight"] = (n_mask, c)
    s["output_upscaling.0.weight"], s["output_upscaling.0.bias"] = (c, c // 4, 2, 2), (c // 4,)
    norm("output_upscaling.1", c // 4)
    s["output_upscaling.3.weight"], s["output_upscaling.3.bias"] = (c // 4, c // 8, 2, 2), (c // 8,)
    s["conv_s0.weight"], s["conv_s0.bias"] = (c // 8, c, 1, 1), (c // 8,)
    s["conv_s1.weight"], s["conv_s1.bias"] = (c // 4, c, 1, 1), (c // 4,)
    for i in range(n_mask):
        lin(f"output_hypernetworks_mlps.{i}.layers.0", c, c)
        lin(f"output_hypernetworks_mlps.{i}.layers.1", c, c)
        lin(f"output_hypernetworks_mlps.{i}.layers.2", c, c // 8)
    lin("iou_prediction_head.layers.0", c, iou_hidden)
    lin("iou_prediction_head.layers.1", iou_hidden, iou_hidden)
    lin("iou_prediction_head.layers.2", iou_hidden, n_mask)
    for j, (a, b) in enumerate(((c, c), (c, c), (c, 1))):
        lin(f"pred_obj_score_head.layers.{j}", a, b)
    return s


def _unused_heads(shapes: dict) -> dict:
    return {k: v for k, v in shapes.items()
            if not k.startswith(("iou_prediction_head.", "pred_obj_score_head."))}


def _ours_shapes(m) -> dict:
    return {k: tuple(v.shape) for k, v in m.state_dict().items() if k not in EXTRA}


def official_file_dict(seed: int = 0, c: int = C) -> dict[str, torch.Tensor]:
    """A random state dict in the official SAM 2.1 layout (decoder, the prompt-encoder and
    model tensors we use, plus keys the loader must skip or ignore)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"sam_mask_decoder." + k: torch.randn(s, generator=g)
          for k, s in official_decoder_shapes(c, DEPTH, MLP_DIM, iou_hidden=c).items()}
    sd["sam_prompt_encoder.no_mask_embed.weight"] = torch.randn(1, c, generator=g)
    sd["sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(
        2, c // 2, generator=g)
    sd["sam_prompt_encoder.point_embeddings.0.weight"] = torch.randn(1, c, generator=g)
    sd["no_mem_embed"] = torch.randn(1, 1, c, generator=g)
    sd["image_encoder.trunk.patch_embed.proj.weight"] = torch.randn(8, 3, 7, 7, generator=g)
    sd["maskmem_tpos_enc"] = torch.randn(7, 1, 1, 64, generator=g)
    return sd


def _inputs(b=2, h=3, w=5, c=C, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, h, w, generator=g),
            (torch.randn(b, c, 4 * h, 4 * w, generator=g),
             torch.randn(b, c, 2 * h, 2 * w, generator=g)))


# --------------------------------------------------------------------------- (a) key names
def test_key_names_and_shapes_match_official():
    ours = Sam2SemanticDecoder(4, **TINY)
    assert _ours_shapes(ours) == _unused_heads(official_decoder_shapes(C, DEPTH, MLP_DIM))
    sd = ours.state_dict()
    assert sd["no_mask_embed"].shape == (1, C) and sd["no_mem_embed"].shape == (1, 1, C)
    assert sd["positional_encoding_gaussian_matrix"].shape == (2, C // 2)
    assert "positional_encoding_gaussian_matrix" not in dict(ours.named_parameters())
    # the official dict built from our module is what the loader takes back unchanged
    off = {"sam_mask_decoder." + k: v for k, v in sd.items() if k not in EXTRA}
    assert set(off) <= {"sam_mask_decoder." + k for k in official_decoder_shapes(C, DEPTH, MLP_DIM)}


def test_full_size_sam21_settings_on_meta_device():
    with torch.device("meta"):
        m = Sam2SemanticDecoder(4)
        k = Sam2SemanticDecoder(7, keep_sam_tokens=False, shared_hypernetwork=True)
    assert _ours_shapes(m) == _unused_heads(official_decoder_shapes(256, 2, 2048))
    shapes = _ours_shapes(k)
    assert shapes["mask_tokens.weight"] == (7, 256)
    assert "iou_token.weight" not in shapes and "obj_score_token.weight" not in shapes
    assert not any(x.startswith("output_hypernetworks_mlps.1.") for x in shapes)
    assert shapes["output_hypernetworks_mlps.0.layers.2.weight"] == (32, 256)


def test_varied_settings():
    m = Sam2SemanticDecoder(9, keep_sam_tokens=False, **TINY)
    shapes = _ours_shapes(m)
    assert shapes["mask_tokens.weight"] == (9, C)
    assert "output_hypernetworks_mlps.8.layers.2.weight" in shapes
    assert m.no_weight_decay() == {"mask_tokens.weight", "no_mask_embed", "no_mem_embed"}
    assert Sam2SemanticDecoder(2, **TINY).no_weight_decay() >= {"iou_token.weight"}


# --------------------------------------------------------------------------- (b) HF reference
@pytest.fixture(scope="module")
def hf_model():
    """Tiny random ``Sam2Model`` (decoder width 32, 2 heads, MLP 64); every decoder / prompt
    tensor randomised so none is trivially 0 or 1."""
    torch.manual_seed(0)
    T = pytest.importorskip("transformers")  # only the HF fixtures need it
    bb = T.Sam2HieraDetConfig(hidden_size=8, embed_dim_per_stage=[8, 16, 32, 64],
                              blocks_per_stage=[1, 1, 1, 1], num_attention_heads_per_stage=[1] * 4,
                              window_size_per_stage=[2] * 4, global_attention_blocks=[3],
                              image_size=[64, 64])
    vc = T.Sam2VisionConfig(backbone_config=bb, backbone_channel_list=[64, 32, 16, 8],
                            fpn_hidden_size=C, backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]])
    pc = T.Sam2PromptEncoderConfig(hidden_size=C, image_size=64, patch_size=16)
    mc = T.Sam2MaskDecoderConfig(hidden_size=C, mlp_dim=MLP_DIM, num_hidden_layers=DEPTH,
                                 num_attention_heads=HEADS, iou_head_hidden_dim=C,
                                 dynamic_multimask_via_stability=False)
    hf = T.Sam2Model(T.Sam2Config(vision_config=vc, prompt_encoder_config=pc,
                                  mask_decoder_config=mc)).eval()
    return _randomise_decoder(hf)


def _randomise_decoder(hf):
    """Random non-trivial decoder / prompt-encoder weights of a HF Sam(2)Model (in place):
    tokens and embeddings N(0, 1), biases and norms shifted, weights with unit-variance
    outputs (HF initialises with std 0.02)."""
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.startswith("vision_encoder."):
                continue
            if "token" in n or "embed" in n:
                p.normal_(0, 1)
            elif p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.3)
            else:
                fan_in = p[0].numel() if "upscale" not in n else p.shape[0]
                p.normal_(0, fan_in ** -0.5)
        hf.shared_image_embedding.positional_embedding.normal_(0, 1)
    return hf


def _hf_all_masks(hf, img, s0, s1):
    """HF's 4 low-res masks before multimask selection: no sparse prompt ([B, 1, 0, C]), dense
    = no_mask_embed; token 0 from ``multimask_output=False``, 1..3 from ``True``."""
    b, c, h, w = img.shape
    hf.prompt_encoder.image_embedding_size = (h, w)  # the PE / dense grid of this input
    pe = hf.get_image_wide_positional_embeddings().repeat(b, 1, 1, 1)
    _, dense = hf.prompt_encoder(None, None, None, None)
    sparse = torch.zeros(b, 1, 0, c)
    emb = img + hf.no_memory_embedding.view(1, c, 1, 1)
    feats = [hf.mask_decoder.conv_s0(s0), hf.mask_decoder.conv_s1(s1)]
    single = hf.mask_decoder(emb, pe, sparse, dense, False, feats)[0]
    multi = hf.mask_decoder(emb, pe, sparse, dense, True, feats)[0]
    return torch.cat([single, multi], dim=2)[:, 0], pe


def test_hf_names_convert_to_official(hf_model):
    conv = convert_hf_sam2_decoder(hf_model.state_dict())
    dec = {k[len("sam_mask_decoder."):]: tuple(v.shape) for k, v in conv.items()
           if k.startswith("sam_mask_decoder.")}
    assert dec == official_decoder_shapes(C, DEPTH, MLP_DIM, iou_hidden=C)
    assert conv["no_mem_embed"].shape == (1, 1, C)
    assert conv["sam_prompt_encoder.no_mask_embed.weight"].shape == (1, C)
    assert torch.equal(conv["sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"],
                       hf_model.shared_image_embedding.positional_embedding)


@pytest.mark.parametrize("source", ["state_dict", "safetensors", "save_pretrained"])
def test_matches_hf_mask_decoder(hf_model, tmp_path, source):
    if source == "state_dict":
        src = hf_model.state_dict()
    elif source == "safetensors":
        src = tmp_path / "hf.safetensors"
        save_file({k: v.contiguous() for k, v in hf_model.state_dict().items()}, src)
    else:  # the hub's file names
        hf_model.save_pretrained(tmp_path / "hf")
        src = tmp_path / "hf" / "model.safetensors"
    ours = Sam2SemanticDecoder(4, **TINY).eval()
    report = ours.load_pretrained(src)
    assert report.source_format == "hf" and report.cycled == []
    assert set(report.loaded) == set(ours.state_dict())
    assert "sam_mask_decoder.iou_prediction_head.layers.2.weight" in report.skipped
    img, (s0, s1) = _inputs(2, 3, 5)
    with torch.no_grad():
        ref, pe = _hf_all_masks(hf_model, img, s0, s1)
        got = ours(img, (s0, s1))
    assert got.shape == ref.shape == (2, 4, 12, 20)
    torch.testing.assert_close(ours.image_pe(3, 5), pe[:1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert ref.abs().mean() > 0.3  # not a trivial comparison


def test_hf_comparison_is_sensitive(hf_model):
    """Dropping the SAM tokens or one ingredient changes the output (the test above can
    fail)."""
    img, (s0, s1) = _inputs(1, 4, 3)
    with torch.no_grad():
        ref, _ = _hf_all_masks(hf_model, img, s0, s1)
        no_tok = Sam2SemanticDecoder(4, keep_sam_tokens=False, **TINY)
        no_tok.load_pretrained(hf_model.state_dict())
        assert not torch.allclose(no_tok(img, (s0, s1)), ref, atol=1e-3)
        ours = Sam2SemanticDecoder(4, **TINY)
        ours.load_pretrained(hf_model.state_dict())
        torch.testing.assert_close(ours(img, (s0, s1)), ref, rtol=1e-5, atol=1e-5)
        ours.no_mem_embed.zero_()
        assert not torch.allclose(ours(img, (s0, s1)), ref, atol=1e-3)


# --------------------------------------------------------------------------- (c) loading
def test_load_official_file_with_six_classes(tmp_path):
    off = official_file_dict()
    path = tmp_path / "sam2.1_tiny.pt"
    torch.save({"model": off}, path)
    m = Sam2SemanticDecoder(6, **TINY)
    report = m.load_pretrained(path)
    sd = m.state_dict()
    hyper_cycled = {k for k in sd if re.match(r"output_hypernetworks_mlps\.[45]\.", k)}
    assert set(report.cycled) == {"mask_tokens.weight"} | hyper_cycled
    assert set(report.loaded) == set(sd) - set(report.cycled)
    for k in report.loaded:
        src = {"no_mask_embed": "sam_prompt_encoder.no_mask_embed.weight",
               "positional_encoding_gaussian_matrix":
                   "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
               "no_mem_embed": "no_mem_embed"}.get(k, "sam_mask_decoder." + k)
        assert torch.equal(sd[k], off[src]), k
    tok = off["sam_mask_decoder.mask_tokens.weight"]
    assert torch.equal(sd["mask_tokens.weight"][:4], tok)
    assert torch.equal(sd["mask_tokens.weight"][4], tok[0])
    assert torch.equal(sd["mask_tokens.weight"][5], tok[1])
    for i, j in ((4, 0), (5, 1)):
        for p in ("layers.0.weight", "layers.1.bias", "layers.2.weight"):
            assert torch.equal(sd[f"output_hypernetworks_mlps.{i}.{p}"],
                               off[f"sam_mask_decoder.output_hypernetworks_mlps.{j}.{p}"])
    assert "sam_mask_decoder.iou_prediction_head.layers.0.weight" in report.skipped
    assert "sam_mask_decoder.pred_obj_score_head.layers.2.bias" in report.skipped
    assert "sam_prompt_encoder.point_embeddings.0.weight" in report.skipped
    assert report.ignored == 2 and report.source_format == "official"
    img, hr = _inputs(1, 2, 3)
    assert m(img, hr).shape == (1, 6, 8, 12)


def test_load_mapping_variants():
    off = official_file_dict(seed=3)
    m = Sam2SemanticDecoder(3, keep_sam_tokens=False, shared_hypernetwork=True, **TINY)
    report = m.load_pretrained({"model": off})  # a raw torch.load of the official file
    sd = m.state_dict()
    assert torch.equal(sd["mask_tokens.weight"], off["sam_mask_decoder.mask_tokens.weight"][:3])
    assert torch.equal(sd["output_hypernetworks_mlps.0.layers.2.weight"],
                       off["sam_mask_decoder.output_hypernetworks_mlps.0.layers.2.weight"])
    assert report.cycled == ["mask_tokens.weight"]
    assert {"sam_mask_decoder.iou_token.weight", "sam_mask_decoder.obj_score_token.weight",
            "sam_mask_decoder.output_hypernetworks_mlps.3.layers.0.weight"} <= set(report.skipped)


@pytest.mark.parametrize("key", [
    "sam_mask_decoder.transformer.layers.1.cross_attn_image_to_token.v_proj.weight",
    "sam_mask_decoder.output_upscaling.1.weight",
    "sam_mask_decoder.conv_s0.bias",
    "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
])
def test_missing_required_key_raises_and_changes_nothing(tmp_path, key):
    off = official_file_dict()
    del off[key]
    path = tmp_path / "broken.pt"
    torch.save({"model": off}, path)
    m = Sam2SemanticDecoder(6, **TINY)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=re.escape(key)) as e:
        m.load_pretrained(path)
    assert e.value.missing == [key] and str(path) in str(e.value)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_shape_mismatch_raises():
    m = Sam2SemanticDecoder(4, **{**TINY, "transformer_dim": 64})
    with pytest.raises(CheckpointMismatchError, match="shape mismatch") as e:
        m.load_pretrained(official_file_dict())
    assert any(k == "sam_mask_decoder.conv_s0.weight" for k, _, _ in e.value.mismatched)


def test_checkpoint_filter_fn_maps_the_official_names_with_and_without_a_model():
    off = official_file_dict(seed=4)
    assert Sam2SemanticDecoder.checkpoint_filter_fn is checkpoint_filter_fn
    # without a model: the file's own 4 tokens, loading strictly into a 4-class decoder
    plain = checkpoint_filter_fn(off)
    m4 = Sam2SemanticDecoder(4, **TINY)
    m4.load_state_dict(plain, strict=True)
    assert torch.equal(plain["no_mem_embed"], off["no_mem_embed"])
    assert torch.equal(plain["no_mask_embed"], off["sam_prompt_encoder.no_mask_embed.weight"])
    assert torch.equal(plain["transformer.layers.1.norm4.bias"],
                       off["sam_mask_decoder.transformer.layers.1.norm4.bias"])
    # with a 6-class model: class tokens / hypernetworks 4, 5 from official 0, 1
    m6 = Sam2SemanticDecoder(6, **TINY)
    mapped = Sam2SemanticDecoder.checkpoint_filter_fn(off, m6)
    assert set(mapped) == set(m6.state_dict())
    tok = off["sam_mask_decoder.mask_tokens.weight"]
    assert torch.equal(mapped["mask_tokens.weight"], tok[[0, 1, 2, 3, 0, 1]])
    assert torch.equal(mapped["output_hypernetworks_mlps.5.layers.2.bias"],
                       off["sam_mask_decoder.output_hypernetworks_mlps.1.layers.2.bias"])
    m6.load_pretrained(off)
    assert all(torch.equal(v, mapped[k]) for k, v in m6.state_dict().items())
    # idempotent: our own state dict comes back unchanged, and load_pretrained takes it
    own = m6.state_dict()
    assert list(checkpoint_filter_fn(own, m6)) == list(own)
    fresh = Sam2SemanticDecoder(6, **TINY)
    report = fresh.load_pretrained(own)
    assert report.source_format == "fusionseg" and set(report.loaded) == set(own)
    assert all(torch.equal(v, own[k]) for k, v in fresh.state_dict().items())


# --------------------------------------------------------------------------- (d) training
@pytest.mark.parametrize("keep, shared", [(True, False), (False, False), (True, True)])
def test_gradients_reach_class_tokens_and_odd_grid(keep, shared):
    torch.manual_seed(0)
    m = Sam2SemanticDecoder(5, keep_sam_tokens=keep, shared_hypernetwork=shared, **TINY)
    img, hr = _inputs(2, 3, 5)
    out = m(img, hr)
    assert out.shape == (2, 5, 12, 20)
    (out * torch.randn_like(out)).sum().backward()
    g = m.mask_tokens.weight.grad
    assert g is not None and (g.norm(dim=1) > 0).all()
    assert m.no_mask_embed.grad is not None and m.no_mem_embed.grad is not None
    assert m.conv_s0.weight.grad.abs().sum() > 0 and m.conv_s1.weight.grad.abs().sum() > 0
    if keep:
        assert m.iou_token.weight.grad.abs().sum() > 0


def test_batch_consistency_and_bad_inputs():
    m = Sam2SemanticDecoder(3, **TINY).eval()
    img, (s0, s1) = _inputs(2, 5, 2)
    with torch.no_grad():
        both = m(img, (s0, s1))
        one = m(img[1:], (s0[1:], s1[1:]))
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"expects \[B, 32, h, w\]"):
        m(img[:, :16], (s0, s1))
    with pytest.raises(ValueError, match="expects feat_s0"):
        m(img, (s1, s1))
    with pytest.raises(ValueError, match="expects feat_s1"):
        m(img, (s0, s0))


def test_position_encoding_formula():
    g = torch.randn(2, 4)
    pe = random_fourier_image_pe(g, 2, 3)
    assert pe.shape == (8, 2, 3)
    # cell (y=1, x=2): centre ((2 + .5) / 3, (1 + .5) / 2) in [0, 1], mapped to [-1, 1]
    xy = torch.tensor([2.5 / 3, 1.5 / 2]) * 2 - 1
    proj = 2 * torch.pi * (xy @ g)
    torch.testing.assert_close(pe[:, 1, 2], torch.cat([proj.sin(), proj.cos()]))


# =========================================================================== SAM v1 variant
SAM1 = dict(TINY, variant="sam")
SAM1_EXTRA = {"no_mask_embed", "positional_encoding_gaussian_matrix"}


def official_sam1_decoder_shapes(c: int, depth: int, mlp_dim: int, n_mask: int = 4,
                                 iou_hidden: int = 256) -> dict[str, tuple]:
    """Key -> shape of an official SAM v1 ``mask_decoder`` (no high-res convs, no object-score
    token / head, token MLPs ``common.MLPBlock`` with ``lin1`` / ``lin2``), written from
    ``segment_anything/modeling/{mask_decoder,transformer,common}.py``."""
    s = official_decoder_shapes(c, depth, mlp_dim, n_mask, iou_hidden)
    for k in list(s):
        if k.startswith(("conv_s0.", "conv_s1.", "obj_score_token.", "pred_obj_score_head.")):
            del s[k]
        elif ".mlp.layers." in k:
            s[k.replace(".mlp.layers.0.", ".mlp.lin1.").replace(".mlp.layers.1.", ".mlp.lin2.")] = (
                s.pop(k))
    return s


def official_sam1_file_dict(seed: int = 0, c: int = C) -> dict[str, torch.Tensor]:
    """A random flat state dict in the official ``sam_vit_*.pth`` layout (decoder, the
    prompt-encoder tensors we use, and keys the loader must skip or ignore)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"mask_decoder." + k: torch.randn(s, generator=g)
          for k, s in official_sam1_decoder_shapes(c, DEPTH, MLP_DIM, iou_hidden=c).items()}
    sd["prompt_encoder.no_mask_embed.weight"] = torch.randn(1, c, generator=g)
    sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(
        2, c // 2, generator=g)
    for i in range(4):
        sd[f"prompt_encoder.point_embeddings.{i}.weight"] = torch.randn(1, c, generator=g)
    sd["prompt_encoder.not_a_point_embed.weight"] = torch.randn(1, c, generator=g)
    sd["prompt_encoder.mask_downscaling.0.weight"] = torch.randn(4, 1, 2, 2, generator=g)
    sd["image_encoder.patch_embed.proj.weight"] = torch.randn(16, 3, 16, 16, generator=g)
    sd["image_encoder.neck.0.weight"] = torch.randn(c, 16, 1, 1, generator=g)
    return sd


def test_sam1_key_names_and_shapes_match_official():
    ours = Sam2SemanticDecoder(4, **SAM1)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items() if k not in SAM1_EXTRA}
    official = official_sam1_decoder_shapes(C, DEPTH, MLP_DIM)
    assert shapes == {k: v for k, v in official.items()
                      if not k.startswith("iou_prediction_head.")}
    assert not hasattr(ours, "conv_s0") and not hasattr(ours, "no_mem_embed")
    assert not hasattr(ours, "obj_score_token")
    assert set(ours.state_dict()) - set(shapes) == SAM1_EXTRA
    assert ours.no_weight_decay() == {"mask_tokens.weight", "no_mask_embed", "iou_token.weight"}
    k = Sam2SemanticDecoder(3, keep_sam_tokens=False, **SAM1)
    assert k.no_weight_decay() == {"mask_tokens.weight", "no_mask_embed"}
    with torch.device("meta"):
        full = Sam2SemanticDecoder(4, variant="sam")
    got = {k: tuple(v.shape) for k, v in full.state_dict().items() if k not in SAM1_EXTRA}
    assert got == {k: v for k, v in official_sam1_decoder_shapes(256, 2, 2048).items()
                   if not k.startswith("iou_prediction_head.")}
    with pytest.raises(ValueError, match="variant"):
        Sam2SemanticDecoder(4, variant="sam3")


@pytest.fixture(scope="module")
def hf_sam1():
    """Tiny random ``SamModel`` (decoder width 32, 2 heads, MLP 64, 4 x 4 embedding grid);
    decoder / prompt tensors randomised so none is trivially 0 or 1. ``layer_norm_eps`` 1e-5:
    the official ``nn.LayerNorm`` default (HF's config default is 1e-6)."""
    torch.manual_seed(0)
    T = pytest.importorskip("transformers")  # only the HF fixtures need it
    vc = T.SamVisionConfig(hidden_size=16, output_channels=C, num_hidden_layers=1,
                           num_attention_heads=1, image_size=64, patch_size=16, window_size=2,
                           global_attn_indexes=[0], num_pos_feats=C // 2, mlp_dim=32)
    pc = T.SamPromptEncoderConfig(hidden_size=C, image_size=64, patch_size=16,
                                  mask_input_channels=4)
    mc = T.SamMaskDecoderConfig(hidden_size=C, mlp_dim=MLP_DIM, num_hidden_layers=DEPTH,
                                num_attention_heads=HEADS, iou_head_hidden_dim=C,
                                layer_norm_eps=1e-5)
    hf = T.SamModel(T.SamConfig(vision_config=vc, prompt_encoder_config=pc,
                                mask_decoder_config=mc)).eval()
    return _randomise_decoder(hf)


def _hf_sam1_pe(hf, h, w):
    """HF's image PE: its own grid for the configured square size, else its
    ``SamPositionalEmbedding`` applied to the ``h x w`` cell centres (HF only builds squares)."""
    if (h, w) == (4, 4):
        return hf.get_image_wide_positional_embeddings()
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    grid = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), dim=-1)
    return hf.shared_image_embedding(grid).permute(2, 0, 1)[None]


def _hf_sam1_all_masks(hf, img):
    """HF SAM v1's 4 low-res masks: empty sparse prompt ([B, 1, 0, C]), dense = no_mask_embed;
    mask 0 from ``multimask_output=False``, 1..3 from ``True``."""
    b, c, h, w = img.shape
    pe = _hf_sam1_pe(hf, h, w).repeat(b, 1, 1, 1)
    dense = hf.prompt_encoder.no_mask_embed.weight.reshape(1, c, 1, 1)
    if (h, w) == (4, 4):  # the prompt encoder's own dense output for its grid
        _, dense = hf.prompt_encoder(None, None, None, None)
    sparse = torch.zeros(b, 1, 0, c)
    single = hf.mask_decoder(img, pe, sparse, dense, False)[0]
    multi = hf.mask_decoder(img, pe, sparse, dense, True)[0]
    return torch.cat([single, multi], dim=2)[:, 0], pe


def test_sam1_hf_names_convert_to_official(hf_sam1):
    from fusionseg.models.methods.mle_sam.decoder import convert_hf_sam_decoder

    conv = convert_hf_sam_decoder(hf_sam1.state_dict())
    dec = {k[len("mask_decoder."):]: tuple(v.shape) for k, v in conv.items()
           if k.startswith("mask_decoder.")}
    assert dec == official_sam1_decoder_shapes(C, DEPTH, MLP_DIM, iou_hidden=C)
    assert conv["prompt_encoder.no_mask_embed.weight"].shape == (1, C)
    assert torch.equal(conv["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"],
                       hf_sam1.shared_image_embedding.positional_embedding)


@pytest.mark.parametrize("hw", [(4, 4), (3, 5)])
@pytest.mark.parametrize("source", ["state_dict", "save_pretrained"])
def test_sam1_matches_hf_mask_decoder(hf_sam1, tmp_path, source, hw):
    if source == "state_dict":
        src = hf_sam1.state_dict()
    else:
        hf_sam1.save_pretrained(tmp_path / "hf")
        src = tmp_path / "hf" / "model.safetensors"
    ours = Sam2SemanticDecoder(4, **SAM1).eval()
    report = ours.load_pretrained(src)
    assert report.source_format == "hf" and report.cycled == []
    assert set(report.loaded) == set(ours.state_dict())
    assert "mask_decoder.iou_prediction_head.layers.2.weight" in report.skipped
    img = torch.randn(2, C, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, pe = _hf_sam1_all_masks(hf_sam1, img)
        got = ours(img)
    assert got.shape == ref.shape == (2, 4, 4 * hw[0], 4 * hw[1])
    torch.testing.assert_close(ours.image_pe(*hw), pe[:1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert ref.abs().mean() > 0.3
    # the comparison can fail: without the iou token the class tokens see other context
    no_tok = Sam2SemanticDecoder(4, keep_sam_tokens=False, **SAM1)
    no_tok.load_pretrained(src)
    with torch.no_grad():
        assert not torch.allclose(no_tok(img), ref, atol=1e-3)


def test_sam1_load_official_file_with_six_classes(tmp_path):
    off = official_sam1_file_dict()
    path = tmp_path / "sam_vit_tiny.pth"
    torch.save(off, path)  # flat dict, as the official files
    m = Sam2SemanticDecoder(6, **SAM1)
    report = m.load_pretrained(path)
    assert report.source_format == "official"
    sd = m.state_dict()
    hyper_cycled = {k for k in sd if re.match(r"output_hypernetworks_mlps\.[45]\.", k)}
    assert set(report.cycled) == {"mask_tokens.weight"} | hyper_cycled
    assert set(report.loaded) == set(sd) - set(report.cycled)
    for k in report.loaded:
        src = {"no_mask_embed": "prompt_encoder.no_mask_embed.weight",
               "positional_encoding_gaussian_matrix":
                   "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
               }.get(k, "mask_decoder." + k)
        assert torch.equal(sd[k], off[src]), k
    assert torch.equal(sd["transformer.layers.0.mlp.lin1.weight"],
                       off["mask_decoder.transformer.layers.0.mlp.lin1.weight"])
    tok = off["mask_decoder.mask_tokens.weight"]
    assert torch.equal(sd["mask_tokens.weight"], tok[[0, 1, 2, 3, 0, 1]])
    for i, j in ((4, 0), (5, 1)):
        for p in ("layers.0.weight", "layers.1.bias", "layers.2.weight"):
            assert torch.equal(sd[f"output_hypernetworks_mlps.{i}.{p}"],
                               off[f"mask_decoder.output_hypernetworks_mlps.{j}.{p}"])
    assert {"mask_decoder.iou_prediction_head.layers.0.weight",
            "prompt_encoder.point_embeddings.3.weight", "prompt_encoder.not_a_point_embed.weight",
            "prompt_encoder.mask_downscaling.0.weight"} <= set(report.skipped)
    assert report.ignored == 2
    assert m(torch.randn(1, C, 2, 3)).shape == (1, 6, 8, 12)
    # also as a mapping
    m2 = Sam2SemanticDecoder(6, **SAM1)
    m2.load_pretrained(off)
    for k, v in m2.state_dict().items():
        assert torch.equal(v, sd[k]), k


@pytest.mark.parametrize("key", [
    "mask_decoder.transformer.layers.1.mlp.lin2.weight",
    "mask_decoder.output_upscaling.1.bias",
    "mask_decoder.output_hypernetworks_mlps.2.layers.1.weight",
    "prompt_encoder.no_mask_embed.weight",
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
])
def test_sam1_missing_required_key_raises_and_changes_nothing(tmp_path, key):
    off = official_sam1_file_dict()
    del off[key]
    path = tmp_path / "broken.pth"
    torch.save(off, path)
    m = Sam2SemanticDecoder(6, **SAM1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=re.escape(key)) as e:
        m.load_pretrained(path)
    assert e.value.missing == [key] and str(path) in str(e.value)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_checkpoint_filter_fn_tells_sam_v1_files_by_their_names(hf_sam1, hf_model):
    plain = checkpoint_filter_fn(official_sam1_file_dict(seed=2))  # no model: read the names
    m = Sam2SemanticDecoder(4, **SAM1)
    m.load_state_dict(plain, strict=True)
    assert torch.equal(plain["transformer.layers.0.mlp.lin1.weight"],
                       official_sam1_file_dict(seed=2)[
                           "mask_decoder.transformer.layers.0.mlp.lin1.weight"])
    for hf, kw in ((hf_sam1, SAM1), (hf_model, TINY)):  # HF SamModel / Sam2Model names
        ref = Sam2SemanticDecoder(4, **kw)
        ref.load_pretrained(hf.state_dict())
        got = checkpoint_filter_fn(hf.state_dict())
        assert got.keys() == ref.state_dict().keys()
        assert all(torch.equal(got[k], v) for k, v in ref.state_dict().items())


def test_sam1_and_sam2_files_do_not_cross_load():
    with pytest.raises(CheckpointMismatchError, match="missing key") as e:
        Sam2SemanticDecoder(4, **SAM1).load_pretrained(official_file_dict())
    assert "mask_decoder.transformer.layers.0.mlp.lin1.weight" in e.value.missing
    with pytest.raises(CheckpointMismatchError, match="sam_mask_decoder.conv_s0.weight"):
        Sam2SemanticDecoder(4, **TINY).load_pretrained(official_sam1_file_dict())
    big = Sam2SemanticDecoder(4, **{**SAM1, "mlp_dim": 2 * MLP_DIM})
    with pytest.raises(CheckpointMismatchError, match="shape mismatch") as e:
        big.load_pretrained(official_sam1_file_dict())
    assert any(k == "mask_decoder.transformer.layers.0.mlp.lin1.weight"
               for k, _, _ in e.value.mismatched)


@pytest.mark.parametrize("keep, shared", [(True, False), (False, True)])
def test_sam1_gradients_batch_and_bad_inputs(keep, shared):
    torch.manual_seed(0)
    m = Sam2SemanticDecoder(5, keep_sam_tokens=keep, shared_hypernetwork=shared, **SAM1)
    img = torch.randn(2, C, 3, 5)
    out = m(img)
    assert out.shape == (2, 5, 12, 20)
    (out * torch.randn_like(out)).sum().backward()
    g = m.mask_tokens.weight.grad
    assert g is not None and (g.norm(dim=1) > 0).all()
    assert m.no_mask_embed.grad is not None
    assert m.transformer.layers[1].mlp.lin1.weight.grad.abs().sum() > 0
    if keep:
        assert m.iou_token.weight.grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(img)[1:], m(img[1:]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="high_res=None"):
        m(img, (torch.randn(2, C, 12, 20), torch.randn(2, C, 6, 10)))
    with pytest.raises(ValueError, match=r"expects \[B, 32, h, w\]"):
        m(img[:, :16])
    with pytest.raises(ValueError, match="with variant='sam2', got None"):
        Sam2SemanticDecoder(3, **TINY)(img)
