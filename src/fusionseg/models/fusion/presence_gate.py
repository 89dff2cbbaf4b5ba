"""Presence-aware gated fusion: a per-pixel softmax over the modality streams that are there.

Used by ``sum_fusion`` (``reduce: gate``) in place of the plain mean over the present
streams. Per stream ``m`` and pixel::

    F_m: [B, C, h, w], p_m: bool[B] (stream present in the sample)
    s_m = <w_m, F_m> + b_m                       # a 1x1 conv per modality, C -> 1
    s_m = -inf where not p_m
    a   = softmax_m(s)                            # over the present streams only
    F   = sum_m a_m F_m

The form is MLE-SAM's routing ("weighted features across modalities", a 1x1 gate per
modality and a softmax over the present ones; :class:`~fusionseg.models.methods.mle_sam.routing.
ModalityRouter`, arXiv 2412.04220) without its integrated path, here as the fusion of a
late-fusion baseline. Ours: ``w`` and ``b`` start at zero, so an untrained gate is exactly the
mean over the present streams (up to rounding) and a model trained with the mean initialises
a gated one (``train.init_from``); the gate then learns, per pixel, to lean on the streams
that tell the class and away from a weak one, so having one more stream need not cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["PresenceGate"]


class PresenceGate(nn.Module):
    """Per-pixel softmax weighting of ``M`` streams over the present ones.

    Args:
        channels: ``C`` of the fused maps.
        num_modalities: ``M``, the model's modality count (one gate row per modality).
        lr_mult: learning-rate multiplier of the gate's parameters
            (:meth:`~fusionseg.models.Segmentor.param_groups`): zero-initialised scores must
            move to O(1) within a short fine-tune, which AdamW's per-step size of about ``lr``
            does not allow at fine-tuning rates (measured: at lr 1e-4 over 200 steps the
            weights stayed below 0.007, the gate a plain mean).

    ``forward(feats, present, index)``:

    * ``feats``: ``[n, B, C, h, w]``, the maps of ``n <= M`` streams;
    * ``present``: ``bool[n, B]`` or ``None`` (every stream present in every sample); every
      sample needs one present stream;
    * ``index``: the model modality index of each of the ``n`` streams (default ``0..n-1``);

    returns ``[B, C, h, w]``. ``last_weights`` keeps the softmax weights ``[B, n, h, w]`` of
    the last call (detached), for inspection.
    """

    def __init__(self, channels: int, num_modalities: int, lr_mult: float = 1.0) -> None:
        super().__init__()
        self.channels, self.num_modalities = int(channels), int(num_modalities)
        self.lr_mult = float(lr_mult)
        self.weight = nn.Parameter(torch.zeros(self.num_modalities, self.channels))
        self.bias = nn.Parameter(torch.zeros(self.num_modalities))
        self.last_weights: Tensor | None = None

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, modalities={self.num_modalities}, "
                f"lr_mult={self.lr_mult:g}")

    def forward(self, feats: Tensor, present: Tensor | None = None,
                index: Sequence[int] | None = None) -> Tensor:
        n = feats.shape[0]
        idx = list(range(n)) if index is None else list(index)
        w = self.weight[idx].to(feats.dtype)  # [n, C]
        b = self.bias[idx].to(feats.dtype)
        s = torch.einsum("nbchw,nc->bnhw", feats, w) + b.view(1, n, 1, 1)
        s = s.float()
        if present is not None:
            keep = present.to(device=feats.device, dtype=torch.bool).t()  # [B, n]
            s = s.masked_fill(~keep.view(*keep.shape, 1, 1), float("-inf"))
            # an absent stream's map is never read, even where it is not finite
            feats = torch.where(keep.t().view(n, -1, 1, 1, 1), feats, feats.new_zeros(()))
        a = torch.softmax(s, dim=1).to(feats.dtype)
        self.last_weights = a.detach()
        return torch.einsum("bnhw,nbchw->bchw", a, feats)
