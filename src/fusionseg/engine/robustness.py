"""Missing-modality evaluation: one trained model on subsets of its modalities.

A subset keeps some of the model's modalities; the others are removed the way the batch
convention defines a missing modality (absent key, ``"present"`` column false), and each
method fills them as it defines (zeros for the MiT-based methods). :class:`SubsetEvaluator`
accumulates a confusion matrix per subset, overall and per condition.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..data.sample import drop_modalities
from .metrics import confusion_metric, metrics_from_confusion

__all__ = ["SubsetEvaluator", "modality_subsets", "subset_name"]


def modality_subsets(modalities: Sequence[str],
                     which: str | Sequence[Sequence[str]] = "all") -> list[tuple[str, ...]]:
    """Non-empty subsets of ``modalities`` for the missing-modality protocol.

    ``which="all"`` gives every non-empty subset (largest first, the full set first); a list
    of lists is taken as given (each checked to be a subset).

    Raises:
        ValueError: a listed subset names a modality the model does not have, or is empty.
    """
    modalities = list(modalities)
    if which == "all":
        out: list[tuple[str, ...]] = []
        for r in range(len(modalities), 0, -1):
            out.extend(itertools.combinations(modalities, r))
        return out
    subsets = []
    for s in which:
        unknown = [m for m in s if m not in modalities]
        if unknown:
            raise ValueError(f"missing-modality subset {list(s)} names {unknown}, not in "
                             f"{modalities}")
        if not s:
            raise ValueError("a missing-modality subset must keep at least one modality")
        subsets.append(tuple(s))
    return subsets


def subset_name(subset: Sequence[str]) -> str:
    """``("rgb", "depth") -> "rgb+depth"``."""
    return "+".join(subset)


class SubsetEvaluator:
    """Confusion matrices of one model over modality subsets, overall and per condition.

    Args:
        modalities: the model's modalities (the batch's ``"present"`` column order).
        subsets: subsets to evaluate (see :func:`modality_subsets`).
        num_classes, ignore_index: of the dataset.
        per_condition: also accumulate per ``meta["condition"]``.
    """

    def __init__(self, modalities: Sequence[str], subsets: Sequence[Sequence[str]],
                 num_classes: int, ignore_index: int = 255, per_condition: bool = True) -> None:
        self.modalities = list(modalities)
        self.subsets = [tuple(s) for s in subsets]
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.per_condition = per_condition
        self.cms = {s: confusion_metric(num_classes, ignore_index) for s in self.subsets}
        self.cond_cms: dict[tuple[str, ...], dict[str, Any]] = {s: {} for s in self.subsets}

    def update(self, batch: dict, predict: Callable[[dict], torch.Tensor],
               device: torch.device | str = "cpu") -> None:
        """Run ``predict(batch_subset) -> logits [B, K, H, W]`` for every subset of ``batch``
        (moved to ``device``) and accumulate against ``batch["label"]``."""
        label = batch["label"]
        metas = batch.get("meta") or []
        for s in self.subsets:
            sub = drop_modalities(batch, s, modalities=self.modalities)
            sub = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                   for k, v in sub.items()}
            pred = predict(sub).argmax(1).cpu()
            self.cms[s].update(pred, label)
            if not self.per_condition:
                continue
            for j, m in enumerate(metas):
                c = m.get("condition") or "all"
                if c not in self.cond_cms[s]:
                    self.cond_cms[s][c] = confusion_metric(self.num_classes, self.ignore_index)
                self.cond_cms[s][c].update(pred[j:j + 1], label[j:j + 1])

    def metrics(self, subset: Sequence[str], miou: str = "nanmean",
                ignore_classes: Sequence[int] = ()) -> dict[str, Any]:
        """Metrics of :func:`metrics_from_confusion` for ``subset`` (percent), with
        ``"per_condition": {condition: metrics}``."""
        s = tuple(subset)
        res = metrics_from_confusion(self.cms[s].compute(), miou, list(ignore_classes))
        res["per_condition"] = {
            c: metrics_from_confusion(cm.compute(), miou, list(ignore_classes))
            for c, cm in sorted(self.cond_cms[s].items())
        }
        return res

    def table(self, miou: str = "nanmean", ignore_classes: Sequence[int] = (),
              subsets: Sequence[Sequence[str]] | None = None) -> dict[str, Any]:
        """``{"rgb+depth": {"mIoU", "OA", "per_condition": {cond: mIoU}}, ...}`` for
        ``subsets`` (default: all evaluated)."""
        out = {}
        for s in (self.subsets if subsets is None else [tuple(x) for x in subsets]):
            r = self.metrics(s, miou, ignore_classes)
            out[subset_name(s)] = {
                "mIoU": r["mIoU"], "OA": r["OA"],
                "per_condition": {c: v["mIoU"] for c, v in r["per_condition"].items()},
            }
        return out
