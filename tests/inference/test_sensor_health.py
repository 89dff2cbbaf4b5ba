"""Sensor health at inference: known answers of each check, and ``predict`` dropping a dead
modality exactly as a modality that was not given.

Unit tests: :func:`fusionseg.inference.health.check_modality` on hand-built arrays (constant,
zero, NaN, inf, saturated 8- and 16-bit, frozen, healthy noise) and the ``--health`` parser.

End to end: a tiny rgb + depth + thermal sum_fusion / MiT checkpoint (the helper of
``test_predict``, depth stored as float32 metres in ``.npy`` so a frame can hold NaN) and seven
32 x 32 street-like frames (sky, road, a warm car moving left to right), each modality dead in
some frame by a different kind; every such frame's mask equals the mask predicted without that
modality, ``sensors.csv`` names it, ``health=None`` / ``--health off`` runs every modality.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_predict import _checkpoint, _png  # noqa: E402

import fusionseg.inference.prediction as predict_mod  # noqa: E402
from fusionseg.cli import app  # noqa: E402
from fusionseg.data.datasets.deliver import DELIVER_SPECS  # noqa: E402
from fusionseg.data.modalities import ModalitySpec  # noqa: E402
from fusionseg.errors import ConfigError, DataError  # noqa: E402
from fusionseg.inference import PredictionIncomplete, predict  # noqa: E402
from fusionseg.inference.health import (  # noqa: E402
    SensorHealth,
    check_modality,
    parse_health,
    resolve_health,
)

runner = CliRunner()
MODALITIES = ("rgb", "depth", "thermal")
STEMS = ["f0", "f1", "f2", "f3", "f4", "f5", "f6"]
#: the sensors.csv the frames below must give (known answers, written by hand)
EXPECTED_CSV = [
    ["id", "rgb", "depth", "thermal"],
    ["f0", "ok", "ok", "ok"],
    ["f1", "zero", "ok", "ok"],  # a black RGB frame
    ["f2", "ok", "nan", "ok"],  # depth with NaN holes
    ["f3", "ok", "ok", "saturated"],  # thermal white-out (99 % at 255)
    ["f4", "frozen", "ok", "ok"],  # RGB repeats f3's frame
    ["f5", "ok", "ok", "ok"],
    ["f6", "constant", "zero", "frozen"],  # everything dead: a failed sample
]
#: frame -> the dead modality predict must run without
DEAD = {"f1": "rgb", "f2": "depth", "f3": "thermal", "f4": "rgb"}


# --------------------------------------------------------------------------- unit: statuses
def _noise(rng, shape, dtype=np.uint8, hi=256) -> np.ndarray:
    return rng.integers(0, hi, shape).astype(dtype)


def test_constant_and_zero_images():
    assert check_modality(np.full((8, 8, 3), 77, np.uint8)) == "constant"
    assert check_modality(np.full((8, 8), 1234, np.uint16)) == "constant"
    assert check_modality(np.full((8, 8, 1), 2.5, np.float32)) == "constant"
    # each channel flat, different per channel (a solid colour) is still constant
    solid = np.zeros((8, 8, 3), np.uint8)
    solid[..., 0], solid[..., 2] = 10, 200
    assert check_modality(solid) == "constant"
    assert check_modality(np.zeros((8, 8, 3), np.uint8)) == "zero"
    assert check_modality(np.zeros((8, 8), np.uint16)) == "zero"
    assert check_modality(np.zeros((8, 8), np.float32)) == "zero"
    assert check_modality(np.zeros((8, 8), bool)) == "zero"
    # one pixel off is not flat; a tolerance makes small noise flat
    img = np.full((8, 8), 100, np.uint8)
    img[3, 3] = 101
    assert check_modality(img) == "ok"
    assert check_modality(img, thresholds=SensorHealth(constant=1)) == "constant"
    low = np.zeros((8, 8), np.uint8)
    low[0, 0] = 1
    assert check_modality(low, thresholds=SensorHealth(constant=1)) == "zero"
    assert check_modality(np.zeros((8, 8), np.uint8),
                          thresholds=SensorHealth(constant=None)) == "ok"


def test_nan_and_inf():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 40.0, (16, 16)).astype(np.float32)
    with_nan = depth.copy()
    with_nan[2, 5] = np.nan
    assert check_modality(with_nan) == "nan"
    with_inf = depth.copy()
    with_inf[0, 0] = np.inf
    with_inf[1, 1] = -np.inf
    assert check_modality(with_inf) == "inf"
    both = with_inf.copy()
    both[4, 4] = np.nan
    assert check_modality(both) == "nan"
    # a tolerated fraction: 1 of 256 values is below 0.5 %; the rest is checked as usual
    assert check_modality(with_nan, thresholds=SensorHealth(nonfinite=0.005)) == "ok"
    holes = np.zeros((16, 16), np.float32)
    holes[:8] = np.nan  # half NaN, the rest zero
    assert check_modality(holes, thresholds=SensorHealth(nonfinite=0.6)) == "zero"
    assert check_modality(holes, thresholds=SensorHealth(nonfinite=0.4)) == "nan"
    assert check_modality(with_nan, thresholds=SensorHealth(nonfinite=None)) == "ok"
    assert check_modality(np.full((4, 4), np.nan, np.float64)) == "nan"


def test_saturated_8_and_16_bit():
    img8 = np.full((10, 10, 3), 255, np.uint8)
    img8[0, 0] = [3, 4, 5]  # 297 of 300 values at 255 (99 %)
    assert check_modality(img8) == "saturated"
    assert check_modality(np.full((10, 10), 255, np.uint8)) == "saturated"  # not "constant"
    img8[0, :3] = 17  # 291 of 300 values (97 %): below the default 98 %
    assert check_modality(img8) == "ok"
    assert check_modality(img8, thresholds=SensorHealth(saturated=0.95)) == "saturated"
    img16 = np.full((10, 10), 65535, np.uint16)
    img16[5, :1] = 1000  # 99 of 100
    assert check_modality(img16) == "saturated"
    # 255 in a 16-bit file is not the maximum of its dtype: a dark 16-bit image, not white
    dark16 = np.full((10, 10), 255, np.uint16)
    dark16[0, 0] = 7
    assert check_modality(dark16) == "ok"
    assert check_modality(img16, thresholds=SensorHealth(saturated=None)) == "ok"
    # float files have no dtype maximum: never saturated (99 % at 1.0 of a [0, 1] image)
    white = np.ones((10, 10), np.float32)
    white[0, 0] = 0.5
    assert check_modality(white) == "ok"


def test_frozen_against_the_previous_frame():
    rng = np.random.default_rng(1)
    frame = _noise(rng, (12, 12, 3))
    assert check_modality(frame, previous=frame.copy()) == "frozen"
    assert check_modality(frame) == "ok"  # no previous frame: never frozen
    moved = frame.copy()
    moved[6, 6, 1] ^= 1  # one value differs by 1
    assert check_modality(moved, previous=frame) == "ok"
    assert check_modality(moved, previous=frame, thresholds=SensorHealth(frozen=1)) == "frozen"
    assert check_modality(frame, previous=frame.copy(),
                          thresholds=SensorHealth(frozen=None)) == "ok"
    assert check_modality(frame, previous=frame[:, :11]) == "ok"  # another size
    assert check_modality(frame, previous=frame.astype(np.uint16)) == "ok"  # another dtype
    depth = rng.uniform(1, 9, (8, 8)).astype(np.float32)
    assert check_modality(depth, previous=depth[:, :, None].copy()) == "frozen"  # 2-D vs 3-D
    holes = depth.copy()
    holes[0, 0] = np.nan
    loose = SensorHealth(nonfinite=0.1)
    assert check_modality(holes, previous=holes.copy(), thresholds=loose) == "frozen"
    assert check_modality(holes, previous=depth, thresholds=loose) == "ok"
    loose_frozen = SensorHealth(nonfinite=0.1, frozen=0.5)
    assert check_modality(holes, previous=holes + 0.25, thresholds=loose_frozen) == "frozen"
    assert check_modality(holes, previous=depth, thresholds=loose_frozen) == "ok"


def test_healthy_noisy_images_are_ok():
    rng = np.random.default_rng(2)
    assert check_modality(_noise(rng, (32, 32, 3))) == "ok"
    assert check_modality(_noise(rng, (32, 32), np.uint16, 65536)) == "ok"
    assert check_modality(rng.normal(10, 3, (32, 32)).astype(np.float32)) == "ok"
    # a bright but real frame: 90 % white, the rest texture
    bright = np.full((20, 20, 3), 255, np.uint8)
    bright[:2] = _noise(rng, (2, 20, 3))
    assert check_modality(bright) == "ok"
    # previous frame of another scene
    a, b = _noise(rng, (16, 16, 3)), _noise(rng, (16, 16, 3))
    assert check_modality(a, previous=b) == "ok"


def test_check_modality_refuses_non_images():
    with pytest.raises(DataError, match=r"x\.png \[modality 'rgb'\]: sensor health: expected"):
        check_modality(np.zeros(5, np.uint8), path="x.png", modality="rgb")
    with pytest.raises(DataError, match="non-empty numeric"):
        check_modality(np.zeros((0, 4), np.uint8))
    with pytest.raises(DataError, match="numeric"):
        check_modality(np.array([["a", "b"]]))


def test_parse_and_resolve_health():
    assert parse_health(None) == SensorHealth() == parse_health(["on"])
    assert SensorHealth() == SensorHealth(nonfinite=0, saturated=0.98, constant=0, frozen=0)
    assert parse_health(["off"]) is None
    got = parse_health(["saturated=0.99", "frozen=off", "constant=2"])
    assert got == SensorHealth(saturated=0.99, frozen=None, constant=2.0)
    for bad, match in ((["off", "frozen=0"], "cannot be combined"),
                       (["bogus=1"], "KEY one of nonfinite, saturated, constant, frozen"),
                       (["saturated"], "KEY=VALUE"),
                       (["saturated=lots"], "not a number"),
                       (["saturated=1.5"], "saturated"),
                       (["nonfinite=1"], "nonfinite"),
                       (["constant=-1"], "constant")):
        with pytest.raises(ConfigError, match=match):
            parse_health(bad)
    assert resolve_health(True) == SensorHealth()
    assert resolve_health(None) is None and resolve_health(False) is None
    assert resolve_health({"frozen": None}) == SensorHealth(frozen=None)
    with pytest.raises(ConfigError, match="frozn: Extra inputs are not permitted"):
        resolve_health({"frozn": 1})
    with pytest.raises(ConfigError, match="SensorHealth, a mapping"):
        resolve_health("off")


# --------------------------------------------------------------------------- end to end
def _scene(t: int, size: int = 32) -> dict[str, np.ndarray]:
    """A street-like frame at time ``t``: sky over a road (RGB 8-bit), ground-plane depth in
    metres (float32), thermal 8-bit with a warm car that moves right 3 px per frame."""
    rng = np.random.default_rng(100 + t)
    h = w = size
    rows = np.arange(h, dtype=np.float32)[:, None]
    horizon = h // 3
    rgb = np.empty((h, w, 3), np.float32)
    rgb[:horizon] = [110, 160, 230]
    rgb[horizon:] = [90, 90, 95]
    depth = np.where(rows < horizon, 80.0, 1.5 * h / np.maximum(rows - horizon + 1, 1))
    depth = np.broadcast_to(depth, (h, w)).astype(np.float32).copy()
    thermal = np.where(rows < horizon, 40.0, 90.0) * np.ones((1, w), np.float32)
    x0, y0 = 2 + 3 * t, h // 2
    rgb[y0:y0 + 8, x0:x0 + 10] = [200, 30, 30]
    depth[y0:y0 + 8, x0:x0 + 10] = 6.0
    thermal[y0:y0 + 8, x0:x0 + 10] = 200.0
    rgb += rng.normal(0, 6, rgb.shape)
    thermal += rng.normal(0, 4, thermal.shape)
    depth *= rng.uniform(0.98, 1.02, depth.shape).astype(np.float32)
    return {"rgb": np.clip(rgb, 0, 255).astype(np.uint8), "depth": depth,
            "thermal": np.clip(thermal, 0, 255).astype(np.uint8)}


def _frames(root: Path) -> Path:
    """``root/{rgb,thermal}/{stem}.png`` and ``root/depth/{stem}.npy`` with the dead sensors of
    :data:`EXPECTED_CSV`."""
    frames = {s: _scene(i) for i, s in enumerate(STEMS)}
    frames["f1"]["rgb"] = np.zeros_like(frames["f1"]["rgb"])
    frames["f2"]["depth"][3:6, 10:14] = np.nan
    hot = np.full_like(frames["f3"]["thermal"], 255)
    hot.flat[::100] = 120  # 11 of 1024 pixels below the top: 98.9 % saturated
    frames["f3"]["thermal"] = hot
    frames["f4"]["rgb"] = frames["f3"]["rgb"].copy()
    frames["f6"]["rgb"] = np.full_like(frames["f6"]["rgb"], 128)
    frames["f6"]["depth"] = np.zeros_like(frames["f6"]["depth"])
    frames["f6"]["thermal"] = frames["f5"]["thermal"].copy()
    for stem, mods in frames.items():
        _png(root / "rgb" / f"{stem}.png", mods["rgb"])
        _png(root / "thermal" / f"{stem}.png", mods["thermal"])
        (root / "depth").mkdir(parents=True, exist_ok=True)
        np.save(root / "depth" / f"{stem}.npy", mods["depth"])
    return root


#: depth read from float32 metres (NaN possible), normalised like DELIVER's millimetre depth
FLOAT_DEPTH = ModalitySpec.model_validate({**DELIVER_SPECS["depth"].model_dump(),
                                          "bit_depth": 32, "scale": 1.0})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("health")
    specs = {"rgb": DELIVER_SPECS["rgb"], "depth": FLOAT_DEPTH, "thermal": DELIVER_SPECS["thermal"]}
    ckpt = _checkpoint(tmp, modalities=MODALITIES, specs=specs)
    return ckpt, _frames(tmp / "frames"), tmp


def _mask(out: Path, stem: str) -> np.ndarray:
    return np.asarray(Image.open(out / "masks" / f"{stem}.png"))


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _spy_batches(monkeypatch) -> list[list[str]]:
    """The modality keys of every batch the model gets, in order."""
    keys: list[list[str]] = []
    real = predict_mod.predict_logits

    def spy(model, batch, **kwargs):
        keys.append([m for m in MODALITIES if m in batch])
        return real(model, batch, **kwargs)

    monkeypatch.setattr(predict_mod, "predict_logits", spy)
    return keys


def test_dead_modality_gives_the_mask_without_it(setup, monkeypatch):
    ckpt, frames, tmp = setup
    out = tmp / "on"
    keys = _spy_batches(monkeypatch)
    with pytest.raises(PredictionIncomplete) as info:
        predict(ckpt, frames, out)
    summary = info.value.summary
    assert _rows(out / "sensors.csv") == EXPECTED_CSV
    assert summary.sensors == out / "sensors.csv"
    # the model ran on the healthy modalities only; f6 (all dead) not at all
    assert keys == [["rgb", "depth", "thermal"], ["depth", "thermal"], ["rgb", "thermal"],
                    ["rgb", "depth"], ["depth", "thermal"], ["rgb", "depth", "thermal"]]
    assert summary.written == STEMS[:6]
    assert [(d.id, d.dead, d.used) for d in summary.dead] == [
        ("f1", {"rgb": "zero"}, ("depth", "thermal")),
        ("f2", {"depth": "nan"}, ("rgb", "thermal")),
        ("f3", {"thermal": "saturated"}, ("rgb", "depth")),
        ("f4", {"rgb": "frozen"}, ("depth", "thermal"))]
    lines = summary.lines()
    assert lines[1:5] == ["dead sensors f1: rgb zero; ran on depth, thermal",
                          "dead sensors f2: depth nan; ran on rgb, thermal",
                          "dead sensors f3: thermal saturated; ran on rgb, depth",
                          "dead sensors f4: rgb frozen; ran on depth, thermal"]
    # every modality dead: a failed sample like a bad file, in failed.txt
    assert [f.id for f in summary.failed] == ["f6"]
    error = summary.failed[0].error
    assert error == (f"{frames / 'rgb' / 'f6.png'} [modality 'rgb']: every given modality is "
                     "dead (rgb constant, depth zero, thermal frozen): nothing to predict from "
                     "(sensor health; see sensors.csv, --health off predicts anyway)")
    assert (out / "failed.txt").read_text() == f"f6\t{error}\n"
    assert lines[-1] == f"failed f6: {error}"

    # the invariant: each dead frame's mask is the mask of predicting without that modality
    monkeypatch.undo()
    for dead in ("rgb", "depth", "thermal"):
        stems = [s for s, m in DEAD.items() if m == dead]
        pick = "[" + "".join(s[1] for s in stems) + "]"
        inputs = [f"{m}={frames / m}/f{pick}.*" for m in MODALITIES if m != dead]
        ref = tmp / f"without_{dead}"
        predict(ckpt, inputs, ref, health=None)
        for stem in stems:
            np.testing.assert_array_equal(_mask(out, stem), _mask(ref, stem), err_msg=stem)


def test_health_off_runs_every_modality(setup, monkeypatch):
    ckpt, frames, tmp = setup
    out = tmp / "off"
    (out).mkdir()
    (out / "sensors.csv").write_text("stale\n")
    keys = _spy_batches(monkeypatch)
    summary = predict(ckpt, frames, out, health=None)
    assert keys == [list(MODALITIES)] * 7  # the old behaviour: nothing dropped, f6 predicted
    assert summary.written == STEMS and summary.dead == [] and summary.failed == []
    assert summary.sensors is None and not (out / "sensors.csv").exists()
    assert len(summary.lines()) == 1


def test_skip_existing_keeps_the_rows_of_skipped_frames(setup, monkeypatch):
    ckpt, frames, tmp = setup
    out = tmp / "again"
    with pytest.raises(PredictionIncomplete):
        predict(ckpt, frames, out)
    keys = _spy_batches(monkeypatch)
    with pytest.raises(PredictionIncomplete) as info:
        predict(ckpt, frames, out, skip_existing=True)
    assert keys == []  # f0..f5 skipped; f6 read, checked and failed again
    assert info.value.summary.skipped_existing == STEMS[:6]
    assert _rows(out / "sensors.csv") == EXPECTED_CSV


def test_on_error_stop_raises_for_an_all_dead_frame(setup):
    ckpt, frames, tmp = setup
    inputs = [f"{m}={frames / m}/f6.*" for m in ("rgb", "depth")]  # thermal not given
    with pytest.raises(DataError, match=r"rgb/f6\.png \[modality 'rgb'\]: every given modality "
                                        r"is dead \(rgb constant, depth zero\)"):
        predict(ckpt, inputs, tmp / "stop", on_error="stop")
    # thermal alone at f6 is healthy (no previous frame in this run): predicted on it alone
    summary = predict(ckpt, [f"thermal={frames / 'thermal'}/f6.png",
                             f"rgb={frames / 'rgb'}/f6.png"], tmp / "one", on_error="stop")
    assert summary.written == ["f6"] and summary.dead[0].used == ("thermal",)
    assert _rows(tmp / "one" / "sensors.csv") == [["id", *MODALITIES],
                                                  ["f6", "constant", "absent", "ok"]]


def test_cli_health_options(setup):
    ckpt, frames, tmp = setup
    out = tmp / "cli"
    res = runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--input", str(frames),
                              "--out", str(out), "--health", "frozen=off",
                              "--health", "saturated=0.995"])
    assert res.exit_code == 0, res.output
    assert _rows(out / "sensors.csv") == [
        ["id", "rgb", "depth", "thermal"], ["f0", "ok", "ok", "ok"], ["f1", "zero", "ok", "ok"],
        ["f2", "ok", "nan", "ok"], ["f3", "ok", "ok", "ok"], ["f4", "ok", "ok", "ok"],
        ["f5", "ok", "ok", "ok"], ["f6", "constant", "zero", "ok"]]
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("7 sample(s): 7 written, 0 skipped (outputs existed), 0 failed")
    assert lines[1:] == ["dead sensors f1: rgb zero; ran on depth, thermal",
                         "dead sensors f2: depth nan; ran on rgb, thermal",
                         "dead sensors f6: rgb constant, depth zero; ran on thermal"]
    res = runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--input", str(frames),
                              "--out", str(tmp / "cli_off"), "--health", "off"])
    assert res.exit_code == 0, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp / "cli_off" / "sensors.csv").exists()
    for bad in (["--health", "bogus=1"], ["--health", "off", "--health", "frozen=0"]):
        res = runner.invoke(app, ["predict", "--ckpt", str(ckpt), "--input", str(frames),
                                  "--out", str(tmp / "cli_bad"), *bad])
        assert res.exit_code == 2 and "--health" in res.output, res.output
        assert not (tmp / "cli_bad").exists()  # refused before anything is written


def test_onnx_model_refuses_a_frame_with_a_dead_exported_input(setup):
    pytest.importorskip("onnxruntime")
    from fusionseg.inference import export_onnx

    ckpt, frames, tmp = setup
    onnx_file = tmp / "m.onnx"
    export_onnx(ckpt, onnx_file, size=(32, 32), check=False, exporter="torchscript")
    inputs = [f"{m}={frames / m}/f[01].*" for m in MODALITIES]
    with pytest.raises(PredictionIncomplete) as info:
        predict(None, inputs, tmp / "onnx", onnx=onnx_file)
    summary = info.value.summary
    assert summary.written == ["f0"] and [f.id for f in summary.failed] == ["f1"]
    assert summary.failed[0].error == (
        f"{frames / 'rgb' / 'f1.png'} [modality 'rgb']: dead sensor(s) rgb zero, and this ONNX "
        "model was exported for rgb, depth, thermal and cannot run without 'rgb'; predict with "
        "--ckpt, export without it (fusionseg export --modalities ...), or --health off")
    assert _rows(tmp / "onnx" / "sensors.csv")[1:] == [["f0", "ok", "ok", "ok"],
                                                       ["f1", "zero", "ok", "ok"]]
    # exported without rgb: a dead rgb is not an input, the frame runs on depth + thermal
    sub = tmp / "sub.onnx"
    export_onnx(ckpt, sub, modalities=["depth", "thermal"], size=(32, 32), check=False,
                exporter="torchscript")
    summary = predict(None, inputs, tmp / "onnx_sub", onnx=sub)
    assert summary.written == ["f0", "f1"] and summary.dead[0].used == ("depth", "thermal")
