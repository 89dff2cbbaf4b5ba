"""StitchFusion: MultiAdapter, FeatureCross, released-checkpoint compatibility, configs."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import get_args

import pytest
import torch
import yaml
from reference.stitchfusion_release import StitchFusionRelease, randomize_

from fusionseg.config import config_from_dict, load_config
from fusionseg.data import list_datasets
from fusionseg.engine.runner import convert_weights
from fusionseg.errors import ConfigError
from fusionseg.models import CheckpointMismatchError, create_model, load_checkpoint
from fusionseg.models.methods.stitchfusion.adapters import (
    ADAPTER_DENSITIES,
    BottleneckAdapter,
    MultiAdapter,
    adapter_param_count,
)
from fusionseg.models.methods.stitchfusion.model import (
    Density,
    StitchFusionOptions,
    StitchFusionSegmentor,
)
from fusionseg.models.methods.stitchfusion.release import release_to_fusionseg
from fusionseg.models.weights import convert_checkpoint

ROOT = Path(__file__).resolve().parents[3]
# larger than conftest.TINY_MIT on purpose: two blocks in stages 1 and 3 exercise the
# sequential adapter update across blocks, and distinct head counts the release's attention
TINY = {"embed_dims": (16, 32, 48, 64), "depths": (2, 1, 2, 1), "num_heads": (1, 2, 3, 4)}
MODS = ["rgb", "depth", "event", "lidar", "thermal", "nir", "aolp", "dolp", "hha"]
K = 7


def tiny_model(
    m: int = 2, adapter="pairwise", fusion="featurecross", **kw
) -> StitchFusionSegmentor:
    spec = {
        "name": "stitchfusion",
        "backbone": "mit_b0",
        "modalities": MODS[:m],
        "num_classes": K,
        "adapter": adapter,
        "fusion": fusion,
        "decoder_dim": 32,
        "backbone_kwargs": TINY,
    }
    spec.update(kw)
    return create_model(spec)


def release_model(m: int, blocks, fusion: str, seed: int = 1) -> StitchFusionRelease:
    ref = StitchFusionRelease(
        K,
        m,
        blocks,
        fusion,
        embed_dims=TINY["embed_dims"],
        depths=TINY["depths"],
        heads=TINY["num_heads"],
        decoder_dim=32,
    )
    return randomize_(ref, seed).eval()


def inputs(m: int, b: int = 2, h: int = 64, w: int = 96, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, h, w, generator=g) for _ in range(m)]


def batch_of(xs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{MODS[i]: xs[i]}``: a batch in the fusionseg convention."""
    return {MODS[i]: x for i, x in enumerate(xs)}


# --------------------------------------------------------------------------- adapters
def test_adapter_param_formula():
    for dim in (32, 64, 320, 512):
        n = sum(p.numel() for p in BottleneckAdapter(dim).parameters())
        assert n == adapter_param_count(dim) == 17 * dim + 80


@pytest.mark.parametrize("m, expected", [(2, 144_000), (4, 864_000)])
def test_adapter_overhead_mit_b2_pairwise_exact(m, expected):
    """Paper: MiT-B2 pairwise MultiAdapter adds 0.144 M (2 modalities) / 0.864 M (4)."""
    spec = {
        "name": "stitchfusion",
        "backbone": "mit_b2",
        "modalities": MODS[:m],
        "num_classes": 25,
        "fusion": "sum",
    }
    with_adapters = create_model({**spec, "adapter": "pairwise"})
    plain = create_model({**spec, "adapter": None})
    assert with_adapters.adapter_param_count() == expected
    total = with_adapters.param_counts()["total"] - plain.param_counts()["total"]
    assert total == expected
    # the formula: 2 adapters (att, mlp) per block per unordered pair, 17 * dim + 80 each
    dims, depths = (64, 128, 320, 512), (3, 4, 6, 3)
    pairs = m * (m - 1) // 2
    assert expected == pairs * 2 * sum(d * (17 * c + 80) for c, d in zip(dims, depths, strict=True))


def test_adapter_counts_per_density():
    for m in (2, 3, 4):
        n = {
            d: tiny_model(m, d, "sum").adapter_param_count()
            for d in ("shared", "pairwise", "directional")
        }
        assert n["directional"] == 2 * n["pairwise"]
        assert n["pairwise"] == m * (m - 1) // 2 * n["shared"]


