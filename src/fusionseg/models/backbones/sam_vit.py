"""SAM v1 image encoder (ViT-B/L/H, patch 16, windowed attention with relative positions).

Our own implementation of the image encoder of

    Alexander Kirillov et al., "Segment Anything", ICCV 2023 (arXiv 2304.02643); the encoder
    is the ViTDet backbone of Yanghao Li et al., "Exploring Plain Vision Transformer Backbones
    for Object Detection", ECCV 2022 (arXiv 2203.16527), decomposed relative positions from
    MViTv2 (Yanghao Li et al., CVPR 2022).

Module and parameter names are those of the official code (``facebookresearch/segment-anything``,
``segment_anything/modeling/image_encoder.py``, ``common.py``; settings from ``build_sam.py``),
i.e. the keys under ``image_encoder.`` of the official ``sam_vit_{b,l,h}_*.pth`` files::

    patch_embed.proj                         Conv2d(3, C, 16, stride 16)
    pos_embed [1, 64, 64, C]                 absolute, channels last (1024 px pretraining)
    blocks.{i}.norm1 / .norm2                LayerNorm(C, eps 1e-6)
    blocks.{i}.attn.qkv                      Linear(C, 3C) (bias), output q | k | v
    blocks.{i}.attn.proj                     Linear(C, C)
    blocks.{i}.attn.rel_pos_h / rel_pos_w    [2S - 1, C / heads]; S = window (14) in window
                                             blocks, the pretraining grid (64) in global ones
    blocks.{i}.mlp.lin1 / .mlp.lin2          GELU MLP, ratio 4
    neck.0  Conv2d(C, 256, 1, no bias)   neck.1  LayerNorm2d(256)
    neck.2  Conv2d(256, 256, 3, pad 1, no bias)   neck.3  LayerNorm2d(256)

=========  =====  =====  =====  =====================
name       C      depth  heads  global attention
=========  =====  =====  =====  =====================
sam_vit_b   768    12     12    blocks 2, 5, 8, 11
sam_vit_l  1024    24     16    blocks 5, 11, 17, 23
sam_vit_h  1280    32     16    blocks 7, 15, 23, 31
=========  =====  =====  =====  =====================

Every other block attends inside 14 x 14 windows (the grid zero-padded bottom/right to a
multiple of 14 first, as official ``window_partition``; windows ordered batch-major,
``[B * nh * nw, 14, 14, C]``; :func:`~fusionseg.models.layers.window_partition`). Relative
position tables of another length than the grid needs are linearly interpolated in every
forward, as official ``get_rel_pos`` does, so any grid works.

Files accepted by :func:`checkpoint_filter_fn` (so
``create_backbone("sam_vit_b", pretrained=path)`` loads strictly):

* an official whole-SAM file (``image_encoder.*`` kept, ``prompt_encoder.*`` / ``mask_decoder.*``
  dropped) or a bare encoder state dict (``module.`` stripped);
* Hugging Face ``facebook/sam-vit-{base,large,huge}`` ``SamModel`` / ``SamVisionModel`` files
  (``vision_encoder.patch_embed.projection``, ``vision_encoder.layers.{i}.layer_norm1`` /
  ``attn.*`` / ``layer_norm2`` / ``mlp.lin*``, ``vision_encoder.neck.{conv1, layer_norm1, conv2,
  layer_norm2}``; the hub's names are those ``transformers`` holds in memory) - converted by
  :func:`convert_hf_sam_vision`;
* a ``pos_embed`` of another grid is resized bicubically to this instance's ``img_size // 16``
  grid, relative-position tables of another length linearly to this instance's lengths (the
  interpolation ``get_rel_pos`` would apply at that grid).

As a :class:`~fusionseg.models.backbones.base.ViTBackbone` the stages are the groups of
blocks ending at each tap ``out_indices`` (default: the global-attention blocks, ViTDet's /
SAM-adapter taps); ``forward(x) -> [f_1..f_S]``, each the block output of its tap as a ``[B, C,
H/16, W/16]`` map (SAM has no final norm: ``norm_of`` is the identity). Blocks after the last
tap are not run by ``forward``. SAM's image embedding (all blocks, then the neck) is
:meth:`SamVisionTransformer.forward_neck` ``-> [B, 256, H/16, W/16]``. Tokens between blocks are
``[B, h*w, C]`` (no prefix tokens); each block reshapes them to ``[B, h, w, C]`` itself.

Departures from the official code (none changes the function at the native 1024 x 1024 input):

* other input sizes (sides multiples of 16) are accepted: the position embedding is resized
  bicubically (``align_corners=False``) to the input's grid in each forward, as MoBaNet's SAM
  encoder (GitHub ``sauryeo/MoBaNet``, ``Model/models/sam/modeling/image_encoder.py``) does; the
  official encoder adds its 64 x 64 table unresized and so needs 1024 x 1024 input;
* attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` with the
  decomposed relative positions as an additive mask (the official code forms the attention
  matrix explicitly);
* optional stochastic depth (``drop_path_rate``, 0 by default; the official encoder has none).

The file registers the builders ``sam_vit_{b,l,h}``, the family ``sam_vit`` (its files and
``sam`` / ``sam_vision_model`` configs recognised by :func:`recognise_state_dict` /
:func:`recognise_hf_config`) and the official SAM checkpoints of the catalogue
(:data:`PRETRAINED`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CheckpointError, ConfigError
from ..catalogue import PretrainedWeights, register_pretrained
from ..layers import (
    DropPath,
    LayerNorm2d,
    PatchEmbed,
    drop_path_rates,
    window_partition,
    window_unpartition,
)
from ..weights import rename_key
from .base import ViTBackbone, register_variants, strip_prefixes
from .formats import (
    BackboneFamily,
    DetectedBackbone,
    as_pair,
    count_indices,
    divisor_heads,
    register_family,
    top_level_names,
    under_prefix,
)

__all__ = [
    "PRETRAINED",
    "SAM_SETTINGS",
    "SAM_TINY",
    "SAM_VISION_CONFIG_DEFAULTS",
    "LayerNorm2d",
    "SamBlock",
    "SamVisionTransformer",
    "checkpoint_filter_fn",
    "convert_hf_sam_vision",
    "get_rel_pos",
    "recognise_hf_config",
    "recognise_state_dict",
    "resize_rel_pos",
    "resize_sam_pos_embed",
]

_LN_EPS = 1e-6

#: official settings (``segment_anything/build_sam.py``)
SAM_SETTINGS: dict[str, dict] = {
    "sam_vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "sam_vit_l": dict(embed_dim=1024, depth=24, num_heads=16,
                      global_attn_indexes=(5, 11, 17, 23)),
    "sam_vit_h": dict(embed_dim=1280, depth=32, num_heads=16,
                      global_attn_indexes=(7, 15, 23, 31)),
}

#: tiny constructor overrides used by the contract tests
SAM_TINY = dict(embed_dim=32, depth=4, num_heads=2, window_size=2, global_attn_indexes=(1, 3),
                img_size=64, out_chans=16)


# --------------------------------------------------------------------------- helpers
def resize_rel_pos(rel_pos: Tensor, length: int) -> Tensor:
    """``[L, D]`` relative-position table -> ``[length, D]`` by linear interpolation
    (``align_corners=False``), the resampling of official ``get_rel_pos``."""
    if rel_pos.shape[0] == length:
        return rel_pos
    out = F.interpolate(rel_pos.t().unsqueeze(0), size=length, mode="linear")
    return out.squeeze(0).t()


def get_rel_pos(size: int, rel_pos: Tensor) -> Tensor:
    """Relative position embeddings ``[size, size, D]`` for self-attention along one axis of
    ``size`` positions: entry ``(i, j)`` is row ``i - j + size - 1`` of ``rel_pos`` resized to
    ``2 * size - 1`` rows (official ``get_rel_pos`` with equal query and key sizes)."""
    table = resize_rel_pos(rel_pos, 2 * size - 1)
    idx = torch.arange(size, device=rel_pos.device)
    return table[idx[:, None] - idx[None, :] + (size - 1)]


def resize_sam_pos_embed(pos_embed: Tensor, size: Sequence[int]) -> Tensor:
    """``[1, gh0, gw0, C]`` channels-last position embedding -> ``[1, *size, C]`` (bicubic,
    ``align_corners=False``, computed in float32)."""
    if tuple(pos_embed.shape[1:3]) == tuple(size):
        return pos_embed
    out = F.interpolate(pos_embed.float().permute(0, 3, 1, 2), size=tuple(size), mode="bicubic",
                        align_corners=False)
    return out.permute(0, 2, 3, 1).to(pos_embed.dtype)


class MLPBlock(nn.Module):
    """``lin2(GELU(lin1(x)))`` (official ``common.MLPBlock``). Keys ``lin1``, ``lin2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


