"""Known answers for the losses, their specs and the segmentation criterion (issue 26).

Most cases use two pixels and two classes (:func:`_two_pixels`): pixel 0 has label 0 with
``p(0) = 1/4`` (cross-entropy ``ln 4 = 2 ln 2``), pixel 1 has label 1 with ``p(1) = 1/2``
(cross-entropy ``ln 2``). Every expected value below is worked out by hand from those.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from fusionseg.engine.losses import (
    LOSSES,
    CombinedLoss,
    CrossEntropy,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    OhemCrossEntropy,
    SegmentationCriterion,
    _PixelLoss,
    _probs_onehot,
    _takes,
    build_loss,
    loss_spec,
    lovasz_grad,
    register_loss,
    resolve_class_weights,
)
from fusionseg.errors import ConfigError
from fusionseg.models import AuxiliaryLogits, SegmentationOutput

LN2 = math.log(2.0)


def _exactly(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern matching the whole message and nothing else."""
    return "^" + re.escape(message) + "$"


def _logits_from_probs(rows) -> torch.Tensor:
    """Logits ``[1, K, 1, P]`` whose softmax over K is ``rows`` (one row of K probabilities per
    pixel)."""
    p = torch.tensor(rows, dtype=torch.float64)  # [P, K]
    return p.log().t().unsqueeze(0).unsqueeze(2).float()


