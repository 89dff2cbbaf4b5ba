"""Exact resume after SIGKILL: data order, per-sample augmentation, loader position, RNG state,
step-interval ``last.ckpt`` - and end to end: a training process killed mid-epoch (from
outside while it runs, and inside a checkpoint write) and resumed with ``--resume last.ckpt``
ends with bit-identical weights to the uninterrupted run, whatever ``num_workers`` was."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY_MIT  # noqa: E402

from fusionseg.cli import app  # noqa: E402
from fusionseg.config import ConfigError, config_from_dict  # noqa: E402
from fusionseg.data.sample import Collate  # noqa: E402
from fusionseg.data.stream import (  # noqa: E402
    EpochSampler,
    ResumableLoader,
    SeededAugmentation,
    stream_seed,
)
from fusionseg.data.synthetic.city import render_city  # noqa: E402
from fusionseg.engine.datamodule import build_dataset  # noqa: E402
from fusionseg.engine.resume import capture_rng_state, restore_rng_state  # noqa: E402

runner = CliRunner()
N_TRAIN, BATCH, EPOCHS = 12, 2, 2  # 6 steps per epoch, 12 in all
STEPS = N_TRAIN // BATCH * EPOCHS
REPO_SRC = str(Path(__file__).resolve().parents[2] / "src")


def _cfg_dict(root: Path, workers: int = 0, **train) -> dict:
    return {
        "name": "resume", "seed": 11,
        "model": {"name": "sum_fusion", "backbone": "mit_b0", "modalities": ["rgb", "depth"],
                  "decoder_dim": 16, "backbone_kwargs": TINY_MIT},
        "data": {"dataset": "deliver", "root": str(root), "crop_size": [32, 32],
                 "scale_range": [0.5, 1.5], "batch_size": BATCH, "val_batch_size": 2,
                 "num_workers": workers},
        # robust training: modality dropout + rectangles draw from the main process's RNG,
        # the MiT's drop-path (0.1) too
        "train": {"max_epochs": EPOCHS, "lr": 1e-3, "progress": False, "threads": 1,
                  "log_every_n_steps": 1, "loss": "ce", "robust": True, **train},
    }


def _write_cfg(path: Path, root: Path, **kw) -> Path:
    path.write_text(yaml.safe_dump(_cfg_dict(root, **kw)))
    return path


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_city") / "city"
    render_city(root, n_train=N_TRAIN, n_val=2, size=32, seed=5, workers=1,
                failure_fraction=0.0)
    return root


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def reference(city, tmp_path_factory) -> Path:
    """The uninterrupted run (num_workers=0, a step-interval last.ckpt every 2 steps)."""
    tmp = tmp_path_factory.mktemp("resume_ref")
    cfg = _write_cfg(tmp / "cfg.yaml", city, checkpoint_every_n_steps=2)
    res = runner.invoke(app, ["train", str(cfg), "--run-dir", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    last = tmp / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == STEPS
    return last


# --------------------------------------------------------------------------- data order


def test_stream_seed_is_a_pure_function_and_rejects_negative_keys():
    assert stream_seed(3, 1, 2, 5) == stream_seed(3, 1, 2, 5)
    seeds = {stream_seed(3, 1, e, i) for e in range(3) for i in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 2**63 for s in seeds)
    assert stream_seed(3, 0, 1) != stream_seed(3, 1, 1)
    with pytest.raises(ValueError, match="non-negative"):
        stream_seed(3, 1, -1)


def test_epoch_sampler_order_depends_on_seed_and_epoch_only():
    s = EpochSampler(10, seed=4)
    torch.manual_seed(0)
    first = list(s)
    torch.manual_seed(123)  # the global RNG plays no part
    assert list(s) == first
    assert [e for e, _ in first] == [0] * 10 and sorted(i for _, i in first) == list(range(10))
    s.set_epoch(1)
    second = [i for _, i in s]
    assert sorted(second) == list(range(10)) and second != [i for _, i in first]
    assert [i for _, i in EpochSampler(10, seed=4, shuffle=False)] == list(range(10))
    # skip_next: the next pass only, from position n of the same permutation
    s.skip_next(7)
    assert [i for _, i in s] == second[7:]
    assert [i for _, i in s] == second
    s.skip_next(20)
    assert list(s) == []


def test_epoch_sampler_shards_ranks_like_distributed_sampler():
    shards = [EpochSampler(10, seed=2, num_replicas=4, rank=r) for r in range(4)]
    for sh in shards:
        sh.set_epoch(3)
    keys = [[i for _, i in sh] for sh in shards]
    assert all(len(k) == len(sh) == 3 for k, sh in zip(keys, shards, strict=True))
    order = shards[0].permutation(3)
    padded = order + order[:2]
    assert keys == [padded[r::4] for r in range(4)]
    with pytest.raises(ValueError, match=r"rank 4 must be in \[0, num_replicas=4\)"):
        EpochSampler(10, seed=2, num_replicas=4, rank=4)
    with pytest.raises(ValueError, match="at least one sample"):
        EpochSampler(0, seed=2)


def test_seeded_augmentation_depends_on_seed_epoch_and_index_only(city):
    cfg = config_from_dict(_cfg_dict(city))
    ds = SeededAugmentation(build_dataset(cfg, "train", train=True), seed=9)
    torch.manual_seed(0)
    a = ds[(1, 4)]
    torch.manual_seed(999)
    b = ds[(1, 4)]
    for k in ("rgb", "depth", "label"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # another epoch of the same sample: another crop / flip / jitter (scale range 0.5-1.5)
    others = [ds[(e, 4)]["rgb"] for e in range(2, 6)]
    assert any(not torch.equal(a["rgb"], o) for o in others)
    assert a["meta"]["id"] == b["meta"]["id"] == ds.dataset.records[4].id


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_position_round_trip_continues_the_epoch(city, workers):
    cfg = config_from_dict(_cfg_dict(city))
    ds = SeededAugmentation(build_dataset(cfg, "train", train=True), seed=9)

    def loader():
        return ResumableLoader(ds, EpochSampler(len(ds), seed=9), batch_size=BATCH,
                               drop_last=True, num_workers=workers,
                               collate_fn=Collate(["rgb", "depth"]))

    full = loader()
    full.sampler.set_epoch(1)
    batches = list(full)
    assert len(batches) == N_TRAIN // BATCH
    assert full.state_dict()["consumed"] == N_TRAIN

    part = loader()
    part.sampler.set_epoch(1)
    it = iter(part)
    for _ in range(2):
        next(it)
    state = part.state_dict()
    assert state == {"epoch": 1, "consumed": 2 * BATCH, "num_samples": N_TRAIN, "seed": 9,
                     "batch_size": BATCH}
    del it

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    rest = list(resumed)
    assert [b["meta"] for b in rest] == [b["meta"] for b in batches[2:]]
    for got, want in zip(rest, batches[2:], strict=True):
        torch.testing.assert_close(got["rgb"], want["rgb"], rtol=0, atol=0)
    assert resumed.state_dict()["consumed"] == N_TRAIN
    # the position is for its epoch only: a pass of another epoch starts at its beginning
    other = loader()
    other.load_state_dict(state)
    other.sampler.set_epoch(2)
    assert len(list(other)) == N_TRAIN // BATCH
    with pytest.raises(KeyError):
        other.load_state_dict({"epoch": 1})


def test_loader_warns_when_the_training_set_changed(city):
    cfg = config_from_dict(_cfg_dict(city))
    ds = SeededAugmentation(build_dataset(cfg, "train", train=True), seed=9)
    dl = ResumableLoader(ds, EpochSampler(len(ds), seed=9), batch_size=BATCH, drop_last=True,
                         collate_fn=Collate(["rgb", "depth"]))
    dl.load_state_dict({"epoch": 0, "consumed": 4, "num_samples": 99, "seed": 9})
    with pytest.warns(UserWarning, match="another training set size or seed"):
        assert len(list(dl)) == N_TRAIN // BATCH - 2


# --------------------------------------------------------------------------- RNG state


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    want = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    torch.save(state, tmp_path / "rng.pt")
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2]


def _next_draws() -> list:
    """The next draw of every generator, Gaussian ones first (they would use the cached value
    that a previous odd number of normal draws left behind)."""
    return [random.gauss(0.0, 1.0), random.random(), np.random.standard_normal(),
            np.random.normal(2.0, 3.0), np.random.rand(), torch.randn(3), torch.rand(2)]


def test_rng_restore_keeps_the_cached_gaussians_of_every_generator(tmp_path):
    """``random.gauss`` and numpy's ``standard_normal`` / ``normal`` produce Gaussians in pairs
    and cache the second one in the generator state (``gauss_next``, ``has_gauss`` /
    ``cached_gaussian``); after an odd number of normal draws the next one comes from that
    cache, so a restore that drops it changes the sequence. Every generator's next draws after
    the round trip must equal those of the uninterrupted sequence."""
    random.seed(3)
    np.random.seed(2)
    torch.manual_seed(1)
    random.gauss(0.0, 1.0)  # odd counts: a Gaussian is now cached
    np.random.standard_normal(2)
    np.random.normal()  # 3 draws
    torch.randn(5)
    state = capture_rng_state()
    assert state["numpy"]["has_gauss"] == 1 and state["python"]["gauss_next"] is not None
    want = _next_draws()  # the uninterrupted sequence (capturing draws nothing)
    torch.save(state, tmp_path / "rng.pt")
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    random.gauss(0.0, 1.0)  # a different cached Gaussian in each generator
    np.random.standard_normal()
    torch.randn(1)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = _next_draws()
    for g, w in zip(got, want, strict=True):
        if isinstance(w, torch.Tensor):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        else:
            assert g == w


def test_checkpoint_every_n_steps_must_be_positive(city):
    with pytest.raises(ConfigError, match="checkpoint_every_n_steps"):
        config_from_dict(_cfg_dict(city, checkpoint_every_n_steps=0))


# --------------------------------------------------------------------------- end to end


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_step_checkpoints_and_two_uninterrupted_runs_are_identical(reference, city, tmp_path):
    ck = torch.load(reference, weights_only=True)
    assert ck["fusionseg_config"]["train"]["checkpoint_every_n_steps"] == 2
    assert "ResumeStateCallback" in ck["callbacks"]
    assert (reference.parent / "best.ckpt").is_file()
    # a second run, with two loader workers: the same weights
    cfg = _write_cfg(tmp_path / "cfg.yaml", city, workers=2, checkpoint_every_n_steps=2)
    res = runner.invoke(app, ["train", str(cfg), "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    _assert_same_weights(reference, tmp_path / "run" / "checkpoints" / "last.ckpt")


def test_sigkill_from_outside_mid_epoch_then_resume_is_bit_identical(reference, city,
                                                                      tmp_path):
    # a last.ckpt every step; the process is killed as soon as the first one exists
    cfg = _write_cfg(tmp_path / "cfg.yaml", city, checkpoint_every_n_steps=1)
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "fusionseg.cli", "train", str(cfg),
                             "--run-dir", str(run)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert last.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() else "timeout"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    ck = torch.load(last, weights_only=True)
    assert 1 <= ck["global_step"] < STEPS, "the run finished before it was killed"
    # resume with the step checkpoints turned off: the result must not depend on them
    res = runner.invoke(app, ["train", str(cfg), "--resume", str(last),
                              "--set", "train.checkpoint_every_n_steps=null"])
    assert res.exit_code == 0, res.output
    assert torch.load(last, weights_only=True)["global_step"] == STEPS
    _assert_same_weights(reference, last)


def _train_and_kill_in_save(cfg_path: str, run_dir: str, n_kill: int) -> None:
    """Forked child: train, and SIGKILL this process inside the ``n_kill``-th ``torch.save``
    after writing a few bytes of it (a torn checkpoint write)."""
    from fusionseg.config import load_config
    from fusionseg.engine import runner as engine_runner

    saves, real_save = [0], torch.save

    def save(obj, f, *args, **kwargs):
        saves[0] += 1
        if saves[0] == n_kill:
            f.write(b"torn checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    engine_runner.train(load_config(cfg_path), run_dir=run_dir)
    os._exit(0)


def test_sigkill_inside_a_checkpoint_write_then_resume_with_workers(reference, city,
                                                                     tmp_path):
    # last.ckpt every 2 steps; killed while writing the second one (step 4, mid-epoch 0); the
    # killed run reads with 2 workers, the resumed one with 1, the reference with none. The
    # child is forked from this process (Lightning already imported: no start-up cost).
    cfg = _write_cfg(tmp_path / "cfg.yaml", city, workers=2, checkpoint_every_n_steps=2)
    run = tmp_path / "run"
    child = multiprocessing.get_context("fork").Process(
        target=_train_and_kill_in_save, args=(str(cfg), str(run), 2))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL
    ckpts = run / "checkpoints"
    torn = [p.name for p in ckpts.iterdir() if p.name.endswith(".tmp")]
    assert len(torn) == 1 and torn[0].startswith(".last.ckpt.")
    ck = torch.load(ckpts / "last.ckpt", weights_only=True)  # the previous one, intact
    assert ck["global_step"] == 2
    assert ck["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["consumed"] == 2 * BATCH
    res = runner.invoke(app, ["train", str(cfg), "--resume", str(ckpts / "last.ckpt"),
                              "--set", "data.num_workers=1"])
    assert res.exit_code == 0, res.output
    _assert_same_weights(reference, ckpts / "last.ckpt")


def test_last_ckpt_is_written_every_epoch_even_without_a_better_miou(city, tmp_path):
    # lr 0: the weights never change, so val/mIoU never improves after epoch 1
    cfg = _write_cfg(tmp_path / "cfg.yaml", city, lr=0.0, epoch_steps=1)
    res = runner.invoke(app, ["train", str(cfg), "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    ckpts = tmp_path / "run" / "checkpoints"
    assert torch.load(ckpts / "best.ckpt", weights_only=True)["global_step"] == 1
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == EPOCHS


# --------------------------------------------------------------------------- RNG state layout


def test_capture_rng_state_layout_without_cuda(monkeypatch):
    """The documented layout: no CUDA -> "cuda": []; numpy's legacy MT19937 state with its 624
    key words as int64 (seed() leaves pos 624 and no cached Gaussian)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    np.random.seed(4)
    words = np.random.get_state()[1]
    state = capture_rng_state()
    assert set(state) == {"torch", "cuda", "numpy", "python"}
    assert state["cuda"] == []
    n = state["numpy"]
    assert set(n) == {"name", "key", "pos", "has_gauss", "cached_gaussian"}
    assert n["name"] == "MT19937"
    assert n["key"].dtype == torch.int64 and n["key"].shape == (624,)
    assert n["key"].tolist() == [int(w) for w in words]
    assert (n["pos"], n["has_gauss"], n["cached_gaussian"]) == (624, 0, 0.0)


