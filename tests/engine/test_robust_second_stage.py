"""Issue 22: starting a run from a trained model, the robust second stage (a frozen teacher,
subset sampling, logit and feature distillation), the presence-aware gate and per-modality
auxiliary outputs. Known answers computed by hand, not the code against itself."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY_MIT as TINY  # noqa: E402
from conftest import tiny_run_cfg  # noqa: E402
from fixtures.deliver_tree import make_deliver_tree  # noqa: E402

from fusionseg.engine.losses import SegmentationCriterion  # noqa: E402
from fusionseg.engine.masking import sample_modality_subsets  # noqa: E402
from fusionseg.engine.robust_training import (  # noqa: E402
    FeatureTap,
    RobustTraining,
    feature_distillation,
)
from fusionseg.errors import ConfigError  # noqa: E402
from fusionseg.models import (  # noqa: E402
    AuxiliaryLogits,
    CheckpointMismatchError,
    SegmentationOutput,
    create_model,
    init_from_checkpoint,
)
from fusionseg.models.fusion.presence_gate import PresenceGate  # noqa: E402

MODS = ["rgb", "depth", "thermal"]


def tiny_sum_fusion(num_classes=3, **kw):
    return create_model({"name": "sum_fusion", "backbone": "mit_b0", "modalities": MODS,
                         "num_classes": num_classes, "decoder_dim": 16,
                         "backbone_kwargs": TINY, **kw})


# ----------------------------------------------------------------------------- init_from
def test_init_reinitialises_only_the_classifier_when_the_class_count_differs(tmp_path):
    torch.manual_seed(0)
    src = tiny_sum_fusion(num_classes=3)
    torch.save({"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()},
                "fusionseg_classes": ["a", "b", "c"]}, tmp_path / "best.ckpt")
    torch.manual_seed(1)
    dst = tiny_sum_fusion(num_classes=5)
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    report = init_from_checkpoint(dst, tmp_path / "best.ckpt")
    assert report.checkpoint_classes == 3
    assert [k for k, _, _ in report.reinitialised] == ["decode_head.linear_pred.weight",
                                                       "decode_head.linear_pred.bias"]
    assert report.reinitialised[0][1:] == ((3, 16, 1, 1), (5, 16, 1, 1))
    for k, v in dst.state_dict().items():
        expected = fresh[k] if k.startswith("decode_head.linear_pred") else src.state_dict()[k]
        torch.testing.assert_close(v, expected, rtol=0, atol=0, msg=k)
    assert "3 classes in the checkpoint" in report.lines()[0]


def test_init_is_strict_about_everything_else(tmp_path):
    src = tiny_sum_fusion().state_dict()
    torch.save({"state_dict": {k: v for k, v in src.items() if "block1.0" not in k}},
               tmp_path / "missing.pth")
    torch.save({"state_dict": {**src, "extra.weight": torch.zeros(1)}}, tmp_path / "extra.pth")
    for name in ("missing.pth", "extra.pth"):
        m = tiny_sum_fusion()
        before = {k: v.clone() for k, v in m.state_dict().items()}
        with pytest.raises(CheckpointMismatchError):
            init_from_checkpoint(m, tmp_path / name)
        for k, v in m.state_dict().items():  # nothing loaded
            assert torch.equal(v, before[k]), k


def test_a_gated_model_starts_from_a_mean_model_with_the_same_output(tmp_path):
    torch.manual_seed(0)
    mean = tiny_sum_fusion().eval()
    torch.save(mean.state_dict(), tmp_path / "mean.pth")
    gated = tiny_sum_fusion(reduce="gate").eval()
    report = init_from_checkpoint(gated, tmp_path / "mean.pth")
    assert report.new_keys and all(k.startswith("fusion_gates.") for k in report.new_keys)
    torch.manual_seed(2)
    batch = {m: torch.randn(2, 3, 32, 32) for m in MODS}
    batch["present"] = torch.tensor([[True, False, True], [True, True, True]])
    with torch.no_grad():
        torch.testing.assert_close(gated(batch), mean(batch), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the gate
def test_presence_gate_weights_present_streams_by_softmax_of_their_scores():
    gate = PresenceGate(channels=2, num_modalities=3)
    with torch.no_grad():
        gate.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
        gate.bias.copy_(torch.tensor([0.0, math.log(3.0), 0.0]))
    # stream 0: constant (2, 5) -> score 2; stream 1: (7, 1), score log 3; stream 2: NaN, absent
    feats = torch.stack([torch.tensor([2.0, 5.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2),
                         torch.tensor([7.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2),
                         torch.full((1, 2, 2, 2), float("nan"))])
    present = torch.tensor([[True], [True], [False]])
    out = gate(feats, present)
    a0 = math.exp(2) / (math.exp(2) + 3)
    expected = torch.tensor([a0 * 2 + (1 - a0) * 7, a0 * 5 + (1 - a0) * 1])
    torch.testing.assert_close(out[0, :, 0, 0], expected)
    torch.testing.assert_close(gate.last_weights[0, :, 0, 0], torch.tensor([a0, 1 - a0, 0.0]))


def test_presence_gate_index_selects_the_modality_rows_and_starts_as_the_mean():
    gate = PresenceGate(channels=1, num_modalities=3)
    feats = torch.tensor([1.0, 4.0]).view(2, 1, 1, 1, 1)
    torch.testing.assert_close(gate(feats, None, index=[0, 2])[0, 0, 0, 0], torch.tensor(2.5))
    with torch.no_grad():
        gate.bias.copy_(torch.tensor([0.0, 100.0, math.log(3.0)]))  # row 1 is not used
    # weights 1/4, 3/4 on streams 0 and 2
    torch.testing.assert_close(gate(feats, None, index=[0, 2])[0, 0, 0, 0], torch.tensor(3.25))
    gate.zero_grad()
    gate(feats, None, index=[0, 2]).sum().backward()
    assert gate.bias.grad[1] == 0 and gate.bias.grad[2] != 0 and gate.weight.grad[2, 0] != 0


def test_sum_fusion_gate_ignores_an_absent_stream_even_when_it_is_nan():
    torch.manual_seed(0)
    model = tiny_sum_fusion(reduce="gate").eval()
    with torch.no_grad():
        for g in model.fusion_gates:
            g.weight.normal_()
    batch = {m: torch.randn(2, 3, 32, 32) for m in MODS}
    without = {k: v for k, v in batch.items() if k != "depth"}
    batch["depth"] = torch.full((2, 3, 32, 32), float("nan"))
    batch["present"] = torch.tensor([[True, False, True]] * 2)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(without), atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------- unimodal supervision
def test_modality_aux_outputs_decode_each_stream_and_mask_absent_samples():
    torch.manual_seed(0)
    model = tiny_sum_fusion(modality_aux=0.3).eval()
    model.training = True  # the segmentor's training output; its parts stay deterministic
    batch = {m: torch.randn(2, 3, 32, 32) for m in MODS}
    batch["present"] = torch.tensor([[True, False, True], [True, True, False]])
    out = model(batch)
    assert sorted(out.aux) == ["modality_depth", "modality_rgb", "modality_thermal"]
    assert out.aux["modality_rgb"].sample_mask is None and out.aux["modality_rgb"].weight == 0.3
    assert out.aux["modality_depth"].sample_mask.tolist() == [False, True]
    # the aux output of a stream is the decode head on that stream alone
    model.eval()
    with torch.no_grad():
        alone = model({"rgb": batch["rgb"]})
        head = torch.nn.functional.interpolate(out.aux["modality_rgb"].logits, size=(32, 32),
                                               mode="bilinear", align_corners=False)
    torch.testing.assert_close(head, alone, atol=1e-5, rtol=1e-4)


def test_criterion_counts_an_aux_output_only_on_its_samples():
    crit = SegmentationCriterion("ce", ignore_index=255)
    label = torch.tensor([[[0]], [[1]]])
    main = torch.zeros(2, 2, 1, 1)
    aux_logits = torch.tensor([[10.0, 0.0], [10.0, 0.0]]).view(2, 2, 1, 1)  # right, wrong
    out = SegmentationOutput(main, aux={"a": AuxiliaryLogits(
        aux_logits, 1.0, sample_mask=torch.tensor([True, False]))})
    _, terms = crit(out, label)
    expected = torch.nn.functional.cross_entropy(aux_logits[:1], label[:1])
    torch.testing.assert_close(terms["a"], expected)


# ----------------------------------------------------------------------------- sampling
def test_uniform_subset_size_sampling():
    g = torch.Generator().manual_seed(0)
    present = torch.ones(6000, 3, dtype=torch.bool)
    present[:1000, 2] = False  # these samples have two modalities
    keep = sample_modality_subsets(present, None, g)
    assert not (keep & ~present).any() and keep.any(1).all()
    sizes3 = keep[1000:].sum(1)
    for k in (1, 2, 3):  # subset size uniform on {1, 2, 3}
        assert abs((sizes3 == k).float().mean().item() - 1 / 3) < 0.03
    assert abs((keep[1000:, 0]).float().mean().item() - 2 / 3) < 0.03  # each modality 2/3
    assert abs((keep[:1000].sum(1) == 2).float().mean().item() - 1 / 2) < 0.06


def test_full_share_keeps_the_full_set_that_often_and_proper_subsets_otherwise():
    g = torch.Generator().manual_seed(1)
    keep = sample_modality_subsets(torch.ones(4000, 3, dtype=torch.bool), 0.25, g)
    full = keep.all(1)
    assert abs(full.float().mean().item() - 0.25) < 0.03
    sizes = keep[~full].sum(1)
    assert set(sizes.tolist()) == {1, 2}
    rt = RobustTraining(MODS, 0.5, rect_prob=0.0, full_share=0.6)
    keep = rt.sample_keep(torch.ones(4000, 3, dtype=torch.bool), g)
    # full with 0.6 + 0.4 * (1 - 0.5)^3
    assert abs(keep.all(1).float().mean().item() - (0.6 + 0.4 * 0.125)) < 0.03
    with pytest.raises(ConfigError):
        sample_modality_subsets(torch.ones(1, 3, dtype=torch.bool), 1.5)
    with pytest.raises(ConfigError):
        RobustTraining(MODS, sampling="random")


# ------------------------------------------------------------------------- distillation
def test_distillation_kl_direction_masking_and_gradient():
    rt = RobustTraining(MODS, consistency_weight=2.0, temperature=1.0, ignore_index=255,
                        distill=True)
    teacher = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1).expand(1, 2, 1, 2).clone()
    student = torch.zeros(1, 2, 1, 2, requires_grad=True)
    label = torch.tensor([[[0, 255]]])
    loss = rt.distillation_loss(student, teacher, label)
    # KL(teacher || student) = 3/4 log(3/4 / 1/2) + 1/4 log(1/4 / 1/2) on the one valid pixel
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    torch.testing.assert_close(loss, torch.tensor(2.0 * kl))
    swapped = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert abs(loss.item() - 2.0 * swapped) > 1e-3
    loss.backward()
    assert student.grad[..., 1].abs().sum() == 0  # the ignored pixel gets nothing
    # the student's probability of class 0 must rise towards the teacher's 3/4
    assert student.grad[0, 0, 0, 0] < 0 < student.grad[0, 1, 0, 0]


def test_feature_distillation_is_the_mean_of_per_level_mse():
    s = [torch.zeros(1, 1, 2, 2), torch.ones(1, 2, 1, 1)]
    t = [torch.full((1, 1, 2, 2), 2.0), torch.ones(1, 2, 1, 1)]
    torch.testing.assert_close(feature_distillation(s, t), torch.tensor((4.0 + 0.0) / 2))
    with pytest.raises(ValueError):
        feature_distillation(s, t[:1])


def test_feature_tap_records_the_decode_head_input_of_the_first_call():
    model = tiny_sum_fusion().eval()
    batch = {m: torch.randn(1, 3, 32, 32) for m in MODS}
    with torch.no_grad(), FeatureTap(model) as tap:
        model(batch)
        fused = model.encode(model._modality_inputs(batch))
    assert [f.shape for f in tap.value] == [f.shape for f in fused]
    for a, b in zip(tap.value, fused, strict=True):
        torch.testing.assert_close(a, b)
    assert not model.decode_head._forward_pre_hooks  # removed on exit


# ------------------------------------------------------------------ the run, end to end
_cfg = tiny_run_cfg


def test_second_stage_run_distils_from_a_frozen_teacher(tmp_path):
    from fusionseg.engine.runner import train

    root = tmp_path / "deliver"
    make_deliver_tree(root, conditions=("cloud",), per_split=2, size=32)
    first = train(_cfg(tmp_path, root), run_dir=tmp_path / "first")
    teacher_sd = torch.load(first["best_ckpt"], weights_only=True)["state_dict"]
    cfg = _cfg(tmp_path, root, init_from=str(first["best_ckpt"]), log_every_n_steps=1, robust={
        "teacher": "init", "sampling": "uniform", "full_share": 0.5, "rect_prob": 0.0,
        "feature_weight": 1.0})
    second = train(cfg, run_dir=tmp_path / "second")
    ckpt = torch.load(second["last_ckpt"], weights_only=True)
    assert set(ckpt["state_dict"]) == set(teacher_sd)  # the teacher is not saved
    changed = [k for k, v in ckpt["state_dict"].items() if not torch.equal(v, teacher_sd[k])]
    assert changed  # the student trained
    rows = (tmp_path / "second" / "csv").rglob("metrics.csv")
    text = "".join(p.read_text() for p in rows)
    assert "train/loss_distill" in text and "train/loss_distill_feature" in text


def test_teacher_init_needs_init_from(tmp_path):
    with pytest.raises(ValueError, match="needs train.init_from"):
        _cfg(tmp_path, tmp_path, robust={"teacher": "init"})


def test_stitchfusion_gate_starts_as_the_release_sum_over_present_streams(tmp_path):
    cfg = {"name": "stitchfusion", "backbone": "mit_b0", "modalities": MODS, "num_classes": 3,
           "decoder_dim": 16, "backbone_kwargs": TINY}
    torch.manual_seed(0)
    summed = create_model(cfg).eval()
    torch.save(summed.state_dict(), tmp_path / "sf.pth")
    gated = create_model({**cfg, "fusion": "gate"}).eval()
    assert init_from_checkpoint(gated, tmp_path / "sf.pth").new_keys
    batch = {m: torch.randn(2, 3, 32, 32) for m in MODS}
    batch["present"] = torch.tensor([[True, False, True], [True, True, True]])
    with torch.no_grad():
        torch.testing.assert_close(gated(batch), summed(batch), atol=1e-5, rtol=1e-5)
        for g in gated.fusion_gates:  # a trained gate: the stage map is n * a weighted mean
            g.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
        assert not torch.allclose(gated(batch), summed(batch), atol=1e-3)


def test_stitchfusion_modality_aux_decodes_each_stream_where_present():
    cfg = {"name": "stitchfusion", "backbone": "mit_b0", "modalities": MODS, "num_classes": 3,
           "decoder_dim": 16, "backbone_kwargs": TINY, "modality_aux": 0.5}
    torch.manual_seed(0)
    model = create_model(cfg).eval()
    model.training = True  # the training output; dropout and drop path stay off
    batch = {m: torch.randn(2, 3, 32, 32) for m in MODS}
    batch["present"] = torch.tensor([[True, False, True], [True, True, False]])
    out = model(batch)
    assert sorted(out.aux) == ["modality_depth", "modality_rgb", "modality_thermal"]
    assert out.aux["modality_depth"].sample_mask.tolist() == [False, True]
    assert out.aux["modality_rgb"].weight == 0.5
    # with one stream, the adapters exchange nothing: its aux output is the model on it alone
    model.training = False
    with torch.no_grad():
        alone = model({"rgb": batch["rgb"]})
        one = create_model(cfg).eval()
        one.load_state_dict(model.state_dict())
        one.training = True
        head = one({"rgb": batch["rgb"]}).aux["modality_rgb"].logits
    up = torch.nn.functional.interpolate(head, size=(32, 32), mode="bilinear",
                                         align_corners=False)
    torch.testing.assert_close(up, alone, atol=1e-5, rtol=1e-4)


def test_gate_parameters_get_their_own_learning_rate_group():
    model = tiny_sum_fusion(reduce="gate", gate_lr_mult=100)
    groups = model.param_groups(1e-4, 0.01, head_lr_mult=2.0)
    by_name = {g["name"]: g for g in groups}
    gate_ids = {id(p) for p in model.fusion_gates.parameters()}
    assert {id(p) for p in by_name["scaled_100"]["params"]} == gate_ids
    assert by_name["scaled_100"]["lr"] == pytest.approx(1e-4 * 2.0 * 100)
    assert by_name["scaled_100"]["weight_decay"] == 0.0
    others = [id(p) for g in groups if g["name"] != "scaled_100" for p in g["params"]]
    assert not gate_ids & set(others) and len(others) + len(gate_ids) == len(
        list(model.parameters()))
    plain = tiny_sum_fusion().param_groups(1e-4, 0.01)
    assert [g["name"] for g in plain] == ["backbone", "backbone_no_decay", "rest",
                                          "rest_no_decay"]
