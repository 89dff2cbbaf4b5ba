"""Reference re-implementation of the released MoBaNet model, for equivalence tests.

Written for fusionseg's tests from a reading of the official code (GitHub ``sauryeo/MoBaNet``:
``Net.py``, ``Model/models/dinov2/build_dinov2.py``, ``Model/models/ImageEncoder/vit/
peft_modules.py`` and the vendored ``dinov2_hub``). It follows the release's structure literally
and keeps its module names, so its ``state_dict()`` has the released key names:

* ``image_encoder`` with ``backbone`` (a DINOv2 ViT written out here with explicit attention
  matrices, official key names, hub interpolation: bicubic with scale factor ``(g + 0.1) / M``),
  ``extra_patch_embed``, ``peft_cpia_blocks``, ``peft_dgfm_blocks`` (``rgb_reduce``,
  ``dsm_reduce``, ``gate_net``), ``peft_fuse_norms``, ``dual_proj_layers``;
* the two streams run one after the other through every block;
* ``decoder`` = the release's UperNet (``ppm.stages.{s}.1``, ``ppm.bottleneck``,
  ``lateral_convs``, ``fpn_convs``, ``fpn_bottleneck``, ``classifier.1.0``; ReLU6; no biases);
* ``aux_head_rgb`` / ``aux_head_dsm`` (``conv``, ``conv_out.0``);
* ``forward(x, y)`` takes the optical image ``[B, 3, H, W]`` and the DSM ``[B, H, W]`` already
  padded to multiples of 14 (the release pads in its data loader) and returns logits at the
  padded size (the release's test loop crops them).

Only the sizes are parameters (tests use tiny widths); it is not part of the package.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class _Attn(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // self.heads) ** -0.5, qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, c))


class _LS(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attn(dim, heads)
        self.ls1 = _LS(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim)
        self.ls2 = _LS(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 14, 14)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _DinoV2(nn.Module):
    def __init__(self, dim, depth, heads, img_size):
        super().__init__()
        g = img_size // 14
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + g * g, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = _PatchEmbed(dim)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def interpolate_pos_encoding(self, x, w, h):
        npatch, n = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        pos = self.pos_embed.float()
        m = int(math.sqrt(n))
        w0, h0 = w // 14, h // 14
        patch = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, scale_factor=((w0 + 0.1) / m, (h0 + 0.1) / m),
                              mode="bicubic", antialias=False)
        patch = patch.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])
        return torch.cat((pos[:, 0].unsqueeze(0), patch), dim=1)


class _CPIA(nn.Module):
    def __init__(self, dim):
        super().__init__()
        r = int(dim * 0.25)
        self.tfts_gamma_rgb = nn.Parameter(torch.ones(dim))
        self.tfts_beta_rgb = nn.Parameter(torch.zeros(dim))
        self.tfts_gamma_dsm = nn.Parameter(torch.ones(dim))
        self.tfts_beta_dsm = nn.Parameter(torch.zeros(dim))
        self.D_fc1 = nn.Linear(dim, r)
        self.D_fc2 = nn.Linear(dim, r)
        self.P_fc2 = nn.Linear(2 * r, r)
        self.U_fc1 = nn.Linear(r, dim)

    def forward(self, x, y):
        a = self.U_fc1(self.P_fc2(torch.cat([self.D_fc1(x), self.D_fc2(y)], -1)))
        return (x + (a + (a * self.tfts_gamma_rgb + self.tfts_beta_rgb)),
                y + (a + (a * self.tfts_gamma_dsm + self.tfts_beta_dsm)))


class _DGFM(nn.Module):
    def __init__(self, dim):
        super().__init__()
        h = max(32, int(dim * min(0.25, 0.125)))
        self.rgb_reduce = nn.Conv2d(dim, h, 1, bias=False)
        self.dsm_reduce = nn.Conv2d(dim, h, 1, bias=False)
        self.gate_net = nn.Sequential(nn.Conv2d(3 * h, h, 1, bias=False), nn.GroupNorm(1, h),
                                      nn.GELU(), nn.Conv2d(h, dim, 1), nn.Sigmoid())

    def forward(self, fo, fd, hp, wp):  # tokens [B, P, C]
        b, p, c = fo.shape
        mo = fo.reshape(b, hp, wp, c).permute(0, 3, 1, 2)
        md = fd.reshape(b, hp, wp, c).permute(0, 3, 1, 2)
        ro, rd = self.rgb_reduce(mo), self.dsm_reduce(md)
        g = self.gate_net(torch.cat([ro, rd, torch.abs(ro - rd)], 1))
        out = g * mo + (1 - g) * md
        return out.permute(0, 2, 3, 1).reshape(b, p, c)


class _Encoder(nn.Module):
    def __init__(self, dim, depth, heads, img_size, taps):
        super().__init__()
        self.taps = taps
        self.backbone = _DinoV2(dim, depth, heads, img_size)
        self.extra_patch_embed = _PatchEmbed(dim)
        self.peft_cpia_blocks = nn.ModuleList(_CPIA(dim) for _ in taps)
        self.peft_dgfm_blocks = nn.ModuleList(_DGFM(dim) for _ in taps)
        self.peft_fuse_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in taps)
        self.dual_proj_layers = nn.ModuleList(nn.Conv2d(dim, 256, 1, bias=False) for _ in taps)

    def _tokens(self, img, pe):
        bb = self.backbone
        t = pe(img)
        t = torch.cat((bb.cls_token.expand(t.shape[0], -1, -1), t), dim=1)
        return t + bb.interpolate_pos_encoding(t, img.shape[2], img.shape[3])

    def forward(self, x, y):
        hp, wp = x.shape[2] // 14, x.shape[3] // 14
        p = hp * wp
        xs, ys = self._tokens(x, self.backbone.patch_embed), self._tokens(y, self.extra_patch_embed)
        fused, opt, dsm = [], [], []
        start = 0
        for j, tap in enumerate(self.taps):
            xp, yp = self.peft_cpia_blocks[j](xs[:, -p:], ys[:, -p:])
            xs, ys = torch.cat([xs[:, :-p], xp], 1), torch.cat([ys[:, :-p], yp], 1)
            for i in range(start, tap + 1):
                xs = self.backbone.blocks[i](xs)
                ys = self.backbone.blocks[i](ys)
            start = tap + 1
            fo, fd = self.backbone.norm(xs)[:, -p:], self.backbone.norm(ys)[:, -p:]
            f = self.peft_fuse_norms[j](self.peft_dgfm_blocks[j](fo, fd, hp, wp))

            def to_map(t):
                return t.reshape(t.shape[0], hp, wp, -1).permute(0, 3, 1, 2)

            proj = self.dual_proj_layers[j]
            fused.append(proj(to_map(f)))
            opt.append(proj(to_map(fo)))
            dsm.append(proj(to_map(fd)))
        return fused, opt, dsm


def _cbr(i, o, k=1):
    return nn.Sequential(nn.Conv2d(i, o, k, padding=(k - 1) // 2, bias=False),
                         nn.BatchNorm2d(o), nn.ReLU6())


class _PPM(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), _cbr(i, o))
                                    for s in (1, 2, 3, 6))
        self.bottleneck = _cbr(i + 4 * o, o, 3)

    def forward(self, x):
        h, w = x.shape[-2:]
        outs = [x] + [F.interpolate(s(x), (h, w), mode="bilinear", align_corners=False)
                      for s in self.stages]
        return self.bottleneck(torch.cat(outs, 1))


class _UperNet(nn.Module):
    def __init__(self, k, ch=64):
        super().__init__()
        self.ppm = _PPM(256, ch)
        self.lateral_convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(256, ch, 1, bias=False), nn.BatchNorm2d(ch)) for _ in range(3))
        self.fpn_convs = nn.ModuleList(_cbr(ch, ch, 3) for _ in range(3))
        self.fpn_bottleneck = _cbr(4 * ch, ch, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(0.1),
                                        nn.Sequential(nn.Conv2d(ch, k, 1, bias=False)))

    def forward(self, feats, h, w):
        c1, c2, c3, c4 = feats
        p4 = self.ppm(c4)

        def up(a, ref):
            return F.interpolate(a, ref.shape[-2:], mode="bilinear", align_corners=False)

        p3 = self.lateral_convs[2](c3) + up(p4, c3)
        p2 = self.lateral_convs[1](c2) + up(p3, c2)
        p1 = self.lateral_convs[0](c1) + up(p2, c1)
        outs = [self.fpn_convs[0](p1), self.fpn_convs[1](p2), self.fpn_convs[2](p3), p4]
        z = self.fpn_bottleneck(torch.cat([outs[0]] + [up(o, outs[0]) for o in outs[1:]], 1))
        return F.interpolate(self.classifier(z), (h, w), mode="bilinear", align_corners=False)


class _AuxHead(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.conv = _cbr(256, 256, 3)
        self.drop = nn.Dropout(0.1)
        self.conv_out = nn.Sequential(nn.Conv2d(256, k, 1, bias=False))

    def forward(self, x, h, w):
        return F.interpolate(self.conv_out(self.drop(self.conv(x))), (h, w), mode="bilinear",
                             align_corners=False)


class MoBaNetRelease(nn.Module):
    """The released ``Net`` (DINOv2 path, CPIA + DGFM on) with its key names."""

    def __init__(self, num_classes=6, dim=32, depth=4, heads=2, img_size=56,
                 taps=(0, 1, 2, 3)):
        super().__init__()
        self.image_encoder = _Encoder(dim, depth, heads, img_size, list(taps))
        self.decoder = _UperNet(num_classes)
        self.aux_head_rgb = _AuxHead(num_classes)
        self.aux_head_dsm = _AuxHead(num_classes)

    def forward(self, x: Tensor, y: Tensor, aux: bool = False):
        h, w = x.shape[-2:]
        fused, opt, dsm = self.image_encoder(x, y.unsqueeze(1).repeat(1, 3, 1, 1))
        out = self.decoder(fused, h, w)
        if aux:
            return out, self.aux_head_rgb(opt[0], h, w), self.aux_head_dsm(dsm[0], h, w)
        return out


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter and BatchNorm statistic (so no zero-init hides a term)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "weight")) and p.ndim == 1:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model
