"""Known answers of the sensor-failure protocols (fusionseg.engine.robustness).

Tiny hand-made inputs (2 modalities, 3 classes, 4x4 px); every expected number is worked out by
hand in the test (confusion counts in the comments), the random draws from the documented
seeding ``crc32("seed|scenario|modality|sample id")``.
"""

from __future__ import annotations

import warnings
import zlib

import pytest
import torch

from fusionseg.data.transforms import misalign
from fusionseg.engine.robustness import (
    MISALIGN_LEVELS,
    NOISE_LEVELS,
    Scenario,
    ScenarioEvaluator,
    StreamReuse,
    SubsetEvaluator,
    bernoulli_expectation,
    drop_random_pixels,
    gaussian_noise,
    modality_subsets,
    protocol_markdown,
    protocol_results,
    protocol_scenarios,
    salt_and_pepper,
    stream_reuse,
    streams_compose,
)
from fusionseg.errors import ConfigError, DataError

MODS = ["rgb", "depth"]
HEADER = {"checkpoint": "best.ckpt", "dataset": "deliver", "split": "val",
          "modalities": MODS, "seed": 3}
HEADER_LINE = "`best.ckpt` on deliver val, modalities rgb+depth, seed 3; mIoU in percent."


# ----------------------------------------------------------------------------- helpers
def _gen(*key: object) -> torch.Generator:
    """The generator the protocol documents: seeded by crc32 of the '|'-joined key."""
    return torch.Generator().manual_seed(zlib.crc32("|".join(map(str, key)).encode()))


def _keep(seed, key, m, sid, ratio=0.5, hw=(4, 4)):
    """RMM: the pixels of sample ``sid`` that keep their value (draw >= ratio)."""
    return torch.rand(hw, generator=_gen(seed, key, m, sid)) >= ratio


def _label() -> torch.Tensor:
    """Two samples: rows 0-1 class 0, rows 2-3 class 1."""
    y = torch.zeros(2, 4, 4, dtype=torch.long)
    y[:, 2:] = 1
    return y


def _pred() -> torch.Tensor:
    """Sample 0 right everywhere; sample 1: pixel (0, 0) -> class 1, row 2 -> class 2.

    Confusion (rows gt): all = [[15, 1, 0], [0, 12, 4], [0, 0, 0]];
    sample 1 alone = [[7, 1, 0], [0, 4, 4], [0, 0, 0]]; sample 0 = [[8, 0, 0], [0, 8, 0], 0].
    """
    p = _label().clone()
    p[1, 0, 0] = 1
    p[1, 2] = 2
    return p


def _logits(pred: torch.Tensor, k: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, k).permute(0, 3, 1, 2).float()


def _batch(meta=None) -> dict:
    b = {m: torch.ones(2, 1, 4, 4) for m in MODS}
    b["label"] = _label()
    b["meta"] = meta or [{"id": "a", "condition": "fog"}, {"id": "b", "condition": "night"}]
    return b


def _fixed(sub: dict) -> torch.Tensor:
    """A model that ignores its input and predicts :func:`_pred`."""
    return _logits(_pred())


def _r(v: float) -> float:
    return round(v, 4)


# by hand from the confusion of _pred: IoU = 15/16, 12/17, 0; F1 = 30/31, 24/29, 0
MIOU_ALL = _r(100 * (15 / 16 + 12 / 17) / 3)
MIOU_NO2 = _r(100 * (15 / 16 + 12 / 17) / 2)  # class 2 ignored
OA_ALL = _r(100 * 27 / 32)
MF1_ALL = _r(100 * (30 / 31 + 24 / 29) / 3)
MF1_NO2 = _r(100 * (30 / 31 + 24 / 29) / 2)
# per condition: fog = sample 0 (perfect on classes 0, 1; class 2 undefined),
# night = sample 1: IoU 7/8, 4/9, 0
NIGHT_ALL = _r(100 * (7 / 8 + 4 / 9) / 3)
NIGHT_NO2 = _r(100 * (7 / 8 + 4 / 9) / 2)


# ----------------------------------------------------------------------------- markdown
def test_protocol_markdown_emm_table_by_hand():
    res = {"protocol": "emm", **HEADER,
           "subsets": [{"present": ["rgb", "depth"], "missing": [], "mIoU": 50.0, "OA": 75.0,
                        "mF1": 55.5556},
                       {"present": ["rgb"], "missing": ["depth"], "mIoU": None, "OA": 12.5,
                        "mF1": 1.0}],
           "mean": 50.0, "expectation": {"0.05": 49.0, "0.1": 48.0, "0.2": None}}
    assert protocol_markdown(res) == "\n".join([
        "# Entire-missing modality (EMM)", "", HEADER_LINE, "",
        "| present | missing | mIoU | OA | mF1 |",
        "| --- | --- | --- | --- | --- |",
        "| rgb+depth | - | 50.00 | 75.00 | 55.56 |",
        "| rgb | depth | - | 12.50 | 1.00 |",
        "",
        "| mean | E[p=0.05] | E[p=0.1] | E[p=0.2] |",
        "| --- | --- | --- | --- |",
        "| 50.00 | 49.00 | 48.00 | - |",
    ]) + "\n"