class SamAttention(nn.Module):
    """Multi-head self-attention with decomposed relative positions (official ``Attention``).

    ``forward(x [B, h, w, C]) -> [B, h, w, C]``: ``q, k, v`` from ``self.qkv(x)`` (one
    ``Linear(C, 3C)``, output ``q | k | v``), scores ``q k^T / sqrt(d) + rel_h + rel_w`` with
    ``rel_h[b, n, i, j, k] = <q[b, n, i, j], R_h[i, k]>`` (unscaled ``q``, :func:`get_rel_pos`
    tables for the current ``h`` and ``w``), SDPA, ``proj``.

    Keys: ``qkv``, ``proj``, ``rel_pos_h`` / ``rel_pos_w`` ``[2 S - 1, C / heads]`` (zero
    initialised as official), with ``S`` = ``input_size``.
    """

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int],
                 use_rel_pos: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_heads = dim, num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = bool(use_rel_pos)
        if self.use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def rel_pos_bias(self, q: Tensor, h: int, w: int) -> Tensor:
        """Additive mask ``[B, heads, h*w, h*w]`` from ``q [B, heads, h*w, d]`` (official
        ``add_decomposed_rel_pos``)."""
        b, n, _, d = q.shape
        rh = get_rel_pos(h, self.rel_pos_h).to(q.dtype)  # [h, h, d]
        rw = get_rel_pos(w, self.rel_pos_w).to(q.dtype)  # [w, w, d]
        rq = q.reshape(b, n, h, w, d)
        bias_h = torch.einsum("bnhwd,hkd->bnhwk", rq, rh)
        bias_w = torch.einsum("bnhwd,wkd->bnhwk", rq, rw)
        bias = bias_h[..., :, None] + bias_w[..., None, :]  # [b, n, h, w, kh, kw]
        return bias.reshape(b, n, h * w, h * w)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.num_heads, c // self.num_heads).permute(
            2, 0, 3, 1, 4).unbind(0)
        mask = self.rel_pos_bias(q, h, w) if self.use_rel_pos else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


