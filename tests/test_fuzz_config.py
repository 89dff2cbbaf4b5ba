"""Property-based fuzzing of ``--set`` overrides (issue 20, item 5).

``load_config(configs/quickstart.yaml, overrides)`` with random keys (real and unreal dotted
paths, empty segments, blanks, unicode, control characters, ``=`` inside values) and random
values (ints, floats, NaN / inf, YAML lists and mappings, strings, booleans, null, malformed
YAML, anchors and aliases, binary): the result is a :class:`ConfigError` (one line, naming the
override's key) or a valid :class:`Config` that a run can save as JSON, never another exception.
The command line prints such an error as one line and exits 2.

Deterministic (``derandomize=True``, no example database); the examples that found bugs are
pinned with ``@example``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fusionseg.cli import app
from fusionseg.config import Config, ConfigError, apply_overrides, load_config

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow],
)


def _real_keys() -> list[str]:
    keys = ["name", "seed", "model", "data", "train", "eval"]
    for section in ("model", "data", "train", "eval"):
        model = Config.model_fields[section].annotation
        keys += [f"{section}.{f}" for f in model.model_fields]
    return keys + ["train.robust.enabled", "train.robust.modality_dropout", "train.loss.name",
                   "train.loss.thresh", "data.options.conditions", "model.backbone_kwargs.depths",
                   "train.aux_weight", "train.ohem_thresh", "eval.window.0"]


REAL_KEYS = _real_keys()
key_text = st.text(st.sampled_from("abz_.= \t\n\x00é名\u2028-"), max_size=12)
keys = st.one_of(
    st.sampled_from(REAL_KEYS),
    st.builds(lambda k, junk: f"{k}{junk}", st.sampled_from(REAL_KEYS), key_text),
    st.builds(lambda junk, k: f"{junk}{k}", key_text, st.sampled_from(REAL_KEYS)),
    key_text,
)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
)
yaml_values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=8,
).map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").strip())
MALFORMED = ["[", "{a: 1", "]", "'unterminated", "a: b: c", "- a\n- b", "\t", "%YAML 1.1", "---\n---",
             "*undefined", "&a [*a]", "&a {x: *a}", "!!binary AAAA", "!!python/object:os.system x",
             "!!int x", "!!float x", "!!timestamp x", "[" * 2000, "[" * 300 + "]" * 300,
             "9" * 5000, ".nan", ".inf", "-.inf", "NaN", "inf", "1e400", "1.0e400", "0x1F", "0b12",
             "1:30", "2020-01-01", "~", "", "a=b=c", "{? [1, 2] : 3}", "!!set {a, b}", "[1, .nan]"]
values = st.one_of(
    st.sampled_from(MALFORMED), yaml_values, st.text(max_size=20),
    st.builds(lambda a, b: f"{a}={b}", st.text(max_size=6), st.text(max_size=6)),
)
overrides = st.builds(lambda k, v: f"{k}={v}", keys, values)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _check(items: list[str]) -> Config | None:
    """The property: a valid, JSON-saveable Config, or a one-line ConfigError naming a key."""
    try:
        cfg = load_config(QUICKSTART, items)
    except ConfigError as err:
        msg = str(err)
        assert msg and all(c.isprintable() for c in msg), repr(msg)  # one line, no controls
        named = []
        for item in items:
            key = item.split("=", 1)[0]
            first = key.split(".")[0].strip()
            named += [_printable(item), _printable(first)] if first else [_printable(item)]
        assert any(n and n in msg for n in named), (items, msg)
        return None
    assert isinstance(cfg, Config)
    json.dumps(cfg.model_dump(mode="json"))  # what a run writes as config.json
    for value in (cfg.train.lr, cfg.train.weight_decay, cfg.data.flip_prob, *cfg.data.scale_range):
        assert math.isfinite(value)
    assert cfg.model.modalities and len(set(cfg.model.modalities)) == len(cfg.model.modalities)
    return cfg


@FUZZ
@given(item=overrides)
@example(item="train.lr=.nan")  # was accepted: a NaN learning rate
@example(item="data.flip_prob=.inf")
@example(item="train.lr_stages=[{epochs: .nan}]")
@example(item="model..x=1")  # was accepted: an empty key name became a model option ''
@example(item="=1")
@example(item="seed=" + "9" * 5000)  # ValueError from PyYAML's int constructor
@example(item="name=" + "[" * 2000)  # RecursionError from PyYAML's parser
@example(item="train.lr=!!float x")  # ValueError from PyYAML's float constructor
@example(item="seed=!!timestamp x")  # AttributeError from PyYAML's timestamp constructor
@example(item="model.x=&a [*a]")  # a list containing itself: Config fine, config.json not
@example(item="train.loss=&a {x: *a}")
@example(item="model.x=!!binary /w==")  # bytes: config.json fails (invalid UTF-8)
@example(item="model.x=" + "[" * 300 + "]" * 300)  # too deep to serialize
@example(item="model.modalities=[]")  # error named data.missing_modalities, not this key
@example(item="model.modalities=[rgb, rgb]")  # was accepted
@example(item="train.a\nb=1")  # the error message spanned two lines
@example(item="train.aux_weight=\"a\\nb\"")
@example(item="model.name=a=b")  # '=' inside the value
@example(item=" train . max_epochs =3")  # blanks around names are ignored
def test_one_override(item):
    _check([item])


@FUZZ
@given(items=st.lists(overrides, min_size=2, max_size=4))
def test_several_overrides(items):
    _check(items)


@settings(FUZZ, max_examples=60)
@given(item=overrides)
def test_apply_overrides_never_touches_the_input(item):
    raw = yaml.safe_load(QUICKSTART.read_text())
    before = json.dumps(raw, sort_keys=True)
    try:
        apply_overrides(raw, [item])
    except ConfigError:
        pass
    assert json.dumps(raw, sort_keys=True) == before


def test_fixed_examples_give_the_expected_result():
    """What the fixes decided, spelled out."""
    assert load_config(QUICKSTART, [" train . max_epochs =3"]).train.max_epochs == 3
    assert load_config(QUICKSTART, ["model.name=a=b"]).model.name == "a=b"
    assert load_config(QUICKSTART, ["name=[oops"]).name == "[oops"  # not YAML: kept as text
    for item, words in [
        ("train.lr=.nan", "train.lr: Input should be a finite number"),
        ("model..x=1", "override 'model..x=1': the key must be names joined by dots"),
        ("model.x=&a [*a]", "anchors / aliases"),
        ("model.x=!!binary /w==", "binary values are not supported"),
        ("model.x=" + "[" * 40 + "]" * 40, "nested deeper than 32 levels"),
        ("model.modalities=[]", "model.modalities: name at least one modality"),
        ("model.modalities=[rgb, rgb]", "model.modalities: duplicate modalities ['rgb']"),
        ("train.a\nb=1", "unknown config key 'train.a\\nb'"),
        ("seed=!!int x", "seed: Input should be a valid integer"),
    ]:
        with pytest.raises(ConfigError) as ei:
            load_config(QUICKSTART, [item])
        assert words in str(ei.value), str(ei.value)


runner = CliRunner()


@pytest.mark.parametrize("item,words", [
    ("train.lr=.nan", "train.lr"),
    ("train.a\nb=1", "train.a\\nb"),
    ("model..x=1", "model..x=1"),
    ("model.x=&a [*a]", "anchors"),
])
def test_cli_prints_one_line_and_exits_2(item, words):
    result = runner.invoke(app, ["data", "check", str(QUICKSTART), "--set", item])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.output
    assert "Traceback" not in result.output
