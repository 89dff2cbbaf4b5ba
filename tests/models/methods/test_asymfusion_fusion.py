"""AsymFusion's fusion operators (``methods/asymfusion/fusion.py``): shift-shuffle exact on a
hand-built tensor and parameter-free, per-modality BatchNorm, the fused bottleneck in the
release's order. The model (release equivalence, options, outputs) is tested in
test_asymfusion.py."""

from __future__ import annotations

import pytest
import torch

from fusionseg.models.methods.asymfusion.fusion import ShiftShuffle, pixel_shift, shift_shuffle


def test_shift_shuffle_is_exact_on_a_hand_built_tensor():
    # C = 11 -> g = 2, s = 8: groups [0,1] up, [2,3] left, [4,5] right, [6,7] down; 8..10 zero
    b, c, h, w = 1, 11, 3, 4
    x1 = torch.arange(c * h * w, dtype=torch.float32).view(b, c, h, w)
    x2 = -x1 - 1
    (s1, s2), (sig1, sig2) = shift_shuffle(x1, x2)
    assert torch.equal(s1[:, :8], x1[:, :8]) and torch.equal(s1[:, 8:], x2[:, 8:])
    assert torch.equal(s2[:, :8], x2[:, :8]) and torch.equal(s2[:, 8:], x1[:, 8:])
    z = torch.zeros(h, w)
    # offset (-1, 0): out[i, j] = x[i - 1, j]; row 0 is zero fill
    expect = z.clone()
    expect[1:] = x1[0, 0, :-1]
    assert torch.equal(sig1[0, 0], expect)
    left = z.clone()
    left[:, 1:] = x1[0, 2, :, :-1]  # (0, -1): out[i, j] = x[i, j - 1]
    assert torch.equal(sig1[0, 2], left)
    right = z.clone()
    right[:, :-1] = x1[0, 4, :, 1:]  # (0, 1): out[i, j] = x[i, j + 1]
    assert torch.equal(sig1[0, 4], right)
    down = z.clone()
    down[:-1] = x1[0, 6, 1:]  # (1, 0): out[i, j] = x[i + 1, j]
    assert torch.equal(sig1[0, 6], down)
    assert not sig1[:, 8:].any() and torch.equal(sig2, pixel_shift(x2, 2))
    # reversed order: group 0 takes offset (1, 0), group 3 offset (-1, 0)
    _, (r1, _) = shift_shuffle(x1, x2, reverse=True)
    assert torch.equal(r1[0, 0, :-1], x1[0, 0, 1:]) and not r1[0, 0, -1].any()
    assert torch.equal(r1[0, 6, 1:], x1[0, 6, :-1]) and not r1[0, 6, 0].any()


def test_shift_shuffle_adds_no_parameters_and_checks_shapes():
    assert sum(p.numel() for p in ShiftShuffle().parameters()) == 0
    assert list(ShiftShuffle(reverse=True).state_dict()) == []
    with pytest.raises(ValueError, match="one shape"):
        shift_shuffle(torch.zeros(1, 5, 2, 2), torch.zeros(1, 5, 2, 3))
    # fewer than 5 channels: every channel swaps, no shift
    a, b = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    (s1, s2), (g1, g2) = shift_shuffle(a, b)
    assert torch.equal(s1, b) and torch.equal(s2, a) and not g1.any() and not g2.any()


def test_parallel_batchnorm_copies_the_pretrained_bn_and_splits_streams():
    from torch import nn

    from fusionseg.models import create_backbone
    from fusionseg.models.backbones.resnet import RESNET_TINY
    from fusionseg.models.methods.asymfusion.fusion import (
        ParallelBatchNorm2d,
        parallelize_batchnorms,
    )

    torch.manual_seed(0)
    bb = create_backbone("resnet50", **RESNET_TINY).eval()
    with torch.no_grad():
        bb.bn1.running_mean.normal_()
    ref = {k: v.clone() for k, v in bb.state_dict().items()}
    n_before = sum(p.numel() for p in bb.parameters())
    parallelize_batchnorms(bb, 2)
    assert isinstance(bb.bn1, ParallelBatchNorm2d) and isinstance(bb.layer1[0].downsample[1],
                                                                   ParallelBatchNorm2d)
    sd = bb.state_dict()
    for i in (0, 1):
        assert torch.equal(sd[f"bn1.bn_{i}.running_mean"], ref["bn1.running_mean"])
    assert torch.equal(sd["conv1.weight"], ref["conv1.weight"])  # convolutions shared, once
    n_bn = sum(p.numel() for m in bb.modules() if isinstance(m, nn.BatchNorm2d)
               for p in m.parameters())
    assert sum(p.numel() for p in bb.parameters()) == n_before + n_bn // 2
    # one stream through a parallel BN equals the original BN on that stream
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_()
    pbn = ParallelBatchNorm2d(bn, 2).eval()
    with torch.no_grad():
        pbn.bn_1.weight.mul_(2)
    x = torch.randn(4, 3, 2, 2)
    out = pbn(x)
    assert torch.equal(out[:2], bn(x[:2])) and not torch.equal(out[2:], bn(x[2:]))


def test_fused_bottleneck_follows_the_release_order():
    from fusionseg.models.backbones.resnet import Bottleneck
    from fusionseg.models.methods.asymfusion.fusion import fused_bottleneck, parallelize_batchnorms

    torch.manual_seed(0)
    blk = parallelize_batchnorms(Bottleneck(40, 10), 2).eval()
    x1, x2 = torch.randn(1, 40, 6, 7), torch.randn(1, 40, 6, 7)
    with torch.no_grad():
        got = fused_bottleneck(blk, torch.cat([x1, x2]))
        # literal: per stream with its own BN, the release's sequence of operations
        def bn(name, i, t):
            return getattr(getattr(blk, name), f"bn_{i}")(t)
        h = [blk.relu(bn("bn1", i, blk.conv1(x))) for i, x in enumerate((x1, x2))]
        (a1, a2), (s1, s2) = shift_shuffle(h[0], h[1])
        u = [blk.relu(bn("bn2", i, blk.conv2(t))) for i, t in enumerate((a1, a2))]
        (b1, b2), _ = shift_shuffle(u[0] + s2, u[1] + s1, reverse=True)
        ref = [blk.relu(bn("bn3", i, blk.conv3(t)) + x) for i, (t, x) in
               enumerate(((b1, x1), (b2, x2)))]
        torch.testing.assert_close(got, torch.cat(ref))
        plain = fused_bottleneck(blk, torch.cat([x1, x2]), shift_shuffle_on=False)
        assert not torch.allclose(plain, got)
