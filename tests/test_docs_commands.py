"""Every ``fusionseg`` command written in README.md, docs/**/*.md and the Makefile runs as
written (issue 22): its subcommand exists, its options and arguments parse with the real CLI
parser, its config loads and every ``--set`` override applies and validates.

Nothing is executed: each command line goes through click's parser (``make_context`` of the
typer app's commands, which converts and checks every option value but does not call the
command), then the checks the command body would make first, with the same code:
``load_config(CONFIG, --set ...)`` (the CLI's code path; a config naming ``data/synthcity``
loads without the data), the model name, backbone and model keys against the registered
builder (as ``create_model`` checks them), the dataset name, ``--protocol``
(``parse_protocols``), ``--precision`` (``resolve_precision``), ``--missing`` subsets
against the model's modalities, ``--input`` / ``--spec`` / ``--health`` / ``--on-error`` of
predict, catalogue names of ``weights fetch`` and ``model.pretrained``. Each command is one
test named ``FILE:LINE``.

Which lines are commands:

* fenced code blocks of README.md and docs/**/*.md (```` ```bash ````, ``sh``, ``shell``,
  ``zsh`` or no language; in ``console`` blocks and blocks with a ``$ `` prompt, only the
  lines after the prompt), and the Makefile's recipes (its variables expanded with their
  defaults: ``$(FS)`` is ``.venv/bin/fusionseg``);
* inline code spans that are whole commands: starting with ``fusionseg`` and naming a config
  (``.yaml``) or rendering data (``data synth``), without placeholders (``fusionseg eval`` or
  ``fusionseg data check CONFIG`` in prose names a command, it is no command line);
* backslash continuations are joined; ``$ `` prompts, ``# comments``, environment
  assignments and launchers before the command (``OMP_NUM_THREADS=4``, ``srun``) are
  dropped; ``torchrun ... -m fusionseg.cli ARGS`` counts as ``fusionseg ARGS``; the command
  ends at a shell operator (``|``, ``&&``, ``;``, ``>``);
* ``NAME="..."`` lines of a block define variables that ``$NAME`` / ``${NAME}`` in later
  lines of the same block expand to (other ``$VARS`` stay as written);
* ``fusionseg weights list | fetch mit_b2 | convert SRC DST`` (a synopsis of alternatives)
  is three commands, each alternative run under ``fusionseg weights``.

Placeholder conventions accepted:

* ``[--opt VALUE]`` marks an optional part: it is parsed as written without the brackets, so
  the option must exist; a bracketed part containing ``...`` or ``same`` (``[--set ...]``,
  ``[same --set]``) stands for text written elsewhere and is dropped;
* upper-case words (``CONFIG``, ``DIR``, ``SRC``, ``P``), ``<run>`` and ``...`` in paths are
  placeholders: the parser takes them as the paths they are;
* a config path under ``configs/`` with ``<name>`` or ``...`` in it is a glob: every config it
  matches is checked; a placeholder config (``CONFIG``, ``<config>``) is checked with
  ``configs/quickstart.yaml`` standing in, so its ``--set`` overrides are still validated.
  Any other config must be a file of the repository (a reader cannot run ``sf_b2.yaml``).
"""

from __future__ import annotations

import inspect
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main

from fusionseg.cli import app

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = ROOT / "configs" / "quickstart.yaml"
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1", "(", ")"}
LAUNCHERS = {"srun", "mpirun", "time", "nohup", "exec", "env", "sudo"}


@dataclass(frozen=True)
class DocCommand:
    where: str  # FILE:LINE (LINE: the first line of the command)
    text: str  # the command as written (continuations joined)
    args: tuple[str, ...]  # the arguments after ``fusionseg``
    error: str = ""  # why the line is no shell command (unbalanced quotes)


# ---------------------------------------------------------------------------------- extraction

_OPTIONAL = re.compile(r"(?<!\S)\[([^\[\]'\"]*)\]")
_VAR_DEF = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_VAR_USE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _expand_optional(text: str) -> str:
    """``[--opt V]`` -> ``--opt V``; ``[--set ...]`` / ``[same --set]`` -> dropped."""
    def repl(m: re.Match) -> str:
        inner = m.group(1)
        if "..." in inner or re.search(r"\bsame\b", inner):
            return ""
        return inner
    return _OPTIONAL.sub(repl, text)


