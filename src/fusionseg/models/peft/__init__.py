"""Parameter-efficient modules (adapters, LoRA); all subclass :class:`~.base.PeftModule`."""

from .adapters import ADAPTER_DENSITIES, BottleneckAdapter, MultiAdapter, adapter_param_count
from .base import PeftModule
from .lora import LoRA, LoRAQKV, MixtureOfLoRA, inject_lora_experts, set_active_experts

__all__ = [
    "ADAPTER_DENSITIES",
    "BottleneckAdapter",
    "LoRA",
    "LoRAQKV",
    "MixtureOfLoRA",
    "MultiAdapter",
    "PeftModule",
    "adapter_param_count",
    "inject_lora_experts",
    "set_active_experts",
]
