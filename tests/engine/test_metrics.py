import math

import pytest
import torch

from fusionseg.engine.metrics import confusion_metric, metrics_from_confusion
from fusionseg.errors import ConfigError


def test_metrics_from_hand_computed_confusion_matrix():
    # rows = ground truth, columns = prediction; class 2 never occurs
    cm = torch.tensor([[3, 1, 0],
                       [2, 4, 0],
                       [0, 0, 0]])
    r = metrics_from_confusion(cm)
    iou0 = 3 / (4 + 5 - 3)  # tp / (gt + pred - tp)
    iou1 = 4 / (6 + 5 - 4)
    assert r["IoU"][0] == pytest.approx(100 * iou0)
    assert r["IoU"][1] == pytest.approx(100 * iou1)
    assert math.isnan(r["IoU"][2])
    assert r["mIoU"] == pytest.approx(100 * (iou0 + iou1) / 2)
    assert r["OA"] == pytest.approx(100 * 7 / 10)
    assert r["mAcc"] == pytest.approx(100 * (3 / 4 + 4 / 6) / 2)
    f1_0 = 2 * 3 / (4 + 5)
    f1_1 = 2 * 4 / (6 + 5)
    assert r["mF1"] == pytest.approx(100 * (f1_0 + f1_1) / 2)
    # DELIVER convention: an absent class counts as 0
    z = metrics_from_confusion(cm, miou="zero")
    assert z["mIoU"] == pytest.approx(100 * (iou0 + iou1) / 3)
    # ISPRS-style: class 1 excluded from mIoU but OA keeps it
    ex = metrics_from_confusion(cm, ignore_classes=[1])
    assert ex["mIoU"] == pytest.approx(100 * iou0)
    assert ex["OA"] == pytest.approx(r["OA"])


def test_torchmetrics_confusion_ignores_255():
    m = confusion_metric(3)
    pred = torch.tensor([[0, 1, 2, 2]])
    label = torch.tensor([[0, 1, 255, 2]])
    m.update(pred, label)
    cm = m.compute()
    assert cm.sum() == 3
    assert torch.equal(cm.diag(), torch.tensor([1, 1, 1]))


def test_bad_inputs():
    with pytest.raises(ValueError):
        metrics_from_confusion(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        metrics_from_confusion(torch.eye(2), miou="mean")


def test_every_mean_metric_leaves_out_ignore_classes_and_per_class_lists_keep_them():
    # rows = ground truth, columns = prediction; class 3 plays ISPRS clutter
    cm = torch.tensor([[5, 1, 0, 2],
                       [0, 3, 1, 0],
                       [1, 0, 4, 1],
                       [2, 2, 0, 6]])
    # by hand: gt = row sums (8, 4, 6, 10), pred = column sums (8, 6, 5, 9), tp = (5, 3, 4, 6)
    iou = [5 / 11, 3 / 7, 4 / 7, 6 / 13]  # tp / (gt + pred - tp)
    acc = [5 / 8, 3 / 4, 4 / 6, 6 / 10]  # tp / gt
    f1 = [10 / 16, 6 / 10, 8 / 11, 12 / 19]  # 2 tp / (gt + pred)
    for convention in ("nanmean", "zero"):  # no class is empty, so both agree
        r = metrics_from_confusion(cm, miou=convention, ignore_classes=[3])
        assert r["mIoU"] == pytest.approx(100 * 16 / 33)  # (5/11 + 3/7 + 4/7) / 3
        assert r["mAcc"] == pytest.approx(100 * 49 / 72)  # (5/8 + 3/4 + 2/3) / 3
        assert r["mF1"] == pytest.approx(100 * (5 / 8 + 3 / 5 + 8 / 11) / 3)
        assert r["OA"] == pytest.approx(100 * 18 / 28)  # OA keeps the ignored class
        assert r["IoU"] == pytest.approx([100 * v for v in iou])
        assert r["Acc"] == pytest.approx([100 * v for v in acc])
        assert r["F1"] == pytest.approx([100 * v for v in f1])
    # two ignored classes: the means run over classes 0 and 2 only
    two = metrics_from_confusion(cm, ignore_classes=[1, 3])
    assert two["mIoU"] == pytest.approx(100 * (5 / 11 + 4 / 7) / 2)
    assert two["mAcc"] == pytest.approx(100 * (5 / 8 + 2 / 3) / 2)
    assert two["mF1"] == pytest.approx(100 * (5 / 8 + 8 / 11) / 2)
    assert two["OA"] == pytest.approx(100 * 18 / 28)


def test_ignore_classes_with_an_empty_class_under_both_miou_conventions():
    # class 1 never occurs (union 0); class 2 is ignored
    cm = torch.tensor([[4, 0, 1],
                       [0, 0, 0],
                       [3, 0, 2]])
    # class 0: gt 5, pred 7, tp 4 -> IoU 4/8, Acc 4/5, F1 8/12
    nan = metrics_from_confusion(cm, ignore_classes=[2])
    assert nan["mIoU"] == pytest.approx(100 * 4 / 8)  # the empty class is skipped
    assert nan["mAcc"] == pytest.approx(100 * 4 / 5)
    assert nan["mF1"] == pytest.approx(100 * 8 / 12)
    zero = metrics_from_confusion(cm, miou="zero", ignore_classes=[2])
    assert zero["mIoU"] == pytest.approx(100 * (4 / 8 + 0) / 2)  # empty class counts as 0
    assert zero["OA"] == pytest.approx(100 * 6 / 10)


def test_confusion_metric_counts_integer_pixels_and_skips_the_default_ignore_index():
    """Rows = ground truth, columns = prediction, int64 counts; label 255 is left out."""
    m = confusion_metric(3)
    pred = torch.tensor([[0, 1, 1, 2], [2, 0, 2, 1]])
    label = torch.tensor([[0, 1, 2, 255], [2, 255, 2, 0]])
    m.update(pred, label)
    cm = m.compute()
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[1, 1, 0],  # gt 0: one right, one predicted as 1
                           [0, 1, 0],
                           [0, 1, 2]]  # gt 2: two right, one predicted as 1