def test_multiadapter_sequential_update_order():
    """Stream i sends a function of itself *after* the contributions of streams < i."""
    torch.manual_seed(0)
    ad = MultiAdapter(8, 3, "directional", dropout=0.0).eval()
    for p in ad.parameters():
        torch.nn.init.normal_(p, std=0.5)
    norm = torch.nn.LayerNorm(8)
    x = torch.randn(3, 2, 5, 8)
    out = ad(x, "att", norm, torch.nn.Identity())
    s = list(x.unbind(0))
    for i in range(3):
        src = norm(s[i])
        for j in range(3):
            if j != i:
                s[j] = s[j] + ad.adapter("att", i, j)(src)
    torch.testing.assert_close(out, torch.stack(s))
    simultaneous = x.clone()
    for i in range(3):
        for j in range(3):
            if j != i:
                simultaneous[j] += ad.adapter("att", i, j)(norm(x[i]))
    assert (out - simultaneous).abs().max() > 1e-3


@pytest.mark.parametrize("density", ["pairwise", "shared"])
def test_adapter_recompute_gives_identical_gradients(density):
    """Recomputing the adapters in backward (RNG preserved: same dropout masks) changes nothing."""
    model = tiny_model(3, density, "sum").train()
    xs = inputs(3, h=32, w=32)
    grads = []
    for recompute in (True, False):
        for mod in model.modules():
            if isinstance(mod, MultiAdapter):
                mod.recompute = recompute
        model.zero_grad()
        torch.manual_seed(5)
        model(batch_of(xs)).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.equal(g, grads[1][name]), name


def test_shared_adapter_train_path_equals_eval_path():
    """Per-target evaluation in training == computed-once evaluation in eval (no dropout)."""
    model = tiny_model(3, "shared", "sum", adapter_dropout=0.0, drop_path_rate=0.0)
    x = torch.cat(inputs(3), 0)
    model.eval()
    with torch.no_grad():
        ref = model.encode(x)
        model.train()
        out = model.encode(x)
    for a, b in zip(ref, out, strict=True):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- released checkpoints
CASES = [
    (2, ("pairwise",) * 4, "featurecross"),
    (3, ("pairwise",) * 4, "featurecross"),
    (2, ("directional",) * 4, "sum"),
    (3, ("directional",) * 4, "sum"),
    (3, ("shared",) * 4, "sum"),
    (3, (None, None, "pairwise", "pairwise"), "featurecross"),
    (2, ("shared", "shared", "pairwise", "pairwise"), "featurecross"),
]


