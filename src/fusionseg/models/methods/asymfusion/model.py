"""AsymFusion: one shared ResNet with modality-specific BatchNorm, shift-shuffle fusion,
Light-Weight RefineNet, per-stream logits and a learned ensemble.

Source: Yikai Wang, Fuchun Sun, Ming Lu, Anbang Yao, "Learning Deep Multimodal Feature
Representation with Asymmetric Multi-layer Fusion", ACM MM 2020 (arXiv 2108.05009). Official
code: GitHub ``yikaiw/AsymFusion`` - ``models/model.py`` (``RefineNet``, ``Bottleneck``,
``ShiftShuffle``, ``model_init`` / ``expand_model_dict``), ``models/parallel.py``
(``ModuleParallel``, ``BatchNorm2dParallel``), ``main.py`` (loss).

Model (streams ``x_1`` = first modality, ``x_2`` = second, each ``[B, 3, H, W]``)::

    every convolution is shared; every encoder BatchNorm exists once per modality (bn_0, bn_1),
    each a copy of the same (ImageNet) BN; running statistics frozen in training
    ResNet stages 1..4; the last bottleneck of each stage (not a stage's first) is fused
    (two streams only):
        h = ReLU(BN1 conv1 x); (h', sigma) = ShiftShuffle(h); u = ReLU(BN2 conv2 h')
        u_1 += sigma_2; u_2 += sigma_1; u' = ShiftShuffle_reversed(u); out = ReLU(BN3 conv3 u' + x)
    Light-Weight RefineNet (shared) on each stream -> logits_m at 1/4
    ensemble = sum_m softmax(alpha)_m * stopgrad(logits_m)        (alpha initialised to ones)

``forward(batch)`` returns the ensemble logits at input size (bilinear, ``align_corners=False``
from 1/4; in evaluation ``eval_upsample="bicubic"`` gives the release's evaluation resize,
``cv2.resize(..., INTER_CUBIC)`` of ``main.py:318-320``, which torch's bicubic with
``align_corners=False`` computes: same pixel mapping, Keys kernel A = -0.75, edge taps
clamped); :meth:`AsymFusionSegmentor.stream_logits` gives each stream's and the ensemble's by
name. Training returns a :class:`~fusionseg.models.SegmentationOutput` whose main logits are the
ensemble and whose auxiliary outputs are the per-stream logits with weight 1 and
cross-entropy: the loss is the sum of the NLL of every stream and of the ensemble (equal
weights, ignore 255), as released; the ensemble term reaches only ``alpha``.

One modality present (absent key, or ``present`` false for the whole batch): the model runs that
stream alone with its own BNs, without fusion, and returns its logits (the release has no such
path: its forward fails with one input). A batch mixing samples with and without a modality runs
one sub-batch per presence pattern, so each sample gets what it would get alone; in training
a stream's auxiliary loss leaves out the samples that lack its modality.

Checkpoint keys: the release's (``conv1.module.weight``, ``bn1.bn_0.*``, decoder
``p_ims1d2_outl*`` ...) are renamed to ours by :mod:`.release` (``checkpoint_filter_fn``,
``is_released_format``). torchvision ImageNet files go to ``pretrained`` (every BN copied to both
streams). The files the release's ``Saver`` writes (``utils/meter.py:53-89``, called at
``main.py:430``: ``{'segmenter': state_dict, 'epoch_start': int, 'best_val': float}``, keys
under DataParallel's ``module.``) load as they are: :func:`~fusionseg.models.weights.load_checkpoint`
unwraps ``'segmenter'`` and strips the ``module.`` every key carries before this conversion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from ...backbones.resnet import RESNET_TINY, ResNet
from ...options import BackboneKwargs, BackboneOptions, Pretrained, resolve_options
from ...registry import register_model
from ...segmentor import AuxiliaryLogits, SegmentationOutput, Segmentor
from .fusion import fused_bottleneck, parallelize_batchnorms, set_active_streams
from .refinenet import RefineNetLW
from .release import checkpoint_filter_fn, is_released_format

__all__ = ["ASYMFUSION_TINY", "AsymFusionOptions", "AsymFusionSegmentor"]


class AsymFusionOptions(BackboneOptions):
    """Options of ``asymfusion`` (the ``model`` section of a config)."""

    method_name: ClassVar[str] = "asymfusion"
    backbone_types: ClassVar[tuple[type, ...]] = (ResNet,)

    modalities: tuple[str, ...] = Field(
        ("rgb", "depth"), min_length=1,
        description="one or two modality names; the first is stream 1, e.g. [rgb, depth]")
    backbone: str = Field("resnet101", description="ResNet encoder (resnet50 / 101 / 152)")
    pretrained: Pretrained = Field(
        None, description="encoder weights: a torchvision ImageNet file or catalogue name")
    shift_shuffle: bool = Field(
        True, description="shift-shuffle fusion in each stage's last bottleneck (off: ablation)")
    dropout: float = Field(0.5, ge=0, le=1, description="RefineNet dropout probability")
    freeze_bn_stats: bool = Field(
        True, description="keep the encoder BatchNorm running statistics fixed in training")
    decoder_channels: int = Field(
        256, gt=0, description="Light-Weight RefineNet width (256 as released)")
    eval_upsample: Literal["bilinear", "bicubic"] = Field(
        "bilinear", description="1/4-scale logits to input size outside training")
    backbone_kwargs: BackboneKwargs = None

    @field_validator("modalities")
    @classmethod
    def _one_or_two(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) > 2:
            raise ValueError(f"AsymFusion fuses one or two modalities, got {list(v)}")
        return v


class AsymFusionSegmentor(Segmentor):
    """AsymFusion (see the module docstring).

    Built from :class:`AsymFusionOptions` (an instance, or its fields as keyword arguments:
    ``AsymFusionSegmentor(num_classes=40, backbone="resnet50")``). In more detail:

        backbone: a registered ResNet (``resnet50 / 101 / 152``), loaded from ``pretrained``
            first; its BatchNorms then become per-modality copies.
        modalities: one or two modality names (first = stream 1, e.g. ``["rgb", "depth"]``).
        shift_shuffle: the fusion in the last bottleneck of each stage (off: the ablation).
        dropout: decoder dropout (0.5).
        freeze_bn_stats: keep the encoder BatchNorms' running statistics fixed in training (as
            released; their affine parameters train).
        decoder_channels: RefineNet width (256 as released; smaller for CPU demos).
        eval_upsample: how the 1/4-scale logits reach input size outside training:
            ``"bilinear"`` (default, ``align_corners=False``) or ``"bicubic"`` (the release's
            evaluation, ``main.py:318-320``). Training always upsamples bilinearly, as the
            release's loss does (``main.py:273-274``).

    Raises:
        ConfigError: options that do not validate (more than two modalities, an unknown
            ``eval_upsample``, ...), ``backbone_kwargs`` repeating ``pretrained``, a backbone
            that is not a ResNet.
        FileNotFoundError, CheckpointMismatchError: from loading ``pretrained``.
    """

    Options = AsymFusionOptions

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)
    is_released_format = staticmethod(is_released_format)

    def __init__(self, options: AsymFusionOptions | None = None, /, **kwargs: Any) -> None:
        o = resolve_options(AsymFusionOptions, options, kwargs)
        super().__init__(o.modalities, o.num_classes)
        self.options = o
        backbone = o.build_backbone()
        self.eval_upsample = o.eval_upsample
        self.backbone = parallelize_batchnorms(backbone, len(self.modalities))
        self.decode_head = RefineNetLW(backbone.out_channels, o.num_classes, o.dropout,
                                       o.decoder_channels)
        self.alpha = nn.Parameter(torch.ones(len(self.modalities)))
        self.shift_shuffle = o.shift_shuffle and len(self.modalities) == 2
        self.freeze_bn_stats = o.freeze_bn_stats

    def train(self, mode: bool = True) -> AsymFusionSegmentor:
        """``nn.Module.train`` keeping the encoder BatchNorms in eval mode when
        ``freeze_bn_stats`` (the release's ``model.train()`` + BN ``eval()`` per step)."""
        super().train(mode)
        if mode and self.freeze_bn_stats:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    # ------------------------------------------------------------------ forward
    def encode(self, x: Tensor, streams: tuple[int, ...]) -> list[Tensor]:
        """Encoder on the stream-major batch ``x [S * B, 3, H, W]`` of ``streams`` -> 4 maps."""
        bb = self.backbone
        set_active_streams(bb, streams)
        try:
            x = bb.stem(x)
            feats = []
            for i in range(4):
                blocks = bb.stage(i)
                for j, blk in enumerate(blocks):
                    # the last block of a stage, never its first (strided) one: as released
                    fuse = (self.shift_shuffle and len(streams) == 2 and j >= 1
                            and j == len(blocks) - 1)
                    x = bb.maybe_checkpoint(self.stream_bottleneck, blk, x, streams, fuse,
                                            modules=(blk,))
                feats.append(x)
        finally:
            set_active_streams(bb, None)
        return feats

    @staticmethod
    def stream_bottleneck(blk: nn.Module, x: Tensor, streams: tuple[int, ...],
                          fuse: bool) -> Tensor:
        """One bottleneck on the stream-major batch ``x [S * B, C, H, W]`` of ``streams``: the
        fused one (:func:`~fusionseg.models.methods.asymfusion.fusion.fused_bottleneck`, shift-shuffle) when
        ``fuse``, else the plain block. Sets the block's per-modality BatchNorms to ``streams``
        itself, so that a recomputation in backward (activation checkpointing, after
        :meth:`encode` has reset them) uses the same BatchNorms."""
        set_active_streams(blk, streams)
        try:
            return fused_bottleneck(blk, x) if fuse else blk(x)
        finally:
            set_active_streams(blk, None)

    def output_names(self) -> list[str]:
        """Each stream's logits and the ensemble's, all scored by ``eval``."""
        return [*self.modalities, "ensemble"]

    def named_outputs(self, batch: Mapping[str, object]) -> dict[str, Tensor]:
        """:meth:`stream_logits`."""
        return self.stream_logits(batch)

    def stream_logits(self, batch: Mapping[str, object]) -> dict[str, Tensor]:
        """``{modality: logits, ..., "ensemble": logits}``, each ``[B, K, H, W]`` at input size.

        A batch whose samples have different modalities (``present`` rows differ) is run as one
        sub-batch per presence pattern, so a sample missing a modality gets exactly what it gets
        alone (that stream without fusion); a modality's logits are zeros for the samples that
        lack it. Ours: the release has no missing-modality path.
        """
        sb = self.stream_inputs(batch)
        patterns = torch.unique(sb.present, dim=0)
        if patterns.shape[0] > 1:
            return self._stream_logits_per_pattern(batch, sb.present, patterns)
        size = sb.size
        streams = tuple(i for i in range(len(sb.names)) if bool(sb.present[:, i].any()))
        x = self.pad_to_multiple(torch.cat([sb.images[i] for i in streams], dim=0))
        logits = self.decode_head(self.encode(x, streams))  # dropout on l3 / l4 inside
        per = logits.chunk(len(streams), dim=0)
        out = {sb.names[i]: self._upsample(p, size, x.shape[-2:]) for i, p in
               zip(streams, per, strict=True)}
        if len(streams) == 2:
            w = F.softmax(self.alpha, dim=0)
            ens = w[0] * per[0].detach() + w[1] * per[1].detach()
        else:
            ens = per[0]
        out["ensemble"] = self._upsample(ens, size, x.shape[-2:])
        return out

    def _upsample(self, logits: Tensor, size: Sequence[int], padded: Sequence[int]) -> Tensor:
        """1/4-scale logits -> input size: bilinear in training and by default; bicubic
        (``align_corners=False``) in evaluation with ``eval_upsample="bicubic"``."""
        if self.training or self.eval_upsample == "bilinear":
            return self.upsample_logits(logits, size, padded)
        out = F.interpolate(logits.contiguous(), size=tuple(padded), mode="bicubic",
                            align_corners=False)
        return out[..., : size[0], : size[1]]

    def _stream_logits_per_pattern(self, batch: Mapping[str, object], present: Tensor,
                                   patterns: Tensor) -> dict[str, Tensor]:
        """:meth:`stream_logits` of a mixed batch, one sub-batch per row of ``patterns``."""
        b = present.shape[0]
        out: dict[str, Tensor] = {}
        for pat in patterns:
            idx = (present == pat).all(1).nonzero().flatten()
            sub = {k: (v[idx.to(v.device)] if isinstance(v, Tensor) and v.ndim >= 1
                       and v.shape[0] == b else v) for k, v in batch.items() if k != "meta"}
            sub["present"] = present[idx]
            for k, v in self.stream_logits(sub).items():
                if k not in out:
                    out[k] = v.new_zeros(b, *v.shape[1:])
                out[k] = out[k].index_copy(0, idx.to(v.device), v)
        return {k: out[k] for k in [*(m for m in self.modalities if m in out), "ensemble"]}

    def forward(self, batch: Mapping[str, object]) -> Tensor | SegmentationOutput:
        """``batch`` -> ensemble logits ``[B, K, H, W]`` (training: with the per-stream logits as
        auxiliary outputs)."""
        out = self.stream_logits(batch)
        ens = out.pop("ensemble")
        if not self.training:
            return ens
        label = batch.get("label")
        present = self.stream_inputs(batch).present if isinstance(label, Tensor) else None
        aux = {}
        for m, v in out.items():
            target = None  # a stream's loss leaves out the samples that lack the modality
            if present is not None and not bool(present[:, self.modalities.index(m)].all()):
                have = present[:, self.modalities.index(m)].to(label.device).view(-1, 1, 1)
                target = label.masked_fill(~have, 255)
            aux[f"stream_{m}"] = AuxiliaryLogits(v, weight=1.0, loss={"name": "ce"},
                                                 target=target)
        return SegmentationOutput(ens, aux=aux)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def infer_num_classes(cls, state_dict: Mapping[str, Tensor]) -> int | None:
        """``K`` from the RefineNet classifier ``decode_head.clf_conv.bias`` (either format)."""
        w = checkpoint_filter_fn(state_dict).get("decode_head.clf_conv.bias")
        return None if w is None else int(w.shape[0])


#: tiny settings of the contract tests: two blocks per stage, so that the fused last block
#: exists
ASYMFUSION_TINY = {
    "num_classes": 3,
    "modalities": ["rgb", "depth"],
    "backbone": "resnet50",
    "backbone_kwargs": {**RESNET_TINY, "layers": (2, 2, 2, 2)},
}


register_model("asymfusion", tiny=ASYMFUSION_TINY)(AsymFusionSegmentor)