def _tokens(text: str) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|()")
    lex.whitespace_split = True
    lex.commenters = "#"
    return list(lex)


def _fusionseg_args(tokens: list[str]) -> tuple[list[str], int] | None:
    """The arguments of the ``fusionseg`` invocation in ``tokens`` and the index of the
    token after them, or None."""
    for i, tok in enumerate(tokens):
        if tok in ("fusionseg.cli", "fusionseg") and i and tokens[i - 1] == "-m":
            pass
        elif tok == "fusionseg" or tok.endswith("/fusionseg"):
            if not all(_VAR_DEF.match(t) or t in LAUNCHERS or t in OPERATORS
                       for t in tokens[:i]):
                continue  # 'pip install fusionseg': not an invocation
        else:
            continue
        end = i + 1
        while end < len(tokens) and tokens[end] not in OPERATORS:
            end += 1
        return tokens[i + 1:end], end
    return None


def _commands_of_line(text: str, where: str, variables: dict[str, str]) -> list[DocCommand]:
    text = text.strip()
    if text.startswith("$ "):
        text = text[2:]
    if "fusionseg" not in text:
        return []
    expanded = _VAR_USE.sub(
        lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)
    try:
        tokens = _tokens(_expand_optional(expanded))
    except ValueError as exc:  # unbalanced quotes
        if re.search(r"(^|[\s/])fusionseg(\.cli)?\s", text):
            return [DocCommand(where, text, (), f"not a shell command line: {exc}")]
        return []
    found = _fusionseg_args(tokens)
    if found is None:
        return []
    args, end = found
    out = [DocCommand(where, text, tuple(args))]
    # 'fusionseg weights list | fetch mit_b2 | convert SRC DST': alternatives of one group
    while len(args) >= 2 and end < len(tokens) and tokens[end] == "|":
        start = end + 1
        end = start
        while end < len(tokens) and tokens[end] not in OPERATORS:
            end += 1
        alt = tokens[start:end]
        if not alt or not _is_subcommand(args[0], alt[0]):
            break
        out.append(DocCommand(f"{where}#{len(out) + 1}", text, (args[0], *alt)))
    return out


def _is_group(cmd) -> bool:
    # duck-typed: typer builds its commands with its own copy of click (typer._click)
    return hasattr(cmd, "resolve_command")


def _context(cmd, name: str, parent=None):
    return cmd.context_class(cmd, info_name=name, parent=parent)


def _is_subcommand(group: str, name: str) -> bool:
    """Whether ``fusionseg GROUP NAME`` is a command."""
    root = typer.main.get_command(app)
    ctx = _context(root, "fusionseg")
    cmd = root.get_command(ctx, group)
    return _is_group(cmd) and cmd.get_command(_context(cmd, group, ctx), name) is not None


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join backslash continuations: ``(first line number, joined text)``."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    first = 0
    for no, line in lines:
        if not buf:
            first = no
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        out.append((first, " ".join(b.strip() for b in buf)))
        buf = []
    if buf:
        out.append((first, " ".join(b.strip() for b in buf)))
    return out


def _block_commands(rel: str, block: list[tuple[int, str]]) -> list[DocCommand]:
    variables: dict[str, str] = {}
    out: list[DocCommand] = []
    for no, text in _logical_lines(block):
        m = None
        if _VAR_DEF.match(text.strip()):
            try:
                words = _tokens(text)
            except ValueError:
                words = []
            m = _VAR_DEF.match(words[0]) if len(words) == 1 else None
        if m:  # NAME="..." on a line of its own: a variable of this block
            variables[m.group(1)] = m.group(2)
            continue
        out += _commands_of_line(text, f"{rel}:{no}", variables)
    return out


_INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")


