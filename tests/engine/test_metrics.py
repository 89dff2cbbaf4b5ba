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