class SamBlock(nn.Module):
    """Pre-norm ViT block with windowed or global attention (official ``Block``).

    ``x = x + drop_path(unwindow(attn(window(norm1(x))))); x = x + drop_path(mlp(norm2(x)))``.
    ``forward(x [B, H*W, C], H, W) -> [B, H*W, C]`` (the transformer-backbone block contract;
    the grid is reshaped to ``[B, H, W, C]`` inside). ``window_size = 0``: global attention.
    Keys ``norm1, attn.{qkv, proj, rel_pos_h, rel_pos_w}, norm2, mlp.{lin1, lin2}``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, window_size: int = 0,
                 input_size: tuple[int, int] = (64, 64), use_rel_pos: bool = True,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.window_size = int(window_size)
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        size = input_size if self.window_size == 0 else (self.window_size, self.window_size)
        self.attn = SamAttention(dim, num_heads, size, use_rel_pos)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def attn_residual(self, x: Tensor, H: int, W: int) -> Tensor:
        """``drop_path(attention of norm1(x))``, windowed unless a global block."""
        b, n, c = x.shape
        y = self.norm1(x).reshape(b, H, W, c)
        if self.window_size > 0:
            y, padded = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(y), self.window_size, padded, (H, W))
        else:
            y = self.attn(y)
        return self.drop_path(y.reshape(b, n, c))

    def mlp_residual(self, x: Tensor, H: int | None = None, W: int | None = None) -> Tensor:
        """``drop_path(mlp(norm2(x)))``."""
        return self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        x = x + self.attn_residual(x, H, W)
        return x + self.mlp_residual(x)


# --------------------------------------------------------------------------- the encoder
def checkpoint_filter_fn(state_dict: Mapping[str, Tensor],
                         model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official SAM or Hugging Face files -> our keys (= the official encoder names).

    * ``module.`` prefixes are stripped; of a whole-SAM file only ``image_encoder.*`` is kept
      (prompt encoder and mask decoder dropped), of a Hugging Face ``SamModel`` /
      ``SamVisionModel`` file only ``vision_encoder.*``, renamed by
      :func:`convert_hf_sam_vision`;
    * ``neck.*`` is dropped when ``model`` has no neck;
    * ``pos_embed`` of another grid is resized bicubically to ``model``'s
      (:func:`resize_sam_pos_embed`), relative-position tables of another length linearly to
      ``model``'s (:func:`resize_rel_pos`).

    Args:
        state_dict: the file's tensors.
        model: the :class:`SamVisionTransformer` they are for; ``None``: no instance (the neck
            kept, nothing resized).

    Returns:
        The encoder's tensors under our keys; keys it does not know are kept (the strict load
        reports them). ``model``'s own state dict comes back unchanged.
    """
    own = model.state_dict() if model is not None else {}
    sd = strip_prefixes(state_dict, ("module.",), list(own))
    for prefix in ("image_encoder.", "vision_encoder."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    if any(k.startswith(("layers.", "patch_embed.projection.", "neck.conv1.")) for k in sd):
        sd = convert_hf_sam_vision(sd)
    if model is None:
        return sd
    if model.neck is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("neck.")}
    pe = sd.get("pos_embed")
    if pe is not None and pe.ndim == 4 and pe.shape != own["pos_embed"].shape:
        sd["pos_embed"] = resize_sam_pos_embed(pe, model.grid)
    for k, v in sd.items():
        if k.endswith((".rel_pos_h", ".rel_pos_w")) and k in own and v.ndim == 2 and (
                v.shape != own[k].shape and v.shape[1] == own[k].shape[1]):
            sd[k] = resize_rel_pos(v.float(), own[k].shape[0]).to(v.dtype)
    return sd


