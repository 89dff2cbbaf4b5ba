"""Two-process CPU DDP (gloo): training and validation agree with a single process.

A tiny generated DELIVER tree (8 train, 8 val samples) and a tiny sum-fusion MiT are trained
for one epoch with two processes and ``data.batch_size=2`` per process, so each process takes
2 optimizer steps over its half of the train set (a global batch of 4). Two launchers:

* Lightning's own subprocess launcher, from the README's command
  ``fusionseg train CONFIG --set train.devices=2 --set train.strategy=ddp`` (plus
  ``train.accelerator=cpu``): rank 0 re-runs the same command line for rank 1;
* ``python -m torch.distributed.run --nproc_per_node 2`` (torchrun), which starts both ranks.

The command runs through a small driver script written by the test: it calls the fusionseg CLI
unchanged after swapping ``runner.SegmentationModule`` for a subclass that records the sample
ids each rank trained and validated on and saves its weights to ``rank{r}.pt`` at fit end, and
it saves each rank's ``runner.train`` result to ``rank{r}_result.json``.

Checked: both ranks end with bit-identical weights (equal to ``last.ckpt``); each step's
shards are disjoint; validation covers every val sample exactly once (8 samples, 2 ranks,
``val_batch_size=1``: no DistributedSampler padding); the validation metrics each rank computes
and the ones logged to ``metrics.csv`` equal a single-process
:func:`fusionseg.engine.runner.evaluate` of ``last.ckpt`` (the confusion matrix is synced
across processes by torchmetrics, so a rank scoring only its half would differ).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY_MIT  # noqa: E402
from fixtures.deliver_tree import make_deliver_tree  # noqa: E402

from fusionseg.config import load_config  # noqa: E402
from fusionseg.engine.runner import evaluate  # noqa: E402

PYTHON = sys.executable
TIMEOUT_S = 300  # per launch (a hang guard); a healthy one takes ~25 s on 2 idle cores
README_DDP = ["--set", "train.devices=2", "--set", "train.strategy=ddp",
              "--set", "train.accelerator=cpu"]
METRICS = ("mIoU", "OA", "mAcc", "mF1")

DRIVER = '''
"""fusionseg CLI with a SegmentationModule that records what each DDP rank did."""
import json
import os

import torch

from fusionseg import cli
from fusionseg.engine import runner

OUT = os.environ["FUSIONSEG_DDP_OUT"]


class RecordingModule(runner.SegmentationModule):
    rank = 0

    def on_fit_start(self):
        self.seen = {"train": [], "val": []}
        RecordingModule.rank = self.global_rank

    def training_step(self, batch, batch_idx):
        self.seen["train"].append([m["id"] for m in batch["meta"]])
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append([m["id"] for m in batch["meta"]])
        return super().validation_step(batch, batch_idx)

    def on_fit_end(self):
        torch.save({
            "rank": self.global_rank,
            "world_size": self.trainer.world_size,
            "backend": torch.distributed.get_backend(),
            "global_step": self.trainer.global_step,
            "seen": self.seen,
            "metrics": self.last_val_metrics,
            "state_dict": {k: v.detach().cpu().clone()
                           for k, v in self.model.state_dict().items()},
        }, os.path.join(OUT, f"rank{self.global_rank}.pt"))


_train = runner.train


def recording_train(*args, **kwargs):
    result = _train(*args, **kwargs)
    path = os.path.join(OUT, f"rank{RecordingModule.rank}_result.json")
    with open(path, "w") as f:
        json.dump(result, f, default=str)
    return result


runner.SegmentationModule = RecordingModule
runner.train = recording_train
cli.main()
'''


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(out: Path, port: int | None = None) -> dict[str, str]:
    """The test's environment without any launcher / cluster variables (a CI job under SLURM
    or torchrun must not leak into the child), one thread per process, a free MASTER_PORT."""
    drop = ("SLURM_", "TORCHELASTIC_", "PL_", "OMPI_", "PMI_")
    names = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
             "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith(drop)}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port or _free_port()), OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="", FUSIONSEG_DDP_OUT=str(out), FUSIONSEG_DEBUG="1",
               PYTHONWARNINGS="ignore")
    return env


def _launch(cmd: list[str], out: Path, cwd: Path, port: int | None = None) -> str:
    """Run ``cmd`` in its own process group (so a hung rank it started is killed with it);
    return its output, or fail with the tail of its output."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, cwd=cwd, env=_clean_env(out, port), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        pytest.fail(f"DDP run timed out after {TIMEOUT_S} s: {' '.join(cmd)}\n"
                    f"--- output tail ---\n{text[-4000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a rank left behind by a failed run
        except ProcessLookupError:
            pass
    if proc.returncode != 0:
        pytest.fail(f"DDP run exited {proc.returncode}: {' '.join(cmd)}\n"
                    f"--- output tail ---\n{text[-4000:]}")
    return text


