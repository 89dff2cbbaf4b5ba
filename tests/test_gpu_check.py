"""benchmarks/gpu_check.py --tiny --device cpu, in-process: the GPU readiness check must keep
running (issue 24 item 4), so every registered method's train / EMM / predict / ONNX path is
exercised here the way the GPU run exercises it."""

import importlib.util
from pathlib import Path

from fixtures import toy_method  # noqa: F401,E402  (registers toy_aux: parametrising over MODELS must not depend on which test modules were collected first)

from fusionseg.models import MODELS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_passes_every_check(capsys):
    gpu_check = _load()
    # torchscript: the dynamo exporter's tracing alone takes ~10 s a model on 2 CPU cores
    rc = gpu_check.main(["--tiny", "--device", "cpu", "--exporter", "torchscript"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0, "\n".join(lines)
    names = [n for n in MODELS.names() if MODELS.get(n).__module__.startswith("fusionseg.")]
    checks = {ln.split()[0]: ln.split()[1] for ln in lines[1:-1]}
    for n in names:
        for check in ("train_bf16", "emm_batch", "predict", "onnx_export"):
            assert checks.get(f"{n}/{check}") == "ok", (n, check, lines)
    assert checks["stitchfusion_b2_4mod_1024"] == "skip"
    assert lines[-1].startswith("all checks passed")
    # stitchfusion's tiny model has 3 modalities: 2^3 - 1 EMM subsets
    emm = next(ln for ln in lines if ln.startswith("stitchfusion/emm_batch"))
    assert emm.split(" s  ", 1)[1].startswith("7 modality subset(s)"), emm


def test_a_failing_check_is_reported_not_raised(capsys):
    gpu_check = _load()
    assert not gpu_check.run_check("x/boom", lambda: 1 / 0)
    out = capsys.readouterr().out
    assert out.split()[:2] == ["x/boom", "FAIL"] and "ZeroDivisionError" in out


def test_cuda_missing_exits_2(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _load().main(["--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().out
