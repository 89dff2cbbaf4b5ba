"""ONNX export (fusionseg.inference.export): every registered method exports from a
training-style checkpoint and ONNX Runtime reproduces PyTorch, with the exporter docs/export.md
names for it; metadata round-trips; OnnxModel runs inside the inference modes; errors name the
modality; writes are atomic; no function is replaced process-wide.

Each model is exported once per module (``_export`` cache) at 32-64 px; the export is the
slow part (about 15 s per tiny model with the dynamo exporter, a few seconds with TorchScript).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model_cfg
from fixtures import toy_method  # noqa: F401,E402  (registers toy_aux: parametrising over MODELS must not depend on which test modules were collected first)

import fusionseg.inference.export as fx
from fusionseg.config import config_from_dict, load_config, model_spec
from fusionseg.data.modalities import get_spec
from fusionseg.errors import CheckpointError
from fusionseg.inference import ExportReport, OnnxExportError, OnnxModel, export_onnx
from fusionseg.models import MODELS, create_model, export_ops
from fusionseg.models.inference_modes import predict_logits

ROOT = Path(__file__).resolve().parents[2]
#: the built-in models (test modules collected before this one may register fixtures)
MODEL_NAMES = [n for n in MODELS.names() if MODELS.get(n).__module__.startswith("fusionseg.")]
#: the registry's tiny AsymFusion keeps the 256-channel RefineNet decoder (64 M parameters, a
#: 256 MB ONNX file); 16 channels test the same graph in a fraction of the export time
OVERRIDES = {"asymfusion": {"decoder_channels": 16}}
#: export sizes: 32 px, 64 px where a smaller map changes the traced branches (Hiera windows)
SIZES = {"mle_sam": 64, "mobanet": 42}
#: the exporter ``exporter="auto"`` ends with, and the model file whose branch on tensor
#: values stops ``torch.export`` (docs/export.md, "Which exporter")
EXPORTERS = {"segformer": ("dynamo", None), "sum_fusion": ("dynamo", None),
             "stitchfusion": ("torchscript", "stitchfusion/model.py"),
             "mle_sam": ("torchscript", "mle_sam/model.py"),
             "asymfusion": ("torchscript", "asymfusion/model.py"),
             "mobanet": ("torchscript", "mobanet/model.py")}


def _as_if_trained(model: torch.nn.Module) -> None:
    """Add noise to every parameter: zero-initialised layers (adapter up-projections, LoRA B,
    last layers) would otherwise hide their part of the graph from the comparisons."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _checkpoint(path: Path, model_cfg: dict, size: int, specs: bool = True,
                seed: int = 0) -> tuple[Path, torch.nn.Module, dict]:
    """Write a checkpoint as training does (``state_dict`` with ``model.`` keys and the
    ``fusionseg_*`` entries of ``SegmentationModule.on_save_checkpoint``)."""
    model_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in model_cfg.items()}
    cfg = config_from_dict({"name": "t", "model": model_cfg,
                            "data": {"crop_size": [size, size]}})
    torch.manual_seed(seed)
    model = create_model(model_spec(cfg, for_checkpoint=True))
    _as_if_trained(model)
    k = model.num_classes
    ck = {"state_dict": {f"model.{n}": v for n, v in model.state_dict().items()},
          "fusionseg_config": cfg.model_dump(mode="json"),
          "fusionseg_classes": [f"class{i}" for i in range(k)],
          "fusionseg_palette": [[(37 * i) % 256, (91 * i) % 256, (13 * i) % 256]
                                for i in range(k)]}
    if specs:
        ck["fusionseg_specs"] = {m: get_spec(m).model_dump(mode="json")
                                 for m in model.modalities}
    torch.save(ck, path)
    return path, model.eval(), ck


def _batch(model_or_names, channels: dict[str, int], b: int, h: int, w: int,
           seed: int = 5) -> dict:
    names = getattr(model_or_names, "modalities", model_or_names)
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, channels.get(m, 3), h, w, generator=g) for m in names}


_CACHE: dict[str, tuple] = {}


def _export(name: str, tmp_path_factory) -> tuple[ExportReport, torch.nn.Module, dict, int]:
    if name not in _CACHE:
        tmp = tmp_path_factory.mktemp(name)
        size = SIZES.get(name, 32)
        ckpt, model, ck = _checkpoint(tmp / "m.ckpt",
                                      tiny_model_cfg(name, **OVERRIDES.get(name, {})), size)
        report = export_onnx(ckpt, tmp / "m.onnx")
        _CACHE[name] = (report, model, ck, size)
    return _CACHE[name]


