"""train.precision: auto (issue 24 item 3): bf16-mixed where the hardware runs bf16 natively
(a CUDA GPU with bf16, a CPU with AMX or AVX-512 BF16), 32-true elsewhere; printed at the
start of a run, stored in the checkpoint (``fusionseg_precision``), followed by eval and
predict. The hardware is faked by monkeypatching ``runtime.cpu_flags`` /
``runtime.cuda_has_bf16`` (conftest pins auto to 32-true through FUSIONSEG_AUTO_PRECISION;
these tests unset it)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_run_cfg  # noqa: E402
from fixtures.deliver_tree import make_deliver_tree  # noqa: E402

from fusionseg import runtime  # noqa: E402
from fusionseg.errors import ConfigError  # noqa: E402

AVX2_EPYC = frozenset({"fpu", "sse2", "avx", "avx2", "fma"})
SAPPHIRE_RAPIDS = AVX2_EPYC | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
ZEN4 = AVX2_EPYC | {"avx512f", "avx512_bf16"}


@pytest.fixture
def hardware(monkeypatch):
    """``hardware(cpu=flags, cuda_bf16=bool)`` fakes the machine auto looks at."""
    monkeypatch.delenv(runtime.AUTO_ENV, raising=False)

    def fake(cpu=AVX2_EPYC, cuda_bf16=False):
        monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(cpu))
        monkeypatch.setattr(runtime, "cuda_has_bf16", lambda: cuda_bf16)

    fake()
    return fake


def test_auto_on_a_cpu_follows_its_flags(hardware):
    assert runtime.auto_precision("cpu") == ("32-true", "auto: this CPU has no AMX or AVX-512-BF16")
    for unset in (None, "auto"):
        assert runtime.resolve_precision(unset, "cpu") == "32-true"
    hardware(cpu=SAPPHIRE_RAPIDS)
    assert runtime.auto_precision("cpu") == (
        "bf16-mixed", "auto: this CPU runs bf16 natively (amx_bf16, avx512_bf16)")
    hardware(cpu=ZEN4)
    assert runtime.resolve_precision("auto", "cpu") == "bf16-mixed"
    assert runtime.cpu_has_native_bf16()
    # explicit names are kept whatever the hardware
    assert runtime.resolve_precision("32", "cpu") == "32-true"


def test_auto_on_cuda_follows_bf16_support(hardware, monkeypatch):
    assert runtime.resolve_precision(None, "cuda") == "32-true"  # e.g. a V100
    hardware(cuda_bf16=True)
    assert runtime.auto_precision("cuda") == ("bf16-mixed", "auto: this CUDA GPU supports bf16")
    assert runtime.resolve_precision("auto", "cpu") == "32-true"  # the CPU still has none
    # cuda_has_bf16 itself asks torch
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.cuda_has_bf16()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not runtime.cuda_has_bf16()


def test_cpu_flags_reads_proc_cpuinfo():
    if not Path("/proc/cpuinfo").is_file() or "flags" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("no x86 /proc/cpuinfo here")
    assert {"fpu"} <= runtime.cpu_flags()  # every x86-64 CPU has an FPU


def test_env_pins_auto(hardware, monkeypatch):
    monkeypatch.setenv(runtime.AUTO_ENV, "bf16-mixed")
    assert runtime.auto_precision("cpu") == ("bf16-mixed", f"auto: {runtime.AUTO_ENV}=bf16-mixed")
    monkeypatch.setenv(runtime.AUTO_ENV, "fp8")
    with pytest.raises(ConfigError, match=runtime.AUTO_ENV):
        runtime.resolve_precision("auto", "cpu")


def test_the_printed_line(hardware):
    assert runtime.describe_precision("auto", "cpu") == (
        "precision: 32-true (auto: this CPU has no AMX or AVX-512-BF16)")
    assert runtime.describe_precision("bf16-mixed", "cpu") == (
        "precision: bf16-mixed (train.precision)")


def test_inference_follows_the_checkpoint(hardware):
    ip = runtime.inference_precision
    # the config's explicit value wins (eval --set train.precision=..., predict --config)
    assert ip("32", "bf16-mixed", "cpu") == ("32-true", "train.precision")
    assert ip("16-mixed", None, "cpu")[0] == "bf16-mixed"  # a GPU recipe evaluated on a CPU
    # auto: the checkpoint's precision where this device runs it natively
    assert ip("auto", "32-true", "cpu") == ("32-true", "the checkpoint's training precision")
    assert ip(None, "bf16-mixed", "cpu") == (
        "32-true", "auto: this CPU has no AMX or AVX-512-BF16; the checkpoint was trained at "
                   "bf16-mixed")
    assert ip("auto", None, "cpu")[0] == "32-true"  # an old or released file
    hardware(cpu=SAPPHIRE_RAPIDS)
    assert ip("auto", "bf16-mixed", "cpu") == ("bf16-mixed", "the checkpoint's training precision")
    assert ip("auto", "16-mixed", "cpu")[0] == "bf16-mixed"
    assert ip("auto", "32-true", "cpu")[0] == "32-true"  # trained in fp32: evaluated in fp32


def test_two_step_run_prints_and_stores_the_resolved_precision(tmp_path, hardware, capsys):
    from fusionseg.engine.runner import evaluate, train
    from fusionseg.inference.prediction import model_precision as predict_precision
    from fusionseg.serialization import read_checkpoint

    root = tmp_path / "deliver"
    make_deliver_tree(root, conditions=("cloud",), per_split=2, size=32)
    cfg = tiny_run_cfg(tmp_path, root)
    assert cfg.train.precision == "auto"  # the default
    out = train(cfg, run_dir=tmp_path / "fp32")
    assert "precision: 32-true (auto: this CPU has no AMX or AVX-512-BF16)" in (
        capsys.readouterr().out.splitlines())
    ck = read_checkpoint(out["last_ckpt"])
    assert ck["fusionseg_precision"] == "32-true"
    assert ck["fusionseg_config"]["train"]["precision"] == "auto"  # as configured

    hardware(cpu=SAPPHIRE_RAPIDS)
    out = train(cfg, run_dir=tmp_path / "bf16")
    assert ("precision: bf16-mixed (auto: this CPU runs bf16 natively (amx_bf16, avx512_bf16))"
            in capsys.readouterr().out.splitlines())
    ckpt = out["last_ckpt"]
    meta = read_checkpoint(ckpt)
    assert meta["fusionseg_precision"] == "bf16-mixed"
    res = evaluate(cfg, ckpt, write_json=False)
    assert (res["precision"], res["precision_reason"]) == (
        "bf16-mixed", "the checkpoint's training precision")
    assert predict_precision(cfg, meta) == "bf16-mixed"
    # evaluated on a CPU without native bf16: fp32, and says why
    hardware()
    res = evaluate(cfg, ckpt, write_json=False)
    assert res["precision"] == "32-true" and "trained at bf16-mixed" in res["precision_reason"]
    assert predict_precision(cfg, meta) == "32-true"
    # an explicit train.precision overrides the checkpoint (eval --set train.precision=...)
    res = evaluate(cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"precision": "bf16-mixed"})}), ckpt, write_json=False)
    assert (res["precision"], res["precision_reason"]) == ("bf16-mixed", "train.precision")
