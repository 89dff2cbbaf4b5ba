"""MoBaNet: a frozen DINOv2 ViT shared by an optical and a DSM stream, CPIA, DGFM, MCRM.

Source: Haocheng Li et al., "Parameter-Efficient Modality-Balanced Symmetric Fusion for
Multimodal Remote Sensing Semantic Segmentation", arXiv 2603.17705. Official code: GitHub
``sauryeo/MoBaNet`` - ``Net.py`` (model, UperNet, auxiliary heads, MCRC call),
``Model/models/dinov2/build_dinov2.py`` (dual encoder), ``Model/models/ImageEncoder/vit/
peft_modules.py`` (CPIA, DGFM/"BAGF", MCRC), ``train.py`` (hard-pixel loss, sliding window).

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
*or* the DSM input of a quarter of the batch (:func:`~fusionseg.engine.masking.
modality_conditional_random_mask`); the two auxiliary heads on ``opt_0`` and ``dsm_0`` are
supervised on the hard pixels (``y`` where the main prediction is wrong, 255 elsewhere) with
weight 0.01 each, returned as :class:`~fusionseg.models.SegmentationOutput` auxiliary outputs with
their own targets. As released, the auxiliary losses run only when MCRM is on
(``hard_pixel_loss: null`` follows ``mcrm``).

Missing modality (absent key or ``present`` false): the input is zero after normalisation and
both streams still run - the release's modality-robustness evaluation
(``run_ablation_modality``, shipped compiled only) does exactly this.

Checkpoint keys (ours <- release, see :meth:`MoBaNetSegmentor.checkpoint_filter_fn`)::

    backbone.*                 <- image_encoder.backbone.*             (official DINOv2 names)
    dsm_patch_embed.proj.*     <- image_encoder.extra_patch_embed.proj.*
    cpia.{j}.{down_opt, down_dsm, joint, up, gamma_*, beta_*}
                               <- image_encoder.peft_cpia_blocks.{j}.{D_fc1, D_fc2, P_fc2, U_fc1,
                                  tfts_gamma_rgb, ...}
    dgfm.{j}.{reduce_opt, reduce_dsm, gate.*}
                               <- image_encoder.peft_dgfm_blocks.{j}.{rgb_reduce, dsm_reduce,
                                  gate_net.*}  (or peft_bagf_blocks, the paper-time name)
    dgfm.{j}.norm.*            <- image_encoder.peft_fuse_norms.{j}.*
    proj.{j}.weight            <- image_encoder.dual_proj_layers.{j}.weight
    decode_head.*              <- decoder.*  (classifier.1.0.weight -> conv_seg.weight)
    aux_heads.{opt,dsm}.*      <- aux_head_{rgb,dsm}.*  (conv_out.0.weight -> conv_seg.weight)

Where ours departs from the release (none changes the function of released weights):

* the model pads to a multiple of 14 and crops its logits back itself (the release pads in its
  data loader and crops in its test loop); the loss is therefore taken on the unpadded crop,
  where the release's padded pixels are ignored (255) anyway;
* the two streams run as one ``[2B, ...]`` batch through the frozen blocks; SDPA attention;
* MCRM draws from torch's RNG (the release mixes torch and Python ``random``);
* non-finite DSM values are replaced by 0 before the network and counted in
  :attr:`MoBaNetSegmentor.nonfinite_inputs` (the release has no such guard);
* the learning-rate schedule of our configs is per iteration (the release steps a per-epoch
  LambdaLR; with 1000-iteration epochs the difference is within one epoch's step).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ...engine.masking import modality_conditional_random_mask
from ..backbones import create_backbone
from ..backbones.dinov2 import DINOV2_TINY, DinoVisionTransformer
from ..fusion.dgfm import DGFM
from ..heads.upernet import AuxHead, UperNetHead
from ..peft.cpia import CPIA
from ..registry import register_model
from ..weights import rename_keys
from .base import AuxiliaryLogits, SegmentationOutput, Segmentor

__all__ = ["DSM_LIKE", "OPTICAL", "MoBaNetSegmentor", "build_mobanet"]

#: modalities MoBaNet accepts as its optical stream (first) and its height stream (second)
OPTICAL = ("irrg", "rgb", "nir")
DSM_LIKE = ("dsm", "ndsm", "depth", "lidar")


class MoBaNetSegmentor(Segmentor):
    """MoBaNet (see the module docstring).

    Args:
        backbone: a :class:`~fusionseg.models.backbones.dinov2.DinoVisionTransformer` with 4
            taps (frozen here; its pretrained weights loaded before).
        modalities: ``[optical, dsm]``, e.g. ``["irrg", "dsm"]``.
        num_classes: ``K`` (6 for ISPRS).
        cpia, dgfm, mcrm: the method's three parts, switchable for ablations.
        hard_pixel_loss: auxiliary hard-pixel supervision; ``None`` = as released, on exactly
            when ``mcrm`` is on.
        aux_weight: weight of each auxiliary term (0.01).
        proj_dim: width of the per-tap projections (256).
        decoder_channels: UperNet width (64).
        cpia_ratio: CPIA bottleneck ratio (0.25).
        mcrm_fraction, mcrm_area, mcrm_aspect: MCRM settings (0.25, (0.1, 0.3), (0.5, 2.0)).

    ``forward(batch) -> logits [B, K, H, W]``; in training with a label, a
    :class:`SegmentationOutput` with ``aux["aux_opt"]``, ``aux["aux_dsm"]`` (hard-pixel
    targets).

    Raises:
        ValueError: not two modalities, or not an optical one followed by a DSM-like one; a
            backbone that is not a 4-tap DINOv2 ViT.
    """

    def __init__(
        self,
        backbone: DinoVisionTransformer,
        modalities: Sequence[str],
        num_classes: int,
        cpia: bool = True,
        dgfm: bool = True,
        mcrm: bool = True,
        hard_pixel_loss: bool | None = None,
        aux_weight: float = 0.01,
        proj_dim: int = 256,
        decoder_channels: int = 64,
        cpia_ratio: float = 0.25,
        mcrm_fraction: float = 0.25,
        mcrm_area: Sequence[float] = (0.1, 0.3),
        mcrm_aspect: Sequence[float] = (0.5, 2.0),
    ) -> None:
        mods = [modalities] if isinstance(modalities, str) else list(modalities)
        if len(mods) != 2 or mods[0] not in OPTICAL or mods[1] not in DSM_LIKE:
            raise ValueError(
                f"MoBaNet is a two-stream model: one optical modality ({', '.join(OPTICAL)}) "
                f"followed by one DSM-like modality ({', '.join(DSM_LIKE)}); got {mods}"
            )
        super().__init__(mods, num_classes)
        if not isinstance(backbone, DinoVisionTransformer) or backbone.num_stages != 4:
            raise ValueError("MoBaNet needs a DINOv2 ViT backbone with 4 taps (dinov2_vit*14)")
        c = backbone.embed_dim
        self.backbone = backbone
        # the DSM patch embedding starts from the (pretrained) optical one and trains
        self.dsm_patch_embed = copy.deepcopy(backbone.patch_embed)
        self.cpia = nn.ModuleList(CPIA(c, cpia_ratio) for _ in range(4)) if cpia else None
        self.dgfm = nn.ModuleList(DGFM(c) for _ in range(4)) if dgfm else None
        self.proj = nn.ModuleList(nn.Conv2d(c, proj_dim, 1, bias=False) for _ in range(4))
        self.decode_head = UperNetHead([proj_dim] * 4, num_classes, decoder_channels)
        self.aux_heads = nn.ModuleDict({"opt": AuxHead(proj_dim, num_classes),
                                        "dsm": AuxHead(proj_dim, num_classes)})
        self.use_mcrm = bool(mcrm)
        self.hard_pixel_loss = self.use_mcrm if hard_pixel_loss is None else bool(hard_pixel_loss)
        self.aux_weight = float(aux_weight)
        self.mcrm_fraction = float(mcrm_fraction)
        self.mcrm_area = tuple(float(a) for a in mcrm_area)
        self.mcrm_aspect = tuple(float(a) for a in mcrm_aspect)
        #: non-finite input values replaced by 0 so far (DSM nodata / NaN)
        self.nonfinite_inputs = 0
        self.freeze_backbone()

    def extra_repr(self) -> str:
        return (f"modalities={self.modalities}, cpia={self.cpia is not None}, "
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
        """The dual encoder: ``(fused, opt, dsm)``, three lists of 4 maps ``[B, proj_dim,
        H/14, W/14]``. Inputs ``[B, 3, H, W]`` with sides multiples of 14."""
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
    _RELEASE = (
        (r"^image_encoder\.backbone\.", "backbone."),
        (r"^image_encoder\.extra_patch_embed\.", "dsm_patch_embed."),
        (r"^image_encoder\.peft_cpia_blocks\.(\d)\.D_fc1\.", r"cpia.\1.down_opt."),
        (r"^image_encoder\.peft_cpia_blocks\.(\d)\.D_fc2\.", r"cpia.\1.down_dsm."),
        (r"^image_encoder\.peft_cpia_blocks\.(\d)\.P_fc2\.", r"cpia.\1.joint."),
        (r"^image_encoder\.peft_cpia_blocks\.(\d)\.U_fc1\.", r"cpia.\1.up."),
        (r"^image_encoder\.peft_cpia_blocks\.(\d)\.tfts_(gamma|beta)_rgb$", r"cpia.\1.\2_opt"),
        (r"^image_encoder\.peft_cpia_blocks\.(\d)\.tfts_(gamma|beta)_dsm$", r"cpia.\1.\2_dsm"),
        (r"^image_encoder\.peft_(?:dgfm|bagf)_blocks\.(\d)\.rgb_reduce\.", r"dgfm.\1.reduce_opt."),
        (r"^image_encoder\.peft_(?:dgfm|bagf)_blocks\.(\d)\.dsm_reduce\.", r"dgfm.\1.reduce_dsm."),
        (r"^image_encoder\.peft_(?:dgfm|bagf)_blocks\.(\d)\.gate_net\.", r"dgfm.\1.gate."),
        (r"^image_encoder\.peft_fuse_norms\.(\d)\.", r"dgfm.\1.norm."),
        (r"^image_encoder\.dual_proj_layers\.(\d)\.", r"proj.\1."),
        (r"^decoder\.classifier\.1\.0\.", "decode_head.conv_seg."),
        (r"^decoder\.", "decode_head."),
        (r"^aux_head_rgb\.conv_out\.0\.", "aux_heads.opt.conv_seg."),
        (r"^aux_head_dsm\.conv_out\.0\.", "aux_heads.dsm.conv_seg."),
        (r"^aux_head_rgb\.", "aux_heads.opt."),
        (r"^aux_head_dsm\.", "aux_heads.dsm."),
    )

    @classmethod
    def is_released_format(cls, state_dict: Mapping[str, Tensor]) -> bool:
        """True for the official ``Net`` layout (``image_encoder.*``, ``decoder.*``)."""
        return any(k.startswith("image_encoder.") for k in state_dict)

    @classmethod
    def checkpoint_filter_fn(cls, state_dict: Mapping[str, Tensor],
                             model: Segmentor | None = None) -> dict[str, Tensor]:
        """Release keys -> ours (table in the module docstring); ours are kept. The release's
        ``DataParallel`` ``module.`` prefix is stripped before (generic)."""
        if not cls.is_released_format(state_dict):
            return dict(state_dict)
        return rename_keys(state_dict, cls._RELEASE)

    @classmethod
    def infer_num_classes(cls, state_dict: Mapping[str, Tensor]) -> int | None:
        """``K`` from ``decode_head.conv_seg.weight``."""
        w = cls.checkpoint_filter_fn(state_dict).get("decode_head.conv_seg.weight")
        return None if w is None else int(w.shape[0])


# --------------------------------------------------------------------------- builder
@register_model(
    "mobanet",
    segmentor=MoBaNetSegmentor,
    tiny={"num_classes": 3, "modalities": ["irrg", "dsm"], "backbone": "dinov2_vits14",
          "backbone_kwargs": DINOV2_TINY, "proj_dim": 16, "decoder_channels": 8},
)
def build_mobanet(
    num_classes: int,
    modalities: Sequence[str] = ("irrg", "dsm"),
    backbone: str = "dinov2_vitl14",
    pretrained: str | Path | None = None,
    cpia: bool = True,
    dgfm: bool = True,
    mcrm: bool = True,
    hard_pixel_loss: bool | None = None,
    aux_weight: float = 0.01,
    proj_dim: int = 256,
    decoder_channels: int = 64,
    cpia_ratio: float = 0.25,
    mcrm_fraction: float = 0.25,
    mcrm_area: Sequence[float] = (0.1, 0.3),
    mcrm_aspect: Sequence[float] = (0.5, 2.0),
    backbone_kwargs: Mapping[str, object] | None = None,
) -> MoBaNetSegmentor:
    """Build MoBaNet.

    Example::

        create_model({"name": "mobanet", "backbone": "dinov2_vits14",
                      "modalities": ["irrg", "dsm"], "num_classes": 6,
                      "pretrained": "dinov2_vits14_pretrain.pth"})

    Args:
        backbone: ``dinov2_vit{s,b,l,g}14[_reg4]`` (ViT-L as published).
        pretrained: the official ``dinov2_vit*14_pretrain.pth`` (or a Hugging Face
            ``facebook/dinov2-*`` file); loaded before the DSM patch embedding is copied from
            it. Use :func:`fusionseg.models.load_checkpoint` for whole released MoBaNet files.
        backbone_kwargs: constructor overrides (e.g. tiny test widths, other ``out_indices``).
        other keys: see :class:`MoBaNetSegmentor`.
    """
    enc = create_backbone(backbone, pretrained=pretrained, **dict(backbone_kwargs or {}))
    return MoBaNetSegmentor(
        enc, modalities, num_classes, cpia=cpia, dgfm=dgfm, mcrm=mcrm,
        hard_pixel_loss=hard_pixel_loss, aux_weight=aux_weight, proj_dim=proj_dim,
        decoder_channels=decoder_channels, cpia_ratio=cpia_ratio, mcrm_fraction=mcrm_fraction,
        mcrm_area=mcrm_area, mcrm_aspect=mcrm_aspect,
    )
