"""Class imbalance: class weights (explicit and from label frequencies, with their cache),
Dice / Focal / Lovasz-Softmax losses and their combination with cross-entropy.

Every expected value is computed by hand in the comments (or follows from a closed form:
focal with gamma 0 is cross-entropy; Lovasz-Softmax of 0/1 probabilities is 1 - IoU).
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures.deliver_tree import make_deliver_tree
from fixtures.folder_tree import make_folder_tree

from fusionseg.config import config_from_dict
from fusionseg.data.datasets import create_dataset
from fusionseg.engine import class_balance
from fusionseg.engine.class_balance import (
    class_frequency,
    class_weights,
    count_label_pixels,
    inverse_frequency_weights,
    median_frequency_weights,
)
from fusionseg.engine.losses import (
    LOSSES,
    CombinedLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    SegmentationCriterion,
    build_loss,
    lovasz_grad,
)
from fusionseg.engine.module import SegmentationModule
from fusionseg.errors import ConfigError
from fusionseg.models import AuxiliaryLogits, SegmentationOutput


def _logits_from_probs(probs) -> torch.Tensor:
    """Logits ``[1, K, H, W]`` whose softmax is ``probs`` (``[K, H, W]``, rows summing to 1)."""
    return torch.tensor(probs, dtype=torch.float64).log().unsqueeze(0).float()


# -- the five losses and their spec ----------------------------------------------------------
def test_every_loss_is_registered_and_combines():
    assert {"ce", "ohem", "focal", "dice", "lovasz"} <= set(LOSSES.names())
    loss = build_loss({"name": "ce", "class_weight": [1, 2],
                       "terms": [{"name": "dice", "weight": 0.5}, {"name": "lovasz"},
                                 {"name": "dice", "smooth": 0.0, "weight": 0.25}]})
    assert isinstance(loss, CombinedLoss)
    assert loss.names == ["ce", "dice", "lovasz", "dice_2"]
    assert loss.weights == [1.0, 0.5, 1.0, 0.25]
    # a term does not inherit the main loss's class weights
    assert loss.losses[0].class_weight.tolist() == [1.0, 2.0]
    assert loss.losses[1].class_weight is None


def test_dice_on_a_hand_computed_2x2_example():
    # label [[0, 1], [1, 1]]; p(class 0) = [[0.9, 0.2], [0.3, 0.5]], p(class 1) = 1 - p0
    p0 = np.array([[0.9, 0.2], [0.3, 0.5]])
    logits = _logits_from_probs(np.stack([p0, 1 - p0]))
    label = torch.tensor([[[0, 1], [1, 1]]])
    # class 0: intersection 0.9, sum p 1.9, sum g 1; class 1: intersection 0.8+0.7+0.5 = 2.0,
    # sum p 0.1+0.8+0.7+0.5 = 2.1, sum g 3
    d0, d1 = 2 * 0.9 / (1.9 + 1), 2 * 2.0 / (2.1 + 3)
    dice = DiceLoss(smooth=0.0)(logits, label)
    assert dice.item() == pytest.approx(1 - (d0 + d1) / 2, abs=1e-6)  # 0.29750
    s0, s1 = (1.8 + 1) / (2.9 + 1), (4.0 + 1) / (5.1 + 1)
    assert DiceLoss(smooth=1.0)(logits, label).item() == pytest.approx(1 - (s0 + s1) / 2, abs=1e-6)
    # class weights: a weighted mean of 1 - D_c over the classes
    weighted = DiceLoss(smooth=0.0, class_weight=[3.0, 1.0])(logits, label)
    assert weighted.item() == pytest.approx((3 * (1 - d0) + (1 - d1)) / 4, abs=1e-6)
    # class 0 is the worse one (D0 0.62 < D1 0.78): weighting it up raises the loss
    assert weighted > dice


def test_dice_classes_absent_from_the_batch():
    p0 = np.array([[0.9, 0.2], [0.3, 0.5]])
    label = torch.tensor([[[0, 1], [1, 1]]])
    d0, d1 = 1.8 / 2.9, 4.0 / 5.1
    # a third class, absent from the label and never predicted (p = 0 in float32)
    absent = torch.cat([_logits_from_probs(np.stack([p0, 1 - p0])),
                        torch.full((1, 1, 2, 2), -1e4)], 1)
    present = 1 - (d0 + d1) / 2
    assert DiceLoss(smooth=0.0)(absent, label).item() == pytest.approx(present, abs=1e-6)
    # classes: all counts it too; not predicted and absent, D_2 = 1 (smooth 0: by convention,
    # smooth 1: 1 / 1), so it adds 0 to the sum of three
    for smooth in (0.0, 1.0):
        d0s = (1.8 + smooth) / (2.9 + smooth)
        d1s = (4.0 + smooth) / (5.1 + smooth)
        got = DiceLoss(smooth=smooth, classes="all")(absent, label).item()
        assert got == pytest.approx((1 - d0s + 1 - d1s + 0) / 3, abs=1e-6)
    # predicted but absent (p = 0.5 everywhere over two classes): D_2 = 1 / (2 + 1)
    half = torch.zeros(1, 2, 2, 2)
    lab0 = torch.zeros(1, 2, 2, dtype=torch.long)
    d0 = (2 * 2 + 1) / (2 + 4 + 1)
    assert DiceLoss(classes="all")(half, lab0).item() == pytest.approx(
        ((1 - d0) + (1 - 1 / 3)) / 2, abs=1e-6)
    assert DiceLoss()(half, lab0).item() == pytest.approx(1 - d0, abs=1e-6)


def test_focal_with_gamma_0_is_cross_entropy_weighted_or_not():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 6, generator=g)
    label = torch.randint(0, 4, (2, 6, 6), generator=g)
    label[0, :2] = 255
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    for cw in (None, w):
        ref = F.cross_entropy(logits, label, weight=cw, ignore_index=255)
        assert FocalLoss(gamma=0.0, class_weight=cw)(logits, label).item() == pytest.approx(
            ref.item(), rel=1e-6)
        assert build_loss({"name": "ce", "class_weight": cw})(logits, label).item() == \
            pytest.approx(ref.item(), rel=1e-6)


def test_focal_with_gamma_2_on_hand_computed_pixels():
    # pixel 1: class 0 with p = 0.8; pixel 2: class 1 with p = 0.5
    logits = _logits_from_probs(np.array([[[0.8, 0.5]], [[0.2, 0.5]]]))
    label = torch.tensor([[[0, 1]]])
    fl1 = 0.2**2 * -math.log(0.8)  # 0.0089257
    fl2 = 0.5**2 * -math.log(0.5)  # 0.1732868
    assert FocalLoss(gamma=2.0)(logits[..., :1], label[..., :1]).item() == pytest.approx(
        fl1, rel=1e-5)
    assert FocalLoss(gamma=2.0)(logits, label).item() == pytest.approx((fl1 + fl2) / 2, rel=1e-5)
    # alpha = class weights [1, 3]: (1 * fl1 + 3 * fl2) / (1 + 3)
    alpha = FocalLoss(gamma=2.0, class_weight=[1.0, 3.0])(logits, label)
    assert alpha.item() == pytest.approx((fl1 + 3 * fl2) / 4, rel=1e-5)
    # the loss is finite with a finite gradient at p = 1 for any gamma
    sure = torch.tensor([[[[50.0]], [[-50.0]]]], requires_grad=True)
    for gamma in (0.5, 2.0):
        loss = FocalLoss(gamma=gamma)(sure, torch.zeros(1, 1, 1, dtype=torch.long))
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(sure.grad).all()
        sure.grad = None


def test_lovasz_grad_follows_algorithm_1():
    # sorted ground truth [0, 1]: J_1 = 1 - 1/2, J_2 = 1 - 0/2 -> gradient [0.5, 0.5]
    assert lovasz_grad(torch.tensor([0.0, 1.0])).tolist() == [0.5, 0.5]
    # [1, 0]: J_1 = 1 - 0/1, J_2 = 1 - 0/2 -> [1, 0]
    assert lovasz_grad(torch.tensor([1.0, 0.0])).tolist() == [1.0, 0.0]


def test_lovasz_on_hand_computed_examples():
    # one pixel of class 1: the loss is 1 - p_1 (sorted errors [1 - p], gradient [1])
    one = _logits_from_probs(np.array([[[0.3]], [[0.7]]]))
    assert LovaszSoftmaxLoss()(one, torch.tensor([[[1]]])).item() == pytest.approx(0.3, abs=1e-6)
    # two pixels, labels [0, 1], p(class 0) = [0.8, 0.3]:
    # class 0: errors [0.2, 0.3] -> sorted [0.3 (gt 0), 0.2 (gt 1)], gradient [0.5, 0.5] -> 0.25
    # class 1: errors [0.2, 0.3] -> sorted [0.3 (gt 1), 0.2 (gt 0)], gradient [1, 0] -> 0.3
    two = _logits_from_probs(np.array([[[0.8, 0.3]], [[0.2, 0.7]]]))
    label = torch.tensor([[[0, 1]]])
    assert LovaszSoftmaxLoss()(two, label).item() == pytest.approx((0.25 + 0.3) / 2, abs=1e-6)
    weighted = LovaszSoftmaxLoss(class_weight=[1.0, 3.0])(two, label)
    assert weighted.item() == pytest.approx((0.25 + 3 * 0.3) / 4, abs=1e-6)
    # per image: the mean of each image's loss; here image 2 is the first image flipped
    both = torch.cat([two, two.flip(-1)])
    per_image = LovaszSoftmaxLoss(per_image=True)(both, torch.tensor([[[0, 1]], [[1, 0]]]))
    assert per_image.item() == pytest.approx(0.275, abs=1e-6)


def test_lovasz_of_hard_predictions_is_one_minus_iou():
    # labels [0, 0, 1, 1, 2, 2] (class 3 absent), predictions [0, 1, 1, 1, 2, 0], one-hot:
    # IoU_0 = 1/3, IoU_1 = 2/3, IoU_2 = 1/2; present-class mean of 1 - IoU = 1/2
    label = torch.tensor([[[0, 0, 1, 1, 2, 2]]])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    logits = (F.one_hot(pred, 4).T.float() * 200 - 100).view(1, 4, 1, 6)
    assert LovaszSoftmaxLoss()(logits, label).item() == pytest.approx(0.5, abs=1e-6)
    # classes: all adds the absent class 3's largest probability (0 here) to a mean of 4
    assert LovaszSoftmaxLoss(classes="all")(logits, label).item() == pytest.approx(1.5 / 4)
    # a perfect prediction costs 0
    perfect = (F.one_hot(label.view(-1), 4).T.float() * 200 - 100).view(1, 4, 1, 6)
    assert LovaszSoftmaxLoss()(perfect, label).item() == 0.0


@pytest.mark.parametrize("spec", [
    "ce", "ohem", {"name": "ohem", "class_weight": [1, 2, 3]}, "focal",
    {"name": "focal", "class_weight": [1, 2, 3]}, "dice", {"name": "dice", "classes": "all"},
    "lovasz", {"name": "lovasz", "classes": "all", "per_image": True},
    {"name": "ce", "class_weight": [3, 1, 1], "terms": [{"name": "dice", "weight": 0.5},
                                                        {"name": "lovasz"}]},
])
def test_every_loss_ignores_ignored_pixels(spec):
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 3, (2, 8, 8), generator=g)
    label[:, :3] = 255
    loss = build_loss(spec)
    logits = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    value = loss(logits, label)
    value.backward()
    ignored = (label == 255).unsqueeze(1).expand_as(logits)
    assert logits.grad[ignored].abs().max() == 0.0
    assert logits.grad[~ignored].abs().max() > 0
    other = logits.detach().clone()
    other[ignored] = torch.randn(int(ignored.sum()), generator=g) * 10
    assert loss(other, label).item() == pytest.approx(value.item(), abs=1e-6)
    # all ignored: 0, and a gradient of zeros
    none = torch.randn(1, 3, 4, 4, requires_grad=True)
    zero = loss(none, torch.full((1, 4, 4), 255))
    zero.backward()
    assert zero.item() == 0.0 and none.grad.abs().max() == 0.0


def test_class_weights_move_the_loss_towards_the_weighted_class():
    # pixel 1 (class 0) easy, p = 0.9; pixel 2 (class 1) hard, p = 0.2
    logits = _logits_from_probs(np.array([[[0.9, 0.8]], [[0.1, 0.2]]]))
    label = torch.tensor([[[0, 1]]])
    l0, l1 = -math.log(0.9), -math.log(0.2)
    plain = build_loss("ce")(logits, label).item()
    up = build_loss({"name": "ce", "class_weight": [1, 4]})(logits, label).item()
    down = build_loss({"name": "ce", "class_weight": [4, 1]})(logits, label).item()
    assert plain == pytest.approx((l0 + l1) / 2, rel=1e-5)
    assert up == pytest.approx((l0 + 4 * l1) / 5, rel=1e-5) and up > plain
    assert down == pytest.approx((4 * l0 + l1) / 5, rel=1e-5) and down < plain
    # a zero weight removes a class; only the ratios count
    assert build_loss({"name": "ce", "class_weight": [0, 1]})(logits, label).item() == \
        pytest.approx(l1, rel=1e-5)
    assert build_loss({"name": "ce", "class_weight": [2, 8]})(logits, label).item() == \
        pytest.approx(up, rel=1e-6)
    # OHEM keeps the hard pixel (p 0.2 < 0.7) only, whatever the weights
    ohem = build_loss({"name": "ohem", "class_weight": [1, 4]})(logits, label)
    assert ohem.item() == pytest.approx(l1, rel=1e-5)


# -- criterion: auxiliary outputs through the same loss --------------------------------------
def test_auxiliary_outputs_use_the_configured_loss_and_class_weights():
    g = torch.Generator().manual_seed(2)
    label = torch.randint(0, 3, (2, 8, 8), generator=g)
    main, aux, own = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    spec = {"name": "ce", "class_weight": [1, 2, 3], "terms": [{"name": "lovasz",
                                                                "weight": 0.5}]}
    combined = build_loss(spec)
    out = SegmentationOutput(main, aux={"a": AuxiliaryLogits(aux, weight=0.4),
                                        "b": AuxiliaryLogits(own, weight=1.0,
                                                             loss={"name": "ce"})})
    total, terms = SegmentationCriterion(spec)(out, label)
    ref_main, ref_a = combined(main, label), combined(aux, label)
    ref_b = F.cross_entropy(own, label, weight=torch.tensor([1.0, 2.0, 3.0]))
    assert terms["main"].item() == pytest.approx(ref_main.item(), rel=1e-6)
    assert terms["main_ce"].item() == pytest.approx(
        F.cross_entropy(main, label, weight=torch.tensor([1.0, 2.0, 3.0])).item(), rel=1e-6)
    assert terms["main_lovasz"].item() == pytest.approx(
        LovaszSoftmaxLoss()(main, label).item(), rel=1e-6)
    assert terms["a"].item() == pytest.approx(ref_a.item(), rel=1e-6)
    assert terms["b"].item() == pytest.approx(ref_b.item(), rel=1e-6)
    assert total.item() == pytest.approx((ref_main + 0.4 * ref_a + ref_b).item(), rel=1e-6)


def test_the_robust_recipe_goes_through_the_same_combined_loss():
    from fusionseg.engine.robust_training import RobustTraining

    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 3, 6, 6, generator=g)
    y = torch.randint(0, 3, (4, 6, 6), generator=g)
    crit = SegmentationCriterion({"name": "ce", "class_weight": [1, 2, 3],
                                  "terms": [{"name": "dice", "weight": 0.5}]})
    total, terms = RobustTraining(["rgb", "depth"], corrupt_weight=0.5).halves_loss(crit, z, y)
    full, cor = crit(z[:2], y[:2])[0], crit(z[2:], y[2:])[0]
    assert total.item() == pytest.approx(((full + 0.5 * cor) / 1.5).item(), rel=1e-6)
    assert set(terms) == {"main", "main_ce", "main_dice"}


def test_frequency_weights_are_resolved_before_the_criterion_runs():
    crit = SegmentationCriterion({"name": "ce", "class_weight": "median_frequency",
                                  "terms": [{"name": "dice", "class_weight":
                                             "inverse_frequency"}]})
    assert crit.pending == ["inverse_frequency", "median_frequency"]
    label = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ConfigError, match="training split"):
        crit(torch.zeros(1, 2, 2, 2), label)
    crit.resolve_class_weights(lambda name: [1.0, 2.0] if name == "median_frequency"
                               else [3.0, 4.0])
    assert crit.pending == []
    assert crit.main.losses[0].class_weight.tolist() == [1.0, 2.0]
    assert crit.main.losses[1].class_weight.tolist() == [3.0, 4.0]
    assert crit(torch.zeros(1, 2, 2, 2), label)[0].item() == pytest.approx(
        math.log(2) + (1 - 5 / 7), rel=1e-5)  # ce of p = 1/2; dice D_0 = (2*2 + 1) / (2 + 4 + 1)


# -- class frequencies -----------------------------------------------------------------------
def _label_set(tmp_path):
    """Three 4x4 labels of the folder dataset (classes road 0, car 1, person 2):
    a: 12 road + 4 car; b: 8 road + 4 person + 4 ignored (255); c: 16 road."""
    a = np.zeros((4, 4), np.uint8)
    a[0] = 1
    b = np.zeros((4, 4), np.uint8)
    b[1] = 2
    b[3] = 255
    c = np.zeros((4, 4), np.uint8)
    root = make_folder_tree(tmp_path / "folder", size=(4, 4), labels=[a, b, c])
    return create_dataset("folder", root, "train", ["rgb"])


def test_frequencies_and_weights_of_a_known_label_set(tmp_path):
    freq = count_label_pixels(_label_set(tmp_path))
    # pixels: road 12 + 8 + 16 = 36, car 4, person 4; valid pixels of the images holding each
    # class: road 16 + 12 + 16 = 44, car 16, person 12 (b's 4 ignored pixels do not count)
    assert freq.pixels.tolist() == [36, 4, 4] and freq.image_pixels.tolist() == [44, 16, 12]
    assert freq.images == 3
    # median frequency: f = [36/44, 4/16, 4/12] = [9/11, 1/4, 1/3]; median 1/3
    # -> w = [(1/3) / (9/11), (1/3) / (1/4), 1] = [11/27, 4/3, 1]
    expected = [Fraction(11, 27), Fraction(4, 3), Fraction(1)]
    assert median_frequency_weights(freq) == pytest.approx([float(f) for f in expected])
    # inverse frequency: 1/f = [44/36, 11, 11] over all 44 valid pixels, mean 209/27
    # -> [3/19, 27/19, 27/19] (mean 1)
    inverse = [Fraction(3, 19), Fraction(27, 19), Fraction(27, 19)]
    assert inverse_frequency_weights(freq) == pytest.approx([float(f) for f in inverse])
    assert class_weights("median_frequency", freq) == pytest.approx([float(f) for f in expected])
    with pytest.raises(ConfigError, match="unknown class weighting"):
        class_weights("median", freq)


def test_an_absent_class_gets_weight_0_and_is_left_out_of_the_median():
    freq = class_balance.ClassFrequency(np.array([10, 0, 30, 20]), np.array([100, 0, 60, 40]),
                                        images=2)
    # f = [0.1, -, 0.5, 0.5], median of the present ones 0.5
    assert median_frequency_weights(freq).tolist() == pytest.approx([5.0, 0.0, 1.0, 1.0])
    # 1/f over 60 pixels: [6, -, 2, 3], mean 11/3
    assert inverse_frequency_weights(freq).tolist() == pytest.approx(
        [18 / 11, 0.0, 6 / 11, 9 / 11])


def _no_label_reads(monkeypatch, ds):
    def refuse(*args, **kwargs):
        raise AssertionError("a label was read")

    monkeypatch.setattr(type(ds), "read_record_label", refuse)


def test_the_frequency_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONSEG_CACHE", str(tmp_path / "user_cache"))
    ds = _label_set(tmp_path)
    freq, path = class_frequency(ds)
    assert path.parent == ds.root / ".fusionseg" and path.name.startswith("class_frequency-train-")
    assert path.is_file()
    with monkeypatch.context() as m:
        _no_label_reads(m, ds)
        again, path2 = class_frequency(ds)
    assert path2 == path and again.pixels.tolist() == [36, 4, 4]
    assert again.image_pixels.tolist() == freq.image_pixels.tolist()
    # another split or other options: another file
    other = create_dataset("folder", ds.root, "train", ["rgb"], max_samples=2)
    assert class_frequency(other)[1] != path


def test_a_corrupt_or_stale_cache_is_recomputed_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONSEG_CACHE", str(tmp_path / "user_cache"))
    ds = _label_set(tmp_path)
    _, path = class_frequency(ds)
    for bad in ("{not json", '{"version": 1, "fingerprint": "x", "counts": {"pixels": [1]}}'):
        path.write_text(bad)
        with pytest.warns(UserWarning, match="unreadable class frequency cache"):
            freq, again = class_frequency(ds)
        assert again == path and freq.pixels.tolist() == [36, 4, 4]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            class_frequency(ds)  # rewritten: read back without a warning
    # a label file changes: stale
    from PIL import Image
    Image.fromarray(np.ones((4, 4), np.uint8)).save(ds.root / "train" / "label" / "c.png")
    with pytest.warns(UserWarning, match="stale"):
        freq, _ = class_frequency(ds)
    assert freq.pixels.tolist() == [20, 20, 4]


def test_the_cache_goes_to_the_user_cache_when_the_root_is_not_writable(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONSEG_CACHE", str(tmp_path / "user_cache"))
    ds = _label_set(tmp_path)
    (ds.root / ".fusionseg").write_text("a file where the cache folder would go")
    _, path = class_frequency(ds)
    assert path.parent == tmp_path / "user_cache" / "class_frequency"
    with monkeypatch.context() as m:
        _no_label_reads(m, ds)
        assert class_frequency(ds)[1] == path


# -- config and training ---------------------------------------------------------------------
@pytest.mark.parametrize(("loss", "match"), [
    ({"name": "ce", "weight": [1, 2]}, r"loss\.weight: class weights are loss\.class_weight"),
    ({"name": "ce", "class_weight": "median"}, "is no class weighting"),
    ({"name": "ce", "class_weight": [1, -1]}, "finite, >= 0 and not all 0"),
    ({"name": "ce", "class_weight": [0, 0]}, "not all 0"),
    ({"name": "ce", "class_weight": {"a": 1}}, "a list of K numbers"),
    ({"name": "ce", "terms": {"name": "dice"}}, "loss.terms: a list of loss specs"),
    ({"name": "ce", "terms": [{"weight": 0.5}]}, r"loss\.terms\[0\]: a loss name"),
    ({"name": "ce", "terms": [{"name": "dice", "weight": -1}]}, r"terms\[0\]\.weight"),
    ({"name": "ce", "terms": [{"name": "dice", "terms": []}]}, "terms of its own"),
    ({"name": "ce", "terms": [{"name": "dice", "class_weight": "x"}]},
     r"terms\[0\]\.class_weight"),
])
def test_bad_loss_specs_fail_in_one_line_naming_the_key(loss, match):
    with pytest.raises(ConfigError, match=match) as err:
        config_from_dict({"train": {"loss": loss}})
    assert "\n" not in str(err.value)


def test_old_loss_specs_still_read():
    assert config_from_dict({"train": {"loss": "ohem"}}).train.loss == {"name": "ohem"}
    assert config_from_dict({"train": {"loss": {"name": "ohem", "thresh": 0.6}}}).train.loss \
        == {"name": "ohem", "thresh": 0.6}
    ok = {"name": "ce", "class_weight": "median_frequency",
          "terms": ["dice", {"name": "lovasz", "weight": 1.0}]}
    assert config_from_dict({"train": {"loss": ok}}).train.loss == ok


def test_the_module_checks_class_weights_and_loss_names_when_built():
    def module(loss):
        cfg = config_from_dict({"train": {"loss": loss}})
        return SegmentationModule(torch.nn.Identity(), cfg, ["a", "b", "c"])

    with pytest.raises(ConfigError, match=r"train\.loss\.class_weight has 2 values, the dataset "
                                          r"has 3 classes"):
        module({"name": "ce", "class_weight": [1, 2]})
    with pytest.raises(ConfigError, match=r"train\.loss\.terms\[0\]\.class_weight has 4"):
        module({"name": "ce", "terms": [{"name": "dice", "class_weight": [1, 1, 1, 1]}]})
    with pytest.raises(ConfigError, match="unknown loss 'dise'"):
        module({"name": "ce", "class_weight": "median_frequency", "terms": ["dise"]})
    with pytest.raises(ConfigError, match="gamma must be >= 0"):
        module({"name": "focal", "gamma": -1.0})
    with pytest.raises(ConfigError, match="bad option"):
        module({"name": "ce", "terms": [{"name": "lovasz", "smooth": 1.0}]})


def test_training_computes_prints_and_uses_frequency_weights(tmp_path, capsys):
    from conftest import tiny_run_cfg

    from fusionseg.engine.runner import train

    root = tmp_path / "deliver"
    make_deliver_tree(root, conditions=("cloud",), per_split=2, size=32)
    cfg = tiny_run_cfg(tmp_path, root, loss={"name": "ce", "class_weight": "median_frequency",
                                             "terms": [{"name": "lovasz", "weight": 0.5}]})
    train(cfg, run_dir=tmp_path / "run")
    out = capsys.readouterr().out
    assert "class weights of loss ce (median_frequency from 2 train labels, counts cached in" in out
    caches = list((root / ".fusionseg").glob("class_frequency-train-*.json"))
    assert len(caches) == 1
