"""The training data stream that a resumed run continues exactly: the order, each sample's
augmentation and the loader's position are functions of ``(seed, epoch, index)``.

Exact resume (see also :mod:`fusionseg.engine.resume`): the training data of epoch ``e`` is a
pure function of ``(seed, e)`` and needs no process state:

- the order is a permutation drawn from a generator seeded with ``(seed, e)``
  (:class:`EpochSampler`), so it does not depend on torch's global RNG or on earlier epochs;
- each sample's augmentation draws from a generator seeded with ``(seed, e, index)``
  (:class:`SeededAugmentation`), so it does not depend on which DataLoader worker loads it,
  on the number of workers, or on the worker processes' RNG state;
- the loader (:class:`ResumableLoader`) reports how many samples of the current epoch it has
  handed out; Lightning stores that in the checkpoint (``loops.fit_loop.state_dict.
  combined_loader``, its ``state_dict`` / ``load_state_dict`` protocol for resumable
  loaders), :class:`~fusionseg.engine.resume.ResumeStateCallback` hands it back on resume, and
  the loader skips those samples of the epoch's permutation.

So a run resumed from a mid-epoch checkpoint sees exactly the batches the uninterrupted run
saw after that step, whatever ``num_workers`` either run used. The LightningDataModule that
builds these from a run config is :class:`fusionseg.engine.datamodule.SegDataModule`.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .sample import Sample
from .transforms import Transform

#: stream tags of :func:`stream_seed`: one independent random stream per purpose
ORDER_STREAM, AUGMENT_STREAM = 0, 1


def stream_seed(seed: int, stream: int, *key: int) -> int:
    """A 63-bit seed for ``torch.Generator.manual_seed``, a deterministic function of
    ``(seed, stream, *key)`` (numpy ``SeedSequence`` hashing, so nearby keys give unrelated
    streams). ``stream`` is :data:`ORDER_STREAM` (key: epoch) or :data:`AUGMENT_STREAM`
    (key: epoch, sample index).

    Raises:
        ValueError: a negative ``seed`` or key (``SeedSequence`` entropy is non-negative).
    """
    words = [int(seed), int(stream), *map(int, key)]
    if any(w < 0 for w in words):
        raise ValueError(f"stream_seed needs non-negative integers, got {words}")
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


class EpochSampler(Sampler):
    """Training order as ``(epoch, index)`` keys: epoch ``e`` is ``torch.randperm(num_samples)``
    from a generator seeded with ``stream_seed(seed, ORDER_STREAM, e)`` (or ``0..n-1`` without
    ``shuffle``), the same in every process and every run.

    Lightning calls :meth:`set_epoch` at the start of every training epoch (it looks for
    ``set_epoch`` on ``DataLoader.sampler``). With ``num_replicas > 1`` (DDP) the permutation is
    padded by repetition to a multiple of ``num_replicas`` and rank ``rank`` takes every
    ``num_replicas``-th key from position ``rank`` (as ``DistributedSampler`` does), so the
    ranks' shards are disjoint up to the padding. :meth:`skip_next` makes the next pass start
    after the first ``n`` keys of this rank's shard (a resumed epoch).

    Yields:
        ``(epoch, index)`` tuples of Python ints, ``0 <= index < num_samples``.

    Raises:
        ValueError: ``num_samples < 1``, ``num_replicas < 1`` or ``rank`` outside
            ``[0, num_replicas)``.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if num_samples < 1:
            raise ValueError(f"EpochSampler needs at least one sample, got {num_samples}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} must be in [0, num_replicas={num_replicas})")
        self.num_samples, self.seed, self.shuffle = int(num_samples), int(seed), shuffle
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s permutation from the next pass on."""
        self.epoch = int(epoch)

    def skip_next(self, n: int) -> None:
        """Start the next pass after this rank's first ``n`` keys (0: from the start)."""
        self._skip = max(int(n), 0)

    def permutation(self, epoch: int) -> list[int]:
        """All sample indices of ``epoch`` in order (every rank's, before sharding)."""
        if not self.shuffle:
            return list(range(self.num_samples))
        gen = torch.Generator().manual_seed(stream_seed(self.seed, ORDER_STREAM, epoch))
        return torch.randperm(self.num_samples, generator=gen).tolist()

    def shard(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch`` (the whole permutation on a single device)."""
        order = self.permutation(epoch)
        if self.num_replicas == 1:
            return order
        total = -(-len(order) // self.num_replicas) * self.num_replicas
        order = (order * (total // len(order) + 1))[:total]
        return order[self.rank::self.num_replicas]

    def __len__(self) -> int:
        return -(-self.num_samples // self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        for index in self.shard(epoch)[skip:]:
            yield epoch, index


class SeededAugmentation(Dataset):
    """A training dataset read by ``(epoch, index)`` keys whose random augmentation is a
    function of ``(seed, epoch, index)`` only.

    ``self[(e, i)]`` loads sample ``i`` untransformed (``dataset.load_sample(i)``) and applies
    ``dataset.transform`` with a ``torch.Generator`` seeded with ``stream_seed(seed,
    AUGMENT_STREAM, e, i)`` (:class:`~fusionseg.data.transforms.Transform` s take the generator;
    a plain callable transform runs with torch's global RNG forked and seeded the same way).
    A plain int key ``i`` means epoch 0. ``len()`` is the dataset's.

    Returns (``__getitem__``): a Sample (see :mod:`fusionseg.data.sample`).
    """

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int) -> Sample:
        epoch, index = (0, key) if isinstance(key, int) else key
        seed = stream_seed(self.seed, AUGMENT_STREAM, epoch, index)
        ds = self.dataset
        transform = getattr(ds, "transform", None)
        if isinstance(transform, Transform) and hasattr(ds, "load_sample"):
            return transform(ds.load_sample(index), torch.Generator().manual_seed(seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ds[index]


class _CountingIterator:
    """Iterator of a :class:`ResumableLoader` pass: creates the DataLoader iterator at the
    first ``next`` (after Lightning's ``set_epoch``; a multi-worker iterator requests indices
    as soon as it exists) and counts the batches it hands out."""

    def __init__(self, loader: ResumableLoader) -> None:
        self.loader, self._it = loader, None

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._it = self.loader._start_pass()
        batch = next(self._it)
        self.loader._consumed += self.loader.batch_size
        return batch


class ResumableLoader(DataLoader):
    """A training DataLoader over an :class:`EpochSampler` that a resumed run continues.

    ``state_dict()`` -> ``{"epoch", "consumed", "num_samples", "seed", "batch_size"}``:
    the epoch of the current pass and how many of this rank's samples of it have been handed
    out (batches are counted as they leave the loader, so worker prefetching does not count).
    Lightning calls it when it writes a checkpoint and calls ``load_state_dict`` on resume,
    before the first pass; the first pass of that same epoch then starts after the
    ``consumed`` samples. A pass of another epoch (the checkpoint was written at the end of an
    epoch) starts from the beginning.

    Args:
        dataset: a :class:`SeededAugmentation` (or any dataset taking ``(epoch, index)`` keys).
        sampler: the :class:`EpochSampler`; further arguments are ``DataLoader``'s
            (``batch_size``, ``drop_last``, ``num_workers``, ``collate_fn``, ...).
    """

    def __init__(self, dataset, sampler: EpochSampler, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._consumed = 0
        self._pending: dict[str, Any] | None = None

    def _start_pass(self) -> Iterator:
        sampler: EpochSampler = self.sampler  # type: ignore[assignment]
        pending, self._pending = self._pending, None
        skip = 0
        if pending is not None and int(pending["epoch"]) == sampler.epoch:
            skip = int(pending["consumed"])
            if (int(pending["num_samples"]) != sampler.num_samples
                    or int(pending["seed"]) != sampler.seed):
                warnings.warn(
                    f"resuming epoch {sampler.epoch} mid-way with another training set size or "
                    f"seed than the checkpoint's ({pending['num_samples']} samples, seed "
                    f"{pending['seed']}): the data order differs from the interrupted run's",
                    stacklevel=2)
        sampler.skip_next(skip)
        self._consumed = skip
        return DataLoader.__iter__(self)

    def __iter__(self) -> _CountingIterator:  # type: ignore[override]
        return _CountingIterator(self)

    def state_dict(self) -> dict[str, Any]:
        """Position in the training stream (see the class docstring)."""
        sampler: EpochSampler = self.sampler  # type: ignore[assignment]
        return {"epoch": sampler.epoch, "consumed": self._consumed,
                "num_samples": sampler.num_samples, "seed": sampler.seed,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (of :meth:`state_dict`) at the next pass.

        Raises:
            KeyError: ``state`` lacks ``"epoch"``, ``"consumed"``, ``"num_samples"`` or
                ``"seed"``.
        """
        self._pending = {k: state[k] for k in ("epoch", "consumed", "num_samples", "seed")}
