"""``fusionseg weights convert`` detects the format by itself (issue 13, item 1).

Acceptance: tiny random ``transformers`` SegFormer, DINOv2, SAM 2 and SAM vision models are
saved with ``save_pretrained`` and converted by the CLI with no backbone hint; our backbone,
built from the detected name and overrides, loads the result strictly and reproduces the
``transformers`` hidden states. The hub configs of the real models map to the standard names,
and bare state dicts (official or Hugging Face keys) are recognised from key names and shapes.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from fusionseg.cli import app
from fusionseg.models.backbones import BACKBONES, create_backbone
from fusionseg.models.backbones.hiera import HIERA_TINY
from fusionseg.models.weights import (
    backbone_from_hf_config,
    backbone_from_state_dict,
    detect_backbone,
    load_state_dict_file,
)

TOL = dict(rtol=1e-4, atol=1e-5)


def _tf():
    return pytest.importorskip("transformers")


def _convert_without_hint(folder, out):
    """Run ``fusionseg weights convert FOLDER OUT`` and return (detection, CLI output)."""
    res = CliRunner().invoke(app, ["weights", "convert", str(folder), str(out)])
    assert res.exit_code == 0, res.output
    found = detect_backbone(folder)
    assert f"detected {found.name}" in res.output
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["fusionseg_backbone"] == found.name
    assert json.loads(meta["fusionseg_backbone_overrides"]) == json.loads(
        found.metadata()["fusionseg_backbone_overrides"])
    return found, res.output


def _randomize(model, scale=0.2):
    """Random weights everywhere (some transformers inits are near zero, e.g. SAM's 1e-10),
    norms around 1, so that a wrong mapping cannot go unnoticed."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.normal_(1.0, scale)
            else:
                p.normal_(0.0, scale)
    return model


# --------------------------------------------------------------------------- SegFormer / MiT
def _hf_segformer(cls_name="SegformerModel", depths=(1, 2, 1, 1)):
    t = _tf()
    torch.manual_seed(0)
    cfg = t.SegformerConfig(hidden_sizes=[8, 16, 32, 64], depths=list(depths),
                            num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=16, num_labels=3)
    model = getattr(t, cls_name)(cfg).eval()
    # transformers builds the block and stage LayerNorms with the default eps 1e-5 where the
    # official code (and ours) uses 1e-6; align them so that only the weight mapping is compared.
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.LayerNorm) and (
                "layernorm_" in name or name.endswith(tuple(f"stages.{i}.layer_norm"
                                                            for i in range(4)))):
            m.eps = 1e-6
    return _randomize(model)


@pytest.mark.parametrize("cls_name", ["SegformerModel", "SegformerForSemanticSegmentation"])
def test_segformer_folder_converts_without_hint(tmp_path, cls_name):
    hf = _hf_segformer(cls_name)
    hf.save_pretrained(tmp_path / "hf")
    keys = set(load_file(tmp_path / "hf" / "model.safetensors"))
    assert any(".attention.self.key." in k for k in keys)  # the hub names
    found, _ = _convert_without_hint(tmp_path / "hf", tmp_path / "mit.safetensors")
    assert found.name == "mit_b0" and found.family == "mit"
    assert found.overrides == {"embed_dims": (8, 16, 32, 64), "depths": (1, 2, 1, 1),
                               "num_heads": (1, 1, 2, 2)}
    ours = create_backbone(found.name, pretrained=tmp_path / "mit.safetensors",
                           **found.overrides).eval()
    enc = hf if cls_name == "SegformerModel" else hf.segformer
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = enc(pixel_values=x, output_hidden_states=True).hidden_states
        feats = ours(x)
    assert len(ref) == len(feats) == 4
    for got, want in zip(feats, ref, strict=True):
        torch.testing.assert_close(got, want, **TOL)