def _two_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel 0: label 0, p = (1/4, 3/4) -> CE ln 4; pixel 1: label 1, p = (1/2, 1/2) -> CE ln 2."""
    return _logits_from_probs([[0.25, 0.75], [0.5, 0.5]]), torch.tensor([[[0, 1]]])


@pytest.fixture
def temp_loss():
    """Register test losses under fresh names and remove them afterwards."""
    names = []

    def add(name, cls):
        names.append(name)
        return register_loss(name)(cls)

    yield add
    for name in names:
        LOSSES._entries.pop(name, None)


# -- registry ------------------------------------------------------------------------------------
def test_register_loss_files_the_class_under_its_name(temp_loss):
    class Plain(torch.nn.Module):
        def __init__(self, ignore_index=255):
            super().__init__()

    assert temp_loss("known_answer_plain", Plain) is Plain
    assert LOSSES.get("known_answer_plain") is Plain


# -- class_weight values ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["median_frequency", "inverse_frequency"])
def test_a_frequency_class_weight_must_be_resolved_before_the_loss_is_built(name):
    with pytest.raises(ConfigError, match=_exactly(
            f"class_weight '{name}' is computed from the training split's labels: resolve it "
            "first (resolve_class_weights; training does this when it starts)")):
        CrossEntropy(class_weight=name)


def test_an_unknown_class_weight_name_lists_the_frequency_weightings():
    with pytest.raises(ConfigError, match=_exactly(
            "class_weight must be a list of K numbers or one of ['inverse_frequency', "
            "'median_frequency'], got 'banana'")):
        CrossEntropy(class_weight="banana")


def test_class_weight_is_kept_as_a_float32_vector():
    for value in ([1, 3], torch.tensor([1, 3]), torch.tensor([1.0, 3.0], dtype=torch.float64)):
        w = CrossEntropy(class_weight=value).class_weight
        assert w.dtype == torch.float32 and w.tolist() == [1.0, 3.0]


@pytest.mark.parametrize("value, match", [
    (["a", "b"], "class_weight must be a list of numbers, got ['a', 'b']"),
    ([[1.0, 2.0]], "class_weight must be a flat list of K numbers, got [[1.0, 2.0]]"),
    (1.0, "class_weight must be a flat list of K numbers, got 1.0"),
    ([], "class_weight must be a flat list of K numbers, got []"),
    ([-1.0, 2.0], "class_weight values must be finite, >= 0 and not all 0"),
    ([float("nan"), 1.0], "class_weight values must be finite, >= 0 and not all 0"),
    ([float("inf"), 1.0], "class_weight values must be finite, >= 0 and not all 0"),
    ([0.0, 0.0], "class_weight values must be finite, >= 0 and not all 0"),
], ids=["strings", "nested", "scalar", "empty", "negative", "nan", "inf", "all-zero"])
def test_bad_class_weight_values_are_rejected_naming_the_problem(value, match):
    with pytest.raises(ConfigError, match=_exactly(match)):
        CrossEntropy(class_weight=value)


def test_class_weights_below_1_are_valid_and_only_their_ratios_matter():
    # (0.5 * ln 4 + 0.25 * ln 2) / 0.75 = (1.25 / 0.75) ln 2 = 5/3 ln 2
    logits, label = _two_pixels()
    loss = CrossEntropy(class_weight=[0.5, 0.25])(logits, label)
    assert loss.item() == pytest.approx(5 / 3 * LN2, abs=1e-6)


def test_the_pixel_loss_base_ignores_255_by_default_and_has_no_class_weight():
    base = _PixelLoss()
    assert base.ignore_index == 255 and base.class_weight is None and base.weight is None


def test_class_weight_is_a_buffer_left_out_of_checkpoints():
    loss = CrossEntropy(class_weight=[1.0, 3.0])
    assert dict(loss.named_buffers())["class_weight"].tolist() == [1.0, 3.0]
    assert loss.weight.tolist() == [1.0, 3.0]
    assert "class_weight" not in loss.state_dict()


def test_extra_repr_says_whether_class_weights_are_set():
    assert "ignore_index=255, class_weight=False" in repr(CrossEntropy())
    assert "ignore_index=7, class_weight=True" in repr(CrossEntropy(7, class_weight=[1, 2]))


@pytest.mark.parametrize("name", ["ce", "ohem", "focal", "dice", "lovasz"])
def test_every_loss_rejects_as_many_class_weights_as_not_classes(name):
    loss = build_loss({"name": name, "class_weight": [1.0, 1.0, 1.0]})
    logits, label = _two_pixels()
    with pytest.raises(ConfigError,
                       match=_exactly("class_weight has 3 values, the logits have 2 classes")):
        loss(logits, label)


# -- cross-entropy and OHEM ------------------------------------------------------------------
def test_ce_old_weight_keyword_still_weights_the_mean():
    # (1 * ln 4 + 3 * ln 2) / 4 = 5/4 ln 2
    logits, label = _two_pixels()
    assert CrossEntropy(weight=torch.tensor([1.0, 3.0]))(logits, label).item() == pytest.approx(
        1.25 * LN2, abs=1e-6)


def test_ohem_with_class_weights_averages_the_kept_pixels_with_weights():
    # both losses (2 ln 2, ln 2) exceed -ln 0.7 = 0.357: (1 * 2 ln 2 + 3 * ln 2) / 4 = 5/4 ln 2
    logits, label = _two_pixels()
    for loss in (OhemCrossEntropy(class_weight=[1.0, 3.0]),
                 OhemCrossEntropy(weight=torch.tensor([1.0, 3.0]))):
        assert loss.class_weight.tolist() == [1.0, 3.0]
        assert loss(logits, label).item() == pytest.approx(1.25 * LN2, abs=1e-6)
    # unweighted: the plain mean (2 ln 2 + ln 2) / 2
    assert OhemCrossEntropy()(logits, label).item() == pytest.approx(1.5 * LN2, abs=1e-6)


def test_ce_class_weight_of_one_class_reads_class_0_at_ignored_pixels():
    weights = CrossEntropy(class_weight=[1.0, 2.0, 3.0]).pixel_weights(torch.tensor([[[2, 255, 0]]]))
    assert weights.tolist() == [3.0, 0.0, 1.0]
    # a single class: an ignored pixel must not look up a class 1 that does not exist
    one = CrossEntropy(class_weight=[2.0])
    assert one.pixel_weights(torch.tensor([[[0, 255]]])).tolist() == [2.0, 0.0]
    assert one(torch.zeros(1, 1, 1, 2), torch.tensor([[[0, 255]]])).item() == 0.0


def test_ce_pixel_weights_follow_the_label_device():
    # the class_weight buffer stays on the CPU; the meta device stands in for an accelerator
    label = torch.zeros(1, 2, 2, dtype=torch.long, device="meta")
    weights = CrossEntropy(class_weight=[1.0, 2.0]).pixel_weights(label)
    assert weights.device.type == "meta" and weights.shape == (4,)


def test_losses_whose_valid_pixels_all_weigh_0_give_0():
    # label all class 0 with weight 0: no weight to average with, the loss is 0 (not 0/0)
    logits = torch.tensor([[[[1.0, 2.0]], [[3.0, 5.0]]]])  # sums to 11
    label = torch.tensor([[[0, 0]]])
    for spec in ({"name": "ce"}, {"name": "focal", "gamma": 1.0},
                 {"name": "ohem", "min_kept_frac": 0.0}, {"name": "dice"}, {"name": "lovasz"}):
        loss = build_loss({**spec, "class_weight": [0.0, 1.0]})(logits, label)
        assert isinstance(loss, torch.Tensor) and loss.item() == 0.0, spec


def _ohem_tie_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """Label 0 everywhere; p(0) = 1/2 (loss exactly ln 2), 1/10 (ln 10), 9/10 (ln 10/9)."""
    return (_logits_from_probs([[0.5, 0.5], [0.1, 0.9], [0.9, 0.1]]),
            torch.tensor([[[0, 0, 0]]]))


def test_ohem_keeps_only_losses_strictly_above_minus_log_thresh():
    # thresh 0.5: -ln 0.5 = ln 2; the p = 1/2 pixel has loss ln 2, not above it: only ln 10 kept
    logits, label = _ohem_tie_pixels()
    for cw in (None, [2.0, 1.0]):
        loss = OhemCrossEntropy(thresh=0.5, min_kept_frac=0.0, class_weight=cw)(logits, label)
        assert loss.item() == pytest.approx(math.log(10.0), abs=1e-5), cw


def test_weighted_ohem_tops_up_to_min_kept_with_the_hardest_pixels():
    # labels 0, 0, 1, 1 with p(true) 0.9, 0.8, 0.75, 0.5; class weights (1, 1/4); n_min = 2.
    # Only ln 2 > -ln 0.7, so the two hardest, ln 2 and ln 4/3 (both class 1, weight 1/4),
    # are kept: (ln 2 + ln 4/3) / 2 = ln(8/3) / 2 (total weight 1/2, below 1)
    logits = _logits_from_probs([[0.9, 0.1], [0.8, 0.2], [0.25, 0.75], [0.5, 0.5]])
    label = torch.tensor([[[0, 0, 1, 1]]])
    loss = OhemCrossEntropy(thresh=0.7, min_kept_frac=0.5, class_weight=[1.0, 0.25])
    assert loss(logits, label).item() == pytest.approx(math.log(8 / 3) / 2, abs=1e-6)


# -- focal -----------------------------------------------------------------------------------
def test_focal_default_gamma_is_2_and_gamma_1_scales_by_one_minus_p():
    # p = 1/4, 1/2; gamma 2: (9/16 * 2 ln 2 + 1/4 * ln 2) / 2 = 11/16 ln 2
    # gamma 1: (3/4 * 2 ln 2 + 1/2 * ln 2) / 2 = ln 2
    logits, label = _two_pixels()
    assert FocalLoss().gamma == 2.0
    assert FocalLoss()(logits, label).item() == pytest.approx(11 / 16 * LN2, abs=1e-6)
    assert FocalLoss(gamma=1.0)(logits, label).item() == pytest.approx(LN2, abs=1e-6)


# -- dice ------------------------------------------------------------------------------------
def test_probs_onehot_zeroes_ignored_pixels_and_matches_the_probability_dtype():
    probs, onehot, valid = _probs_onehot(torch.zeros(1, 2, 1, 2), torch.tensor([[[1, 255]]]), 255)
    assert probs.tolist() == [[[[0.5, 0.0]], [[0.5, 0.0]]]]
    assert onehot.dtype == torch.float32 and onehot.tolist() == [[[[0.0, 0.0]], [[1.0, 0.0]]]]
    assert valid.tolist() == [[[True, False]]]


def test_dice_of_a_single_class_with_an_ignored_pixel_is_0():
    # one class: p = 1 at the valid pixel, D = (2 + 1) / (1 + 1 + 1) = 1
    loss = DiceLoss()(torch.zeros(1, 1, 1, 2), torch.tensor([[[0, 255]]]))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


def test_dice_ignores_255_by_default():
    # valid pixel: label 0, p(0) = 1/2: D_0 = (2 * 0.5 + 1) / (0.5 + 1 + 1) = 0.8 -> 0.2
    loss = DiceLoss()(torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 255]]]))
    assert loss.item() == pytest.approx(0.2, abs=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"smooth": -1.0}, "dice: smooth must be >= 0, got -1.0"),
    ({"smooth": float("inf")}, "dice: smooth must be >= 0, got inf"),
    ({"classes": "some"}, "dice: classes must be one of ['present', 'all'], got 'some'"),
])
def test_bad_dice_options_are_rejected_naming_them(kwargs, match):
    with pytest.raises(ConfigError, match=_exactly(match)):
        DiceLoss(**kwargs)


def test_dice_of_an_absent_class_predicted_below_1_in_total():
    # label 0, 0 with p = (7/8, 1/8) each, smooth 1/2, classes all:
    # D_0 = (2 * 1.75 + 0.5) / (1.75 + 2 + 0.5) = 16/17; absent class 1 (sum p 1/4):
    # D_1 = 0.5 / (0.25 + 0.5) = 2/3; loss ((1 - 16/17) + (1 - 2/3)) / 2 = 10/51
    logits = _logits_from_probs([[0.875, 0.125], [0.875, 0.125]])
    label = torch.tensor([[[0, 0]]])
    dice = DiceLoss(smooth=0.5, classes="all")
    per_class, counted = dice.per_class(logits, label)
    assert per_class.tolist() == pytest.approx([1 / 17, 1 / 3], abs=1e-6)
    assert counted.dtype == torch.bool and counted.tolist() == [True, True]
    assert dice(logits, label).item() == pytest.approx(10 / 51, abs=1e-6)


def test_weighted_dice_checks_the_class_count_not_the_height():
    # K = 2, H = 1, W = 3, p = 1/2 everywhere, label 0, 1, 1, smooth 1, weights (3, 1):
    # D_0 = (1 + 1) / (1.5 + 1 + 1) = 4/7, D_1 = (2 + 1) / (1.5 + 2 + 1) = 2/3
    # (3 * 3/7 + 1/3) / 4 = 17/42
    loss = DiceLoss(class_weight=[3.0, 1.0])(torch.zeros(1, 2, 1, 3), torch.tensor([[[0, 1, 1]]]))
    assert loss.item() == pytest.approx(17 / 42, abs=1e-6)


# -- lovasz ----------------------------------------------------------------------------------
def test_lovasz_grad_of_three_sorted_pixels():
    # gt 1, 0, 1: n = 2; intersection 1, 1, 0; union 2, 3, 3; J = 1/2, 2/3, 1
    # g = 1/2, 2/3 - 1/2, 1 - 2/3
    g = lovasz_grad(torch.tensor([1.0, 0.0, 1.0]))
    assert g.tolist() == pytest.approx([1 / 2, 1 / 6, 1 / 3], abs=1e-6)


def _lovasz_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 1x2 images, hard predictions: A labels 0, 0 predicted 0, 1; B labels 1, 255
    predicted 1, 0."""
    hot = torch.tensor([[30.0, 0.0], [0.0, 30.0]])  # row c: logits of a hard class-c guess
    logits = torch.stack([torch.stack([hot[0], hot[1]], 1), torch.stack([hot[1], hot[0]], 1)])
    return logits.unsqueeze(2), torch.tensor([[[0, 0]], [[1, 255]]])