def _rmm_block(r, full, part, mean, e):
    return {"r": r, "subsets": [{"present": ["rgb", "depth"], "missing": [], "mIoU": full},
                                {"present": ["depth"], "missing": ["rgb"], "mIoU": part}],
            "mean": mean, "expectation": {"0.05": e[0], "0.1": e[1], "0.2": e[2]}}


def test_protocol_markdown_rmm_table_by_hand():
    res = {"protocol": "rmm", **HEADER,
           "ratios": [_rmm_block(0.25, 60.0, 40.0, 50.0, (59.0, 58.0, 57.0)),
                      _rmm_block(0.5, 60.0, None, 60.0, (None, 1.25, 2.5))]}
    assert protocol_markdown(res) == "\n".join([
        "# Random-missing modality (RMM)", "", HEADER_LINE, "",
        "| intact | failed | r=0.25 | r=0.5 |",
        "| --- | --- | --- | --- |",
        "| rgb+depth | - | 60.00 | 60.00 |",
        "| depth | rgb | 40.00 | - |",
        "| **mean** | | 50.00 | 60.00 |",
        "| **E[p=0.05]** | | 59.00 | - |",
        "| **E[p=0.1]** | | 58.00 | 1.25 |",
        "| **E[p=0.2]** | | 57.00 | 2.50 |",
    ]) + "\n"


def test_protocol_markdown_nm_table_by_hand():
    res = {"protocol": "nm", **HEADER, "clean": 60.0,
           "levels": [{"level": "low", "density": 0.05, "std": 0.1, "mIoU": 40.0, "OA": 1.0,
                       "mIoU_salt_pepper_only": 45.0, "OA_salt_pepper_only": 2.0},
                      {"level": "high", "density": 0.2, "std": 0.5, "mIoU": None, "OA": None,
                       "mIoU_salt_pepper_only": None, "OA_salt_pepper_only": None}]}
    assert protocol_markdown(res) == "\n".join([
        "# Noisy modality (NM)", "", HEADER_LINE, "",
        "| level | s&p density | Gaussian std | mIoU (s&p + Gaussian) | mIoU (s&p only) |",
        "| --- | --- | --- | --- | --- |",
        "| clean | 0 | 0 | 60.00 | 60.00 |",
        "| low | 0.05 | 0.1 | 40.00 | 45.00 |",
        "| high | 0.2 | 0.5 | - | - |",
    ]) + "\n"


def test_protocol_markdown_mam_shift_in_percent_of_shorter_side():
    res = {"protocol": "mam", **HEADER, "reference": "rgb", "moved": ["depth", "thermal"],
           "levels": [{"level": 0, "shift": 0.0, "rotation": 0.0, "mIoU": 70.0, "OA": 90.0,
                       "mF1": 80.0, "per_condition": {}},
                      {"level": 4, "shift": 0.04, "rotation": 4.0, "mIoU": None, "OA": 88.5,
                       "mF1": 77.125, "per_condition": {}}]}
    assert protocol_markdown(res) == "\n".join([
        "# Misaligned modalities (MAM)", "", HEADER_LINE, "",
        "depth+thermal moved against rgb (and the label); shift per axis in percent of the "
        "shorter image side.", "",
        "| level | shift (%) | rotation (deg) | mIoU | OA | mF1 |",
        "| --- | --- | --- | --- | --- | --- |",
        "| 0 | 0 | 0 | 70.00 | 90.00 | 80.00 |",
        "| 4 | 4 | 4 | - | 88.50 | 77.12 |",
    ]) + "\n"


def test_protocol_markdown_without_header_keys_leaves_blanks_and_seed_0():
    """Missing header keys print as empty, the seed as 0; a MAM JSON without 'moved' names none."""
    blank = "`` on  , modalities , seed 0; mIoU in percent."
    mam = protocol_markdown({"protocol": "mam", "levels": []})
    assert mam.splitlines()[:5] == ["# Misaligned modalities (MAM)", "", blank, "",
                                    " moved against None (and the label); shift per axis in "
                                    "percent of the shorter image side."]
    # a single ratio: the rows are named after it
    rmm = protocol_markdown({"protocol": "rmm",
                             "ratios": [_rmm_block(0.5, 1.0, 2.0, 1.5, (1.0, 1.0, 1.0))]})
    assert rmm.splitlines()[2] == blank
    assert rmm.splitlines()[4:8] == ["| intact | failed | r=0.5 |", "| --- | --- | --- |",
                                     "| rgb+depth | - | 1.00 |", "| depth | rgb | 2.00 |"]