def test_segformer_in_memory_names_and_key_value_order():
    """transformers 5 renames the modules in memory (stages.*, q/k/v_proj): same result; the
    official kv is key rows then value rows."""
    from fusionseg.models.backbones.mit import convert_hf_segformer

    hf = _hf_segformer()
    sd = convert_hf_segformer(hf.state_dict())
    att = hf.stages[1].blocks[1].attention
    torch.testing.assert_close(sd["block2.1.attn.kv.weight"],
                               torch.cat([att.k_proj.weight, att.v_proj.weight]))
    torch.testing.assert_close(sd["block2.1.attn.q.bias"], att.q_proj.bias)
    torch.testing.assert_close(sd["norm4.weight"], hf.stages[3].layer_norm.weight)
    ours = create_backbone("mit_b0", embed_dims=(8, 16, 32, 64), depths=(1, 2, 1, 1),
                           num_heads=(1, 1, 2, 2))
    ours.load_state_dict(sd, strict=True)
    with pytest.raises(ValueError, match="needs both the key and the value"):
        convert_hf_segformer({k: v for k, v in hf.state_dict().items() if ".v_proj." not in k})


def test_bare_hf_segformer_file_is_recognised_from_its_keys(tmp_path):
    """Without config.json the widths, depths and reduction ratios come from the shapes."""
    hf = _hf_segformer("SegformerForImageClassification")
    hf.save_pretrained(tmp_path / "hf")
    bare = tmp_path / "pytorch_model_copy.safetensors"  # no config.json next to this name
    save_file(load_file(tmp_path / "hf" / "model.safetensors"), bare)
    found = detect_backbone(bare)
    assert (found.name, found.key_format, found.origin) == ("mit_b0", "hugging face", "state dict")
    assert found.overrides["embed_dims"] == (8, 16, 32, 64)
    assert found.overrides["depths"] == (1, 2, 1, 1)
    assert "sr_ratios" not in found.overrides  # (8, 4, 2, 1), as MiT-B0
    # heads are not stored in the weights: the rule C // 32 (as MiT-B0) gives (1, 1, 1, 2)
    assert found.overrides["num_heads"] == (1, 1, 1, 2)
    ours = found.build()
    ours.load_state_dict(type(ours).checkpoint_filter_fn(load_file(bare), ours))


# --------------------------------------------------------------------------- DINOv2
def _hf_dinov2(registers=0):
    t = _tf()
    torch.manual_seed(0)
    kw = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=56,
              patch_size=14)
    if registers:
        model = t.Dinov2WithRegistersModel(t.Dinov2WithRegistersConfig(
            num_register_tokens=registers, **kw))
    else:
        model = t.Dinov2Model(t.Dinov2Config(**kw))
    return _randomize(model.eval())


@pytest.mark.parametrize("registers", [0, 2])
def test_dinov2_folder_converts_without_hint(tmp_path, registers):
    hf = _hf_dinov2(registers)
    hf.save_pretrained(tmp_path / "hf")
    found, _ = _convert_without_hint(tmp_path / "hf", tmp_path / "dino.safetensors")
    want = "dinov2_vits14_reg4" if registers else "dinov2_vits14"
    expect = {"embed_dim": 32, "depth": 4, "num_heads": 2, "img_size": 56,
              "out_indices": (0, 1, 2, 3)}
    if registers:
        expect["num_register_tokens"] = 2
    assert (found.name, found.overrides) == (want, expect)
    ours = create_backbone(found.name, pretrained=tmp_path / "dino.safetensors",
                           **found.overrides).eval()
    x = torch.randn(2, 3, 56, 56)  # the pretraining grid: no position interpolation
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        taps = ours(x)
    p = 1 + registers
    for i, tap in enumerate(taps):
        want_tokens = hf.layernorm(ref.hidden_states[i + 1])[:, p:]
        torch.testing.assert_close(tap.flatten(2).transpose(1, 2), want_tokens, **TOL)


def test_bare_hf_dinov2_classifier_file_is_recognised(tmp_path):
    """A Dinov2ForImageClassification-style file (dinov2.* and classifier.*), no config.json."""
    hf = _hf_dinov2(registers=2)
    hf.save_pretrained(tmp_path / "hf")
    sd = {f"dinov2.{k}": v for k, v in load_file(tmp_path / "hf" / "model.safetensors").items()}
    sd["classifier.weight"] = torch.zeros(5, 64)
    found = backbone_from_state_dict(sd)
    assert (found.name, found.key_format) == ("dinov2_vits14_reg4", "hugging face")
    # heads are not in the weights: C // 64, at least 1
    assert found.overrides == {"embed_dim": 32, "depth": 4, "num_heads": 1, "img_size": 56,
                               "num_register_tokens": 2, "out_indices": (0, 1, 2, 3)}