def test_lovasz_defaults_ignore_255_and_take_the_batch_as_one():
    # whole batch (valid A0, A1, B0): class 0 IoU 1/2, class 1 (pred A1, B0; gt B0) IoU 1/2
    # -> mean of 1 - IoU = 1/2. Per image: A 1/2 (class 1 absent), B 0 -> 1/4
    logits, label = _lovasz_batch()
    assert LovaszSoftmaxLoss()(logits, label).item() == pytest.approx(0.5, abs=1e-6)
    assert LovaszSoftmaxLoss(per_image=True)(logits, label).item() == pytest.approx(0.25, abs=1e-6)


def test_per_image_lovasz_refuses_a_label_batch_of_another_size():
    logits, label = _lovasz_batch()
    with pytest.raises(ValueError):
        LovaszSoftmaxLoss(per_image=True)(logits, label[:1])


def test_bad_lovasz_classes_are_rejected_naming_them():
    with pytest.raises(ConfigError, match=_exactly(
            "lovasz: classes must be one of ['present', 'all'], got 'some'")):
        LovaszSoftmaxLoss(classes="some")


# -- logits at the label size ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["ce", "dice", "lovasz"])
def test_logits_at_the_label_size_are_not_resampled(name):
    # a class masked out with -inf logits: resampling would give 0 * -inf = nan; p(true) = 1/2
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 2] = -math.inf
    label = torch.zeros(1, 2, 2, dtype=torch.long)
    expected = {"ce": LN2, "dice": 1 - (4 + 1) / (2 + 4 + 1), "lovasz": 0.5}[name]
    assert build_loss(name)(logits, label).item() == pytest.approx(expected, abs=1e-6)