# ----------------------------------------------------------------------------- JSON
def _ran(scenarios, **kw) -> ScenarioEvaluator:
    ev = ScenarioEvaluator(MODS, scenarios, num_classes=3, **kw)
    ev.update(_batch(), _fixed)
    return ev


def test_emm_json_entries_by_hand_with_ignored_class():
    """Every subset sees the same predictions: its metrics are those of _pred, class 2 left out."""
    ev = _ran(protocol_scenarios(MODS, ["emm"]))
    res = protocol_results(ev, "emm", {"seed": 3}, ignore_classes=[2])
    assert list(res)[:2] == ["protocol", "seed"]
    entry = {"mIoU": MIOU_NO2, "OA": OA_ALL, "mF1": MF1_NO2,
             "per_condition": {"fog": 100.0, "night": NIGHT_NO2}}
    assert res["subsets"] == [{"present": ["rgb", "depth"], "missing": [], **entry},
                              {"present": ["rgb"], "missing": ["depth"], **entry},
                              {"present": ["depth"], "missing": ["rgb"], **entry}]
    assert res["mean"] == MIOU_NO2
    assert res["expectation"] == {"0.05": MIOU_NO2, "0.1": MIOU_NO2, "0.2": MIOU_NO2}


def test_rmm_json_lists_the_failed_modalities_as_missing():
    ev = _ran(protocol_scenarios(MODS, ["rmm"]))
    res = protocol_results(ev, "rmm", {}, ignore_classes=[2])
    assert [b["r"] for b in res["ratios"]] == [0.25, 0.5, 0.75]
    for b in res["ratios"]:
        assert [(e["present"], e["missing"]) for e in b["subsets"]] == [
            (["rgb", "depth"], []), (["rgb"], ["depth"]), (["depth"], ["rgb"])]
        assert {e["mIoU"] for e in b["subsets"]} == {MIOU_NO2}
        assert b["mean"] == MIOU_NO2


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_json_of_an_evaluator_without_data_is_null_everywhere():
    """No labelled pixel: every metric NaN, written as null; the mean and expectation too."""
    ev = ScenarioEvaluator(MODS, protocol_scenarios(MODS, ["emm"]), num_classes=3)
    res = protocol_results(ev, "emm", {})
    assert [(e["mIoU"], e["OA"], e["mF1"]) for e in res["subsets"]] == [(None, None, None)] * 3
    assert res["mean"] is None
    assert res["expectation"] == {"0.05": None, "0.1": None, "0.2": None}


def test_nm_json_levels_by_hand_with_clean_reference():
    ev = _ran(protocol_scenarios(MODS, ["emm", "nm"]))
    res = protocol_results(ev, "nm", {}, ignore_classes=[2])
    assert res["clean"] == MIOU_NO2
    assert res["levels"] == [
        {"level": name, "density": d, "std": s, "mIoU": MIOU_NO2, "OA": OA_ALL,
         "mIoU_salt_pepper_only": MIOU_NO2, "OA_salt_pepper_only": OA_ALL}
        for name, d, s in NOISE_LEVELS]


def test_nm_json_without_a_clean_scenario_has_null_clean():
    ev = _ran(protocol_scenarios(MODS, ["nm"]))
    res = protocol_results(ev, "nm", {})
    assert res["clean"] is None
    assert res["levels"][0]["mIoU"] == MIOU_ALL and res["levels"][0]["OA"] == OA_ALL


def test_mam_json_levels_by_hand_with_ignored_class():
    ev = _ran(protocol_scenarios(MODS, ["mam"]))
    res = protocol_results(ev, "mam", {}, ignore_classes=[2])
    assert res["reference"] == "rgb" and res["moved"] == ["depth"]
    assert res["levels"] == [
        {"level": lv, "shift": sh, "rotation": rot, "mIoU": MIOU_NO2, "OA": OA_ALL,
         "mF1": MF1_NO2, "per_condition": {"fog": 100.0, "night": NIGHT_NO2}}
        for lv, sh, rot in MISALIGN_LEVELS]


def test_unknown_protocol_is_named_in_the_error():
    ev = ScenarioEvaluator(MODS, [], num_classes=3)
    with pytest.raises(ValueError, match="unknown robustness protocol 'xyz'"):
        protocol_results(ev, "xyz", {})
    with pytest.raises(ConfigError, match=r"unknown robustness protocol 'xyz'; choose from "
                                          r"emm, rmm, nm, mam or all"):
        protocol_scenarios(MODS, ["xyz"])