def test_capture_reads_cuda_generators_only_once_cuda_is_initialised(monkeypatch):
    """Capturing never initialises CUDA itself; an initialised CUDA gives a copy per device."""
    def must_not_run():
        raise AssertionError("capture_rng_state would initialise CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", must_not_run)
    assert capture_rng_state()["cuda"] == []
    devices = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: devices)
    cuda = capture_rng_state()["cuda"]
    assert [t.tolist() for t in cuda] == [[1, 2], [3]]
    assert all(c is not d for c, d in zip(cuda, devices, strict=True))  # copies


@pytest.mark.parametrize(("available", "count", "saved", "restored"), [
    (True, 1, [[7, 8]], True),  # as many devices as saved
    (True, 2, [[7, 8]], False),  # another device count: left alone
    (False, 1, [[7, 8]], False),  # CUDA not available: left alone
    (True, 0, [], False),  # nothing saved: nothing to set
])
def test_restore_sets_cuda_generators_only_when_the_device_count_matches(
        monkeypatch, available, count, saved, restored):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", calls.append)
    restore_rng_state({"cuda": [torch.tensor(s, dtype=torch.uint8) for s in saved]})
    if restored:
        assert len(calls) == 1 and [t.tolist() for t in calls[0]] == saved
    else:
        assert calls == []