# -- specs -----------------------------------------------------------------------------------
def test_loss_spec_copies_the_terms_so_the_config_is_left_alone():
    spec = {"name": "ce", "terms": [{"name": "dice", "weight": 0.5}]}
    out = loss_spec(spec)
    out["terms"][0]["weight"] = 2.0
    assert spec == {"name": "ce", "terms": [{"name": "dice", "weight": 0.5}]}


@pytest.mark.parametrize("terms, match", [
    ("dice", "loss terms must be a list of loss specs, got 'dice'"),
    ([{"name": "lovasz"}, {"name": "dice", "weight": -1}],
     "loss terms[1] (dice): weight must be a number >= 0, got -1"),
    ([{"name": "lovasz"}, {"name": "dice", "weight": float("inf")}],
     "loss terms[1] (dice): weight must be a number >= 0, got inf"),
    ([{"name": "lovasz"}, {"name": "dice", "weight": True}],
     "loss terms[1] (dice): weight must be a number >= 0, got True"),
    ([{"name": "lovasz"}, {"name": "dice", "weight": "0.5"}],
     "loss terms[1] (dice): weight must be a number >= 0, got '0.5'"),
    ([{"name": "lovasz"}, {"name": "dice", "terms": [{"name": "ce"}]}],
     "loss terms[1] (dice): a term cannot have its own terms"),
], ids=["not-a-list", "negative", "inf", "bool", "string", "nested-terms"])
def test_bad_loss_terms_are_rejected_naming_the_term(terms, match):
    with pytest.raises(ConfigError, match=_exactly(match)):
        build_loss({"name": "ce", "terms": terms})