def test_bernoulli_expectation_skips_an_undefined_first_entry():
    """A None / NaN entry is left out, the later ones still count: (0.1 * 0.9 * 30) / (0.1 * 0.9)."""
    assert bernoulli_expectation({(): None, ("a",): 30.0}, 2, 0.1) == pytest.approx(30.0)
    assert bernoulli_expectation({(): float("nan"), ("a",): 30.0}, 2, 0.1) == pytest.approx(30.0)


# ----------------------------------------------------------------------------- scenarios
def test_protocol_scenarios_carry_their_levels():
    mam = protocol_scenarios(["rgb", "depth", "event"], ["mam"])
    assert [(s.key, s.present, s.shift, s.rotation) for s in mam] == [
        (f"mam/{lv}", ("rgb", "depth", "event"), sh, rot) for lv, sh, rot in MISALIGN_LEVELS]
    nm = protocol_scenarios(MODS, ["nm"])
    assert [(s.key, s.present, s.density, s.std) for s in nm] == [
        ("nm/low", ("rgb", "depth"), 0.05, 0.1), ("nm/low/salt_pepper_only", ("rgb", "depth"), 0.05, 0.0),
        ("nm/mid", ("rgb", "depth"), 0.1, 0.2), ("nm/mid/salt_pepper_only", ("rgb", "depth"), 0.1, 0.0),
        ("nm/high", ("rgb", "depth"), 0.2, 0.5), ("nm/high/salt_pepper_only", ("rgb", "depth"), 0.2, 0.0)]


def test_modality_subsets_listed_are_taken_as_given_and_checked():
    assert modality_subsets(MODS, [["depth"], ["rgb", "depth"]]) == [("depth",), ("rgb", "depth")]
    with pytest.raises(ConfigError, match=r"subset \['rgb', 'lidar'\] names \['lidar'\], not in "
                                          r"\['rgb', 'depth'\]"):
        modality_subsets(MODS, [["rgb", "lidar"]])
    with pytest.raises(ConfigError, match="^a missing-modality subset must keep at least one "
                                          "modality$"):
        modality_subsets(MODS, [["rgb"], []])


def test_rmm_draws_follow_seed_scenario_modality_and_sample_id():
    """The failed modality loses the pixels whose draw of crc32('seed|key|modality|id') < r."""
    s = Scenario("rmm/0.5/rgb", ("rgb",), ("depth",), ratio=0.5)
    out = s.apply({m: torch.ones(2, 1, 4, 4) for m in MODS}, MODS, ["a", "b"], seed=7)
    for j, sid in enumerate("ab"):
        assert torch.equal(out["depth"][j, 0], _keep(7, "rmm/0.5/rgb", "depth", sid).float())
    assert torch.equal(out["rgb"], torch.ones(2, 1, 4, 4))
    # the seed defaults to 0
    out0 = s.apply({m: torch.ones(1, 1, 4, 4) for m in MODS}, MODS, ["a"])
    assert torch.equal(out0["depth"][0, 0], _keep(0, "rmm/0.5/rgb", "depth", "a").float())


def test_rmm_corrupts_the_failed_modalities_the_batch_has():
    """A failed modality absent from the batch is skipped; the next one is still corrupted."""
    s = Scenario("rmm/0.5/rgb", ("rgb",), ("depth", "thermal"), ratio=0.5)
    out = s.apply({"rgb": torch.ones(1, 1, 4, 4), "thermal": torch.ones(1, 1, 4, 4)},
                  ["rgb", "depth", "thermal"], ["a"], seed=1)
    assert "depth" not in out
    assert torch.equal(out["thermal"][0, 0], _keep(1, "rmm/0.5/rgb", "thermal", "a").float())


def test_drop_random_pixels_keeps_a_pixel_whose_draw_equals_the_ratio():
    """keep = draw >= ratio on an [H, W] draw shared by the channels: ratio = draw 0 keeps px 0."""
    draws = torch.rand((2, 3), generator=_gen("x"))
    ratio = draws[0, 0].item()
    y = drop_random_pixels(torch.ones(2, 2, 3), ratio, _gen("x"))
    assert torch.equal(y, (draws >= ratio).float().expand(2, 2, 3))
    assert y[0, 0, 0] == 1.0


def test_gaussian_noise_is_std_times_the_standard_draws_in_the_input_dtype():
    x = torch.arange(6, dtype=torch.float64).view(1, 2, 3)
    z = torch.randn((1, 2, 3), generator=_gen("n"), dtype=torch.float64)
    assert torch.equal(gaussian_noise(x, 0.5, _gen("n")), x + z * 0.5)
    half = gaussian_noise(torch.zeros(1, 2, 2, dtype=torch.float16), 0.5, _gen("n"))
    assert half.dtype == torch.float16