def _channels(ck: dict) -> dict[str, int]:
    return {m: get_spec(m).out_channels for m in ck["fusionseg_specs"]}


# --------------------------------------------------------------------------- every method
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_exports_and_onnxruntime_matches_pytorch(name, tmp_path_factory):
    report, model, ck, size = _export(name, tmp_path_factory)
    exporter, stopped_at = EXPORTERS[name]
    assert report.path.is_file() and report.exporter == exporter
    assert report.opset == fx.DEFAULT_OPSETS[exporter]
    if stopped_at is None:
        assert report.fallback is None
    else:  # why not dynamo: torch.export stops at a branch on tensor values, in the model
        assert report.fallback.startswith("dynamo, dynamic batch and size: "
                                          "GuardOnDataDependentSymNode: ")
        assert f" at models/methods/{stopped_at}:" in report.fallback
    assert report.size == (size, size) and report.modalities == model.modalities
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    assert report.dynamic_batch and report.seconds > 0
    assert report.dynamic_size == (not report.notes)  # a fallback always says why
    onnx_model = OnnxModel(report.path, threads=1)
    assert onnx_model.modalities == model.modalities
    assert onnx_model.num_classes == model.num_classes
    assert (onnx_model.input_size is None) == report.dynamic_size
    ch = _channels(ck)
    shapes = [(2, size, size)]
    if report.dynamic_size:  # another size, not a multiple of the model's input_multiple
        shapes.append((3, size + 7, size + model.input_multiple + 3))
    for b, h, w in shapes:
        batch = _batch(model, ch, b, h, w)
        with torch.no_grad():
            ref = model(batch)
        out = onnx_model(batch)
        assert out.dtype == torch.float32 and out.shape == (b, model.num_classes, h, w)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["stitchfusion", "sum_fusion"])
def test_stitchfusion_and_quickstart_method_parity_below_1e4(name, tmp_path_factory):
    """The tiny StitchFusion (pairwise MultiAdapters + FeatureCross: the block-diagonal and
    fused-kernel export-safe forms) and the quickstart method export with dynamic axes and
    reproduce PyTorch to < 1e-4 at the export size and a second size."""
    report, model, ck, size = _export(name, tmp_path_factory)
    assert report.dynamic_batch and report.dynamic_size
    assert report.max_abs_diff < 1e-4


def test_real_quickstart_model_at_64px(tmp_path):
    """configs/quickstart.yaml's model as configured (MiT-B0 at its real width, three
    modalities, 25 DELIVER classes): dynamic export, parity < 1e-4, and the same logits as
    PyTorch through sliding-window and flip inference."""
    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    raw = cfg.model_dump(mode="json")
    raw["model"]["num_classes"] = 25
    raw["data"]["crop_size"] = [64, 64]
    cfg = config_from_dict(raw)
    torch.manual_seed(0)
    model = create_model(model_spec(cfg, for_checkpoint=True)).eval()
    _as_if_trained(model)
    assert model.backbone.out_channels == [32, 64, 160, 256]  # the real MiT-B0 width
    ckpt = tmp_path / "q.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "fusionseg_config": cfg.model_dump(mode="json")}, ckpt)
    report = export_onnx(ckpt, tmp_path / "q.onnx")
    assert report.exporter == "dynamo" and report.fallback is None
    assert report.size == (64, 64) and report.dynamic_batch and report.dynamic_size
    assert report.max_abs_diff < 1e-4
    onnx_model = OnnxModel(report.path, threads=1)
    assert onnx_model.modalities == ["rgb", "depth", "thermal"]
    batch = _batch(model, {}, 1, 80, 96, seed=11)
    kw = {"mode": "slide", "window": (64, 64), "stride": (48, 48), "flip": True}
    ref = predict_logits(model, batch, **kw)
    out = predict_logits(onnx_model, batch, **kw)
    assert out.shape == (1, 25, 80, 96)
    assert float((out - ref).abs().max()) < 1e-4


# --------------------------------------------------------------------------- metadata
def test_metadata_round_trips(tmp_path_factory):
    report, model, ck, _ = _export("sum_fusion", tmp_path_factory)
    onnx_model = OnnxModel(report.path)
    for key in ("fusionseg_config", "fusionseg_classes", "fusionseg_palette",
                "fusionseg_specs"):
        assert onnx_model.meta[key] == ck[key], key
    assert onnx_model.meta["fusionseg_modalities"] == model.modalities
    exp = onnx_model.meta["fusionseg_export"]
    assert exp["dynamic_size"] == report.dynamic_size and exp["exporter"] == "dynamo"
    assert exp["fallback"] is None and exp["opset"] == 18 == report.opset
    assert exp["model_modalities"] == model.modalities
    # stored as JSON strings in the file's metadata_props
    props = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    assert json.loads(props["fusionseg_classes"]) == ck["fusionseg_classes"]
    graph = onnx.load(str(report.path)).graph
    assert [i.name for i in graph.input] == model.modalities
    assert [o.name for o in graph.output] == ["logits"]
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.output]]
    channels = [*(_channels(ck)[m] for m in model.modalities), model.num_classes]
    assert dims == [["batch", c, "height", "width"] for c in channels]


