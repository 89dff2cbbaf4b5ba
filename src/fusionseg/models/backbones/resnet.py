"""ResNet-50/101/152 (bottleneck, v1.5) with torchvision's key names, without torchvision.

Kaiming He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; the stride of a
stage's first block sits on its 3x3 convolution ("v1.5", as in torchvision's
``torchvision/models/resnet.py``). Module and parameter names are torchvision's, so its ImageNet
files (``resnet50-0676ba61.pth``, ``resnet50-11ad3fa6.pth``, ``resnet101-63fe2227.pth``,
``resnet152-394f9c45.pth``, ...) load strictly after :func:`checkpoint_filter_fn` drops
their classifier ``fc.weight`` / ``fc.bias``::

    conv1 (7x7 s2) bn1 -> maxpool (3x3 s2)
    layer{1..4}.{i}.conv1 / bn1 / conv2 / bn2 / conv3 / bn3 [/ downsample.0 (1x1) / .1 (BN)]

``forward(x [B, 3, H, W]) -> [c2, c3, c4, c5]`` with 256, 512, 1024, 2048 channels at strides 4,
8, 16, 32 (``ceil`` sizes). ``input_multiple`` is 32: decoders that add upsampled maps to
lateral ones (RefineNet, FPN) need the exact factor-2 relations, so segmentors pad to it.
Parameters without the classifier: ResNet-50 23,508,032, ResNet-101 42,500,160, ResNet-152
58,143,808 (torchvision's totals minus the 2,049,000 of ``fc``).

The file registers the builders ``resnet50 / 101 / 152``, the family ``resnet`` (torchvision
files recognised by :func:`recognise_state_dict`) and torchvision's ImageNet files of the
catalogue (:data:`PRETRAINED`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ...errors import ConfigError
from ..catalogue import PretrainedWeights, register_pretrained
from .base import Backbone, register_variants, strip_prefixes
from .formats import BackboneFamily, DetectedBackbone, count_indices, register_family

__all__ = [
    "PRETRAINED",
    "RESNET_LAYERS",
    "RESNET_TINY",
    "Bottleneck",
    "ResNet",
    "checkpoint_filter_fn",
    "recognise_state_dict",
]

#: blocks per stage (torchvision ``resnet50 / 101 / 152``)
RESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
}

#: tiny constructor overrides used by the contract tests
RESNET_TINY = dict(layers=(1, 1, 1, 1), width=8)


class Bottleneck(nn.Module):
    """``conv1 1x1 -> conv2 3x3 (stride) -> conv3 1x1 (x4)``, BN + ReLU, residual
    (``downsample`` = 1x1 conv + BN where shape changes). ``[B, C_in, H, W] -> [B, 4p, H/s, W/s]``.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor],
                         model: nn.Module | None = None) -> dict[str, Tensor]:
    """torchvision files -> our keys (the same names): ``module.`` / ``backbone.`` prefixes
    carried by every key stripped (unless ``model``'s own keys carry them), the ImageNet
    classifier ``fc.*`` dropped. Idempotent on ``model``'s own state dict."""
    own = model.state_dict() if model is not None else {}
    sd = strip_prefixes(state_dict, ("module.", "backbone."), list(own))
    return {k: v for k, v in sd.items() if not (k.startswith("fc.") and k not in own)}


class ResNet(Backbone):
    """Bottleneck ResNet encoder (see the module docstring).

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)``.
        width: channels of ``conv1`` and of the first stage's bottleneck (64); stage ``i`` uses
            ``width * 2**i`` bottleneck channels and outputs 4x that.
        in_chans: 3.
        zero_init_residual: zero the last BN scale of every block (off, as torchvision's
            default).

    With :meth:`set_grad_checkpointing` each bottleneck is recomputed in backward (in training
    mode with gradients on); BatchNorm layers in training mode normalise the recomputation with
    the same batch statistics and update their running statistics once per forward, as without
    checkpointing (:func:`~fusionseg.models.backbones.base.checkpoint_call`).

    Raises:
        ValueError: ``layers`` without 4 entries; at forward, an input that is not
            ``[B, in_chans, H, W]``.
    """

    strides = (4, 8, 16, 32)
    input_multiple = 32
    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), width: int = 64, in_chans: int = 3,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ConfigError(f"layers must have 4 entries (one per stage), got {list(layers)}")
        self.in_chans = int(in_chans)
        self.layers = [int(n) for n in layers]
        self.width = int(width)
        self.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        for i, n in enumerate(self.layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(inplanes, planes, stride=2 if (j == 0 and i > 0) else 1))
                inplanes = planes * Bottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    @property
    def out_channels(self) -> list[int]:
        """``[4w, 8w, 16w, 32w]`` (256 .. 2048 for ``width = 64``)."""
        return [self.width * 2**i * Bottleneck.expansion for i in range(4)]

    def stage(self, i: int) -> nn.Sequential:
        """``layer{i+1}`` (0-based ``i``)."""
        return getattr(self, f"layer{i + 1}")

    def stem(self, x: Tensor) -> Tensor:
        """``maxpool(relu(bn1(conv1(x))))``, ``[B, w, H/4, W/4]``."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, in_chans, H, W] -> [c2, c3, c4, c5]``."""
        self.check_input(x)
        x = self.stem(x)
        outs = []
        for i in range(4):
            for blk in self.stage(i):
                x = self.maybe_checkpoint(blk, x)
            outs.append(x)
        return outs


# --------------------------------------------------------------------------- recognition
def recognise_state_dict(sd: Mapping[str, Tensor]) -> DetectedBackbone | None:
    """Our ResNet for a torchvision file (its classifier ``fc.*`` allowed), or ``None``. Read
    from the weights: blocks per stage, width, input channels."""
    if not ("conv1.weight" in sd and "layer1.0.conv1.weight" in sd and "bn1.running_mean" in sd):
        return None
    enc = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    layers = [count_indices(enc, rf"^layer{i}\.(\d+)\.conv1\.weight$") for i in range(1, 5)]
    w = enc["conv1.weight"]
    found = dict(layers=layers, width=int(w.shape[0]), in_chans=int(w.shape[1]))
    return FAMILY.match(found, "official", "state dict")


# --------------------------------------------------------------------------- registration
_TV = "torchvision IMAGENET1K_V1 (pytorch/vision)"

#: torchvision's ImageNet files; the file names end with the first 8 hex digits of the file's
#: SHA-256 (the ``torch.hub`` ``check_hash`` convention), checked as a prefix
PRETRAINED: tuple[PretrainedWeights, ...] = tuple(
    PretrainedWeights(
        f"resnet{depth}", f"resnet{depth}", ("asymfusion",), _TV, f"resnet{depth}-{h}.pth",
        f"https://download.pytorch.org/models/resnet{depth}-{h}.pth", mb, sha256=h)
    for depth, h, mb in (("50", "0676ba61", 102.5), ("101", "63fe2227", 178.8),
                         ("152", "394f9c45", 241.5)))


_SETTINGS = {n: {"layers": v} for n, v in RESNET_LAYERS.items()}
register_variants(ResNet, _SETTINGS, "Build {name} (torchvision layout, overridable by keyword).",
                  tiny=RESNET_TINY)

FAMILY = register_family(BackboneFamily(
    "resnet", ResNet, _SETTINGS, recognise_state_dict=recognise_state_dict))
register_pretrained(*PRETRAINED)
