"""ResNet backbone: torchvision key names and parameter counts, strict loading of a
torchvision-format file (classifier dropped), shapes."""

from __future__ import annotations

import pytest
import torch

from fusionseg.models import CheckpointMismatchError, create_backbone
from fusionseg.models.backbones.resnet import RESNET_TINY


def tiny(seed=0):
    torch.manual_seed(seed)
    m = create_backbone("resnet50", **RESNET_TINY).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
    return m


def test_torchvision_key_names():
    keys = set(tiny().state_dict())
    assert {"conv1.weight", "bn1.running_var", "bn1.num_batches_tracked",
            "layer1.0.conv3.weight", "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.running_mean", "layer4.0.bn2.bias"} <= keys
    assert not any(k.startswith("fc.") for k in keys)


@pytest.mark.parametrize("name, params", [("resnet50", 23_508_032), ("resnet101", 42_500_160),
                                          ("resnet152", 58_143_808)])
def test_parameter_counts_are_torchvisions_without_fc(name, params):
    with torch.device("meta"):
        m = create_backbone(name)
    assert sum(p.numel() for p in m.parameters()) == params
    assert m.out_channels == [256, 512, 1024, 2048] and m.input_multiple == 32


def test_torchvision_file_loads_strictly(tmp_path):
    src = tiny()
    sd = dict(src.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    torch.save(sd, tmp_path / "resnet50-tiny.pth")
    dst = create_backbone("resnet50", pretrained=tmp_path / "resnet50-tiny.pth",
                          **RESNET_TINY).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outs = dst(x)
        for a, b in zip(outs, src(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [tuple(o.shape[1:]) for o in outs] == [(32, 16, 24), (64, 8, 12), (128, 4, 6),
                                                  (256, 2, 3)]
    del sd["layer2.0.bn1.running_mean"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointMismatchError, match="layer2.0.bn1.running_mean"):
        create_backbone("resnet50", pretrained=tmp_path / "broken.pth", **RESNET_TINY)