def test_old_checkpoint_without_specs_and_one_channel_input(tmp_path, tmp_path_factory):
    """No ``fusionseg_specs`` (older checkpoints): the key stays absent and the inputs take
    the default specs' channels (DSM: 1, MoBaNet's second stream); a 3-channel DSM is then a
    channel error, a 1-channel depth is repeated for a 3-channel input, as in PyTorch."""
    ckpt, model, ck = _checkpoint(tmp_path / "m.ckpt", tiny_model_cfg("sum_fusion"), 32,
                                  specs=False)
    report = export_onnx(ckpt, tmp_path / "m.onnx", check=False, dynamic=False)
    assert report.max_abs_diff is None and not report.dynamic_batch
    onnx_model = OnnxModel(report.path)
    assert "fusionseg_specs" not in onnx_model.meta
    assert onnx_model.meta["fusionseg_classes"] == ck["fusionseg_classes"]
    batch = _batch(model, {"depth": 1}, 1, 32, 32)
    with torch.no_grad():
        ref = model(batch)
    torch.testing.assert_close(onnx_model(batch), ref, atol=1e-4, rtol=1e-4)
    # MoBaNet's DSM spec has one channel: the ONNX input does too
    rep, mob, _, _ = _export("mobanet", tmp_path_factory)
    mob_onnx = OnnxModel(rep.path)
    assert mob_onnx.session.get_inputs()[1].shape[1] == 1
    bad = _batch(mob, {}, 1, *rep.size)
    with pytest.raises(ValueError, match=r"modality 'dsm' has 3 channels; the ONNX model "
                                         r"takes 1"):
        mob_onnx(bad)


# --------------------------------------------------------------------------- subsets, errors
def test_subset_export_equals_the_model_with_the_modality_absent(tmp_path):
    cfg = tiny_model_cfg("sum_fusion", modalities=["rgb", "depth", "thermal"])
    ckpt, model, ck = _checkpoint(tmp_path / "m.ckpt", cfg, 32)
    report = export_onnx(ckpt, tmp_path / "rgb_thermal.onnx", modalities=["thermal", "rgb"],
                         exporter="torchscript")  # the subset, not the exporter, is tested
    assert report.modalities == ["rgb", "thermal"]  # the model's order
    onnx_model = OnnxModel(report.path)
    assert onnx_model.modalities == ["rgb", "thermal"]
    batch = _batch(["rgb", "thermal"], _channels(ck), 2, 32, 32)
    with torch.no_grad():
        ref = model(batch)  # depth absent = missing (batch convention)
        full = model({**batch, "depth": torch.randn(2, 3, 32, 32)})
    assert float((ref - full).abs().max()) > 1e-3  # the absent modality matters
    torch.testing.assert_close(onnx_model(batch), ref, atol=1e-4, rtol=1e-4)
    # present flags in the full model's column order: the exported columns must be true
    flags = torch.tensor([[True, False, True], [True, False, True]])
    torch.testing.assert_close(onnx_model({**batch, "present": flags}), ref,
                               atol=1e-4, rtol=1e-4)
    flags[1, 2] = False
    with pytest.raises(ValueError, match=r"modality 'thermal' is flagged missing for "
                                         r"sample\(s\) \[1\]"):
        onnx_model({**batch, "present": flags})
    with pytest.raises(ValueError, match=r"modalities \['nir'\] are not the model's"):
        export_onnx(ckpt, tmp_path / "x.onnx", modalities=["rgb", "nir"])
    with pytest.raises(ValueError, match="duplicate modalities"):
        export_onnx(ckpt, tmp_path / "x.onnx", modalities=["rgb", "rgb"])


