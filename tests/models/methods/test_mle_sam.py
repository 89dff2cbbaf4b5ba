"""MLE-SAM: modality subsets, frozen encoder, the loss route, typed options, loading an official
SAM 2.1 file, and the parameter budget of the published setting (meta device)."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import tiny_model_cfg

from fusionseg.engine.losses import SegmentationCriterion
from fusionseg.errors import ConfigError
from fusionseg.models import CheckpointMismatchError, SegmentationOutput, create_model
from fusionseg.models.backbones import create_backbone
from fusionseg.models.backbones.hiera import HIERA_TINY
from fusionseg.models.methods.mle_sam import fpn_neck
from fusionseg.models.methods.mle_sam.decoder import Sam2SemanticDecoder
from fusionseg.models.methods.mle_sam.fpn_neck import Sam2FpnNeck
from fusionseg.models.methods.mle_sam.model import MLESAMOptions, MLESAMSegmentor
from fusionseg.models.peft.lora import lora_modules

MODS = ["rgb", "depth", "lidar"]


def tiny(seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = create_model(tiny_model_cfg("mle_sam", modalities=MODS, **kw))
    with torch.no_grad():  # non-zero LoRA updates, so the experts matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return model


def batch(b: int = 2, h: int = 64, w: int = 96, label: bool = False, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {m: torch.randn(b, 3 if m == "rgb" else 1, h, w, generator=g) for m in MODS}
    if label:
        out["label"] = torch.randint(0, 3, (b, h, w), generator=g)
    return out


def test_every_subset_runs_and_missing_values_do_not_matter():
    model = tiny().eval()
    full = batch()
    outs = {}
    with torch.no_grad():
        for k in range(1, 4):
            for subset in itertools.combinations(MODS, k):
                sub = {m: full[m] for m in subset}
                logits = model(sub)
                assert logits.shape == (2, 3, 64, 96) and torch.isfinite(logits).all()
                flagged = {m: torch.randn_like(full[m]) * 50 for m in MODS}
                flagged.update(sub)
                flagged["present"] = torch.tensor([[m in subset for m in MODS]] * 2)
                torch.testing.assert_close(model(flagged), logits)
                outs[subset] = logits
    # each modality changes the result; the experts differ per modality
    assert not torch.allclose(outs[("rgb",)], outs[("rgb", "depth")], atol=1e-4)
    same = {"rgb": full["rgb"], "depth": full["rgb"][:, :1].clone()}
    with torch.no_grad():
        a = model({"rgb": same["rgb"]})
        b = model({"depth": same["rgb"]})
    assert not torch.allclose(a, b, atol=1e-4)


def test_mixed_presence_within_a_batch_equals_per_sample_subsets():
    model = tiny().eval()
    full = batch()
    mixed = dict(full)
    mixed["present"] = torch.tensor([[True, True, False], [False, True, True]])
    with torch.no_grad():
        out = model(mixed)
        first = model({"rgb": full["rgb"][:1], "depth": full["depth"][:1]})
        second = model({"depth": full["depth"][1:], "lidar": full["lidar"][1:]})
    torch.testing.assert_close(out[:1], first, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1:], second, atol=1e-5, rtol=1e-4)


def test_frozen_encoder_and_neck_get_no_gradient_and_stay_unchanged():
    model = tiny()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora." in n for n in trainable if n.startswith("encoder."))
    assert not any(n.startswith("neck.") for n in trainable)
    assert any(n.startswith("decode_head.") for n in trainable)
    assert any(n.startswith("routers.") for n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora." in n}
    opt = torch.optim.AdamW(model.param_groups(1e-2, 0.01))
    crit = SegmentationCriterion("ce")
    model.train()
    for _ in range(2):
        loss, _ = crit(model(batch(label=True)), batch(label=True)["label"])
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters()
               if n in lora_before)
    groups = {g["name"] for g in model.param_groups(1e-3, 0.01)}
    assert groups <= {"rest", "rest_no_decay"}  # nothing of the frozen encoder


def test_training_output_is_main_plus_weighted_aux():
    model = tiny(aux_weight=0.25).train()
    data = batch(label=True)
    torch.manual_seed(0)
    out = model(data)
    assert isinstance(out, SegmentationOutput) and set(out.aux) == {"aux"}
    assert out.aux["aux"].weight == 0.25 and out.aux["aux"].logits.shape == (2, 3, 64, 96)
    total, terms = SegmentationCriterion("ce")(out, data["label"])
    ce = torch.nn.functional.cross_entropy
    expected = ce(out.logits, data["label"]) + 0.25 * ce(out.aux["aux"].logits, data["label"])
    torch.testing.assert_close(total, expected)
    no_aux = tiny(aux_head=False).train()(data)
    assert no_aux.aux == {}


def test_inference_mean_averages_the_two_heads():
    model = tiny(inference="mean").eval()
    data = batch()
    with torch.no_grad():
        mean = model(data)
        model.inference = "main"
        main = model(data)
        model.inference = "mean"
        images = [model.pad_to_multiple(x) for x in model.stream_inputs(data).images]
        fused = model.encode(images, torch.ones(2, 3, dtype=torch.bool))
        aux = model.upsample_logits(model.aux_head(fused), (64, 96), (64, 96))
    torch.testing.assert_close(mean, 0.5 * (main + aux))
    with pytest.raises(ValueError, match="inference"):
        tiny(inference="max")


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("gate", "nope", r"gate: Input should be 'pixel' or 'image' \(got 'nope'\)"),
    ("integrate", "sum", r"integrate: Input should be 'conv' or 'mean' \(got 'sum'\)"),
    ("top_k", 0, r"top_k: Input should be greater than or equal to 1 \(got 0\)"),
    ("rank", "wide", r"rank: Input should be a valid integer.*\(got 'wide'\)"),
])
def test_a_wrong_option_fails_in_one_line_naming_it(option, value, expected):
    for build in (lambda: create_model(tiny_model_cfg("mle_sam", **{option: value})),
                  lambda: MLESAMSegmentor(num_classes=3, **{option: value})):
        with pytest.raises(ConfigError, match=expected) as err:
            build()
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith("model 'mle_sam': ")
        assert "gate: 'pixel' | 'image'" in msg  # the valid options with their types


def test_options_keep_the_published_defaults():
    o = MLESAMOptions(num_classes=25)
    assert o.modalities == ("rgb", "depth", "event", "lidar")
    assert (o.backbone, o.rank, o.gate, o.integrate, o.aux_weight, o.neck_dim) == (
        "sam2.1_hiera_b+", 32, "pixel", "conv", 0.4, 256)
    assert (o.inference, o.freeze_encoder, o.train_neck, o.top_k) == ("main", True, False, None)
    model = tiny()
    assert isinstance(model, MLESAMSegmentor) and model.options.rank == 2
    assert model.options.modalities == tuple(MODS)


def test_routing_options_and_shared_expert_build_and_run():
    for kw in ({"gate": "image", "top_k": 1}, {"integrate": "mean"}, {"weighted": False},
               {"shared_expert": True}, {"freeze_encoder": False, "train_neck": True}):
        model = tiny(**kw).eval()
        with torch.no_grad():
            assert model(batch(h=32, w=32)).shape == (2, 3, 32, 32)
    unfrozen = tiny(freeze_encoder=False)
    assert all(p.requires_grad for p in unfrozen.encoder.parameters())


def _official_file(tmp_path, num_tokens: int = 4):
    """A tiny SAM 2.1 checkpoint with the official key layout ``{"model": {...}}``."""
    torch.manual_seed(5)
    trunk = create_backbone("sam2.1_hiera_t", **HIERA_TINY)
    neck = Sam2FpnNeck.from_trunk(trunk, d_model=16)
    dec = Sam2SemanticDecoder(num_tokens, transformer_dim=16, num_heads=2, mlp_dim=16)
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.3)
    sd = {f"image_encoder.trunk.{k}": v for k, v in trunk.state_dict().items()}
    sd.update({f"image_encoder.neck.{k}": v for k, v in neck.state_dict().items()})
    for k, v in dec.state_dict().items():
        if k == "no_mask_embed":
            sd["sam_prompt_encoder.no_mask_embed.weight"] = v
        elif k == "positional_encoding_gaussian_matrix":
            sd["sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = v
        elif k == "no_mem_embed":
            sd["no_mem_embed"] = v
        else:
            sd[f"sam_mask_decoder.{k}"] = v
    sd["sam_mask_decoder.iou_prediction_head.layers.0.weight"] = torch.zeros(16, 16)
    sd["maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 16)
    path = tmp_path / "sam2.1_hiera_tiny_test.pt"
    torch.save({"model": sd}, path)
    return path, trunk, neck, dec


def test_official_sam2_file_loads_trunk_neck_and_decoder(tmp_path):
    path, trunk, neck, dec = _official_file(tmp_path)
    model = create_model(tiny_model_cfg("mle_sam", modalities=MODS, num_classes=6,
                                        pretrained=str(path)))
    for k, v in trunk.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k
    assert model.neck.state_dict().keys() == neck.state_dict().keys()
    assert all(torch.equal(model.neck.state_dict()[k], v) for k, v in neck.state_dict().items())
    ours = model.decode_head.state_dict()
    ref = dec.state_dict()
    for k in ("transformer.layers.0.self_attn.q_proj.weight", "output_upscaling.0.weight",
              "conv_s0.weight", "no_mem_embed", "iou_token.weight"):
        assert torch.equal(ours[k], ref[k]), k
    torch.testing.assert_close(ours["mask_tokens.weight"][4:], ref["mask_tokens.weight"][:2])
    torch.testing.assert_close(ours["output_hypernetworks_mlps.5.layers.0.weight"],
                               ref["output_hypernetworks_mlps.1.layers.0.weight"])
    # LoRA starts at zero: with the pretrained weights the encoder is the pretrained one
    assert all(float(w.lora.experts["rgb"]["q"].lora_B.detach().abs().sum()) == 0
               for w in lora_modules(model.encoder))
    sd = torch.load(path, weights_only=True)["model"]
    del sd["image_encoder.trunk.blocks.1.attn.qkv.weight"]
    torch.save({"model": sd}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointMismatchError, match="blocks.1.attn.qkv.weight"):
        create_model(tiny_model_cfg("mle_sam", modalities=MODS,
                                    pretrained=str(tmp_path / "broken.pt")))


def test_neck_and_decoder_take_the_same_load_pretrained_path(tmp_path):
    """A file path, its ``{"model": ...}`` dict in memory, or our own state dict: the same
    tensors in the neck and the decoder."""
    path, trunk, neck, dec = _official_file(tmp_path)
    raw = torch.load(path, weights_only=True)
    assert Sam2FpnNeck.checkpoint_filter_fn is fpn_neck.checkpoint_filter_fn
    for source in (path, str(path), raw, neck.state_dict()):
        got = Sam2FpnNeck.from_trunk(trunk, d_model=16).load_pretrained(source)
        assert all(torch.equal(got.state_dict()[k], v) for k, v in neck.state_dict().items())
    for source in (path, raw, dec.state_dict()):
        got = Sam2SemanticDecoder(4, transformer_dim=16, num_heads=2, mlp_dim=16)
        got.load_pretrained(source)
        assert all(torch.equal(got.state_dict()[k], v) for k, v in dec.state_dict().items())


def test_published_setting_parameter_budget_on_meta_device():
    with torch.device("meta"):
        model = create_model({"name": "mle_sam", "backbone": "sam2.1_hiera_b+",
                              "modalities": ["rgb", "depth", "event", "lidar"],
                              "num_classes": 25})
    wrappers = lora_modules(model.encoder)
    assert len(wrappers) == 24  # every block of Hiera-B+ (2 + 3 + 16 + 3)
    expected = sum(4 * 2 * 32 * (w.in_features + w.out_features // 3) for w in wrappers)
    lora = sum(p.numel() for w in wrappers for p in w.lora.parameters())
    assert lora == expected
    trunk = sum(p.numel() for p in model.encoder.parameters()) - lora
    assert 60e6 < trunk < 75e6 and lora / trunk < 0.10
    counts = model.param_counts()
    assert counts["trainable"] < 0.25 * trunk
    assert model.decode_head.mask_tokens.weight.shape == (25, 256)


# --------------------------------------------------------------------------- SAM v1 encoder
def _sam_tiny() -> dict:
    from fusionseg.models.backbones.sam_vit import SAM_TINY

    return {**SAM_TINY, "out_indices": (0, 1, 2, 3)}  # 4 taps, the last at the last block


def _tiny_sam_v1(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return create_model(tiny_model_cfg("mle_sam", modalities=MODS, backbone="sam_vit_b",
                                       backbone_kwargs=_sam_tiny(), **kw))


def test_sam_v1_encoder_runs_every_subset_and_keeps_its_neck_frozen():
    model = _tiny_sam_v1()
    assert model.encoder_kind == "sam" and model.input_multiple == 32
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora." in n for n in trainable if n.startswith("encoder."))
    assert any(n.startswith("neck.simfp_2") for n in trainable)  # the new pyramid trains
    assert not hasattr(model.decode_head, "conv_s0")
    model.eval()
    full = batch(h=40, w=72)
    with torch.no_grad():
        for subset in (("rgb",), ("depth", "lidar"), tuple(MODS)):
            out = model({m: full[m] for m in subset})
            assert out.shape == (2, 3, 40, 72) and torch.isfinite(out).all()
    out = model.train()(batch(h=32, w=32, label=True))
    out.logits.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_official_sam_v1_file_loads_encoder_and_decoder(tmp_path):
    torch.manual_seed(7)
    vit = create_backbone("sam_vit_b", **_sam_tiny())
    dec = Sam2SemanticDecoder(4, transformer_dim=16, num_heads=2, mlp_dim=16, variant="sam")
    sd = {f"image_encoder.{k}": v for k, v in vit.state_dict().items()}
    for k, v in dec.state_dict().items():
        if k == "no_mask_embed":
            sd["prompt_encoder.no_mask_embed.weight"] = v
        elif k == "positional_encoding_gaussian_matrix":
            sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = v
        else:
            sd[f"mask_decoder.{k}"] = v
    torch.save(sd, tmp_path / "sam_vit_tiny.pth")
    model = create_model(tiny_model_cfg("mle_sam", modalities=MODS, backbone="sam_vit_b",
                                        backbone_kwargs=_sam_tiny(),
                                        pretrained=str(tmp_path / "sam_vit_tiny.pth")))
    enc = model.encoder.state_dict()
    assert all(torch.equal(enc[k], v) for k, v in vit.state_dict().items())
    ours, ref = model.decode_head.state_dict(), dec.state_dict()
    assert torch.equal(ours["transformer.layers.1.mlp.lin1.weight"],
                       ref["transformer.layers.1.mlp.lin1.weight"])
    torch.testing.assert_close(ours["mask_tokens.weight"], ref["mask_tokens.weight"][:3])