def test_salt_and_pepper_on_a_single_element_keeps_it():
    """One element: it is both the maximum and the minimum, so it stays (and index 0 is drawable)."""
    assert torch.equal(salt_and_pepper(torch.full((1, 1, 1), 5.0), 0.5, _gen("s")),
                       torch.full((1, 1, 1), 5.0))


def test_nm_noise_kinds_per_scenario():
    """s&p only: values move to the sample's extremes; Gaussian only: every value moves."""
    x = torch.arange(32, dtype=torch.float32).view(2, 1, 4, 4)
    batch = {"rgb": x}
    sp = Scenario("nm/t/salt_pepper_only", ("rgb",), density=0.5).apply(batch, ["rgb"], ["a", "b"])
    for j in range(2):
        changed = sp["rgb"][j] != x[j]
        assert changed.any()
        assert set(sp["rgb"][j][changed].tolist()) <= {x[j].min().item(), x[j].max().item()}
    ga = Scenario("nm/g", ("rgb",), std=0.5).apply(batch, ["rgb"], ["a", "b"])
    assert (ga["rgb"] != x).all()
    z = torch.randn((1, 4, 4), generator=_gen(0, "nm/g", "rgb", "a"))
    assert torch.equal(ga["rgb"][0], x[0] + z * 0.5)


def test_gaussian_only_noise_needs_no_extremes_and_s_and_p_only_adds_no_gaussian_term():
    """std only: an empty image (no maximum) passes; density only: bits kept, even -0.0."""
    empty = Scenario("nm/g", ("rgb",), std=0.5).apply({"rgb": torch.zeros(1, 1, 0, 4)}, ["rgb"],
                                                       ["a"])
    assert empty["rgb"].shape == (1, 1, 0, 4)
    neg = torch.full((1, 1, 4, 4), -0.0)
    sp = Scenario("nm/s", ("rgb",), density=0.5).apply({"rgb": neg}, ["rgb"], ["a"])
    assert torch.signbit(sp["rgb"]).all()


def test_emm_apply_clears_the_present_column_of_the_removed_modality():
    batch = {m: torch.ones(2, 1, 4, 4) for m in MODS}
    batch["present"] = torch.tensor([[True, True], [True, False]])
    out = Scenario("emm/rgb", ("rgb",), ("depth",)).apply(batch, MODS, ["a", "b"])
    assert "depth" not in out
    assert out["present"].tolist() == [[True, False], [True, False]]


def _mam_point_batch():
    """H=4 < W=8, one bright pixel at row 1, column 3, in every modality."""
    x = torch.zeros(1, 1, 4, 8)
    x[0, 0, 1, 3] = 1.0
    return x


def test_mam_shift_is_a_fraction_of_the_shorter_side_with_drawn_signs():
    """shift 0.25 of min(4, 8) = 1 px per axis, signs from crc32('seed|mam|modality|id')."""
    mods = ["rgb", "depth", "thermal"]
    batch = {"rgb": _mam_point_batch(), "thermal": _mam_point_batch()}  # depth absent
    for seed in (2, 3):
        out = Scenario("mam/t", tuple(mods), shift=0.25).apply(batch, mods, ["a"], seed=seed)
        assert out["rgb"] is batch["rgb"]  # the reference stays
        g = _gen(seed, "mam", "thermal", "a")
        sx, sy, _ = (torch.randint(0, 2, (3,), generator=g) * 2 - 1).tolist()
        expected = torch.zeros(1, 1, 4, 8)
        expected[0, 0, 1 + sy, 3 + sx] = 1.0
        assert torch.equal(out["thermal"], expected)


def test_mam_rotation_uses_the_drawn_sign():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    out = Scenario("mam/r", tuple(MODS), rotation=90.0).apply({"rgb": x, "depth": x}, MODS,
                                                                ["a"])
    g = _gen(0, "mam", "depth", "a")
    sr = (torch.randint(0, 2, (3,), generator=g) * 2 - 1).tolist()[2]
    assert torch.equal(out["depth"][0], misalign(x[0], (0.0, 0.0), sr * 90.0, fill=0.0))
    assert not torch.equal(out["depth"], x)


# ----------------------------------------------------------------------------- evaluator
RMM_D = Scenario("rmm/0.5/rgb", ("rgb",), ("depth",), ratio=0.5)


class Recorder:
    """A model that records the depth input it gets and predicts :func:`_pred`-shaped zeros."""

    def __init__(self):
        self.depth = []

    def __call__(self, sub):
        self.depth.append(sub["depth"][:, 0].clone())
        return torch.zeros(sub["depth"].shape[0], 3, 4, 4)