def test_confusion_metric_honours_a_custom_ignore_index():
    m = confusion_metric(2, ignore_index=7)
    m.update(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 7, 1, 7]))
    assert m.compute().tolist() == [[1, 0], [0, 1]]


def test_confusion_metric_update_skips_torchmetrics_per_batch_input_checks(monkeypatch):
    """No torch.unique validation (a host sync) on every batch: the metric is built with
    validate_args=False."""
    import torchmetrics.classification.confusion_matrix as tm_cm

    def no_check(*args, **kwargs):
        raise AssertionError("per-batch input validation ran")

    monkeypatch.setattr(tm_cm, "_multiclass_confusion_matrix_tensor_validation", no_check)
    monkeypatch.setattr(tm_cm, "_multiclass_confusion_matrix_arg_validation", no_check)
    m = confusion_metric(2)
    m.update(torch.tensor([1, 1]), torch.tensor([1, 0]))
    assert m.compute().tolist() == [[0, 1], [0, 1]]


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"confusion matrix must be \[K, K\], got \(2, 3\)"):
        metrics_from_confusion(torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="unknown mIoU convention 'mean'; use 'nanmean' or 'zero'"):
        metrics_from_confusion(torch.eye(2), miou="mean")


def test_a_class_with_a_single_pixel_still_gets_its_metrics():
    """Union, gt and gt + pred of exactly 1 are defined (not NaN) and divided by 1."""
    cm = torch.tensor([[1, 0, 0],
                       [0, 3, 1],
                       [0, 0, 0]])
    # class 0: tp 1, gt 1, pred 1 -> IoU 1, Acc 1, F1 1
    # class 2: tp 0, gt 0, pred 1 -> IoU 0/1, Acc NaN, F1 0/1
    r = metrics_from_confusion(cm)
    assert r["IoU"] == pytest.approx([100.0, 75.0, 0.0])  # class 1: 3 / (4 + 3 - 3)
    assert r["Acc"][:2] == pytest.approx([100.0, 75.0]) and math.isnan(r["Acc"][2])
    assert r["F1"] == pytest.approx([100.0, 100 * 6 / 7, 0.0])
    assert r["mAcc"] == pytest.approx(100 * (1 + 3 / 4) / 2)


def test_a_single_counted_pixel_gives_an_overall_accuracy():
    """OA = trace / total, also for a total of 1; an empty matrix has OA NaN."""
    assert metrics_from_confusion(torch.tensor([[1, 0], [0, 0]]))["OA"] == pytest.approx(100.0)
    assert metrics_from_confusion(torch.tensor([[0, 1], [0, 0]]))["OA"] == pytest.approx(0.0)
    assert math.isnan(metrics_from_confusion(torch.zeros(2, 2))["OA"])


def test_weighted_non_integer_counts():
    """Fractional (weighted) counts: every metric is the plain ratio of the weights."""
    cm = torch.tensor([[0.5, 0.5],
                       [0.0, 2.0]])
    # class 0: tp .5, gt 1, pred .5, union 1 -> IoU .5, Acc .5, F1 1 / 1.5
    # class 1: tp 2, gt 2, pred 2.5, union 2.5 -> IoU .8, Acc 1, F1 4 / 4.5
    r = metrics_from_confusion(cm)
    assert r["IoU"] == pytest.approx([50.0, 80.0])
    assert r["Acc"] == pytest.approx([50.0, 100.0])
    assert r["F1"] == pytest.approx([100 * 2 / 3, 100 * 8 / 9])
    assert r["OA"] == pytest.approx(100 * 2.5 / 3)


def test_a_normalised_confusion_matrix_gives_the_metrics_of_its_counts():
    """Totals below 1 are divided as they are (no floor at 1): [[.3, .1], [0, .6]] (sum 1).

    class 0: tp .3, gt .4, pred .3, union .4 -> IoU .75, Acc .75, F1 .6 / .7
    class 1: tp .6, gt .6, pred .7, union .7 -> IoU 6/7, Acc 1, F1 1.2 / 1.3
    """
    cm = torch.tensor([[0.3, 0.1], [0.0, 0.6]], dtype=torch.float64)
    r = metrics_from_confusion(cm)
    assert r["IoU"] == pytest.approx([75.0, 100 * 6 / 7])
    assert r["Acc"] == pytest.approx([75.0, 100.0])
    assert r["F1"] == pytest.approx([100 * 6 / 7, 100 * 12 / 13])
    assert r["OA"] == pytest.approx(90.0)
    counts = metrics_from_confusion(torch.tensor([[3, 1], [0, 6]]))
    assert r["mIoU"] == pytest.approx(counts["mIoU"]) and r["mF1"] == pytest.approx(counts["mF1"])
