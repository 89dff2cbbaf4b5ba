"""AsymFusion's shift-shuffle: parameter-free and exact on a hand-built tensor."""

from __future__ import annotations

import pytest
import torch

from fusionseg.models.fusion.asym import ShiftShuffle, pixel_shift, shift_shuffle


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
