"""Reference re-implementation of the released StitchFusion model, for equivalence tests.

Written for fusionseg's tests from a reading of the official code (GitHub
``LiBingyu01/StitchFusion``: ``semseg/models/backbones/stitchfusion.py``,
``stitchfusion_with_tips_you_can_copy.py``, ``semseg/models/stitchfusion.py``,
``semseg/models/heads/segformer.py``, ``semseg/models/layers/common.py``). It deliberately
follows the release's structure literally and keeps its module names, so its ``state_dict()``
has the released key names:

* explicit attention matrices (``softmax(q k^T * scale) v``);
* a Python list of per-modality tensors passed through every module one modality at a time;
* the block classes ``Block`` (no adapters), ``Block_every_one`` (pairwise,
  ``adap_t_att{i}{j}`` with i < j used in both directions), ``Block_every_two`` (directional,
  one adapter per ordered pair) and ``Block_shared`` (``adap_t`` / ``adap2_t``), including the
  released update loop where ``outputs_orig_before* = outputs`` aliases the list being updated;
* ``nn.LayerNorm(dim)`` with the default eps (1e-5) everywhere, as released;
* ``feature_cross`` built unconditionally in the backbone (``liner_fusion_layers``,
  ``mix_ffn``, ``channel_attns``), used only when ``fusion="featurecross"``; the sum variant
  adds the stream maps, like the DELIVER variant of the tips file;
* the SegFormer head with ``MLP.proj`` per stage and concatenation order c4, c3, c2, c1.

Only the sizes are parameters (so tests can use tiny widths); it is not part of the package.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        kp = 1 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = (kp + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
        return x.div(kp) * mask


# ----------------------------------------------------------------------------- MiT parts
class DWConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x, H, W):
        B, _, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)
        x = self.dwconv(x)
        return x.flatten(2).transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, c1, c2):
        super().__init__()
        self.fc1 = nn.Linear(c1, c2)
        self.dwconv = DWConv(c2)
        self.fc2 = nn.Linear(c2, c1)

    def forward(self, x, H, W):
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), H, W)))


class Attention(nn.Module):
    def __init__(self, dim, head, sr_ratio):
        super().__init__()
        self.head = head
        self.sr_ratio = sr_ratio
        self.scale = (dim // head) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, H, W):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.head, C // self.head).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x = x.permute(0, 2, 1).reshape(B, C, H, W)
            x = self.sr(x).reshape(B, C, -1).permute(0, 2, 1)
            x = self.norm(x)
        k, v = self.kv(x).reshape(B, -1, 2, self.head, C // self.head).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class PatchEmbed(nn.Module):
    def __init__(self, c1, c2, patch_size, stride, padding):
        super().__init__()
        self.proj = nn.Conv2d(c1, c2, patch_size, stride, padding)
        self.norm = nn.LayerNorm(c2)

    def forward(self, x):
        x = self.proj(x)
        _, _, H, W = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x, H, W


# ----------------------------------------------------------------------------- adapters
class Bi_direct_adapter(nn.Module):  # noqa: N801 - released name
    def __init__(self, dim):
        super().__init__()
        self.adapter_down = nn.Linear(dim, 8)
        self.adapter_mid = nn.Linear(8, 8)
        self.adapter_up = nn.Linear(8, dim)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        x_down = self.adapter_down(x)
        x_down = F.gelu(self.adapter_mid(x_down))
        x_down = self.dropout(x_down)
        return self.adapter_up(x_down)


class _BlockBase(nn.Module):
    def __init__(self, dim, head, sr_ratio, dpr):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, head, sr_ratio)
        self.drop_path = DropPath(dpr) if dpr > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * 4))

    def pick(self, kind, i, j):
        """The adapter stream ``i`` sends to stream ``j`` after ``kind`` (0-based)."""
        raise NotImplementedError

    def forward(self, inputs, H, W):
        outputs = [x.clone() for x in inputs]
        # attention, one modality at a time
        outputs_orig_beforeAtt = outputs  # noqa: N806 - the release aliases the same list
        for i in range(len(inputs)):
            x = outputs[i]
            outputs[i] = x + self.drop_path(self.attn(self.norm1(x), H, W))
        for i in range(len(inputs)):
            x_ori = outputs_orig_beforeAtt[i]
            for j in range(len(inputs)):
                if i != j:
                    xi = outputs[j]
                    outputs[j] = xi + self.drop_path(self.pick("att", i, j)(self.norm1(x_ori)))
        # MLP, one modality at a time
        outputs_orig_beforeMLP = outputs  # noqa: N806
        for i in range(len(inputs)):
            x = outputs[i]
            outputs[i] = x + self.drop_path(self.mlp(self.norm2(x), H, W))
        for i in range(len(inputs)):
            x_ori = outputs_orig_beforeMLP[i]
            for j in range(len(inputs)):
                if i != j:
                    xi = outputs[j]
                    outputs[j] = xi + self.drop_path(self.pick("mlp", i, j)(self.norm2(x_ori)))
        return outputs


class Block(_BlockBase):
    def forward(self, inputs, H, W):
        outputs = [x.clone() for x in inputs]
        for i in range(len(inputs)):
            x = outputs[i]
            outputs[i] = x + self.drop_path(self.attn(self.norm1(x), H, W))
        for i in range(len(inputs)):
            x = outputs[i]
            outputs[i] = x + self.drop_path(self.mlp(self.norm2(x), H, W))
        return outputs


class Block_every_one(_BlockBase):  # noqa: N801 - released name (pairwise)
    def __init__(self, dim, head, sr_ratio, dpr, num_modalities):
        super().__init__(dim, head, sr_ratio, dpr)
        for i in range(num_modalities):
            for j in range(num_modalities):
                if i < j:
                    setattr(self, f"adap_t_att{i + 1}{j + 1}", Bi_direct_adapter(dim))
                    setattr(self, f"adap_t_mlp{i + 1}{j + 1}", Bi_direct_adapter(dim))

    def pick(self, kind, i, j):
        a, b = (i, j) if i < j else (j, i)
        return getattr(self, f"adap_t_{kind}{a + 1}{b + 1}")


class Block_every_two(_BlockBase):  # noqa: N801 - released name (directional)
    def __init__(self, dim, head, sr_ratio, dpr, num_modalities):
        super().__init__(dim, head, sr_ratio, dpr)
        for i in range(num_modalities):
            for j in range(num_modalities):
                if i != j:
                    setattr(self, f"adap_t_att{i + 1}{j + 1}", Bi_direct_adapter(dim))
                    setattr(self, f"adap_t_mlp{i + 1}{j + 1}", Bi_direct_adapter(dim))

    def pick(self, kind, i, j):
        return getattr(self, f"adap_t_{kind}{i + 1}{j + 1}")


class Block_shared(_BlockBase):  # noqa: N801 - released name (shared)
    def __init__(self, dim, head, sr_ratio, dpr, num_modalities):
        super().__init__(dim, head, sr_ratio, dpr)
        self.adap_t = Bi_direct_adapter(dim)
        self.adap2_t = Bi_direct_adapter(dim)

    def pick(self, kind, i, j):
        return self.adap_t if kind == "att" else self.adap2_t


BLOCKS = {"pairwise": Block_every_one, "directional": Block_every_two, "shared": Block_shared}


# ----------------------------------------------------------------------------- FeatureCross
class CustomDWConv(nn.Module):
    def __init__(self, dim, kernel):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel, 1, padding="same", groups=dim)

    def forward(self, x, H, W):
        B, _, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)
        return self.dwconv(x).flatten(2).transpose(1, 2)


class CustomPWConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.pwconv = nn.Conv2d(dim, dim, 1)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x, H, W):
        B, _, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)
        return self.bn(self.pwconv(x)).flatten(2).transpose(1, 2)


class ChannelAttentionBlock(nn.Module):
    def __init__(self, channel, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x, H, W):
        B, _, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, H, W)
        y = self.avg_pool(x).view(B, C)
        y = self.fc(y).view(B, C, 1, 1)
        return (x * y.expand_as(x)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    def __init__(self, c1, c2):
        super().__init__()
        self.fc1 = nn.Linear(c1, c2)
        self.pwconv1 = CustomPWConv(c2)
        self.dwconv3 = CustomDWConv(c2, 3)
        self.dwconv5 = CustomDWConv(c2, 5)
        self.dwconv7 = CustomDWConv(c2, 7)
        self.pwconv2 = CustomPWConv(c2)
        self.fc2 = nn.Linear(c2, c1)

    def forward(self, x, H, W):
        x = self.fc1(x)
        x = self.pwconv1(x, H, W)
        x1 = self.dwconv3(x, H, W)
        x2 = self.dwconv5(x, H, W)
        x3 = self.dwconv7(x, H, W)
        return self.fc2(F.gelu(self.pwconv2(x + x1 + x2 + x3, H, W)))


class FeatureCross(nn.Module):
    def __init__(self, channels, num_modals):
        super().__init__()
        self.liner_fusion_layers = nn.ModuleList(nn.Linear(c * num_modals, c) for c in channels)
        self.mix_ffn = nn.ModuleList(MixFFN(c, c) for c in channels)
        self.channel_attns = nn.ModuleList(ChannelAttentionBlock(c) for c in channels)

    def forward(self, x, layer_idx):
        B, C, H, W = x[0].shape
        x = torch.cat(x, dim=1)
        x = x.flatten(2).transpose(1, 2)
        x_sum = self.liner_fusion_layers[layer_idx](x)
        x_sum = self.mix_ffn[layer_idx](x_sum, H, W) + self.channel_attns[layer_idx](x_sum, H, W)
        return x_sum.reshape(B, H, W, -1).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------- encoder
class stitchfusion(nn.Module):  # noqa: N801 - released name
    """The released encoder. ``stage_blocks``: per stage ``None`` (plain ``Block``) or a key of
    :data:`BLOCKS`; ``fusion``: ``"sum"`` or ``"featurecross"``."""

    def __init__(self, embed_dims, depths, heads, sr_ratios, num_modals, stage_blocks, fusion):
        super().__init__()
        dpr = [x.item() for x in torch.linspace(0, 0.1, sum(depths))]
        self.fusion = fusion
        cur = 0
        for i in range(4):
            patch_embed = PatchEmbed(
                3 if i == 0 else embed_dims[i - 1],
                embed_dims[i],
                7 if i == 0 else 3,
                4 if i == 0 else 2,
                7 // 2 if i == 0 else 3 // 2,
            )
            kind = stage_blocks[i]
            if kind is None:
                block = nn.ModuleList(
                    Block(embed_dims[i], heads[i], sr_ratios[i], dpr[cur + j])
                    for j in range(depths[i])
                )
            else:
                block = nn.ModuleList(
                    BLOCKS[kind](embed_dims[i], heads[i], sr_ratios[i], dpr[cur + j], num_modals)
                    for j in range(depths[i])
                )
            setattr(self, f"patch_embed{i + 1}", patch_embed)
            setattr(self, f"block{i + 1}", block)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i]))
            cur += depths[i]
        self.feature_cross = FeatureCross(embed_dims, num_modals)

    def forward(self, x):
        x_in = [t.clone() for t in x]
        B = x[0].shape[0]
        outs = []
        for i in range(4):
            patch_embed = getattr(self, f"patch_embed{i + 1}")
            for kk in range(len(x)):
                x_in[kk], H, W = patch_embed(x_in[kk])
            block = getattr(self, f"block{i + 1}")
            for blk in block:
                x_in = blk(x_in, H, W)
            norm = getattr(self, f"norm{i + 1}")
            for kk in range(len(x)):
                x_in[kk] = norm(x_in[kk]).reshape(B, H, W, -1).permute(0, 3, 1, 2)
            if self.fusion == "featurecross":
                outs.append(self.feature_cross(x_in, layer_idx=i))
            else:
                outs.append(torch.sum(torch.stack(x_in), dim=0))
        return outs


# ----------------------------------------------------------------------------- head + model
class HeadMLP(nn.Module):
    def __init__(self, dim, embed_dim):
        super().__init__()
        self.proj = nn.Linear(dim, embed_dim)

    def forward(self, x):
        return self.proj(x.flatten(2).transpose(1, 2))


class ConvModule(nn.Module):
    def __init__(self, c1, c2):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, 1, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.activate = nn.ReLU(True)

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class SegFormerHead(nn.Module):
    def __init__(self, dims, embed_dim, num_classes):
        super().__init__()
        for i, dim in enumerate(dims):
            self.add_module(f"linear_c{i + 1}", HeadMLP(dim, embed_dim))
        self.linear_fuse = ConvModule(embed_dim * 4, embed_dim)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)

    def forward(self, features):
        B, _, H, W = features[0].shape
        outs = [self.linear_c1(features[0]).permute(0, 2, 1).reshape(B, -1, H, W)]
        for i, feature in enumerate(features[1:]):
            cf = getattr(self, f"linear_c{i + 2}")(feature).permute(0, 2, 1)
            cf = cf.reshape(B, -1, *feature.shape[-2:])
            outs.append(F.interpolate(cf, size=(H, W), mode="bilinear", align_corners=False))
        seg = self.linear_fuse(torch.cat(outs[::-1], dim=1))
        return self.linear_pred(self.dropout(seg))


class StitchFusionRelease(nn.Module):
    """``backbone`` + ``decode_head``; ``forward(list of [B, 3, H, W]) -> [B, K, H, W]``."""

    def __init__(
        self,
        num_classes,
        num_modals,
        stage_blocks=("pairwise",) * 4,
        fusion="sum",
        embed_dims=(32, 64, 160, 256),
        depths=(2, 2, 2, 2),
        heads=(1, 2, 5, 8),
        sr_ratios=(8, 4, 2, 1),
        decoder_dim=256,
    ):
        super().__init__()
        self.backbone = stitchfusion(
            embed_dims, depths, heads, sr_ratios, num_modals, list(stage_blocks), fusion
        )
        self.decode_head = SegFormerHead(embed_dims, decoder_dim, num_classes)

    def forward(self, x: list[Tensor]) -> Tensor:
        y = self.decode_head(self.backbone(x))
        return F.interpolate(y, size=x[0].shape[2:], mode="bilinear", align_corners=False)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and BatchNorm buffer with seeded random values (in place).

    Weights ~ N(0, 0.2^2) scaled by ``1/sqrt(fan_in)``-like factors keep activations finite;
    LayerNorm/BatchNorm scales near 1; BN running variances positive.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = ".norm" in name or ".bn." in name
            if p.ndim == 1 and is_norm and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model
