"""Baseline segmentors: late fusion (a per-sample mean) over a shared SegFormer encoder.

``sum_fusion`` (alias ``segformer``): one MiT encoder shared by all modalities (SegFormer,
Xie et al. NeurIPS 2021); at each of the four stages the maps of the modalities present in a
sample are averaged (their sum divided by their number, per sample) and decoded by the
SegFormer all-MLP head. With every modality present that is the sum divided by ``M``; with a
single modality it is the plain SegFormer (RGB-only) baseline.

Missing modalities (ours; a late-fusion baseline has no paper protocol): an absent key, or a
sample whose ``present`` entry is false, is left out of that sample's mean, so an absent key
and a zero (or any) image flagged absent give the same logits, and the fused maps keep the
scale of one modality's features whatever the number present (a masked *sum* would shrink
with every missing modality).

``reduce: gate`` replaces the mean by a learned, presence-aware gate (a per-pixel softmax over
the present streams, zero-initialised so that it starts as the mean;
:class:`~fusionseg.models.fusion.presence_gate.PresenceGate`). ``modality_aux: w`` adds, in
training, the decode head run on each present stream alone as an auxiliary output
``modality_<name>`` of weight ``w`` (unimodal supervision, as CHARM's per-modality paths and
the any-modality papers' unimodal terms do), so each stream stays decodable on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ...backbones import default_decoder_dim
from ...backbones.mit import MIT_TINY
from ...fusion.presence_gate import PresenceGate
from ...heads.segformer import SegFormerHead
from ...options import BackboneKwargs, BackboneOptions, DropPathRate, Pretrained, resolve_options
from ...registry import register_model
from ...segmentor import AuxiliaryLogits, ModalityInput, SegmentationOutput, Segmentor

__all__ = ["SumFusionOptions", "SumFusionSegmentor"]


class SumFusionOptions(BackboneOptions):
    """Options of ``sum_fusion`` / ``segformer`` (the ``model`` section of a config)."""

    method_name: ClassVar[str] = "sum_fusion"
    backbone_overrides: ClassVar[tuple[str, ...]] = ("drop_path_rate",)

    backbone: str = Field(
        "mit_b0", description="encoder (mit_b0 .. mit_b5; any backbone taking drop_path_rate)")
    pretrained: Pretrained = None
    drop_path_rate: DropPathRate = 0.1
    decoder_dim: int | None = Field(
        None, gt=0, description="SegFormer head width E (None: 256 for mit_b0/b1, else 512)")
    freeze_backbone: bool = Field(False, description="freeze the encoder (the head trains)")
    backbone_kwargs: BackboneKwargs = None
    batch_modalities: bool = Field(
        True, description="run the modalities as one concatenated encoder batch (faster)")
    reduce: Literal["mean", "sum", "gate"] = Field(
        "mean", description="fusion over the present modalities: mean, sum, or a learned gate")
    modality_aux: float = Field(
        0.0, ge=0, description="weight of the per-modality auxiliary outputs (0: none)")
    gate_lr_mult: float = Field(
        10.0, gt=0, description="learning-rate multiplier of the gates (reduce: gate)")


def _like(count: Tensor | float, f: Tensor) -> Tensor | float:
    """The divisor ``count`` in ``f``'s dtype (a bf16 feature stays bf16 under autocast)."""
    return count.to(f.dtype) if isinstance(count, Tensor) else count


