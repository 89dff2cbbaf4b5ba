"""Typed method options: one declaration gives the constructor, config validation and
``fusionseg info METHOD``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import pytest
import torch
from fixtures import toy_method  # noqa: F401,E402  (registers toy_aux: parametrising over MODELS must not depend on which test modules were collected first)
from pydantic import Field
from typer.testing import CliRunner

from fusionseg.cli import app
from fusionseg.config import config_from_dict
from fusionseg.errors import ConfigError
from fusionseg.models import MODELS, create_model
from fusionseg.models.backbones.mit import MIT_TINY, MixVisionTransformer
from fusionseg.models.options import (
    BackboneKwargs,
    BackboneOptions,
    DropPathRate,
    MethodOptions,
    Pretrained,
    describe_options,
    resolve_options,
    type_name,
    validate_options,
)
from fusionseg.models.registry import options_of

ROOT = Path(__file__).resolve().parents[2]


class _Toy(MethodOptions):
    width: int = Field(8, gt=0, description="channels")
    mode: Literal["a", "b"] = Field("a", description="which")
    scale: float | None = Field(None, description="optional scale")


def test_type_names_are_readable():
    assert type_name(int) == "int"
    assert type_name(tuple[str, ...]) == "tuple[str, ...]"
    assert type_name(Literal["a", "b"]) == "'a' | 'b'"
    assert type_name(float | None) == "float | None"
    assert type_name(str | Path | None) == "str | path | None"


def test_describe_options_lists_fields_in_order_with_defaults_and_docs():
    rows = describe_options(_Toy)
    assert [r.name for r in rows] == ["num_classes", "modalities", "width", "mode", "scale"]
    assert rows[0].default == "required" and rows[0].type == "int"
    assert rows[2] == ("width", "int", "8", "channels")
    assert rows[3].type == "'a' | 'b'" and rows[3].default == "'a'"


@pytest.mark.parametrize(("values", "expected"), [
    ({"num_classes": 3, "width": "wide"}, r"width: .*valid integer.*'wide'"),
    ({"num_classes": 3, "mode": "c"}, r"mode: .*'a' or 'b'.*'c'"),
    ({"num_classes": 3, "depth": 2}, r"unknown option 'depth'"),
    ({"width": 2}, r"missing required option 'num_classes'"),
    ({"num_classes": 0}, r"num_classes: .*greater than 0"),
    ({"num_classes": 3, "modalities": ["rgb", "rgb"]}, r"duplicate modalities \['rgb'\]"),
])
def test_validation_errors_are_one_line_naming_the_valid_options(values, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        validate_options("toy", _Toy, values)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("model 'toy': ")
    assert msg.endswith("Valid options: num_classes: int, modalities: tuple[str, ...], "
                        "width: int, mode: 'a' | 'b', scale: float | None")


def test_resolve_takes_an_instance_or_keywords_not_both():
    o = _Toy(num_classes=2)
    assert resolve_options(_Toy, o, {}) is o
    assert resolve_options(_Toy, None, {"num_classes": 2, "width": 4}).width == 4
    with pytest.raises(ConfigError, match="not both"):
        resolve_options(_Toy, o, {"width": 4})


def test_every_registered_segmentor_declares_typed_options():
    """Each built-in method is a Segmentor class whose options are declared once (the
    builder-function copies are gone) and documented field by field."""
    built_in = [n for n in MODELS.names()
                if MODELS.get(n).__module__.startswith("fusionseg.")]  # not test fixtures
    assert {"sum_fusion", "stitchfusion", "mle_sam", "mobanet", "asymfusion"} <= set(built_in)
    for name in built_in:
        opts = options_of(name)
        assert opts is not None, f"{name}: no typed options"
        assert all(r.doc for r in describe_options(opts)), f"{name}: an option without doc"
        tiny = MODELS.entry(name).tiny
        model = create_model({"name": name, **tiny})
        assert model.options == opts.model_validate(tiny)


def test_config_validates_method_options_by_name():
    raw = {"model": {"name": "sum_fusion", "reduce": "max"}}
    with pytest.raises(ConfigError, match=r"model: model 'sum_fusion': reduce: .*'max'"):
        config_from_dict(raw)
    with pytest.raises(ConfigError, match=r"unknown backbone 'mit_b9'"):
        config_from_dict({"model": {"name": "sum_fusion", "backbone": "mit_b9"}})
    cfg = config_from_dict({"model": {"name": "sum_fusion", "reduce": "gate"}})
    assert cfg.model.to_dict()["reduce"] == "gate"  # num_classes still from the dataset


def test_info_method_prints_the_options_table():
    out = CliRunner().invoke(app, ["info", "sum_fusion"])
    assert out.exit_code == 0, out.output
    for text in ("reduce", "'mean' | 'sum' |", "gate_lr_mult", "10.0", "required"):
        assert text in out.output
    bad = CliRunner().invoke(app, ["info", "nope"])
    assert bad.exit_code == 2 and "unknown model 'nope'" in bad.output


# ---------------------------------------------------------------------- backbone options
@pytest.mark.parametrize(("model", "expected"), [
    # the method takes MiT only: named before anything is built
    ({"name": "stitchfusion", "backbone": "resnet50"},
     r"model 'stitchfusion': backbone: .*stitchfusion takes a backbone of type "
     r"MixVisionTransformer \(mit_b0, mit_b1, mit_b2, mit_b3, mit_b4, mit_b5\), "
     r"not 'resnet50' \(ResNet\)"),
    # sum_fusion passes its drop_path_rate option to any backbone; a ResNet has none
    ({"name": "sum_fusion", "backbone": "resnet50"},
     r"model 'sum_fusion': backbone: .*'resnet50' \(ResNet\) takes no drop_path_rate"),
    ({"name": "asymfusion", "backbone": "mit_b0"},
     r"asymfusion takes a backbone of type ResNet \(resnet101, resnet152, resnet50\)"),
    ({"name": "mle_sam", "backbone": "mit_b0"},
     r"mle_sam takes a backbone of type Hiera or SamVisionTransformer \(sam2\.1_hiera_b\+"),
    ({"name": "mobanet", "backbone": "mit_b0"}, r"mobanet takes a backbone of type ViTBackbone"),
    ({"name": "sum_fusion", "backbone": "mit_b0", "backbone_kwargs": {"widths": 3}},
     r"backbone_kwargs: .*backbone 'mit_b0' \(MixVisionTransformer\) does not take 'widths'; "
     r"it takes embed_dims, depths, num_heads, sr_ratios, mlp_ratio, drop_path_rate, in_chans, "
     r"qkv_bias"),
    ({"name": "mle_sam", "backbone_kwargs": {"pretrained": "x.pt"}},
     r"backbone_kwargs: .*must not repeat \['pretrained'\]"),
    ({"name": "stitchfusion", "backbone_kwargs": {"drop_path_rate": 0.2}},
     r"backbone_kwargs: .*must not repeat \['drop_path_rate'\]"),
])
def test_backbone_errors_are_one_line_config_errors(model, expected):
    """A backbone the method cannot use is a one-line ConfigError when the config is read (and
    from create_model), not a TypeError from inside the backbone's constructor."""
    with pytest.raises(ConfigError, match=expected) as err:
        create_model({"num_classes": 3, **model})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=expected):
        config_from_dict({"model": model})


