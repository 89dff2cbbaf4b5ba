"""tests/mutation_report.py: parsing mutmut's results and scoring per module, by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "mutation_report", Path(__file__).with_name("mutation_report.py"))
mutation_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutation_report)

RESULTS = """\
    fusionseg.engine.metrics.x_metrics_from_confusion__mutmut_1: killed
    fusionseg.engine.metrics.x_metrics_from_confusion__mutmut_2: survived
    fusionseg.engine.metrics.x_confusion_metric__mutmut_1: timeout
    fusionseg.engine.metrics.x_confusion_metric__mutmut_2: survived
    fusionseg.engine.losses.xǁOhemCrossEntropyǁforward__mutmut_7: no tests
    fusionseg.engine.losses.xǁOhemCrossEntropyǁforward__mutmut_8: killed
"""


def test_module_of_functions_and_methods():
    assert mutation_report.module_of("fusionseg.a.b.x_f__mutmut_3") == "fusionseg.a.b"
    assert mutation_report.module_of("fusionseg.a.xǁCǁm__mutmut_1") == "fusionseg.a"


def test_scores_count_timeouts_as_killed_and_leave_out_equivalents():
    statuses = mutation_report.parse_results(RESULTS)
    assert len(statuses) == 6
    eq = {"fusionseg.engine.metrics.x_confusion_metric__mutmut_2": "validation only"}
    table = mutation_report.report(statuses, eq)
    # metrics: 4 mutants, 1 equivalent -> 2 killed of 3 scored; losses: 1 killed of 2
    assert "| fusionseg.engine.metrics | 4 | 2 | 1 | 1 | 0 | 66.7% |" in table
    assert "| fusionseg.engine.losses | 2 | 1 | 1 | 0 | 0 | 50.0% |" in table
    assert "2 survivor(s) neither killed nor marked equivalent" in table
    assert "x_metrics_from_confusion__mutmut_2: survived" in table
    assert "x_confusion_metric__mutmut_2" not in table.split("marked equivalent:")[1]


def test_marks_on_unknown_or_killed_mutants_are_listed_for_review():
    statuses = mutation_report.parse_results(RESULTS)
    eq = {"fusionseg.engine.metrics.x_metrics_from_confusion__mutmut_1": "wrong: a test kills it",
          "fusionseg.engine.metrics.x_metrics_from_confusion__mutmut_99": "renumbered away",
          "fusionseg.engine.metrics.x_confusion_metric__mutmut_2": "validation only"}
    table = mutation_report.report(statuses, eq)
    assert table.split("\n\n")[-2:] == [
        "1 mutant(s) marked equivalent but unknown to mutmut (renumbered?):\n"
        "- fusionseg.engine.metrics.x_metrics_from_confusion__mutmut_99",
        "1 mutant(s) marked equivalent but killed by a test:\n"
        "- fusionseg.engine.metrics.x_metrics_from_confusion__mutmut_1"]
    # a clean list adds neither section
    clean = mutation_report.report(statuses, {"fusionseg.engine.metrics.x_confusion_metric__mutmut_2": "v"})
    assert "marked equivalent but" not in clean


def test_equivalent_without_reason_is_refused(tmp_path):
    f = tmp_path / "eq.txt"
    f.write_text("# comment\nfusionseg.a.x_f__mutmut_1  # why\nfusionseg.a.x_f__mutmut_2\n")
    with pytest.raises(SystemExit, match="mutmut_2 is marked equivalent without a reason"):
        mutation_report.equivalent_mutants(f)
    f.write_text("fusionseg.a.x_f__mutmut_1  # why\n")
    assert mutation_report.equivalent_mutants(f) == {"fusionseg.a.x_f__mutmut_1": "why"}
