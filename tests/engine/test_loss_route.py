"""The route for method losses: auxiliary logits with weights, extra terms, loss specs.

End to end with the toy method of ``fixtures/toy_method.py`` (one short file over the shared
parts): the engine sums and logs every term by name without knowing the method.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model_cfg
from fixtures import toy_method  # noqa: F401  (registers toy_aux)
from fixtures.deliver_tree import make_deliver_tree

from fusionseg.config import config_from_dict
from fusionseg.engine.losses import (
    LOSSES,
    OhemCrossEntropy,
    SegmentationCriterion,
    build_loss,
    loss_spec,
)
from fusionseg.engine.runner import train
from fusionseg.models import AuxiliaryLogits, SegmentationOutput, create_model


def _logits(b=2, k=4, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, h, w, generator=g)


def test_loss_registry_and_specs():
    assert {"ce", "ohem"} <= set(LOSSES.names())
    assert loss_spec("ce") == {"name": "ce"}
    ohem = build_loss({"name": "ohem", "thresh": 0.5, "min_kept_frac": 0.25})
    assert isinstance(ohem, OhemCrossEntropy) and ohem.min_kept_frac == 0.25
    with pytest.raises(ValueError, match="unknown loss 'no_such_loss'"):
        build_loss("no_such_loss")
    with pytest.raises(ValueError, match="bad option"):
        build_loss({"name": "ce", "thresh": 0.7})
    with pytest.raises(ValueError, match="'name'"):
        loss_spec({"thresh": 0.7})


def test_criterion_sums_weighted_aux_targets_and_extra_terms():
    label = torch.randint(0, 4, (2, 16, 16))
    main, aux1, aux2 = _logits(h=16, w=16), _logits(seed=1), _logits(seed=2)
    hard = label.clone()
    hard[:, :8] = 255  # an auxiliary target other than the label (hard-pixel style)
    extra = torch.tensor(0.25)
    out = SegmentationOutput(
        main,
        aux={"a": AuxiliaryLogits(aux1, weight=0.4),
             "b": AuxiliaryLogits(aux2, weight=0.01, loss={"name": "ce"}, target=hard)},
        losses={"distill": extra},
    )
    crit = SegmentationCriterion({"name": "ohem", "thresh": 0.7}, ignore_index=255)
    total, terms = crit(out, label)
    up = lambda x: F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)  # noqa: E731
    ref_main = OhemCrossEntropy(thresh=0.7)(main, label)
    ref_a = OhemCrossEntropy(thresh=0.7)(up(aux1), label)
    ref_b = F.cross_entropy(up(aux2), hard, ignore_index=255)
    torch.testing.assert_close(terms["main"], ref_main)
    torch.testing.assert_close(terms["a"], ref_a)
    torch.testing.assert_close(terms["b"], ref_b)
    torch.testing.assert_close(terms["distill"], extra)
    torch.testing.assert_close(total, ref_main + 0.4 * ref_a + 0.01 * ref_b + extra)
    # train.aux_weights overrides the method's weight by name
    total2, _ = SegmentationCriterion("ohem", aux_weights={"a": 0.0})(out, label)
    torch.testing.assert_close(total2, ref_main + 0.01 * ref_b + extra)
    # a bare tensor is an auxiliary output with the default weight
    assert SegmentationOutput(main, aux={"x": aux1}).aux["x"].weight == pytest.approx(0.4)
    # plain logits: the main loss only
    t, terms = crit(main, label)
    assert set(terms) == {"main"} and torch.equal(t, terms["main"])


def test_criterion_rejects_clashing_names():
    out = SegmentationOutput(_logits(), aux={"main": _logits()})
    with pytest.raises(ValueError, match="clashes"):
        SegmentationCriterion("ce")(out, torch.zeros(2, 8, 8, dtype=torch.long))


def test_gradients_reach_every_term():
    model = create_model(tiny_model_cfg("toy_aux")).train()
    batch = {"rgb": torch.randn(2, 3, 32, 32), "depth": torch.randn(2, 1, 32, 32)}
    out = model(batch)
    assert isinstance(out, SegmentationOutput) and set(out.aux) == {"aux"}
    total, terms = SegmentationCriterion("ce")(out, torch.randint(0, 3, (2, 32, 32)))
    assert set(terms) == {"main", "aux", "align"}
    total.backward()
    assert model.aux_head.weight.grad is not None and model.aux_head.weight.grad.abs().sum() > 0
    assert out.logits.shape == (2, 3, 32, 32)
    model.eval()
    assert isinstance(model(batch), torch.Tensor)


def test_legacy_train_keys_fold_into_the_loss_spec():
    cfg = config_from_dict({"train": {"loss": "ohem", "ohem_thresh": 0.6,
                                      "ohem_min_kept_frac": 0.1, "aux_weight": 0.4}})
    assert cfg.train.loss == {"name": "ohem", "thresh": 0.6, "min_kept_frac": 0.1}
    assert config_from_dict({"train": {"loss": "ce"}}).train.loss == {"name": "ce"}
    with pytest.raises(ValueError, match="aux_weights"):
        config_from_dict({"train": {"aux_weight": 0.3}})


def test_engine_trains_a_method_with_aux_and_extra_terms(tmp_path):
    root = tmp_path / "deliver"
    make_deliver_tree(root, conditions=("cloud",), per_split=2, size=32)
    raw = {
        "name": "toy",
        "model": {"name": "toy_aux", "modalities": ["rgb", "depth"], "aux_weight": 0.5,
                  "align_weight": 0.2},
        "data": {"dataset": "deliver", "root": str(root), "crop_size": [32, 32],
                 "batch_size": 2, "val_batch_size": 2, "num_workers": 0},
        "train": {"max_epochs": 1, "max_steps": 1, "lr": 1e-3, "progress": False,
                  "loss": {"name": "ohem", "thresh": 0.7}, "out_dir": str(tmp_path / "runs"),
                  "log_every_n_steps": 1},
    }
    res = train(config_from_dict(raw), run_dir=tmp_path / "run")
    assert Path(res["best_ckpt"]).is_file()
    rows = list(csv.DictReader(open(tmp_path / "run" / "csv" / "metrics.csv")))
    step = next(r for r in rows if r.get("train/loss"))
    main, aux, align = (float(step[f"train/loss_{n}"]) for n in ("main", "aux", "align"))
    assert all(math.isfinite(v) and v > 0 for v in (main, aux, align))
    assert float(step["train/loss"]) == pytest.approx(main + 0.5 * aux + align, rel=1e-5)
