"""Misaligned modalities: the MAM protocol (``eval --protocol mam``) and the training
augmentation ``data.misalign`` (:func:`fusionseg.data.transforms.misalign`)."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY_MIT as TINY  # noqa: E402
from fixtures.deliver_tree import make_deliver_tree  # noqa: E402

from fusionseg.cli import app  # noqa: E402
from fusionseg.config import ConfigError, apply_overrides, config_from_dict  # noqa: E402
from fusionseg.data.transforms import (  # noqa: E402
    RandomMisalign,
    build_train_transforms,
    misalign,
)
from fusionseg.engine.robustness import (  # noqa: E402
    MISALIGN_LEVELS,
    Scenario,
    ScenarioEvaluator,
    protocol_markdown,
    protocol_results,
    protocol_scenarios,
)
from fusionseg.engine.runner import parse_protocols  # noqa: E402

MODS = ["rgb", "depth", "thermal"]


def _pattern(c: int, h: int, w: int) -> torch.Tensor:
    """Every element distinct: ``100 * channel + 10 * row + column`` (w <= 10)."""
    ch = torch.arange(c, dtype=torch.float32).view(c, 1, 1)
    row = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    col = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    return 100 * ch + 10 * row + col


# ----------------------------------------------------------------------------- the warp
def test_integer_shift_lands_where_expected():
    x = _pattern(2, 6, 7)
    out = misalign(x, (2, -1), 0.0, fill=-5.0)  # 2 px right, 1 px up
    for c in range(2):
        for r in range(6):
            for k in range(7):
                sr, sk = r + 1, k - 2  # where the content at (r, k) came from
                want = 100 * c + 10 * sr + sk if 0 <= sr < 6 and 0 <= sk < 7 else -5.0
                assert out[c, r, k].item() == want, (c, r, k)
    # per-channel fill, batched input, shift past the image: all fill
    b = misalign(torch.stack([x, x]), (0, 9), 0.0, fill=[1.0, 2.0])
    assert b.shape == (2, 2, 6, 7)
    assert (b[:, 0] == 1).all() and (b[:, 1] == 2).all()
    assert torch.equal(misalign(x, (0, 0), 0.0), x)
    assert torch.equal(x, _pattern(2, 6, 7))  # input not modified


def test_half_pixel_shift_interpolates_a_ramp():
    x = torch.arange(8, dtype=torch.float32).repeat(1, 4, 1)  # value = column
    out = misalign(x, (0.5, 0.0), 0.0)  # bilinear: column k takes column k - 0.5
    torch.testing.assert_close(out[0, :, 1:], x[0, :, 1:] - 0.5, rtol=0, atol=1e-6)
    assert out[0, 0, 0].item() == pytest.approx(0.0)  # half of column 0, half of fill 0


@pytest.mark.parametrize("size", [5, 6])
def test_rotation_by_90_degrees_is_the_grid_permutation(size):
    x = _pattern(1, size, size)
    # counter-clockwise on screen: the top-right corner goes to the top-left
    ccw = misalign(x, (0, 0), 90.0)
    assert ccw[0, 0, 0].item() == pytest.approx(x[0, 0, size - 1].item(), abs=1e-4)
    torch.testing.assert_close(ccw, torch.rot90(x, 1, (-2, -1)), rtol=0, atol=1e-4)
    torch.testing.assert_close(misalign(x, (0, 0), -90.0), torch.rot90(x, -1, (-2, -1)),
                               rtol=0, atol=1e-4)
    # rotation first, then the shift: 90 degrees then one pixel down
    both = misalign(x, (0, 1), 90.0, fill=-1.0)
    want = torch.full_like(x, -1.0)
    want[:, 1:] = torch.rot90(x, 1, (-2, -1))[:, :-1]
    torch.testing.assert_close(both, want, rtol=0, atol=1e-4)


def test_misalign_errors():
    with pytest.raises(ConfigError, match="bicubic"):
        misalign(torch.zeros(1, 4, 4), (0.5, 0), 0.0, mode="bicubic")
    with pytest.raises(ConfigError, match="fill has 2 values"):
        misalign(torch.zeros(3, 4, 4), (1, 0), 0.0, fill=[0.0, 1.0])


# ----------------------------------------------------------------------------- protocol
def test_levels_and_protocol_names():
    assert MISALIGN_LEVELS[0] == (0, 0.0, 0.0)
    shifts = [s for _, s, _ in MISALIGN_LEVELS]
    rotations = [r for _, _, r in MISALIGN_LEVELS]
    assert shifts == sorted(shifts) and rotations == sorted(rotations)
    assert "mam" in parse_protocols("all") and parse_protocols("mam") == ["mam"]
    sc = protocol_scenarios(MODS, ["mam"])
    assert [s.key for s in sc] == [f"mam/{lv}" for lv, _, _ in MISALIGN_LEVELS]
    # level 0 feeds the clean inputs: computed once with the plain evaluation
    assert sc[0].compute_key == "clean" and all(s.compute_key != "clean" for s in sc[1:])


def test_scenario_moves_only_non_first_modalities_by_a_seeded_sign():
    g = torch.Generator().manual_seed(0)
    batch = {m: torch.randn(4, 2, 16, 16, generator=g) for m in MODS}
    batch["label"] = torch.randint(0, 3, (4, 16, 16), generator=g)
    s = Scenario("mam/test", tuple(MODS), shift=0.125, rotation=0.0)  # 2 px of 16
    ids = ["a", "b", "c", "d"]
    out = s.apply(batch, MODS, ids, seed=0)
    assert out["rgb"] is batch["rgb"] and out["label"] is batch["label"]
    signs = set()
    for m in MODS[1:]:
        for j in range(4):
            x, y = batch[m][j], out[m][j]
            # one of the four integer moves by (+-2, +-2), zeros where uncovered
            matches = []
            for sx in (-1, 1):
                for sy in (-1, 1):
                    want = torch.zeros_like(x)
                    dx, dy = 2 * sx, 2 * sy
                    want[:, max(dy, 0):16 + min(dy, 0), max(dx, 0):16 + min(dx, 0)] = \
                        x[:, max(-dy, 0):16 + min(-dy, 0), max(-dx, 0):16 + min(-dx, 0)]
                    if torch.equal(y, want):
                        matches.append((sx, sy))
            assert len(matches) == 1, (m, j)
            signs.add(matches[0])
    assert len(signs) > 1  # directions are drawn, not fixed
    # per sample id, not per batch position; the seed changes the draw
    alone = s.apply({m: batch[m][2:3] for m in MODS}, MODS, ["c"], seed=0)
    for m in MODS:
        assert torch.equal(alone[m][0], out[m][2])
    other = [s.apply(batch, MODS, ids, seed=k) for k in (1, 2, 3)]
    assert any(not torch.equal(o["depth"], out["depth"]) for o in other)
    # absent modality: skipped
    part = s.apply({"rgb": batch["rgb"], "thermal": batch["thermal"]}, MODS, ids)
    assert set(part) == {"rgb", "thermal"}


class DepthSign(nn.Module):
    """Predicts class 1 where depth > 0, else class 0 (ignores the other modalities; no depth:
    class 0 everywhere)."""

    def forward(self, batch):
        ref = batch["rgb"] if "rgb" in batch else next(iter(batch.values()))
        d = batch["depth"][:, 0] if "depth" in batch else -torch.ones_like(ref[:, 0])
        out = torch.zeros(d.shape[0], 2, *d.shape[-2:])
        out[:, 1] = (d > 0).float()
        out[:, 0] = (d <= 0).float()
        return out


def test_mam_results_level_0_is_the_plain_eval_and_misalignment_costs():
    # left half class 0, right half class 1; depth says the same (-1 / +1)
    label = torch.zeros(2, 32, 32, dtype=torch.long)
    label[:, :, 16:] = 1
    depth = (label.float() * 2 - 1)[:, None].repeat(1, 3, 1, 1)
    batch = {"rgb": torch.randn(2, 3, 32, 32), "depth": depth, "thermal": depth.clone(),
             "label": label, "meta": [{"id": "a", "condition": "fog"},
                                      {"id": "b", "condition": "sun"}]}
    ev = ScenarioEvaluator(MODS, protocol_scenarios(MODS, ["emm", "mam"]), num_classes=2)
    ev.update(batch, DepthSign())
    res = protocol_results(ev, "mam", {"modalities": MODS, "seed": 0})
    assert res["protocol"] == "mam" and res["reference"] == "rgb"
    assert res["moved"] == ["depth", "thermal"]
    lv = res["levels"]
    assert [e["level"] for e in lv] == [lv_ for lv_, _, _ in MISALIGN_LEVELS]
    assert lv[0]["mIoU"] == 100.0  # aligned: perfect, and the plain (EMM full set) number
    emm = protocol_results(ev, "emm", {"modalities": MODS})
    assert lv[0]["mIoU"] == emm["subsets"][0]["mIoU"]
    assert set(lv[0]["per_condition"]) == {"fog", "sun"}
    assert lv[-1]["mIoU"] < 100.0  # the largest level moves the edge
    md = protocol_markdown(res)
    assert md.startswith("# Misaligned modalities (MAM)")
    assert "| 0 | 0 | 0 | 100.00 |" in md


# ----------------------------------------------------------------------------- augmentation
def _sample(size: int = 32) -> dict:
    g = torch.Generator().manual_seed(5)
    s = {m: torch.rand(3, size, size, generator=g) for m in MODS}
    s["label"] = torch.randint(0, 5, (size, size), generator=g)
    s["meta"] = {"id": "x"}
    return s


def test_augmentation_moves_only_non_first_modalities():
    kw = dict(crop_size=(24, 24), scale_range=(0.8, 1.2))
    plain = build_train_transforms(MODS, **kw)
    aug = build_train_transforms(MODS, **kw, misalign={"prob": 1.0, "max_shift": 3.0,
                                                       "max_rotation": 5.0})
    assert not any(isinstance(t, RandomMisalign) for t in plain.transforms)
    assert isinstance(aug.transforms[-2], RandomMisalign) and aug.transforms[-2].reference == "rgb"
    for seed in range(4):
        a = plain(_sample(), torch.Generator().manual_seed(seed))
        b = aug(_sample(), torch.Generator().manual_seed(seed))
        # the other random transforms draw as without the augmentation
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["label"], b["label"])
        assert not torch.equal(a["depth"], b["depth"])
        assert not torch.equal(a["thermal"], b["thermal"])
        again = aug(_sample(), torch.Generator().manual_seed(seed))
        assert all(torch.equal(again[m], b[m]) for m in MODS)  # seeded: same draw
    # no motion at zero magnitude or probability; reference by name
    s = _sample()
    for t in (RandomMisalign("rgb", 1.0, 0.0, 0.0), RandomMisalign("rgb", 0.0, 5.0, 5.0)):
        out = t(s, torch.Generator().manual_seed(0))
        assert all(torch.equal(out[m], s[m]) for m in MODS)
    out = RandomMisalign("thermal", 1.0, 4.0, 0.0)(s, torch.Generator().manual_seed(0))
    assert torch.equal(out["thermal"], s["thermal"]) and not torch.equal(out["rgb"], s["rgb"])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        RandomMisalign("rgb", 1.5)


def test_misalign_config():
    base = {"model": {"modalities": ["rgb", "depth"]}}
    assert config_from_dict(base).data.misalign is None  # off by default
    on = config_from_dict({**base, "data": {"misalign": True}}).data.misalign
    assert (on.prob, on.max_shift, on.max_rotation) == (0.5, 4.0, 2.0)
    assert config_from_dict({**base, "data": {"misalign": False}}).data.misalign is None
    raw = apply_overrides(base, ["data.misalign.prob=0.3", "data.misalign.max_shift=6"])
    m = config_from_dict(raw).data.misalign
    assert (m.prob, m.max_shift, m.max_rotation) == (0.3, 6.0, 2.0)
    for bad, key in (({"prob": 1.5}, "prob"), ({"prob": -0.1}, "prob"),
                     ({"max_shift": -1}, "max_shift"), ({"max_rotation": 200}, "max_rotation"),
                     ({"max_rotation": "a lot"}, "max_rotation"), ({"shift": 3}, "shift")):
        with pytest.raises(ConfigError, match=f"data.misalign.{key}"):
            config_from_dict({**base, "data": {"misalign": bad}})


# ----------------------------------------------------------------------------- end to end
def test_train_with_misalign_and_mam_eval_are_reproducible(tmp_path):
    root = tmp_path / "deliver"
    make_deliver_tree(root, conditions=("cloud",), per_split=2, size=32, modalities=MODS)
    cfg = {
        "name": "tiny_mam",
        "model": {"name": "sum_fusion", "backbone": "mit_b0", "modalities": MODS,
                  "decoder_dim": 16, "backbone_kwargs": TINY},
        "data": {"dataset": "deliver", "root": str(root), "crop_size": [32, 32],
                 "batch_size": 2, "val_batch_size": 3, "num_workers": 0,
                 "misalign": {"prob": 1.0, "max_shift": 2, "max_rotation": 3.0}},
        "train": {"max_epochs": 1, "max_steps": 1, "lr": 1e-3, "progress": False,
                  "out_dir": str(tmp_path / "runs"), "log_every_n_steps": 1},
    }
    path = tmp_path / "mam.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(path), "--run-dir", str(run)])
    assert res.exit_code == 0, res.output
    ckpt = run / "checkpoints" / "best.ckpt"
    files = []
    for _ in range(2):
        res = runner.invoke(app, ["eval", str(path), "--ckpt", str(ckpt), "--protocol", "mam"])
        assert res.exit_code == 0, res.output
        files.append((ckpt.parent / "best_mam_val.json").read_bytes())
    assert files[0] == files[1]
    assert "MAM" in res.output
    mam = json.loads(files[0])
    plain = json.loads((ckpt.parent / "best_eval_val.json").read_bytes())
    assert mam["levels"][0]["mIoU"] == round(plain["overall"]["mIoU"], 4)
    assert [lv["shift"] for lv in mam["levels"]] == [s for _, s, _ in MISALIGN_LEVELS]
    assert (ckpt.parent / "best_mam_val.md").read_text().startswith("# Misaligned")
    assert (ckpt.parent / "best_robustness_val.png").stat().st_size > 1000
