"""Long prediction runs lose nothing: bad files are skipped and reported, every other output
is written (atomically), ``--skip-existing`` continues an interrupted run, and a bug (any
exception that is not a DataError) still stops the run.

Tiny rgb-only sum_fusion / MiT model (the checkpoint helper of ``test_predict``), 32 x 32
generated PNGs under ``tmp_path``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_predict import _checkpoint, _png, _rgb  # noqa: E402

import fusionseg.inference.inputs as inputs_mod  # noqa: E402
import fusionseg.inference.prediction as predict_mod  # noqa: E402
from fusionseg.cli import app  # noqa: E402
from fusionseg.errors import ConfigError, DataError  # noqa: E402
from fusionseg.inference import PredictionIncomplete, predict  # noqa: E402

runner = CliRunner()
GOOD = ["a", "b", "d", "e"]


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return _checkpoint(tmp_path, modalities=("rgb",))


def _good_folder(root: Path, stems=GOOD) -> Path:
    """``root/rgb/{stem}.png``, 32 x 32 random RGB."""
    rng = np.random.default_rng(0)
    for stem in stems:
        _png(root / "rgb" / f"{stem}.png", _rgb(rng, 32, 32))
    return root


def _bad_folder(root: Path) -> Path:
    """The good files plus ``corrupt.png`` (garbage bytes) and ``empty.png`` (zero bytes)."""
    _good_folder(root)
    (root / "rgb" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (root / "rgb" / "empty.png").write_bytes(b"")
    return root


def _names(folder: Path) -> list[str]:
    """The file names in ``folder``, sorted (hidden temporary files included)."""
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in out.rglob("*.png") if p.is_file()}


def _count_inference(monkeypatch) -> list[int]:
    """Count the model calls of ``predict`` (one per predicted sample)."""
    calls: list[int] = []
    real = predict_mod.predict_logits

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_mod, "predict_logits", counting)
    return calls


# --------------------------------------------------------------------------- on_error="skip"
def test_bad_files_are_skipped_and_every_good_output_written(tmp_path, ckpt):
    own = _bad_folder(tmp_path / "own")
    out = tmp_path / "out"
    with pytest.raises(PredictionIncomplete) as info:
        predict(ckpt, own, out, overlay=True, video=out / "run.gif")
    summary = info.value.summary
    assert summary.total == 6
    assert summary.written == GOOD and summary.skipped_existing == []
    assert [f.id for f in summary.failed] == ["corrupt", "empty"]
    assert summary.failed[0].error.startswith(f"{own / 'rgb' / 'corrupt.png'} [modality 'rgb']: "
                                              "unreadable image")
    assert summary.failed[1].error.startswith(f"{own / 'rgb' / 'empty.png'} [modality 'rgb']: "
                                              "unreadable image")
    # every good sample has all of its outputs, nothing else is there (no temporary files)
    expected = [f"{s}.png" for s in GOOD]
    for kind in ("masks", "panels", "overlays"):
        assert _names(out / kind) == expected
    with Image.open(out / "run.gif") as gif:
        assert gif.n_frames == 4
    # out/failed.txt: one "{id}<TAB>{error}" line per failed sample
    lines = (out / "failed.txt").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["corrupt", "empty"]
    assert lines[1] == f"empty\t{summary.failed[1].error}"
    # the error is one line naming both failed samples and the failures file
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, DataError)
    assert msg.startswith("2 of 6 sample(s) failed on their input files and were skipped: "
                          "corrupt, empty; the other 4 have their outputs")
    assert str(out / "failed.txt") in msg
    # the bad files fixed (removed): the re-run predicts nothing and leaves no failed.txt
    (own / "rgb" / "corrupt.png").unlink()
    (own / "rgb" / "empty.png").unlink()
    again = predict(ckpt, own, out, overlay=True, skip_existing=True)
    assert again.written == [] and again.skipped_existing == GOOD and again.failed == []
    assert not (out / "failed.txt").exists()


def test_label_values_outside_the_classes_fail_that_sample_only(tmp_path, ckpt):
    own = _good_folder(tmp_path / "own", ["a", "b"])
    _png(own / "label" / "a.png", np.zeros((32, 32), np.uint8))
    bad = np.zeros((32, 32), np.uint8)
    bad[0, :3] = [7, 9, 255]  # 3 classes: 7 and 9 are out of range, 255 is ignore
    _png(own / "label" / "b.png", bad)
    with pytest.raises(PredictionIncomplete) as info:
        predict(ckpt, own, tmp_path / "out")
    summary = info.value.summary
    assert summary.written == ["a"]
    assert [(f.id, f.error) for f in summary.failed] == [
        ("b", f"{own / 'label' / 'b.png'} [modality 'label']: label value(s) [7, 9] outside "
              "the model's classes 0..2 (and ignore 255)")]


def test_cli_skip_reports_each_failure_and_exits_2(tmp_path, ckpt):
    own = _bad_folder(tmp_path / "own")
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--input", str(own),
                              "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert lines[0] == (f"6 sample(s): 4 written, 0 skipped (outputs existed), 2 failed; "
                        f"outputs in {out}")
    assert lines[1].startswith(f"failed corrupt: {own / 'rgb' / 'corrupt.png'} ")
    assert lines[2].startswith(f"failed empty: {own / 'rgb' / 'empty.png'} ")
    assert lines[3].startswith("error: 2 of 6 sample(s) failed on their input files and were "
                               "skipped: corrupt, empty;")
    assert len(lines) == 4
    assert _names(out / "masks") == [f"{s}.png" for s in GOOD]
    assert _names(out / "panels") == [f"{s}.png" for s in GOOD]


def test_cli_all_good_prints_the_summary_and_exits_0(tmp_path, ckpt):
    own = _good_folder(tmp_path / "own", ["a", "b"])
    res = runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--input", str(own),
                              "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == (f"2 sample(s): 2 written, 0 skipped (outputs existed), "
                                  f"0 failed; outputs in {tmp_path / 'out'}")


# --------------------------------------------------------------------------- on_error="stop"
def test_cli_stop_ends_at_the_first_bad_file_with_one_line(tmp_path, ckpt):
    own = _bad_folder(tmp_path / "own")
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--input", str(own),
                              "--out", str(out), "--on-error", "stop"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1
    # (the CLI's rich markup drops the "[modality 'rgb']" part of the message)
    assert lines[0].startswith(f"error: {own / 'rgb' / 'corrupt.png'}")
    assert "unreadable image" in lines[0]
    # samples are taken in stem order: a, b before corrupt; nothing after it
    assert _names(out / "masks") == ["a.png", "b.png"]
    assert not (out / "failed.txt").exists()


def test_stop_raises_the_files_data_error(tmp_path, ckpt):
    own = _bad_folder(tmp_path / "own")
    with pytest.raises(DataError) as info:
        predict(ckpt, own, tmp_path / "out", on_error="stop")
    assert not isinstance(info.value, PredictionIncomplete)
    assert info.value.path == str(own / "rgb" / "corrupt.png") and info.value.modality == "rgb"


def test_bad_on_error_value_is_a_config_error(tmp_path, ckpt):
    with pytest.raises(ConfigError, match="on_error must be one of skip, stop, got 'ignore'"):
        predict(ckpt, tmp_path, tmp_path / "out", on_error="ignore")
    res = runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--input", str(tmp_path),
                              "--out", str(tmp_path / "out"), "--on-error", "ignore"])
    assert res.exit_code == 2 and "on_error must be one of skip, stop" in res.output


# --------------------------------------------------------------------------- bugs are not skipped
def test_a_non_data_exception_while_reading_stops_the_run(tmp_path, ckpt, monkeypatch):
    own = _good_folder(tmp_path / "own")
    real = inputs_mod._read

    def broken(spec, path):
        if Path(path).stem == "b":
            raise RuntimeError("a bug in the reader")
        return real(spec, path)

    monkeypatch.setattr(inputs_mod, "_read", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="a bug in the reader"):
        predict(ckpt, own, out)
    assert _names(out / "masks") == ["a.png"]  # nothing after the bug
    assert not (out / "failed.txt").exists()
    res = runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--input", str(own),
                              "--out", str(tmp_path / "cli")])
    assert res.exit_code == 1  # a bug: traceback and "internal error", not a skipped sample
    assert "a bug in the reader" in res.output and "internal error" in res.output


def test_a_non_data_exception_in_the_model_stops_the_run(tmp_path, ckpt, monkeypatch):
    own = _good_folder(tmp_path / "own")
    calls = _count_inference(monkeypatch)
    counting = predict_mod.predict_logits

    def failing_second(*args, **kwargs):
        if len(calls) == 1:
            raise RuntimeError("model blew up")
        return counting(*args, **kwargs)

    monkeypatch.setattr(predict_mod, "predict_logits", failing_second)
    with pytest.raises(RuntimeError, match="model blew up"):
        predict(ckpt, own, tmp_path / "out")
    assert _names(tmp_path / "out" / "masks") == ["a.png"]


# --------------------------------------------------------------------------- skip_existing
def test_skip_existing_rewrites_nothing_on_a_finished_run(tmp_path, ckpt, monkeypatch):
    own = _good_folder(tmp_path / "own")
    out = tmp_path / "out"
    first = predict(ckpt, own, out, overlay=True)
    assert first.written == GOOD
    before = _mtimes(out)
    assert len(before) == 12  # 4 masks, 4 panels, 4 overlays
    calls = _count_inference(monkeypatch)
    second = predict(ckpt, own, out, overlay=True, skip_existing=True)
    assert calls == [] and second.written == [] and second.skipped_existing == GOOD
    assert _mtimes(out) == before
    # a run without overlays, continued with --overlay: every sample lacks one, all redone
    plain = tmp_path / "plain"
    predict(ckpt, own, plain)
    calls.clear()
    assert predict(ckpt, own, plain, overlay=True, skip_existing=True).written == GOOD
    assert len(calls) == 4
    # and without --skip-existing everything is predicted again
    calls.clear()
    assert predict(ckpt, own, out, overlay=True).written == GOOD
    assert len(calls) == 4


def test_skip_existing_redoes_only_samples_missing_an_output(tmp_path, ckpt, monkeypatch):
    own = _good_folder(tmp_path / "own")
    out = tmp_path / "out"
    predict(ckpt, own, out, overlay=True)
    (out / "masks" / "b.png").unlink()      # b lost its mask
    (out / "overlays" / "e.png").unlink()   # e was interrupted before its overlay
    before = _mtimes(out)
    calls = _count_inference(monkeypatch)
    summary = predict(ckpt, own, out, overlay=True, skip_existing=True, video=out / "v.gif")
    assert len(calls) == 2
    assert summary.written == ["b", "e"] and summary.skipped_existing == ["a", "d"]
    after = _mtimes(out)
    unchanged = sorted(k for k in before if after[k] == before[k])
    assert unchanged == ["masks/a.png", "masks/d.png", "overlays/a.png", "overlays/d.png",
                         "panels/a.png", "panels/d.png"]
    with Image.open(out / "v.gif") as gif:  # built from the frames on disk: all four
        assert gif.n_frames == 4


class _Killed(BaseException):
    """Stands in for the process being killed in the middle of writing a file."""


def test_a_run_killed_mid_write_leaves_no_truncated_output(tmp_path, ckpt, monkeypatch):
    own = _good_folder(tmp_path / "own")
    out = tmp_path / "out"
    real_save = Image.Image.save
    saved: list[str] = []

    def dying_save(self, fp, *args, **kwargs):
        saved.append(str(fp))
        if str(fp).endswith(".tmp") and "masks" in str(fp) and "d.png" in str(fp):
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # half a file, then killed
            raise _Killed
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(_Killed):
        predict(ckpt, own, out)
    assert any(".d.png." in s for s in saved)  # the mask of d was being written
    assert _names(out / "masks") == ["a.png", "b.png"]  # no d.png, no temporary file
    assert _names(out / "panels") == ["a.png", "b.png"]
    monkeypatch.setattr(Image.Image, "save", real_save)
    calls = _count_inference(monkeypatch)
    summary = predict(ckpt, own, out, skip_existing=True)
    assert summary.written == ["d", "e"] and summary.skipped_existing == ["a", "b"]
    assert len(calls) == 2
    for stem in GOOD:
        with Image.open(out / "masks" / f"{stem}.png") as im:
            assert im.size == (32, 32)
    assert not [p for p in out.rglob(".*") if p.is_file()]


def test_failed_txt_of_an_earlier_run_is_replaced(tmp_path, ckpt):
    own = _bad_folder(tmp_path / "own")
    out = tmp_path / "out"
    with pytest.raises(PredictionIncomplete):
        predict(ckpt, own, out)
    (own / "rgb" / "empty.png").unlink()
    with pytest.raises(PredictionIncomplete) as info:
        predict(ckpt, own, out, skip_existing=True)
    assert info.value.summary.written == [] and info.value.summary.skipped_existing == GOOD
    assert [ln.split("\t")[0] for ln in (out / "failed.txt").read_text().splitlines()] == [
        "corrupt"]
    assert os.path.getsize(out / "failed.txt") > 0


# --------------------------------------------------------------------------- video
def test_video_streams_its_frames_and_replaces_the_file_atomically(tmp_path):
    from fusionseg.viz import save_video

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (16, 24, 3), dtype=np.uint8) for _ in range(4)]
    read: list[int] = []

    def lazy(fail_at=None):
        for i, frame in enumerate(frames):
            if i == fail_at:
                raise RuntimeError("frame source broke")
            read.append(i)
            yield frame

    path = tmp_path / "v.gif"
    assert save_video(lazy(), path, fps=5) == path
    assert read == [0, 1, 2, 3]
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.size == (24, 16)
    good = path.read_bytes()
    with pytest.raises(RuntimeError, match="frame source broke"):
        save_video(lazy(fail_at=2), path, fps=5)
    assert path.read_bytes() == good and _names(tmp_path) == ["v.gif"]


def test_bad_video_options_stop_before_any_output(tmp_path, ckpt):
    own = _good_folder(tmp_path / "own", ["a"])
    with pytest.raises(ConfigError, match="video fps must be > 0, got 0"):
        predict(ckpt, own, tmp_path / "out", video=tmp_path / "v.gif", fps=0)
    with pytest.raises(ConfigError, match=r"must end in \.gif or \.mp4"):
        predict(ckpt, own, tmp_path / "out", video=tmp_path / "v.avi")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- a dataset root
def test_a_broken_file_in_a_dataset_root_fails_its_sample_alone(tmp_path):
    """Skipping: the dataset root is built without the construction-time file check, so the
    sample with a corrupt file is skipped and the others are predicted; stopping: the check
    names the file before any prediction."""
    import torch
    from fixtures.deliver_tree import deliver_path, make_deliver_tree
    from test_predict import _cfg_dict

    from fusionseg.config import config_from_dict
    from fusionseg.data.datasets import DatasetFilesError
    from fusionseg.engine.runner import model_spec
    from fusionseg.models import create_model

    root = tmp_path / "deliver"
    stems = make_deliver_tree(root, conditions=("cloud",), splits=("val",), per_split=3,
                              modalities=("rgb",))
    broken = deliver_path(root, stems[1], "rgb")
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    raw = _cfg_dict(("rgb",))
    raw["model"]["num_classes"] = 25
    cfg = config_from_dict(raw)
    model = create_model(model_spec(cfg, 25, for_checkpoint=True))
    ckpt = tmp_path / "m25.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "fusionseg_config": cfg.model_dump(mode="json")}, ckpt)

    out = tmp_path / "out"
    with pytest.raises(PredictionIncomplete) as info:
        predict(ckpt, [str(root)], out, split="val")
    summary = info.value.summary
    assert len(summary.failed) == 1 and str(broken) in summary.failed[0].error
    assert len(summary.written) == 2 and len(_names(out / "masks")) == 2

    with pytest.raises(DatasetFilesError, match=f"{broken}"):
        predict(ckpt, [str(root)], tmp_path / "out_stop", split="val", on_error="stop")
    assert not (tmp_path / "out_stop" / "masks").exists()
