"""Parameter-efficient modules (adapters, LoRA); all subclass :class:`~.base.PeftModule`."""

from .adapters import ADAPTER_DENSITIES, BottleneckAdapter, MultiAdapter, adapter_param_count
from .base import PeftModule

__all__ = [
    "ADAPTER_DENSITIES",
    "BottleneckAdapter",
    "MultiAdapter",
    "PeftModule",
    "adapter_param_count",
]