class SamVisionTransformer(ViTBackbone):
    """SAM v1 image encoder (see the module docstring).

    Args:
        embed_dim, depth, num_heads: width ``C``, blocks, heads.
        global_attn_indexes: blocks with global attention (the others use windows).
        out_indices: block indices tapped (0-based, increasing); one output map per tap.
            ``None`` = ``global_attn_indexes``.
        window_size: window side of the windowed blocks (14).
        img_size: pretraining size (1024): sets the ``img_size // 16`` grid of ``pos_embed`` and
            the table length ``2 * grid - 1`` of the global blocks' relative positions.
        patch_size: 16.
        mlp_ratio: 4.
        out_chans: neck width (256).
        neck: build the neck (``neck.0..3``). Without it :meth:`forward_neck` is unavailable and
            ``neck.*`` keys of a checkpoint are dropped by :func:`checkpoint_filter_fn`.
        use_rel_pos: decomposed relative positions (True for every SAM v1 model).
        drop_path_rate: stochastic depth, linear over the blocks (0; not in the official code).
        in_chans: 3.

    ``forward(x [B, 3, H, W]) -> list`` of ``len(out_indices)`` maps ``[B, C, H/16, W/16]``
    (the tap blocks' outputs, no norm); :meth:`forward_neck` ``(x) -> [B, out_chans, H/16,
    W/16]`` (SAM's image embedding).

    Raises:
        ValueError: bad settings (taps or global indexes outside the depth, unsorted taps); at
            forward, an input that is not ``[B, in_chans, H, W]`` or whose sides are not
            multiples of 16.
    """

    input_multiple = 16
    num_prefix_tokens = 0
    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
        out_indices: Sequence[int] | None = None,
        window_size: int = 14,
        img_size: int = 1024,
        patch_size: int = 16,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        neck: bool = True,
        use_rel_pos: bool = True,
        drop_path_rate: float = 0.0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        glob = sorted({int(i) for i in global_attn_indexes})
        if any(not 0 <= i < depth for i in glob):
            raise ConfigError(f"global_attn_indexes {list(global_attn_indexes)} outside the "
                             f"{depth} blocks")
        self.set_taps(glob if out_indices is None else out_indices, depth, patch_size)
        self.embed_dim, self.depth, self.num_heads = int(embed_dim), int(depth), int(num_heads)
        self.global_attn_indexes = glob
        self.window_size = int(window_size)
        self.in_chans = int(in_chans)
        self.out_chans = int(out_chans)
        grid = int(img_size) // self.patch_size
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            SamBlock(embed_dim, num_heads, mlp_ratio,
                     window_size=0 if i in glob else self.window_size, input_size=(grid, grid),
                     use_rel_pos=use_rel_pos, drop_path=dpr[i])
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        ) if neck else None
        #: the (absent) norm of every tap
        self.tap_norm = nn.Identity()

    # ------------------------------------------------------------------ contract
    @property
    def grid(self) -> tuple[int, int]:
        """The position-embedding grid ``(img_size // 16,) * 2``."""
        return tuple(self.pos_embed.shape[1:3])

    def no_weight_decay(self) -> set[str]:
        """``pos_embed`` and every block's ``attn.rel_pos_h`` / ``attn.rel_pos_w``."""
        names = {"pos_embed"}
        for i, blk in enumerate(self.blocks):
            if blk.attn.use_rel_pos:
                names |= {f"blocks.{i}.attn.rel_pos_h", f"blocks.{i}.attn.rel_pos_w"}
        return names

    # ------------------------------------------------------------------ stages
    def prepare_tokens(self, x: Tensor, patch_embed: nn.Module | None = None
                       ) -> tuple[Tensor, int, int]:
        """Image -> ``([B, gh*gw, C] tokens, gh, gw)``: patch embedding plus the position
        embedding resized to the ``gh x gw`` grid. ``patch_embed`` replaces the backbone's own
        (e.g. MoBaNet's DSM patch embedding).

        Raises:
            ValueError: not ``[B, in_chans, H, W]``, or sides not multiples of 16.
        """
        self.check_input_size(x)
        tokens, gh, gw = (patch_embed or self.patch_embed)(x)
        pos = resize_sam_pos_embed(self.pos_embed, (gh, gw))
        return tokens + pos.reshape(1, gh * gw, -1), gh, gw

    def tail_blocks(self) -> nn.ModuleList:
        """The blocks after the last tap (run by :meth:`forward_neck`, not by ``forward``)."""
        return self.blocks[self.out_indices[-1] + 1:]

    def norm_of(self, stage_idx: int) -> nn.Module:
        """The identity: SAM has no final norm, its taps are the raw block outputs."""
        self._check_stage(stage_idx)
        return self.tap_norm

    # ------------------------------------------------------------------ neck
    def apply_neck(self, x: Tensor) -> Tensor:
        """The neck on a final block-output map: ``[B, C, h, w] -> [B, out_chans, h, w]``.

        Raises:
            RuntimeError: built with ``neck=False``.
        """
        if self.neck is None:
            raise RuntimeError(f"{type(self).__name__} was built with neck=False")
        return self.neck(x)

    def forward_neck(self, x: Tensor) -> Tensor:
        """SAM's image embedding: every block, then the neck; ``[B, 3, H, W] -> [B, out_chans,
        H/16, W/16]`` (official ``ImageEncoderViT.forward`` at any multiple-of-16 size).

        Raises:
            ValueError: see :meth:`prepare_tokens`; RuntimeError: built with ``neck=False``.
        """
        if self.neck is None:
            raise RuntimeError(f"{type(self).__name__} was built with neck=False")
        tokens, h, w = self.prepare_tokens(x)
        for blk in self.blocks:
            tokens = self.run_block(blk, tokens, h, w)
        return self.neck(self.tokens_to_map(tokens, h, w))