# --------------------------------------------------------------------------- SAM 2 Hiera
def _hf_sam2(whole_model: bool):
    t = _tf()
    torch.manual_seed(0)
    hiera = t.Sam2HieraDetConfig(
        hidden_size=8, num_attention_heads=1, blocks_per_stage=[1, 1, 3, 1],
        embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 2, 4, 8],
        window_size_per_stage=[4, 4, 4, 2], global_attention_blocks=[3],
        window_positional_embedding_background_size=[3, 5], image_size=[64, 64])
    vision = t.Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[64, 32, 16, 8],
                                fpn_hidden_size=16, backbone_feature_sizes=[[16, 16], [8, 8],
                                                                            [4, 4]])
    if whole_model:
        model = t.Sam2Model(t.Sam2Config(
            vision_config=vision,
            prompt_encoder_config=t.Sam2PromptEncoderConfig(hidden_size=16, image_size=64),
            mask_decoder_config=t.Sam2MaskDecoderConfig(hidden_size=16)))
        trunk = model.vision_encoder.backbone
    else:
        model = t.Sam2VisionModel(vision)
        trunk = model.backbone
    _randomize(trunk)
    return model.eval(), trunk


@pytest.mark.parametrize("whole_model", [False, True], ids=["Sam2VisionModel", "Sam2Model"])
def test_sam2_folder_converts_without_hint(tmp_path, whole_model):
    hf, trunk = _hf_sam2(whole_model)
    hf.save_pretrained(tmp_path / "hf")
    found, _ = _convert_without_hint(tmp_path / "hf", tmp_path / "trunk.safetensors")
    assert found.family == "sam2_hiera" and found.name == "sam2.1_hiera_t"
    # = HIERA_TINY (num_heads 1 is already sam2.1_hiera_t's)
    assert found.overrides == {"embed_dim": 8, "stages": (1, 1, 3, 1),
                               "window_pos_embed_bkg_spatial_size": (3, 5),
                               "window_spec": (4, 4, 4, 2), "global_att_blocks": (3,)}
    ours = create_backbone(found.name, pretrained=tmp_path / "trunk.safetensors",
                           **found.overrides).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stages = trunk(x).intermediate_hidden_states  # [B, H, W, C], highest resolution first
        feats = ours(x)
    assert len(stages) == len(feats) == 4
    for got, want in zip(feats, stages, strict=True):
        torch.testing.assert_close(got, want.permute(0, 3, 1, 2), **TOL)


# --------------------------------------------------------------------------- SAM ViT
def test_sam_vision_folder_converts_without_hint(tmp_path):
    t = _tf()
    torch.manual_seed(0)
    hf = _randomize(t.SamVisionModel(t.SamVisionConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, window_size=2,
        global_attn_indexes=[1, 3], image_size=64, output_channels=16, mlp_dim=128)).eval(), 0.1)
    hf.save_pretrained(tmp_path / "hf")
    found, _ = _convert_without_hint(tmp_path / "hf", tmp_path / "sam.safetensors")
    assert found.name == "sam_vit_b"
    assert found.overrides == {"embed_dim": 32, "depth": 4, "num_heads": 2,
                               "global_attn_indexes": (1, 3), "window_size": 2, "img_size": 64,
                               "out_chans": 16}
    ours = create_backbone(found.name, pretrained=tmp_path / "sam.safetensors",
                           **found.overrides).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        taps, emb = ours(x), ours.forward_neck(x)
    for i, tap in zip(ours.out_indices, taps, strict=True):
        torch.testing.assert_close(tap, ref.hidden_states[i + 1].permute(0, 3, 1, 2), **TOL)
    torch.testing.assert_close(emb, ref.last_hidden_state, **TOL)
    # the converted file (official names, no config.json) is recognised from its shapes too
    again = detect_backbone(tmp_path / "sam.safetensors")
    assert (again.name, again.overrides, again.key_format) == (
        found.name, found.overrides, "official")


