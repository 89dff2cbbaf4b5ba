"""The marker class of parameter-efficient modules (adapters, LoRA, prompts).

A :class:`PeftModule` holds parameters that a *method* adds, possibly inside a pretrained
backbone (a LoRA wrapped around a frozen ``qkv`` projection, an adapter between two blocks).
The segmentor base treats them as the method's own parameters wherever they sit:

* :meth:`~fusionseg.models.segmentor.Segmentor.freeze_backbone` leaves them trainable;
* :meth:`~fusionseg.models.segmentor.Segmentor.param_groups` puts them in the "rest"
  groups (``lr * head_lr_mult``), not in the backbone's.
"""

from __future__ import annotations

from torch import nn

__all__ = ["PeftModule"]


class PeftModule(nn.Module):
    """Base class of parameter-efficient modules a method injects (see the module docstring)."""
