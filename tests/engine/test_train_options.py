"""train.compile and train.channels_last: same parameters and checkpoint keys as a plain run."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_run_cfg  # noqa: E402
from fixtures.deliver_tree import make_deliver_tree  # noqa: E402

from fusionseg.engine.runner import build_model, prepare_for_training, train  # noqa: E402

_cfg = tiny_run_cfg


def test_prepare_for_training_keeps_keys_and_outputs(tmp_path):
    cfg = _cfg(tmp_path, tmp_path, compile={"backend": "eager"}, channels_last=True)
    torch.manual_seed(0)
    plain = build_model(cfg, 25).eval()
    torch.manual_seed(0)
    model = prepare_for_training(build_model(cfg, 25), cfg).eval()
    assert list(model.state_dict()) == list(plain.state_dict())
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    batch = {"rgb": torch.randn(2, 3, 32, 32), "depth": torch.randn(2, 3, 32, 32)}
    with torch.no_grad():
        torch.testing.assert_close(model(batch), plain(batch), atol=1e-5, rtol=1e-4)


def test_training_with_compile_and_channels_last_matches_plain(tmp_path):
    root = tmp_path / "deliver"
    make_deliver_tree(root, conditions=("cloud",), per_split=2, size=32)
    runs = {}
    for name, opts in (("plain", {}),
                       ("opts", {"compile": {"backend": "eager"}, "channels_last": True})):
        res = train(_cfg(tmp_path, root, **opts), run_dir=tmp_path / name)
        runs[name] = torch.load(res["last_ckpt"], weights_only=False)["state_dict"]
    assert list(runs["opts"]) == list(runs["plain"])
    for key, value in runs["plain"].items():
        torch.testing.assert_close(runs["opts"][key], value, atol=1e-4, rtol=1e-3, msg=key)


def test_adamw_is_fused_for_cpu_float_parameters_only():
    from fusionseg.engine.module import supports_fused_adamw

    lin = torch.nn.Linear(3, 2)
    assert supports_fused_adamw([{"params": list(lin.parameters())}])
    assert not supports_fused_adamw([{"params": []}])
    ints = torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)
    assert not supports_fused_adamw([{"params": [lin.weight, ints]}])
    meta = torch.nn.Linear(3, 2, device="meta")
    assert not supports_fused_adamw([{"params": list(meta.parameters())}])


def test_fused_adamw_step_matches_the_default_one():
    torch.manual_seed(0)
    ref = torch.nn.Linear(8, 4)
    fused = torch.nn.Linear(8, 4)
    fused.load_state_dict(ref.state_dict())
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, fused=f) for m, f in ((ref, None), (fused, True))]
    x = torch.randn(5, 8)
    for _ in range(3):
        for m, o in zip((ref, fused), opts, strict=True):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for a, b in zip(ref.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_ddp_finds_unused_parameters_when_a_modality_can_be_absent_from_a_batch(tmp_path):
    from fusionseg.engine.runner import may_skip_modality_parameters, resolve_strategy

    def cfg(opts=None, data=None):
        c = _cfg(tmp_path, tmp_path, **(opts or {}))
        return c.model_copy(update={"data": c.data.model_copy(update=data or {})})

    assert not may_skip_modality_parameters(cfg())
    assert resolve_strategy(cfg({"strategy": "ddp"})) == "ddp"
    assert resolve_strategy(cfg({"strategy": "auto", "devices": 2})) == "auto"
    unused = "ddp_find_unused_parameters_true"
    for data, opts in (({"missing_modalities": ["depth"]}, {}),
                        ({"modality_dropout": 0.3}, {}),
                        ({}, {"robust": True})):
        assert may_skip_modality_parameters(cfg(opts, data))
        assert resolve_strategy(cfg({"strategy": "ddp", **opts}, data)) == unused
        assert resolve_strategy(cfg({"devices": 2, **opts}, data)) == unused
        assert resolve_strategy(cfg({"num_nodes": 2, **opts}, data)) == unused
        # one process, or a strategy the user chose: unchanged
        assert resolve_strategy(cfg(opts, data)) == "auto"
        assert resolve_strategy(cfg({"strategy": "deepspeed", **opts}, data)) == "deepspeed"
