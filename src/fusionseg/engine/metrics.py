"""Confusion-matrix segmentation metrics: per-class IoU, mIoU, OA, mAcc, per-class F1, mF1.

The confusion matrix itself is accumulated (and synced across DDP processes) by torchmetrics'
``MulticlassConfusionMatrix``; this module only turns a ``[K, K]`` matrix (rows = ground truth,
columns = prediction) into numbers, so the same code serves validation, ``fusionseg eval`` and
the tests.

mIoU conventions (``miou=``):
- ``"nanmean"`` (default): mean over classes that occur in the ground truth or the prediction
  (a class with union 0 is NaN and skipped), as mmsegmentation reports it.
- ``"zero"``: classes whose union is 0 count as IoU 0 and every class is averaged, as the
  DELIVER/CMNeXt lineage's evaluator does for the 25 DELIVER classes.
Remote sensing (ISPRS) excludes clutter from mIoU/mF1 with ``ignore_classes`` while OA keeps
all classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from ..errors import ConfigError


def confusion_metric(num_classes: int, ignore_index: int = 255) -> MulticlassConfusionMatrix:
    """A torchmetrics confusion matrix over ``num_classes`` that skips ``ignore_index`` pixels."""
    return MulticlassConfusionMatrix(num_classes=num_classes, ignore_index=ignore_index,
                                     normalize="none", validate_args=False)


def metrics_from_confusion(cm: torch.Tensor, miou: str = "nanmean",
                           ignore_classes: Sequence[int] = ()) -> dict:
    """Compute segmentation metrics from a confusion matrix.

    Args:
        cm: ``[K, K]`` counts (or fractions of them: a normalised matrix gives the same
            values), rows = ground-truth class, columns = predicted class.
        miou: ``"nanmean"`` or ``"zero"`` (see module docstring).
        ignore_classes: class ids left out of mIoU, mAcc and mF1 (OA still counts them).

    Returns:
        dict with ``mIoU``, ``OA``, ``mAcc``, ``mF1`` (floats in %) and ``IoU``, ``Acc``,
        ``F1`` (lists of K floats in %, NaN where undefined).

    Raises:
        ValueError: ``cm`` is not square or ``miou`` is unknown.
    """
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be [K, K], got {tuple(cm.shape)}")
    if miou not in ("nanmean", "zero"):
        raise ConfigError(f"unknown mIoU convention {miou!r}; use 'nanmean' or 'zero'")
    cm = cm.double()
    tp = cm.diag()
    gt = cm.sum(1)
    pred = cm.sum(0)
    union = gt + pred - tp
    # a class absent from both sides is 0 / 0 = NaN (undefined), as is the OA of an empty
    # matrix; no floor under the divisors, so a normalised matrix keeps its ratios
    iou = tp / union
    acc = tp / gt
    f1 = 2 * tp / (gt + pred)
    keep = torch.ones(cm.shape[0], dtype=torch.bool)
    keep[list(ignore_classes)] = False
    if miou == "zero":
        miou_value = torch.nan_to_num(iou[keep], nan=0.0).mean()
    else:
        miou_value = iou[keep].nanmean()
    oa = tp.sum() / cm.sum()
    return {
        "mIoU": 100 * float(miou_value),
        "OA": 100 * float(oa),
        "mAcc": 100 * float(acc[keep].nanmean()),
        "mF1": 100 * float(f1[keep].nanmean()),
        "IoU": [100 * float(v) for v in iou],
        "Acc": [100 * float(v) for v in acc],
        "F1": [100 * float(v) for v in f1],
    }
