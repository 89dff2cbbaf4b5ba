"""LoRA on the q and v parts of a fused ``qkv`` projection, with one expert per modality.

LoRA: Edward J. Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022
(arXiv 2106.09685): a frozen weight ``W`` gets a trainable low-rank update,
``W x + s * B (A x)`` with ``A [r, C_in]`` Kaiming-uniform initialised and ``B [C_out, r]``
zero, so the adapted model starts as the pretrained one; ``s = alpha / r``.

Placement as MLE-SAM uses it (Zhu et al., arXiv 2412.04220; see ``docs/methods/mle_sam.md``):
on the **q** and **v** slices of every attention's fused ``qkv`` Linear of a frozen encoder
(SAMed / MemorySAM do the same for SAM and SAM2), the k slice untouched::

    qkv(x) = [q | k | v] = W x + b                          # W [3D, C], D = C_out / 3
    q <- q + s * B_q A_q x,   v <- v + s * B_v A_v x         # one (A_q, B_q, A_v, B_v) per expert

**A mixture of experts per modality**: each modality is encoded by the same frozen encoder with
its own expert active. The streams run as one batch: the encoder input is ``[E * B, 3, H, W]``,
stream-major (stream ``j`` = samples ``j*B .. (j+1)*B - 1``), and :func:`set_active_experts`
names the expert of each of the ``E`` equal chunks of dim 0. Every ``qkv`` input of the
encoder must keep that batch layout (batch outermost; window partitions ordered batch first,
as Hiera and the SAM ViT do), which :class:`LoRAQKV` checks (dim 0 divisible by ``E``).

The active experts are module state, set before a forward and left in place afterwards (not
reset), so that activation checkpointing recomputes the same forward in backward.

Parameter names: the wrapped projection keeps its keys (``...attn.qkv.weight``, ``.bias``:
pretrained files load as before); the experts add ``...attn.qkv.lora.experts.{name}.{q,v}.
lora_A`` / ``.lora_B`` (and ``lora.shared.*`` with a shared expert). Only the
:class:`MixtureOfLoRA` is a :class:`~fusionseg.models.peft.base.PeftModule`; the wrapper and its
frozen weight remain the backbone's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from .base import PeftModule

__all__ = [
    "LoRA",
    "LoRAQKV",
    "MixtureOfLoRA",
    "inject_lora_experts",
    "lora_modules",
    "set_active_experts",
]


class LoRA(nn.Module):
    """One low-rank update ``x -> B (A x)``: ``lora_A [r, C_in]`` (Kaiming-uniform, ``a =
    sqrt(5)`` as ``nn.Linear`` and the LoRA reference code), ``lora_B [C_out, r]`` (zeros).

    ``forward(x [..., C_in]) -> [..., C_out]`` (unscaled).
    """

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.lora_A), self.lora_B)


class MixtureOfLoRA(PeftModule):
    """Per-expert q and v LoRAs of one fused ``qkv`` projection (see the module docstring).

    Args:
        in_features: ``C_in`` of the projection.
        part_features: ``D`` = a third of its output (the width of q, k and v).
        experts: expert names (the modalities).
        rank: ``r`` (32 in MLE-SAM as tabulated by MemorySAM, secondhand).
        alpha: scale numerator, ``s = alpha / r``; ``None`` = ``r`` (``s = 1``, as SAMed /
            MemorySAM add the update unscaled).
        shared: also train one expert added to every stream (our option; off by default).

    ``delta(x [E * N, ..., C_in], active) -> (dq, dv)``, each ``[E * N, ..., D]``: chunk ``j``
    of dim 0 through expert ``active[j]`` (plus the shared one).
    """

    def __init__(self, in_features: int, part_features: int, experts: Sequence[str],
                 rank: int = 32, alpha: float | None = None, shared: bool = False) -> None:
        super().__init__()
        experts = list(experts)
        if not experts:
            raise ConfigError("MixtureOfLoRA needs at least one expert")
        bad = [e for e in experts if not e.isidentifier()]
        if bad:
            raise ConfigError(f"expert names must be identifiers, got {bad}")
        self.expert_names = experts
        self.rank = int(rank)
        self.scale = (float(alpha) if alpha is not None else float(rank)) / float(rank)
        self.experts = nn.ModuleDict({
            e: nn.ModuleDict({"q": LoRA(in_features, part_features, rank),
                              "v": LoRA(in_features, part_features, rank)})
            for e in experts
        })
        self.shared = (nn.ModuleDict({"q": LoRA(in_features, part_features, rank),
                                      "v": LoRA(in_features, part_features, rank)})
                       if shared else None)

    def extra_repr(self) -> str:
        return f"experts={self.expert_names}, rank={self.rank}, scale={self.scale:g}"

    def delta(self, x: Tensor, active: Sequence[str]) -> tuple[Tensor, Tensor]:
        """The scaled q and v updates of ``x`` (see the class docstring).

        Raises:
            ValueError: an unknown expert name; dim 0 of ``x`` not divisible by
                ``len(active)``.
        """
        n = len(active)
        unknown = [a for a in active if a not in self.experts]
        if unknown:
            raise ValueError(f"unknown LoRA expert(s) {unknown}; known: {self.expert_names}")
        if x.shape[0] % n:
            raise ValueError(f"qkv input batch {x.shape[0]} is not divisible by the "
                             f"{n} active expert streams {list(active)}")
        shape = x.shape
        xs = x.reshape(n, -1, shape[-1])  # [E, L, C]: chunk j = stream j
        experts = [self.experts[a] for a in active]
        a_qv = torch.stack([torch.cat([e["q"].lora_A, e["v"].lora_A], 0) for e in experts])
        low = torch.bmm(xs, a_qv.transpose(1, 2))  # [E, L, 2r]
        r = self.rank
        b_q = torch.stack([e["q"].lora_B for e in experts]).transpose(1, 2)  # [E, r, D]
        b_v = torch.stack([e["v"].lora_B for e in experts]).transpose(1, 2)
        dq = torch.bmm(low[..., :r], b_q)
        dv = torch.bmm(low[..., r:], b_v)
        if self.shared is not None:
            dq = dq + self.shared["q"](xs)
            dv = dv + self.shared["v"](xs)
        out = (*shape[:-1], dq.shape[-1])
        return (dq * self.scale).reshape(out), (dv * self.scale).reshape(out)


class LoRAQKV(nn.Module):
    """A frozen fused ``qkv`` Linear with a :class:`MixtureOfLoRA` on its q and v slices.

    Holds the wrapped Linear's own ``weight`` ``[3D, C_in]`` and ``bias`` ``[3D]`` Parameters
    (same objects, same key names) and ``lora`` (the experts). ``forward(x [..., C_in]) ->
    [..., 3D]``: the plain projection when no experts are active (:attr:`active` ``None``),
    otherwise with the updates of the active experts (see :func:`set_active_experts`).
    """

    def __init__(self, base: nn.Linear, experts: Sequence[str], rank: int = 32,
                 alpha: float | None = None, shared: bool = False) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear) or base.out_features % 3:
            raise ConfigError("LoRAQKV wraps an nn.Linear whose output is q | k | v "
                             f"(out_features divisible by 3), got {base}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.part = base.out_features // 3
        self.lora = MixtureOfLoRA(base.in_features, self.part, experts, rank, alpha, shared)
        #: expert name per stream chunk of dim 0, or None (no update)
        self.active: tuple[str, ...] | None = None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.active:
            return out
        dq, dv = self.lora.delta(x, self.active)
        d = self.part
        # the linear's output is not saved by its backward: in-place slice updates are safe
        out[..., :d] += dq.to(out.dtype)
        out[..., 2 * d:] += dv.to(out.dtype)
        return out


def inject_lora_experts(module: nn.Module, experts: Sequence[str], rank: int = 32,
                        alpha: float | None = None, shared: bool = False,
                        target: str = "qkv") -> list[LoRAQKV]:
    """Replace every ``nn.Linear`` attribute named ``target`` inside ``module`` by a
    :class:`LoRAQKV` (in place; parameter names of the wrapped weights unchanged).

    Returns:
        The wrappers, in module order.

    Raises:
        ValueError: no such Linear in ``module``; one whose width is not divisible by 3.
    """
    targets = [(parent, name) for parent in module.modules()
               for name, child in parent.named_children()
               if name == target and isinstance(child, nn.Linear)]
    if not targets:
        raise ValueError(f"no nn.Linear named {target!r} in {type(module).__name__}")
    out = []
    for parent, name in targets:
        wrapper = LoRAQKV(getattr(parent, name), experts, rank, alpha, shared)
        setattr(parent, name, wrapper)
        out.append(wrapper)
    return out


def lora_modules(module: nn.Module) -> list[LoRAQKV]:
    """The :class:`LoRAQKV` wrappers inside ``module``."""
    return [m for m in module.modules() if isinstance(m, LoRAQKV)]


def set_active_experts(modules: nn.Module | Iterable[LoRAQKV],
                       active: Sequence[str] | None) -> None:
    """Select the expert of each stream chunk for the next forwards (``None``: no LoRA, the
    pretrained encoder). ``modules``: a module holding wrappers, or the wrappers."""
    wrappers = lora_modules(modules) if isinstance(modules, nn.Module) else list(modules)
    value = tuple(active) if active else None
    for w in wrappers:
        w.active = value
