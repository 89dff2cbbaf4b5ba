"""Untrusted checkpoints never run code, and errors tell the truth (issue 20, items 1-2).

A code-carrying checkpoint here is a real fusionseg training checkpoint with one more entry
whose unpickling would create a marker file (``open(marker, "w")``: the same mechanism as
``os.system``, without a shell). Every command and Python loader must refuse it with one line
naming the file, and the marker must never appear.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY_MIT as TINY  # noqa: E402
from fixtures.deliver_tree import make_deliver_tree  # noqa: E402

from fusionseg import cli  # noqa: E402
from fusionseg.cli import app  # noqa: E402
from fusionseg.config import config_from_dict, load_config  # noqa: E402
from fusionseg.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    DataError,
    FusionsegError,
    RunError,
)
from fusionseg.models import create_backbone, create_model, load_checkpoint  # noqa: E402
from fusionseg.models.weights import (  # noqa: E402
    convert_checkpoint,
    detect_backbone,
    load_backbone_weights,
    load_state_dict_file,
)
from fusionseg.serialization import read_checkpoint  # noqa: E402

runner = CliRunner()


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run (1 step) and a copy of its last.ckpt that carries code."""
    tmp = tmp_path_factory.mktemp("untrusted")
    root = tmp / "deliver"
    make_deliver_tree(root, conditions=("cloud",), per_split=2, size=32)
    cfg = {
        "name": "tiny",
        "model": {"name": "sum_fusion", "backbone": "mit_b0", "modalities": ["rgb", "depth"],
                  "decoder_dim": 16, "backbone_kwargs": TINY},
        "data": {"dataset": "deliver", "root": str(root), "crop_size": [32, 32],
                 "batch_size": 2, "val_batch_size": 2, "num_workers": 0},
        "train": {"max_epochs": 1, "max_steps": 2, "lr": 1e-3, "progress": False,
                  "out_dir": str(tmp / "runs"), "log_every_n_steps": 1},
    }
    cfg_path = tmp / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["train", str(cfg_path), "--run-dir", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    good = tmp / "run" / "checkpoints" / "last.ckpt"
    marker = tmp / "PWNED"
    ck = read_checkpoint(good)
    ck["callbacks"]["Evil"] = _Payload(marker)
    evil = tmp / "downloaded.ckpt"
    torch.save(ck, evil)
    assert not marker.exists()
    return {"tmp": tmp, "root": root, "cfg": cfg_path, "good": good, "evil": evil,
            "marker": marker}


def _assert_refused(res, run, logged: bool = False) -> None:
    """Exit 2, the one error line last, no marker. ``logged``: the command logged through
    Lightning, whose messages CliRunner may follow with logging's own "--- Logging error ---"
    stack (a stream an earlier invocation closed; the real CLI prints none)."""
    assert res.exit_code == 2, res.output
    text = _one_line(res.output)
    assert logged or "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1].startswith("error: ")
    assert f"error: {run['evil']}: refused: it names the Python object io.open" in text
    assert not run["marker"].exists()


# ------------------------------------------------------------------ our own checkpoints
def test_a_training_checkpoint_loads_without_unpickling_objects(run):
    ck = read_checkpoint(run["good"])
    assert ck["fusionseg_config"]["model"]["modalities"] == ["rgb", "depth"]
    assert ck["global_step"] == 1  # 2 samples, batch 2, 1 epoch
    assert "ResumeStateCallback" in ck["callbacks"]
    assert ck["state_dict"]["model.decode_head.linear_pred.weight"].shape[0] == 25


def test_numpy_and_namespace_entries_of_released_files_load(tmp_path):
    path = tmp_path / "release.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1),
                "meta": {"mean": np.array([0.5, 0.25]), "epoch": np.int64(7),
                         "miou": np.float64(0.5)}}, path)
    got = read_checkpoint(path)
    assert got["args"].lr == 0.1 and int(got["meta"]["epoch"]) == 7
    np.testing.assert_array_equal(got["meta"]["mean"], [0.5, 0.25])
    assert torch.equal(load_state_dict_file(path)["w"], torch.ones(2))


def test_numpy_1_file_names_load(tmp_path):
    """Files written under numpy 1.x name ``numpy.core.multiarray`` (numpy 2: ``numpy._core``);
    the legacy format (protocol 2, no zip) keeps the names as plain text to rewrite."""
    buf = io.BytesIO()
    torch.save({"a": np.array([1.0, 2.0]), "s": np.float64(3.0)}, buf,
               _use_new_zipfile_serialization=False, pickle_protocol=2)
    data = buf.getvalue()
    assert data.count(b"numpy._core.multiarray") == 2
    path = tmp_path / "numpy1.pth"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    got = read_checkpoint(path)
    np.testing.assert_array_equal(got["a"], [1.0, 2.0])
    assert float(got["s"]) == 3.0