def _inline_commands(rel: str, para: list[tuple[int, str]]) -> list[DocCommand]:
    """Inline code spans (which may wrap lines) that are whole commands: starting with
    ``fusionseg `` and naming a config (``.yaml``) or rendering data (``data synth``); other
    spans (``fusionseg eval``, ``fusionseg eval --ckpt``) mention a command in prose. A span
    with a placeholder (``--set <tiny model, root>``, ``--tiles N``) is a synopsis in prose."""
    text = " ".join(line for _, line in para)
    starts, pos = [], 0
    for no, line in para:
        starts.append((pos, no))
        pos += len(line) + 1
    out: list[DocCommand] = []
    for m in _INLINE.finditer(text):
        span = " ".join(m.group(1).split())
        if not span.startswith("fusionseg ") or re.search(r"<[^>]*\s[^>]*>|\b[A-Z]+\b", span):
            continue
        if ".yaml" not in span and not span.startswith("fusionseg data synth "):
            continue
        no = max(n for p, n in starts if p <= m.start())
        out += _commands_of_line(span, f"{rel}:{no}", {})
    return out


def markdown_commands(path: Path) -> list[DocCommand]:
    """The commands of a Markdown file: fenced shell blocks, then whole-command inline spans."""
    rel = path.relative_to(ROOT).as_posix()
    out: list[DocCommand] = []
    fence: str | None = None
    lang = ""
    block: list[tuple[int, str]] = []
    para: list[tuple[int, str]] = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        s = line.strip()
        if fence is None:
            m = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", s)
            if m or not s:
                out += _inline_commands(rel, para)
                para = []
            if m:
                fence, lang, block = m.group(1), m.group(2).lower(), []
            elif s:
                para.append((no, s))
            continue
        if s.startswith(fence) and not s[len(fence):].strip():
            if lang == "console" or any(t.lstrip().startswith("$ ") for _, t in block):
                # a transcript: the commands follow '$ ', the other lines are their output
                block = [(n, t) for n, t in block if t.lstrip().startswith("$ ")]
            if lang in SHELL_LANGS:
                out += _block_commands(rel, block)
            fence = None
            continue
        block.append((no, line))
    out += _inline_commands(rel, para)
    return sorted(out, key=lambda c: int(re.split(r"[:#]", c.where)[1]))


def makefile_commands(path: Path) -> list[DocCommand]:
    lines = path.read_text(encoding="utf-8").splitlines()
    variables: dict[str, str] = {}
    for line in lines:
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?::=|\?=|=)\s*(.*)$", line)
        if m:
            variables[m.group(1)] = m.group(2).split("#")[0].strip()

    def expand(text: str) -> str:
        for _ in range(10):
            new = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                         lambda m: variables.get(m.group(1), m.group(0)), text)
            if new == text:
                break
            text = new
        return text

    recipe = [(no, line) for no, line in enumerate(lines, 1) if line.startswith("\t")]
    out: list[DocCommand] = []
    for no, text in _logical_lines(recipe):
        text = expand(text.strip().lstrip("@-"))
        out += _commands_of_line(text, f"Makefile:{no}", {})
    return out


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def all_commands() -> list[DocCommand]:
    out: list[DocCommand] = []
    for path in doc_files():
        out += markdown_commands(path)
    out += makefile_commands(ROOT / "Makefile")
    seen: dict[str, int] = {}
    for i, c in enumerate(out):  # one id per command (two spans on one line: FILE:LINE#2)
        seen[c.where] = seen.get(c.where, 0) + 1
        if seen[c.where] > 1:
            out[i] = DocCommand(f"{c.where}#{seen[c.where]}", c.text, c.args, c.error)
    return out


COMMANDS = all_commands()


# -------------------------------------------------------------------------------------- checks

def parse_cli(args: tuple[str, ...]) -> tuple[str, dict]:
    """Resolve the subcommand and parse its options with the real click parser (values
    converted and checked; the command is not called). Returns ``("weights fetch", params)``.

    Raises:
        typer's click ``UsageError``: no such command, option or choice; a bad value.
    """
    cmd = typer.main.get_command(app)
    ctx = _context(cmd, "fusionseg")
    rest = list(args)
    names: list[str] = []
    while _is_group(cmd):
        assert rest, f"'fusionseg {' '.join(names)}' needs a subcommand"
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        names.append(name)
        if _is_group(cmd):
            ctx = _context(cmd, name, ctx)
    sub_ctx = cmd.make_context(names[-1], rest, parent=ctx)
    return " ".join(names), dict(sub_ctx.params)


