import math

import pytest
import torch

from fusionseg.engine.metrics import confusion_metric, metrics_from_confusion


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