class SumFusionSegmentor(Segmentor):
    """Shared encoder, per-stage mean over the present modalities, SegFormer head.

    ``forward(batch) -> logits [B, K, H, W]`` (bilinear upsampling of the 1/4-scale head
    output, ``align_corners=False``). Stage ``i`` of sample ``b`` is fused as
    ``F_i[b] = sum_{m present in b} E_i(x_m)[b] / #present(b)`` (``E_i``: encoder stage ``i``),
    where "present" means the key is in the batch and, with ``batch["present"]``, its entry for
    the sample is true; a missing modality's image is never read.

    Built from :class:`SumFusionOptions` (an instance, or its fields as keyword arguments:
    ``SumFusionSegmentor(num_classes=3, modalities=["rgb", "depth"])``). In more detail:

        reduce: ``"mean"`` (default: the present modalities' maps averaged per sample),
            ``"sum"`` (summed, no rescaling: the fused maps grow with the number present) or
            ``"gate"`` (a learned per-pixel softmax over the present modalities at every stage,
            starting as the mean; parameters ``fusion_gates.*``).
        batch_modalities: run the present modalities as one concatenated batch through the
            encoder (faster on CPU: fewer, larger kernels) instead of one pass each.
        modality_aux: weight of the per-modality auxiliary outputs in training (0: none); each
            is the decode head on one stream's maps, its loss counted only on the samples where
            that modality is present.
        gate_lr_mult: learning-rate multiplier of the gates (``reduce: gate``; see
            :class:`~fusionseg.models.fusion.presence_gate.PresenceGate`).

    Raises:
        ConfigError: options that do not validate (unknown ``reduce``, negative
            ``modality_aux``, ``backbone_kwargs`` repeating ``pretrained`` or
            ``drop_path_rate``, a backbone without ``drop_path_rate``, ...; see
            :class:`~fusionseg.models.options.BackboneOptions`).
        FileNotFoundError, CheckpointMismatchError: from loading ``pretrained``.
    """

    Options = SumFusionOptions

    fused_feature_module = "decode_head"  # its input: the fused maps

    def __init__(self, options: SumFusionOptions | None = None, /, **kwargs: Any) -> None:
        o = resolve_options(SumFusionOptions, options, kwargs)
        super().__init__(o.modalities, o.num_classes)
        self.options = o
        self.backbone = o.build_backbone()
        out_channels = self.backbone.out_channels
        self.decode_head = SegFormerHead(out_channels, o.num_classes, embed_dim=o.decoder_dim
                                         or default_decoder_dim(o.backbone))
        self.batch_modalities = o.batch_modalities
        self.reduce = o.reduce
        self.modality_aux = float(o.modality_aux)
        self.fusion_gates = nn.ModuleList(
            PresenceGate(c, len(self.modalities), o.gate_lr_mult) for c in out_channels
        ) if o.reduce == "gate" else None
        if o.freeze_backbone:
            self.freeze_backbone()

    def optional_init_keys(self) -> list[str]:
        """The zero-initialised gates (``reduce: gate``) may be absent from an init model."""
        return ["fusion_gates."] if self.fusion_gates is not None else []

    def stream_features(self, inputs: list[ModalityInput]) -> list[Tensor]:
        """Each stream's encoder maps, stacked: ``[S_1, .., S_4]``, ``S_i: [n, B, C_i, H_i,
        W_i]`` for the ``n`` inputs in order (one encoder batch with ``batch_modalities``)."""
        n, b = len(inputs), inputs[0][1].shape[0]
        if n > 1 and self.batch_modalities:
            feats = self.backbone(torch.cat([x for _, x, _ in inputs], dim=0))
            return [f.view(n, b, *f.shape[1:]) for f in feats]
        per = [self.backbone(x) for _, x, _ in inputs]
        return [torch.stack(level, dim=0) for level in zip(*per, strict=True)]

    def gate_fuse(self, inputs: list[ModalityInput], stacked: list[Tensor]) -> list[Tensor]:
        """The gated fusion of :meth:`stream_features`' maps (``reduce: gate``)."""
        assert self.fusion_gates is not None
        masks = [m for _, _, m in inputs]
        b = inputs[0][1].shape[0]
        present = None if all(m is None for m in masks) else torch.stack([
            torch.ones(b, dtype=torch.bool, device=inputs[0][1].device) if m is None
            else m.to(inputs[0][1].device) for m in masks])  # [n, B]
        index = [self.modalities.index(name) for name, _, _ in inputs]
        return [gate(f, present, index) for gate, f in zip(self.fusion_gates, stacked,
                                                            strict=True)]

    def encode(self, inputs: list[ModalityInput]) -> list[Tensor]:
        """Per-sample mean of the stage maps over the present modalities.

        Args:
            inputs: ``[(name, x [B, 3, H, W], mask bool[B] or None = all present), ...]`` (see
                :meth:`Segmentor._modality_inputs`; every sample has at least one present).

        Returns:
            ``[F_1, .., F_4]``, ``F_i: [B, C_i, H_i, W_i]``: ``sum_m mask_m * E_i(x_m) /
            sum_m mask_m``, per sample (or the gate's fusion, ``reduce: gate``).
        """
        return self.fuse(inputs, self.stream_features(inputs))

    def fuse(self, inputs: list[ModalityInput], stacked: list[Tensor]) -> list[Tensor]:
        """The fused stage maps of the streams' maps ``stacked`` (:meth:`stream_features` of
        ``inputs``: ``S_i [n, B, C_i, H_i, W_i]``), as :meth:`encode` returns them.

        With ``batch_modalities`` and several streams the weighted maps are summed over the
        stream axis in one reduction, else one stream after the other (the order of the float
        additions of each path is kept, so either gives the same bits as before).
        """
        if self.fusion_gates is not None:
            return self.gate_fuse(inputs, stacked)
        b = inputs[0][1].shape[0]
        masks = [m for _, _, m in inputs]
        n = len(inputs)
        if all(m is None for m in masks):
            weights, count = None, float(n if self.reduce == "mean" else 1)
        else:
            ref = inputs[0][1]
            weights = torch.stack([
                torch.ones(b, dtype=ref.dtype, device=ref.device) if m is None
                else m.to(device=ref.device, dtype=ref.dtype)
                for m in masks
            ])  # [n, B]
            count = (weights.sum(0).view(b, 1, 1, 1)  # >= 1: checked by _modality_inputs
                     if self.reduce == "mean" else 1.0)
        if n > 1 and self.batch_modalities:
            feats = stacked
            if weights is not None:
                w = weights.to(feats[0].dtype).view(n, b, 1, 1, 1)
                feats = [f * w for f in feats]
            return [f.sum(0) / _like(count, f) for f in feats]
        summed: list[Tensor] | None = None
        for k in range(n):
            feats = [f[k] for f in stacked]
            if weights is not None:
                w = weights[k].to(feats[0].dtype).view(b, 1, 1, 1)
                feats = [f * w for f in feats]
            summed = (
                feats if summed is None else [s + f for s, f in zip(summed, feats, strict=True)]
            )
        assert summed is not None
        return [s / _like(count, s) for s in summed]

    # ------------------------------------------------------------------ independent streams
    independent_streams = True

    def encode_streams(self, batch: Mapping[str, object]) -> dict[str, list[Tensor]]:
        """``{name: [E_1(x), .., E_4(x)]}`` (maps ``[B, C_i, H_i, W_i]`` of the padded, masked
        image) for the modalities of ``batch``, encoded as :meth:`forward` encodes that batch
        (one concatenated encoder batch with ``batch_modalities``)."""
        inputs = [(n, self.pad_to_multiple(x), m) for n, x, m in self._modality_inputs(batch)]
        stacked = self.stream_features(inputs)
        return {name: [f[k] for f in stacked] for k, (name, _, _) in enumerate(inputs)}

    def forward_from_streams(self, batch: Mapping[str, object],
                             streams: Mapping[str, list[Tensor]]) -> Tensor:
        """Eval-mode :meth:`forward` of ``batch`` with the encoder maps from ``streams``
        (:meth:`encode_streams`): logits ``[B, K, H, W]``.

        Raises:
            KeyError: a modality of ``batch`` missing from ``streams``.
        """
        inputs = self._modality_inputs(batch)
        size = inputs[0][1].shape[-2:]
        padded = self.pad_to_multiple(inputs[0][1]).shape[-2:]
        levels = len(streams[inputs[0][0]])
        stacked = [torch.stack([streams[name][i] for name, _, _ in inputs], dim=0)
                   for i in range(levels)]
        return self.upsample_logits(self.decode_head(self.fuse(inputs, stacked)), size, padded)

    @classmethod
    def infer_num_classes(cls, state_dict: Mapping[str, Tensor]) -> int | None:
        """``K`` from the SegFormer head's ``decode_head.linear_pred`` weight."""
        return SegFormerHead.num_classes_in(state_dict, "decode_head.")

    def forward(self, batch: Mapping[str, object]) -> Tensor | SegmentationOutput:
        """``batch`` (see :meth:`Segmentor._modality_inputs`) -> logits ``[B, K, H, W]``; in
        training with ``modality_aux > 0`` a :class:`SegmentationOutput` whose ``aux`` holds
        ``modality_<name>`` logits ``[B, K, H/4, W/4]`` per modality in the batch."""
        inputs = self._modality_inputs(batch)
        size = inputs[0][1].shape[-2:]
        inputs = [(n, self.pad_to_multiple(x), m) for n, x, m in inputs]
        padded = inputs[0][1].shape[-2:]
        if not (self.training and self.modality_aux > 0):
            return self.upsample_logits(self.decode_head(self.encode(inputs)), size, padded)
        stacked = self.stream_features(inputs)
        fused = (self.gate_fuse(inputs, stacked) if self.fusion_gates is not None
                 else self._mean_of(inputs, stacked))
        logits = self.upsample_logits(self.decode_head(fused), size, padded)
        aux = {}
        for k, (name, _, mask) in enumerate(inputs):
            stream = self.decode_head([f[k] for f in stacked])
            if padded != size:  # the aux loss resizes to the label: crop the padding first
                stream = self.upsample_logits(stream, size, padded)
            aux[f"modality_{name}"] = AuxiliaryLogits(stream, self.modality_aux,
                                                      sample_mask=mask)
        return SegmentationOutput(logits, aux=aux)

    def _mean_of(self, inputs: list[ModalityInput], stacked: list[Tensor]) -> list[Tensor]:
        """``reduce`` mean / sum of :meth:`stream_features`' maps over the present streams."""
        b = inputs[0][1].shape[0]
        w = torch.stack([torch.ones(b, device=stacked[0].device) if m is None
                         else m.to(stacked[0].device).float() for _, _, m in inputs])  # [n, B]
        count = w.sum(0).view(b, 1, 1, 1) if self.reduce == "mean" else torch.ones(b, 1, 1, 1)
        out = []
        for f in stacked:
            wf = w.to(f.dtype).view(*w.shape, 1, 1, 1)
            out.append((f * wf).sum(0) / count.to(device=f.device, dtype=f.dtype))
        return out


#: tiny settings of the contract tests
SUM_FUSION_TINY = {
    "num_classes": 3,
    "modalities": ["rgb", "depth"],
    "backbone": "mit_b0",
    "decoder_dim": 16,
    "backbone_kwargs": MIT_TINY,
}


register_model("sum_fusion", tiny=SUM_FUSION_TINY)(SumFusionSegmentor)
register_model("segformer", tiny={**SUM_FUSION_TINY, "modalities": ["rgb"]})(SumFusionSegmentor)