@pytest.mark.parametrize("content, reason", [
    (b"", "EOFError"),
    (b"not a pickle at all", "Unsupported operand"),
])
def test_unreadable_files_are_one_checkpoint_error(tmp_path, content, reason):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason) as ei:
        read_checkpoint(path)
    assert str(ei.value).startswith(f"{path}: not a readable PyTorch checkpoint")
    assert "\n" not in str(ei.value)


def test_truncated_checkpoint_is_refused_not_half_read(run, tmp_path):
    data = run["good"].read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt: not a readable PyTorch checkpoint"):
        read_checkpoint(cut)


# ------------------------------------------------------------------ every command refuses
def test_predict_refuses(run):
    res = runner.invoke(app, ["predict", "--ckpt", str(run["evil"]), "--input", str(run["root"]),
                              "--split", "val", "--out", str(run["tmp"] / "pred")])
    _assert_refused(res, run)
    assert not (run["tmp"] / "pred" / "masks").exists()


def test_export_refuses(run):
    out = run["tmp"] / "model.onnx"
    res = runner.invoke(app, ["export", "--ckpt", str(run["evil"]), "--out", str(out)])
    _assert_refused(res, run)
    assert not out.exists()


def test_eval_refuses(run):
    res = runner.invoke(app, ["eval", str(run["cfg"]), "--ckpt", str(run["evil"])])
    _assert_refused(res, run)


@pytest.mark.parametrize("with_config", [False, True])
def test_weights_convert_refuses(run, with_config):
    out = run["tmp"] / f"converted_{with_config}.safetensors"
    extra = ["--config", str(run["cfg"])] if with_config else []
    res = runner.invoke(app, ["weights", "convert", str(run["evil"]), str(out), *extra])
    _assert_refused(res, run)
    assert not out.exists()


def test_resume_refuses_and_keeps_the_run(run):
    run_dir = run["tmp"] / "resumed"
    res = runner.invoke(app, ["train", str(run["cfg"]), "--run-dir", str(run_dir),
                              "--resume", str(run["evil"])])
    _assert_refused(res, run, logged=True)
    assert not any(run_dir.glob("checkpoints/*.ckpt"))


def test_pretrained_encoder_file_refuses(run, tmp_path):
    evil = tmp_path / "mit_b0_download.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(run["marker"])}, evil)
    res = runner.invoke(app, ["train", str(run["cfg"]), "--run-dir", str(tmp_path / "r"),
                              "--set", f"model.pretrained={evil}"])
    assert res.exit_code == 2, res.output
    assert f"{evil}: refused: it names the Python object io.open" in _one_line(res.output)
    assert not run["marker"].exists()


def test_init_from_refuses(run, tmp_path):
    res = runner.invoke(app, ["train", str(run["cfg"]), "--run-dir", str(tmp_path / "r"),
                              "--set", f"train.init_from={run['evil']}"])
    _assert_refused(res, run, logged=True)
    assert not any((tmp_path / "r").glob("checkpoints/*.ckpt"))


def test_init_from_starts_a_new_run_from_trained_weights(run, tmp_path):
    """lr 0: the parameters stay where they started, so the new run's checkpoint shows which
    weights it started from (buffers such as BatchNorm statistics still move)."""
    trained = read_checkpoint(run["good"])["state_dict"]
    cfg = load_config(run["cfg"])
    names = [f"model.{n}" for n, _ in
             create_model({**cfg.model.to_dict(), "num_classes": 25}).named_parameters()]

    def started_from(extra: list[str], run_dir: Path) -> dict:
        res = runner.invoke(app, ["train", str(run["cfg"]), "--run-dir", str(run_dir),
                                  "--set", "train.lr=0", *extra])
        assert res.exit_code == 0, res.output
        return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]

    init = started_from(["--set", f"train.init_from={run['good']}"], tmp_path / "init")
    assert all(torch.equal(init[k], trained[k]) for k in names)
    fresh = started_from([], tmp_path / "fresh")
    assert not all(torch.equal(fresh[k], trained[k]) for k in names)


def test_python_loaders_refuse(run):
    from fusionseg.inference import load_predictor

    cfg = load_config(run["cfg"])
    model = create_model({**cfg.model.to_dict(), "num_classes": 25})
    backbone = create_backbone("mit_b0", **TINY)
    loaders = [
        lambda p: read_checkpoint(p),
        lambda p: load_state_dict_file(p),
        lambda p: load_checkpoint(model, p),
        lambda p: load_backbone_weights(backbone, p),
        lambda p: load_predictor(ckpt=p),
        lambda p: detect_backbone(p),
        lambda p: convert_checkpoint(p, run["tmp"] / "c.pth"),
    ]
    for load in loaders:
        with pytest.raises(CheckpointError, match="refused: it names the Python object io.open"):
            load(run["evil"])
    assert not run["marker"].exists()
    assert not (run["tmp"] / "c.pth").exists()


