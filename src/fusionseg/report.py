"""Cross-run report: one comparison table (Markdown) and a bar chart (PNG) of trained runs.

Each run dir is what ``fusionseg train`` writes (``config.json``, ``checkpoints/``); the
numbers come from the JSON files ``fusionseg eval`` writes next to the checkpoint:
``best_eval_{split}.json`` (mIoU, OA, per condition) and ``best_emm_{split}.json`` (the
missing-modality protocol: mean mIoU over the modality subsets and the Bernoulli-failure
expectations). Parameter counts are taken from the model the config describes, built without
memory on the ``meta`` device.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, DataError

__all__ = ["collect_run", "report_command", "report_table", "run_labels", "write_report"]

#: failure probabilities ``p`` of the EMM expectations shown in the table
EXPECTATION_KEYS = ("0.05", "0.1", "0.2")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None


def _result_file(ckpt_dir: Path, protocol: str, split: str) -> Path | None:
    """``best_{protocol}_{split}.json``, else the newest ``*_{protocol}_*.json`` (same split
    preferred), else None."""
    best = ckpt_dir / f"best_{protocol}_{split}.json"
    if best.is_file():
        return best
    for pattern in (f"*_{protocol}_{split}.json", f"*_{protocol}_*.json"):
        found = sorted(ckpt_dir.glob(pattern), key=lambda p: (p.stat().st_mtime, p.name))
        if found:
            return found[-1]
    return None


def _count_parameters(spec: dict[str, Any]) -> dict[str, int] | None:
    """:func:`fusionseg.models.count_parameters` of ``create_model(spec)`` built on the meta
    device (no weight memory); None when the model cannot be built."""
    from .models import count_parameters, create_model

    try:
        with torch.device("meta"):
            return count_parameters(create_model(spec))
    except Exception:  # noqa: BLE001  (any failure to build: no counts, no crash)
        return None


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Row labels: each run dir's name, or ``parent/name`` where names repeat
    (``runs/a/version_0``, ``runs/b/version_0``)."""
    paths = [Path(d).resolve() for d in run_dirs]
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def collect_run(run_dir: str | Path, label: str | None = None) -> dict[str, Any]:
    """The numbers of one run for the report.

    Args:
        run_dir: a run dir holding ``config.json`` and ``checkpoints/`` with the eval JSON
            files (split: the config's ``data.val_split``, default ``"val"``).
        label: the row label (default: the dir's name).

    Returns:
        ``{"run", "method", "backbone", "modalities", "params_total", "params_trainable",
        "mIoU", "OA", "per_condition": {condition: mIoU}, "emm_mean", "emm_subsets":
        {"rgb+depth": mIoU, ...}, "expectation": {"0.05", "0.1", "0.2"}, "robust"}``; metrics in percent, None where the
        file or value is missing; parameter counts None when the model cannot be built (or
        ``num_classes`` is known neither from the config nor from the eval JSON).

    Raises:
        FileNotFoundError: ``run_dir/config.json`` is missing.
        DataError: a JSON file is not valid JSON.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise DataError(f"{run_dir} is not a run dir: {config_path} not found")
    config = _read_json(config_path)
    model = dict(config.get("model") or {})
    split = (config.get("data") or {}).get("val_split") or "val"
    found = {p: _result_file(run_dir / "checkpoints", p, split) for p in ("eval", "emm")}
    ev, emm = ({} if f is None else _read_json(f) for f in found.values())

    counts = None
    if model.get("num_classes") is None and ev.get("classes"):
        model["num_classes"] = len(ev["classes"])
    if model.get("name") and model.get("num_classes") is not None:
        counts = _count_parameters({**model, "pretrained": None})

    robust = (config.get("train") or {}).get("robust", False)  # a mapping without "enabled": on
    overall = ev.get("overall") or {}
    expectation = emm.get("expectation") or {}
    return {
        "run": label or run_dir.resolve().name,
        "method": model.get("name"),
        "backbone": model.get("backbone"),
        "modalities": list(model.get("modalities") or []),
        "params_total": counts["total"] if counts else None,
        "params_trainable": counts["trainable"] if counts else None,
        "mIoU": overall.get("mIoU"),
        "OA": overall.get("OA"),
        "per_condition": {c: (m or {}).get("mIoU")
                          for c, m in (ev.get("per_condition") or {}).items()},
        "emm_mean": emm.get("mean"),
        "emm_subsets": {"+".join(sub.get("present") or []): sub.get("mIoU")
                        for sub in emm.get("subsets") or []},
        "expectation": {p: expectation.get(p) for p in EXPECTATION_KEYS},
        "robust": bool(robust.get("enabled", True)) if isinstance(robust, dict) else bool(robust),
    }


def _number(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _params(row: dict[str, Any]) -> str:
    if row["params_total"] is None:
        return "-"
    return f"{row['params_trainable'] / 1e6:.2f} / {row['params_total'] / 1e6:.2f}"


def table_cells(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cell strings of the comparison table (shared by Markdown and the console):
    run, method, backbone, modalities, robust training, trainable / total parameters (M),
    mIoU, one column per condition (union over the runs, sorted), EMM mean and the
    expectations; numbers with 2 decimals, ``-`` where missing."""
    conditions = sorted({c for r in rows for c in r["per_condition"]})
    header = ["run", "method", "backbone", "modalities", "robust", "trainable / total params (M)",
              "mIoU", *conditions, "EMM mean", *(f"E[p={p}]" for p in EXPECTATION_KEYS)]
    body = [
        [r["run"], r["method"] or "-", r["backbone"] or "-", "+".join(r["modalities"]) or "-",
         "yes" if r["robust"] else "no", _params(r), _number(r["mIoU"]),
         *(_number(r["per_condition"].get(c)) for c in conditions), _number(r["emm_mean"]),
         *(_number(r["expectation"].get(p)) for p in EXPECTATION_KEYS)]
        for r in rows
    ]
    return header, body