# --------------------------------------------------------------------------- hub configs
_HIERA_HUB = {  # facebook/sam2.1-hiera-*: vision_config.backbone_config
    "sam2.1_hiera_t": dict(hidden_size=96, num_attention_heads=1, blocks_per_stage=[1, 2, 7, 2],
                           embed_dim_per_stage=[96, 192, 384, 768],
                           num_attention_heads_per_stage=[1, 2, 4, 8],
                           window_size_per_stage=[8, 4, 14, 7], global_attention_blocks=[5, 7, 9],
                           window_positional_embedding_background_size=[7, 7]),
    "sam2.1_hiera_s": dict(hidden_size=96, num_attention_heads=1, blocks_per_stage=[1, 2, 11, 2],
                           embed_dim_per_stage=[96, 192, 384, 768],
                           num_attention_heads_per_stage=[1, 2, 4, 8],
                           window_size_per_stage=[8, 4, 14, 7],
                           global_attention_blocks=[7, 10, 13],
                           window_positional_embedding_background_size=[7, 7]),
    "sam2.1_hiera_b+": dict(hidden_size=112, num_attention_heads=2,
                            blocks_per_stage=[2, 3, 16, 3],
                            embed_dim_per_stage=[112, 224, 448, 896],
                            num_attention_heads_per_stage=[2, 4, 8, 16],
                            window_size_per_stage=[8, 4, 14, 7],
                            global_attention_blocks=[12, 16, 20],
                            window_positional_embedding_background_size=[14, 14]),
    "sam2.1_hiera_l": dict(hidden_size=144, num_attention_heads=2,
                           blocks_per_stage=[2, 6, 36, 4],
                           embed_dim_per_stage=[144, 288, 576, 1152],
                           num_attention_heads_per_stage=[2, 4, 8, 16],
                           window_size_per_stage=[8, 4, 16, 8],
                           global_attention_blocks=[23, 33, 43],
                           window_positional_embedding_background_size=[7, 7]),
}
_HUB_CONFIGS = [
    *[(f"mit_b{i}", {"model_type": "segformer", "architectures":
                     ["SegformerForImageClassification"], "hidden_sizes": hs, "depths": d,
                     "num_attention_heads": [1, 2, 5, 8], "sr_ratios": [8, 4, 2, 1],
                     "mlp_ratios": [4, 4, 4, 4], "patch_sizes": [7, 3, 3, 3],
                     "strides": [4, 2, 2, 2], "num_encoder_blocks": 4})
      for i, (hs, d) in enumerate([([32, 64, 160, 256], [2, 2, 2, 2]),
                                   ([64, 128, 320, 512], [2, 2, 2, 2]),
                                   ([64, 128, 320, 512], [3, 4, 6, 3]),
                                   ([64, 128, 320, 512], [3, 4, 18, 3]),
                                   ([64, 128, 320, 512], [3, 8, 27, 3]),
                                   ([64, 128, 320, 512], [3, 6, 40, 3])])],
    *[(f"dinov2_vit{v}14{reg}", {"model_type": mt, "hidden_size": c, "num_hidden_layers": n,
                                 "num_attention_heads": h, "image_size": 518, "patch_size": 14,
                                 "mlp_ratio": 4, "use_swiglu_ffn": v == "g",
                                 **({"num_register_tokens": 4} if reg else {})})
      for reg, mt in (("", "dinov2"), ("_reg4", "dinov2_with_registers"))
      for v, c, n, h in (("s", 384, 12, 6), ("b", 768, 12, 12), ("l", 1024, 24, 16),
                         ("g", 1536, 40, 24))],
    *[(name, {"model_type": mt, "vision_config": {"model_type": "sam2_vision_model",
                                                  "backbone_config": {
                                                      "model_type": "sam2_hiera_det_model",
                                                      **bb}}})
      for name, bb in _HIERA_HUB.items() for mt in ("sam2", "sam2_video")],
    *[(f"sam_vit_{v}", {"model_type": "sam", "vision_config": {
        "model_type": "sam_vision_model", "hidden_size": c, "num_hidden_layers": n,
        "num_attention_heads": h, "global_attn_indexes": g, "mlp_dim": 4 * c,
        "output_channels": 256, "window_size": 14, "image_size": 1024, "patch_size": 16}})
      for v, c, n, h, g in (("b", 768, 12, 12, [2, 5, 8, 11]), ("l", 1024, 24, 16, [5, 11, 17, 23]),
                            ("h", 1280, 32, 16, [7, 15, 23, 31]))],
]


@pytest.mark.parametrize("name, config", _HUB_CONFIGS,
                         ids=[f"{n}-{c['model_type']}" for n, c in _HUB_CONFIGS])
def test_hub_configs_give_the_standard_names(name, config):
    found = backbone_from_hf_config(config)
    assert (found.name, found.overrides) == (name, {})
    assert found.origin == "config.json"


