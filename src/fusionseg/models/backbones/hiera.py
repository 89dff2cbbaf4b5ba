"""SAM 2.1 Hiera image-encoder trunk (``sam2.1_hiera_{t,s,b+,l}``).

Our own implementation of the hierarchical ViT that SAM 2 uses as its image encoder trunk:

    Chaitanya Ryali et al., "Hiera: A Hierarchical Vision Transformer without the
    Bells-and-Whistles", ICML 2023 (arXiv 2306.00989); the SAM 2 variant ("HieraDet": windowed
    attention with a few global blocks, windowed absolute position embeddings of Daniel Bolya et
    al., "Window Attention is Bugged", arXiv 2311.05613) of Nikhila Ravi et al., "SAM 2: Segment
    Anything in Images and Videos", arXiv 2408.00714.

Every detail follows the official code (``facebookresearch/sam2``,
``sam2/modeling/backbones/hieradet.py`` and ``.../backbones/utils.py``) and the released
settings (``sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``, see :data:`SAM21_HIERA_SETTINGS`).
Module and parameter names are the official ones, so the ``image_encoder.trunk.*`` keys of an
official ``sam2.1_hiera_*.pt`` (``{"model": {...}}``) load strictly::

    patch_embed.proj            Conv2d(3, C, 7, stride 4, padding 3)
    pos_embed                   [1, C, *window_pos_embed_bkg_spatial_size]   (background)
    pos_embed_window            [1, C, window_spec[0], window_spec[0]]       (tiled per window)
    blocks.{i}.norm1            LayerNorm(dim, eps 1e-6)
    blocks.{i}.attn.qkv         Linear(dim, 3 * dim_out)  -> q | k | v on the last dim
    blocks.{i}.attn.proj        Linear(dim_out, dim_out)
    blocks.{i}.norm2            LayerNorm(dim_out, eps 1e-6)
    blocks.{i}.mlp.layers.0/1   Linear(dim_out, 4 dim_out), GELU, Linear(4 dim_out, dim_out)
    blocks.{i}.proj             Linear(dim, dim_out)      (first block of stages 2..4 only)

Hugging Face ``facebook/sam2.1-hiera-*`` weights (``Sam2Model``: ``vision_encoder.backbone.*``;
``Sam2VisionModel``: ``backbone.*``; ``Sam2HieraDetModel``: no prefix; module names
``patch_embed.projection``, ``layer_norm1/2``, ``mlp.proj_in/proj_out``; the hub files and
``transformers`` 5 in memory use the same names) convert through
:func:`checkpoint_filter_fn`.

Layout: tokens stay channels-last ``[B, H, W, C]`` inside the trunk (as official). Windowed
blocks partition the map into ``window_size`` squares (zero padding at the bottom / right when
the map is not a multiple), ordered batch first (``[B * nW, ws, ws, C]``: the windows of sample 0
first), so every op keeps the batch dimension outermost and a module that wraps ``attn.qkv`` may
split dim 0 into equal per-stream chunks. The first block of stages 2..4 pools the queries (and
the projected shortcut) with a 2 x 2 max-pool (``q_stride``), halving the resolution.

The file registers the builders ``sam2.1_hiera_{t,s,b+,l}``, the family ``sam2_hiera`` (its
files and ``sam2*`` configs recognised by :func:`recognise_state_dict` /
:func:`recognise_hf_config`) and the SAM 2.1 checkpoints of the catalogue (:data:`PRETRAINED`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CheckpointError, ConfigError
from ..catalogue import PretrainedWeights, register_pretrained
from ..layers import DropPath, drop_path_rates, window_partition, window_unpartition
from ..weights import rename_key
from .base import Backbone, register_variants, strip_prefixes
from .formats import (
    BackboneFamily,
    DetectedBackbone,
    as_pair,
    count_indices,
    register_family,
    top_level_names,
    under_prefix,
)

__all__ = [
    "HIERA_CONFIG_DEFAULTS",
    "HIERA_TINY",
    "PRETRAINED",
    "SAM21_HIERA_SETTINGS",
    "Hiera",
    "HieraMLP",
    "HieraPatchEmbed",
    "MultiScaleAttention",
    "MultiScaleBlock",
    "checkpoint_filter_fn",
    "convert_hf_sam2_trunk",
    "recognise_hf_config",
    "recognise_state_dict",
]

_LN_EPS = 1e-6

#: official trunk settings of the SAM 2.1 configs (``sam2/configs/sam2.1/sam2.1_hiera_*.yaml``,
#: ``image_encoder.trunk``; keys the yaml leaves out take the ``Hiera.__init__`` defaults of
#: ``hieradet.py``: ``q_pool=3, q_stride=(2, 2), dim_mul=2.0, head_mul=2.0``, b+ uses every
#: default). All four run at 1024 x 1024 in SAM 2.1.
SAM21_HIERA_SETTINGS: dict[str, dict] = {
    "sam2.1_hiera_t": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2),
                           global_att_blocks=(5, 7, 9), window_pos_embed_bkg_spatial_size=(7, 7),
                           window_spec=(8, 4, 14, 7)),
    "sam2.1_hiera_s": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2),
                           global_att_blocks=(7, 10, 13),
                           window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 14, 7)),
    "sam2.1_hiera_b+": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3),
                            global_att_blocks=(12, 16, 20),
                            window_pos_embed_bkg_spatial_size=(14, 14),
                            window_spec=(8, 4, 14, 7)),
    "sam2.1_hiera_l": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4),
                           global_att_blocks=(23, 33, 43),
                           window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 16, 8)),
}
for _s in SAM21_HIERA_SETTINGS.values():
    _s.update(q_pool=3, q_stride=(2, 2), dim_mul=2.0, head_mul=2.0)
del _s

#: tiny constructor overrides (contract tests): widths 8/16/32/64, 6 blocks, block 3 global,
#: windows 4 (stage 1: the window position embedding is 4 x 4), a 3 x 5 background embedding.
#: At 64 x 96 the stage-3 map (4 x 6) is padded to 4 x 8 for its 4 x 4 windows, so padding,
#: q-pooling inside windows and a global block are all exercised.
HIERA_TINY: dict = dict(embed_dim=8, num_heads=1, stages=(1, 1, 3, 1), global_att_blocks=(3,),
                        window_spec=(4, 4, 4, 2), window_pos_embed_bkg_spatial_size=(3, 5))


# --------------------------------------------------------------------------- blocks
def _pool(x: Tensor, stride: tuple[int, int] | None) -> Tensor:
    """2-D max-pool (kernel = stride, floor) of a channels-last ``[N, H, W, C]`` map (official
    ``do_pool`` with its ``nn.MaxPool2d(q_stride, q_stride, ceil_mode=False)``)."""
    if stride is None:
        return x
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride).permute(
        0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention with optional query pooling (official ``MultiScaleAttention``).

    ``forward(x [N, H, W, dim]) -> [N, H', W', dim_out]`` with ``(H', W') = (H, W) // q_stride``
    when ``q_stride`` is set (queries max-pooled; keys / values keep the full resolution), else
    ``(H, W)``. ``N`` is the batch, or batch x windows. The fused projection is called as the
    attribute ``self.qkv(x)`` (``Linear(dim, 3 * dim_out)``, output ``q | k | v``, each split
    into heads as ``[..., heads, dim_out / heads]``). Attention through
    :func:`torch.nn.functional.scaled_dot_product_attention` (scale ``head_dim ** -0.5``).
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int,
                 q_stride: tuple[int, int] | None = None) -> None:
        super().__init__()
        if dim_out % num_heads:
            raise ConfigError(f"dim_out {dim_out} must be divisible by num_heads {num_heads}")
        self.dim, self.dim_out, self.num_heads = dim, dim_out, num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        n, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, h * w, 3, self.num_heads, -1).unbind(2)
        if self.q_stride is not None:
            q = _pool(q.reshape(n, h, w, -1), self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(n, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(n, h, w, -1))


class HieraMLP(nn.Module):
    """``layers.1(GELU(layers.0(x)))`` (the 2-layer case of the official ``sam2_utils.MLP``;
    keys ``layers.0``, ``layers.1``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, dim)])
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.layers[1](self.act(self.layers[0](x)))


