"""MoBaNet: a frozen DINOv2 (or SAM) ViT shared by an optical and a DSM stream, CPIA, DGFM, MCRM.

Source: Haocheng Li et al., "Parameter-Efficient Modality-Balanced Symmetric Fusion for
Multimodal Remote Sensing Semantic Segmentation", arXiv 2603.17705. Official code: GitHub
``sauryeo/MoBaNet`` - ``Net.py`` (model, UperNet, auxiliary heads, MCRC call),
``Model/models/dinov2/build_dinov2.py`` (dual encoder), ``Model/models/ImageEncoder/vit/
peft_modules.py`` (CPIA, DGFM/"BAGF", MCRC), ``train.py`` (hard-pixel loss, sliding window).

The package: this file (the segmentor, :class:`MoBaNetOptions`, MCRM, the registration),
``modules.py`` (CPIA, DGFM, the SAM encoder's prompt adapters, SE fusion), ``release.py``
(the released checkpoint keys).

Model (``x_opt [B, 3, H, W]`` normalised IRRG/RGB, ``x_dsm [B, 1, H, W]`` DSM min-max to [0, 1],
repeated to 3 channels; both zero-padded bottom/right to a multiple of 14)::

    t_opt = prepare_tokens(x_opt)                  # frozen patch embedding + pos. embedding
    t_dsm = prepare_tokens(x_dsm, dsm_patch_embed)  # trainable copy of the pretrained one
    for group j = 0..3 (blocks after tap j-1 up to tap j):
        patch tokens of both streams <- CPIA_j(...)          (cpia: true)
        t_opt, t_dsm <- the frozen blocks of group j          (both streams, one batch)
        F_opt, F_dsm = backbone.norm(t) patch tokens as maps   (the frozen final norm)
        F_j = DGFM_j(F_opt, F_dsm)  |  0.5 (F_opt + F_dsm)     (dgfm: true | false)
        fused_j, opt_j, dsm_j = proj_j(F_j), proj_j(F_opt), proj_j(F_dsm)   # 1x1 C->256, shared
    logits = UperNet(fused_0..3) (all at 1/14), bilinear to the padded size, cropped

Training (``model.train()`` with ``batch["label"]``): MCRM masks a rectangle of the optical
*or* the DSM input of a quarter of the batch (:func:`modality_conditional_random_mask`); the two
auxiliary heads on ``opt_0`` and ``dsm_0`` are supervised on the hard pixels (``y`` where the
main prediction is wrong, 255 elsewhere) with weight 0.01 each, returned as
:class:`~fusionseg.models.SegmentationOutput` auxiliary outputs with their own targets. As
released, the auxiliary losses run only when MCRM is on (``hard_pixel_loss: null`` follows
``mcrm``).

Missing modality (absent key or ``present`` false): the input is zero after normalisation and
both streams still run - the release's modality-robustness evaluation
(``run_ablation_modality``, shipped compiled only) does exactly this.

Checkpoint keys: the release's names are converted by
:func:`~fusionseg.models.methods.mobanet.release.checkpoint_filter_fn` (tables there), bound
here as :meth:`MoBaNetSegmentor.checkpoint_filter_fn`.

SAM encoders (``backbone: sam_vit_b | sam_vit_l | sam_vit_h``,
:class:`~fusionseg.models.backbones.sam_vit.SamVisionTransformer`) get the release's *other*
encoder, ``design="neck"`` (``Net.py`` SAM branch, ``Model/models/sam/modeling/image_encoder.py``,
``Model/models/ImageEncoder/vit/peft_block.py`` ``PeftFusionBlock``, ``-mod sam_peft``)::

    t_opt = patch_embed(x_opt) + pos;   t_dsm = dsm_patch_embed(x_dsm) + pos
        (pos resized bicubically to the grid; dsm_patch_embed freshly initialised, not copied)
    for every block i (window / global attention, frozen, shared by the two streams):
        t_opt, t_dsm <- block_i(t_opt), block_i(t_dsm)
        a = up(joint([down_opt(t_opt); down_dsm(t_dsm)]))                  (CPIA_i, no residual)
        t_m <- t_m + A_m,i(t_m, a + a * gamma_m + beta_m)  for m = opt, dsm
              A(x, p) = up(Dropout(ReLU(down(x) + prompt(p))))         (bottleneck C/16, up = 0)
    N_opt, N_dsm = neck(t_opt), neck(t_dsm)              (frozen SAM neck, 256 ch at 1/16)
    pyramid per stream: [deconv-LN-GELU-deconv (1/4), deconv (1/8), id (1/16), maxpool (1/32)]
        (the DSM pyramid uses BatchNorm where the optical one has LayerNorm, as released)
    fused_s = SE_opt,s(P_opt,s) + SE_dsm,s(P_dsm,s)              (squeeze-excitation sum)
    logits = UperNet(fused_1..4); auxiliary heads on P_opt,1 and P_dsm,1

No DGFM (``dgfm=True`` is an error), no per-tap norm (SAM taps none). ``design="taps"`` runs
the DINOv2 encoder above on a SAM ViT instead (taps = its global-attention blocks, identity
norm; our generalisation, not in the release).

Where ours departs from the release (none changes the function of released weights):

* the model pads to a multiple of 14 and crops its logits back itself (the release pads in its
  data loader and crops in its test loop); the loss is therefore taken on the unpadded crop,
  where the release's padded pixels are ignored (255) anyway;
* the two streams run as one ``[2B, ...]`` batch through the frozen blocks; SDPA attention;
* MCRM draws from torch's RNG (the release mixes torch and Python ``random``);
* non-finite DSM values are replaced by 0 before the network and counted in
  :attr:`MoBaNetSegmentor.nonfinite_inputs` (the release has no such guard);
* the learning-rate schedule of our configs is per iteration (the release steps a per-epoch
  LambdaLR; with 1000-iteration epochs the difference is within one epoch's step);
* SAM variant: the model pads to a multiple of 16 (the release pads to 14, so its stride-16
  patch embedding drops up to 15 px at the bottom/right and its logits, resized to the padded
  size, are shifted against the labels by up to that much - ours are aligned; identical for
  sides that are multiples of 14 and 16, e.g. 224); the official SAM position embedding and
  relative-position tables are loaded (the release builds its encoder for its 266 px crops,
  whose 16 x 16 table does not match the 64 x 64 one of the SAM file, and names the tables
  ``rel_h`` / ``rel_w``, so its shape-filtered, non-strict load leaves both at zero; a released
  file carries those zeros and loads here, resized to this model's shapes if need be).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor, nn

from ....errors import ConfigError
from ...backbones.base import ViTBackbone
from ...backbones.dinov2 import DINOV2_TINY
from ...backbones.sam_vit import SamVisionTransformer
from ...heads.upernet import AuxHead, UperNetHead
from ...layers import LayerNorm2d, random_rectangle
from ...options import BackboneKwargs, BackboneOptions, Pretrained, resolve_options
from ...registry import register_model
from ...segmentor import AuxiliaryLogits, SegmentationOutput, Segmentor
from .modules import CPIA, DGFM, SamBlockPrompts, SEFusion, simple_pyramid
from .release import checkpoint_filter_fn, is_released_format

__all__ = ["DESIGNS", "DSM_LIKE", "OPTICAL", "MoBaNetOptions", "MoBaNetSegmentor",
           "modality_conditional_random_mask"]

#: modalities MoBaNet accepts as its optical stream (first) and its height stream (second)
OPTICAL = ("irrg", "rgb", "nir")
DSM_LIKE = ("dsm", "ndsm", "depth", "lidar")
#: encoder designs: "taps" (the release's DINOv2 encoder), "neck" (its SAM encoder)
DESIGNS = ("taps", "neck")


class MoBaNetOptions(BackboneOptions):
    """Options of ``mobanet`` (the ``model`` section of a config); see
    :class:`MoBaNetSegmentor` for their effect."""

    method_name: ClassVar[str] = "mobanet"
    backbone_types: ClassVar[tuple[type, ...]] = (ViTBackbone,)

    modalities: tuple[str, ...] = Field(
        ("irrg", "dsm"), description="[optical (irrg, rgb, nir), DSM-like (dsm, ndsm, depth, "
        "lidar)]")
    backbone: str = Field(
        "dinov2_vitl14", description="frozen ViT: dinov2_vit{s,b,l,g}14[_reg4] or sam_vit_{b,l,h}")
    pretrained: Pretrained = None
    cpia: bool = Field(True, description="CPIA adapters (neck design: per-block CPIA + adapters)")
    dgfm: bool | None = Field(
        None, description="DGFM gated fusion (None: as released, on for taps, none for neck)")
    mcrm: bool = Field(True, description="modality-conditional random masking in training")
    hard_pixel_loss: bool | None = Field(
        None, description="hard-pixel auxiliary losses (None: as released, follows mcrm)")
    aux_weight: float = Field(0.01, ge=0, description="weight of each auxiliary loss term")
    proj_dim: int = Field(256, gt=0, description="width of the per-tap 1x1 projections (taps)")
    decoder_channels: int = Field(64, gt=0, description="UperNet decoder width")
    cpia_ratio: float = Field(0.25, gt=0, description="CPIA bottleneck ratio r / C")
    mcrm_fraction: float = Field(
        0.25, ge=0, le=1, description="fraction of each batch whose one modality MCRM masks")
    mcrm_area: tuple[float, float] = Field(
        (0.1, 0.3), description="MCRM rectangle area range, fraction of the padded image")
    mcrm_aspect: tuple[float, float] = Field(
        (0.5, 2.0), description="MCRM rectangle aspect (width / height) range")
    backbone_kwargs: BackboneKwargs = Field(
        None, description="extra backbone constructor overrides (e.g. tiny widths, out_indices)")
    design: Literal["taps", "neck"] | None = Field(
        None, description="encoder design (None: neck for a SAM backbone, else taps)")
    adapter_ratio: float = Field(
        0.0625, gt=0, description="bottleneck ratio of the neck design's prompt adapters")

    @field_validator("modalities")
    @classmethod
    def _two_streams(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) != 2 or v[0] not in OPTICAL or v[1] not in DSM_LIKE:
            raise ValueError(
                f"MoBaNet is a two-stream model: one optical modality ({', '.join(OPTICAL)}) "
                f"followed by one DSM-like modality ({', '.join(DSM_LIKE)}); got {list(v)}")
        return v

    @field_validator("mcrm_area", "mcrm_aspect")
    @classmethod
    def _range(cls, v: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        top = 1.0 if info.field_name == "mcrm_area" else float("inf")
        if not 0 < v[0] <= v[1] <= top:
            raise ValueError(f"need 0 < low <= high{' <= 1' if top == 1 else ''}")
        return v

    @field_validator("design", mode="before")
    @classmethod
    def _known_design(cls, v: object) -> object:
        if v is not None and v not in DESIGNS:
            raise ValueError(f"unknown MoBaNet design {v!r}; use one of {DESIGNS}")
        return v


def modality_conditional_random_mask(
    x_opt: torch.Tensor,
    x_dsm: torch.Tensor,
    fraction: float = 0.25,
    area: tuple[float, float] = (0.1, 0.3),
    aspect: tuple[float, float] = (0.5, 2.0),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MoBaNet's MCRM (the release's "MCRC"): mask a rectangle of one modality per chosen sample.

    Source: MoBaNet (arXiv 2603.17705), official ``peft_modules.py`` (``apply_mcrc_mask``).
    ``n = int(B * fraction)`` samples are drawn at random; the first ``n // 2`` lose a rectangle
    of the optical input, the others one of the DSM, never both. Each rectangle has an area
    uniform in ``area`` (fraction of ``H x W``, the padded size as released) and an aspect
    (width / height) uniform in ``aspect`` (up to 10 draws until it fits, else
    ``round(sqrt(0.1) * side)``), a uniform position, and is set to 0 (the normalised mean).

    Args:
        x_opt, x_dsm: ``[B, C, H, W]`` normalised inputs (not modified).

    Returns:
        ``(x_opt', x_dsm', which)`` with ``which: int64 [B]`` = 0 unmasked, 1 optical masked,
        2 DSM masked.
    """
    b, _, h, w = x_opt.shape
    which = torch.zeros(b, dtype=torch.long)
    n = int(b * fraction)
    if n == 0:
        return x_opt, x_dsm, which
    x_opt, x_dsm = x_opt.clone(), x_dsm.clone()
    sel = torch.randperm(b, generator=generator)[:n]
    k = n // 2

    for j, idx in enumerate(sel.tolist()):
        top, left, bh, bw = random_rectangle(h, w, area, aspect, generator)
        target = x_opt if j < k else x_dsm
        target[idx, :, top:top + bh, left:left + bw] = 0
        which[idx] = 1 if j < k else 2
    return x_opt, x_dsm, which