def _numpy_entry(seed: int) -> tuple[dict, np.ndarray]:
    """numpy's state right after seed(seed), without a "name", and its next three draws."""
    np.random.seed(seed)
    _, key, pos, has_gauss, cached = np.random.get_state()
    want = np.random.rand(3)
    return {"key": key, "pos": pos, "has_gauss": has_gauss, "cached_gaussian": cached}, want


def test_restore_takes_the_numpy_key_as_an_array_and_defaults_the_name_to_mt19937():
    """An entry without "name" and with the key as a numpy uint32 array (np.random.get_state's
    own form) puts numpy back on the seeded stream."""
    entry, want = _numpy_entry(5)
    np.random.seed(0)
    restore_rng_state({"numpy": entry})
    np.testing.assert_array_equal(np.random.rand(3), want)


def test_restore_takes_the_numpy_key_words_as_a_signed_32_bit_tensor():
    """A key stored as int32 (the bit pattern of the uint32 words; about half of them are
    >= 2**31, negative as int32) is read modulo 2**32."""
    entry, want = _numpy_entry(6)
    entry["key"] = torch.from_numpy(entry["key"].view(np.int32).copy())
    assert bool((entry["key"] < 0).any())
    np.random.seed(0)
    restore_rng_state({"numpy": {**entry, "name": "MT19937"}})
    np.testing.assert_array_equal(np.random.rand(3), want)