def test_onnx_model_errors_name_the_modality(tmp_path_factory):
    report, model, ck, size = _export("sum_fusion", tmp_path_factory)
    onnx_model = OnnxModel(report.path)
    batch = _batch(model, _channels(ck), 1, size, size)
    with pytest.raises(ValueError, match=r"modality 'depth' is missing from the batch"):
        onnx_model({"rgb": batch["rgb"]})
    with pytest.raises(ValueError, match=r"modality 'depth' has 2 channels; the ONNX model "
                                         r"takes 3"):
        onnx_model({**batch, "depth": torch.randn(1, 2, size, size)})
    with pytest.raises(ValueError, match=r"modality 'rgb': expected a float tensor"):
        onnx_model({**batch, "rgb": torch.zeros(1, 3, size, size, dtype=torch.uint8)})
    with pytest.raises(ValueError, match=r"'depth' has batch/size \(1, 16, 16\)"):
        onnx_model({**batch, "depth": torch.randn(1, 3, 16, 16)})
    assert onnx_model.eval() is onnx_model and onnx_model.to("cpu") is onnx_model


def test_fixed_size_export_runs_batches_and_sliding_windows(tmp_path):
    """``dynamic=False``: batch 1 at the export size; OnnxModel runs a batch sample by sample,
    refuses another size with a hint, and sliding-window inference with the export size as
    window reproduces PyTorch."""
    ckpt, model, ck = _checkpoint(tmp_path / "m.ckpt", tiny_model_cfg("sum_fusion"), 32)
    report = export_onnx(ckpt, tmp_path / "m.onnx", size=(32, 40), dynamic=False)
    assert not report.dynamic_batch and not report.dynamic_size and report.notes == []
    onnx_model = OnnxModel(report.path)
    assert onnx_model.input_size == (32, 40) and onnx_model.fixed_batch == 1
    batch = _batch(model, _channels(ck), 3, 32, 40)
    with torch.no_grad():
        ref = model(batch)
    torch.testing.assert_close(onnx_model(batch), ref, atol=1e-4, rtol=1e-4)
    big = _batch(model, _channels(ck), 1, 50, 70)
    with pytest.raises(ValueError, match=r"fixed size 32x40, got 50x70.*eval.window=\[32, "
                                         r"40\]"):
        onnx_model(big)
    kw = {"mode": "slide", "window": (32, 40), "stride": (20, 24)}
    torch.testing.assert_close(predict_logits(onnx_model, big, **kw),
                               predict_logits(model, big, **kw), atol=1e-4, rtol=1e-4)


def test_export_errors_and_atomic_write(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        export_onnx(tmp_path / "none.ckpt", tmp_path / "x.onnx")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="holds no fusionseg config"):
        export_onnx(tmp_path / "plain.ckpt", tmp_path / "x.onnx")
    ckpt, _, _ = _checkpoint(tmp_path / "m.ckpt", tiny_model_cfg("segformer"), 32)
    with pytest.raises(ValueError, match=r"opset 9 not supported; use 14\.\.20"):
        export_onnx(ckpt, tmp_path / "x.onnx", opset=9)
    with pytest.raises(ValueError, match=r"unknown exporter 'jit'; use auto, dynamo, "
                                         r"torchscript"):
        export_onnx(ckpt, tmp_path / "x.onnx", exporter="jit")
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"earlier export")
    # ONNX Runtime disagreeing with PyTorch: an error, and the earlier file stays
    monkeypatch.setattr(fx, "_compare", lambda *a: (1.0, 1e-3))
    with pytest.raises(OnnxExportError, match=r"nothing written: torchscript, fixed batch and "
                       r"size: OnnxExportError: ONNX Runtime differs from PyTorch by 1 "
                       r"\(> 0\.001\) at batch 1, 32x32$"):
        export_onnx(ckpt, out, dynamic=False, exporter="torchscript")
    assert out.read_bytes() == b"earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.onnx", "m.ckpt", "plain.ckpt"]
    # every try of both exporters failing: one error that lists the tries, last one first
    def refuse(exporter, *args):
        raise RuntimeError(f"no {exporter} translation for aten::foo")

    monkeypatch.setattr(fx, "_export_bytes", refuse)
    tries = [f"{e}, {axes}: RuntimeError: no {e} translation for aten::foo"
             for e in ("dynamo", "torchscript")
             for axes in ("dynamic batch and size", "dynamic batch, fixed size",
                          "fixed batch and size")]
    with pytest.raises(OnnxExportError) as info:
        export_onnx(ckpt, out)
    assert str(info.value) == (f"{ckpt}: ONNX export failed, nothing written: {tries[-1]}"
                               + "".join(f"; before: {t}" for t in tries[:-1]))
    assert out.read_bytes() == b"earlier export"