class MoBaNetSegmentor(Segmentor):
    """MoBaNet (see the module docstring).

    Built from :class:`MoBaNetOptions` (an instance, or its fields as keyword arguments:
    ``MoBaNetSegmentor(num_classes=6, backbone="dinov2_vits14")``). In more detail:

        modalities: ``[optical, dsm]``, e.g. ``["irrg", "dsm"]``.
        num_classes: ``K`` (6 for ISPRS).
        backbone: a plain ViT, frozen here: ``dinov2_vit{s,b,l,g}14[_reg4]`` (ViT-L as
            published; :class:`~fusionseg.models.backbones.dinov2.DinoVisionTransformer`, 4
            taps) or ``sam_vit_{b,l,h}`` (the release's SAM encoder option,
            :class:`~fusionseg.models.backbones.sam_vit.SamVisionTransformer`, ``design="neck"``
            by default).
        pretrained: the official ``dinov2_vit*14_pretrain.pth`` (or a Hugging Face
            ``facebook/dinov2-*`` file), or an official ``sam_vit_*.pth`` (or a Hugging Face
            ``facebook/sam-vit-*`` file); loaded before the DSM patch embedding is copied from
            it (``design="taps"``; the ``"neck"`` design initialises it afresh). Use
            :func:`fusionseg.models.load_checkpoint` for whole released MoBaNet files.
        backbone_kwargs: backbone constructor overrides (e.g. tiny test widths, other
            ``out_indices``).
        cpia, dgfm, mcrm: the method's three parts, switchable for ablations. ``dgfm=None``:
            as released (on for ``design="taps"``; the ``"neck"`` design has no DGFM and fuses
            by squeeze-excitation, ``dgfm=True`` is an error there). In the ``"neck"`` design
            ``cpia`` switches the per-block CPIA + prompt adapters (always on in the release).
        design: ``"taps"`` (the release's DINOv2 encoder: CPIA at each block group's entry,
            DGFM on the 4 normalised taps, 1x1 projections, everything at the patch stride) or
            ``"neck"`` (the release's SAM encoder: CPIA + prompt adapters after every block,
            SAM neck, simple 4-level pyramid, SE fusion; SAM backbones only). ``None``:
            ``"neck"`` for a SAM backbone, ``"taps"`` otherwise.
        adapter_ratio: bottleneck ratio of the ``"neck"`` design's prompt adapters (0.0625).
        hard_pixel_loss: auxiliary hard-pixel supervision; ``None`` = as released, on exactly
            when ``mcrm`` is on.
        aux_weight: weight of each auxiliary term (0.01).
        proj_dim: width of the per-tap projections (256).
        decoder_channels: UperNet width (64).
        cpia_ratio: CPIA bottleneck ratio (0.25).
        mcrm_fraction, mcrm_area, mcrm_aspect: MCRM settings (0.25, (0.1, 0.3), (0.5, 2.0)).

    Example::

        create_model({"name": "mobanet", "backbone": "dinov2_vits14",
                      "modalities": ["irrg", "dsm"], "num_classes": 6,
                      "pretrained": "dinov2_vits14_pretrain.pth"})

    ``forward(batch) -> logits [B, K, H, W]``; in training with a label, a
    :class:`SegmentationOutput` with ``aux["aux_opt"]``, ``aux["aux_dsm"]`` (hard-pixel
    targets).

    Raises:
        ConfigError: options that do not validate (not two modalities, or not an optical one
            followed by a DSM-like one; an unknown design, ``backbone_kwargs`` repeating
            ``pretrained``, a backbone that is not a plain ViT
            (:class:`~fusionseg.models.backbones.base.ViTBackbone`: ``dinov2_*``, ``sam_vit_*``),
            ...); ``design="taps"`` without 4 taps; ``design="neck"`` without a SAM backbone built
            with its neck, or with ``dgfm=True``.
        FileNotFoundError, CheckpointMismatchError: from loading ``pretrained``.
    """

    Options = MoBaNetOptions

    fused_feature_module = "decode_head"  # its input: the fused maps

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)
    is_released_format = staticmethod(is_released_format)

    def __init__(self, options: MoBaNetOptions | None = None, /, **kwargs: Any) -> None:
        o = resolve_options(MoBaNetOptions, options, kwargs)
        super().__init__(o.modalities, o.num_classes)
        self.options = o
        backbone = o.build_backbone()
        is_sam = isinstance(backbone, SamVisionTransformer)
        design = ("neck" if is_sam else "taps") if o.design is None else o.design
        if design == "taps" and backbone.num_stages != 4:
            raise ConfigError("MoBaNet's taps design needs a ViT backbone with 4 taps "
                             f"(out_indices), got {backbone.num_stages}")
        if design == "neck":
            if not is_sam or backbone.neck is None:
                raise ConfigError("MoBaNet's neck design (the release's SAM encoder) needs a "
                                 "sam_vit_* backbone built with its neck")
            if o.dgfm:
                raise ConfigError("MoBaNet's neck design (SAM encoder) has no DGFM: it fuses by "
                                 "squeeze-excitation as released; leave dgfm unset")
        self.design = design
        c = backbone.embed_dim
        self.backbone = backbone
        # the DSM patch embedding starts from the (pretrained) optical one and trains; the
        # release's SAM encoder builds it fresh instead
        self.dsm_patch_embed = copy.deepcopy(backbone.patch_embed)
        if design == "taps":
            dgfm = True if o.dgfm is None else o.dgfm
            self.cpia = nn.ModuleList(CPIA(c, o.cpia_ratio) for _ in range(4)) if o.cpia else None
            self.dgfm = nn.ModuleList(DGFM(c) for _ in range(4)) if dgfm else None
            self.proj = nn.ModuleList(nn.Conv2d(c, o.proj_dim, 1, bias=False) for _ in range(4))
            width = o.proj_dim
        else:
            self.dsm_patch_embed.proj.reset_parameters()
            self.cpia = self.dgfm = self.proj = None
            self.block_adapters = nn.ModuleList(
                SamBlockPrompts(c, o.cpia_ratio, o.adapter_ratio) for _ in backbone.blocks
            ) if o.cpia else None
            width = backbone.out_chans
            self.fpn_opt = simple_pyramid(width, LayerNorm2d(width))
            self.fpn_dsm = simple_pyramid(width, nn.BatchNorm2d(width))
            self.fuse = nn.ModuleList(SEFusion(width) for _ in range(4))
        self.decode_head = UperNetHead([width] * 4, o.num_classes, o.decoder_channels)
        self.aux_heads = nn.ModuleDict({"opt": AuxHead(width, o.num_classes),
                                        "dsm": AuxHead(width, o.num_classes)})
        self.use_mcrm = o.mcrm
        self.hard_pixel_loss = self.use_mcrm if o.hard_pixel_loss is None else o.hard_pixel_loss
        self.aux_weight = o.aux_weight
        self.mcrm_fraction = o.mcrm_fraction
        self.mcrm_area = o.mcrm_area
        self.mcrm_aspect = o.mcrm_aspect
        #: non-finite input values replaced by 0 so far (DSM nodata / NaN)
        self.nonfinite_inputs = 0
        self.freeze_backbone()

    def extra_repr(self) -> str:
        cpia = self.cpia if self.design == "taps" else self.block_adapters
        return (f"modalities={self.modalities}, design={self.design}, cpia={cpia is not None}, "
                f"dgfm={self.dgfm is not None}, mcrm={self.use_mcrm}, "
                f"hard_pixel_loss={self.hard_pixel_loss}")

    # ------------------------------------------------------------------ forward
    def _finite(self, batch: Mapping[str, object]) -> Mapping[str, object]:
        """``batch`` with non-finite input values (DSM NaN / nodata) set to 0, counted in
        :attr:`nonfinite_inputs`."""
        out = None
        for name in self.modalities:
            x = batch.get(name) if isinstance(batch, Mapping) else None
            if not isinstance(x, Tensor) or not x.is_floating_point():
                continue
            bad = ~torch.isfinite(x)
            if bool(bad.any()):
                self.nonfinite_inputs += int(bad.sum())
                out = dict(batch) if out is None else out
                out[name] = torch.where(bad, torch.zeros((), dtype=x.dtype, device=x.device), x)
        return batch if out is None else out

    def encode(self, x_opt: Tensor, x_dsm: Tensor) -> tuple[list[Tensor], list[Tensor],
                                                             list[Tensor]]:
        """The dual encoder: ``(fused, opt, dsm)``, three lists of 4 maps. Inputs ``[B, 3, H,
        W]`` with sides multiples of the patch size ``p`` (14 / 16).

        ``design="taps"``: every map ``[B, proj_dim, H/p, W/p]``; ``"neck"``: ``[B, 256,
        H/s, W/s]`` for ``s = 4, 8, 16, 32`` (the 1/32 sides floored)."""
        if self.design == "neck":
            return self._encode_neck(x_opt, x_dsm)
        bb = self.backbone
        b = x_opt.shape[0]
        t_opt, h, w = bb.prepare_tokens(x_opt)
        t_dsm, _, _ = bb.prepare_tokens(x_dsm, self.dsm_patch_embed)
        prefix = bb.num_prefix_tokens
        tokens = torch.cat([t_opt, t_dsm], dim=0)  # [2B, P + N, C]
        fused, opt, dsm = [], [], []
        for j in range(4):
            if self.cpia is not None:
                po, pd = self.cpia[j](tokens[:b, prefix:], tokens[b:, prefix:])
                tokens = torch.cat([tokens[:, :prefix], torch.cat([po, pd], dim=0)], dim=1)
            for blk in bb.blocks_of(j):
                tokens = bb.run_block(blk, tokens, h, w)
            feat, (tokens, h, w) = bb.finish_stage(j, tokens, h, w)
            maps = bb.tokens_to_map(feat, h, w)  # [2B, C, h, w]
            f_opt, f_dsm = maps[:b], maps[b:]
            f = self.dgfm[j](f_opt, f_dsm) if self.dgfm is not None else 0.5 * (f_opt + f_dsm)
            proj = self.proj[j]
            both = proj(maps)
            fused.append(proj(f))
            opt.append(both[:b])
            dsm.append(both[b:])
        return fused, opt, dsm

    def _encode_neck(self, x_opt: Tensor, x_dsm: Tensor) -> tuple[list[Tensor], list[Tensor],
                                                                  list[Tensor]]:
        """The release's SAM encoder (module docstring): both streams as one ``[2B, N, C]``
        batch through every frozen block, the block prompts after each, the frozen neck, one
        pyramid per stream and SE fusion per level."""
        bb = self.backbone
        b = x_opt.shape[0]
        t_opt, h, w = bb.prepare_tokens(x_opt)
        t_dsm, _, _ = bb.prepare_tokens(x_dsm, self.dsm_patch_embed)
        tokens = torch.cat([t_opt, t_dsm], dim=0)
        for i, blk in enumerate(bb.blocks):
            if self.block_adapters is None:
                tokens = bb.run_block(blk, tokens, h, w)
            else:  # block + its prompts, one checkpointed unit
                ad = self.block_adapters[i]
                tokens = bb.maybe_checkpoint(self.prompted_block, blk, ad, tokens, h, w,
                                             modules=(blk, ad))
        maps = bb.apply_neck(bb.tokens_to_map(tokens, h, w))  # [2B, 256, h, w]
        opt = [f(maps[:b]) for f in self.fpn_opt]
        dsm = [f(maps[b:]) for f in self.fpn_dsm]  # its BatchNorm sees the DSM stream only
        fused = [fuse(o, d) for fuse, o, d in zip(self.fuse, opt, dsm, strict=True)]
        return fused, opt, dsm

    @staticmethod
    def prompted_block(blk: nn.Module, prompts: SamBlockPrompts, tokens: Tensor, h: int,
                       w: int) -> Tensor:
        """One frozen SAM block on both streams, then its CPIA + prompt adapters (release
        ``PeftFusionBlock.forward``): ``tokens [2B, N, C]`` (optical first) -> ``[2B, N, C]``.
        The unit :meth:`_encode_neck` checkpoints when the backbone's activation
        checkpointing is on."""
        tokens = blk(tokens, h, w)
        b = tokens.shape[0] // 2
        return torch.cat(prompts(tokens[:b], tokens[b:]), dim=0)

    def forward(self, batch: Mapping[str, object]) -> Tensor | SegmentationOutput:
        """``batch`` with ``batch[optical] [B, 3, H, W]`` and ``batch[dsm] [B, 1, H, W]`` (either
        may be absent or flagged missing in ``present``) -> logits ``[B, K, H, W]``."""
        streams = self.stream_inputs(self._finite(batch))
        size = streams.size
        x_opt = self.pad_to_multiple(streams.images[0])
        x_dsm = self.pad_to_multiple(streams.images[1])
        padded = x_opt.shape[-2:]
        label = batch.get("label") if isinstance(batch, Mapping) else None
        train_out = self.training and isinstance(label, Tensor)
        if self.training and self.use_mcrm:
            x_opt, x_dsm, _ = modality_conditional_random_mask(
                x_opt, x_dsm, self.mcrm_fraction, self.mcrm_area, self.mcrm_aspect)
        fused, opt, dsm = self.encode(x_opt, x_dsm)
        logits = self.upsample_logits(self.decode_head(fused), size, padded)
        if not train_out or not self.hard_pixel_loss:
            return SegmentationOutput(logits) if train_out else logits
        label = label.to(logits.device)
        hard = label.clone()
        hard[logits.detach().argmax(1) == label] = 255  # keep only the pixels the head got wrong
        aux = {
            f"aux_{k}": AuxiliaryLogits(
                self.upsample_logits(self.aux_heads[k](m[0]), size, padded), self.aux_weight,
                loss={"name": "ce"}, target=hard)
            for k, m in (("opt", opt), ("dsm", dsm))
        }
        return SegmentationOutput(logits, aux=aux)


    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def infer_num_classes(cls, state_dict: Mapping[str, Tensor]) -> int | None:
        """``K`` from ``decode_head.conv_seg.weight``."""
        w = cls.checkpoint_filter_fn(state_dict).get("decode_head.conv_seg.weight")
        return None if w is None else int(w.shape[0])


#: tiny settings of the contract tests
MOBANET_TINY = {
    "num_classes": 3,
    "modalities": ["irrg", "dsm"],
    "backbone": "dinov2_vits14",
    "backbone_kwargs": DINOV2_TINY,
    "proj_dim": 16,
    "decoder_channels": 8,
}

register_model("mobanet", tiny=MOBANET_TINY)(MoBaNetSegmentor)