def _ids_seen(metas_per_batch, seed=0, sizes=None, per_condition=True):
    """The sample ids the RMM draws of each sample were seeded with, batch after batch."""
    rec = Recorder()
    ev = ScenarioEvaluator(MODS, [RMM_D], num_classes=3, per_condition=per_condition,
                           **({"seed": seed} if seed else {}))  # the seed defaults to 0
    for k, metas in enumerate(metas_per_batch):
        b = len(metas) if metas is not None else sizes[k]
        batch = {m: torch.ones(b, 1, 4, 4) for m in MODS}
        batch["label"] = torch.zeros(b, 4, 4, dtype=torch.long)
        if metas is not None:
            batch["meta"] = metas
        ev.update(batch, rec)
    return torch.cat(rec.depth)


def _expected(ids, seed=0):
    return torch.stack([_keep(seed, RMM_D.key, "depth", i).float() for i in ids])


def test_sample_ids_come_from_meta_id():
    got = _ids_seen([[{"id": "a"}, {"id": "b"}]], seed=5)
    assert torch.equal(got, _expected(["a", "b"], seed=5))


def test_sample_ids_fall_back_to_the_running_sample_index():
    """No meta, a meta without 'id', a meta that is not a dict: ids 0, 1, 2, ... over batches."""
    no_meta = _ids_seen([None, None, None], sizes=[2, 1, 1])
    assert torch.equal(no_meta, _expected(["0", "1", "2", "3"]))
    no_id = _ids_seen([[{"condition": "fog"}, {}], [{}], [{}]])
    assert torch.equal(no_id, _expected(["0", "1", "2", "3"]))
    not_dict = _ids_seen([["x", "y"], ["z"]])
    assert torch.equal(not_dict, _expected(["0", "1", "2"]))


def test_a_meta_entry_that_is_not_a_dict_counts_under_condition_all():
    """A sample whose meta is not a dict has no condition: it goes to 'all', beside 'night'.

    'all' = sample 0 alone (perfect on classes 0, 1), 'night' = sample 1 (IoU 7/8, 4/9, 0)."""
    ev = ScenarioEvaluator(MODS, protocol_scenarios(MODS, ["emm"]), num_classes=3)
    ev.update(_batch(meta=["frame_0001.png", {"id": "b", "condition": "night"}]), _fixed)
    per_condition = ev.metrics("emm/rgb")["per_condition"]
    assert list(per_condition) == ["all", "night"]
    assert _r(per_condition["night"]["mIoU"]) == NIGHT_ALL
    assert per_condition["all"]["OA"] == 100.0


def test_scenario_inputs_are_moved_to_the_device():
    seen = []

    def on_meta(sub):
        seen.append({k: v.device.type for k, v in sub.items() if isinstance(v, torch.Tensor)})
        return _fixed(sub)

    ev = ScenarioEvaluator(MODS, protocol_scenarios(MODS, ["emm"]), num_classes=3)
    ev.update(_batch(), on_meta, device="meta")
    assert seen and all(set(d.values()) == {"meta"} for d in seen)
    assert ev.metrics("emm/rgb")["mIoU"] == pytest.approx(MIOU_ALL, abs=1e-4)


def test_metrics_default_nanmean_and_ignored_classes_per_condition():
    ev = _ran(protocol_scenarios(MODS, ["emm"]))
    r = ev.metrics("emm/depth")
    assert _r(r["mIoU"]) == MIOU_ALL
    assert {c: _r(v["mIoU"]) for c, v in r["per_condition"].items()} == {"fog": 100.0,
                                                                       "night": NIGHT_ALL}
    r2 = ev.metrics("emm/depth", ignore_classes=[2])
    assert _r(r2["mIoU"]) == MIOU_NO2
    assert {c: _r(v["mIoU"]) for c, v in r2["per_condition"].items()} == {"fog": 100.0,
                                                                        "night": NIGHT_NO2}


def test_ignore_index_pixels_are_skipped_overall_and_per_condition():
    """ignore_index 0: only the class-1 pixels count: 12 of 16 right overall, 4 of 8 at night."""
    ev = _ran(protocol_scenarios(MODS, ["emm"]), ignore_index=0)
    r = ev.metrics("emm/rgb")
    assert r["OA"] == pytest.approx(75.0)
    assert r["per_condition"]["night"]["OA"] == pytest.approx(50.0)
    assert r["per_condition"]["fog"]["OA"] == pytest.approx(100.0)


def test_default_ignore_index_is_255():
    batch = _batch()
    batch["label"][:, 0] = 255  # row 0 unlabelled: 12 pixels left per sample, 11 + 7 right
    ev = ScenarioEvaluator(MODS, protocol_scenarios(MODS, ["emm"]), num_classes=3)
    ev.update(batch, _fixed)
    assert ev.metrics("emm/rgb")["OA"] == pytest.approx(100 * 20 / 24)
    sev = SubsetEvaluator(MODS, [("rgb",)], num_classes=3)
    sev.update(batch, _fixed)
    assert sev.metrics(("rgb",))["OA"] == pytest.approx(100 * 20 / 24)


