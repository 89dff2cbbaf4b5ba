"""predict on one's own sensor files: input forms, stored specs, legend, overlay, video, slide.

Train-free: a tiny sum_fusion / MiT model is written as a checkpoint dict the way training
writes it (``model.`` prefixed state dict + ``fusionseg_*`` entries); fixtures are generated
under ``tmp_path``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence
from torch.testing import assert_close

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY_MIT  # noqa: E402

import fusionseg.inference.prediction as predict_mod  # noqa: E402
from fusionseg.config import (
    config_from_dict,  # noqa: E402
    model_spec,  # noqa: E402
)
from fusionseg.data.datasets.deliver import DELIVER_SPECS  # noqa: E402
from fusionseg.data.io import DataError  # noqa: E402
from fusionseg.data.modalities import get_spec  # noqa: E402
from fusionseg.errors import CheckpointError  # noqa: E402
from fusionseg.inference import (  # noqa: E402
    InputSource,
    inference_settings,
    load_predictor,
    open_inputs,
    parse_input,
    parse_spec_overrides,
    predict,
    training_specs,
)
from fusionseg.models import create_model  # noqa: E402
from fusionseg.models.inference_modes import predict_logits  # noqa: E402
from fusionseg.viz import class_legend, mp4_writer, overlay_mask, save_panel  # noqa: E402

CLASSES = ["road", "car", "person"]
PALETTE = [[128, 64, 128], [0, 0, 142], [220, 20, 60]]


def _cfg_dict(modalities=("rgb", "depth"), **eval_cfg) -> dict:
    return {
        "name": "tiny",
        "model": {"name": "sum_fusion", "backbone": "mit_b0", "modalities": list(modalities),
                  "decoder_dim": 16, "backbone_kwargs": TINY_MIT, "num_classes": 3},
        "data": {"dataset": "deliver", "crop_size": [32, 32]},
        "eval": eval_cfg,
    }


def _checkpoint(tmp_path: Path, modalities=("rgb", "depth"), specs="deliver", name="m.ckpt",
                **eval_cfg) -> Path:
    """A checkpoint as training writes it; ``specs``: "deliver", None (old file) or a dict."""
    raw = _cfg_dict(modalities, **eval_cfg)
    cfg = config_from_dict(raw)
    torch.manual_seed(0)
    model = create_model(model_spec(cfg, 3, for_checkpoint=True))
    ck = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
          "fusionseg_config": cfg.model_dump(mode="json"),
          "fusionseg_classes": CLASSES, "fusionseg_palette": PALETTE}
    if specs == "deliver":
        specs = {m: DELIVER_SPECS[m] for m in modalities}
    if specs is not None:
        ck["fusionseg_specs"] = {m: s.model_dump(mode="json") for m, s in specs.items()}
    path = tmp_path / name
    torch.save(ck, path)
    return path


def _png(path: Path, array: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def _rgb(rng, h=40, w=48) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _depth16(rng, h=40, w=48) -> np.ndarray:
    return rng.integers(0, 20000, (h, w), dtype=np.uint16)


# --------------------------------------------------------------------------- parsing
def test_parse_input_forms():
    assert parse_input("data/own") == InputSource(None, "data/own")
    assert parse_input("rgb=data/frames") == InputSource("rgb", "data/frames")
    assert parse_input("thermal=data/frames:3") == InputSource("thermal", "data/frames", (3,))
    assert parse_input("rgb=d/*.png:0,1,2") == InputSource("rgb", "d/*.png", (0, 1, 2))
    assert parse_input("depth=a/b=c") == InputSource("depth", "a/b=c")
    with pytest.raises(DataError, match="channel selection needs a modality"):
        parse_input("no/such/dir:3")
    with pytest.raises(DataError, match="labels take channel 0"):
        parse_input("label=d:1")
    with pytest.raises(DataError, match="no folder, glob or file"):
        parse_input("rgb=")


def test_parse_spec_overrides_values_and_errors():
    got = parse_spec_overrides(["depth.bit_depth=8", "depth.scale=0.01", "rgb.file_channels=null",
                                "thermal.scale=auto", "thermal.file_channels=[3]"])
    assert got == {"depth": {"bit_depth": 8, "scale": 0.01},
                   "rgb": {"file_channels": None},
                   "thermal": {"scale": "auto", "file_channels": [3]}}
    for bad in ("depth=8", "bit_depth=8", "depth.bit_depth", "depth.a.b=1"):
        with pytest.raises(DataError, match="modality.field=value"):
            parse_spec_overrides([bad])


# --------------------------------------------------------------------------- inputs
def test_glob_dir_and_file_inputs_matched_by_stem(tmp_path):
    rng = np.random.default_rng(0)
    cfg = config_from_dict(_cfg_dict())
    for stem in ("b", "a", "c"):
        _png(tmp_path / "cam" / f"{stem}.png", _rgb(rng))
        _png(tmp_path / "range" / f"{stem}.png", _depth16(rng))
    (tmp_path / "range" / "notes.txt").write_text("not an image")
    specs = training_specs({"fusionseg_specs": {m: DELIVER_SPECS[m].model_dump(mode="json")
                                                for m in ("rgb", "depth")}}, cfg)
    ds = open_inputs([f"rgb={tmp_path / 'cam'}", f"depth={tmp_path / 'range'}/*.png"], cfg, specs)
    assert ds.stems == ["a", "b", "c"] and ds.modalities == ["rgb", "depth"]
    sample = ds[1]
    assert sample["meta"]["id"] == "b"
    assert sample["meta"]["paths"]["depth"] == str(tmp_path / "range" / "b.png")
    raw = np.asarray(Image.open(tmp_path / "range" / "b.png"))
    assert_close(sample["depth"], torch.from_numpy(raw.astype(np.float32) * 0.001)
                 .expand(3, -1, -1))
    one = open_inputs([f"rgb={tmp_path / 'cam' / 'c.png'}"], cfg, specs)
    assert one.stems == ["c"] and "depth" not in one[0]


def test_stem_without_partner_names_modality_and_stems(tmp_path):
    rng = np.random.default_rng(1)
    cfg = config_from_dict(_cfg_dict())
    specs = training_specs({"fusionseg_specs": {m: DELIVER_SPECS[m].model_dump(mode="json")
                                                for m in ("rgb", "depth")}}, cfg)
    for stem in ("a", "b", "c"):
        _png(tmp_path / "rgb" / f"{stem}.png", _rgb(rng))
    for stem in ("a", "z"):
        _png(tmp_path / "depth" / f"{stem}.png", _depth16(rng))
    with pytest.raises(DataError) as err:
        open_inputs([f"rgb={tmp_path / 'rgb'}", f"depth={tmp_path / 'depth'}"], cfg, specs)
    msg = str(err.value)
    assert "'rgb' has no file for stem(s) z" in msg
    assert "'depth' has no file for stem(s) b, c" in msg
    assert err.value.modality == "rgb"
    with pytest.raises(DataError, match="the model has no modality 'thermal'"):
        open_inputs([f"thermal={tmp_path / 'rgb'}"], cfg, specs)
    with pytest.raises(DataError, match="given twice"):
        open_inputs([f"rgb={tmp_path / 'rgb'}", f"rgb={tmp_path / 'rgb'}"], cfg, specs)
    with pytest.raises(DataError, match="no such folder, file or glob"):
        open_inputs([f"rgb={tmp_path / 'nothing'}"], cfg, specs)


def test_packed_rgba_channels_select_rgb_and_thermal(tmp_path):
    rng = np.random.default_rng(2)
    cfg = config_from_dict(_cfg_dict(("rgb", "thermal")))
    packed = rng.integers(0, 256, (24, 32, 4), dtype=np.uint8)
    packed[..., 3] = np.arange(32, dtype=np.uint8)[None] * 7  # thermal differs from alpha-ish
    _png(tmp_path / "frames" / "0001.png", packed)
    specs = training_specs({"fusionseg_specs": {m: DELIVER_SPECS[m].model_dump(mode="json")
                                                for m in ("rgb", "thermal")}}, cfg)
    frames = tmp_path / "frames"
    ds = open_inputs([f"rgb={frames}:0,1,2", f"thermal={frames}:3"], cfg, specs)
    sample = ds[0]
    expected_t = torch.from_numpy(packed[..., 3].astype(np.float32) / 255.0)
    assert_close(sample["thermal"], expected_t.expand(3, -1, -1))
    expected_rgb = torch.from_numpy(packed[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1)
    assert_close(sample["rgb"], expected_rgb)
    # a later channel picks another plane: channel 1 is not channel 3
    other = open_inputs([f"thermal={frames}:1"], cfg, specs)[0]["thermal"]
    assert_close(other[0], torch.from_numpy(packed[..., 1].astype(np.float32) / 255.0))
    with pytest.raises(DataError, match=r"selects 2 channel\(s\) \[0, 1\].*takes 1 or 3"):
        open_inputs([f"thermal={frames}:0,1"], cfg, specs)
    with pytest.raises(DataError, match="takes channel index 5"):
        open_inputs([f"thermal={frames}:5"], cfg, specs)[0]


def test_folder_form_with_label_and_an_explicit_modality(tmp_path):
    rng = np.random.default_rng(3)
    cfg = config_from_dict(_cfg_dict())
    specs = training_specs({"fusionseg_specs": {m: DELIVER_SPECS[m].model_dump(mode="json")
                                                for m in ("rgb", "depth")}}, cfg)
    label = rng.integers(0, 3, (40, 48), dtype=np.uint8)
    _png(tmp_path / "own" / "rgb" / "s.png", _rgb(rng))
    _png(tmp_path / "own" / "label" / "s.png", label)
    _png(tmp_path / "elsewhere" / "s.png", _depth16(rng))
    ds = open_inputs(tmp_path / "own", cfg, specs)
    assert ds.modalities == ["rgb"]
    assert torch.equal(ds[0]["label"], torch.from_numpy(label.astype(np.int64)))
    ds = open_inputs([str(tmp_path / "own"), f"depth={tmp_path / 'elsewhere'}"], cfg, specs)
    assert ds.modalities == ["rgb", "depth"] and set(ds[0]) >= {"rgb", "depth", "label"}
    with pytest.raises(DataError, match="input folder not found"):
        open_inputs(tmp_path / "missing", cfg, specs)


# --------------------------------------------------------------------------- specs
def test_stored_specs_are_applied_not_the_defaults(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    stored = {"rgb": get_spec("rgb", bit_depth=8), "depth": get_spec("depth", scale=0.01)}
    ckpt = _checkpoint(tmp_path, specs=stored)
    model, meta, cfg = load_predictor(ckpt=ckpt)
    specs = training_specs(meta, cfg)
    assert specs == stored
    raw = _png(tmp_path / "in" / "depth" / "x.png", _depth16(rng))
    _png(tmp_path / "in" / "rgb" / "x.png", _rgb(rng))
    x = open_inputs(tmp_path / "in", cfg, specs)[0]["depth"]
    assert_close(x[0], torch.from_numpy(raw.astype(np.float32) * 0.01))
    default = get_spec("depth").load(tmp_path / "in" / "depth" / "x.png")
    assert not torch.allclose(x, default)
    # end to end: the model input is the stored spec's, normalized
    seen = {}
    real = predict_logits

    def spy(model, batch, **kw):
        seen.update(batch)
        return real(model, batch, **kw)

    monkeypatch.setattr(predict_mod, "predict_logits", spy)
    assert predict(ckpt, tmp_path / "in", tmp_path / "out").written == ["x"]
    assert_close(seen["depth"][0], stored["depth"].normalize_tensor(x))


def test_old_checkpoint_falls_back_to_dataset_specs_with_one_warning(tmp_path):
    ckpt = _checkpoint(tmp_path, specs=None)
    _, meta, cfg = load_predictor(ckpt=ckpt)
    with pytest.warns(UserWarning, match="holds no fusionseg_specs") as record:
        specs = training_specs(meta, cfg)
    assert len(record) == 1
    assert specs == {"rgb": DELIVER_SPECS["rgb"], "depth": DELIVER_SPECS["depth"]}


def test_8bit_depth_for_16bit_model_is_a_clear_error_and_override_reads_it(tmp_path):
    rng = np.random.default_rng(5)
    ckpt = _checkpoint(tmp_path)
    _, meta, cfg = load_predictor(ckpt=ckpt)
    path = tmp_path / "in" / "depth" / "x.png"
    raw = _png(path, rng.integers(0, 256, (40, 48), dtype=np.uint8))
    _png(tmp_path / "in" / "rgb" / "x.png", _rgb(rng))
    ds = open_inputs(tmp_path / "in", cfg, training_specs(meta, cfg))
    with pytest.raises(DataError) as err:
        ds[0]
    msg = str(err.value)
    assert msg.startswith(f"{path} [modality 'depth']: wrong bit depth: file is 8-bit (uint8)")
    assert "expects 16-bit" in msg
    assert "the model was trained on 16-bit, 1 channel(s), raw * 0.001 -> m" in msg
    assert "--spec depth.bit_depth=8 --spec depth.scale=" in msg
    overrides = parse_spec_overrides(["depth.bit_depth=8", "depth.scale=0.1"])
    ds = open_inputs(tmp_path / "in", cfg, training_specs(meta, cfg, overrides))
    assert_close(ds[0]["depth"][0], torch.from_numpy(raw.astype(np.float32) * 0.1))
    with pytest.raises(DataError, match="bit_depth"):
        training_specs(meta, cfg, {"depth": {"bit_depth": 12}})
    with pytest.raises(DataError, match="does not take"):
        training_specs(meta, cfg, {"thermal": {"bit_depth": 8}})


def test_wrong_channel_count_names_file_modality_and_fix(tmp_path):
    rng = np.random.default_rng(6)
    cfg = config_from_dict(_cfg_dict())
    specs = training_specs({"fusionseg_specs": {m: DELIVER_SPECS[m].model_dump(mode="json")
                                                for m in ("rgb", "depth")}}, cfg)
    path = tmp_path / "gray" / "g.png"
    _png(path, rng.integers(0, 256, (20, 20), dtype=np.uint8))
    with pytest.raises(DataError) as err:
        open_inputs([f"rgb={path}"], cfg, specs)[0]
    msg = str(err.value)
    assert msg.startswith(f"{path} [modality 'rgb']: wrong channel count: file has 1 channel")
    assert "rgb=PATH:I[,J] (0-based)" in msg


# --------------------------------------------------------------------------- viz
def test_class_legend_lists_classes_of_prediction_and_label():
    pred = torch.tensor([[0, 2], [2, 0]])
    label = np.array([[2, 255], [1, 255]])
    got = class_legend(CLASSES, PALETTE, pred, label, None)
    assert got == [(0, "road", (128, 64, 128)), (1, "car", (0, 0, 142)),
                   (2, "person", (220, 20, 60))]
    assert class_legend(CLASSES[:1], PALETTE, np.array([[2]])) == [(2, "class 2",
                                                                    (220, 20, 60))]
    with pytest.raises(ValueError, match="class id 7 is outside the palette 0..2"):
        class_legend(CLASSES, PALETTE, np.array([[7]]))


def test_panel_with_legend_differs_from_without(tmp_path):
    images = {"prediction": np.zeros((16, 16, 3), np.uint8)}
    save_panel(tmp_path / "plain.png", images)
    save_panel(tmp_path / "legend.png", images,
               legend=class_legend(CLASSES, PALETTE, np.array([[0, 1, 2]])))
    plain = np.asarray(Image.open(tmp_path / "plain.png"))
    legend = np.asarray(Image.open(tmp_path / "legend.png"))
    assert legend.shape[0] > plain.shape[0]  # a legend strip below the images
    # the class colours appear in the legend panel only
    for rgb in PALETTE:
        hits = lambda a, rgb=rgb: np.all(a[..., :3] == rgb, axis=-1).sum()  # noqa: E731
        assert hits(legend) > 0 and hits(plain) == 0


def test_overlay_mask_blends_at_alpha():
    image = np.full((2, 3, 3), 100, np.uint8)
    mask = np.full((2, 3, 3), 201, np.uint8)
    out = overlay_mask(image, mask, 0.5)
    assert out.dtype == np.uint8 and (out == 150).all()  # rint(150.5) -> 150 (half to even)
    keep = np.zeros((2, 3), bool)
    keep[0, 0] = True
    out = overlay_mask(image, mask, 0.25, keep=keep)
    assert out[0, 0].tolist() == [100] * 3 and out[1, 2].tolist() == [125] * 3
    with pytest.raises(ValueError, match="one size"):
        overlay_mask(image, mask[:1])
    with pytest.raises(ValueError, match="alpha"):
        overlay_mask(image, mask, 1.5)


# --------------------------------------------------------------------------- predict
def test_predict_writes_masks_panels_overlays_and_a_gif(tmp_path):
    rng = np.random.default_rng(7)
    ckpt = _checkpoint(tmp_path)
    stems = ["f03", "f01", "f02"]
    rgbs = {s: _png(tmp_path / "rgb" / f"{s}.png", _rgb(rng)) for s in stems}
    for s in stems:
        _png(tmp_path / "depth" / f"{s}.png", _depth16(rng))
    out = tmp_path / "out"
    summary = predict(ckpt, [f"rgb={tmp_path / 'rgb'}/*.png", f"depth={tmp_path / 'depth'}"],
                      out, overlay=True, video=tmp_path / "v" / "pred.gif", fps=4)
    assert summary.written == ["f01", "f02", "f03"] and summary.total == 3
    assert summary.video == tmp_path / "v" / "pred.gif" and not summary.failed
    for s in stems:
        mask = np.asarray(Image.open(out / "masks" / f"{s}.png"))
        over = np.asarray(Image.open(out / "overlays" / f"{s}.png"))
        assert mask.shape == over.shape == (40, 48, 3)
        assert (out / "panels" / f"{s}.png").is_file()
        # the colour mask blended on the RGB frame at alpha 0.5 (RGB through normalize and
        # back may move a value by one count)
        expected = overlay_mask(rgbs[s], mask, 0.5).astype(int)
        assert np.abs(over.astype(int) - expected).max() <= 1
    with Image.open(tmp_path / "v" / "pred.gif") as gif:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
        assert gif.info["duration"] == 250
    assert len(frames) == 3 and frames[0].shape == (40, 48, 3)
    # sorted by stem: the first frame is f01's overlay (GIF colours are quantized)
    first = np.asarray(Image.open(out / "overlays" / "f01.png")).astype(int)
    errs = [np.abs(f.astype(int) - first).mean() for f in frames]
    assert int(np.argmin(errs)) == 0


def test_predict_video_of_panels_without_overlay(tmp_path):
    rng = np.random.default_rng(8)
    ckpt = _checkpoint(tmp_path, modalities=("rgb",))
    for s in ("a", "b"):
        _png(tmp_path / "own" / "rgb" / f"{s}.png", _rgb(rng, 32, 32))
    predict(ckpt, tmp_path / "own", tmp_path / "out", video=tmp_path / "p.gif")
    panel = np.asarray(Image.open(tmp_path / "out" / "panels" / "a.png"))
    assert not (tmp_path / "out" / "overlays").exists()
    with Image.open(tmp_path / "p.gif") as gif:
        assert gif.n_frames == 2 and gif.size == (panel.shape[1], panel.shape[0])


def test_mp4_without_writer_is_a_clear_error_before_any_work(tmp_path):
    ckpt = _checkpoint(tmp_path, modalities=("rgb",))
    _png(tmp_path / "own" / "rgb" / "a.png", _rgb(np.random.default_rng(9), 32, 32))
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        predict(ckpt, tmp_path / "own", tmp_path / "o1", video=tmp_path / "v.avi")
    if mp4_writer() is not None:
        predict(ckpt, tmp_path / "own", tmp_path / "o2", video=tmp_path / "v.mp4")
        assert (tmp_path / "v.mp4").stat().st_size > 0
        return
    with pytest.raises(ValueError, match=r"MP4 needs PyAV .* --video out\.gif"):
        predict(ckpt, tmp_path / "own", tmp_path / "o2", video=tmp_path / "v.mp4")
    assert not (tmp_path / "o2").exists()


def test_inference_settings_switch_to_slide_above_the_pixel_budget():
    cfg = config_from_dict(_cfg_dict())  # crop 32 x 32: budget 4096 px
    assert inference_settings(cfg, (64, 64))["mode"] == "whole"
    big = inference_settings(cfg, (64, 65))
    assert (big["mode"], big["window"], big["stride"]) == ("slide", (32, 32), (21, 21))
    assert inference_settings(cfg, (10, 11), max_pixels=100)["mode"] == "slide"
    assert inference_settings(cfg, (640, 640), max_pixels=10**6)["mode"] == "whole"
    with pytest.raises(ValueError, match="max_pixels must be >= 1"):
        inference_settings(cfg, (8, 8), max_pixels=0)
    slide_cfg = config_from_dict(_cfg_dict(mode="slide", window=[48, 40], stride=[24, 20]))
    s = inference_settings(slide_cfg, (8, 8))
    assert (s["mode"], s["window"], s["stride"]) == ("slide", (48, 40), (24, 20))


def test_large_input_takes_the_slide_path(tmp_path, monkeypatch):
    rng = np.random.default_rng(10)
    ckpt = _checkpoint(tmp_path, modalities=("rgb",))
    _png(tmp_path / "own" / "rgb" / "big.png", _rgb(rng, 70, 66))  # 4620 px > 4096
    _png(tmp_path / "own" / "rgb" / "small.png", _rgb(rng, 40, 40))
    calls, batches = [], []
    real = predict_logits

    def spy(model, batch, **kw):
        calls.append(kw)
        batches.append(batch)
        return real(model, batch, **kw)

    monkeypatch.setattr(predict_mod, "predict_logits", spy)
    predict(ckpt, tmp_path / "own", tmp_path / "out")
    modes = [(c["mode"], c["window"], c["stride"]) for c in calls]
    assert modes == [("slide", (32, 32), (21, 21)), ("whole", (512, 512), (341, 341))]
    model, _, _ = load_predictor(ckpt=ckpt)
    slide = real(model, batches[0], mode="slide", window=(32, 32), stride=(21, 21))
    whole = real(model, batches[0])
    expected = np.asarray(PALETTE, np.uint8)[slide.argmax(1)[0].numpy()]
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "big.png"))
    assert np.array_equal(mask, expected)
    assert not torch.allclose(slide, whole)  # the window mattered for this input


def test_load_predictor_needs_exactly_one_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        load_predictor()
    with pytest.raises(ValueError, match="exactly one"):
        load_predictor(ckpt="a.ckpt", onnx="a.onnx")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_predictor(ckpt=tmp_path / "none.ckpt")


def test_onnx_branch_reads_meta_and_runs_without_autocast(tmp_path, monkeypatch):
    import fusionseg.inference.loading as loading

    ckpt = _checkpoint(tmp_path, modalities=("rgb",))
    torch_model, meta, cfg = load_predictor(ckpt=ckpt)

    class FakeOnnx:  # the OnnxModel interface: .meta (JSON text allowed), __call__, .eval()
        def __init__(self, path):
            self.path = path
            self.modalities = ["rgb"]
            self.meta = {"fusionseg_config": json.dumps(cfg.model_dump(mode="json")),
                         "fusionseg_classes": CLASSES, "fusionseg_palette": PALETTE,
                         "fusionseg_specs": {"rgb": DELIVER_SPECS["rgb"].model_dump(mode="json")}}

        def eval(self):
            return self

        def __call__(self, batch):
            return torch_model(batch)

    monkeypatch.setattr(loading, "OnnxModel", FakeOnnx)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"stand-in")
    model, meta2, cfg2 = load_predictor(onnx=path)
    assert isinstance(model, FakeOnnx) and cfg2 == cfg
    assert meta2["fusionseg_specs"]["rgb"]["bit_depth"] == 8
    _png(tmp_path / "own" / "rgb" / "a.png", _rgb(np.random.default_rng(11), 32, 32))
    assert predict(None, tmp_path / "own", tmp_path / "out", onnx=path).written == ["a"]
    predict(ckpt, tmp_path / "own", tmp_path / "ref")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "masks" / "a.png")),
                          np.asarray(Image.open(tmp_path / "ref" / "masks" / "a.png")))


def test_fixed_size_model_always_slides_with_its_size():
    cfg = config_from_dict(_cfg_dict())
    s = inference_settings(cfg, (40, 48), fixed_size=(32, 32))
    assert (s["mode"], s["window"], s["stride"]) == ("slide", (32, 32), (21, 21))
    assert inference_settings(cfg, (16, 16), fixed_size=(32, 32))["mode"] == "slide"
    assert inference_settings(cfg, (32, 32), fixed_size=(32, 32))["mode"] == "whole"


def test_predict_with_a_real_fixed_size_onnx_export(tmp_path):
    pytest.importorskip("onnxruntime")
    from fusionseg.inference import export_onnx

    ckpt = _checkpoint(tmp_path, modalities=("rgb",))
    onnx = tmp_path / "m.onnx"
    export_onnx(ckpt, onnx, size=(32, 32), check=False, dynamic=False)
    _png(tmp_path / "own" / "rgb" / "a.png", _rgb(np.random.default_rng(12), 40, 48))
    assert predict(None, tmp_path / "own", tmp_path / "onnx_out", onnx=onnx).written == ["a"]
    # PyTorch with the same windows gives the same mask (up to rare near-ties)
    predict(ckpt, tmp_path / "own", tmp_path / "torch_out", max_pixels=1)
    a = np.asarray(Image.open(tmp_path / "onnx_out" / "masks" / "a.png"))
    b = np.asarray(Image.open(tmp_path / "torch_out" / "masks" / "a.png"))
    assert a.shape == (40, 48, 3) and np.all(a == b, axis=-1).mean() > 0.99
