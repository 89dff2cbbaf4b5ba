"""Missing-modality protocols without re-encoding (issue 24, item 2).

Methods with independent streams (sum fusion, MLE-SAM) encode each modality once per batch and
fuse + decode those features for every EMM / RMM scenario. The logits must be the ones of the
per-subset forward pass bit for bit (``torch.equal``), for every subset, and the evaluator
must run the encoder on ``N`` modality batches instead of ``N * 2^(N-1)``. Where a batched
encoder's bits depend on the batch composition (odd token counts on CPU), the evaluator falls
back to the per-scenario forward pass.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import tiny_model_cfg

from fusionseg.data.sample import drop_modalities
from fusionseg.engine.robustness import (
    ScenarioEvaluator,
    modality_subsets,
    protocol_scenarios,
    stream_reuse,
)
from fusionseg.models import create_model
from fusionseg.models.segmentor import logits_of

MODS = ["rgb", "depth", "thermal"]
SUBSETS = modality_subsets(MODS)  # 7 non-empty subsets


def _model(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(tiny_model_cfg(name, modalities=MODS, num_classes=4, **overrides))
    with torch.no_grad():  # random gates / routers: zero-initialised parts would hide bugs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _batch(b: int = 3, size: tuple[int, int] = (64, 64), present: bool = False) -> dict:
    g = torch.Generator().manual_seed(1)
    batch = {m: torch.randn(b, 3, *size, generator=g) for m in MODS}
    batch["label"] = torch.randint(0, 4, (b, *size), generator=g)
    batch["meta"] = [{"id": f"s{j}", "condition": "day" if j % 2 else "night"}
                     for j in range(b)]
    if present:  # sample 1 lacks depth, sample 2 lacks rgb
        batch["present"] = torch.ones(b, len(MODS), dtype=torch.bool)
        batch["present"][1, 1] = False
        batch["present"][2, 0] = False
    return batch


CASES = [
    ("sum_fusion", {"reduce": "mean", "batch_modalities": True}),
    ("sum_fusion", {"reduce": "mean", "batch_modalities": False}),
    ("sum_fusion", {"reduce": "sum", "batch_modalities": True}),
    ("sum_fusion", {"reduce": "gate", "batch_modalities": True}),
    ("sum_fusion", {"reduce": "gate", "batch_modalities": False}),
    ("mle_sam", {}),
]


@pytest.mark.parametrize(("name", "options"), CASES)
@pytest.mark.parametrize("present", [False, True])
@torch.no_grad()
def test_reused_streams_give_the_per_subset_logits_bit_for_bit(name, options, present):
    model = _model(name, **options)
    assert model.independent_streams
    batch = _batch(present=present)
    streams = model.encode_streams(batch)
    assert sorted(streams) == sorted(MODS)
    for subset in SUBSETS:
        sub = drop_modalities(batch, subset, modalities=MODS)
        if present and not bool(sub["present"].any(1).all()):
            continue  # a sample with no modality left: an error either way
        expected = logits_of(model(sub))
        got = model.forward_from_streams(sub, streams)
        assert got.shape == (3, 4, 64, 64)
        assert torch.equal(got, expected), subset


@pytest.mark.parametrize(("name", "options"), [CASES[0], CASES[3], CASES[5]])
@torch.no_grad()
def test_every_scenario_of_emm_and_rmm_matches_the_plain_evaluation(name, options):
    model = _model(name, **options)
    scenarios = protocol_scenarios(MODS, ["emm", "rmm", "nm"])

    def predict(sub):
        return logits_of(model(sub)).float()

    plain = ScenarioEvaluator(MODS, scenarios, num_classes=4)
    reused = ScenarioEvaluator(MODS, scenarios, num_classes=4)
    for k in range(2):
        batch = _batch(b=2 + k)  # two shapes, each checked once
        batch["meta"] = [{"id": f"b{k}s{j}"} for j in range(2 + k)]
        plain.update(batch, predict)
        reused.update(batch, predict, reuse=stream_reuse(model))
    assert list(reused.reuse_checked.values()) == [True, True]
    assert plain.cms.keys() == reused.cms.keys()
    for key in plain.cms:
        assert torch.equal(plain.cms[key].compute(), reused.cms[key].compute()), key


@torch.no_grad()
def test_shapes_where_the_encoder_batch_changes_the_bits_fall_back():
    # 40 x 56 px: 10 x 14 tokens per image at stage 1, so the matmul blocks straddle images
    # and a stream's maps differ in the last bits with the batch it is encoded in
    model = _model("sum_fusion")
    batch = _batch(size=(40, 56))
    streams = model.encode_streams(batch)
    alone = model.encode_streams(drop_modalities(batch, ["rgb"]))
    assert not all(torch.equal(a, b) for a, b in zip(alone["rgb"], streams["rgb"], strict=True))
    scenarios = protocol_scenarios(MODS, ["emm"])
    plain = ScenarioEvaluator(MODS, scenarios, num_classes=4)
    reused = ScenarioEvaluator(MODS, scenarios, num_classes=4)
    plain.update(batch, lambda sub: logits_of(model(sub)).float())
    with pytest.warns(UserWarning, match="depend on the other modalities"):
        reused.update(batch, lambda sub: logits_of(model(sub)).float(),
                      reuse=stream_reuse(model))
    assert list(reused.reuse_checked.values()) == [False]
    for key in plain.cms:
        assert torch.equal(plain.cms[key].compute(), reused.cms[key].compute()), key


def _encoded_images(model, evaluator, batch, reuse) -> int:
    """Images the encoder ran on during one ``evaluator.update``."""
    seen = []
    hook = model.backbone.register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[0]))
    try:
        evaluator.update(batch, lambda sub: logits_of(model(sub)).float(), reuse=reuse)
    finally:
        hook.remove()
    return sum(seen)


@torch.no_grad()
def test_emm_encodes_each_modality_once_per_batch():
    model = _model("sum_fusion")
    batch = _batch(b=2)
    emm = protocol_scenarios(MODS, ["emm"])
    # N * 2^(N-1) = 12 modality batches of 2 images today
    assert _encoded_images(model, ScenarioEvaluator(MODS, emm, 4), batch, None) == 12 * 2
    reuse = stream_reuse(model)
    ev = ScenarioEvaluator(MODS, emm, 4)
    # first batch of a shape: N = 3, plus the check (3 alone, then rgb+depth: 5)
    assert _encoded_images(model, ev, batch, reuse) == (3 + 5) * 2
    assert _encoded_images(model, ev, batch, reuse) == 3 * 2  # then N = 3 per batch
    # RMM: the clean modalities are reused, each failed one is encoded for its scenario:
    # sum over the 6 subsets with k >= 1 failed of k = 3 * 1 + 3 * 2 = 9, per ratio
    rmm = protocol_scenarios(MODS, ["rmm"])
    ev = ScenarioEvaluator(MODS, rmm, 4)
    ev.reuse_checked = dict.fromkeys(ev.reuse_checked, True)
    _encoded_images(model, ev, batch, reuse)
    assert _encoded_images(model, ev, batch, reuse) == (3 + 3 * 9) * 2


def test_no_reuse_for_coupled_streams_or_other_inference_modes():
    assert stream_reuse(create_model(tiny_model_cfg("stitchfusion"))) is None
    model = _model("sum_fusion")
    assert stream_reuse(model, {"mode": "whole", "scales": [1.0], "flip": False}) is not None
    assert stream_reuse(model, {"mode": "slide", "scales": [1.0], "flip": False}) is None
    assert stream_reuse(model, {"mode": "whole", "scales": [0.5, 1.0], "flip": False}) is None
    assert stream_reuse(model, {"mode": "whole", "scales": [1.0], "flip": True}) is None


@pytest.mark.parametrize("name", ["stitchfusion", "mobanet", "asymfusion"])
def test_methods_with_exchanging_streams_do_not_declare_independence(name):
    from fusionseg.models import MODELS

    if name not in [e.name for e in MODELS.entries()]:
        pytest.skip(f"{name} not registered")
    assert not create_model(tiny_model_cfg(name)).independent_streams


def test_subsets_cover_every_non_empty_combination():
    assert len(SUBSETS) == 2 ** len(MODS) - 1
    assert set(SUBSETS) == {c for r in (1, 2, 3) for c in itertools.combinations(MODS, r)}


@torch.no_grad()
def test_a_plain_evaluation_runs_the_forward_pass():
    model = _model("sum_fusion")
    batch = _batch(b=2)
    ev = ScenarioEvaluator(MODS, [protocol_scenarios(MODS, ["emm"])[0]], 4)
    assert _encoded_images(model, ev, batch, stream_reuse(model)) == 3 * 2
    assert ev.reuse_checked == {}