def emm_cells(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]] | None:
    """Header and cells of the EMM table side by side: one row per modality subset (in the
    order of the first run that has them), one mIoU column per run; ``None`` when no run has
    EMM results."""
    subsets: list[str] = []
    for r in rows:
        subsets += [s for s in r.get("emm_subsets") or {} if s not in subsets]
    if not subsets:
        return None
    header = ["present", *(r["run"] for r in rows)]
    body = [[s, *(_number((r.get("emm_subsets") or {}).get(s)) for r in rows)] for s in subsets]
    body.append(["mean", *(_number(r["emm_mean"]) for r in rows)])
    return header, body


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]], left: int) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] * left + ["---:"] * (len(header) - left)
    return "\n".join([line(header), line(align), *(line(b) for b in body)]) + "\n"


def report_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison table of :func:`collect_run` rows as Markdown (see :func:`table_cells`
    for the columns)."""
    header, body = table_cells(rows)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] * 5 + ["---:"] * (len(header) - 5)
    return "\n".join([line(header), line(align), *(line(b) for b in body)]) + "\n"


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Collect the runs and write ``out_dir/report.md`` (the table) and ``out_dir/report.png``
    (:func:`fusionseg.viz.plot_report`).

    Returns:
        ``{"rows": [collect_run dicts], "markdown": Path, "png": Path}``.

    Raises:
        ConfigError: no run dirs given.
        FileNotFoundError: a run dir without ``config.json``.
    """
    from .viz import plot_report

    if not run_dirs:
        raise ConfigError("fusionseg report needs at least one run dir")
    rows = [collect_run(d, label) for d, label in zip(run_dirs, run_labels(run_dirs),
                                                      strict=True)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "report.md"
    emm = emm_cells(rows)
    markdown.write_text("# Runs compared\n\nmIoU in percent (condition columns: mIoU per condition; EMM: missing-"
                        "modality mean and expectations).\n\n"
                        + report_table(rows)
                        + ("" if emm is None else "\n## EMM: mIoU per modality subset\n\n"
                           + _markdown(*emm, left=1)))
    png = plot_report(rows, out_dir / "report.png")
    return {"rows": rows, "markdown": markdown, "png": png}


def report_command(run_dirs: Sequence[str | Path], out: str | Path, console) -> dict[str, Any]:
    """``fusionseg report``: :func:`write_report`, then the table and the written paths on
    ``console`` (a :class:`rich.console.Console`). The console table leaves out the backbone
    and per-condition columns to stay readable; the Markdown file has them all."""
    from rich.markup import escape
    from rich.table import Table

    res = write_report(run_dirs, out)
    header, body = table_cells(res["rows"])
    conditions = {c for r in res["rows"] for c in r["per_condition"]}
    keep = [i for i, h in enumerate(header) if h not in conditions and h != "backbone"]
    table = Table(title="runs compared (mIoU %)")
    for i in keep:
        table.add_column(escape(header[i]), justify="left" if i < 5 else "right")
    for cells in body:
        table.add_row(*(escape(cells[i]) for i in keep))
    console.print(table)
    emm = emm_cells(res["rows"])
    if emm is not None:
        side = Table(title="EMM: mIoU (%) per modality subset")
        for i, h in enumerate(emm[0]):
            side.add_column(escape(h), justify="left" if i == 0 else "right")
        for cells in emm[1]:
            side.add_row(*(escape(c) for c in cells))
        console.print(side)
    console.print(f"wrote {res['markdown']} and {res['png']}")
    return res