def _is_placeholder_path(text: str) -> bool:
    return bool(re.search(r"<[^>]*>|\.\.\.", text))


def config_files(path: Path | str) -> list[Path]:
    """The configs a documented CONFIG stands for (see the module docstring)."""
    text = str(path)
    if (ROOT / text).is_file():
        return [ROOT / text]
    if _is_placeholder_path(text) and text.startswith(("configs/", "examples/")):
        pattern = re.sub(r"<[^>]*>|\.\.\.", "*", text)
        found = sorted(ROOT.glob(pattern))
        assert found, f"no config matches {text} (as {pattern})"
        return found
    assert _is_placeholder_path(text) or re.fullmatch(r"[A-Z][A-Z0-9_]*", text), (
        f"{text}: no such config in the repository (write CONFIG for any config)")
    return [STAND_IN]


def check_model(cfg) -> None:
    """The model section as ``create_model`` checks it, without building the model."""
    from fusionseg.models import MODELS
    from fusionseg.models.backbones import list_backbones
    from fusionseg.models.catalogue import find_pretrained
    from fusionseg.models.registry import validate_model_options

    spec = cfg.model.to_dict()
    name = spec.pop("name")
    builder = MODELS.get(name)
    spec.pop("grad_checkpointing", None)
    if validate_model_options(name, {**spec, "num_classes": spec["num_classes"] or 1}):
        return  # typed options: validated like create_model (backbone name included)
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(spec) - set(params))
        assert not unknown, f"model {cfg.model.name!r} takes no key(s) {unknown}"
    if "backbone" in params:
        assert cfg.model.backbone in list_backbones(), f"unknown backbone {cfg.model.backbone}"
    pre = cfg.model.pretrained
    if pre and "/" not in pre and not Path(pre).suffix:
        assert find_pretrained(pre) is not None, f"model.pretrained={pre}: not in the catalogue"


def check_config(path: Path, sets: list[str]):
    from fusionseg.config import load_config
    from fusionseg.data import list_datasets

    cfg = load_config(path, sets)  # the CLI's own code path
    check_model(cfg)
    assert cfg.data.dataset in list_datasets(), f"unknown dataset {cfg.data.dataset!r}"
    return cfg


