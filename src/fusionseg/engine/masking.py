"""Training-time modality dropout: randomly remove modalities per sample.

A dropped modality is zeroed and marked absent in the batch's ``"present"`` mask (the batch
convention of :mod:`fusionseg.data.sample`), so the model sees exactly what it sees at test
time when a sensor is missing. Each sample keeps at least one modality.
"""

from __future__ import annotations

import torch


def random_modality_dropout(batch: dict, modalities: list[str], p: float,
                            generator: torch.Generator | None = None) -> dict:
    """Drop each of ``modalities`` independently with probability ``p`` per sample.

    Args:
        batch: modality -> ``[B, C, H, W]``; an existing ``"present"`` ``bool[B, M]`` (columns
            in ``modalities`` order) is respected (already-missing stays missing).
        p: drop probability in ``[0, 1)``.

    Returns:
        A new batch dict with zeroed tensors and an updated ``"present"`` mask.
    """
    if p <= 0 or len(modalities) < 2:
        return batch
    names = [m for m in modalities if m in batch]
    b = batch[names[0]].shape[0]
    present = batch.get("present")
    if present is None:
        present = torch.tensor([[m in batch for m in modalities]] * b)
    keep = torch.rand(b, len(modalities), generator=generator) >= p
    keep &= present.cpu()
    # a sample that lost everything keeps one of its present modalities at random
    empty = ~keep.any(1)
    for i in torch.nonzero(empty).flatten().tolist():
        choices = torch.nonzero(present[i]).flatten()
        j = choices[torch.randint(len(choices), (1,), generator=generator)]
        keep[i, j] = True
    out = dict(batch)
    for j, m in enumerate(modalities):
        if m in batch:
            mask = keep[:, j].to(batch[m].device).view(-1, 1, 1, 1)
            out[m] = batch[m] * mask
    out["present"] = keep.to(present.device)
    return out