def test_a_term_of_weight_0_is_valid_and_adds_nothing():
    logits, label = _two_pixels()  # CE: (2 ln 2 + ln 2) / 2
    loss = build_loss({"name": "ce", "terms": [{"name": "dice", "weight": 0}]})
    assert isinstance(loss, CombinedLoss) and loss.weights == [1.0, 0.0]
    assert loss(logits, label).item() == pytest.approx(1.5 * LN2, abs=1e-6)


def test_a_term_repeating_the_main_loss_name_is_numbered_2():
    loss = build_loss({"name": "ce", "terms": [{"name": "ce", "weight": 0.5}, {"name": "dice"},
                                               {"name": "ce"}]})
    assert loss.names == ["ce", "ce_2", "dice", "ce_3"]


def test_weight_outside_terms_is_rejected_as_ambiguous():
    with pytest.raises(ConfigError, match=_exactly(
            "loss 'ce': 'weight' is ambiguous here; class weights are 'class_weight' "
            "([w_0, ..., w_K-1], inverse_frequency or median_frequency), a mixing weight is "
            "'weight' inside 'terms'")):
        build_loss({"name": "ce", "weight": [1.0, 2.0]})


def test_build_loss_passes_ignore_index_to_the_loss():
    # ignore_index 0 leaves only pixel 1 (ln 2)
    logits, label = _two_pixels()
    loss = build_loss("ce", ignore_index=0)
    assert loss.ignore_index == 0
    assert loss(logits, label).item() == pytest.approx(LN2, abs=1e-6)