def test_failed_dynamic_check_falls_back_to_static_and_says_why(tmp_path, monkeypatch):
    """A dynamic export whose second-size check fails is replaced by a fixed-size one of the
    same exporter (the dynamo exporter, for SegFormer)."""
    ckpt, model, ck = _checkpoint(tmp_path / "m.ckpt", tiny_model_cfg("segformer"), 32)
    real = fx._compare

    def compare(sess, refs, b, h, w):
        diff, tol = real(sess, refs, b, h, w)
        return (1.0 if (h, w) != (32, 32) else diff), tol

    monkeypatch.setattr(fx, "_compare", compare)
    report = export_onnx(ckpt, tmp_path / "m.onnx")
    assert report.exporter == "dynamo" and report.fallback is None
    assert report.dynamic_batch and not report.dynamic_size
    assert report.notes == ["dynamo, dynamic batch and size: OnnxExportError: ONNX Runtime "
                            "differs from PyTorch by 1 (> 0.001) at batch 1, 37x39"]
    onnx_model = OnnxModel(report.path)
    assert onnx_model.input_size == (32, 32) and onnx_model.fixed_batch is None
    assert onnx_model.meta["fusionseg_export"]["notes"] == report.notes


# --------------------------------------------------------------------------- export-safe ops
def test_export_safe_ops_are_the_torch_ops_and_equal_them_while_tracing(monkeypatch):
    """Eager: the PyTorch operation itself. While the TorchScript exporter traces (simulated):
    the export-safe forms, equal to PyTorch (block_diag bit-identical, a hand-written
    example; pooling up to float rounding)."""
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(2, 3, generator=g), torch.randn(4, generator=g),
              torch.randn(3, 1, generator=g), torch.tensor(2.5)]
    x = torch.randn(2, 3, 11, 7, generator=g)
    sizes = [(3, 2), (6, 4), 5, (None, 3), (4, None), 1, (11, 7)]
    assert not export_ops.onnx_tracing()
    assert torch.equal(export_ops.block_diag(*blocks), torch.block_diag(*blocks))
    for size in sizes:
        assert torch.equal(export_ops.adaptive_avg_pool2d(x, size),
                           F.adaptive_avg_pool2d(x, size))
    monkeypatch.setattr(export_ops, "onnx_tracing", lambda: True)
    assert torch.equal(export_ops.block_diag(torch.tensor([[1.0, 2.0]]), torch.tensor(3.0)),
                       torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]))
    assert torch.equal(export_ops.block_diag(*blocks), torch.block_diag(*blocks))
    for size in sizes:
        torch.testing.assert_close(export_ops.adaptive_avg_pool2d(x, size),
                                   F.adaptive_avg_pool2d(x, size), atol=1e-6, rtol=1e-6)
    # 11 -> 3 cells: PyTorch's bins [0, 4), [3, 8), [7, 11) (they overlap)
    ramp = torch.arange(11.0).view(1, 1, 11, 1)
    torch.testing.assert_close(export_ops.adaptive_avg_pool2d(ramp, (3, 1)).flatten(),
                               torch.tensor([1.5, 5.0, 8.5]))
    pool = export_ops.AdaptiveAvgPool2d((3, 5))
    assert repr(pool) == repr(torch.nn.AdaptiveAvgPool2d((3, 5)))
    torch.testing.assert_close(pool(x), F.adaptive_avg_pool2d(x, (3, 5)), atol=1e-6, rtol=1e-6)


def test_torchscript_export_replaces_no_function_process_wide(tmp_path, monkeypatch):
    """During a TorchScript export of StitchFusion (block_diag, computed depthwise kernel) the
    model runs with the export-safe forms switched on, while ``torch.block_diag``,
    ``F.conv2d``, ``F.interpolate`` and ``F.adaptive_avg_pool2d`` stay PyTorch's own."""
    originals = (torch.block_diag, F.conv2d, F.interpolate, F.adaptive_avg_pool2d)
    seen = []
    real_load = fx.load_checkpoint_model

    def load(path):
        loaded = real_load(path)
        loaded.model.register_forward_pre_hook(lambda *_: seen.append(
            (export_ops.onnx_tracing(),
             (torch.block_diag, F.conv2d, F.interpolate, F.adaptive_avg_pool2d))))
        return loaded

    monkeypatch.setattr(fx, "load_checkpoint_model", load)
    ckpt, model, ck = _checkpoint(tmp_path / "m.ckpt", tiny_model_cfg("stitchfusion"), 32)
    report = export_onnx(ckpt, tmp_path / "m.onnx", exporter="torchscript", dynamic=False)
    assert report.exporter == "torchscript" and report.max_abs_diff < 1e-4
    assert any(tracing for tracing, _ in seen)  # the trace ran with the export-safe forms
    assert all(ops == originals for _, ops in seen)