def _setup(tmp: Path) -> tuple[list[str], Path]:
    """A tiny DELIVER tree (2 conditions x 4 samples per split, 32 px) and its config; returns
    the sample ids (``cond/split/MAP_k/NNNNNN``) and the config path."""
    root = tmp / "deliver"
    ids = make_deliver_tree(root, conditions=("cloud", "night"), per_split=4, size=32,
                            modalities=("rgb", "depth"))
    cfg = {
        "name": "tiny",
        "model": {"name": "sum_fusion", "backbone": "mit_b0", "modalities": ["rgb", "depth"],
                  "decoder_dim": 16, "backbone_kwargs": TINY_MIT},
        "data": {"dataset": "deliver", "root": str(root), "crop_size": [32, 32],
                 "batch_size": 2, "val_batch_size": 1, "num_workers": 0},
        "train": {"max_epochs": 1, "lr": 1e-3, "progress": False, "precision": "32",
                  "threads": 1, "out_dir": str(tmp / "runs"), "log_every_n_steps": 1},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    (tmp / "ddp_driver.py").write_text(textwrap.dedent(DRIVER))
    return ids, path


def _ranks(out: Path) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def _results(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}_result.json").read_text()) for r in (0, 1)]


def _flat(seen: list[list[str]]) -> list[str]:
    return [i for batch in seen for i in batch]


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory):
    """The README's command, launched by Lightning (no --run-dir: runs/tiny/version_0)."""
    tmp = tmp_path_factory.mktemp("ddp_lightning")
    ids, cfg = _setup(tmp)
    out = tmp / "out"
    text = _launch([PYTHON, str(tmp / "ddp_driver.py"), "train", str(cfg), *README_DDP],
                   out, tmp)
    assert "val mIoU" in text, text[-4000:]  # the CLI's summary line
    return tmp, ids, cfg, out


def test_both_ranks_train_disjoint_shards_and_end_with_identical_weights(lightning_run):
    _, ids, _, out = lightning_run
    r0, r1 = _ranks(out)
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["backend"] == r1["backend"] == "gloo"
    # 8 train samples, 2 ranks, batch 2 per rank: 2 steps of a global batch of 4
    assert r0["global_step"] == r1["global_step"] == 2
    assert [len(b) for b in r0["seen"]["train"]] == [len(b) for b in r1["seen"]["train"]] == [2, 2]
    for b0, b1 in zip(r0["seen"]["train"], r1["seen"]["train"], strict=True):
        assert not set(b0) & set(b1), f"both ranks trained on {set(b0) & set(b1)}"
    trained = _flat(r0["seen"]["train"]) + _flat(r1["seen"]["train"])
    assert sorted(trained) == [i for i in ids if "/train/" in i]
    # DDP averages the gradients, so both replicas take the same steps from the same start
    assert r0["state_dict"].keys() == r1["state_dict"].keys()
    for name, w0 in r0["state_dict"].items():
        torch.testing.assert_close(w0, r1["state_dict"][name], rtol=0, atol=0,
                                   msg=lambda m, n=name: f"{n} differs between ranks: {m}")
    # the weights moved (a run that skipped optimizer steps would pass the check above)
    ckpt = torch.load(Path(_results(out)[0]["last_ckpt"]), weights_only=False)
    assert ckpt["global_step"] == 2
    saved = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    for name, w0 in r0["state_dict"].items():
        torch.testing.assert_close(saved[name], w0, rtol=0, atol=0)