def test_backbone_options_subclass_must_declare_the_backbone_fields():
    with pytest.raises(TypeError, match=r"_NoKwargs must declare the backbone fields "
                       r"\['backbone_kwargs', 'drop_path_rate'\]"):
        class _NoKwargs(BackboneOptions):
            backbone_overrides: ClassVar[tuple[str, ...]] = ("drop_path_rate",)
            backbone: str = Field("mit_b0", description="encoder")
            pretrained: Pretrained = None


def test_backbone_options_keep_the_declared_order_and_shared_types():
    class _Opts(BackboneOptions):
        backbone_overrides: ClassVar[tuple[str, ...]] = ("drop_path_rate",)
        width: int = Field(8, description="channels")
        backbone: str = Field("mit_b0", description="encoder")
        drop_path_rate: DropPathRate = 0.2
        pretrained: Pretrained = None
        backbone_kwargs: BackboneKwargs = None

    rows = describe_options(_Opts)
    assert [r.name for r in rows] == ["num_classes", "modalities", "width", "backbone",
                                      "drop_path_rate", "pretrained", "backbone_kwargs"]
    assert rows[4] == ("drop_path_rate", "float", "0.2", "encoder stochastic depth")
    assert rows[5].type == "str | path | None" and rows[5].default == "None"
    with pytest.raises(ConfigError, match=r"drop_path_rate: .*less than 1"):
        validate_options("opts", _Opts, {"num_classes": 2, "drop_path_rate": 1.0})
    o = validate_options("opts", _Opts, {"num_classes": 2, "drop_path_rate": 0.0,
                                         "backbone_kwargs": MIT_TINY})
    bb = o.build_backbone()
    assert isinstance(bb, MixVisionTransformer) and bb.embed_dims == list(MIT_TINY["embed_dims"])
    assert all(isinstance(blk.drop_path, torch.nn.Identity) for blk in bb.blocks_of(3))


@pytest.mark.parametrize("name", ["sum_fusion", "stitchfusion", "mle_sam", "mobanet",
                                  "asymfusion"])
def test_an_unset_backbone_is_the_methods_own_default(name):
    """``model.backbone`` left out of a config means the method's default (not MiT-B0 for
    every method), filled in when the config is read and passed on to create_model."""
    cfg = config_from_dict({"model": {"name": name, "modalities": ["rgb", "depth"]}})
    default = options_of(name).model_fields["backbone"].default
    assert cfg.model.backbone == default and cfg.model.to_dict()["backbone"] == default
    assert {"sum_fusion": "mit_b0", "asymfusion": "resnet101"}.get(name, default) == default