def check_command(command: DocCommand) -> None:
    assert not command.error, command.error
    name, params = parse_cli(command.args)
    sets = list(params.get("set") or [])
    cfgs = []
    if params.get("config") is not None:
        cfgs = [check_config(p, sets) for p in config_files(params["config"])]
    elif sets:
        pytest.fail(f"--set without a config: {command.text}")

    if name == "eval":
        from fusionseg.engine.runner import parse_protocols
        parse_protocols(params.get("protocol"))
        missing = params.get("missing")
        if missing and missing != "all":
            for cfg in cfgs:
                for subset in missing.split(";"):
                    mods = [m.strip() for m in subset.split(",") if m.strip()]
                    assert mods and set(mods) <= set(cfg.model.modalities), (
                        f"--missing {subset!r}: not a subset of {cfg.model.modalities}")
    elif name == "bench":
        from fusionseg.runtime import resolve_precision
        for cfg in cfgs:
            resolve_precision(params.get("precision") or cfg.train.precision, "cuda")
    elif name == "predict":
        from fusionseg.inference import parse_input, parse_spec_overrides
        assert (params.get("ckpt") is None) != (params.get("onnx") is None), (
            "predict needs one of --ckpt and --onnx")
        for item in params["input"]:
            parse_input(item)
        parse_spec_overrides(params.get("spec"))
        if params.get("health"):
            from fusionseg.inference import parse_health
            parse_health(params["health"])
        assert params["on_error"] in ("skip", "stop"), params["on_error"]
    elif name == "weights fetch":
        from fusionseg.models.catalogue import get_pretrained
        get_pretrained(params["name"])
    elif name == "weights convert" and params.get("backbone"):
        from fusionseg.models.backbones import list_backbones
        assert params["backbone"] in list_backbones()
    elif name == "data check" and params.get("dataset"):
        from fusionseg.data import list_datasets
        assert params["dataset"] in list_datasets()


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_runs_as_written(command: DocCommand, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the docs' paths are relative to the repository root
    try:
        check_command(command)
    except Exception as exc:  # a click UsageError, ConfigError, AssertionError ...
        msg = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        msg = msg.split("\nassert ")[0]  # pytest's rewritten-assert detail adds nothing here
        pytest.fail(f"{command.where}: `{command.text}`\n  -> {type(exc).__name__}: {msg}",
                    pytrace=False)


def test_commands_are_found() -> None:
    """The extractor finds the commands (a broken one would pass every doc vacuously)."""
    where = {c.where.split(":")[0] for c in COMMANDS}
    assert len(COMMANDS) >= 60, len(COMMANDS)
    for rel in ("README.md", "Makefile", "docs/robustness.md", "docs/scaling.md",
                "docs/methods/stitchfusion.md"):
        assert rel in where, rel
    texts = {c.args for c in COMMANDS}
    assert ("weights", "fetch", "mit_b2") in texts  # the README's alternatives synopsis


def test_extraction_conventions() -> None:
    block = [(1, "SF=\"--set model.name=stitchfusion --set model.fusion=sum\""),
             (2, "$ fusionseg train configs/quickstart.yaml $SF \\"),
             (3, "    --run-dir runs/x [--set ...] [--resume last.ckpt]  # comment"),
             (4, "OMP_NUM_THREADS=4 srun fusionseg info | tee log"),
             (5, "torchrun --nproc_per_node 8 -m fusionseg.cli eval CONFIG --ckpt P"),
             (6, "pip install fusionseg")]
    got = _block_commands("x.md", block)
    assert [(c.where, c.args) for c in got] == [
        ("x.md:2", ("train", "configs/quickstart.yaml", "--set", "model.name=stitchfusion",
                    "--set", "model.fusion=sum", "--run-dir", "runs/x", "--resume",
                    "last.ckpt")),
        ("x.md:4", ("info",)),
        ("x.md:5", ("eval", "CONFIG", "--ckpt", "P")),
    ]


def test_robust_dropout_override_on_a_switch() -> None:
    """The documented ``--set train.robust.modality_dropout=0.5`` applies to a config saying
    ``robust: false`` (docs/robustness.md): robust training on, with that dropout."""
    from fusionseg.config import load_config

    assert load_config(STAND_IN).train.robust.enabled is False
    cfg = check_config(STAND_IN, ["train.robust.modality_dropout=0.5"])
    assert cfg.train.robust.enabled is True
    assert cfg.train.robust.modality_dropout == 0.5
    documented = [c for c in COMMANDS if "train.robust.modality_dropout=0.5" in c.args]
    assert documented, "the docs no longer show train.robust.modality_dropout=0.5"


@pytest.mark.parametrize("line", [
    "fusionseg trian configs/quickstart.yaml",  # no such command
    "fusionseg train configs/quickstart.yaml --epochs 2",  # no such option
    "fusionseg train configs/nope.yaml",  # no such config
    "fusionseg train configs/quickstart.yaml --set train.max_epoch=2",  # unknown key
    "fusionseg train configs/quickstart.yaml --set train.max_epochs=two",  # mistyped value
    "fusionseg train configs/quickstart.yaml --set model.fusion=sum",  # key sum_fusion lacks
    "fusionseg train configs/quickstart.yaml --set model.backbone=mit_b9",
    "fusionseg train CONFIG --set train.robust=maybe",  # overrides checked on the stand-in
    "fusionseg eval configs/quickstart.yaml --ckpt x.ckpt --protocol emn",
    "fusionseg eval configs/quickstart.yaml --ckpt x.ckpt --missing rgb,lidar",
    "fusionseg eval configs/quickstart.yaml",  # --ckpt is required
    "fusionseg bench configs/quickstart.yaml --precision bf16",
    "fusionseg data synth city --out d --size big",
    "fusionseg weights fetch mit_b9",
    "fusionseg predict --ckpt a.ckpt --input x --out o --spec depth8",
])
def test_wrong_commands_fail(line: str, monkeypatch) -> None:
    """The checks catch what a reader would hit: each of these commands is wrong."""
    monkeypatch.chdir(ROOT)
    (command,) = _commands_of_line(line, "x.md:1", {})
    with pytest.raises(Exception):  # noqa: B017, PT011 - any error of the CLI or the checks
        check_command(command)
