"""Shared parameter-efficient modules (LoRA); all subclass :class:`~.base.PeftModule`.

Method-specific ones live with their method: StitchFusion's MultiAdapter in
``methods/stitchfusion/adapters.py``, MoBaNet's CPIA in ``methods/mobanet/modules.py``.
"""

from .base import PeftModule
from .lora import LoRA, LoRAQKV, MixtureOfLoRA, inject_lora_experts, set_active_experts

__all__ = [
    "LoRA",
    "LoRAQKV",
    "MixtureOfLoRA",
    "PeftModule",
    "inject_lora_experts",
    "set_active_experts",
]
