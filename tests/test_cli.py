"""End-to-end CLI tests on a tiny generated DELIVER tree with a tiny MiT."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_MIT as TINY  # noqa: E402
from fixtures.deliver_tree import deliver_path, make_deliver_tree  # noqa: E402

from fusionseg.cli import app  # noqa: E402

runner = CliRunner()


def _config(tmp_path: Path, root: Path, modalities=("rgb", "depth"), **train) -> Path:
    cfg = {
        "name": "tiny",
        "model": {"name": "sum_fusion", "backbone": "mit_b0", "modalities": list(modalities),
                  "decoder_dim": 16, "backbone_kwargs": TINY},
        "data": {"dataset": "deliver", "root": str(root), "crop_size": [32, 32],
                 "batch_size": 2, "val_batch_size": 2, "num_workers": 0},
        "train": {"max_epochs": 1, "max_steps": 2, "lr": 1e-3, "progress": False,
                  "out_dir": str(tmp_path / "runs"), "log_every_n_steps": 1, **train},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    root = tmp / "deliver"
    make_deliver_tree(root, conditions=("cloud", "night"), per_split=2, size=32)
    cfg = _config(tmp, root)
    run = tmp / "run"
    res = runner.invoke(app, ["train", str(cfg), "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    return tmp, root, cfg, run


def test_train_two_steps_writes_best_and_last(trained):
    tmp, root, cfg, run = trained
    ckpts = run / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and (ckpts / "best.ckpt").is_file()
    ck = torch.load(ckpts / "last.ckpt", weights_only=False)
    assert ck["global_step"] == 2
    assert ck["fusionseg_config"]["model"]["modalities"] == ["rgb", "depth"]
    assert ck["fusionseg_classes"][0] == "Building"
    assert (run / "csv" / "metrics.csv").is_file()
    assert any((run / "tensorboard").iterdir())


def test_train_refuses_to_overwrite_and_resumes(trained):
    tmp, root, cfg, run = trained
    before = (run / "checkpoints" / "best.ckpt").read_bytes()
    res = runner.invoke(app, ["train", str(cfg), "--run-dir", str(run)])
    assert res.exit_code == 2
    assert "earlier run" in res.output
    assert (run / "checkpoints" / "best.ckpt").read_bytes() == before
    res = runner.invoke(app, ["train", str(cfg), "--resume", str(run / "checkpoints" /
                                                                  "last.ckpt"),
                              "--set", "train.max_steps=-1", "--set", "train.max_epochs=2"])
    assert res.exit_code == 0, res.output
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_eval_tables_and_json(trained):
    tmp, root, cfg, run = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    res = runner.invoke(app, ["eval", str(cfg), "--ckpt", str(ckpt), "--missing", "all"])
    assert res.exit_code == 0, res.output
    assert "per condition" in res.output and "night" in res.output
    assert "mIoU over the classes present (nanmean)" in res.output  # the convention used

    def no_nan(name):  # a strict parser: bare NaN / Infinity are not JSON
        raise ValueError(f"non-standard JSON constant {name}")

    out = json.loads((run / "checkpoints" / "best_eval_val.json").read_text(),
                     parse_constant=no_nan)
    assert out["precision"] == "32-true"
    assert set(out["per_condition"]) == {"cloud", "night"}
    assert set(out["missing"]) == {"rgb+depth", "rgb", "depth"}
    assert 0 <= out["overall"]["mIoU"] <= 100
    assert len(out["overall"]["IoU"]) == 25


def test_predict_dataset_and_folder(trained, tmp_path):
    _, root, cfg, run = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    out = tmp_path / "pred"
    res = runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--input", str(root),
                              "--split", "val", "--out", str(out)])
    assert res.exit_code == 0, res.output
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 4 and len(list((out / "panels").glob("*.png"))) == 4
    assert np.asarray(Image.open(masks[0])).shape == (32, 32, 3)
    # a plain folder with RGB only: depth missing is allowed
    folder = tmp_path / "own" / "rgb"
    folder.mkdir(parents=True)
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "a.png")  # an all-black frame reads as a dead sensor
    res = runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--input", str(folder.parent),
                              "--out", str(tmp_path / "pred2")])
    assert res.exit_code == 0, res.output
    assert np.asarray(Image.open(tmp_path / "pred2" / "masks" / "a.png")).shape == (40, 48, 3)


def test_predict_packed_files_overlay_and_video(trained, tmp_path):
    """MFNet-style packed RGBA frames: rgb = channels 0-2, depth left out (missing)."""
    _, root, cfg, run = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("f1", "f0", "f2"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 4), dtype=np.uint8)).save(
            frames / f"{stem}.png")
    out = tmp_path / "pred"
    res = runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--input",
                              f"rgb={frames}:0,1,2", "--out", str(out), "--overlay",
                              "--video", str(out / "run.gif")])
    assert res.exit_code == 0, res.output
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == ["f0", "f1", "f2"]
    assert np.asarray(Image.open(out / "overlays" / "f0.png")).shape == (32, 32, 3)
    assert Image.open(out / "run.gif").n_frames == 3
    # two channels for a 3-channel modality: one line naming the modality
    res = runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--input", f"rgb={frames}:0,1",
                              "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "rgb" in res.output


def test_export_and_predict_onnx_give_the_same_masks(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    _, root, cfg, run = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    onnx_file = tmp_path / "model.onnx"
    res = runner.invoke(app, ["export", "--ckpt", str(ckpt), "--out", str(onnx_file)])
    assert res.exit_code == 0, res.output
    assert onnx_file.is_file() and "max |onnxruntime - pytorch|" in " ".join(res.output.split())
    for flag, path, name in (("--ckpt", ckpt, "torch"), ("--onnx", onnx_file, "onnx")):
        res = runner.invoke(app, ["predict", flag, str(path), "--input", str(root),
                                  "--split", "val", "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    masks = sorted(p.name for p in (tmp_path / "torch" / "masks").glob("*.png"))
    assert len(masks) == 4
    for name in masks:
        a = np.asarray(Image.open(tmp_path / "torch" / "masks" / name))
        b = np.asarray(Image.open(tmp_path / "onnx" / "masks" / name))
        np.testing.assert_array_equal(a, b)


def test_bench_and_info(trained):
    tmp, root, cfg, run = trained
    res = runner.invoke(app, ["bench", str(cfg), "--size", "32", "--batch", "1", "--steps", "1"])
    assert res.exit_code == 0, res.output
    assert "trainable" in res.output
    out = tmp / "bench.json"
    res = runner.invoke(app, ["bench", str(cfg), "--size", "32", "--batch", "1", "--steps", "1",
                              "--precision", "bf16-mixed", "--json", str(out)])
    assert res.exit_code == 0, res.output
    metrics = json.loads(out.read_text())
    assert metrics["precision"] == "bf16-mixed" and metrics["train_step_s"] > 0
    assert all(k in res.output for k in metrics)  # the printed metrics, same names
    res = runner.invoke(app, ["bench", str(cfg), "--size", "32", "--precision", "16-mixed"])
    assert res.exit_code == 2 and "needs a CUDA GPU" in res.output
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0 and "sum_fusion" in res.output and "deliver" in res.output


def _err(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    return " ".join(res.output.split())


def test_bad_inputs_give_one_clear_line(trained, tmp_path):
    tmp, root, cfg, run = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    # unknown config key
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("max_steps", "max_stepz"))
    assert "unknown config key 'train.max_stepz'" in _err(["train", str(bad)])
    # unknown model key (checked before training starts)
    assert "dropout_rate" in _err(["train", str(cfg), "--set", "model.dropout_rate=0.1"])
    # checkpoint that does not match the model
    msg = _err(["eval", str(cfg), "--ckpt", str(ckpt), "--set", "model.decoder_dim=8"])
    assert "best.ckpt" in msg
    # missing modality file
    broken = tmp_path / "broken"
    make_deliver_tree(broken, conditions=("cloud",), per_split=1, size=32)
    victim = deliver_path(broken, "cloud/val/MAP_1/000001", "depth")
    victim.unlink()
    cfg2 = _config(tmp_path, broken)
    msg = _err(["eval", str(cfg2), "--ckpt", str(ckpt)])
    assert str(victim) in msg and "depth" in msg


def test_eval_listed_subsets_and_per_condition_switch(trained):
    from fusionseg.config import load_config
    from fusionseg.engine.runner import evaluate

    tmp, root, cfg, run = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    full = evaluate(load_config(cfg), ckpt, missing="all", write_json=False)
    res = evaluate(load_config(cfg), ckpt, missing=[["rgb"]], write_json=False)
    # the overall numbers stay those of all modalities; the table holds the listed subset only
    assert res["overall"]["mIoU"] == pytest.approx(full["overall"]["mIoU"])
    assert list(res["missing"]) == ["rgb"]
    assert res["missing"]["rgb"]["mIoU"] == pytest.approx(full["missing"]["rgb"]["mIoU"])
    off = evaluate(load_config(cfg, ["eval.per_condition=false"]), ckpt, write_json=False)
    assert off["per_condition"] == {}
    assert off["overall"]["mIoU"] == pytest.approx(full["overall"]["mIoU"])


def test_bench_does_not_read_model_pretrained(trained):
    tmp, root, cfg, run = trained
    res = runner.invoke(app, ["bench", str(cfg), "--size", "32", "--batch", "1", "--steps", "1",
                              "--set", "model.pretrained=does/not/exist.pth"])
    assert res.exit_code == 0, res.output


def test_eval_in_bf16(trained):
    tmp, root, cfg, run = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    res = runner.invoke(app, ["eval", str(cfg), "--ckpt", str(ckpt), "--split", "val",
                              "--set", "train.precision=bf16-mixed"])
    assert res.exit_code == 0, res.output
    out = json.loads((run / "checkpoints" / "best_eval_val.json").read_text())
    assert out["precision"] == "bf16-mixed" and 0 <= out["overall"]["mIoU"] <= 100


def test_eval_reads_the_data_with_the_specs_the_checkpoint_was_trained_with(trained):
    """A recipe whose input conventions changed since a checkpoint was trained (here: the depth
    scale) evaluates that checkpoint as it was trained: same confusion, one warning naming the
    field; a released file without stored specs would be read with the config's."""
    import warnings

    from fusionseg.config import load_config
    from fusionseg.engine.runner import evaluate

    tmp, root, cfg_path, run = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    cfg = load_config(cfg_path)
    base = evaluate(cfg, ckpt, write_json=False)
    changed = load_config(cfg_path, ["data.options={specs: {depth: {scale: 0.0005}}}"])
    with pytest.warns(UserWarning, match=r"depth: scale 0\.001 \(config 0\.0005\)"):
        again = evaluate(changed, ckpt, write_json=False)
    assert again["overall"]["IoU"] == base["overall"]["IoU"]
    # the stored specs removed: the config's depth scale is used, and the result changes
    plain = tmp / "no_specs.ckpt"
    ck = torch.load(ckpt, weights_only=True)
    del ck["fusionseg_specs"]
    torch.save(ck, plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        other = evaluate(changed, plain, write_json=False)
    assert other["overall"]["IoU"] != base["overall"]["IoU"]
