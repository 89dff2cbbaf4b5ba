"""PresenceGate known answers: defaults, dtype handling, integer presence masks, devices."""

from __future__ import annotations

import torch

from fusionseg.models.fusion.presence_gate import PresenceGate


def test_presence_gate_defaults_lr_mult_one_and_no_weights_yet():
    g = PresenceGate(4, 2)
    assert g.lr_mult == 1.0
    assert g.last_weights is None


def test_presence_gate_integer_present_mask_is_read_as_bool():
    """present given as 0/1 ints: stream 1 absent in sample 0 -> output is stream 0 there."""
    g = PresenceGate(1, 2)
    feats = torch.stack([torch.full((2, 1, 1, 1), 2.0), torch.full((2, 1, 1, 1), 4.0)])
    out = g(feats, torch.tensor([[1, 1], [0, 1]], dtype=torch.int64))
    assert out.flatten().tolist() == [2.0, 3.0]  # sample 0: 2; sample 1: mean(2, 4)


def test_presence_gate_bfloat16_scores_and_weights_in_feature_dtype():
    """Zero features, bias [8.03125, 8]: in bfloat16 (spacing 1/16 at 8) the bias rounds to
    8.0, so both scores are 8 and the weights are exactly 0.5 each (a float32 bias would give
    softmax 0.5078 / 0.4922); weights and output stay bfloat16."""
    g = PresenceGate(1, 2)
    with torch.no_grad():
        g.bias.copy_(torch.tensor([8.03125, 8.0]))
    feats = torch.zeros(2, 1, 1, 1, 1, dtype=torch.bfloat16)
    feats[0] += 2.0
    out = g(feats)
    assert out.dtype == torch.bfloat16 and g.last_weights.dtype == torch.bfloat16
    assert g.last_weights.flatten().tolist() == [0.5, 0.5]
    assert out.item() == 1.0


def test_presence_gate_bfloat16_rounds_the_gate_weights_too():
    """Both maps 8, w = [1.00390625], [1]: in bfloat16 w rounds to 1.0, so both scores are
    8 and the weights 0.5 each (float32 w would give scores 8.03125 / 8)."""
    g = PresenceGate(1, 2)
    with torch.no_grad():
        g.weight.copy_(torch.tensor([[1.00390625], [1.0]]))
    out = g(torch.full((2, 1, 1, 1, 1), 8.0, dtype=torch.bfloat16))
    assert g.last_weights.flatten().tolist() == [0.5, 0.5]
    assert out.dtype == torch.bfloat16 and out.item() == 8.0


def test_presence_gate_float64_features_use_the_gate_weights():
    """float64 maps: w = [1], [0]; feats 1 and 0 -> scores 1, 0 -> weights sigmoid(1)."""
    g = PresenceGate(1, 2)
    with torch.no_grad():
        g.weight.copy_(torch.tensor([[1.0], [0.0]]))
    feats = torch.tensor([1.0, 0.0], dtype=torch.float64).view(2, 1, 1, 1, 1)
    out = g(feats)
    a0 = 1.0 / (1.0 + torch.exp(torch.tensor(-1.0, dtype=torch.float64)))
    assert out.dtype == torch.float64
    assert abs(out.item() - a0.item()) < 1e-6


def test_presence_gate_moves_a_cpu_present_mask_to_the_features_device():
    """features on the 'meta' device, present on CPU: the mask follows the features."""
    g = PresenceGate(2, 2).to("meta")
    feats = torch.empty(2, 3, 2, 4, 4, device="meta")
    out = g(feats, torch.tensor([[True, True, False], [False, True, True]]))
    assert out.device.type == "meta" and out.shape == (3, 2, 4, 4)
