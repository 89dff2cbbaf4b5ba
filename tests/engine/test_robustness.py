"""Sensor-failure protocols (EMM / RMM / NM) and the robust training recipe."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY_MIT as TINY  # noqa: E402
from fixtures import toy_method  # noqa: F401,E402  (registers toy_aux: parametrising over MODELS must not depend on which test modules were collected first)
from fixtures.deliver_tree import make_deliver_tree  # noqa: E402

from fusionseg.cli import app  # noqa: E402
from fusionseg.config import ConfigError, config_from_dict  # noqa: E402
from fusionseg.engine.metrics import confusion_metric, metrics_from_confusion  # noqa: E402
from fusionseg.engine.robust_training import RobustTraining, consistency_kl  # noqa: E402
from fusionseg.engine.robustness import (  # noqa: E402
    Scenario,
    ScenarioEvaluator,
    bernoulli_expectation,
    drop_random_pixels,
    protocol_results,
    protocol_scenarios,
    salt_and_pepper,
)
from fusionseg.engine.runner import parse_protocols  # noqa: E402

MODS = ["rgb", "depth", "thermal"]


# ----------------------------------------------------------------------------- protocols
def test_protocol_scenarios_cover_every_subset():
    sc = protocol_scenarios(MODS, ["emm", "rmm", "nm"])
    emm = [s for s in sc if s.key.startswith("emm/")]
    rmm = [s for s in sc if s.key.startswith("rmm/")]
    nm = [s for s in sc if s.key.startswith("nm/")]
    assert len(emm) == 7 and len(rmm) == 21 and len(nm) == 6
    assert emm[0].present == tuple(MODS) and emm[0].compute_key == "clean"
    assert {s.present for s in emm} == {s.present for s in rmm}
    # the full set of every RMM ratio feeds clean inputs: computed once with the EMM one
    assert sum(s.compute_key == "clean" for s in sc) == 4
    assert parse_protocols("all") == ["emm", "rmm", "nm", "mam"]
    assert parse_protocols("nm,emm") == ["emm", "nm"]
    with pytest.raises(ValueError, match="unknown --protocol"):
        parse_protocols("emm,foo")


def test_bernoulli_expectation_weights_and_normalisation():
    # N = 2 modalities: subsets missing (), (a,), (b,); all-missing is never evaluated
    values = {(): 60.0, ("a",): 30.0, ("b",): 10.0}
    p = 0.2
    w0, w1 = 0.8 ** 2, 0.2 * 0.8
    expected = (w0 * 60 + w1 * 30 + w1 * 10) / (w0 + 2 * w1)
    assert bernoulli_expectation(values, 2, p) == pytest.approx(expected)
    # a subset without a value drops out of the normalisation
    assert bernoulli_expectation({(): 60.0, ("a",): None}, 2, p) == pytest.approx(60.0)
    assert bernoulli_expectation({(): None}, 2, p) is None


def test_corruptions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 100, 100)
    y = drop_random_pixels(x, 0.5, g)
    zero = (y == 0).all(0)
    assert 0.45 < zero.float().mean() < 0.55
    assert torch.equal(y[:, ~zero], x[:, ~zero])  # every channel of a pixel goes together
    z = salt_and_pepper(x, 0.1, g)
    changed = z != x
    n = math.ceil(0.1 * x.numel() / 2)
    assert 0.8 * 2 * n < changed.sum() <= 2 * n
    assert set(z[changed].unique().tolist()) <= {x.max().item(), x.min().item()}


def test_scenario_draws_depend_on_sample_id_not_batch():
    g = torch.Generator().manual_seed(1)
    batch = {m: torch.randn(2, 3, 16, 16, generator=g) for m in MODS}
    s = Scenario("rmm/0.5/rgb", ("rgb",), ("depth", "thermal"), ratio=0.5)
    both = s.apply(batch, MODS, ["a", "b"], seed=3)
    second = s.apply({m: batch[m][1:] for m in MODS}, MODS, ["b"], seed=3)
    for m in MODS:
        torch.testing.assert_close(both[m][1:], second[m], rtol=0, atol=0)
    assert torch.equal(both["rgb"], batch["rgb"])  # intact modality untouched
    assert not torch.equal(both["depth"], batch["depth"])
    again = s.apply(batch, MODS, ["a", "b"], seed=4)
    assert not torch.equal(again["depth"], both["depth"])  # the seed matters
    emm = Scenario("emm/rgb", ("rgb",), ("depth", "thermal")).apply(batch, MODS, ["a", "b"])
    assert set(emm) == {"rgb"}  # removed = absent key


class PresentCount(nn.Module):
    """Predicts class = number of present modalities - 1 (so each subset has a known score)."""

    def forward(self, batch):
        n = sum(m in batch for m in MODS)
        x = next(batch[m] for m in MODS if m in batch)
        out = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        out[:, n - 1] = 1
        return out


def test_emm_results_match_manual_metrics():
    label = torch.zeros(2, 8, 8, dtype=torch.long)
    label[:, :4] = 2  # half the pixels are class 2 (three modalities), half class 0 (one)
    batch = {m: torch.randn(2, 3, 8, 8) for m in MODS}
    batch["label"] = label
    batch["meta"] = [{"id": "a", "condition": "fog"}, {"id": "b", "condition": "sun"}]
    sc = protocol_scenarios(MODS, ["emm"])
    ev = ScenarioEvaluator(MODS, sc, num_classes=3)
    ev.update(batch, PresentCount())
    res = protocol_results(ev, "emm", {"modalities": MODS})
    by = {tuple(e["present"]): e for e in res["subsets"]}
    assert [tuple(e["present"]) for e in res["subsets"]][0] == tuple(MODS)
    for subset, entry in by.items():
        cm = confusion_metric(3)
        cm.update(torch.full_like(label, len(subset) - 1), label)
        assert entry["mIoU"] == pytest.approx(metrics_from_confusion(cm.compute())["mIoU"],
                                              abs=1e-4)
        assert set(entry["per_condition"]) == {"fog", "sun"}
    vals = [e["mIoU"] for e in res["subsets"]]
    assert res["mean"] == pytest.approx(sum(vals) / 7, abs=1e-4)
    e01 = bernoulli_expectation({tuple(e["missing"]): e["mIoU"] for e in res["subsets"]}, 3,
                                0.1)
    assert res["expectation"]["0.1"] == pytest.approx(e01, abs=1e-4)


# ----------------------------------------------------------------------------- robust recipe
def test_robust_paired_batch_never_drops_all_and_masks_kept_only():
    torch.manual_seed(0)
    rt = RobustTraining(MODS, modality_dropout=0.9, rect_prob=1.0)
    batch = {m: torch.ones(32, 1 if m != "rgb" else 3, 16, 16) for m in MODS}
    batch["label"] = torch.zeros(32, 16, 16, dtype=torch.long)
    batch["meta"] = [{"id": str(i)} for i in range(32)]
    paired, changed = rt.paired_batch(batch)
    assert paired["rgb"].shape[0] == 64 and len(paired["meta"]) == 64
    present = paired["present"]
    assert present[:32].all() and present[32:].any(1).all() and (~present[32:]).any()
    assert changed.all()  # rect_prob = 1: every sample changed
    for j, m in enumerate(MODS):
        second = paired[m][32:]
        assert torch.equal(paired[m][:32], batch[m])  # first half untouched
        assert (second[~present[32:, j]] == 0).all()  # dropped = zeros
    # every sample has a rectangle of zeros in exactly one kept modality
    for i in range(32):
        holes = [m for j, m in enumerate(MODS) if present[32 + i, j] and (paired[m][32 + i] == 0).any()]
        assert len(holes) == 1
    assert torch.equal(batch["rgb"], torch.ones(32, 3, 16, 16))  # input not modified


def test_robust_dropout_per_modality_and_errors():
    torch.manual_seed(0)
    rt = RobustTraining(MODS, modality_dropout={"thermal": 1.0}, rect_prob=0.0)
    batch = {m: torch.ones(8, 3, 4, 4) for m in MODS}
    out, changed = rt.corrupt(batch)
    assert out["present"][:, :2].all() and not out["present"][:, 2].any() and changed.all()
    with pytest.raises(ValueError, match="lidar"):
        RobustTraining(MODS, modality_dropout={"lidar": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        RobustTraining(MODS, modality_dropout=1.5)


def test_consistency_kl_teacher_is_stop_gradient():
    torch.manual_seed(0)
    t = torch.randn(2, 4, 3, 3, requires_grad=True)
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    valid = torch.ones(2, 3, 3, dtype=torch.bool)
    kl = consistency_kl(s, t, valid, temperature=2.0)
    kl.backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    pt = torch.softmax(t.detach() / 2, 1)
    manual = (pt * (pt.log() - torch.log_softmax(s.detach() / 2, 1))).sum(1).mean() * 4
    assert kl.item() == pytest.approx(manual.item(), rel=1e-5)
    assert consistency_kl(t, t, valid).item() == pytest.approx(0.0, abs=1e-6)
    assert consistency_kl(s, t, torch.zeros_like(valid)).item() == 0.0


def test_corrupted_half_weight_splits_main_and_auxiliary_losses():
    from fusionseg.engine.losses import SegmentationCriterion
    from fusionseg.models import AuxiliaryLogits, SegmentationOutput

    torch.manual_seed(0)
    crit = SegmentationCriterion("ce")
    z, a = torch.randn(4, 3, 6, 6), torch.randn(4, 3, 3, 3)
    y = torch.randint(0, 3, (4, 6, 6))
    target = y.clone()
    target[1] = 255
    out = SegmentationOutput(z, aux={"aux": AuxiliaryLogits(a, 0.4, target=target)},
                             losses={"extra": torch.tensor(0.7)})
    same, _ = RobustTraining(MODS).halves_loss(crit, out, y)
    assert same.item() == pytest.approx(crit(out, y)[0].item())
    total, terms = RobustTraining(MODS, corrupt_weight=0.5).halves_loss(crit, out, y)

    def half(sl):
        return crit(SegmentationOutput(z[sl], aux={"aux": AuxiliaryLogits(a[sl], 0.4,
                                                                          target=target[sl])}),
                    y[sl])[0]

    manual = (half(slice(0, 2)) + 0.5 * half(slice(2, 4))) / 1.5 + 0.7
    assert total.item() == pytest.approx(manual.item(), rel=1e-6)
    assert set(terms) == {"main", "aux", "extra"}


def test_robust_config_switch():
    base = {"model": {"modalities": ["rgb", "depth"]}}
    on = config_from_dict({**base, "train": {"robust": True}})
    assert on.train.robust.enabled and on.train.robust.modality_dropout == 0.25
    assert not config_from_dict(base).train.robust.enabled
    custom = config_from_dict({**base, "train": {"robust": {"rect_prob": 0.0}}})
    assert custom.train.robust.enabled and custom.train.robust.rect_prob == 0.0
    with pytest.raises(ConfigError, match="robust"):
        config_from_dict({**base, "train": {"robust": {"dropout": 0.5}}})


# ----------------------------------------------------------------------------- end to end
def _config(tmp: Path, root: Path) -> Path:
    cfg = {
        "name": "tiny_robust",
        "model": {"name": "sum_fusion", "backbone": "mit_b0", "modalities": MODS,
                  "decoder_dim": 16, "backbone_kwargs": TINY},
        "data": {"dataset": "deliver", "root": str(root), "crop_size": [32, 32],
                 "batch_size": 2, "val_batch_size": 3, "num_workers": 0},
        "train": {"max_epochs": 1, "max_steps": 2, "lr": 1e-3, "progress": False,
                  "out_dir": str(tmp / "runs"), "log_every_n_steps": 1, "robust": True},
    }
    path = tmp / "robust.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_robust_training_and_protocol_all_are_reproducible(tmp_path):
    root = tmp_path / "deliver"
    make_deliver_tree(root, conditions=("cloud", "night"), per_split=2, size=32,
                      modalities=("rgb", "depth", "thermal"))
    cfg = _config(tmp_path, root)
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(cfg), "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_consistency" in header
    ckpt = run / "checkpoints" / "best.ckpt"
    files = {}
    for attempt in range(2):
        res = runner.invoke(app, ["eval", str(cfg), "--ckpt", str(ckpt), "--protocol", "all"])
        assert res.exit_code == 0, res.output
        files[attempt] = {p: (ckpt.parent / f"best_{p}_val.json").read_bytes()
                          for p in ("emm", "rmm", "nm")}
    assert files[0] == files[1]
    assert "EMM" in res.output and "RMM" in res.output and "NM" in res.output
    assert "E[p=0.1]" in res.output  # not eaten as rich markup
    emm = json.loads(files[0]["emm"])
    assert emm["protocol"] == "emm" and len(emm["subsets"]) == 7
    assert set(emm["expectation"]) == {"0.05", "0.1", "0.2"}
    rmm = json.loads(files[0]["rmm"])
    assert [b["r"] for b in rmm["ratios"]] == [0.25, 0.5, 0.75]
    # the full set loses nothing under RMM: the clean score at every ratio
    assert {b["subsets"][0]["mIoU"] for b in rmm["ratios"]} == {emm["subsets"][0]["mIoU"]}
    nm = json.loads(files[0]["nm"])
    assert [lv["level"] for lv in nm["levels"]] == ["low", "mid", "high"]
    assert nm["clean"] == emm["subsets"][0]["mIoU"]
    assert (ckpt.parent / "best_emm_val.md").read_text().startswith("# Entire-missing")
    assert (ckpt.parent / "best_robustness_val.png").stat().st_size > 1000


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(__import__("fusionseg.models", fromlist=["MODELS"])
                                        .MODELS.names()))
def test_robust_recipe_trains_every_method(name):
    """One robust training step of every registered method (tiny settings): finite loss with
    the consistency term, and gradients reach the trainable parameters."""
    from conftest import tiny_model_cfg

    from fusionseg.engine.module import SegmentationModule
    from fusionseg.models import create_model

    torch.manual_seed(0)
    model = create_model(tiny_model_cfg(name))
    cfg = config_from_dict({"model": {"name": name, "modalities": model.modalities},
                            "train": {"robust": {"modality_dropout": 0.9}, "loss": "ce"}})
    module = SegmentationModule(model, cfg, [str(i) for i in range(model.num_classes)])
    batch = {m: torch.randn(2, 3, 32, 32) for m in model.modalities}
    batch["label"] = torch.randint(0, model.num_classes, (2, 32, 32))
    model.train()
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