class MultiScaleBlock(nn.Module):
    """Hiera block (official ``MultiScaleBlock``), channels-last ``[B, H, W, dim] -> [B, H',
    W', dim_out]``::

        y = norm1(x)
        shortcut = pool(proj(y)) if dim != dim_out else x
        a = attn(window_partition(y))  -> window_unpartition   (ws = 0: global attention;
                                          fusionseg.models.layers)
        x = shortcut + drop_path(a)
        x = x + drop_path(mlp(norm2(x)))

    With ``q_stride`` the queries are pooled inside each window, so the windows shrink to
    ``window_size // q_stride`` and the output map is ``(H, W) // q_stride``.

    Args:
        dim, dim_out: input / output width (they differ at the first block of a stage).
        num_heads: heads of the attention (of ``dim_out``).
        window_size: window side, 0 = global attention.
        q_stride: query / shortcut pooling stride (first block of a pooled stage) or ``None``.
        mlp_ratio: hidden width of the MLP relative to ``dim_out`` (4).
        drop_path: stochastic-depth probability of both residual branches.

    Raises:
        ValueError: a pooling block whose window is not a multiple of the stride, or that does
            not change the width (the official code would fail at forward time).
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, window_size: int = 0,
                 q_stride: tuple[int, int] | None = None, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        if q_stride is not None:
            if dim == dim_out:
                raise ConfigError("a query-pooling block must change the width (dim_mul != 1)")
            if window_size % q_stride[0]:
                raise ConfigError(f"window {window_size} of a query-pooling block must be a "
                                 f"multiple of q_stride {q_stride[0]}")
        self.dim, self.dim_out = dim, dim_out
        self.window_size = int(window_size)
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim_out, eps=_LN_EPS)
        self.mlp = HieraMLP(dim_out, int(dim_out * mlp_ratio))
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = _pool(self.proj(x), self.q_stride)
        ws = self.window_size
        if ws > 0:
            hw = x.shape[1:3]
            x, pad_hw = window_partition(x, ws)
        x = self.attn(x)
        if ws > 0:
            if self.q_stride is not None:  # the windows and the map shrank with the queries
                ws = ws // self.q_stride[0]
                hw = shortcut.shape[1:3]
                pad_hw = (hw[0] + (-hw[0]) % ws, hw[1] + (-hw[1]) % ws)
            x = window_unpartition(x, ws, pad_hw, hw)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class HieraPatchEmbed(nn.Module):
    """``Conv2d(in_chans, C, 7, stride 4, padding 3)``, ``[B, 3, H, W] -> [B, H/4, W/4, C]``
    (channels-last; official ``utils.PatchEmbed``). Key ``proj``.

    Not the plain ViT's :class:`~fusionseg.models.layers.PatchEmbed`: overlapping 7 x 7 patches
    (padding 3) at stride 4, and a channels-last map instead of ``(tokens, h, w)``.
    """

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


# --------------------------------------------------------------------------- trunk
def checkpoint_filter_fn(state_dict: Mapping[str, Tensor],
                         model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official or Hugging Face SAM 2 / 2.1 files -> our keys (= the official trunk names).

    * a DDP ``module.`` prefix on every key is stripped;
    * the trunk is taken from a whole-model file: the keys under the first of
      ``image_encoder.trunk.`` (official ``sam2.1_hiera_*.pt``), ``vision_encoder.backbone.``
      (HF ``Sam2Model``), ``trunk.`` (an official ``ImageEncoder``), ``backbone.`` (HF
      ``Sam2VisionModel``, or a segmentor) that any key carries, prefix stripped; every
      other key (neck, prompt encoder, mask decoder, memory modules) is dropped;
    * Hugging Face module names are renamed by :func:`convert_hf_sam2_trunk`.

    Args:
        state_dict: the file's tensors.
        model: the :class:`Hiera` they are for (only its own keys are consulted); ``None``: no
            instance.

    Returns:
        The trunk's tensors under our keys. ``model``'s own state dict comes back unchanged
        (same keys, order and tensors).
    """
    own = list(model.state_dict()) if model is not None else []
    sd = strip_prefixes(state_dict, ("module.",), own)
    for prefix in ("image_encoder.trunk.", "vision_encoder.backbone.", "trunk.", "backbone."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    if any(_HF_MARK.search(k) for k in sd):
        sd = convert_hf_sam2_trunk(sd)
    return sd


class Hiera(Backbone):
    """SAM 2 / 2.1 Hiera trunk (see the module docstring).

    Args (names and defaults of the official ``Hiera.__init__``; the registered builders set
    the SAM 2.1 configs, :data:`SAM21_HIERA_SETTINGS`):
        embed_dim: width ``C`` of stage 1 (t/s 96, b+ 112, l 144).
        num_heads: heads of stage 1 (t/s 1, b+/l 2).
        stages: blocks per stage (t ``(1, 2, 7, 2)``, s ``(1, 2, 11, 2)``, b+ ``(2, 3, 16, 3)``,
            l ``(2, 6, 36, 4)``).
        q_pool: number of stage transitions that pool (3: stages 2, 3, 4 halve the map).
        q_stride: pooling stride ``(2, 2)`` (square).
        dim_mul, head_mul: width / head multipliers at each stage change (2.0, 2.0), applied
            with ``int()`` at each step as the official code does.
        window_pos_embed_bkg_spatial_size: grid of the background position embedding
            ``pos_embed`` (b+ ``(14, 14)``, others ``(7, 7)``), bicubically resized to the
            stride-4 grid at every forward.
        window_spec: window side of each stage (``(8, 4, 14, 7)``; l ``(8, 4, 16, 8)``). The
            first block of a stage uses the previous stage's window (official "lag by one
            block"); ``window_spec[0]`` is also the side of ``pos_embed_window``.
        global_att_blocks: block indices (0-based, over all blocks) with global attention (t
            ``(5, 7, 9)``, s ``(7, 10, 13)``, b+ ``(12, 16, 20)``, l ``(23, 33, 43)``).
        drop_path_rate: stochastic depth, ``linspace(0, rate, depth)`` over the blocks (0 in the
            SAM 2.1 inference configs).
        mlp_ratio: MLP hidden width / block width (4).
        in_chans: 3.

    ``forward(x [B, 3, H, W]) -> [f1, f2, f3, f4]``, ``f_i [B, C * 2^(i-1), H / s_i, W / s_i]``
    at :attr:`strides` ``(4, 8, 16, 32)`` (NCHW views of the channels-last tokens, as the
    official trunk returns them). :attr:`channel_list` is the official reversed order (lowest
    resolution first), what :class:`~fusionseg.models.methods.mle_sam.fpn_neck.Sam2FpnNeck` takes.

    Stage access (for methods that run several streams or insert modules): :meth:`embed`
    (patch embedding + position embedding, ``[B, H/4, W/4, C]``), :attr:`blocks`,
    :attr:`stage_ends` (index of each stage's last block), :meth:`run_block` (honours
    :attr:`grad_checkpointing`).

    Departures from the official code: query pooling is functional (the official
    ``MaxPool2d`` modules hold no weights, so the keys are the same); bad settings and inputs
    raise ``ValueError`` (the official code asserts or fails inside ``view``); no
    ``weights_path`` loading in the constructor (use ``create_backbone(..., pretrained=)``).

    Raises:
        ValueError: inconsistent settings; at forward, an input that is not ``[B, in_chans, H,
            W]`` or whose sides are not multiples of :attr:`input_multiple` (32).
    """

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: Sequence[int] = (2, 3, 16, 3),
        q_pool: int = 3,
        q_stride: Sequence[int] = (2, 2),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: Sequence[int] = (14, 14),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        global_att_blocks: Sequence[int] = (12, 16, 20),
        drop_path_rate: float = 0.0,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        stages = [int(s) for s in stages]
        window_spec = [int(w) for w in window_spec]
        q_stride = tuple(int(s) for s in q_stride)
        if len(stages) != len(window_spec) or not stages or min(stages) < 1:
            raise ConfigError(f"stages {stages} and window_spec {window_spec} need one positive "
                             "entry per stage")
        if len(q_stride) != 2 or q_stride[0] != q_stride[1] or q_stride[0] < 1:
            raise ConfigError(f"q_stride must be a square stride (s, s), got {q_stride}")
        if not 0 <= q_pool <= len(stages) - 1:
            raise ConfigError(f"q_pool must be in 0..{len(stages) - 1}, got {q_pool}")
        depth = sum(stages)
        self.global_att_blocks = tuple(int(i) for i in global_att_blocks)
        if any(not 0 <= i < depth for i in self.global_att_blocks):
            raise ConfigError(f"global_att_blocks {self.global_att_blocks} outside the {depth} "
                             "blocks")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.stages, self.window_spec, self.q_stride = tuple(stages), tuple(window_spec), q_stride
        self.q_pool = int(q_pool)
        self.in_chans = int(in_chans)
        self.window_pos_embed_bkg_spatial_size = tuple(
            int(s) for s in window_pos_embed_bkg_spatial_size)
        #: index of the last block of each stage
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        #: blocks that pool (first block of stages 2 .. q_pool + 1)
        self.q_pool_blocks = [e + 1 for e in self.stage_ends[:-1]][: self.q_pool]

        dims, heads = [self.embed_dim], [self.num_heads]
        for _ in stages[1:]:
            dims.append(int(dims[-1] * dim_mul))
            heads.append(int(heads[-1] * head_mul))
        self._dims = dims
        self.strides = tuple(4 * q_stride[0] ** min(i, self.q_pool) for i in range(len(stages)))
        self.input_multiple = 4 * math.lcm(window_spec[0], q_stride[0] ** self.q_pool)

        self.patch_embed = HieraPatchEmbed(self.in_chans, self.embed_dim)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.embed_dim, *self.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, self.embed_dim, window_spec[0], window_spec[0]))
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList()
        stage_of = [s for s, n in enumerate(stages) for _ in range(n)]
        for i, s in enumerate(stage_of):
            first = i > 0 and stage_of[i - 1] != s
            window = window_spec[s - 1] if first else window_spec[s]
            if i in self.global_att_blocks:
                window = 0
            self.blocks.append(MultiScaleBlock(
                dim=dims[s - 1] if first else dims[s], dim_out=dims[s], num_heads=heads[s],
                window_size=window, q_stride=q_stride if i in self.q_pool_blocks else None,
                mlp_ratio=mlp_ratio, drop_path=dpr[i]))

    # ------------------------------------------------------------------ contract
    @property
    def out_channels(self) -> list[int]:
        """``[C, 2C, 4C, 8C]`` (stage widths, highest resolution first)."""
        return list(self._dims)

    @property
    def channel_list(self) -> list[int]:
        """Stage widths lowest resolution first (the official ``Hiera.channel_list``, the
        neck's ``backbone_channel_list``)."""
        return list(reversed(self._dims))

    def no_weight_decay(self) -> set[str]:
        """The two position embeddings."""
        return {"pos_embed", "pos_embed_window"}

    # ------------------------------------------------------------------ forward
    def get_pos_embed(self, h: int, w: int) -> Tensor:
        """Position embedding ``[1, h, w, C]`` of a stride-4 grid ``h x w``: the background
        ``pos_embed`` resized bicubically (``align_corners=False``) to ``h x w`` plus
        ``pos_embed_window`` tiled over it (official ``Hiera._get_pos_embed``; ``h`` and ``w``
        must be multiples of ``window_spec[0]``)."""
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        win = self.pos_embed_window
        pos = pos + win.tile([1, 1, h // win.shape[-2], w // win.shape[-1]])
        return pos.permute(0, 2, 3, 1)

    def embed(self, x: Tensor) -> Tensor:
        """Image -> channels-last stride-4 tokens ``[B, H/4, W/4, C]``: patch embedding plus
        :meth:`get_pos_embed`.

        Raises:
            ValueError: ``x`` not ``[B, in_chans, H, W]``, or sides not multiples of
                :attr:`input_multiple`.
        """
        self.check_input_size(x)
        x = self.patch_embed(x)
        return x + self.get_pos_embed(x.shape[1], x.shape[2])

    def run_block(self, blk: nn.Module, x: Tensor) -> Tensor:
        """``blk(x)`` (channels-last ``[B, h, w, C]`` tokens), recomputed in backward
        (``torch.utils.checkpoint``, non-reentrant) when :attr:`grad_checkpointing_active`
        (:attr:`grad_checkpointing` on, training mode, gradients enabled)."""
        return self.maybe_checkpoint(blk, x)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W] -> [f1..f4]`` NCHW at strides (4, 8, 16, 32) (see the class)."""
        x = self.embed(x)
        outs: list[Tensor] = []
        ends = set(self.stage_ends)
        for i, blk in enumerate(self.blocks):
            x = self.run_block(blk, x)
            if i in ends:
                outs.append(x.permute(0, 3, 1, 2))
        return outs


# --------------------------------------------------------------------------- Hugging Face
_HF_MARK = re.compile(r"(^patch_embed\.projection\.|\.layer_norm[12]\.|\.mlp\.proj_(in|out)\.)")
_HF_RULES: tuple[tuple[str, str], ...] = (
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^blocks\.(\d+)\.layer_norm([12])\.", r"blocks.\1.norm\2."),
    (r"^blocks\.(\d+)\.mlp\.proj_in\.", r"blocks.\1.mlp.layers.0."),
    (r"^blocks\.(\d+)\.mlp\.proj_out\.", r"blocks.\1.mlp.layers.1."),
)


def convert_hf_sam2_trunk(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face ``Sam2HieraDetModel`` state dict (prefix already stripped) to the
    official trunk keys: ``patch_embed.projection -> patch_embed.proj``, ``layer_norm1/2 ->
    norm1/2``, ``mlp.proj_in/proj_out -> mlp.layers.0/1``; ``pos_embed``, ``pos_embed_window``,
    ``attn.qkv``, ``attn.proj`` and ``proj`` keep their names (the HF conversion script
    ``convert_sam2_to_hf.py`` renames in the other direction). Unknown keys are kept (a strict
    load then reports them)."""
    return {rename_key(k, _HF_RULES): v for k, v in sd.items()}


# --------------------------------------------------------------------------- recognition
#: defaults of ``transformers`` 5 ``Sam2HieraDetConfig``, for keys a ``config.json`` leaves out
HIERA_CONFIG_DEFAULTS: dict[str, object] = dict(
    hidden_size=96, num_attention_heads=1, num_channels=3, patch_kernel_size=[7, 7],
    patch_stride=[4, 4], patch_padding=[3, 3], query_stride=[2, 2],
    window_positional_embedding_background_size=[7, 7], num_query_pool_stages=3,
    blocks_per_stage=[1, 2, 7, 2], embed_dim_per_stage=[96, 192, 384, 768],
    num_attention_heads_per_stage=[1, 2, 4, 8], window_size_per_stage=[8, 4, 14, 7],
    global_attention_blocks=[5, 7, 9], mlp_ratio=4.0)
#: the ``transformers`` models whose Hiera trunk config sits in a sub-config
HF_NESTED: dict[str, tuple[str, str]] = {
    "sam2": ("vision_config", "sam2_vision_model"),
    "sam2_video": ("vision_config", "sam2_vision_model"),
    "sam2_vision_model": ("backbone_config", "sam2_hiera_det_model"),
}


def recognise_hf_config(model_type: str, c: Mapping[str, object]) -> DetectedBackbone:
    """Our Hiera for a Hugging Face ``sam2_hiera_det_model`` config (the trunk of ``sam2`` /
    ``sam2_video`` / ``sam2_vision_model`` configs: ``hidden_size``, ``num_attention_heads``,
    ``blocks_per_stage``, ``window_size_per_stage``, ``global_attention_blocks``,
    ``window_positional_embedding_background_size``, ...; completed with
    :data:`HIERA_CONFIG_DEFAULTS`).

    Raises:
        CheckpointError: widths or heads that do not double per stage, or another patch
            embedding than 7 x 7, stride 4, padding 3.
    """
    dim, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    stages = [int(n) for n in c["blocks_per_stage"]]
    q_pool = int(c["num_query_pool_stages"])
    dims = [dim * 2**i for i in range(len(stages))]
    hds = [heads * 2**i for i in range(len(stages))]
    if [int(d) for d in c["embed_dim_per_stage"]] != dims or [
            int(h) for h in c["num_attention_heads_per_stage"]] != hds:
        raise CheckpointError("SAM 2 Hiera config: widths and heads must double per stage from "
                              f"hidden_size / num_attention_heads ({dims} / {hds}), got "
                              f"{c['embed_dim_per_stage']} / {c['num_attention_heads_per_stage']}")
    if (as_pair(c["patch_kernel_size"]), as_pair(c["patch_stride"]),
            as_pair(c["patch_padding"])) != ((7, 7), (4, 4), (3, 3)):
        raise CheckpointError("SAM 2 Hiera config: the patch embedding must be 7x7, stride 4, "
                              "padding 3")
    found = dict(embed_dim=dim, num_heads=heads, stages=stages, q_pool=q_pool,
                 q_stride=as_pair(c["query_stride"]), dim_mul=2.0, head_mul=2.0,
                 window_pos_embed_bkg_spatial_size=as_pair(
                     c["window_positional_embedding_background_size"]),
                 window_spec=[int(w) for w in c["window_size_per_stage"]],
                 global_att_blocks=[int(b) for b in c["global_attention_blocks"]],
                 mlp_ratio=float(c["mlp_ratio"]), in_chans=c["num_channels"])
    return FAMILY.match(found, "hugging face", "config.json")


def recognise_state_dict(sd: Mapping[str, Tensor]) -> DetectedBackbone | None:
    """Our Hiera for the trunk of an official ``sam2.1_hiera_*.pt`` (``image_encoder.trunk.*``),
    of Hugging Face ``Sam2Model`` / ``Sam2VisionModel`` files, or a bare trunk; ``None`` for
    other state dicts (a segmentor's ``backbone.*`` next to its head is no encoder file).

    Read from the weights: stages, width, background grid, first window, MLP ratio. The other
    window sizes, the global blocks and the heads are not stored, so the trunk must be one of
    the published SAM 2.1 settings.

    Raises:
        CheckpointError: a trunk that is none of ``sam2.1_hiera_{t,s,b+,l}``.
    """
    top = top_level_names(sd)
    for prefix, others in (("image_encoder.trunk.", None), ("vision_encoder.backbone.", None),
                           ("backbone.", {"neck"}), ("trunk.", {"neck"}), ("", set())):
        if f"{prefix}pos_embed_window" not in sd:
            continue
        if prefix and others is not None and not (top - {prefix.split(".")[0]}) <= others:
            continue  # e.g. a segmentor's backbone.* next to its head: not an encoder file
        t = under_prefix(sd, prefix)
        hf = any(".layer_norm1." in k or k.startswith("patch_embed.projection.") for k in t)
        fmt, enc = ("hugging face", convert_hf_sam2_trunk(t)) if hf else ("official", t)
        break
    else:
        return None
    dim = int(enc["patch_embed.proj.weight"].shape[0])
    depth = count_indices(enc, r"^blocks\.(\d+)\.norm1\.weight$")
    starts = [0] + [i for i in range(depth) if f"blocks.{i}.proj.weight" in enc]
    stages = [b - a for a, b in zip(starts, starts[1:] + [depth], strict=True)]
    bkg = tuple(int(s) for s in enc["pos_embed"].shape[-2:])
    win0 = int(enc["pos_embed_window"].shape[-1])
    mlp = enc["blocks.0.mlp.layers.0.weight"].shape[0] / dim
    table = FAMILY.published()
    for name, kw in table.items():
        if (kw["embed_dim"], list(kw["stages"]), tuple(kw["window_pos_embed_bkg_spatial_size"]),
                int(kw["window_spec"][0]), float(kw["mlp_ratio"])) == (
                dim, stages, bkg, win0, float(mlp)):
            return DetectedBackbone(name, {}, FAMILY.name, "state dict", fmt)
    raise CheckpointError(f"a SAM 2 Hiera trunk of width {dim}, stages {stages}, background grid "
                          f"{list(bkg)} is none of {', '.join(table)}; its window sizes, global-"
                          "attention blocks and heads are not stored in the weights: convert its "
                          "Hugging Face folder (config.json) or pass --backbone")


# --------------------------------------------------------------------------- registration
_SAM2 = "facebookresearch/sam2, SAM 2.1 checkpoints (092824)"

#: the official SAM 2.1 checkpoints (whole models: MLE-SAM loads the trunk, neck and decoder
#: from the same file), also on the hub as the official files
PRETRAINED: tuple[PretrainedWeights, ...] = tuple(
    PretrainedWeights(
        f"sam2.1_hiera_{long_}", f"sam2.1_hiera_{short}", ("mle_sam",), _SAM2,
        f"sam2.1_hiera_{long_}.pt",
        f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_{long_}.pt", mb,
        hf_repo=f"facebook/sam2.1-hiera-{hub}", hf_filename=f"sam2.1_hiera_{long_}.pt",
        hf_format="official")
    for short, long_, hub, mb in (("t", "tiny", "tiny", 156), ("s", "small", "small", 184),
                                  ("b+", "base_plus", "base-plus", 323),
                                  ("l", "large", "large", 898)))


register_variants(Hiera, SAM21_HIERA_SETTINGS,
                  "Build the {name} trunk (official SAM 2.1 config, overridable by keyword).",
                  tiny=HIERA_TINY)

FAMILY = register_family(BackboneFamily(
    "sam2_hiera", Hiera, SAM21_HIERA_SETTINGS, recognise_state_dict=recognise_state_dict,
    hf_configs={"sam2_hiera_det_model": HIERA_CONFIG_DEFAULTS}, hf_nested=HF_NESTED,
    recognise_hf_config=recognise_hf_config))
register_pretrained(*PRETRAINED)
