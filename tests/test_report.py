"""fusionseg.report (cross-run table and chart) and the robustness plots of fusionseg.viz."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from fusionseg.config import Config
from fusionseg.errors import DataError
from fusionseg.models import count_parameters, create_model
from fusionseg.models.methods.baselines.model import SUM_FUSION_TINY
from fusionseg.report import collect_run, report_command, report_table, write_report
from fusionseg.viz import plot_report, plot_robustness

CLASSES = ["road", "car", "sky"]


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _eval_json(miou: float, oa: float, per_condition: dict[str, float]) -> dict:
    return {"checkpoint": "best.ckpt", "dataset": "deliver", "split": "val",
            "modalities": ["rgb", "depth"], "classes": CLASSES,
            "overall": {"mIoU": miou, "OA": oa, "mAcc": 1.0, "mF1": 2.0, "IoU": [1, 2, 3]},
            "per_condition": {c: {"mIoU": v, "OA": 50.0} for c, v in per_condition.items()}}


def _subset(present, missing, miou):
    return {"present": present, "missing": missing, "mIoU": miou, "OA": 70.0, "mF1": 40.0,
            "per_condition": {"fog": miou}}


def _emm_json(subsets=None, mean=30.5, expectation=None) -> dict:
    subsets = subsets if subsets is not None else [
        _subset(["rgb", "depth"], [], 37.125), _subset(["rgb"], ["depth"], 31.0),
        _subset(["depth"], ["rgb"], 22.5)]
    return {"protocol": "emm", "checkpoint": "runs/x/checkpoints/best.ckpt", "dataset": "deliver",
            "split": "val", "modalities": ["rgb", "depth"], "seed": 0, "subsets": subsets,
            "mean": mean,
            "expectation": expectation or {"0.05": 36.004, "0.1": 35.0, "0.2": 33.333}}


def _rmm_json() -> dict:
    ratios = [{"r": r, "subsets": [_subset(["rgb", "depth"], [], 37.0 - 10 * r),
                                   _subset(["rgb"], ["depth"], 30.0 - 10 * r),
                                   _subset(["depth"], ["rgb"], None if r == 0.5 else 20.0)],
               "mean": 30.0 - 10 * r, "expectation": {"0.05": 1.0, "0.1": None, "0.2": 2.0}}
              for r in (0.25, 0.5, 0.75)]
    return {**_emm_json(), "protocol": "rmm", "ratios": ratios}


def _nm_json() -> dict:
    levels = [{"level": lv, "density": d, "std": s, "mIoU": m, "OA": 60.0,
               "mIoU_salt_pepper_only": sp, "OA_salt_pepper_only": 65.0}
              for lv, d, s, m, sp in (("low", 0.05, 0.1, 20.0, 25.0), ("mid", 0.1, 0.2, None, 18.0),
                                      ("high", 0.2, 0.4, 5.0, None))]
    return {**_emm_json(), "protocol": "nm", "clean": 37.1, "levels": levels}


def _model_section(**overrides) -> dict:
    return {"name": "sum_fusion", **SUM_FUSION_TINY, "num_classes": None, **overrides}


def _run_dir(root: Path, model: dict, robust: bool | None = None) -> Path:
    config = Config(name=root.name, model=model).model_dump(mode="json")
    if robust is None:  # a config.json written before train.robust existed
        config["train"].pop("robust", None)
    else:
        config["train"]["robust"] = {**config["train"].get("robust", {}), "enabled": robust}
    _write(root / "config.json", config)
    return root


def _is_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > 100 and im.size[1] > 100


def _table_rows(markdown: str) -> list[list[str]]:
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_report_holds_the_runs_numbers_and_parameter_counts(tmp_path):
    a = _run_dir(tmp_path / "exp_a" / "version_0", _model_section(), robust=True)
    _write(a / "checkpoints" / "best_eval_val.json", _eval_json(41.234, 88.5, {"fog": 30.111,
                                                                               "night": 12.0}))
    _write(a / "checkpoints" / "best_emm_val.json", _emm_json())
    # second run: rgb only, num_classes in the config, only last_eval (no emm), other split
    b = _run_dir(tmp_path / "exp_b" / "version_0",
                 _model_section(modalities=["rgb"], num_classes=5), robust=False)
    config = json.loads((b / "config.json").read_text())
    config["data"]["val_split"] = "test"
    _write(b / "config.json", config)
    _write(b / "checkpoints" / "last_eval_test.json", _eval_json(25.0, 70.0, {"rain": 20.505}))

    res = write_report([a, b], tmp_path / "out")
    assert res["markdown"] == tmp_path / "out" / "report.md"
    text = res["markdown"].read_text()
    main, emm = text.split("## EMM: mIoU per modality subset")
    header, _, row_a, row_b = _table_rows(main)
    # the EMM tables side by side: a subset per row, a run per column
    assert _table_rows(emm) == [["present", "exp_a/version_0", "exp_b/version_0"],
                                ["---", "---:", "---:"],
                                ["rgb+depth", "37.12", "-"], ["rgb", "31.00", "-"],
                                ["depth", "22.50", "-"], ["mean", "30.50", "-"]]
    assert header == ["run", "method", "backbone", "modalities", "robust",
                      "trainable / total params (M)", "mIoU", "fog", "night", "rain",
                      "EMM mean", "E[p=0.05]", "E[p=0.1]", "E[p=0.2]"]

    counts_a = count_parameters(create_model(_model_section(num_classes=len(CLASSES))))
    counts_b = count_parameters(create_model(_model_section(modalities=["rgb"], num_classes=5)))
    assert counts_a != counts_b
    rows = res["rows"]
    assert (rows[0]["params_total"], rows[0]["params_trainable"]) == (
        counts_a["total"], counts_a["trainable"])
    assert (rows[1]["params_total"], rows[1]["params_trainable"]) == (
        counts_b["total"], counts_b["trainable"])

    params_a = f"{counts_a['trainable'] / 1e6:.2f} / {counts_a['total'] / 1e6:.2f}"
    assert row_a == ["exp_a/version_0", "sum_fusion", "mit_b0", "rgb+depth", "yes", params_a,
                     "41.23", "30.11", "12.00", "-", "30.50", "36.00", "35.00", "33.33"]
    params_b = f"{counts_b['trainable'] / 1e6:.2f} / {counts_b['total'] / 1e6:.2f}"
    assert row_b == ["exp_b/version_0", "sum_fusion", "mit_b0", "rgb", "no", params_b,
                     "25.00", "-", "-", "20.50", "-", "-", "-", "-"]
    assert rows[0]["OA"] == 88.5 and rows[1]["OA"] == 70.0
    assert rows[0]["per_condition"] == {"fog": 30.111, "night": 12.0}
    assert rows[0]["expectation"] == {"0.05": 36.004, "0.1": 35.0, "0.2": 33.333}
    _is_png(res["png"])


def test_collect_run_without_results_or_buildable_model(tmp_path):
    run = _run_dir(tmp_path / "bare", _model_section())
    row = collect_run(run)
    assert row["run"] == "bare" and row["robust"] is False  # config.json without train.robust
    assert row["mIoU"] is None and row["emm_mean"] is None and row["per_condition"] == {}
    assert row["params_total"] is None  # num_classes known neither from config nor eval JSON
    assert _table_rows(report_table([row]))[2][5:] == ["-"] * 6  # params, mIoU, EMM, 3 x E

    config = json.loads((run / "config.json").read_text())
    config["model"]["no_such_builder_key"] = 1  # create_model raises ValueError
    _write(run / "config.json", config)
    _write(run / "checkpoints" / "best_eval_val.json", _eval_json(10.0, 20.0, {}))
    row = collect_run(run)
    assert row["params_total"] is None and row["mIoU"] == 10.0


def test_missing_config_names_the_dir(tmp_path):
    with pytest.raises(DataError, match=r"nowhere is not a run dir: .*config\.json"):
        collect_run(tmp_path / "nowhere")
    with pytest.raises(DataError, match="nowhere"):
        write_report([tmp_path / "nowhere"], tmp_path / "out")


def test_report_command_prints_the_table(tmp_path):
    run = _run_dir(tmp_path / "run1", _model_section())
    _write(run / "checkpoints" / "best_eval_val.json", _eval_json(41.0, 88.0, {"fog": 30.0}))
    console = Console(file=io.StringIO(), width=250)
    res = report_command([run], tmp_path / "out", console)
    text = console.file.getvalue()
    assert "run1" in text and "41.00" in text
    assert "30.00" not in text  # per-condition columns: in the Markdown only
    assert "E[p=0.1]" in text  # the header is not eaten as rich markup
    assert "30.00" in Path(res["markdown"]).read_text()
    assert str(res["markdown"]) in text and str(res["png"]) in text


def test_plot_robustness_all_protocols_and_nulls(tmp_path):
    path = plot_robustness({"emm": _emm_json(), "rmm": _rmm_json(), "nm": _nm_json()},
                           tmp_path / "deep" / "robustness.png")
    assert path == tmp_path / "deep" / "robustness.png"
    _is_png(path)
    with_nulls = _emm_json(subsets=[_subset(["rgb", "depth"], [], None),
                                    _subset(["rgb"], ["depth"], 31.0),
                                    _subset(["depth"], ["rgb"], None)],
                           mean=None, expectation={"0.05": None, "0.1": 3.0, "0.2": None})
    empty_nm = {**_nm_json(), "clean": None,
                "levels": [{"level": "low", "density": 0.05, "std": 0.1, "mIoU": None,
                            "mIoU_salt_pepper_only": None}]}
    _is_png(plot_robustness({"emm": with_nulls, "nm": empty_nm}, tmp_path / "nulls.png"))
    _is_png(plot_robustness({"nm": _nm_json()}, tmp_path / "nm.png"))
    with pytest.raises(ValueError, match="emm, rmm, nm"):
        plot_robustness({"xyz": {}}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="none"):
        plot_robustness({}, tmp_path / "bad.png")


def test_plot_report_with_missing_values(tmp_path):
    rows = [{"run": "a", "mIoU": 40.0, "emm_mean": None, "expectation": {"0.1": None}},
            {"run": "b", "mIoU": None, "emm_mean": None, "expectation": {}}]
    _is_png(plot_report(rows, tmp_path / "x" / "report.png"))