# --------------------------------------------------------------------------- Hugging Face
_HF_RULES: tuple[tuple[str, str], ...] = (
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.(attn|mlp)\.", r"blocks.\1.\2."),
    (r"^neck\.conv1\.", "neck.0."),
    (r"^neck\.layer_norm1\.", "neck.1."),
    (r"^neck\.conv2\.", "neck.2."),
    (r"^neck\.layer_norm2\.", "neck.3."),
)
_HF_KEY = re.compile(r"^(?:vision_encoder\.)?")


def convert_hf_sam_vision(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face ``SamVisionEncoder`` state dict (``vision_encoder.`` prefix
    optional; the hub's names equal the in-memory ones of ``transformers`` 5) to the official
    encoder keys: ``patch_embed.projection`` -> ``patch_embed.proj``, ``layers.{i}.layer_norm1 /
    layer_norm2`` -> ``blocks.{i}.norm1 / norm2``, ``layers.{i}.{attn, mlp}`` -> ``blocks.{i}.*``
    (``qkv``, ``proj``, ``rel_pos_*``, ``lin1``, ``lin2`` keep their names), ``neck.{conv1,
    layer_norm1, conv2, layer_norm2}`` -> ``neck.{0, 1, 2, 3}``. Keys it does not know are kept.
    """
    return {rename_key(_HF_KEY.sub("", k, count=1), _HF_RULES): v for k, v in sd.items()}


# --------------------------------------------------------------------------- recognition
#: defaults of ``transformers`` 5 ``SamVisionConfig``, for keys a ``config.json`` leaves out
SAM_VISION_CONFIG_DEFAULTS: dict[str, object] = dict(
    hidden_size=768, output_channels=256, num_hidden_layers=12, num_attention_heads=12,
    num_channels=3, image_size=1024, patch_size=16, qkv_bias=True, mlp_ratio=4.0,
    use_abs_pos=True, use_rel_pos=True, window_size=14, global_attn_indexes=[2, 5, 8, 11],
    mlp_dim=None)


def recognise_hf_config(model_type: str, c: Mapping[str, object]) -> DetectedBackbone:
    """Our SAM ViT for a Hugging Face ``sam_vision_model`` config (the ``vision_config`` of a
    ``sam`` config: ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``global_attn_indexes``, ``window_size``, ``image_size``, ``mlp_dim``, ``output_channels``;
    completed with :data:`SAM_VISION_CONFIG_DEFAULTS`).

    Raises:
        CheckpointError: ``use_abs_pos`` or ``qkv_bias`` false.
    """
    if not c["use_abs_pos"] or not c["qkv_bias"]:
        raise CheckpointError("SAM vision config: use_abs_pos and qkv_bias must be true")
    dim = int(c["hidden_size"])
    mlp_ratio = float(c["mlp_dim"]) / dim if c.get("mlp_dim") else float(c["mlp_ratio"])
    found = dict(embed_dim=dim, depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
                 global_attn_indexes=[int(i) for i in c["global_attn_indexes"]],
                 window_size=c["window_size"], img_size=as_pair(c["image_size"])[0],
                 patch_size=c["patch_size"], mlp_ratio=mlp_ratio,
                 out_chans=c["output_channels"], use_rel_pos=bool(c["use_rel_pos"]),
                 in_chans=c["num_channels"])
    return FAMILY.match(found, "hugging face", "config.json")


def recognise_state_dict(sd: Mapping[str, Tensor]) -> DetectedBackbone | None:
    """Our SAM ViT for an official ``sam_vit_*.pth``, a Hugging Face ``SamModel`` /
    ``SamVisionModel`` state dict or a bare encoder (official or Hugging Face names), or
    ``None``.

    Read from the weights: depth, width, heads (from the relative-position tables), window
    size, global blocks, grid, patch size, MLP ratio, neck width (or no neck).
    """
    top = top_level_names(sd)
    if "image_encoder.blocks.0.mlp.lin1.weight" in sd and top <= {
            "image_encoder", "prompt_encoder", "mask_decoder"}:
        fmt, enc = "official", under_prefix(sd, "image_encoder.")
    elif "vision_encoder.layers.0.mlp.lin1.weight" in sd and top <= {
            "vision_encoder", "prompt_encoder", "mask_decoder", "shared_image_embedding"}:
        fmt, enc = "hugging face", convert_hf_sam_vision(under_prefix(sd, "vision_encoder."))
    elif "layers.0.mlp.lin1.weight" in sd and "patch_embed.projection.weight" in sd:
        fmt, enc = "hugging face", convert_hf_sam_vision(sd)
    elif "blocks.0.mlp.lin1.weight" in sd and "patch_embed.proj.weight" in sd:
        fmt, enc = "official", dict(sd)
    else:
        return None
    w = enc["patch_embed.proj.weight"]
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    grid = int(enc["pos_embed"].shape[1])
    depth = count_indices(enc, r"^blocks\.(\d+)\.norm1\.weight$")
    rel = [enc.get(f"blocks.{i}.attn.rel_pos_h") for i in range(depth)]
    use_rel = rel[0] is not None
    glob = [i for i, r in enumerate(rel) if r is not None and r.shape[0] == 2 * grid - 1]
    local = [r for r in rel if r is not None and r.shape[0] != 2 * grid - 1]
    window = (int(local[0].shape[0]) + 1) // 2 if local else 14
    heads = dim // int(rel[0].shape[1]) if use_rel else divisor_heads(dim, dim // 64)
    found = dict(embed_dim=dim, depth=depth, num_heads=heads, global_attn_indexes=glob,
                 window_size=window, img_size=grid * patch, patch_size=patch,
                 mlp_ratio=enc["blocks.0.mlp.lin1.weight"].shape[0] / dim,
                 use_rel_pos=use_rel, in_chans=int(w.shape[1]))
    if "neck.0.weight" in enc:
        found["out_chans"] = int(enc["neck.0.weight"].shape[0])
    else:
        found["neck"] = False
    return FAMILY.match(found, fmt, "state dict")


# --------------------------------------------------------------------------- registration
_SAM = "facebookresearch/segment-anything"

#: the official SAM v1 checkpoints (whole models); the file names end with the first 6 hex
#: digits of the file's MD5, whose full value is recorded
PRETRAINED: tuple[PretrainedWeights, ...] = tuple(
    PretrainedWeights(
        f"sam_vit_{v}", f"sam_vit_{v}", ("mle_sam", "mobanet"), _SAM, f"sam_vit_{v}_{md5[:6]}.pth",
        f"https://dl.fbaipublicfiles.com/segment_anything/sam_vit_{v}_{md5[:6]}.pth", mb, md5=md5)
    for v, md5, mb in (("b", "01ec64d29a2fca3f0661936605ae66f8", 375),
                       ("l", "0b3195507c641ddb6910d2bb5adee89c", 1249),
                       ("h", "4b8939a88964f0f4ff5f5b2642c598a6", 2564)))


register_variants(SamVisionTransformer, SAM_SETTINGS,
                  "Build {name} (official ``build_sam.py`` settings: window 14, 1024 px, "
                  "relative positions; overridable by keyword).", tiny=SAM_TINY)

FAMILY = register_family(BackboneFamily(
    "sam_vit", SamVisionTransformer, SAM_SETTINGS, recognise_state_dict=recognise_state_dict,
    hf_configs={"sam_vision_model": SAM_VISION_CONFIG_DEFAULTS},
    hf_nested={"sam": ("vision_config", "sam_vision_model")},
    recognise_hf_config=recognise_hf_config))
register_pretrained(*PRETRAINED)
