"""Exact resume: what a checkpoint carries, and how it is put back, so that a run killed at any
point (even SIGKILL) and resumed from its ``last.ckpt`` ends bit-identical on CPU to the run
that was never interrupted.

What a ``fusionseg`` training checkpoint holds for this:

- model, optimizer, LR schedule, loop counters and callback states: Lightning's own;
- the training data position: :class:`~fusionseg.data.stream.ResumableLoader`'s
  ``{"epoch", "consumed", ...}`` under ``loops.fit_loop.state_dict.combined_loader`` (handed
  back to the loader by :class:`ResumeStateCallback`); the data order and each sample's
  augmentation are functions of ``(seed, epoch, index)`` (:mod:`fusionseg.data.stream`),
  so no DataLoader worker state is needed;
- the main process's random state, under ``callbacks["ResumeStateCallback"]``
  (:class:`ResumeStateCallback`): torch's CPU generator (dropout, drop-path, modality dropout,
  the robust-training masks, MoBaNet's MCRM draw from it), every CUDA device's generator,
  numpy's and Python's ``random`` global generators.

The random state is captured while the checkpoint is written and put back just before the
first training batch after resuming, so nothing the resumed run does while starting (building
the model, creating loaders, re-running an interrupted validation) changes what the next
training step draws. Loading data draws nothing from these generators (the loaders have their
own ``generator``), so the state at the checkpoint is the state the next step sees.

Everything is stored as tensors, ints, floats and lists, so checkpoints still load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from ..errors import CheckpointError

__all__ = ["ResumeStateCallback", "capture_rng_state", "restore_rng_state"]


def capture_rng_state() -> dict[str, Any]:
    """The process's global random state: ``{"torch": uint8 tensor, "cuda": [uint8 tensor per
    device] (empty without CUDA), "numpy": {"key": int64 [624], "pos", "has_gauss",
    "cached_gaussian"}, "python": {"version", "state": [625 ints], "gauss_next"}}``."""
    np_name, key, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    cuda = ([s.clone() for s in torch.cuda.get_rng_state_all()]
            if torch.cuda.is_available() and torch.cuda.is_initialized() else [])
    return {
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
        "numpy": {"name": str(np_name), "key": torch.from_numpy(key.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(py_version), "state": [int(v) for v in py_state],
                   "gauss_next": py_gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global generators to ``state`` (from :func:`capture_rng_state`). CUDA states
    are restored when this process sees as many devices as were saved (otherwise left alone);
    missing entries are skipped.

    Raises:
        ValueError, RuntimeError: a malformed state (from numpy / torch / ``random``).
    """
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy" in state:
        n = state["numpy"]
        key = n["key"].numpy() if isinstance(n["key"], torch.Tensor) else np.asarray(n["key"])
        np.random.set_state((n.get("name", "MT19937"), key.astype(np.uint32), int(n["pos"]),
                             int(n["has_gauss"]), float(n["cached_gaussian"])))
    if "python" in state:
        p = state["python"]
        random.setstate((int(p["version"]), tuple(int(v) for v in p["state"]), p["gauss_next"]))


def _train_loaders(trainer) -> list:
    """The trainer's training loaders with a ``load_state_dict``, in Lightning's order (a
    single loader, or the values of a list / tuple / dict of them)."""
    loaders = trainer.train_dataloader
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, (list, tuple)):
        loaders = [loaders]
    return [dl for dl in loaders if callable(getattr(dl, "load_state_dict", None))
            and callable(getattr(dl, "state_dict", None))]


class ResumeStateCallback(Callback):
    """Makes a resumed run continue exactly (see the module docstring).

    - Saves the global random state (:func:`capture_rng_state`) in every checkpoint, under
      ``checkpoint["callbacks"]["ResumeStateCallback"]``, and restores it at the first training
      batch after resuming (``on_train_batch_start``, before the training step).
    - Hands the training loaders' positions that Lightning stored in the checkpoint
      (``loops.fit_loop.state_dict.combined_loader``) back to the loaders at ``on_train_start``,
      before the first batch is drawn. Lightning itself loads them only if the train loader did
      not exist yet when the loop state was restored, and ``configure_optimizers`` creates it
      early through ``trainer.estimated_stepping_batches`` (Lightning issue #20550, open in
      2.6), so without this a mid-epoch resume would start the epoch over. Loading twice is
      harmless: both happen before the epoch's first batch.

    A checkpoint without these entries (written before this callback existed) resumes with the
    seeded state of the new process and from the start of its epoch, as before.
    """

    def __init__(self) -> None:
        self._pending_rng: dict[str, Any] | None = None
        self._pending_loaders: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return capture_rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_rng = state_dict

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        loops = checkpoint.get("loops") or {}
        fit = (loops.get("fit_loop") or {}).get("state_dict") or {}
        self._pending_loaders = list(fit.get("combined_loader") or [])

    def on_train_start(self, trainer, pl_module) -> None:
        states, self._pending_loaders = self._pending_loaders, []
        if not states:
            return
        loaders = _train_loaders(trainer)
        if len(loaders) != len(states):
            raise CheckpointError(f"the checkpoint holds the positions of {len(states)} training "
                               f"loaders but this run has {len(loaders)} resumable ones")
        for loader, state in zip(loaders, states, strict=True):
            loader.load_state_dict(state)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending_rng is not None:
            state, self._pending_rng = self._pending_rng, None
            restore_rng_state(state)