def test_restore_rejects_a_numpy_state_of_another_generator():
    entry, _ = _numpy_entry(5)
    with pytest.raises(ValueError, match="MT19937"):
        restore_rng_state({"numpy": {**entry, "name": "PCG64"}})


# --------------------------------------------------------------------------- loader positions


class _ResumableLoader:
    def __init__(self) -> None:
        self.loaded: list[dict] = []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        self.loaded.append(state)


class _LoadOnlyLoader:  # no state_dict: not resumable
    def load_state_dict(self, state: dict) -> None:
        raise AssertionError("a loader without state_dict got a position")


def _checkpoint_with_positions(*positions: dict) -> dict:
    return {"loops": {"fit_loop": {"state_dict": {"combined_loader": list(positions)}}}}


def test_resume_callback_hands_positions_to_the_resumable_loaders_of_a_dict():
    """Of a dict of train loaders only those with state_dict and load_state_dict count."""
    from types import SimpleNamespace

    from fusionseg.engine.resume import ResumeStateCallback

    resumable = _ResumableLoader()
    trainer = SimpleNamespace(train_dataloader={"plain": object(), "half": _LoadOnlyLoader(),
                                                "main": resumable})
    cb = ResumeStateCallback()
    cb.on_load_checkpoint(trainer, None, _checkpoint_with_positions({"epoch": 1, "consumed": 4}))
    cb.on_train_start(trainer, None)
    assert resumable.loaded == [{"epoch": 1, "consumed": 4}]


def test_resume_callback_refuses_a_checkpoint_with_another_number_of_loaders():
    from types import SimpleNamespace

    from fusionseg.engine.resume import CheckpointError, ResumeStateCallback

    trainer = SimpleNamespace(train_dataloader=_ResumableLoader())
    cb = ResumeStateCallback()
    cb.on_load_checkpoint(trainer, None, _checkpoint_with_positions({"consumed": 2},
                                                                    {"consumed": 4}))
    with pytest.raises(CheckpointError,
                       match="positions of 2 training loaders but this run has 1 resumable"):
        cb.on_train_start(trainer, None)
