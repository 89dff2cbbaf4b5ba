"""Score per module of the last ``mutmut run`` (``make mutate``), as the table in tests/README.md.

Reads ``mutmut results --all true`` (one ``module.function__mutmut_N: status`` line per mutant)
and ``tests/mutation_equivalent.txt`` (``mutant_name  # why it cannot change behaviour``: one
per line), and prints, per mutated module, the mutants killed (a test failed or timed out), the
survivors (no test failed, or no test reached the mutated function), those marked equivalent,
and the score ``killed / (mutants - equivalent)``. The survivors not marked equivalent are
listed below the table: each one is a missing test or a mutant to mark, with its reason.

Usage: ``python tests/mutation_report.py`` in the repository root after ``mutmut run``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

KILLED = {"killed", "timeout"}
#: statuses that mean the suite let the mutant through
SURVIVED = {"survived", "no tests"}
EQUIVALENT_FILE = Path(__file__).with_name("mutation_equivalent.txt")
LINE = re.compile(r"^\s*(?P<name>[\w.ǁ]+__mutmut_\d+): (?P<status>.+?)\s*$")


def module_of(mutant: str) -> str:
    """``fusionseg.engine.metrics`` of ``fusionseg.engine.metrics.x_f__mutmut_3`` (and of the
    ``xǁClassǁmethod__mutmut_N`` form mutmut gives methods)."""
    return re.split(r"\.xǁ|\.x_", mutant, maxsplit=1)[0]


def equivalent_mutants(path: Path = EQUIVALENT_FILE) -> dict[str, str]:
    """``{mutant name: reason}`` from ``path``; a line without a ``# reason`` is an error."""
    marked: dict[str, str] = {}
    if not path.exists():
        return marked
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition("#")
        if not reason.strip():
            raise SystemExit(f"{path}:{n}: {name.strip()} is marked equivalent without a reason")
        marked[name.strip()] = reason.strip()
    return marked


def parse_results(text: str) -> dict[str, str]:
    """``{mutant name: status}`` from the output of ``mutmut results --all true``."""
    return {m["name"]: m["status"] for m in map(LINE.match, text.splitlines()) if m}


def report(statuses: dict[str, str], equivalent: dict[str, str]) -> str:
    """The markdown table (and the unexplained survivors) for ``statuses``."""
    rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    open_survivors = []
    for name, status in sorted(statuses.items()):
        row = rows[module_of(name)]
        row["mutants"] += 1
        if name in equivalent:
            row["equivalent"] += 1
        elif status in KILLED:
            row["killed"] += 1
        elif status in SURVIVED:
            row["survived"] += 1
            open_survivors.append(f"{name}: {status}")
        else:  # not checked yet, suspicious, skipped ...
            row["other"] += 1
            open_survivors.append(f"{name}: {status}")
    out = ["| module | mutants | killed | survived | equivalent | not run | score |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for module, r in sorted(rows.items()):
        scored = r["mutants"] - r["equivalent"]
        score = f"{100 * r['killed'] / scored:.1f}%" if scored else "-"
        out.append(f"| {module} | {r['mutants']} | {r['killed']} | {r['survived']} | "
                   f"{r['equivalent']} | {r['other']} | {score} |")
    if open_survivors:
        out += ["", f"{len(open_survivors)} survivor(s) neither killed nor marked equivalent:"]
        out += [f"- {s}" for s in open_survivors]
    # a mark on a mutant mutmut no longer has (its function changed, so its mutants were
    # renumbered) or on one a test kills is wrong: the line must be checked again
    stale = sorted(n for n in equivalent if n not in statuses)
    killed = sorted(n for n in equivalent if statuses.get(n) in KILLED)
    for title, names in (("marked equivalent but unknown to mutmut (renumbered?)", stale),
                         ("marked equivalent but killed by a test", killed)):
        if names:
            out += ["", f"{len(names)} mutant(s) {title}:"] + [f"- {n}" for n in names]
    return "\n".join(out)


def main() -> int:
    mutmut = Path(sys.executable).with_name("mutmut")
    res = subprocess.run([str(mutmut), "results", "--all", "true"], capture_output=True,
                         text=True, check=True)
    print(report(parse_results(res.stdout), equivalent_mutants()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
