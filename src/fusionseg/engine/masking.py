"""Training-time modality masking: which modalities each sample keeps (dropout, uniform
subsets), and zeroing the dropped ones in a batch.

A dropped modality is zeroed and marked absent in the batch's ``"present"`` mask (the batch
convention of :mod:`fusionseg.data.sample`), so the model sees exactly what it sees at test
time when a sensor is missing. Each sample keeps at least one modality.

Only the training engine uses this module (``engine.module``, ``engine.robust_training``), so it
lives in the engine; the pure tensor ops that model code needs live below it:
:func:`~fusionseg.models.layers.random_rectangle` and MoBaNet's MCRM
(:func:`~fusionseg.models.methods.mobanet.model.modality_conditional_random_mask`). Nothing in
``models/`` or ``data/`` imports ``engine`` (``tests/test_layering.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError

__all__ = ["random_modality_dropout", "sample_modality_keep", "sample_modality_subsets"]


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
    keep = sample_modality_keep(present.cpu(), p, generator)
    out = dict(batch)
    for j, m in enumerate(modalities):
        if m in batch:
            mask = keep[:, j].to(batch[m].device).view(-1, 1, 1, 1)
            out[m] = batch[m] * mask
    out["present"] = keep.to(present.device)
    return out


def sample_modality_keep(present: torch.Tensor, p: float | Sequence[float],
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample modality dropout: which modalities each sample keeps.

    Args:
        present: ``bool[B, M]``, the modalities each sample has.
        p: drop probability per modality (one float for all, or ``M`` values in column order),
            each in ``[0, 1]``.

    Returns:
        ``bool[B, M]`` within ``present``; a sample never loses all its modalities: one that
        would keeps one of its present modalities, chosen uniformly.

    Raises:
        ConfigError: ``p`` has the wrong length or a value outside ``[0, 1]``.
    """
    b, m = present.shape
    probs = torch.full((m,), float(p)) if isinstance(p, (int, float)) else torch.tensor(
        [float(v) for v in p])
    if probs.numel() != m or (probs < 0).any() or (probs > 1).any():
        raise ConfigError(f"modality dropout needs {m} probabilities in [0, 1], got {p}")
    keep = (torch.rand(b, m, generator=generator) >= probs) & present.cpu()
    for i in torch.nonzero(~keep.any(1)).flatten().tolist():
        choices = torch.nonzero(present[i].cpu()).flatten()
        if len(choices):
            keep[i, choices[torch.randint(len(choices), (1,), generator=generator)]] = True
    return keep.to(present.device)


def sample_modality_subsets(present: torch.Tensor, full_share: float | None = None,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample modality subsets of uniform size: which modalities each sample keeps.

    Sample ``i`` with ``n_i`` present modalities keeps all of them with probability
    ``full_share``; otherwise (or always, with ``full_share=None``) it draws a subset size
    ``k ~ U{1..n_i}`` and then ``k`` of its modalities uniformly. Without ``full_share`` the
    full set is kept in ``1/n_i`` of the samples. Source: AnySeg (Zheng et al. 2024, public
    code ``zhengxuJosh/AnySeg``) draws the subset size uniformly per batch; here per sample.

    Args:
        present: ``bool[B, M]``.
        full_share: probability in ``[0, 1]`` of keeping the full set, or ``None``.

    Returns:
        ``bool[B, M]`` within ``present``, at least one per sample that has one.

    Raises:
        ConfigError: ``full_share`` outside ``[0, 1]``.
    """
    if full_share is not None and not 0 <= full_share <= 1:
        raise ConfigError(f"full_share must lie in [0, 1], got {full_share}")
    pres = present.cpu().bool()
    keep = torch.zeros_like(pres)
    for i in range(pres.shape[0]):
        cols = torch.nonzero(pres[i]).flatten()
        n = len(cols)
        if n == 0:
            continue
        if full_share is not None:
            full = bool(torch.rand((), generator=generator) < full_share)
            k = n if full else int(torch.randint(1, max(n, 2), (), generator=generator))
            k = min(k, n)
        else:
            k = int(torch.randint(1, n + 1, (), generator=generator))
        chosen = cols[torch.randperm(n, generator=generator)[:k]]
        keep[i, chosen] = True
    return keep.to(present.device)
