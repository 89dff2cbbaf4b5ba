"""LoRA / MixtureOfLoRA / LoRAQKV known answers: defaults, init bound, shared expert algebra,
argument validation messages, and inject/set_active plumbing."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from fusionseg.errors import ConfigError
from fusionseg.models.peft.lora import (
    LoRA,
    LoRAQKV,
    MixtureOfLoRA,
    inject_lora_experts,
    set_active_experts,
)


class _Attn(nn.Module):
    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.qkv = nn.Linear(c, 3 * c)


# ---------------------------------------------------------------- LoRA


def test_lora_rank_one_is_allowed_and_zero_rejected():
    m = LoRA(4, 6, 1)
    assert m.lora_A.shape == (1, 4) and m.lora_B.shape == (6, 1)
    with pytest.raises(ConfigError, match=r"^LoRA rank must be >= 1, got 0$"):
        LoRA(4, 6, 0)


def test_lora_a_init_bound_is_one_over_sqrt_fan_in():
    """Kaiming-uniform with a=sqrt(5): bound = sqrt(6/(1+5))/sqrt(C_in) = 1/sqrt(4) = 0.5;
    with 8000 draws the largest |value| is within 0.47..0.5 (a=sqrt(6) would cap at 0.463)."""
    torch.manual_seed(0)
    a = LoRA(4, 1, 2000).lora_A.detach()
    assert a.abs().max().item() <= 0.5
    assert a.abs().max().item() > 0.47


# ---------------------------------------------------------------- MixtureOfLoRA


def test_mixture_defaults_rank_32_and_no_shared_expert():
    m = MixtureOfLoRA(4, 2, ["rgb", "depth"])
    assert m.rank == 32 and m.scale == 1.0 and m.shared is None
    assert m.expert_names == ["rgb", "depth"]
    assert m.experts["rgb"]["q"].lora_A.shape == (32, 4)


def test_mixture_needs_an_expert_message():
    with pytest.raises(ConfigError, match=r"^MixtureOfLoRA needs at least one expert$"):
        MixtureOfLoRA(4, 2, [])


def test_mixture_rejects_non_identifier_names():
    with pytest.raises(ConfigError, match=re.escape("expert names must be identifiers, got ['near-ir']")):
        MixtureOfLoRA(4, 2, ["rgb", "near-ir"])


def test_mixture_unknown_expert_lists_known_names():
    m = MixtureOfLoRA(2, 1, ["rgb", "depth"], rank=1)
    with pytest.raises(ValueError, match=re.escape("known: ['rgb', 'depth']")):
        m.delta(torch.zeros(2, 2), ["ir"])


def test_mixture_indivisible_batch_message_names_dim_zero():
    m = MixtureOfLoRA(2, 1, ["a", "b"], rank=1)
    with pytest.raises(ValueError) as ei:
        m.delta(torch.zeros(3, 5, 2), ["a", "b"])
    assert str(ei.value) == "qkv input batch 3 is not divisible by the 2 active expert streams ['a', 'b']"


def _set(lora: LoRA, a: list[float], b: float) -> None:
    with torch.no_grad():
        lora.lora_A.copy_(torch.tensor([a]))
        lora.lora_B.copy_(torch.tensor([[b]]))


def test_mixture_shared_expert_is_added_to_the_stream_expert():
    """x = [1, 2]; expert q: A=[1,0], B=2 -> 2; shared q: A=[0,1], B=3 -> 6; dq = 8.
    expert v: A=[0,1], B=1 -> 2; shared v: A=[1,0], B=-4 -> -4; dv = -2 (scale 1)."""
    m = MixtureOfLoRA(2, 1, ["rgb"], rank=1, shared=True)
    assert set(m.shared) == {"q", "v"}
    _set(m.experts["rgb"]["q"], [1.0, 0.0], 2.0)
    _set(m.shared["q"], [0.0, 1.0], 3.0)
    _set(m.experts["rgb"]["v"], [0.0, 1.0], 1.0)
    _set(m.shared["v"], [1.0, 0.0], -4.0)
    dq, dv = m.delta(torch.tensor([[1.0, 2.0]]), ["rgb"])
    assert dq.tolist() == [[8.0]] and dv.tolist() == [[-2.0]]


# ---------------------------------------------------------------- LoRAQKV


def test_loraqkv_defaults_and_inactive_start():
    w = LoRAQKV(nn.Linear(4, 12), ["rgb"])
    assert w.active is None
    assert w.lora.rank == 32 and w.lora.shared is None


def test_loraqkv_passes_shared_to_the_mixture():
    w = LoRAQKV(nn.Linear(4, 12), ["rgb"], rank=2, shared=True)
    assert w.lora.shared is not None


def test_loraqkv_accepts_width_divisible_by_three_only():
    """out 6 = 3 x 2 is fine (part 2); out 4 and a non-Linear are rejected with the reason."""
    assert LoRAQKV(nn.Linear(4, 6), ["rgb"], rank=1).part == 2
    msg = r"^LoRAQKV wraps an nn\.Linear whose output is q \| k \| v \(out_features divisible by 3\), got "
    with pytest.raises(ConfigError, match=msg + re.escape("Linear(in_features=4, out_features=4, bias=True)")):
        LoRAQKV(nn.Linear(4, 4), ["rgb"], rank=1)
    with pytest.raises(ConfigError, match=msg + "Conv2d"):
        LoRAQKV(nn.Conv2d(4, 6, 1), ["rgb"], rank=1)


# ---------------------------------------------------------------- inject / set_active


def test_inject_defaults_rank_32():
    (w,) = inject_lora_experts(_Attn(), ["rgb"])
    assert w.lora.rank == 32


def test_inject_passes_alpha_and_shared():
    """alpha 8 over rank 4 -> scale 2."""
    (w,) = inject_lora_experts(_Attn(), ["rgb"], rank=4, alpha=8.0, shared=True)
    assert w.lora.scale == 2.0
    assert w.lora.shared is not None


def test_inject_without_target_names_module_type():
    with pytest.raises(ValueError, match=r"^no nn\.Linear named 'proj' in _Attn$"):
        inject_lora_experts(_Attn(), ["rgb"], target="proj")


def test_set_active_experts_accepts_a_list_of_wrappers():
    a, b = LoRAQKV(nn.Linear(2, 6), ["rgb"], rank=1), LoRAQKV(nn.Linear(2, 6), ["rgb"], rank=1)
    set_active_experts([a, b], ["rgb"])
    assert a.active == ("rgb",) and b.active == ("rgb",)
    set_active_experts((w for w in [a]), None)
    assert a.active is None and b.active == ("rgb",)
