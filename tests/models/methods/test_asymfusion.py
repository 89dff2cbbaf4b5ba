"""AsymFusion, the model (``methods/asymfusion/model.py``, ``release.py``): release equivalence
(tests/reference/asymfusion_release.py), single-stream path, loss route, frozen BN statistics,
options and bad input. The fusion operators alone (shift-shuffle, per-modality BatchNorm, the
fused bottleneck) are tested in test_asymfusion_fusion.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference.asymfusion_release import AsymFusionRelease, randomize_

from fusionseg.engine.losses import SegmentationCriterion
from fusionseg.errors import ConfigError
from fusionseg.models import SegmentationOutput, create_model, load_checkpoint
from fusionseg.models.methods.asymfusion.model import AsymFusionSegmentor

K = 40
BB = {"layers": [2, 2, 2, 2], "width": 8}


def ours(seed=0, **kw) -> AsymFusionSegmentor:
    torch.manual_seed(seed)
    return create_model({"name": "asymfusion", "backbone": "resnet50",
                         "modalities": ["rgb", "depth"], "num_classes": K, "backbone_kwargs": BB,
                         "decoder_channels": kw.pop("decoder_channels", 256), **kw})


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    ref = randomize_(AsymFusionRelease(K, layers=(2, 2, 2, 2), width=8)).eval()
    path = tmp_path_factory.mktemp("asym") / "model.pth"
    torch.save({"state_dict": ref.state_dict()}, path)
    return ref, path


def test_released_weights_give_released_logits(released):
    ref, path = released
    model = load_checkpoint(ours(seed=3), path).eval()
    g = torch.Generator().manual_seed(1)
    rgb, depth = torch.randn(2, 3, 64, 96, generator=g), torch.randn(2, 3, 64, 96, generator=g)
    with torch.no_grad():
        outs, _ = ref([rgb, depth])
        got = model.stream_logits({"rgb": rgb, "depth": depth})

        def up(t):  # the release stops at 1/4 scale
            return F.interpolate(t, size=(64, 96), mode="bilinear", align_corners=False)

        for name, r in (("rgb", outs[0]), ("depth", outs[1]), ("ensemble", outs[2])):
            expect = up(r)
            assert (got[name] - expect).abs().max() < 1e-4 * expect.abs().max(), name
        torch.testing.assert_close(model({"rgb": rgb, "depth": depth}), got["ensemble"])
    assert AsymFusionSegmentor.is_released_format(ref.state_dict())
    assert AsymFusionSegmentor.infer_num_classes(ref.state_dict()) == K


def test_one_modality_runs_as_a_single_stream_with_its_own_bn():
    model = ours().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        only_depth = model({"depth": x})
        # the same as a one-stream model holding the depth BNs
        single = create_model({"name": "asymfusion", "backbone": "resnet50",
                               "modalities": ["depth"], "num_classes": K, "backbone_kwargs": BB})
        sd = {k.replace("bn_1", "bn_0"): v for k, v in model.state_dict().items()
              if "bn_0" not in k}
        sd["alpha"] = sd["alpha"][:1]
        single.load_state_dict(sd)
        torch.testing.assert_close(only_depth, single.eval()({"depth": x}))
        flagged = model({"rgb": torch.randn(1, 3, 64, 64), "depth": x,
                         "present": torch.tensor([[False, True]])})
        torch.testing.assert_close(only_depth, flagged)


def test_training_output_sums_stream_and_ensemble_nll_and_keeps_bn_stats():
    model = ours().train()
    bn = model.backbone.bn1.bn_0
    before = bn.running_mean.clone()
    batch = {"rgb": torch.randn(2, 3, 64, 64), "depth": torch.randn(2, 1, 64, 64),
             "label": torch.randint(0, K, (2, 64, 64))}
    out = model(batch)
    assert isinstance(out, SegmentationOutput)
    assert set(out.aux) == {"stream_rgb", "stream_depth"}
    assert all(a.weight == 1.0 and a.loss == {"name": "ce"} for a in out.aux.values())
    total, terms = SegmentationCriterion("ce")(out, batch["label"])
    torch.testing.assert_close(total, terms["main"] + terms["stream_rgb"] + terms["stream_depth"])
    total.backward()
    assert torch.equal(bn.running_mean, before) and not bn.training
    assert model.alpha.grad is not None and model.backbone.conv1.weight.grad is not None


def test_mixed_presence_runs_per_pattern_and_masks_stream_losses():
    model = ours().train()
    label = torch.randint(0, K, (3, 64, 64))
    batch = {"rgb": torch.randn(3, 3, 64, 64), "depth": torch.randn(3, 1, 64, 64),
             "present": torch.tensor([[True, False], [True, True], [False, True]]),
             "label": label}
    out = model(batch)
    depth_t, rgb_t = out.aux["stream_depth"].target, out.aux["stream_rgb"].target
    assert (depth_t[0] == 255).all() and torch.equal(depth_t[1:], label[1:])
    assert (rgb_t[2] == 255).all() and torch.equal(rgb_t[:2], label[:2])
    assert not out.aux["stream_depth"].logits[0].any()  # no depth stream for sample 0
    with torch.no_grad():
        model.eval()
        mixed = model(batch)
        alone = model({"depth": batch["depth"][2:]})
    torch.testing.assert_close(mixed[2:], alone)


def test_shift_shuffle_switch_and_bad_input():
    x = {"rgb": torch.randn(1, 3, 64, 64), "depth": torch.randn(1, 3, 64, 64)}
    a, b = ours().eval(), ours(shift_shuffle=False).eval()
    assert a.param_counts() == b.param_counts()  # the fusion adds no parameters
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))
    with pytest.raises(ValueError, match="one or two modalities"):
        ours(modalities=["rgb", "depth", "thermal"])


def test_wrong_typed_option_fails_in_one_line_naming_it():
    with pytest.raises(ConfigError) as err:
        create_model({"name": "asymfusion", "num_classes": K, "decoder_channels": "wide"})
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("model 'asymfusion': decoder_channels: ") and "'wide'" in msg
    with pytest.raises(ConfigError, match=r"^model 'asymfusion': shift_shuffle: .*'maybe'"):
        AsymFusionSegmentor(num_classes=K, shift_shuffle="maybe")


def test_released_key_conversion_keeps_our_keys():
    """``checkpoint_filter_fn`` renames the release's keys (``.module`` dropped, encoder under
    ``backbone.``, decoder under ``decode_head.``) and gives our own state dict back as is."""
    t = torch.zeros(1)
    got = AsymFusionSegmentor.checkpoint_filter_fn({
        "conv1.module.weight": t, "bn1.bn_1.weight": t, "layer2.0.conv1.module.weight": t,
        "layer2.0.downsample.0.module.weight": t,
        "mflow_conv_g3_pool.0.1_outvar_dimred.module.weight": t,
        "clf_conv.module.bias": t, "alpha": t})
    assert list(got) == ["backbone.conv1.weight", "backbone.bn1.bn_1.weight",
                         "backbone.layer2.0.conv1.weight", "backbone.layer2.0.downsample.0.weight",
                         "decode_head.mflow_conv_g3_pool.0.1_outvar_dimred.weight",
                         "decode_head.clf_conv.bias",
                         "alpha"]
    sd = ours(decoder_channels=16).state_dict()
    assert not AsymFusionSegmentor.is_released_format(sd)
    assert list(AsymFusionSegmentor.checkpoint_filter_fn(sd)) == list(sd)


def test_eval_reports_every_stream_and_the_ensemble(released, tmp_path):
    import json

    import yaml
    from fixtures.deliver_tree import make_deliver_tree
    from typer.testing import CliRunner

    from fusionseg.cli import app

    root = tmp_path / "deliver"
    make_deliver_tree(root, conditions=("cloud",), per_split=2, size=64)
    _, path = released
    cfg = {"name": "af", "model": {"name": "asymfusion", "backbone": "resnet50",
                                   "modalities": ["rgb", "depth"], "num_classes": 25,
                                   "backbone_kwargs": BB},
           "data": {"dataset": "deliver", "root": str(root), "num_workers": 0,
                    "val_batch_size": 2}}
    (tmp_path / "af.yaml").write_text(yaml.safe_dump(cfg))
    model = ours(num_classes=25)
    torch.save(model.state_dict(), tmp_path / "af.pth")
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "af.yaml"), "--ckpt",
                                   str(tmp_path / "af.pth"), "--missing", "all"])
    assert res.exit_code == 0, res.output
    assert "per output" in res.output and "ensemble" in res.output
    out = json.loads((tmp_path / "af_eval_val.json").read_text())
    assert set(out["outputs"]) == {"rgb", "depth", "ensemble"}
    assert out["outputs"]["ensemble"]["mIoU"] == pytest.approx(out["overall"]["mIoU"])
    assert set(out["missing"]) == {"rgb+depth", "rgb", "depth"}


def test_release_saver_file_loads(released, tmp_path):
    """The file the release's ``Saver`` writes (``{'segmenter': state_dict, 'epoch_start',
    'best_val'}``, DataParallel ``module.`` keys, ``best_val`` a numpy float) loads like the
    plain state dict."""
    import numpy as np

    ref, path = released
    saver = tmp_path / "model-best.pth.tar"
    torch.save({"segmenter": {f"module.{k}": v for k, v in ref.state_dict().items()},
                "epoch_start": 12, "best_val": np.float64(40.5)}, saver)
    a, b = load_checkpoint(ours(seed=1), path), load_checkpoint(ours(seed=2), saver)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_eval_upsample_bicubic_only_outside_training():
    """``eval_upsample="bicubic"``: the 1/4-scale logits reach input size by torch's bicubic
    (the release's cv2 INTER_CUBIC at evaluation) in eval mode, bilinear in training."""
    bil, bic = ours(seed=0).eval(), ours(seed=0, eval_upsample="bicubic").eval()
    x = {"rgb": torch.randn(1, 3, 64, 64), "depth": torch.randn(1, 3, 64, 64)}
    seen = {}
    bic.decode_head.register_forward_hook(lambda m, i, o: seen.update(low=o))
    with torch.no_grad():
        got = bic.stream_logits(x)
        low = seen["low"].chunk(2)[0]
        torch.testing.assert_close(got["rgb"], F.interpolate(low, size=(64, 64), mode="bicubic",
                                                             align_corners=False))
        assert not torch.allclose(got["ensemble"], bil(x))
        torch.manual_seed(0)
        t1 = bic.train()(x).logits
        torch.manual_seed(0)
        t2 = bil.train()(x).logits
    torch.testing.assert_close(t1, t2)
    with pytest.raises(ValueError, match="eval_upsample"):
        ours(eval_upsample="nearest")


def test_output_names_list_every_scored_output():
    """eval scores what ``output_names`` lists (engine knows no method): AsymFusion's streams
    and the ensemble; single-output segmentors list none."""
    model = ours(seed=0).eval()
    assert model.output_names() == [*model.modalities, "ensemble"]
    batch = {m: torch.randn(1, 3, 32, 32) for m in model.modalities}
    with torch.no_grad():
        out = model.named_outputs(batch)
        torch.testing.assert_close(out["ensemble"], model(batch))
    from fusionseg.models import create_model
    from fusionseg.models.methods.baselines.model import SUM_FUSION_TINY

    plain = create_model({"name": "sum_fusion", **SUM_FUSION_TINY})
    assert plain.output_names() == []
    with pytest.raises(NotImplementedError):
        plain.named_outputs(batch)
