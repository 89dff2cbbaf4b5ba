"""The import contract of ``src/fusionseg``: layers point one way (issue 23).

Every ``import`` / ``from ... import`` statement under ``src/fusionseg`` (function-local ones
and ``if TYPE_CHECKING:`` ones included) is read with :mod:`ast`, resolved to an absolute module
name and checked against :data:`LAYERS` / :data:`MAY_IMPORT`. Every violation is reported with
its ``file:line``.

The layers, bottom to top (a layer may always import its own modules)::

    layer      modules                                     may import
    ---------  ------------------------------------------  ----------------------------------
    base       fusionseg (the package: __version__),       base
               errors, files, hub_files, registry,
               serialization, runtime, viz
    data       fusionseg.data                              base
    models     fusionseg.models                            base
    config     fusionseg.config                            base, models (lazily: the model
                                                           registry validates method options)
    engine     fusionseg.engine (training, evaluation)     base, data, models, config
    inference  fusionseg.inference (prediction, export)    base, data, models, config
    tools      fusionseg.bench, fusionseg.report,          everything below, not cli
               fusionseg.hub
    cli        fusionseg.cli                               everything (nothing imports it)

So ``data`` and ``models`` are siblings that never import each other, nor config, engine,
inference, the tools or the CLI; ``engine`` and ``inference`` never import each other. ``viz``
(palettes, panels, plots; it needs only ``errors`` and ``files``) sits in ``base`` so that the
datasets' ``plot()`` can use it. ``config`` (the run schema) sits above ``models`` because it
looks method options up in the model registry, and below everything that reads a run config;
``data`` does not read run configs (``engine.datamodule`` builds datasets from one).
``hub_files`` (where a model's files are: checkpoint, saved folder, ``hf://``) sits in ``base``
so that both ``engine`` (``train.init_from``, eval) and ``inference`` (predict, export) read
saved models the same way.

One exception, :data:`LAZY_EXPORTS`: the package root ``fusionseg`` (base) serves
``fusionseg.from_pretrained`` from ``fusionseg.hub`` (tools) through a PEP 562
``__getattr__``, so that ``import fusionseg`` stays light (no torch) while the documented entry
point is one attribute away. The exception is narrow: only that pair, and only an import
inside a function body (never at import time).

Also: no import cycle among the modules of ``fusionseg.inference``, nor among those of
``fusionseg.models``, counting the imports that run when a module is imported (module level,
class bodies included; not function bodies, not ``if TYPE_CHECKING:`` blocks).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "fusionseg"

#: layer -> the modules in it (a module belongs to the layer of its longest listed prefix)
LAYERS: dict[str, tuple[str, ...]] = {
    "base": ("fusionseg", "fusionseg.errors", "fusionseg.files", "fusionseg.hub_files",
             "fusionseg.registry", "fusionseg.serialization", "fusionseg.runtime",
             "fusionseg.viz"),
    "data": ("fusionseg.data",),
    "models": ("fusionseg.models",),
    "config": ("fusionseg.config",),
    "engine": ("fusionseg.engine",),
    "inference": ("fusionseg.inference",),
    "tools": ("fusionseg.bench", "fusionseg.report", "fusionseg.hub"),
    "cli": ("fusionseg.cli",),
}

_BELOW_APPS = {"base", "data", "models", "config"}
#: layer -> the layers its modules may import (besides its own)
MAY_IMPORT: dict[str, set[str]] = {
    "base": set(),
    "data": {"base"},
    "models": {"base"},
    "config": {"base", "models"},
    "engine": _BELOW_APPS,
    "inference": _BELOW_APPS,
    "tools": _BELOW_APPS | {"engine", "inference"},
    "cli": _BELOW_APPS | {"engine", "inference", "tools"},
}

#: (source, target) imports allowed against the layers, inside function bodies only: the
#: package root's PEP 562 ``__getattr__`` serving ``fusionseg.from_pretrained``
LAZY_EXPORTS: frozenset[tuple[str, str]] = frozenset({("fusionseg", "fusionseg.hub")})

#: packages whose modules must not import each other in a cycle at import time
ACYCLIC_PACKAGES = ("fusionseg.inference", "fusionseg.models")


@dataclass(frozen=True)
class Import:
    """One imported fusionseg module: ``source`` imports ``target`` at ``path:line``;
    ``import_time``: the statement runs when ``source`` is imported (not in a function body,
    not under ``if TYPE_CHECKING:``)."""

    source: str
    target: str
    path: Path
    line: int
    import_time: bool

    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


def module_name(path: Path, src: Path = SRC) -> str:
    """``src/fusionseg/data/io.py`` -> ``fusionseg.data.io``; a package's ``__init__.py`` is the
    package."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """``(node, import_time)`` for every Import / ImportFrom in ``tree``."""

    def walk(node: ast.AST, import_time: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, import_time
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), import_time)
            else:
                yield from walk(child, import_time)

    yield from walk(tree, True)


def imports_of(path: Path, known: set[str], src: Path = SRC) -> list[Import]:
    """The fusionseg modules ``path`` imports, resolved to absolute names.

    ``from X import a`` targets ``X.a`` when that is a module in ``known``, else ``X``; a
    relative ``X`` is resolved against the importing module's package.
    """
    source = module_name(path, src)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    out: list[Import] = []
    for node, import_time in _import_nodes(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        for target in dict.fromkeys(targets):  # once per statement and module
            if target == "fusionseg" or target.startswith("fusionseg."):
                out.append(Import(source, target, path, node.lineno, import_time))
    return out


def all_imports(package: Path = PACKAGE, src: Path = SRC) -> list[Import]:
    files = sorted(package.rglob("*.py"))
    known = {module_name(f, src) for f in files}
    return [imp for f in files for imp in imports_of(f, known, src)]


def layer_of(module: str) -> str | None:
    """The layer of the longest prefix of ``module`` listed in :data:`LAYERS` (``fusionseg``
    itself names only the package, not everything in it); ``None`` if none is."""
    best, best_len = None, -1
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            inside = module.startswith(prefix + ".") and prefix != "fusionseg"
            if (module == prefix or inside) and len(prefix) > best_len:
                best, best_len = layer, len(prefix)
    return best


def layer_violations(imports: list[Import]) -> list[str]:
    bad = []
    for imp in imports:
        src_layer, dst_layer = layer_of(imp.source), layer_of(imp.target)
        if src_layer is None or dst_layer is None or src_layer == dst_layer:
            continue
        if (imp.source, imp.target) in LAZY_EXPORTS and not imp.import_time:
            continue
        if dst_layer not in MAY_IMPORT[src_layer]:
            bad.append(f"{imp.where()}: {imp.source} ({src_layer}) imports {imp.target} "
                       f"({dst_layer})")
    return bad


def import_cycles(imports: list[Import], package: str) -> list[list[Import]]:
    """Elementary cycles (one per strongly connected group, found by DFS) among the modules
    of ``package``, through import-time imports."""
    inside = [i for i in imports if i.import_time and i.target != i.source
              and i.source.startswith(package) and i.target.startswith(package)]
    edges: dict[str, list[Import]] = {}
    for imp in inside:
        edges.setdefault(imp.source, []).append(imp)
    cycles, seen_sets = [], set()
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[Import]) -> None:
        state[node] = 1
        for imp in edges.get(node, []):
            if state.get(imp.target) == 1:
                start = next(k for k, e in enumerate(stack + [imp]) if e.source == imp.target)
                cycle = (stack + [imp])[start:]
                key = frozenset(e.source for e in cycle)
                if key not in seen_sets:
                    seen_sets.add(key)
                    cycles.append(cycle)
            elif state.get(imp.target) is None:
                visit(imp.target, stack + [imp])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return cycles


# --- the contract --------------------------------------------------------------------------


def test_every_module_has_a_layer():
    modules = sorted({module_name(f) for f in PACKAGE.rglob("*.py")})
    unplaced = [m for m in modules if layer_of(m) is None]
    assert not unplaced, ("modules in no layer (add them to LAYERS in tests/test_layering.py): "
                          + ", ".join(unplaced))


def test_layers_point_one_way():
    bad = layer_violations(all_imports())
    assert not bad, f"{len(bad)} import(s) against the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", ACYCLIC_PACKAGES)
def test_no_import_cycles(package):
    cycles = import_cycles(all_imports(), package)
    lines = [" -> ".join([c[0].source] + [f"{e.target} ({e.where()})" for e in c])
             for c in cycles]
    assert not cycles, f"import cycles in {package}:\n" + "\n".join(lines)


# --- the checker itself, on known code ------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path / "fusionseg"


def test_checker_resolves_relative_local_and_type_checking_imports(tmp_path):
    pkg = _tree(tmp_path, {
        "fusionseg/__init__.py": "",
        "fusionseg/errors.py": "",
        "fusionseg/engine/__init__.py": "from . import masking\n",
        "fusionseg/engine/masking.py": "",
        "fusionseg/data/__init__.py": "",
        "fusionseg/data/datasets/__init__.py": "from .base import X\n",
        "fusionseg/data/datasets/base.py": (
            "from typing import TYPE_CHECKING\n"
            "from ...errors import E\n"
            "if TYPE_CHECKING:\n"
            "    from fusionseg.engine import masking\n"
            "def f():\n"
            "    from ...engine.masking import g\n"),
    })
    imports = all_imports(pkg, tmp_path)
    got = {(i.source, i.target, i.line, i.import_time) for i in imports}
    assert got == {
        ("fusionseg.engine", "fusionseg.engine.masking", 1, True),
        ("fusionseg.data.datasets", "fusionseg.data.datasets.base", 1, True),
        ("fusionseg.data.datasets.base", "fusionseg.errors", 2, True),
        ("fusionseg.data.datasets.base", "fusionseg.engine.masking", 4, False),
        ("fusionseg.data.datasets.base", "fusionseg.engine.masking", 6, False),
    }
    bad = layer_violations(imports)
    assert len(bad) == 2 and all("fusionseg.data.datasets.base (data) imports "
                                 "fusionseg.engine.masking (engine)" in b for b in bad)


def test_checker_finds_import_time_cycles_only(tmp_path):
    pkg = _tree(tmp_path, {
        "fusionseg/__init__.py": "",
        "fusionseg/models/__init__.py": "",
        "fusionseg/models/a.py": "from . import b\n",
        "fusionseg/models/b.py": "from .c import x\n",
        "fusionseg/models/c.py": "import fusionseg.models.a\n",
        "fusionseg/models/d.py": "from . import e\n",
        "fusionseg/models/e.py": "def f():\n    from . import d\n",
    })
    cycles = import_cycles(all_imports(pkg, tmp_path), "fusionseg.models")
    assert [[e.source for e in c] for c in cycles] == [
        ["fusionseg.models.a", "fusionseg.models.b", "fusionseg.models.c"]]


def test_checker_allows_only_the_lazy_root_export(tmp_path):
    pkg = _tree(tmp_path, {
        "fusionseg/__init__.py": (
            "def __getattr__(name):\n"
            "    from . import hub\n"
            "    from .engine import runner\n"
            "from . import hub\n"),
        "fusionseg/hub.py": "",
        "fusionseg/engine/__init__.py": "",
        "fusionseg/engine/runner.py": "",
    })
    bad = layer_violations(all_imports(pkg, tmp_path))
    assert sorted(b.split(": ", 1)[1] for b in bad) == [
        "fusionseg (base) imports fusionseg.engine.runner (engine)",  # not the allowed pair
        "fusionseg (base) imports fusionseg.hub (tools)",  # the pair, but at import time
    ]
    assert [b.split(":")[1] for b in bad if "engine" in b] == ["3"]
