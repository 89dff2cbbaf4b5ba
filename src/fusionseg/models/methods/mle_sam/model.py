"""MLE-SAM: a frozen SAM2 image encoder with one LoRA expert per modality, modality routing per
FPN level, SAM2's mask decoder as the semantic head and an auxiliary multi-scale head.

Source: Chenyang Zhu, Bin Xiao, Lin Shi, Shoukun Xu, Xu Zheng, "Customize Segment Anything
Model for Multi-Modal Semantic Segmentation with Mixture of LoRA Experts", arXiv 2412.04220.
**No official code is public.** The abstract fixes: SAM's image encoder frozen, a mixture of
LoRA experts per modality, a MoE routing that weights the modalities' features, multi-scale
fusion, SAM's mask decoder adapted for semantic segmentation plus an auxiliary head. Everything
else here is our reconstruction (``../shared/specs/mle_sam.md``; ``docs/methods/mle_sam.md``
lists each choice and what is secondhand), kept configurable.

Model (``M`` modalities ``x_m [B, 3, H, W]``, zero-padded to a multiple of 32)::

    for each modality m with a present sample:            # one [R*B, 3, H, W] batch, R streams
        trunk features of x_m = Hiera(x_m) with LoRA expert m on q, v of every qkv (frozen W)
        P_m^1..4 = FPN neck (frozen, shared)               # [B, 256, H/s, W/s], s = 4, 8, 16, 32
    for each level l: F^l = ModalityRouter_l(P_1^l .. P_M^l, present)   # weighted + integrated
    logits_main = Sam2SemanticDecoder(F^3 (stride 16), high-res (F^1, F^2))   # 1/4 scale
    logits_aux  = SegFormer-style MLP head over F^1..F^4                       # 1/4 scale
    both bilinear to the padded size and cropped

SAM v1 option (``backbone: sam_vit_b | _l | _h``, the spec's second encoder): the ViT's taps at
its global-attention blocks (stride 16, LoRA experts in every block) feed a new, trainable
ViTDet simple feature pyramid (strides 4, 8, 16, 32) whose stride-16 level is SAM's own frozen
neck output (the embedding SAM's decoder was trained on); SAM v1's mask decoder (no
high-resolution features) decodes the routed stride-16 level. Inputs are padded to 32.

Training returns :class:`~fusionseg.models.SegmentationOutput` with ``aux["aux"]`` (weight
``aux_weight``, 0.4, the configured loss): loss = L(main) + 0.4 L(aux). Inference returns the
main head's logits (``inference="mean"``: the mean of both heads' logits).

Missing modalities: a modality absent for the whole batch is not encoded at all; a sample whose
``present`` entry is false contributes zeros and is left out of the routing softmax (see
:class:`~fusionseg.models.methods.mle_sam.routing.ModalityRouter`). So an absent key and a zero image
flagged absent give the same logits, and any non-empty subset of the trained modalities runs.

Checkpoints: ``pretrained`` = an official ``sam2.1_hiera_*.pt`` (``{"model": {...}}``): the
trunk loads strictly from ``image_encoder.trunk.*``, the neck from ``image_encoder.neck.*``, the
decoder from ``sam_mask_decoder.*`` (+ ``sam_prompt_encoder`` no-mask embedding and position
matrix, ``no_mem_embed``) where shapes allow (class tokens from the 4 mask tokens, cycled).
Our whole-model checkpoints keep our keys (``encoder.*``, ``neck.*``, ``routers.*``,
``decode_head.*``, ``aux_head.*``; LoRA under ``encoder.blocks.{i}.attn.qkv.lora.*``). The
authors released no weights (nor code), so there is no released whole-model format: the
segmentor keeps :meth:`~fusionseg.models.segmentor.Segmentor.checkpoint_filter_fn`'s identity.
The SAM parts convert official files with their own ``checkpoint_filter_fn`` (module
functions of ``fpn_neck`` and ``decoder``, bound on :class:`Sam2FpnNeck` and
:class:`Sam2SemanticDecoder`) and load them with ``load_pretrained(path)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ....errors import ConfigError
from ...backbones.hiera import HIERA_TINY, Hiera
from ...backbones.sam_vit import SamVisionTransformer
from ...heads.segformer import SegFormerHead
from ...options import BackboneKwargs, BackboneOptions, Pretrained, resolve_options
from ...peft.lora import inject_lora_experts, lora_modules, set_active_experts
from ...registry import register_model
from ...segmentor import AuxiliaryLogits, SegmentationOutput, Segmentor
from .decoder import Sam2SemanticDecoder
from .fpn_neck import Sam2FpnNeck
from .routing import ModalityRouter
from .simple_pyramid import SimpleFeaturePyramid

__all__ = ["MLESAMOptions", "MLESAMSegmentor"]


class MLESAMOptions(BackboneOptions):
    """Options of ``mle_sam`` (the ``model`` section of a config); see :class:`MLESAMSegmentor`
    for what each one does in detail."""

    method_name: ClassVar[str] = "mle_sam"
    backbone_types: ClassVar[tuple[type, ...]] = (Hiera, SamVisionTransformer)

    modalities: tuple[str, ...] = Field(
        ("rgb", "depth", "event", "lidar"), min_length=1,
        description="ordered modality names, one LoRA expert each")
    backbone: str = Field(
        "sam2.1_hiera_b+",
        description="encoder: sam2.1_hiera_t | _s | _b+ | _l, or SAM v1 sam_vit_b | _l | _h")
    pretrained: Pretrained = Field(
        None, description="official SAM 2.1 / SAM v1 file or catalogue name for encoder, neck "
                          "and decoder (None: random)")
    rank: int = Field(32, gt=0, description="LoRA rank r of every expert")
    lora_alpha: float | None = Field(
        None, gt=0, description="LoRA scale numerator, scale = alpha / r (None: r, scale 1)")
    shared_expert: bool = Field(False, description="add one LoRA expert shared by every stream")
    gate: Literal["pixel", "image"] = Field(
        "pixel", description="routing score per pixel or per image (from the spatial mean)")
    top_k: int | None = Field(
        None, ge=1, description="route over the k best-scoring present modalities (None: all)")
    weighted: bool = Field(True, description="routing's weighted path (softmax-weighted sum)")
    integrate: Literal["conv", "mean"] | None = Field(
        "conv", description="routing's integrated path: 1x1 conv, mean, or None (off)")
    aux_head: bool = Field(True, description="train the auxiliary multi-scale MLP head")
    aux_weight: float = Field(0.4, ge=0, description="loss weight of the auxiliary head")
    aux_channels: int = Field(256, gt=0, description="width of the auxiliary head")
    inference: Literal["main", "mean"] = Field(
        "main", description="eval logits: the main head's, or the mean of main and auxiliary")
    freeze_encoder: bool = Field(True, description="keep the encoder frozen (False: train it)")
    train_neck: bool = Field(False, description="train the SAM 2 FPN neck (default frozen)")
    neck_dim: int = Field(256, gt=0, description="FPN and decoder width d (256 in SAM 2)")
    backbone_kwargs: BackboneKwargs = Field(
        None, description="encoder constructor overrides (e.g. tiny test widths)")
    decoder_kwargs: dict[str, Any] | None = Field(
        None, description="Sam2SemanticDecoder constructor overrides (e.g. num_heads, mlp_dim)")


def _neck_and_decoder(encoder: nn.Module, o: MLESAMOptions
                      ) -> tuple[nn.Module, Sam2SemanticDecoder]:
    """The neck and decoder for ``encoder`` (pretrained parts loaded from ``o.pretrained``):
    SAM 2 FPN neck + SAM 2 decoder for a Hiera trunk, a new simple feature pyramid + SAM v1
    decoder for a SAM ViT.

    Raises:
        ConfigError: a SAM ViT whose last tap is not its last block, or whose neck width is
            not ``neck_dim``.
    """
    extra = dict(o.decoder_kwargs or {})
    if isinstance(encoder, SamVisionTransformer):
        if encoder.out_indices[-1] != encoder.depth - 1:
            raise ConfigError("MLE-SAM with a SAM ViT needs its last tap at the last block (the "
                              "image embedding is SAM's neck on it)")
        if encoder.out_chans != o.neck_dim:
            raise ConfigError(f"{o.backbone}'s neck gives {encoder.out_chans} channels but "
                              f"neck_dim is {o.neck_dim}")
        neck: nn.Module = SimpleFeaturePyramid(encoder.embed_dim, d_model=o.neck_dim)
        head = Sam2SemanticDecoder(o.num_classes, transformer_dim=o.neck_dim, variant="sam",
                                   **extra)
    else:
        neck = Sam2FpnNeck.from_trunk(encoder, d_model=o.neck_dim)
        head = Sam2SemanticDecoder(o.num_classes, transformer_dim=o.neck_dim, **extra)
        if o.pretrained is not None:
            neck.load_pretrained(o.pretrained)
    if o.pretrained is not None:
        head.load_pretrained(o.pretrained)
    return neck, head


class MLESAMSegmentor(Segmentor):
    """MLE-SAM (see the module docstring).

    Built from :class:`MLESAMOptions` (an instance, or its fields as keyword arguments)::

        create_model({"name": "mle_sam", "backbone": "sam2.1_hiera_b+",
                      "modalities": ["rgb", "depth", "event", "lidar"], "num_classes": 25,
                      "pretrained": "checkpoints/sam2.1_hiera_base_plus.pt"})
        MLESAMSegmentor(num_classes=25, modalities=["rgb", "depth"])  # the same class

    In more detail:

        backbone: ``sam2.1_hiera_t | _s | _b+ | _l`` (B+ as published, secondhand): a SAM 2.1
            Hiera trunk with the SAM 2 FPN neck over its 4 maps and the prompt-free SAM 2 mask
            decoder; or the SAM v1 ``sam_vit_b | _l | _h`` (the spec's second option): the
            ViT's taps at its global-attention blocks (4 taps, the last at the last block)
            feed a new :class:`~fusionseg.models.methods.mle_sam.simple_pyramid.
            SimpleFeaturePyramid` whose stride-16 level is SAM's own (frozen) neck output, and
            SAM v1's mask decoder. LoRA experts are injected into the encoder here.
        pretrained: an official ``sam2.1_hiera_*.pt`` (trunk strict, neck strict, mask decoder
            where shapes allow: class tokens / hypernetworks ``i`` from the official ``i % 4``)
            or ``sam_vit_*.pth`` (encoder with its neck strict, mask decoder where shapes
            allow), Hugging Face files of either, or a catalogue name; ``None`` = random
            weights. LoRA starts at zero, so the encoder starts as the pretrained one.
        rank, lora_alpha, shared_expert: LoRA rank (32), scale numerator (``None`` = rank:
            scale 1) and an extra expert shared by every stream (off).
        gate, top_k, weighted, integrate: the routing of every level (see
            :class:`~fusionseg.models.methods.mle_sam.routing.ModalityRouter`).
        aux_head: train the auxiliary multi-scale head; ``aux_weight`` its loss weight (0.4);
            ``aux_channels`` its width.
        inference: ``"main"`` (default) or ``"mean"`` (average of the main and aux logits).
        freeze_encoder: keep the trunk frozen (the method; ``False`` trains it fully, for
            experiments without pretrained weights).
        train_neck: train the SAM 2 FPN neck (default frozen, part of SAM2's image encoder);
            the SAM v1 pyramid is new and always trains.
        neck_dim: FPN width ``d`` (256 in SAM2; the decoder's width; a SAM ViT's own neck must
            give as many channels).
        backbone_kwargs, decoder_kwargs: constructor overrides (tiny test widths).

    ``forward(batch) -> logits [B, K, H, W]``; a :class:`SegmentationOutput` in training with a
    label.

    Raises:
        ConfigError: options that do not validate (``gate: nope``, ``top_k: 0``, a backbone
            that is not a SAM 2.1 Hiera or SAM ViT, ``backbone_kwargs`` repeating
            ``pretrained``, ...; one line naming the option), an encoder without 4 output maps, a SAM ViT whose last tap is
            not its last block or whose neck width is not ``neck_dim``, ``inference: mean``
            without the auxiliary head, a routing with neither path.
        CheckpointError, CheckpointMismatchError: from loading ``pretrained``.
    """

    Options = MLESAMOptions

    def __init__(self, options: MLESAMOptions | None = None, /, **kwargs: Any) -> None:
        o = resolve_options(MLESAMOptions, options, kwargs)
        super().__init__(o.modalities, o.num_classes)
        self.options = o
        if o.inference == "mean" and not o.aux_head:
            raise ConfigError("inference='mean' needs the auxiliary head (aux_head=True)")
        encoder = o.build_backbone()
        if len(getattr(encoder, "out_channels", ())) != 4:
            raise ConfigError("MLE-SAM needs an encoder with 4 output maps (sam2.1_hiera_*)")
        neck, decode_head = _neck_and_decoder(encoder, o)
        #: "sam2" (Hiera + FPN neck + SAM 2 decoder) or "sam" (SAM v1 ViT + pyramid + SAM decoder)
        self.encoder_kind = "sam" if isinstance(encoder, SamVisionTransformer) else "sam2"
        self.encoder = encoder
        self.neck = neck
        d = neck.d_model
        self.lora_rank = o.rank
        inject_lora_experts(encoder, self.modalities, rank=o.rank, alpha=o.lora_alpha,
                            shared=o.shared_expert)
        self.routers = nn.ModuleList(
            ModalityRouter(d, len(self.modalities), gate=o.gate, top_k=o.top_k,
                           weighted=o.weighted, integrate=o.integrate)
            for _ in range(4)
        )
        self.decode_head = decode_head
        self.aux_head = (SegFormerHead([d] * 4, o.num_classes, o.aux_channels) if o.aux_head
                         else None)
        self.aux_weight = o.aux_weight
        self.inference = o.inference
        self.freeze_encoder, self.train_neck = o.freeze_encoder, o.train_neck
        if self.backbone_modules():
            self.freeze_backbone()

    def extra_repr(self) -> str:
        r = self.routers[0]
        return (f"modalities={self.modalities}, rank={self.lora_rank}, gate={r.gate_kind!r}, "
                f"top_k={r.top_k}, integrate={r.integrate_kind!r}, "
                f"aux_head={self.aux_head is not None}, inference={self.inference!r}")

    # ------------------------------------------------------------------ parameters
    def backbone_modules(self) -> list[nn.Module]:
        """The frozen parts: the trunk (unless ``freeze_encoder`` is off; a SAM ViT with its
        neck) and the SAM2 FPN neck (unless ``train_neck``; the SAM v1 pyramid is new and
        always trains). LoRA experts inside the trunk are the method's own (trainable)."""
        mods: list[nn.Module] = []
        if self.freeze_encoder:
            mods.append(self.encoder)
        if not self.train_neck and self.encoder_kind == "sam2":
            mods.append(self.neck)
        return mods

    @property
    def input_multiple(self) -> int:
        """32: Hiera's, and for a SAM ViT (16) the pyramid's stride-32 level."""
        return math.lcm(int(getattr(self.encoder, "input_multiple", 32)), 32)

    def trainable_fraction(self) -> float:
        """Trainable parameters / parameters of the frozen trunk (without its LoRA)."""
        lora = {id(p) for m in lora_modules(self.encoder) for p in m.lora.parameters()}
        frozen = sum(p.numel() for p in self.encoder.parameters() if id(p) not in lora)
        return self.param_counts()["trainable"] / max(frozen, 1)

    # ------------------------------------------------------------------ forward
    def encode(self, images: Sequence[Tensor], present: Tensor) -> list[Tensor]:
        """The routed FPN levels: 4 maps ``[B, d, H/s, W/s]`` (s = 4, 8, 16, 32).

        Args:
            images: ``M`` padded images ``[B, 3, H, W]`` in model order.
            present: ``bool[B, M]``; modalities with no present sample are not encoded.
        """
        run, levels = self.stream_levels(images, present)
        return self.route(levels, run, present)

    def stream_levels(self, images: Sequence[Tensor], present: Tensor
                      ) -> tuple[list[int], list[Tensor]]:
        """The FPN levels of each encoded stream, before the routing.

        Args:
            images, present: as :meth:`encode`.

        Returns:
            ``(run, levels)``: ``run`` the model-order indices of the modalities encoded (those
            with a present sample), ``levels`` 4 maps ``[R, B, d, H/s, W/s]`` (``R =
            len(run)``; the trunk runs the ``R`` streams as one batch, each with its expert).
        """
        b = images[0].shape[0]
        run = [j for j in range(len(images)) if bool(present[:, j].any())]
        set_active_experts(self.encoder, [self.modalities[j] for j in run])
        x = torch.cat([images[j] for j in run], dim=0)  # [R * B, 3, H, W], stream-major
        feats = self.encoder(x)
        if self.encoder_kind == "sam":
            levels = self.neck(feats, embed=self.encoder.apply_neck(feats[-1]))
        else:
            levels = self.neck(feats)
        return run, [f.view(len(run), b, *f.shape[1:]) for f in levels]

    def route(self, levels: Sequence[Tensor], run: Sequence[int], present: Tensor
              ) -> list[Tensor]:
        """The routed levels (:meth:`encode`) of :meth:`stream_levels`' ``(run, levels)``; the
        ``M - R`` modalities not encoded get zero maps."""
        n = present.shape[1]
        fused = []
        for lvl, per in enumerate(levels):  # [R, B, d, h, w]
            if len(run) < n:  # zeros for the modalities not encoded
                full = [per.new_zeros(per.shape[1:])] * n
                for i, j in enumerate(run):
                    full[j] = per[i]
                per = torch.stack(full, dim=0)
            fused.append(self.routers[lvl](per, present))
        return fused

    # ------------------------------------------------------------------ independent streams
    independent_streams = True

    def encode_streams(self, batch: Mapping[str, object]) -> dict[str, list[Tensor]]:
        """``{name: [L_1, .., L_4]}``: the FPN levels ``[B, d, H/s, W/s]`` of each modality of
        ``batch`` with a present sample (its expert, padded and masked image), encoded as
        :meth:`forward` encodes that batch (one trunk batch)."""
        streams = self.stream_inputs(batch)
        images = [self.pad_to_multiple(x) for x in streams.images]
        run, levels = self.stream_levels(images, streams.present)
        return {self.modalities[j]: [f[i] for f in levels] for i, j in enumerate(run)}

    def forward_from_streams(self, batch: Mapping[str, object],
                             streams: Mapping[str, list[Tensor]]) -> Tensor:
        """Eval-mode :meth:`forward` of ``batch`` with the FPN levels from ``streams``
        (:meth:`encode_streams`): logits ``[B, K, H, W]``.

        Raises:
            KeyError: a modality with a present sample in ``batch`` missing from ``streams``.
        """
        inputs = self.stream_inputs(batch)
        present = inputs.present
        run = [j for j in range(len(self.modalities)) if bool(present[:, j].any())]
        names = [self.modalities[j] for j in run]
        levels = [torch.stack([streams[name][i] for name in names], dim=0)
                  for i in range(len(streams[names[0]]))]
        padded = self.pad_to_multiple(inputs.images[0]).shape[-2:]
        return self._logits(self.route(levels, run, present), inputs.size, padded, None)

    def forward(self, batch: Mapping[str, object]) -> Tensor | SegmentationOutput:
        """``batch`` of modality tensors (any non-empty subset present) -> logits
        ``[B, K, H, W]``."""
        streams = self.stream_inputs(batch)
        size = streams.size
        images = [self.pad_to_multiple(x) for x in streams.images]
        padded = images[0].shape[-2:]
        fused = self.encode(images, streams.present)
        label = batch.get("label") if isinstance(batch, Mapping) else None
        return self._logits(fused, size, padded, label)

    def _logits(self, fused: list[Tensor], size: Sequence[int], padded: Sequence[int],
                label: object) -> Tensor | SegmentationOutput:
        """The heads on the routed levels: logits ``[B, K, H, W]`` (in training with a
        ``label``, a :class:`SegmentationOutput` with the auxiliary head's logits)."""
        high_res = (fused[0], fused[1]) if self.encoder_kind == "sam2" else None
        main = self.upsample_logits(self.decode_head(fused[2], high_res), size, padded)
        aux = None
        if self.aux_head is not None and (self.training or self.inference == "mean"):
            aux = self.upsample_logits(self.aux_head(fused), size, padded)
        if self.training and isinstance(label, Tensor):
            extra = {} if aux is None else {"aux": AuxiliaryLogits(aux, self.aux_weight)}
            return SegmentationOutput(main, aux=extra)
        if self.inference == "mean" and aux is not None:
            return 0.5 * (main + aux)
        return main

#: tiny settings of the contract tests
MLE_SAM_TINY = {
    "num_classes": 3, "modalities": ["rgb", "depth"], "backbone": "sam2.1_hiera_t",
    "backbone_kwargs": HIERA_TINY, "rank": 2, "neck_dim": 16, "aux_channels": 8,
    "decoder_kwargs": {"num_heads": 2, "mlp_dim": 16},
}


register_model("mle_sam", tiny=MLE_SAM_TINY)(MLESAMSegmentor)
