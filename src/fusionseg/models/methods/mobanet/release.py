"""MoBaNet's released checkpoint format: detection and conversion to our keys.

Source: the official ``Net`` of GitHub ``sauryeo/MoBaNet`` (``Net.py``,
``Model/models/dinov2/build_dinov2.py``, ``Model/models/sam/modeling/image_encoder.py``,
``Model/models/ImageEncoder/vit/peft_block.py``), saved by ``torch.save(net.state_dict())``.
:class:`~fusionseg.models.methods.mobanet.model.MoBaNetSegmentor` binds
:func:`checkpoint_filter_fn` and :func:`is_released_format`.

DINOv2 encoder (ours <- release)::

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

SAM encoder (``sam.*``, the unused prompt encoder / mask decoder and a second copy of the
encoder, dropped)::

    backbone.*                        <- image_encoder.* (official SAM names; the release's
                                         ``attn.rel_h`` / ``attn.rel_w`` -> ``attn.rel_pos_h/w``)
    dsm_patch_embed.proj.*            <- image_encoder.extra_patch_embed.proj.*
    block_adapters.{i}.cpia.*         <- image_encoder.blocks.{i}.peft_cpia.* (names as above)
    block_adapters.{i}.adapter_{opt,dsm}.{down, up, prompt}
                                      <- image_encoder.blocks.{i}.peft_adapter_{x,y}.{D_fc1,
                                         D_fc2, D_fc_prompt}
    fpn_{opt,dsm}.0.{0,1,3}, .1.0     <- fpn1{x,y}.{0, 1 (.ln), 3}, fpn2{x,y}.0
    fuse.{s}.se_{opt,dsm}.fc.*        <- fusion{s+1}.se_{rgb,dsm}.fc.*
    decode_head.*, aux_heads.*        <- decoder.*, aux_head_{rgb,dsm}.* (as above)
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ...backbones.sam_vit import SamVisionTransformer
from ...weights import rename_keys

__all__ = ["RELEASE_KEYS", "RELEASE_SAM_KEYS", "checkpoint_filter_fn", "is_released_format",
           "is_released_sam"]

#: ``(pattern, replacement)`` renames of the release's DINOv2 ``Net`` (module docstring)
RELEASE_KEYS: tuple[tuple[str, str], ...] = (
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

_BLOCK = r"^image_encoder\.blocks\.(\d+)\."
_ADAPTERS = r"block_adapters.\1."

#: ``(pattern, replacement)`` renames of the release's SAM ``Net`` (module docstring)
RELEASE_SAM_KEYS: tuple[tuple[str, str], ...] = (
    (r"^image_encoder\.extra_patch_embed\.", "dsm_patch_embed."),
    (_BLOCK + r"attn\.rel_([hw])$", r"backbone.blocks.\1.attn.rel_pos_\2"),
    (_BLOCK + r"peft_cpia\.D_fc1\.", _ADAPTERS + "cpia.down_opt."),
    (_BLOCK + r"peft_cpia\.D_fc2\.", _ADAPTERS + "cpia.down_dsm."),
    (_BLOCK + r"peft_cpia\.P_fc2\.", _ADAPTERS + "cpia.joint."),
    (_BLOCK + r"peft_cpia\.U_fc1\.", _ADAPTERS + "cpia.up."),
    (_BLOCK + r"peft_cpia\.tfts_(gamma|beta)_rgb$", _ADAPTERS + r"cpia.\2_opt"),
    (_BLOCK + r"peft_cpia\.tfts_(gamma|beta)_dsm$", _ADAPTERS + r"cpia.\2_dsm"),
    (_BLOCK + r"peft_adapter_x\.D_fc1\.", _ADAPTERS + "adapter_opt.down."),
    (_BLOCK + r"peft_adapter_x\.D_fc2\.", _ADAPTERS + "adapter_opt.up."),
    (_BLOCK + r"peft_adapter_x\.D_fc_prompt\.", _ADAPTERS + "adapter_opt.prompt."),
    (_BLOCK + r"peft_adapter_y\.D_fc1\.", _ADAPTERS + "adapter_dsm.down."),
    (_BLOCK + r"peft_adapter_y\.D_fc2\.", _ADAPTERS + "adapter_dsm.up."),
    (_BLOCK + r"peft_adapter_y\.D_fc_prompt\.", _ADAPTERS + "adapter_dsm.prompt."),
    (r"^image_encoder\.", "backbone."),
    (r"^fpn1x\.1\.ln\.", "fpn_opt.0.1."),
    (r"^fpn1x\.", "fpn_opt.0."),
    (r"^fpn2x\.", "fpn_opt.1."),
    (r"^fpn1y\.", "fpn_dsm.0."),
    (r"^fpn2y\.", "fpn_dsm.1."),
    *((rf"^fusion{s + 1}\.se_rgb\.", f"fuse.{s}.se_opt.") for s in range(4)),
    *((rf"^fusion{s + 1}\.se_dsm\.", f"fuse.{s}.se_dsm.") for s in range(4)),
    *RELEASE_KEYS[-6:],  # decoder and auxiliary heads: as in the DINOv2 release
)


def is_released_format(state_dict: Mapping[str, Tensor]) -> bool:
    """True for the official ``Net`` layout (``image_encoder.*``, ``decoder.*``), DINOv2 or
    SAM encoder."""
    return any(k.startswith("image_encoder.") for k in state_dict)


def is_released_sam(state_dict: Mapping[str, Tensor]) -> bool:
    """The release's SAM variant (``image_encoder.blocks.*`` / ``neck.*`` directly, the
    ``sam.*`` copy, the ``fpn1x`` pyramid) rather than its DINOv2 one."""
    return any(k.startswith(("image_encoder.blocks.", "image_encoder.neck.", "sam.",
                             "fpn1x.")) for k in state_dict)


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor],
                         model: nn.Module | None = None) -> dict[str, Tensor]:
    """Release keys -> ours (tables in the module docstring); ours are kept (idempotent). The
    release's ``DataParallel`` ``module.`` prefix is stripped before, by
    :func:`~fusionseg.models.weights.load_checkpoint` (generic).

    For the SAM variant the ``sam.*`` keys (the unused prompt encoder and mask decoder, and a
    second copy of the encoder) are dropped, and with ``model`` given, a position embedding or
    relative-position table of another size than the model's backbone is resized by the
    backbone's ``checkpoint_filter_fn``."""
    if not is_released_format(state_dict):
        return dict(state_dict)
    if not is_released_sam(state_dict):
        return rename_keys(state_dict, RELEASE_KEYS)
    out = rename_keys({k: v for k, v in state_dict.items() if not k.startswith("sam.")},
                      RELEASE_SAM_KEYS)
    bb = getattr(model, "backbone", None)
    if isinstance(bb, SamVisionTransformer):
        sub = type(bb).checkpoint_filter_fn({k[9:]: v for k, v in out.items()
                                             if k.startswith("backbone.")}, bb)
        out = {k: v for k, v in out.items() if not k.startswith("backbone.")}
        out.update({f"backbone.{k}": v for k, v in sub.items()})
    return out