def test_resolve_class_weights_leaves_other_strings_alone():
    asked = []
    spec = {"name": "ce", "class_weight": "banana", "terms": [{"name": "dice"}]}
    assert resolve_class_weights(spec, lambda n: asked.append(n) or [1.0]) == spec
    assert asked == []


def test_takes_reads_the_signature_or_says_no():
    class NoWeight:
        def __init__(self, ignore_index=255):
            pass

    class Anything:
        def __init__(self, ignore_index=255, **options):
            pass

    assert _takes(CrossEntropy, "class_weight") is True
    assert _takes(Anything, "class_weight") is True
    assert _takes(NoWeight, "class_weight") is False
    assert _takes(int, "class_weight") is False  # no signature to read


# -- the criterion ---------------------------------------------------------------------------
def test_the_criterion_defaults_to_cross_entropy():
    logits, label = _two_pixels()
    crit = SegmentationCriterion()
    assert crit.spec == {"name": "ce"} and isinstance(crit.main, CrossEntropy)
    total, terms = crit(logits, label)
    assert total.item() == pytest.approx(1.5 * LN2, abs=1e-6)


def test_the_criterion_builds_every_loss_with_its_ignore_index():
    # ignore_index 0: main and auxiliary CE see pixel 1 only (ln 2), also after resolving
    logits, label = _two_pixels()
    out = SegmentationOutput(logits, aux={"a": AuxiliaryLogits(logits, 0.5, {"name": "ce"})})
    crit = SegmentationCriterion("ce", ignore_index=0)
    total, terms = crit(out, label)
    assert terms["main"].item() == pytest.approx(LN2, abs=1e-6)
    assert terms["a"].item() == pytest.approx(LN2, abs=1e-6)
    freq = SegmentationCriterion({"name": "ce", "class_weight": "median_frequency"},
                                 ignore_index=0)
    freq.resolve_class_weights(lambda _: [1.0, 1.0])
    total, terms = freq(out, label)
    assert terms["main"].item() == pytest.approx(LN2, abs=1e-6)
    assert terms["a"].item() == pytest.approx(LN2, abs=1e-6)
    assert total.item() == pytest.approx(1.5 * LN2, abs=1e-6)


def test_the_early_check_of_a_pending_spec_uses_the_run_ignore_index(temp_loss):
    class NoIgnoreZero(CrossEntropy):
        def __init__(self, ignore_index=255, class_weight=None):
            if ignore_index == 0:
                raise ConfigError("no_ignore_zero: ignore_index 0 is not supported")
            super().__init__(ignore_index, class_weight)

    temp_loss("known_answer_no_ignore_zero", NoIgnoreZero)
    spec = {"name": "known_answer_no_ignore_zero", "class_weight": "median_frequency"}
    with pytest.raises(ConfigError, match="ignore_index 0 is not supported"):
        SegmentationCriterion(spec, ignore_index=0)
    assert SegmentationCriterion(spec, ignore_index=255).pending == ["median_frequency"]


