"""The backbone registry helpers: the class a name builds, the arguments it takes, one builder
per published setting (``register_variants``), the plain-ViT stage layout (``ViTBackbone``)."""

from __future__ import annotations

import pytest
import torch

from fusionseg.errors import ConfigError
from fusionseg.models.backbones import (
    BACKBONES,
    ViTBackbone,
    backbone_class,
    backbone_parameters,
    create_backbone,
)
from fusionseg.models.backbones.dinov2 import DINOV2_TINY, DinoVisionTransformer
from fusionseg.models.backbones.hiera import SAM21_HIERA_SETTINGS, Hiera
from fusionseg.models.backbones.mit import MixVisionTransformer
from fusionseg.models.backbones.resnet import ResNet
from fusionseg.models.backbones.sam_vit import SAM_TINY, SamVisionTransformer
from fusionseg.models.layers import drop_path_rates


def test_every_registered_backbone_declares_its_class():
    assert backbone_class("mit_b2") is MixVisionTransformer
    assert backbone_class("dinov2_vitl14_reg4") is DinoVisionTransformer
    assert backbone_class("sam2.1_hiera_b+") is Hiera
    assert backbone_class("sam_vit_h") is SamVisionTransformer
    assert backbone_class("resnet101") is ResNet
    assert all(backbone_class(n) is not None for n in BACKBONES.names())
    with pytest.raises(ConfigError, match="unknown backbone 'nope'"):
        backbone_class("nope")


def test_backbone_parameters_are_the_constructor_keywords():
    assert backbone_parameters("resnet50") == ["layers", "width", "in_chans",
                                               "zero_init_residual"]
    assert "drop_path_rate" in backbone_parameters("dinov2_vits14")


def test_create_backbone_names_an_override_the_backbone_does_not_take():
    with pytest.raises(ConfigError, match=r"^backbone 'resnet50' \(ResNet\) does not take "
                       r"'drop_path_rate'; it takes layers, width, in_chans, "
                       r"zero_init_residual$"):
        create_backbone("resnet50", drop_path_rate=0.1)


def test_register_variants_builds_each_published_setting():
    build = BACKBONES.get("sam2.1_hiera_b+")
    assert build.__name__ == "sam2_1_hiera_b_plus"
    assert build.__doc__ == ("Build the sam2.1_hiera_b+ trunk (official SAM 2.1 config, "
                             "overridable by keyword).")
    # the published settings, an override replacing one of them
    m = build(stages=(1, 1, 3, 1), global_att_blocks=(3,), window_spec=(4, 4, 4, 2))
    assert m.embed_dim == SAM21_HIERA_SETTINGS["sam2.1_hiera_b+"]["embed_dim"] == 112
    assert len(m.blocks) == 6 and list(m.global_att_blocks) == [3]
    assert BACKBONES.entry("mit_b1").info == {"decoder_dim": 256}
    assert BACKBONES.entry("mit_b2").info == {"decoder_dim": 512}
    assert BACKBONES.entry("dinov2_vitg14_reg4").tiny == {**DINOV2_TINY, "ffn": "swiglu",
                                                          "num_register_tokens": 2}


def test_drop_path_rates_are_linear_from_zero():
    assert drop_path_rates(0.2, 5) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert drop_path_rates(0.3, 1) == [0.0]


@pytest.mark.parametrize(("name", "tiny", "side"), [("dinov2_vits14", DINOV2_TINY, 28),
                                                   ("sam_vit_b", SAM_TINY, 32)])
def test_vit_stages_are_the_blocks_up_to_each_tap(name, tiny, side):
    m = create_backbone(name, **{**tiny, "out_indices": (1, 3)}).eval()
    assert isinstance(m, ViTBackbone)
    assert [len(m.blocks_of(0)), len(m.blocks_of(1))] == [2, 2]
    assert m.blocks_of(1)[0] is m.blocks[2]
    assert m.strides == (m.patch_size,) * 2 and m.input_multiple == m.patch_size
    feats = m(torch.randn(1, 3, side, side))
    g = side // m.patch_size
    assert [tuple(f.shape) for f in feats] == [(1, m.embed_dim, g, g)] * 2
    with pytest.raises(ValueError, match=f"multiples of {m.patch_size}, got 30x30"):
        m(torch.randn(1, 3, 30, 30))
    with pytest.raises(ConfigError, match=r"out_indices must be increasing block indices, "
                       r"got \[2, 1\]"):
        create_backbone(name, **{**tiny, "out_indices": (2, 1)})
    with pytest.raises(ConfigError, match=r"out_indices \[1, 4\] outside the 4 blocks"):
        create_backbone(name, **{**tiny, "out_indices": (1, 4)})
