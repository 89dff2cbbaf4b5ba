"""Known answers for the robust recipe's helpers (:mod:`fusionseg.engine.robust_training`):
configuration checks, the corrupted copy and the paired batch, the corrupted-half weighting,
the label / teacher resizing of the KL terms, the feature term and the feature tap."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from fusionseg.engine.robust_training import (
    FeatureTap,
    RobustTraining,
    consistency_kl,
    feature_distillation,
)
from fusionseg.errors import ConfigError
from fusionseg.models.segmentor import AuxiliaryLogits, SegmentationOutput

LN3 = math.log(3.0)
KL_3_4 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL((3/4, 1/4) || (1/2, 1/2))
MODS = ["rgb", "depth"]
# torch.Generator().manual_seed(ZERO_SEED): torch.rand(64, 2) then torch.rand(64) whose entry
# ZERO_AT is exactly 0.0 (found by search): the boundary draw of a "< probability" test.
ZERO_SEED, ZERO_AT = 28587, 62


# ----------------------------------------------------------------------- consistency_kl
def test_consistency_kl_default_temperature_is_one():
    """Teacher logits (ln 9, 0) at T = 1: p = (9/10, 1/10) against a uniform student."""
    teacher = torch.tensor([2 * LN3, 0.0]).view(1, 2, 1, 1)
    student = torch.zeros(1, 2, 1, 1)
    loss = consistency_kl(student, teacher, torch.ones(1, 1, 1, dtype=torch.bool))
    torch.testing.assert_close(loss, torch.tensor(0.9 * math.log(1.8) + 0.1 * math.log(0.2)))


def test_consistency_kl_takes_softmax_over_the_class_dim_without_warnings():
    """The class dim is named explicitly (no implicit-dim deprecation warning)."""
    teacher = torch.tensor([2 * LN3, 0.0]).view(1, 2, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = consistency_kl(torch.zeros(1, 2, 1, 1), teacher,
                              torch.ones(1, 1, 1, dtype=torch.bool), temperature=2.0)
    torch.testing.assert_close(loss, torch.tensor(4.0 * KL_3_4))


# ----------------------------------------------------------------- feature_distillation
def test_feature_distillation_errors_name_levels_and_shapes():
    s = [torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1)]
    with pytest.raises(ValueError, match=r"needs matching levels, got 2 and 1"):
        feature_distillation(s, s[:1])
    with pytest.raises(ValueError, match=r"needs matching levels, got 0 and 0"):
        feature_distillation([], [])
    with pytest.raises(ValueError, match=r"student feature \(1, 2, 1, 1\) vs teacher \(1, 3, 1, 1\)"):
        feature_distillation(s[:1], [torch.zeros(1, 3, 1, 1)])


# ---------------------------------------------------------------------------- FeatureTap
class _Head(nn.Module):
    def forward(self, x):
        return x


class _TwoCalls(nn.Module):
    """Calls its fused-feature module twice: with ``x`` first, then with ``x + 1``."""

    fused_feature_module = "head"

    def __init__(self) -> None:
        super().__init__()
        self.head = _Head()

    def forward(self, x):
        return self.head(x) + self.head(x + 1)


class _NoFused(nn.Module):
    def forward(self, x):
        return 2 * x


def test_feature_tap_keeps_the_first_call_tensor_input_whole():
    model = _TwoCalls()
    x = torch.arange(6.0).view(2, 3, 1, 1)  # two rows: a per-row list would have 2 entries
    tap = FeatureTap(model)
    assert tap.value is None
    with tap:
        model(x)
    assert len(tap.value) == 1
    torch.testing.assert_close(tap.value[0], x)  # the first call, not the second (x + 1)
    tap.__exit__(None, None, None)  # exiting again is harmless
    model(x + 5)  # the hook is gone: nothing recorded
    torch.testing.assert_close(tap.value[0], x)


def test_feature_tap_without_fused_module_records_nothing():
    model = _NoFused()
    tap = FeatureTap(model)
    assert tap.module is None and tap.value is None
    with tap:
        model(torch.ones(1, 1, 1, 1))
    assert tap.value is None


# ----------------------------------------------------------------- RobustTraining config
def test_robust_training_defaults():
    rt = RobustTraining(MODS)
    assert rt.p_drop == [0.25, 0.25] and rt.rect_prob == 0.25
    assert rt.rect_area == (0.1, 0.3) and rt.rect_aspect == (0.5, 2.0)
    assert rt.consistency_weight == 1.0 and rt.temperature == 2.0 and rt.ignore_index == 255
    assert rt.corrupt_weight == 1.0 and rt.sampling == "dropout" and rt.full_share is None
    assert rt.distill is False and rt.feature_weight == 0.0


def test_robust_training_keeps_the_given_settings():
    rt = RobustTraining(MODS, {"depth": 0.5}, rect_aspect=(0.5, 3.0), sampling="uniform",
                        full_share=1.0, distill=True, corrupt_weight=0.0, feature_weight=0.5)
    assert rt.p_drop == [0.0, 0.5] and rt.rect_aspect == (0.5, 3.0)
    assert rt.sampling == "uniform" and rt.full_share == 1.0 and rt.distill is True
    assert rt.corrupt_weight == 0.0 and rt.feature_weight == 0.5
    assert RobustTraining(MODS, full_share=0.0).full_share == 0.0  # both ends of [0, 1] valid


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sampling": "random"}, r"robust\.sampling must be 'dropout' or 'uniform', got 'random'"),
    ({"full_share": 1.5}, r"robust\.full_share must lie in \[0, 1\], got 1\.5"),
    ({"feature_weight": -1.0}, r"robust\.feature_weight must be >= 0, got -1\.0"),
    ({"temperature": 0.0}, r"robust\.temperature must be > 0, got 0\.0"),
    ({"corrupt_weight": -0.5}, r"robust\.corrupt_weight must be >= 0, got -0\.5"),
    ({"rect_prob": 1.5},
     r"^robust\.modality_dropout and robust\.rect_prob must lie in \[0, 1\]$"),
])
def test_robust_training_rejects_bad_settings_by_name(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RobustTraining(MODS, **kwargs)


# ------------------------------------------------------------------------- halves_loss
def _mean_criterion(output, label):
    """Stub criterion: main = mean logit, aux = mean aux logit; total = main + aux."""
    if isinstance(output, torch.Tensor):
        return output.mean(), {"main": output.mean()}
    main, aux = output.logits.mean(), output.aux["aux"].logits.mean()
    return main + aux, {"main": main, "aux": aux}


def test_halves_loss_weights_the_corrupted_half_of_a_plain_tensor():
    """Halves of mean 1 and 4, lambda = 0.5: (1 + 0.5 * 4) / 1.5 = 2."""
    z = torch.tensor([1.0, 4.0]).view(2, 1, 1, 1)
    total, terms = RobustTraining(MODS, corrupt_weight=0.5).halves_loss(
        _mean_criterion, z, torch.zeros(2, 1, 1, dtype=torch.long))
    torch.testing.assert_close(total, torch.tensor(2.0))
    torch.testing.assert_close(terms["main"], torch.tensor(2.0))


def test_halves_loss_splits_aux_and_counts_extra_terms_once():
    """lambda = 3: main (1 + 3 * 5) / 4 = 4, aux (2 + 3 * 10) / 4 = 8, extra 0.7 once."""
    z = torch.tensor([1.0, 5.0]).view(2, 1, 1, 1)
    a = torch.tensor([2.0, 10.0]).view(2, 1, 1, 1)
    out = SegmentationOutput(z, aux={"aux": AuxiliaryLogits(a, 0.4)},
                             losses={"extra": torch.tensor(0.7)})
    total, terms = RobustTraining(MODS, corrupt_weight=3.0).halves_loss(
        _mean_criterion, out, torch.zeros(2, 1, 1, dtype=torch.long))
    torch.testing.assert_close(total, torch.tensor(4.0 + 8.0 + 0.7))
    torch.testing.assert_close(terms["main"], torch.tensor(4.0))
    torch.testing.assert_close(terms["aux"], torch.tensor(8.0))
    torch.testing.assert_close(terms["extra"], torch.tensor(0.7))


# -------------------------------------------------------------------- consistency_loss
def test_consistency_loss_resizes_labels_nearest_to_the_logits():
    """Logits [2B=4, 2, 1, 2], labels [4, 2, 4]: nearest picks label columns 0 and 2 of row 0.

    Sample 0 changed: pixel 0 valid (teacher (2 ln 3, 0) -> 3/4 at T = 2, student uniform),
    pixel 1 ignored (255 at column 2). Sample 1 unchanged. Every label position nearest does not
    pick is 255, every picked one of sample 1 valid, so a wrong resize or mask shows."""
    z = torch.zeros(4, 2, 1, 2)
    z[0, :, 0, 0] = torch.tensor([2 * LN3, 0.0])
    z[0, :, 0, 1] = torch.tensor([0.0, 6.0])  # ignored pixel: far from the student
    z[1] = torch.tensor([4.0, -4.0]).view(2, 1, 1)  # unchanged sample: far from the student
    z[3] = torch.tensor([-4.0, 4.0]).view(2, 1, 1)
    label = torch.full((4, 2, 4), 255)
    label[:, 0, 0] = torch.tensor([0, 1, 0, 1])
    label[:, 0, 2] = torch.tensor([255, 1, 255, 1])
    rt = RobustTraining(MODS, consistency_weight=0.5, temperature=2.0)
    loss = rt.consistency_loss(z, label, torch.tensor([True, False]))
    torch.testing.assert_close(loss, torch.tensor(0.5 * 4.0 * KL_3_4))


# ------------------------------------------------------------------- distillation_loss
def test_distillation_loss_resizes_teacher_bilinear_and_labels_nearest():
    """Student [1, 2, 2, 2] uniform; teacher [1, 2, 4, 4], class 0 a 0 / 4 ln 3 checkerboard.

    Bilinear (align_corners=False) halving averages each 2x2 block: 2 ln 3 -> (3/4, 1/4) at
    T = 2 on every pixel (corner sampling or nearest would give 0 or 4 ln 3 instead). Labels
    4x4, nearest picks rows / columns 0 and 2: (0, 2) is 255, so 3 valid pixels, each KL_3_4."""
    board = (torch.arange(4).view(4, 1) + torch.arange(4).view(1, 4)) % 2
    teacher = torch.zeros(1, 2, 4, 4)
    teacher[0, 0] = board * 4 * LN3
    label = torch.full((1, 4, 4), 255)
    label[0, 0, 0] = label[0, 2, 0] = label[0, 2, 2] = 1
    rt = RobustTraining(MODS, consistency_weight=0.5, temperature=2.0, distill=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = rt.distillation_loss(torch.zeros(1, 2, 2, 2), teacher, label)
    torch.testing.assert_close(loss, torch.tensor(0.5 * 4.0 * KL_3_4))


# ---------------------------------------------------------------- corrupt, paired_batch
def _ones_batch(b: int = 2, size: int = 2, device: str = "cpu") -> dict:
    return {m: torch.ones(b, 1, size, size, device=device) for m in MODS}


def test_corrupt_follows_the_given_present_flags():
    """No dropout, no rectangles: keep = present, so nothing changes except the absent
    depth of sample 0, which is zeroed."""
    batch = _ones_batch()
    batch["present"] = torch.tensor([[True, False], [True, True]])
    rt = RobustTraining(MODS, modality_dropout=0.0, rect_prob=0.0)
    out, changed = rt.corrupt(batch)
    assert out["present"].tolist() == [[True, False], [True, True]]
    assert changed.tolist() == [False, False]
    assert out["depth"][0].sum() == 0 and out["depth"][1].sum() == 4
    assert out["rgb"].sum() == 8 and batch["depth"].sum() == 8  # the input is not modified


def test_corrupt_skips_a_sample_with_nothing_kept_and_goes_on():
    """Sample 0 has no modality: no rectangle for it, but sample 1 still gets one."""
    batch = _ones_batch(size=4)
    batch["present"] = torch.tensor([[False, False], [True, True]])
    rt = RobustTraining(MODS, modality_dropout=0.0, rect_prob=1.0)
    out, changed = rt.corrupt(batch, torch.Generator().manual_seed(0))
    assert changed.tolist() == [False, True]
    assert out["rgb"][1].sum() + out["depth"][1].sum() < 32  # a rectangle was zeroed


def test_corrupt_returns_present_on_the_batch_device():
    """A ``meta`` batch stands in for an accelerator one."""
    out, _ = RobustTraining(MODS).corrupt(_ones_batch(size=4, device="meta"))
    assert out["present"].device.type == "meta"
    paired, _ = RobustTraining(MODS).paired_batch(_ones_batch(size=4, device="meta"))
    assert paired["present"].device.type == "meta" and paired["present"].shape == (4, 2)
    batch = {"present": torch.ones(2, 2, dtype=torch.bool), **_ones_batch(device="meta")}
    paired, _ = RobustTraining(MODS).paired_batch(batch)  # a CPU present flag is moved over
    assert paired["present"].device.type == "meta" and paired["present"].shape == (4, 2)


def test_random_draws_come_from_the_given_generator_only():
    """With a generator, corruption and subset sampling leave the global RNG untouched."""
    batch = _ones_batch(b=4, size=4)
    present = torch.ones(4, 2, dtype=torch.bool)
    state = torch.get_rng_state()
    g = torch.Generator().manual_seed(1)
    RobustTraining(MODS, modality_dropout=0.5, rect_prob=1.0).corrupt(batch, g)
    RobustTraining(MODS, modality_dropout=0.5, rect_prob=1.0).paired_batch(batch, g)
    RobustTraining(MODS, full_share=0.5).sample_keep(present, g)
    RobustTraining(MODS, sampling="uniform", full_share=0.5).sample_keep(present, g)
    RobustTraining(MODS, sampling="uniform").sample_keep(present, g)
    assert torch.equal(torch.get_rng_state(), state)


def test_corrupt_without_rectangles_draws_only_the_dropout_uniforms():
    """rect_prob = 0: the generator advances by the B x M dropout draws and nothing more."""
    g = torch.Generator().manual_seed(3)
    RobustTraining(MODS, modality_dropout=0.0, rect_prob=0.0).corrupt(_ones_batch(b=3), g)
    ref = torch.Generator().manual_seed(3)
    torch.rand(3, 2, generator=ref)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=ref))


def test_rectangle_needs_a_draw_strictly_below_rect_prob():
    """Draws: B x M dropout uniforms, then one per sample; rect_prob = the smallest of those
    (a multiple of 2^-24, exact) hits no sample (``u < p``)."""
    probe = torch.Generator().manual_seed(5)
    torch.rand(8, 2, generator=probe)
    smallest = torch.rand(8, generator=probe).min().item()
    rt = RobustTraining(MODS, modality_dropout=0.0, rect_prob=smallest)
    _, changed = rt.corrupt(_ones_batch(b=8), torch.Generator().manual_seed(5))
    assert changed.tolist() == [False] * 8


def test_full_share_zero_never_keeps_the_full_set_even_on_a_zero_draw():
    """full_share = 0 excludes a draw of exactly 0.0 (``u < p``); depth always dropped."""
    probe = torch.Generator().manual_seed(ZERO_SEED)
    torch.rand(64, 2, generator=probe)
    assert torch.rand(64, generator=probe)[ZERO_AT].item() == 0.0
    rt = RobustTraining(MODS, {"depth": 1.0}, full_share=0.0)
    keep = rt.sample_keep(torch.ones(64, 2, dtype=torch.bool),
                          torch.Generator().manual_seed(ZERO_SEED))
    assert keep.tolist() == [[True, False]] * 64


def test_paired_batch_doubles_per_sample_entries_only():
    batch = {
        "present": torch.tensor([[True, False], [True, True]]),  # first: the rest still follow
        **_ones_batch(),
        "label": torch.tensor([3, 4]).view(2, 1, 1),
        "index": torch.tensor([5, 7]),  # 1-D per-sample tensor: doubled
        "meta": [{"id": "a"}, {"id": "b"}],
        "names": ["x", "y"],  # a list that is not "meta": kept as is
        "epoch": 3,
    }
    rt = RobustTraining(MODS, modality_dropout=0.0, rect_prob=0.0)
    out, changed = rt.paired_batch(batch)
    assert out["present"].tolist() == [[True, False], [True, True]] * 2
    assert out["index"].tolist() == [5, 7, 5, 7]
    assert out["label"].flatten().tolist() == [3, 4, 3, 4]
    assert out["meta"] == [{"id": "a"}, {"id": "b"}] * 2
    assert out["names"] == ["x", "y"] and out["epoch"] == 3
    assert out["depth"].flatten(1).sum(1).tolist() == [4, 4, 0, 4]  # absent depth zeroed in x'
    assert changed.tolist() == [False, False]


# ---------------------------------------------------------------------------- sample_keep
def test_uniform_sampling_with_full_share_zero_keeps_one_of_two():
    """sampling uniform, full_share 0, M = 2: the subset size is U{1..1}, always one modality
    (dropout at 0 would keep both)."""
    rt = RobustTraining(MODS, modality_dropout=0.0, sampling="uniform", full_share=0.0)
    keep = rt.sample_keep(torch.ones(32, 2, dtype=torch.bool), torch.Generator().manual_seed(0))
    assert keep.sum(1).tolist() == [1] * 32


def test_full_share_one_keeps_the_full_set_over_dropout():
    rt = RobustTraining(MODS, modality_dropout=1.0, full_share=1.0)
    present = torch.tensor([[True, True], [True, False]])
    assert rt.sample_keep(present, torch.Generator().manual_seed(0)).tolist() == present.tolist()