def test_ddp_validation_metrics_equal_a_single_process_evaluation(lightning_run, monkeypatch):
    _, ids, cfg, out = lightning_run
    r0, r1 = _ranks(out)
    val0, val1 = _flat(r0["seen"]["val"]), _flat(r1["seen"]["val"])
    # each val sample scored exactly once, half per rank: no DistributedSampler padding
    assert len(val0) == len(val1) == 4
    assert sorted(val0 + val1) == [i for i in ids if "/val/" in i]
    res0 = _results(out)[0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same CPU kernels
    single = evaluate(load_config(cfg), res0["last_ckpt"], write_json=False)
    want = single["overall"]
    for rank in (r0, r1):
        got = rank["metrics"]
        for key in (*METRICS, "IoU", "Acc", "F1"):
            torch.testing.assert_close(torch.tensor(got[key], dtype=torch.float64),
                                       torch.tensor(want[key], dtype=torch.float64),
                                       rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m, k=key, r=rank["rank"]:
                                       f"rank {r} val {k} != single-process eval: {m}")
        assert set(got["per_condition"]) == {"cloud", "night"}
        for cond, miou in got["per_condition"].items():
            assert miou == single["per_condition"][cond]["mIoU"], cond
    # what the user sees: rank 0's CSV log (float32)
    rows = list(csv.DictReader((Path(res0["run_dir"]) / "csv" / "metrics.csv").open()))
    val_rows = [r for r in rows if r.get("val/mIoU")]
    assert len(val_rows) == 1
    logged = {k: float(val_rows[0][f"val/{k}"]) for k in METRICS}
    logged.update({f"mIoU_{c}": float(val_rows[0][f"val/mIoU_{c}"]) for c in ("cloud", "night")})
    expected = {k: want[k] for k in METRICS}
    expected.update({f"mIoU_{c}": single["per_condition"][c]["mIoU"] for c in ("cloud", "night")})
    torch.testing.assert_close(logged, expected, rtol=1e-6, atol=1e-6)


def test_readme_command_makes_one_run_dir(lightning_run):
    tmp, _, _, out = lightning_run
    assert sorted(p.name for p in (tmp / "runs" / "tiny").iterdir()) == ["version_0"]
    res0, res1 = _results(out)
    assert res0["last_ckpt"] == res1["last_ckpt"] and Path(res1["last_ckpt"]).is_file()


def test_torchrun_ranks_end_with_identical_weights(tmp_path):
    _, cfg = _setup(tmp_path)
    out, run, port = tmp_path / "out", tmp_path / "run", _free_port()
    _launch([PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2",
             "--master_addr", "127.0.0.1", "--master_port", str(port),
             str(tmp_path / "ddp_driver.py"), "train", str(cfg), "--run-dir", str(run),
             *README_DDP], out, tmp_path, port)
    r0, r1 = _ranks(out)
    assert (r0["rank"], r1["rank"], r0["world_size"], r1["world_size"]) == (0, 1, 2, 2)
    assert r0["global_step"] == r1["global_step"] == 2
    for b0, b1 in zip(r0["seen"]["train"], r1["seen"]["train"], strict=True):
        assert not set(b0) & set(b1)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    for name, w0 in r0["state_dict"].items():
        torch.testing.assert_close(w0, r1["state_dict"][name], rtol=0, atol=0)
        torch.testing.assert_close(ckpt["state_dict"][f"model.{name}"], w0, rtol=0, atol=0)
    assert _results(out)[0]["metrics"]["mIoU"] == _results(out)[1]["metrics"]["mIoU"]


def test_plain_ddp_trains_stitchfusion_with_a_modality_missing_from_every_batch(tmp_path):
    """``data.missing_modalities: [depth]`` leaves StitchFusion's depth-stream adapters without
    a gradient in every step; plain ``ddp`` would stop at the first one, so fusionseg runs it
    with ``find_unused_parameters`` (``runner.resolve_strategy``)."""
    _, path = _setup(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["model"].update(name="stitchfusion", adapter="pairwise", fusion="sum")
    cfg["data"]["missing_modalities"] = ["depth"]
    path.write_text(yaml.safe_dump(cfg))
    out, run = tmp_path / "out", tmp_path / "run"
    _launch([PYTHON, str(tmp_path / "ddp_driver.py"), "train", str(path), "--run-dir", str(run),
             *README_DDP], out, tmp_path)
    r0, r1 = _ranks(out)
    assert r0["global_step"] == r1["global_step"] == 2
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2
    for name, w0 in r0["state_dict"].items():
        torch.testing.assert_close(w0, r1["state_dict"][name], rtol=0, atol=0)
        torch.testing.assert_close(saved["state_dict"][f"model.{name}"], w0, rtol=0, atol=0)