def test_an_auxiliary_loss_keeps_its_own_class_weight():
    # main weights (1, 3); aux CE with (3, 1): (3 * 2 ln 2 + 1 * ln 2) / 4 = 7/4 ln 2
    logits, label = _two_pixels()
    crit = SegmentationCriterion({"name": "ce", "class_weight": [1.0, 3.0]})
    out = SegmentationOutput(logits, aux={
        "own": AuxiliaryLogits(logits, 1.0, {"name": "ce", "class_weight": [3.0, 1.0]}),
        "inherit": AuxiliaryLogits(logits, 1.0, {"name": "ce"})})
    _, terms = crit(out, label)
    assert terms["main"].item() == pytest.approx(1.25 * LN2, abs=1e-6)
    assert terms["own"].item() == pytest.approx(1.75 * LN2, abs=1e-6)
    assert terms["inherit"].item() == pytest.approx(1.25 * LN2, abs=1e-6)


def test_an_auxiliary_loss_without_class_weight_is_built_without_it(temp_loss):
    class PlainCE(torch.nn.Module):
        def __init__(self, ignore_index=255):
            super().__init__()
            self.ce = CrossEntropy(ignore_index)

        def forward(self, logits, label):
            return self.ce(logits, label)

    temp_loss("known_answer_plain_ce", PlainCE)
    logits, label = _two_pixels()
    crit = SegmentationCriterion({"name": "ce", "class_weight": [1.0, 3.0]})
    out = SegmentationOutput(logits, aux={
        "plain": AuxiliaryLogits(logits, 1.0, {"name": "known_answer_plain_ce"})})
    _, terms = crit(out, label)
    assert terms["plain"].item() == pytest.approx(1.5 * LN2, abs=1e-6)


def test_auxiliary_outputs_with_different_loss_specs_get_different_losses():
    # ce: (2 ln 2 + ln 2) / 2; focal gamma 1: (3/4 * 2 ln 2 + 1/2 * ln 2) / 2 = ln 2
    logits, label = _two_pixels()
    out = SegmentationOutput(logits, aux={
        "a": AuxiliaryLogits(logits, 1.0, {"name": "ce"}),
        "b": AuxiliaryLogits(logits, 1.0, {"name": "focal", "gamma": 1.0})})
    _, terms = SegmentationCriterion("ce")(out, label)
    assert terms["a"].item() == pytest.approx(1.5 * LN2, abs=1e-6)
    assert terms["b"].item() == pytest.approx(LN2, abs=1e-6)


def test_an_integer_sample_mask_keeps_the_samples_marked_1():
    # sample 0 is the two pixels (2 ln 2, ln 2); sample 1 (p = 1/2 everywhere) is left out
    logits, label = _two_pixels()
    logits2 = torch.cat([logits, torch.zeros_like(logits)])
    label2 = torch.cat([label, torch.zeros_like(label)])
    out = SegmentationOutput(logits2, aux={
        "m": AuxiliaryLogits(logits2, 1.0, sample_mask=torch.tensor([1, 0]))})
    _, terms = SegmentationCriterion("ce")(out, label2)
    assert terms["m"].item() == pytest.approx(1.5 * LN2, abs=1e-6)
    assert terms["main"].item() == pytest.approx(1.25 * LN2, abs=1e-6)


def test_a_cpu_sample_mask_follows_the_label_device(temp_loss):
    # a loss that only records its target: the meta device stands in for an accelerator
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self, ignore_index=255):
            super().__init__()

        def forward(self, logits, label):
            seen.append(label)
            return logits.sum() * 0.0

    temp_loss("known_answer_recorder", Recorder)
    logits = torch.zeros(2, 2, 1, 2, device="meta")
    label = torch.zeros(2, 1, 2, dtype=torch.long, device="meta")
    out = SegmentationOutput(logits, aux={
        "m": AuxiliaryLogits(logits, 1.0, sample_mask=torch.tensor([True, False]))})
    SegmentationCriterion("known_answer_recorder")(out, label)
    assert [t.device.type for t in seen] == ["meta", "meta"]
    assert seen[1].shape == (2, 1, 2) and seen[1].dtype == torch.long


def test_an_extra_term_named_like_another_term_is_rejected():
    logits, label = _two_pixels()
    out = SegmentationOutput(logits, losses={"main": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=_exactly(
            "extra loss term name 'main' clashes with another loss term")):
        SegmentationCriterion("ce")(out, label)