@pytest.mark.parametrize("m, blocks, fusion", CASES)
def test_released_checkpoint_gives_released_logits(tmp_path, m, blocks, fusion):
    ref = release_model(m, blocks, fusion)
    path = tmp_path / "released.pth"
    torch.save(ref.state_dict(), path)
    model = tiny_model(m, list(blocks), fusion)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_checkpoint(model, path)
    # the release builds FeatureCross in every variant: sum models drop it, with a warning
    dropped = [w for w in caught if "FeatureCross" in str(w.message)]
    assert bool(dropped) == (fusion == "sum")
    model.eval()
    xs = inputs(m)
    with torch.no_grad():
        expected = ref(xs)
        got = model(batch_of(xs))
    assert got.shape == expected.shape == (2, K, 64, 96)
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    "m, blocks, fusion", [(3, ("pairwise",) * 4, "featurecross"), (3, ("shared",) * 4, "sum")]
)
def test_training_gradients_match_released_code(tmp_path, m, blocks, fusion):
    """Train mode (BatchNorm batch statistics, recomputed and batched adapters): the loss and
    every gradient equal the released computation's (dropout and drop path set to 0)."""
    ref = release_model(m, blocks, fusion)
    torch.save(ref.state_dict(), tmp_path / "released.pth")
    model = tiny_model(m, list(blocks), fusion, adapter_dropout=0.0, drop_path_rate=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_checkpoint(model, tmp_path / "released.pth")
    for mod in [*ref.modules(), *model.modules()]:
        if hasattr(mod, "p") and isinstance(mod.p, float):  # Dropout*, DropPath
            mod.p = 0.0
    ref.train()
    model.train()
    xs = inputs(m, h=32, w=64)
    target = torch.randint(0, K, (2, 32, 64), generator=torch.Generator().manual_seed(3))
    loss_ref = torch.nn.functional.cross_entropy(ref(xs), target)
    loss = torch.nn.functional.cross_entropy(model(batch_of(xs)), target)
    loss_ref.backward()
    loss.backward()
    assert abs(loss.item() - loss_ref.item()) < 1e-5
    ours = dict(model.named_parameters())
    grads = release_to_fusionseg({n: p.grad for n, p in ref.named_parameters()})
    for name, g in grads.items():
        if name not in ours:  # the unused FeatureCross of the released sum variant
            assert fusion == "sum" and name.startswith("fusion.") and g is None
            continue
        torch.testing.assert_close(ours[name].grad, g, atol=2e-5, rtol=1e-3, msg=name)


def test_released_key_names():
    keys = set(release_model(3, ("pairwise",) * 4, "featurecross").state_dict())
    for k in (
        "backbone.patch_embed1.proj.weight",
        "backbone.block1.0.attn.sr.weight",
        "backbone.block1.0.mlp.dwconv.dwconv.weight",
        "backbone.block1.0.adap_t_att12.adapter_down.weight",
        "backbone.block4.0.adap_t_mlp23.adapter_up.bias",
        "backbone.norm4.weight",
        "backbone.feature_cross.liner_fusion_layers.0.weight",
        "backbone.feature_cross.mix_ffn.2.pwconv1.bn.running_var",
        "backbone.feature_cross.mix_ffn.3.dwconv7.dwconv.weight",
        "backbone.feature_cross.channel_attns.1.fc.2.weight",
        "decode_head.linear_c4.proj.weight",
        "decode_head.linear_fuse.bn.running_mean",
        "decode_head.linear_pred.weight",
    ):
        assert k in keys, k
    assert "backbone.block1.0.adap_t_att21.adapter_down.weight" not in keys  # pairwise: a < b


def test_shared_and_pairwise_keys_interchange_for_two_modalities(tmp_path):
    """With 2 streams the release's Block_shared and Block_every_one are the same function."""
    ref = release_model(2, ("shared",) * 4, "featurecross")
    path = tmp_path / "shared.pth"
    torch.save(ref.state_dict(), path)
    model = load_checkpoint(tiny_model(2, "pairwise"), path).eval()
    xs = inputs(2)
    with torch.no_grad():
        assert (model(batch_of(xs)) - ref(xs)).abs().max() < 1e-4


def test_release_loading_is_strict(tmp_path):
    sd = release_model(2, ("pairwise",) * 4, "featurecross").state_dict()
    missing = dict(sd)
    del missing["backbone.block2.0.adap_t_mlp12.adapter_mid.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointMismatchError, match=r"adapters\.block2\.0\.adap_t_mlp12") as e:
        load_checkpoint(tiny_model(2), tmp_path / "missing.pth")
    assert e.value.missing == ["adapters.block2.0.adap_t_mlp12.adapter_mid.weight"]
    extra = dict(sd, **{"backbone.block1.0.adap_t_att13.adapter_down.weight": torch.zeros(8, 16)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointMismatchError, match="adap_t_att13") as e:
        load_checkpoint(tiny_model(2), tmp_path / "extra.pth")
    assert e.value.unexpected == ["adapters.block1.0.adap_t_att13.adapter_down.weight"]
    # a 2-modality file does not fit a 3-modality model (FeatureCross input width, adapters)
    torch.save(sd, tmp_path / "two.pth")
    with pytest.raises(CheckpointMismatchError):
        load_checkpoint(tiny_model(3), tmp_path / "two.pth")


def test_release_conversion_applies_to_stitchfusion_models_only(tmp_path):
    ref = release_model(2, ("pairwise",) * 4, "sum")
    torch.save(ref.state_dict(), tmp_path / "released.pth")
    spec = {"name": "sum_fusion", "backbone": "mit_b0", "modalities": MODS[:2],
            "num_classes": K, "decoder_dim": 32, "backbone_kwargs": TINY}
    # a sum-fusion model does not rename StitchFusion's keys: the adapters are unexpected
    with pytest.raises(CheckpointMismatchError, match="unexpected") as e:
        load_checkpoint(create_model(spec), tmp_path / "released.pth")
    assert any(k.startswith("backbone.block1.0.adap") for k in e.value.unexpected)
    assert StitchFusionSegmentor.is_released_format(ref.state_dict())
    assert not StitchFusionSegmentor.is_released_format(tiny_model(2).state_dict())


def test_release_training_checkpoint_and_lightning_format(tmp_path):
    ref = release_model(2, ("pairwise",) * 4, "featurecross")
    # the release's *_checkpoint.pth nests the weights under model_state_dict
    torch.save(
        {"epoch": 3, "model_state_dict": ref.state_dict(), "best_miou": 1.0}, tmp_path / "ckpt.pth"
    )
    model = load_checkpoint(tiny_model(2), tmp_path / "ckpt.pth").eval()
    # our own (Lightning) format: {"state_dict": {"model.<key>": ...}}
    ours = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    torch.save(ours, tmp_path / "ours.ckpt")
    again = load_checkpoint(tiny_model(2), tmp_path / "ours.ckpt").eval()
    xs = inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(again(batch_of(xs)), ref(xs), atol=1e-4, rtol=0)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_convert_checkpoint(tmp_path, suffix):
    ref = release_model(3, ("pairwise",) * 4, "featurecross")
    src = tmp_path / "released.pth"
    torch.save(ref.state_dict(), src)
    out = convert_checkpoint(src, tmp_path / f"ours{suffix}")
    model = load_checkpoint(tiny_model(3), out).eval()
    xs = inputs(3)
    with torch.no_grad():
        assert (model(batch_of(xs)) - ref(xs)).abs().max() < 1e-4


def test_convert_checkpoint_with_config(tmp_path):
    ref = release_model(2, ("pairwise",) * 4, "sum")  # carries the unused FeatureCross
    src = tmp_path / "released.pth"
    torch.save(ref.state_dict(), src)
    cfg = {
        "model": {
            "name": "stitchfusion",
            "backbone": "mit_b0",
            "modalities": MODS[:2],
            "adapter": "pairwise",
            "fusion": "sum",
            "decoder_dim": 32,
            "pretrained": "does/not/exist.pth",
            "backbone_kwargs": {k: list(v) for k, v in TINY.items()},
        }
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.warns(UserWarning, match="FeatureCross"):
        out = convert_weights(load_config(tmp_path / "cfg.yaml"), src, tmp_path / "ours.pth")
    sd = torch.load(out, weights_only=True)["state_dict"]
    assert not any(k.startswith(("fusion.", "backbone.feature_cross")) for k in sd)
    model = tiny_model(2, "pairwise", "sum")
    assert set(sd) == set(model.state_dict())
    load_checkpoint(model, out).eval()
    xs = inputs(2)
    with torch.no_grad():
        assert (model(batch_of(xs)) - ref(xs)).abs().max() < 1e-4


# --------------------------------------------------------------------------- model behaviour
def test_freeze_backbone_trains_adapters_fusion_head():
    model = tiny_model(3, "pairwise", "featurecross", freeze_backbone=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("adapters.", "fusion.", "decode_head.")) for n in trainable
    )
    assert not any(p.requires_grad for p in model.backbone.parameters())
    counts = model.param_counts()
    expected = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    assert counts["trainable"] == expected < counts["total"]
    model.train()
    out = model(batch_of(inputs(3, h=32, w=32)))
    out.mean().backward()
    assert model.adapters["block1"][0].adap_t_att12.adapter_down.weight.grad is not None
    assert model.backbone.patch_embed1.proj.weight.grad is None


def test_full_finetune_gradients_reach_every_part():
    model = tiny_model(2, "pairwise", "featurecross").train()
    model(batch_of(inputs(2, h=32, w=32))).square().mean().backward()
    for name in (
        "backbone.block1.0.attn.q.weight",
        "adapters.block4.0.adap_t_mlp12.adapter_up.weight",
        "fusion.2.proj.weight",
        "decode_head.linear_pred.weight",
    ):
        g = model.get_parameter(name).grad
        assert g is not None and g.abs().sum() > 0, name


@pytest.mark.parametrize("m", [1, 8])
def test_one_to_eight_modalities(m):
    model = tiny_model(m, "directional", "featurecross").eval()
    with torch.no_grad():
        out = model(batch_of(inputs(m, b=1, h=32, w=32)))
    assert out.shape == (1, K, 32, 32)
    if m == 1:
        assert model.adapter_param_count() == 0
    with pytest.raises(ValueError, match="1..8"):
        tiny_model(9)


def test_missing_zeros_mode_feeds_zero_images():
    """``missing="zeros"``: an absent key, a present-false flag and a zero image are the same."""
    model = tiny_model(3, "pairwise", "featurecross", missing="zeros").eval()
    xs = inputs(3, h=32, w=32)
    with torch.no_grad():
        zeros = model({"rgb": xs[0], "depth": torch.zeros_like(xs[1]), "event": xs[2]})
        absent = model({"rgb": xs[0], "event": xs[2]})
        present = torch.tensor([[True, False, True], [True, False, True]])
        masked = model({"rgb": xs[0], "depth": xs[1], "event": xs[2], "present": present})
    torch.testing.assert_close(absent, zeros)
    torch.testing.assert_close(masked, zeros)


@pytest.mark.parametrize("fusion", ["sum", "featurecross"])
def test_skip_and_zeros_differ_when_missing_and_agree_when_all_present(fusion):
    skip = tiny_model(3, "pairwise", fusion).eval()
    assert skip.missing == "skip"
    zeros = tiny_model(3, "pairwise", fusion, missing="zeros").eval()
    zeros.load_state_dict(skip.state_dict())
    xs = inputs(3, h=32, w=32)
    with torch.no_grad():
        assert torch.equal(skip(batch_of(xs)), zeros(batch_of(xs)))
        for gone in MODS[:3]:
            b = {k: v for k, v in batch_of(xs).items() if k != gone}
            assert (skip(b) - zeros(b)).abs().max() > 1e-3, gone


def _model_over(model: StitchFusionSegmentor, keep: list[int], **kw) -> StitchFusionSegmentor:
    """A StitchFusion over ``keep`` (indices into ``model.modalities``) with ``model``'s
    weights: the adapters among the kept streams renumbered, the FeatureCross projection
    restricted to their input columns, everything else as it is."""
    adapters = model.stage_adapters
    sub = tiny_model(len(keep), adapters, model.fusion_kind, **kw)
    sub.modalities = [model.modalities[i] for i in keep]  # same names as the big model
    src = model.state_dict()
    out = {}
    for k in sub.state_dict():
        mt = re.match(r"^(adapters\.block\d\.\d+\.adap_t_(?:att|mlp))(\d)(\d)(\..+)$", k)
        if mt:
            a, b = keep[int(mt.group(2)) - 1] + 1, keep[int(mt.group(3)) - 1] + 1
            out[k] = src[f"{mt.group(1)}{a}{b}{mt.group(4)}"]
        elif re.match(r"^fusion\.\d\.proj\.weight$", k):
            w = src[k]
            c = w.shape[0]
            out[k] = w.view(c, len(model.modalities), c)[:, keep].reshape(c, -1)
        else:
            out[k] = src[k]
    sub.load_state_dict(out)
    return sub.eval()


@pytest.mark.parametrize(
    "adapter, fusion, gone",
    [("pairwise", "featurecross", 1), ("directional", "sum", 0), ("shared", "sum", 2),
     ([None, "shared", "pairwise", "directional"], "featurecross", 0)],
)
def test_skipped_modality_equals_the_model_over_the_others(adapter, fusion, gone):
    """``missing="skip"``: 3 streams with one absent == the 2-stream model with the same
    encoder, the adapters among the 2 streams and FeatureCross's columns of those streams;
    a sample flagged absent in a mixed batch gets the same logits."""
    model = tiny_model(3, adapter, fusion).eval()
    keep = [i for i in range(3) if i != gone]
    sub = _model_over(model, keep)
    xs = inputs(3, h=32, w=64)
    names = MODS[:3]
    b_abs = {names[i]: xs[i] for i in keep}
    present = torch.ones(2, 3, dtype=torch.bool)
    present[0, gone] = False
    mixed = dict(batch_of(xs), present=present)
    with torch.no_grad():
        ref = sub(b_abs)
        torch.testing.assert_close(model(b_abs), ref, atol=1e-5, rtol=1e-4)
        out = model(mixed)
        torch.testing.assert_close(out[:1], ref[:1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out[1:], model(batch_of([x[1:] for x in xs])), atol=1e-5,
                                   rtol=1e-4)
        # the dropped stream matters when present: the check is not vacuous
        assert (model(batch_of(xs)) - ref).abs().max() > 1e-3


def test_skipped_stream_is_not_encoded():
    model = tiny_model(3, "pairwise", "sum").eval()
    seen = []
    hook = model.backbone.patch_embed1.register_forward_hook(
        lambda mod, args, out: seen.append(args[0].shape[0]))
    xs = inputs(3, h=32, w=32)
    with torch.no_grad():
        model({"rgb": xs[0], "event": xs[2]})
        model(dict(batch_of(xs), present=torch.tensor([[True, False, True]] * 2)))
        model(dict(batch_of(xs), present=torch.tensor([[True, False, True], [True, True, True]])))
    hook.remove()
    assert seen == [2 * 2, 2 * 2, 3 * 2]  # R streams x B samples


def test_skipped_stream_adapters_get_no_gradient_in_training():
    """Training with a modality absent: the adapters from and to it are not applied (no
    gradient); those among the present streams train. A mixed batch trains too."""
    model = tiny_model(3, "pairwise", "featurecross").train()
    xs = inputs(3, h=32, w=32)
    model({"rgb": xs[0], "event": xs[2]}).square().mean().backward()
    ad = model.adapters["block1"][0]
    assert ad.adap_t_att13.adapter_down.weight.grad is not None
    for name in ("adap_t_att12", "adap_t_att23", "adap_t_mlp12", "adap_t_mlp23"):
        assert getattr(ad, name).adapter_down.weight.grad is None, name
    model.zero_grad(set_to_none=True)
    present = torch.tensor([[True, False, True], [True, True, True]])
    model(dict(batch_of(xs), present=present)).square().mean().backward()
    g = ad.adap_t_att12.adapter_down.weight.grad
    assert g is not None and g.abs().sum() > 0


def test_stage_sum_over_present_streams_equals_manual_computation():
    """No adapters, sum fusion, ``skip``: each stage map is the sum over the sample's present
    streams of the shared encoder's maps."""
    model = tiny_model(3, None, "sum").eval()
    xs = inputs(3, b=3, h=32, w=32)
    present = torch.tensor([[True, True, True], [True, False, True], [False, True, False]])
    with torch.no_grad():
        x, streams, mask = model.streams_to_run(dict(batch_of(xs), present=present))
        assert streams is None and torch.equal(mask, present)
        feats = model.encode(x, streams, mask)
        per_stream = [model.backbone(x) for x in xs]
    for s, f in enumerate(feats):
        for i in range(3):
            expected = sum(per_stream[m][s][i] for m in range(3) if present[i, m])
            torch.testing.assert_close(f[i], expected, atol=1e-5, rtol=1e-4)


def test_sum_fusion_baseline_is_the_mean_over_present_modalities():
    """``sum_fusion``: stage maps = per-sample mean over the present modalities (sum / count),
    both encoder paths; with all present, the sum divided by M."""
    spec = {"name": "sum_fusion", "backbone": "mit_b0", "modalities": MODS[:3],
            "num_classes": K, "decoder_dim": 32, "backbone_kwargs": TINY}
    model = create_model(spec).eval()
    xs = inputs(3, b=3, h=32, w=32)
    present = torch.tensor([[True, True, True], [True, False, True], [False, True, False]])
    batch = dict(batch_of(xs), present=present)
    with torch.no_grad():
        per_stream = [model.backbone(x) for x in xs]
        for batched in (True, False):
            model.batch_modalities = batched
            feats = model.encode(model._modality_inputs(batch))
            full = model.encode(model._modality_inputs(batch_of(xs)))
            for s in range(4):
                for i in range(3):
                    ms = [m for m in range(3) if present[i, m]]
                    expected = sum(per_stream[m][s][i] for m in ms) / len(ms)
                    torch.testing.assert_close(feats[s][i], expected, atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(
                    full[s], sum(p[s] for p in per_stream) / 3, atol=1e-5, rtol=1e-4)
            # the logits of the missing samples equal those with the keys absent
            out = model(batch)
            torch.testing.assert_close(
                out[1:2], model({"rgb": xs[0][1:2], "event": xs[2][1:2]}), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(
                out[2:3], model({"depth": xs[1][2:3]}), atol=1e-5, rtol=1e-4)


def test_multiadapter_skipping_a_stream_equals_masking_its_messages():
    """Rows skipped by ``streams`` == rows whose messages are masked by ``present``, for the
    other rows; a masked source sends nothing."""
    torch.manual_seed(0)
    for density in ("shared", "pairwise", "directional"):
        ad = MultiAdapter(8, 4, density, dropout=0.0).eval()
        for p in ad.parameters():
            torch.nn.init.normal_(p, std=0.5)
        norm = torch.nn.LayerNorm(8)
        x = torch.randn(4, 2, 5, 8)
        present = torch.ones(2, 4, dtype=torch.bool)
        present[1, 2] = False
        masked = ad(x, "mlp", norm, torch.nn.Identity(), present=present)
        skipped = ad(x[[0, 1, 3]], "mlp", norm, torch.nn.Identity(), streams=[0, 1, 3])
        torch.testing.assert_close(masked[[0, 1, 3], 1], skipped[:, 1])
        full = ad(x, "mlp", norm, torch.nn.Identity())
        torch.testing.assert_close(masked[:, 0], full[:, 0])
        assert (full[[0, 1, 3], 1] - skipped[:, 1]).abs().max() > 1e-3, density
        # manual: only the kept streams, in order, with their own adapters
        s = [x[j, 1:] for j in (0, 1, 3)]
        idx = [0, 1, 3]
        for a in range(3):
            src = norm(s[a])
            for b in range(3):
                if b != a:
                    s[b] = s[b] + ad.adapter("mlp", idx[a], idx[b])(src)
        torch.testing.assert_close(skipped[:, 1:], torch.stack(s))
    with pytest.raises(ValueError, match="increasing"):
        ad(x[:2], "att", norm, torch.nn.Identity(), streams=[1, 0])
    with pytest.raises(ValueError, match=r"present must be bool\[2, 4\]"):
        ad(x, "att", norm, torch.nn.Identity(), present=present[:, :3])


def test_one_channel_modality_is_repeated():
    model = tiny_model(2).eval()
    d = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        a = model({"rgb": torch.ones(1, 3, 32, 32), "depth": d})
        b = model({"rgb": torch.ones(1, 3, 32, 32), "depth": d.expand(-1, 3, -1, -1)})
    torch.testing.assert_close(a, b)


def test_bad_options():
    with pytest.raises(ValueError, match="density"):
        tiny_model(2, "dense")
    with pytest.raises(ValueError, match="4"):
        tiny_model(2, ["pairwise", "pairwise"])
    with pytest.raises(ValueError, match="fusion"):
        tiny_model(2, fusion="concat")
    with pytest.raises(ValueError, match="unknown missing mode 'drop'"):
        tiny_model(2, missing="drop")
    with pytest.raises(ValueError, match="unknown option 'adaptor'"):
        create_model({"name": "stitchfusion", "num_classes": 3, "adaptor": "pairwise"})


def test_wrong_typed_option_in_a_config_is_one_line_naming_it():
    with pytest.raises(ConfigError, match=r"model 'stitchfusion': adapter_hidden: .*valid "
                       r"integer.*'wide'.*Valid options: .*adapter_hidden: int") as err:
        config_from_dict({"model": {"name": "stitchfusion", "adapter_hidden": "wide"}})
    assert "\n" not in str(err.value)


def test_options_declare_the_adapter_densities_and_keep_the_old_spellings():
    assert get_args(Density) == ADAPTER_DENSITIES
    o = StitchFusionOptions(num_classes=3, adapter=["none", "", None, "shared"])
    assert o.adapter == (None, None, None, "shared")
    assert o.stage_densities() == [None, None, None, "shared"]
    assert StitchFusionOptions(num_classes=3, adapter="none").stage_densities() == [None] * 4
    assert StitchFusionOptions(num_classes=3).stage_densities() == ["pairwise"] * 4


# --------------------------------------------------------------------------- configs
CONFIGS = sorted((ROOT / "configs" / "stitchfusion").glob("*.yaml")) + [
    ROOT / "configs" / "synthcity" / "stitchfusion.yaml",
    ROOT / "configs" / "synthcity" / "sum_fusion.yaml",
]


def test_recipe_configs_cover_the_published_runs():
    names = {p.stem for p in CONFIGS}
    assert {
        "deliver_rgbd",
        "deliver_rgbe",
        "deliver_rgbl",
        "deliver_rgbde",
        "deliver_rgbdl",
        "deliver_rgbdel",
        "mcubes_rgbadn",
        "mfnet_rgbt",
        "fmb_rgbt",
        "nyudv2_rgbd",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_validates_and_builds(path):
    cfg = load_config(path)
    assert cfg.data.dataset in list_datasets()
    spec = cfg.model.to_dict()
    spec.update(pretrained=None, backbone_kwargs=TINY)
    if spec.get("num_classes") is None:
        spec["num_classes"] = 25
    model = create_model(spec)
    if path.parent.name == "stitchfusion":
        assert cfg.train.loss["name"] == "ohem" and cfg.train.head_lr_mult == 1.0
        assert cfg.train.warmup_epochs == 10 and cfg.seed == 3407
        assert cfg.data.scale_range == (0.5, 2.0) and cfg.eval.miou == "zero"
        assert isinstance(model, StitchFusionSegmentor)
    if path.stem == "stitchfusion_deliver_rgbdel" or path.stem == "deliver_rgbdel":
        assert model.stage_adapters == [None, None, "pairwise", "pairwise"]
    if path.stem == "mcubes_rgbadn":
        assert model.fusion_kind == "featurecross" and len(model.modalities) == 4


# --------------------------------------------------------------------------- CLI
def test_cli_train_eval_released_and_converted(tmp_path):
    """``fusionseg train`` prints the parameter counts; ``fusionseg eval --ckpt`` takes both a
    released file and its ``fusionseg weights convert`` output, with the same result."""
    from fixtures.deliver_tree import make_deliver_tree
    from typer.testing import CliRunner

    from fusionseg.cli import app

    runner = CliRunner()
    root = tmp_path / "deliver"
    make_deliver_tree(root, conditions=("cloud",), per_split=2, size=32)
    model = {
        "name": "stitchfusion",
        "backbone": "mit_b0",
        "modalities": ["rgb", "hha"],
        "adapter": "pairwise",
        "fusion": "featurecross",
        "decoder_dim": 32,
        "backbone_kwargs": {k: list(v) for k, v in TINY.items()},
    }
    cfg = {
        "name": "sf_tiny",
        "model": model,
        "data": {
            "dataset": "deliver",
            "root": str(root),
            "crop_size": [32, 32],
            "batch_size": 2,
            "val_batch_size": 2,
            "num_workers": 0,
        },
        "train": {
            "max_epochs": 1,
            "max_steps": 1,
            "lr": 1e-3,
            "progress": False,
            "out_dir": str(tmp_path / "runs"),
            "log_every_n_steps": 1,
        },
    }
    path = tmp_path / "sf.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["train", str(path), "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "M parameters" in res.output and "trainable" in res.output

    ref = StitchFusionRelease(
        25,
        2,
        ("pairwise",) * 4,
        "featurecross",
        embed_dims=TINY["embed_dims"],
        depths=TINY["depths"],
        heads=TINY["num_heads"],
        decoder_dim=32,
    )
    torch.save(randomize_(ref, 2).state_dict(), tmp_path / "released.pth")
    miou = []
    for ckpt in ("released.pth", "converted.pth"):
        if ckpt == "converted.pth":
            res = runner.invoke(
                app,
                [
                    "weights",
                    "convert",
                    str(tmp_path / "released.pth"),
                    str(tmp_path / ckpt),
                    "--config",
                    str(path),
                ],
            )
            assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["eval", str(path), "--ckpt", str(tmp_path / ckpt)])
        assert res.exit_code == 0, res.output
        out = json.loads(next((tmp_path).glob(f"{Path(ckpt).stem}_eval_*.json")).read_text())
        miou.append(out["overall"]["mIoU"])
    assert miou[0] == pytest.approx(miou[1], abs=1e-6)


def test_released_checkpoint_initialises_a_model_with_other_classes(tmp_path):
    """train.init_from with the authors' file and a user's own class count: everything but
    the classifier comes from the release (the logits before it are the release's)."""
    from fusionseg.models import init_from_checkpoint

    ref = release_model(2, ("pairwise",) * 4, "featurecross")
    torch.save(ref.state_dict(), tmp_path / "released.pth")
    model = tiny_model(2, "pairwise", "featurecross", num_classes=K + 2)
    report = init_from_checkpoint(model, tmp_path / "released.pth")
    assert report.checkpoint_classes == K
    assert [k for k, _, _ in report.reinitialised] == ["decode_head.linear_pred.weight",
                                                       "decode_head.linear_pred.bias"]
    released = tiny_model(2, "pairwise", "featurecross")
    load_checkpoint(released, tmp_path / "released.pth")
    ours, theirs = model.state_dict(), released.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in theirs.items()
               if not k.startswith("decode_head.linear_pred"))
