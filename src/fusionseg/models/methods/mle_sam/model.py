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
``decode_head.*``, ``aux_head.*``; LoRA under ``encoder.blocks.{i}.attn.qkv.lora.*``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ....errors import ConfigError
from ...backbones import create_backbone
from ...backbones.hiera import HIERA_TINY
from ...backbones.sam_vit import SamVisionTransformer
from ...heads.segformer import SegFormerHead
from ...peft.lora import inject_lora_experts, lora_modules, set_active_experts
from ...registry import register_model
from ...segmentor import AuxiliaryLogits, SegmentationOutput, Segmentor
from .decoder import Sam2SemanticDecoder
from .fpn_neck import Sam2FpnNeck
from .routing import ModalityRouter
from .simple_pyramid import SimpleFeaturePyramid

__all__ = ["MLESAMSegmentor", "build_mle_sam"]


class MLESAMSegmentor(Segmentor):
    """MLE-SAM (see the module docstring).

    Args:
        encoder: a SAM2 Hiera trunk (``sam2.1_hiera_*``) or a SAM v1 ViT with 4 taps and its
            neck (``sam_vit_*``); pretrained weights loaded before; LoRA experts are injected
            into it here.
        neck: the SAM2 FPN neck over the trunk's 4 maps (Hiera), or a
            :class:`~fusionseg.models.methods.mle_sam.simple_pyramid.SimpleFeaturePyramid` over the ViT's
            taps whose stride-16 level is SAM's own (frozen) neck output (SAM v1); ``d``
            channels out.
        decode_head: the prompt-free SAM2 (Hiera) or SAM (ViT) mask decoder with one token per
            class.
        modalities: the modality names (one LoRA expert each).
        num_classes: ``K``.
        rank, lora_alpha, shared_expert: LoRA rank (32), scale numerator (``None`` = rank:
            scale 1) and an extra expert shared by every stream (off).
        gate, top_k, weighted, integrate: the routing of every level (see
            :class:`~fusionseg.models.methods.mle_sam.routing.ModalityRouter`).
        aux_head: train the auxiliary multi-scale head; ``aux_weight`` its loss weight (0.4);
            ``aux_channels`` its width.
        inference: ``"main"`` (default) or ``"mean"`` (average of the main and aux logits).
        freeze_encoder: keep the trunk frozen (the method; ``False`` trains it fully, for
            experiments without pretrained weights).
        train_neck: train the FPN neck (default frozen, part of SAM2's image encoder).

    ``forward(batch) -> logits [B, K, H, W]``; a :class:`SegmentationOutput` in training with a
    label.

    Raises:
        ConfigError: an encoder without 4 output maps, a SAM ViT whose last tap is not its last
            block, an unknown ``inference``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        neck: nn.Module,
        decode_head: Sam2SemanticDecoder,
        modalities: Sequence[str],
        num_classes: int,
        rank: int = 32,
        lora_alpha: float | None = None,
        shared_expert: bool = False,
        gate: str = "pixel",
        top_k: int | None = None,
        weighted: bool = True,
        integrate: str | None = "conv",
        aux_head: bool = True,
        aux_weight: float = 0.4,
        aux_channels: int = 256,
        inference: str = "main",
        freeze_encoder: bool = True,
        train_neck: bool = False,
    ) -> None:
        super().__init__(modalities, num_classes)
        if len(getattr(encoder, "out_channels", ())) != 4:
            raise ConfigError("MLE-SAM needs an encoder with 4 output maps (sam2.1_hiera_*)")
        if inference not in ("main", "mean"):
            raise ConfigError(f"inference must be 'main' or 'mean', got {inference!r}")
        if inference == "mean" and not aux_head:
            raise ConfigError("inference='mean' needs the auxiliary head (aux_head=True)")
        #: "sam2" (Hiera + FPN neck + SAM 2 decoder) or "sam" (SAM v1 ViT + pyramid + SAM decoder)
        self.encoder_kind = "sam" if isinstance(encoder, SamVisionTransformer) else "sam2"
        if self.encoder_kind == "sam" and encoder.out_indices[-1] != encoder.depth - 1:
            raise ConfigError("MLE-SAM with a SAM ViT needs its last tap at the last block (the "
                             "image embedding is SAM's neck on it)")
        self.encoder = encoder
        self.neck = neck
        d = neck.d_model
        self.lora_rank = int(rank)
        inject_lora_experts(encoder, self.modalities, rank=rank, alpha=lora_alpha,
                            shared=shared_expert)
        self.routers = nn.ModuleList(
            ModalityRouter(d, len(self.modalities), gate=gate, top_k=top_k, weighted=weighted,
                           integrate=integrate)
            for _ in range(4)
        )
        self.decode_head = decode_head
        self.aux_head = SegFormerHead([d] * 4, num_classes, aux_channels) if aux_head else None
        self.aux_weight = float(aux_weight)
        self.inference = inference
        self.freeze_encoder, self.train_neck = bool(freeze_encoder), bool(train_neck)
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
        b = images[0].shape[0]
        run = [j for j in range(len(images)) if bool(present[:, j].any())]
        set_active_experts(self.encoder, [self.modalities[j] for j in run])
        x = torch.cat([images[j] for j in run], dim=0)  # [R * B, 3, H, W], stream-major
        feats = self.encoder(x)
        if self.encoder_kind == "sam":
            levels = self.neck(feats, embed=self.encoder.apply_neck(feats[-1]))
        else:
            levels = self.neck(feats)
        fused = []
        for lvl, f in enumerate(levels):
            per = f.view(len(run), b, *f.shape[1:])  # [R, B, d, h, w]
            if len(run) < len(images):  # zeros for the modalities not encoded
                full = [per.new_zeros(per.shape[1:])] * len(images)
                for i, j in enumerate(run):
                    full[j] = per[i]
                per = torch.stack(full, dim=0)
            fused.append(self.routers[lvl](per, present))
        return fused

    def forward(self, batch: Mapping[str, object]) -> Tensor | SegmentationOutput:
        """``batch`` of modality tensors (any non-empty subset present) -> logits
        ``[B, K, H, W]``."""
        streams = self.stream_inputs(batch)
        size = streams.size
        images = [self.pad_to_multiple(x) for x in streams.images]
        padded = images[0].shape[-2:]
        fused = self.encode(images, streams.present)
        high_res = (fused[0], fused[1]) if self.encoder_kind == "sam2" else None
        main = self.upsample_logits(self.decode_head(fused[2], high_res), size, padded)
        aux = None
        if self.aux_head is not None and (self.training or self.inference == "mean"):
            aux = self.upsample_logits(self.aux_head(fused), size, padded)
        label = batch.get("label") if isinstance(batch, Mapping) else None
        if self.training and isinstance(label, Tensor):
            extra = {} if aux is None else {"aux": AuxiliaryLogits(aux, self.aux_weight)}
            return SegmentationOutput(main, aux=extra)
        if self.inference == "mean" and aux is not None:
            return 0.5 * (main + aux)
        return main


# --------------------------------------------------------------------------- builder
#: tiny settings of the contract tests
MLE_SAM_TINY = {
    "num_classes": 3, "modalities": ["rgb", "depth"], "backbone": "sam2.1_hiera_t",
    "backbone_kwargs": HIERA_TINY, "rank": 2, "neck_dim": 16, "aux_channels": 8,
    "decoder_kwargs": {"num_heads": 2, "mlp_dim": 16},
}


@register_model("mle_sam", segmentor=MLESAMSegmentor, tiny=MLE_SAM_TINY)
def build_mle_sam(
    num_classes: int,
    modalities: Sequence[str] = ("rgb", "depth", "event", "lidar"),
    backbone: str = "sam2.1_hiera_b+",
    pretrained: str | Path | None = None,
    rank: int = 32,
    lora_alpha: float | None = None,
    shared_expert: bool = False,
    gate: str = "pixel",
    top_k: int | None = None,
    weighted: bool = True,
    integrate: str | None = "conv",
    aux_head: bool = True,
    aux_weight: float = 0.4,
    aux_channels: int = 256,
    inference: str = "main",
    freeze_encoder: bool = True,
    train_neck: bool = False,
    neck_dim: int = 256,
    backbone_kwargs: Mapping[str, object] | None = None,
    decoder_kwargs: Mapping[str, object] | None = None,
) -> MLESAMSegmentor:
    """Build MLE-SAM.

    Example::

        create_model({"name": "mle_sam", "backbone": "sam2.1_hiera_b+",
                      "modalities": ["rgb", "depth", "event", "lidar"], "num_classes": 25,
                      "pretrained": "checkpoints/sam2.1_hiera_base_plus.pt"})

    Args:
        backbone: ``sam2.1_hiera_t | _s | _b+ | _l`` (B+ as published, secondhand), or the SAM
            v1 ``sam_vit_b | _l | _h`` (the spec's second option: taps at the global-attention
            blocks, a new simple feature pyramid, SAM v1's decoder).
        pretrained: an official ``sam2.1_hiera_*.pt`` (trunk strict, neck strict, mask decoder
            where shapes allow) or ``sam_vit_*.pth`` (encoder with its neck strict, mask
            decoder where shapes allow); ``None`` = random weights.
        neck_dim: FPN width ``d`` (256 in SAM2; the decoder's width).
        backbone_kwargs, decoder_kwargs: constructor overrides (tiny test widths).
        other keys: see :class:`MLESAMSegmentor`.
    """
    enc = create_backbone(backbone, pretrained=pretrained, **dict(backbone_kwargs or {}))
    if isinstance(enc, SamVisionTransformer):
        if enc.out_chans != neck_dim:
            raise ConfigError(f"{backbone}'s neck gives {enc.out_chans} channels but neck_dim is "
                             f"{neck_dim}")
        neck: nn.Module = SimpleFeaturePyramid(enc.embed_dim, d_model=neck_dim)
        head = Sam2SemanticDecoder(num_classes, transformer_dim=neck_dim, variant="sam",
                                   **dict(decoder_kwargs or {}))
        if pretrained is not None:
            head.load_pretrained(pretrained)
    else:
        neck = Sam2FpnNeck.from_trunk(enc, d_model=neck_dim)
        head = Sam2SemanticDecoder(num_classes, transformer_dim=neck_dim,
                                   **dict(decoder_kwargs or {}))
        if pretrained is not None:
            neck.load_pretrained(pretrained)
            head.load_pretrained(pretrained)
    return MLESAMSegmentor(
        enc, neck, head, modalities, num_classes, rank=rank, lora_alpha=lora_alpha,
        shared_expert=shared_expert, gate=gate, top_k=top_k, weighted=weighted,
        integrate=integrate, aux_head=aux_head, aux_weight=aux_weight,
        aux_channels=aux_channels, inference=inference, freeze_encoder=freeze_encoder,
        train_neck=train_neck,
    )