# ------------------------------------------------------------------ errors that tell the truth
def test_hierarchy():
    for cls in (ConfigError, DataError, CheckpointError, RunError):
        assert issubclass(cls, FusionsegError)
    # code that caught the built-in types before the hierarchy still does
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(CheckpointError, ValueError) and issubclass(RunError, RuntimeError)
    assert str(DataError("wrong bit depth", path="/d/a.png", modality="depth")) == \
        "/d/a.png [modality 'depth']: wrong bit depth"


def _command(exc: BaseException):
    @cli.cli_errors
    def command():
        raise exc
    return command


@pytest.mark.parametrize("exc", [ValueError("x must be positive"), KeyError("model"),
                                 RuntimeError("shape mismatch in the decoder"),
                                 FileNotFoundError("/internal/cache.json")])
def test_an_internal_error_keeps_its_traceback_and_exits_1(exc, capsys, monkeypatch):
    monkeypatch.delenv("FUSIONSEG_DEBUG", raising=False)
    with pytest.raises(typer.Exit) as ei:
        _command(exc)()
    assert ei.value.exit_code == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert f"{type(exc).__name__}: " in err and "internal error" in err
    assert "please report it" in _one_line(err)


@pytest.mark.parametrize("exc", [ConfigError("train.lr: must be > 0"),
                                 DataError("missing file", path="/d/x.png", modality="rgb"),
                                 CheckpointError("/c.ckpt: refused"),
                                 RunError("runs/a: holds checkpoints of an earlier run")])
def test_a_user_error_is_one_line_and_exits_2(exc, capsys, monkeypatch):
    monkeypatch.delenv("FUSIONSEG_DEBUG", raising=False)
    with pytest.raises(typer.Exit) as ei:
        _command(exc)()
    assert ei.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {exc}" and "Traceback" not in err


def test_a_full_disk_is_one_line_other_os_errors_are_bugs(capsys, monkeypatch):
    import errno

    monkeypatch.delenv("FUSIONSEG_DEBUG", raising=False)
    full = OSError(errno.ENOSPC, "No space left on device", "/out/masks/a.png")
    with pytest.raises(typer.Exit) as ei:
        _command(full)()
    assert ei.value.exit_code == 2
    assert capsys.readouterr().err.strip() == \
        "error: /out/masks/a.png: No space left on device"
    with pytest.raises(typer.Exit) as ei:
        _command(OSError(errno.EBADF, "Bad file descriptor"))()
    assert ei.value.exit_code == 1 and "internal error" in capsys.readouterr().err


def test_debug_lets_both_propagate(monkeypatch):
    monkeypatch.setenv("FUSIONSEG_DEBUG", "1")
    with pytest.raises(ConfigError):
        _command(ConfigError("bad"))()
    with pytest.raises(KeyError):
        _command(KeyError("bug"))()


def test_an_injected_bug_in_a_real_command_exits_1(run, monkeypatch):
    """A bug deep inside ``eval`` (here: the inference raising KeyError) is not
    reported as the user's mistake."""
    import fusionseg.engine.runner as runner_mod

    def broken(*args, **kwargs):
        raise KeyError("mIoU")

    monkeypatch.setattr(runner_mod, "predict_logits", broken)
    monkeypatch.delenv("FUSIONSEG_DEBUG", raising=False)
    res = runner.invoke(app, ["eval", str(run["cfg"]), "--ckpt", str(run["good"])])
    assert res.exit_code == 1, res.output
    assert "internal error" in res.output


@pytest.mark.parametrize("args, expected", [
    (["eval", "{cfg}", "--ckpt", "{tmp}/none.ckpt"], "none.ckpt: checkpoint not found"),
    (["eval", "{cfg}", "--ckpt", "{good}", "--protocol", "xyz"], "unknown --protocol xyz"),
    (["train", "{cfg}", "--set", "model.backbone=mit_b42"], "unknown backbone 'mit_b42'"),
    (["train", "{cfg}", "--set", "model.modalities=[rgb,rgb]"], "duplicate modalities"),
    (["export", "--ckpt", "{good}", "--out", "{tmp}/m.onnx", "--modalities", "thermal"],
     "modalities ['thermal'] are not the model's"),
    (["weights", "fetch", "mit_b42"], "'mit_b42' is not in the pretrained-weight catalogue"),
    (["data", "check"], "give a CONFIG, or --dataset NAME and --root DIR"),
])
def test_user_errors_of_the_commands_are_one_line_exit_2(run, args, expected, monkeypatch):
    monkeypatch.delenv("FUSIONSEG_DEBUG", raising=False)
    fill = {"cfg": run["cfg"], "tmp": run["tmp"], "good": run["good"]}
    res = runner.invoke(app, [a.format(**fill) for a in args])
    assert res.exit_code == 2, res.output
    assert expected in _one_line(res.output) and "Traceback" not in res.output


def test_config_from_dict_errors_are_config_errors():
    with pytest.raises(ConfigError):
        config_from_dict({"model": {"name": "sum_fusion"}, "nonsense": 1})