@pytest.mark.parametrize("model_type, name", [("segformer", "mit_b0"), ("sam", "sam_vit_b"),
                                              ("sam2", "sam2.1_hiera_t"),
                                              ("dinov2", "dinov2_vitb14")])
def test_keys_left_out_take_the_transformers_defaults(model_type, name):
    found = backbone_from_hf_config({"model_type": model_type})
    assert found.name == name
    # Dinov2Config's defaults are ViT-B at 224 px (a 16 x 16 grid), not the hub's 518 px
    assert found.overrides == ({"img_size": 224} if model_type == "dinov2" else {})


def test_unsupported_configs_raise():
    with pytest.raises(ValueError, match="model_type 'vit' is not an encoder.*segformer"):
        backbone_from_hf_config({"model_type": "vit"})
    with pytest.raises(ValueError, match="one MLP ratio"):
        backbone_from_hf_config({"model_type": "segformer", "mlp_ratios": [4, 4, 2, 4]})
    bad = dict(_HIERA_HUB["sam2.1_hiera_t"], embed_dim_per_stage=[96, 160, 384, 768])
    with pytest.raises(ValueError, match="double per stage"):
        backbone_from_hf_config({"model_type": "sam2_hiera_det_model", **bad})


# --------------------------------------------------------------------------- bare state dicts
@pytest.mark.parametrize("name", BACKBONES.names())
def test_full_size_official_state_dicts_give_the_standard_names(name):
    with torch.device("meta"):
        sd = create_backbone(name).state_dict()
    found = backbone_from_state_dict(sd)
    assert (found.name, found.overrides, found.key_format) == (name, {}, "official")
    ddp = backbone_from_state_dict({f"module.{k}": v for k, v in sd.items()})
    assert (ddp.name, ddp.overrides) == (name, {})


def test_official_whole_model_files_give_their_encoder():
    meta = torch.empty(1, device="meta")
    with torch.device("meta"):
        trunk = create_backbone("sam2.1_hiera_b+").state_dict()
        sam = create_backbone("sam_vit_l").state_dict()
        mit = create_backbone("mit_b3").state_dict()
    sam2_file = {**{f"image_encoder.trunk.{k}": v for k, v in trunk.items()},
                 "image_encoder.neck.convs.0.conv.weight": meta,
                 "sam_mask_decoder.iou_token.weight": meta, "no_mem_embed": meta}
    assert backbone_from_state_dict(sam2_file).name == "sam2.1_hiera_b+"
    sam_file = {**{f"image_encoder.{k}": v for k, v in sam.items()},
                "prompt_encoder.no_mask_embed.weight": meta, "mask_decoder.iou_token.weight": meta}
    assert backbone_from_state_dict(sam_file).name == "sam_vit_l"
    mit_file = {**mit, "head.weight": torch.empty(1000, 512, device="meta"),
                "head.bias": torch.empty(1000, device="meta")}
    assert backbone_from_state_dict(mit_file).name == "mit_b3"


def test_whole_segmentation_models_are_not_taken_for_encoders(tmp_path):
    from conftest import tiny_model_cfg

    from fusionseg.models import create_model

    model = create_model(tiny_model_cfg("sum_fusion"))
    assert backbone_from_state_dict(model.state_dict()) is None
    # so convert without options falls back to the released-format route (keys kept)
    src = tmp_path / "model.pth"
    torch.save({"state_dict": model.state_dict()}, src)
    res = CliRunner().invoke(app, ["weights", "convert", str(src), str(tmp_path / "o.pth")])
    assert res.exit_code == 0, res.output
    assert "detected" not in res.output
    assert set(load_state_dict_file(tmp_path / "o.pth")) == set(model.state_dict())


def test_tiny_resnet_and_non_standard_hiera():
    torch.manual_seed(0)
    sd = create_backbone("resnet101", layers=(1, 2, 1, 1), width=8).state_dict()
    found = backbone_from_state_dict({**sd, "fc.weight": torch.zeros(3, 256)})
    assert (found.name, found.overrides) == ("resnet50", {"layers": (1, 2, 1, 1), "width": 8})
    with torch.device("meta"):
        odd = create_backbone("sam2.1_hiera_t", **HIERA_TINY).state_dict()
    with pytest.raises(ValueError, match="not stored in the weights.*--backbone"):
        backbone_from_state_dict(odd)