def test_without_condition_the_condition_is_all_and_per_condition_off_still_counts_all():
    ev = ScenarioEvaluator(MODS, protocol_scenarios(MODS, ["emm"]), num_classes=3)
    ev.update(_batch(meta=[{"id": "a"}, {"id": "b"}]), _fixed)
    assert list(ev.metrics("emm/rgb")["per_condition"]) == ["all"]
    off = ScenarioEvaluator(MODS, protocol_scenarios(MODS, ["emm"]), num_classes=3,
                            per_condition=False)
    off.update(_batch(), _fixed)
    for key in ("emm/rgb+depth", "emm/rgb", "emm/depth"):
        r = off.metrics(key)
        assert _r(r["mIoU"]) == MIOU_ALL and r["per_condition"] == {}


# ----------------------------------------------------------------------------- subsets
class PresentCount:
    """Predicts class (number of present modalities - 1) everywhere and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, sub):
        self.calls += 1
        n = sum(m in sub for m in MODS)
        out = torch.zeros(2, 3, 4, 4)
        out[:, n - 1] = 1
        return out


def test_subset_evaluator_table_by_hand():
    """Label: rows 0-1 class 0, rows 2-3 class 1. Both modalities -> class 1 everywhere: IoU 0 and
    1/2, OA 50; depth alone -> class 0: IoU 1/2 and 0, OA 50."""
    sev = SubsetEvaluator(MODS, [("rgb", "depth"), ("depth",)], num_classes=3)
    sev.update(_batch(), PresentCount())
    assert sev.table() == {
        "rgb+depth": {"mIoU": 25.0, "OA": 50.0, "per_condition": {"fog": 25.0, "night": 25.0}},
        "depth": {"mIoU": 25.0, "OA": 50.0, "per_condition": {"fog": 25.0, "night": 25.0}},
    }
    assert list(sev.table(subsets=[["depth"]])) == ["depth"]
    # class 0 left out: both -> IoU(1) = 1/2; depth alone -> IoU(1) = 0
    assert {k: v["mIoU"] for k, v in sev.table(ignore_classes=[0]).items()} == {
        "rgb+depth": 50.0, "depth": 0.0}
    assert sev.metrics(("depth",), ignore_classes=[0])["mIoU"] == 0.0
    assert sev.metrics("emm/depth")["OA"] == 50.0


def test_subset_evaluator_full_set_shares_the_clean_pass():
    """The full set and MAM level 0 feed identical inputs: 5 passes for 6 scenarios per batch."""
    model = PresentCount()
    sev = SubsetEvaluator(MODS, [("rgb", "depth")], num_classes=3,
                          extra_scenarios=protocol_scenarios(MODS, ["mam"]))
    sev.update(_batch(), model)
    assert model.calls == 5


def test_subset_evaluator_extra_rmm_uses_the_seed():
    for seed in (0, 5):
        rec = Recorder()
        sev = SubsetEvaluator(MODS, [("rgb", "depth")], num_classes=3, extra_scenarios=[RMM_D],
                              **({"seed": seed} if seed else {}))
        sev.update(_batch(), rec)
        assert torch.equal(rec.depth[-1], _expected(["a", "b"], seed=seed))
        assert set(sev.metrics(RMM_D.key)["per_condition"]) == {"fog", "night"}


# ----------------------------------------------------------------------------- stream reuse
class FakeStreams:
    """encode: each modality's feature = its input (+ an offset when ``mix``: features then
    depend on the other modalities of the encoder batch); predict: :func:`_pred` logits."""

    def __init__(self, mix=False):
        self.mix, self.encoded = mix, []

    def encode(self, batch):
        self.encoded.append(batch)
        mods = [m for m in MODS if isinstance(batch.get(m), torch.Tensor)]
        return {m: batch[m].float() + (len(mods) if self.mix else 0) for m in mods}

    def predict(self, batch, streams):
        return _logits(_pred())

    def reuse(self):
        return StreamReuse(self.encode, self.predict)


def _zeros_model(sub):
    return torch.zeros(2, 3, 4, 4)  # class 0 everywhere (not _pred)


def test_two_reusable_scenarios_take_their_logits_from_the_streams():
    fake = FakeStreams()
    ev = ScenarioEvaluator(MODS, protocol_scenarios(MODS, ["emm"])[:2], num_classes=3)
    ev.update(_batch(), _zeros_model, reuse=fake.reuse())
    assert _r(ev.metrics("emm/rgb")["mIoU"]) == MIOU_ALL  # the streams' prediction
    assert ev.reuse_checked and all(ev.reuse_checked.values())


def test_rmm_failed_modality_is_encoded_with_the_present_mask():
    fake = FakeStreams()
    batch = _batch()
    batch["present"] = torch.tensor([[True, True], [True, False]])
    ev = ScenarioEvaluator(MODS, [protocol_scenarios(MODS, ["emm"])[0], RMM_D], num_classes=3)
    ev.update(batch, _zeros_model, reuse=fake.reuse())
    only = fake.encoded[-1]
    assert set(only) == {"depth", "present"}
    assert only["present"].tolist() == [[True, True], [True, False]]


def test_streams_depending_on_the_encoder_batch_are_not_reused_and_warn():
    fake = FakeStreams(mix=True)
    ev = ScenarioEvaluator(MODS, protocol_scenarios(MODS, ["emm"]), num_classes=3)
    with pytest.warns(UserWarning, match="evaluating every missing-modality scenario with its "
                                         "own forward pass"):
        ev.update(_batch(), _zeros_model, reuse=fake.reuse())
    n = len(fake.encoded)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev.update(_batch(), _zeros_model, reuse=fake.reuse())  # same shape: no re-check
    assert len(fake.encoded) == n
    # every pass ran the model (class 0 everywhere): IoU0 = 16/32, class 1 never predicted
    assert ev.metrics("emm/rgb")["mIoU"] == pytest.approx(25.0)


def test_reuse_is_checked_per_dtype():
    """float32 inputs compose, float64 ones do not: the float64 batch gets its own check."""

    class ByDtype(FakeStreams):
        def encode(self, batch):
            self.mix = any(v.dtype == torch.float64 for k, v in batch.items()
                           if k in MODS and isinstance(v, torch.Tensor))
            return super().encode(batch)

    fake = ByDtype()
    ev = ScenarioEvaluator(MODS, protocol_scenarios(MODS, ["emm"]), num_classes=3)
    ev.update(_batch(), _zeros_model, reuse=fake.reuse())
    b64 = _batch()
    for m in MODS:
        b64[m] = b64[m].double()
    with pytest.warns(UserWarning, match="its own forward pass"):
        ev.update(b64, _zeros_model, reuse=fake.reuse())
    assert sorted(ev.reuse_checked.values()) == [False, True]


def test_reused_streams_are_encoded_on_the_device():
    devices = []

    def encode(batch):
        devices.append({v.device.type for k, v in batch.items()
                        if k in MODS and isinstance(v, torch.Tensor)})
        return {m: torch.zeros(1) for m in MODS if m in batch}

    reuse = StreamReuse(encode, lambda batch, streams: _logits(_pred()))
    ev = ScenarioEvaluator(MODS, protocol_scenarios(MODS, ["emm"]), num_classes=3)
    ev.update(_batch(), _fixed, device="meta", reuse=reuse)
    assert devices and all(d == {"meta"} for d in devices)


def test_streams_compose_by_hand():
    fake = FakeStreams()
    batch = _batch()
    batch["present"] = torch.ones(2, 2, dtype=torch.bool)
    assert streams_compose(fake.reuse(), batch, MODS, fake.encode(batch)) is True

    def fails(b):
        raise DataError("a sample with none of its modalities present")

    assert streams_compose(StreamReuse(fails, fake.predict), batch, MODS,
                           fake.encode(batch)) is False
    # features that are neither tensors nor lists of them cannot be compared: not composable
    odd = StreamReuse(lambda b: {m: "f" for m in MODS if m in b}, fake.predict)
    assert streams_compose(odd, batch, MODS, {m: "f" for m in MODS}) is False
    lists = StreamReuse(lambda b: {m: [b[m].float()] for m in MODS if m in b}, fake.predict)
    assert streams_compose(lists, batch, MODS, {m: [batch[m].float()] for m in MODS}) is True


class _Plain(torch.nn.Module):
    pass


class _Independent(torch.nn.Module):
    independent_streams = True


def test_stream_reuse_only_for_independent_streams_and_one_plain_pass():
    assert stream_reuse(_Plain()) is None
    assert stream_reuse(_Independent()) is not None
    assert stream_reuse(_Independent(), {}) is not None  # defaults: whole, scale 1, no flip
    assert stream_reuse(_Independent(), {"scales": [1]}) is not None
    assert stream_reuse(_Independent(), {"mode": "whole", "flip": False}) is not None
    assert stream_reuse(_Independent(), {"flip": True}) is None
    assert stream_reuse(_Independent(), {"scales": [1.0, 1.5]}) is None
    assert stream_reuse(_Independent(), {"mode": "slide"}) is None
