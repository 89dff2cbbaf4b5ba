"""SegFormer Mix Transformer (MiT-B0 .. MiT-B5) encoder.

Our own compact implementation of the hierarchical encoder from

    Enze Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
    Transformers", NeurIPS 2021 (arXiv 2105.15203).

The module and parameter names follow the official NVlabs code
(``NVlabs/SegFormer``, ``mmseg/models/backbones/mix_transformer.py``) exactly, so the
official ImageNet-1k files ``mit_b0.pth .. mit_b5.pth`` load strictly (after
:func:`checkpoint_filter_fn` drops their classifier ``head.weight`` / ``head.bias``)::

    patch_embed{1..4}.proj            Conv2d (k7 s4 p3 for stage 1, k3 s2 p1 after)
    patch_embed{1..4}.norm            LayerNorm (eps 1e-5, as in the official code)
    block{i}.{j}.norm1                LayerNorm (eps 1e-6)
    block{i}.{j}.attn.q / .attn.kv    Linear (qkv bias)
    block{i}.{j}.attn.sr / .attn.norm Conv2d(k=s=sr_ratio) + LayerNorm (eps 1e-5), ratio > 1 only
    block{i}.{j}.attn.proj            Linear
    block{i}.{j}.norm2                LayerNorm (eps 1e-6)
    block{i}.{j}.mlp.fc1 / .mlp.dwconv.dwconv / .mlp.fc2
    norm{1..4}                        LayerNorm (eps 1e-6)

Hugging Face ``nvidia/mit-b*`` files (``SegformerForImageClassification``: ``segformer.encoder.*``
and a ``classifier``; ``SegformerModel``: ``encoder.*``; ``SegformerForSemanticSegmentation``:
``segformer.*`` and a ``decode_head``) and the module names ``transformers`` 5 holds in memory
(``stages.{i}.*``) convert through :func:`convert_hf_segformer`, called by
:func:`checkpoint_filter_fn`.

The file registers the builders ``mit_b0 .. mit_b5``, the family ``mit`` (its files and
``segformer`` configs recognised by :func:`recognise_state_dict` / :func:`recognise_hf_config`
for ``fusionseg weights convert``) and the NVlabs ImageNet files of the catalogue
(:data:`PRETRAINED`).

Differences from the official code (none change the weights or, for inputs whose sides are
multiples of 32, the outputs beyond float rounding):

* attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` (no explicit
  ``N x N'`` attention matrix is kept for backward on CPU/GPU kernels that support it);
* the token map is never made contiguous needlessly; the depthwise convolution reads the
  ``[B, N, C]`` tokens as a channels-last ``[B, C, H, W]`` view;
* arbitrary input sizes work: every stage has ``ceil(H / stride) x ceil(W / stride)`` tokens;
  the spatial-reduction convolution floors like the official one, and only when a stage map is
  smaller than its reduction ratio (tiny inputs, where the official code fails) the map is
  zero-padded at the bottom/right up to the ratio so that at least one key/value token exists.

The class meets the :class:`~fusionseg.models.backbones.base.TransformerBackbone` contract:
per-stage access for methods that run several modality streams through the same blocks and
insert modules between the attention and MLP residuals (e.g. StitchFusion) without copying
(:meth:`MixVisionTransformer.embed`, :meth:`blocks_of`, :meth:`norm_of`, :meth:`finish_stage`,
:meth:`tokens_to_map`; each :class:`Block` exposes ``norm1, attn, drop_path, norm2, mlp``).
Stage indices in these methods are 0-based (``0..3``), while the key names are 1-based.
``input_multiple`` is 1: any input size works, as in the official code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CheckpointError, ConfigError
from ..catalogue import PretrainedWeights, register_pretrained
from ..layers import DropPath
from .base import TransformerBackbone, register_variants, strip_prefixes
from .formats import (
    BackboneFamily,
    DetectedBackbone,
    count_indices,
    divisor_heads,
    register_family,
    top_level_names,
)

__all__ = [
    "DropPath",
    "OverlapPatchEmbed",
    "Attention",
    "DWConv",
    "MixFFN",
    "Block",
    "MixVisionTransformer",
    "MIT_SETTINGS",
    "MIT_TINY",
    "PRETRAINED",
    "SEGFORMER_CONFIG_DEFAULTS",
    "checkpoint_filter_fn",
    "convert_hf_segformer",
    "is_hf_segformer",
    "recognise_hf_config",
    "recognise_state_dict",
]

# Official settings of the SegFormer paper (Table 6) / NVlabs ``mit_b0 .. mit_b5`` classes.
MIT_SETTINGS: dict[str, dict] = {
    "mit_b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "mit_b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    "mit_b2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
    "mit_b3": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    "mit_b4": dict(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
    "mit_b5": dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3)),
}
for _cfg in MIT_SETTINGS.values():
    _cfg.update(num_heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1), mlp_ratio=4)
del _cfg

_LN_EPS = 1e-6  # block norms and stage norms (official ``partial(nn.LayerNorm, eps=1e-6)``)


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: ``Conv2d(k, stride, padding=k // 2)`` then LayerNorm.

    Input ``x``: ``[B, C_in, H, W]``. Returns ``(tokens [B, H' * W', C], H', W')`` with
    ``H' = ceil(H / stride)`` for the kernel/stride pairs used by MiT (7/4 and 3/2).
    Keys: ``proj`` (Conv2d), ``norm`` (LayerNorm, default eps 1e-5 as in the official code).
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=patch_size // 2
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        _, _, h, w = x.shape
        # flatten(2).transpose(1, 2) is a view when the conv output is NCHW-contiguous;
        # LayerNorm then produces a contiguous [B, N, C] tensor.
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x, h, w


class Attention(nn.Module):
    """Efficient self-attention with spatial reduction (SegFormer Sec. 3.1).

    Queries come from all ``N = H * W`` tokens; keys and values from the token map reduced by a
    strided ``Conv2d(k = s = sr_ratio)`` followed by LayerNorm when ``sr_ratio > 1``.

    ``forward(x [B, N, C], H, W) -> [B, N, C]``. Keys: ``q``, ``kv`` (one Linear giving k then
    v), ``sr`` and ``norm`` (only when ``sr_ratio > 1``), ``proj``.
    """

    def __init__(
        self, dim: int, num_heads: int = 1, sr_ratio: int = 1, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ConfigError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def _reduce(self, x: Tensor, h: int, w: int) -> Tensor:
        """Spatial reduction of tokens ``[B, H*W, C]`` -> ``[B, N', C]`` (LayerNorm applied)."""
        b, _, c = x.shape
        r = self.sr_ratio
        # [B, N, C] -> channels-last [B, C, H, W] view (no copy).
        x_ = x.transpose(1, 2).reshape(b, c, h, w)
        if h < r or w < r:  # tiny maps: pad so the strided conv yields >= 1 token
            x_ = F.pad(x_, (0, max(r - w, 0), 0, max(r - h, 0)))
        x_ = self.sr(x_)
        return self.norm(x_.flatten(2).transpose(1, 2))

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        b, n, c = x.shape
        nh, hd = self.num_heads, self.head_dim
        q = self.q(x).view(b, n, nh, hd).transpose(1, 2)  # [B, nh, N, hd]
        src = self._reduce(x, H, W) if self.sr_ratio > 1 else x
        kv = self.kv(src).view(b, src.shape[1], 2, nh, hd).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # [B, nh, N', hd] each
        out = F.scaled_dot_product_attention(q, k, v)  # scale hd ** -0.5 as official
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class DWConv(nn.Module):
    """Depthwise 3x3 convolution on tokens. ``forward(x [B, N, C], H, W) -> [B, N, C]``.

    Key: ``dwconv`` (``Conv2d(C, C, 3, 1, 1, groups=C)``), as in the official ``DWConv``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        b, n, c = x.shape
        # Channels-last view of the tokens: no copy; the conv keeps channels-last.
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, H, W))
        return x.flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Mix-FFN (SegFormer Sec. 3.1): ``fc2(GELU(DWConv3x3(fc1(x))))``.

    ``forward(x [B, N, C], H, W) -> [B, N, C]``; hidden width ``hidden_features``
    (``mlp_ratio * C``). Keys: ``fc1``, ``dwconv.dwconv``, ``fc2`` (official class ``Mlp``).
    """

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DWConv(hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), H, W)))


class Block(nn.Module):
    """MiT transformer block.

    ``x = x + drop_path(attn(norm1(x), H, W)); x = x + drop_path(mlp(norm2(x), H, W))``.

    ``forward(x [B, N, C], H, W) -> [B, N, C]``. The parts are public attributes (``norm1``,
    ``attn``, ``drop_path``, ``norm2``, ``mlp``) so that methods can insert modules between the
    two residuals; :meth:`attn_residual` and :meth:`mlp_residual` return the two branches.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        sr_ratio: int = 1,
        drop_path: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads=num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def attn_residual(self, x: Tensor, H: int, W: int) -> Tensor:
        """The attention branch ``drop_path(attn(norm1(x)))``, ``[B, N, C]``."""
        return self.drop_path(self.attn(self.norm1(x), H, W))

    def mlp_residual(self, x: Tensor, H: int, W: int) -> Tensor:
        """The Mix-FFN branch ``drop_path(mlp(norm2(x)))``, ``[B, N, C]``."""
        return self.drop_path(self.mlp(self.norm2(x), H, W))

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        x = x + self.attn_residual(x, H, W)
        return x + self.mlp_residual(x, H, W)


#: the ImageNet classifier of the official ``mit_b*.pth`` files (not part of the encoder)
CLASSIFIER_KEYS: tuple[str, ...] = ("head.weight", "head.bias")


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor],
                         model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official MiT files -> our keys (which are the official names).

    * ``module.`` (DDP) prefixes are stripped;
    * a whole mmseg / SegFormer segmentation checkpoint (``backbone.*`` and
      ``decode_head.*`` keys) gives its ``backbone.*`` keys, prefix stripped;
    * the ImageNet classifier ``head.weight`` / ``head.bias`` of ``mit_b*.pth`` is dropped;
    * Hugging Face SegFormer files (``nvidia/mit-b*``, any ``Segformer*`` model, hub or
      in-memory names) are renamed by :func:`convert_hf_segformer` (their classifier or
      decode head dropped).

    Args:
        state_dict: the file's tensors.
        model: the :class:`MixVisionTransformer` they are for (its own keys keep their
            prefixes); ``None``: every prefix above is stripped.

    Returns:
        The tensors under our keys (not copied). ``model``'s own state dict comes back
        unchanged.

    Raises:
        ValueError: a Hugging Face key projection without its value projection (or the
            reverse).
    """
    own = list(model.state_dict()) if model is not None else []
    sd = strip_prefixes(state_dict, ("module.",), own)
    if is_hf_segformer(sd):
        return convert_hf_segformer(sd)
    if any(k.startswith("backbone.") for k in sd) and not any(
        k.startswith("backbone.") for k in own
    ):
        sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    for key in CLASSIFIER_KEYS:
        if key not in own:
            sd.pop(key, None)
    return sd


class MixVisionTransformer(TransformerBackbone):
    """Hierarchical MiT encoder (SegFormer, Xie et al. NeurIPS 2021).

    Args:
        embed_dims: channels of the 4 stages, e.g. ``(64, 128, 320, 512)``.
        depths: number of blocks per stage.
        num_heads: attention heads per stage (official ``(1, 2, 5, 8)``).
        sr_ratios: spatial-reduction ratios per stage (official ``(8, 4, 2, 1)``).
        mlp_ratio: Mix-FFN hidden width / dim (4).
        drop_path_rate: stochastic depth rises linearly from 0 to this over all blocks (0.1).
        in_chans: input channels (3).
        qkv_bias: bias in ``q`` / ``kv`` (True).

    ``forward(x [B, in_chans, H, W]) -> list`` of 4 maps ``[B, C_i, ceil(H/s_i), ceil(W/s_i)]``
    at strides ``s = 4, 8, 16, 32``.

    Checkpoints: the official ``mit_b*.pth`` ImageNet files hold an extra classifier
    ``head.weight`` / ``head.bias``, which :func:`checkpoint_filter_fn` drops; everything else
    loads strictly.
    """

    #: the ImageNet classifier of the official ``mit_b*.pth`` files (not part of the encoder)
    CLASSIFIER_KEYS = CLASSIFIER_KEYS
    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)
    num_stages = 4
    strides = (4, 8, 16, 32)
    input_multiple = 1

    def __init__(
        self,
        embed_dims: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        sr_ratios: Sequence[int],
        mlp_ratio: float = 4,
        drop_path_rate: float = 0.1,
        in_chans: int = 3,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        for nm, seq in (
            ("embed_dims", embed_dims),
            ("depths", depths),
            ("num_heads", num_heads),
            ("sr_ratios", sr_ratios),
        ):
            if len(seq) != 4:
                raise ConfigError(f"{nm} must have 4 entries (one per stage), got {list(seq)}")
        self.embed_dims = [int(d) for d in embed_dims]
        self.depths = [int(d) for d in depths]
        self.num_heads = [int(h) for h in num_heads]
        self.sr_ratios = [int(r) for r in sr_ratios]
        self.in_chans = int(in_chans)
        dpr = torch.linspace(0, drop_path_rate, sum(self.depths), device="cpu").tolist()
        cur = 0
        for i in range(4):
            dim = self.embed_dims[i]
            self.add_module(
                f"patch_embed{i + 1}",
                OverlapPatchEmbed(
                    in_chans if i == 0 else self.embed_dims[i - 1],
                    dim,
                    patch_size=7 if i == 0 else 3,
                    stride=4 if i == 0 else 2,
                ),
            )
            blocks = nn.ModuleList(
                Block(
                    dim,
                    self.num_heads[i],
                    mlp_ratio=mlp_ratio,
                    sr_ratio=self.sr_ratios[i],
                    drop_path=dpr[cur + j],
                    qkv_bias=qkv_bias,
                )
                for j in range(self.depths[i])
            )
            self.add_module(f"block{i + 1}", blocks)
            self.add_module(f"norm{i + 1}", nn.LayerNorm(dim, eps=_LN_EPS))
            cur += self.depths[i]
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """Official initialisation: trunc-normal(0.02) linears, fan-out normal convs."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ backbone contract
    @property
    def out_channels(self) -> list[int]:
        """Channels of the 4 output maps (``embed_dims``)."""
        return list(self.embed_dims)

    def patch_embed_of(self, stage_idx: int) -> OverlapPatchEmbed:
        """The patch embedding of stage ``stage_idx`` (0-based), i.e. ``patch_embed{i+1}``."""
        self._check_stage(stage_idx)
        return getattr(self, f"patch_embed{stage_idx + 1}")

    def blocks_of(self, stage_idx: int) -> nn.ModuleList:
        """The blocks of stage ``stage_idx`` (0-based), i.e. ``block{i+1}`` (not a copy)."""
        self._check_stage(stage_idx)
        return getattr(self, f"block{stage_idx + 1}")

    def norm_of(self, stage_idx: int) -> nn.LayerNorm:
        """The final LayerNorm of stage ``stage_idx`` (0-based), i.e. ``norm{i+1}``."""
        self._check_stage(stage_idx)
        return getattr(self, f"norm{stage_idx + 1}")

    def embed(self, stage_idx: int, carry: Tensor) -> tuple[Tensor, int, int]:
        """Patch-embed the input of stage ``stage_idx`` (0-based).

        ``carry``: ``[B, C_in, H, W]`` (the image for stage 0, the previous stage's map after).
        Returns ``(tokens [B, H'*W', C_i], H', W')``.
        """
        return self.patch_embed_of(stage_idx)(carry)

    def finish_stage(self, stage_idx: int, tokens: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Stage norm; returns ``(normalised tokens [B, h*w, C_i], their map [B, C_i, h, w])``.

        The map is the stage output and the next stage's input. The official code calls
        ``.contiguous()`` on it (NCHW); we keep the channels-last view, which the next stage's
        convolution and the decode head accept as is.
        """
        feat = self.norm_of(stage_idx)(tokens)
        return feat, self.tokens_to_map(feat, h, w)

    def forward_stage(self, stage_idx: int, carry: Tensor) -> tuple[Tensor, Tensor]:
        """Run one whole stage: embed, blocks, norm. ``[B, C_in, H, W] -> (map, map)``."""
        return super().forward_stage(stage_idx, carry)


# --------------------------------------------------------------------------- Hugging Face
# transformers' SegFormer (``models/segformer/modeling_segformer.py``): the hub files keep the
# names of transformers 4 (``encoder.block.{i}.{j}.attention.self.query`` ...), transformers 5
# renames them in memory (``stages.{i}.blocks.{j}.attention.q_proj`` ...; its
# ``conversion_mapping.py``). Both map to the NVlabs names; stage indices are 0-based there.
_HF_SEGFORMER_MARK = re.compile(
    r"^(?:segformer\.)?(?:encoder\.(?:patch_embeddings|block|layer_norm)\.\d|"
    r"stages\.\d+\.(?:patch_embeddings|blocks|layer_norm)\.)"
)
_HF_SEGFORMER_BLOCK = (
    (r"(?:layer_norm_1|layernorm_before)\.", "norm1."),
    (r"(?:layer_norm_2|layernorm_after)\.", "norm2."),
    (r"attention\.(?:self\.query|q_proj)\.", "attn.q."),
    (r"attention\.(?:self\.sr|sequence_reduction\.sequence_reduction)\.", "attn.sr."),
    (r"attention\.(?:self\.layer_norm|sequence_reduction\.layer_norm)\.", "attn.norm."),
    (r"attention\.(?:output\.dense|o_proj)\.", "attn.proj."),
    (r"mlp\.(?:dense1|fc1)\.", "mlp.fc1."),
    (r"mlp\.dwconv\.dwconv\.", "mlp.dwconv.dwconv."),
    (r"mlp\.(?:dense2|fc2)\.", "mlp.fc2."),
)
_HF_SEGFORMER_KV = re.compile(r"^attention\.(?:self\.(key|value)|(k|v)_proj)\.(weight|bias)$")
_HF_SEGFORMER_KEY = re.compile(
    r"^(?:encoder\.patch_embeddings\.(?P<pe>\d+)|stages\.(?P<pe5>\d+)\.patch_embeddings)\."
    r"(?P<pe_rest>proj|layer_norm)\.(?P<pe_p>weight|bias)$"
    r"|^(?:encoder\.block\.(?P<bs>\d+)|stages\.(?P<bs5>\d+)\.blocks)\.(?P<bj>\d+)\.(?P<b_rest>.+)$"
    r"|^(?:encoder\.layer_norm\.(?P<ln>\d+)|stages\.(?P<ln5>\d+)\.layer_norm)\.(?P<ln_p>weight|bias)$"
)


def is_hf_segformer(state_dict: Mapping[str, Tensor]) -> bool:
    """True when ``state_dict`` holds Hugging Face SegFormer encoder keys (hub names
    ``[segformer.]encoder.{patch_embeddings, block, layer_norm}.*`` or the in-memory names of
    ``transformers`` 5, ``[segformer.]stages.{i}.*``)."""
    return any(_HF_SEGFORMER_MARK.match(k) for k in state_dict)


def convert_hf_segformer(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face SegFormer state dict to the NVlabs MiT names (ours).

    Accepts ``SegformerModel`` (no prefix), ``SegformerForImageClassification`` /
    ``SegformerForSemanticSegmentation`` (``segformer.`` prefix; their ``classifier.*`` /
    ``decode_head.*`` keys are dropped), each with the hub names or those of ``transformers`` 5
    in memory. Stage ``i`` (0-based there) becomes ``patch_embed{i+1}`` / ``block{i+1}`` /
    ``norm{i+1}``::

        encoder.patch_embeddings.{i}.proj / .layer_norm     -> patch_embed{i+1}.proj / .norm
        encoder.block.{i}.{j}.layer_norm_1 / layer_norm_2   -> block{i+1}.{j}.norm1 / norm2
          .attention.self.query                              -> .attn.q
          .attention.self.key + .attention.self.value        -> .attn.kv  (rows: key, then value)
          .attention.self.sr / .attention.self.layer_norm    -> .attn.sr / .attn.norm
          .attention.output.dense                            -> .attn.proj
          .mlp.dense1 / .mlp.dwconv.dwconv / .mlp.dense2     -> .mlp.fc1 / .mlp.dwconv.dwconv / .mlp.fc2
        encoder.layer_norm.{i}                              -> norm{i+1}

    (``transformers`` 5: ``stages.{i}.patch_embeddings``, ``stages.{i}.blocks.{j}`` with
    ``layernorm_before/after``, ``attention.{q,k,v,o}_proj``,
    ``attention.sequence_reduction.{sequence_reduction, layer_norm}``, ``mlp.fc1/fc2``,
    ``stages.{i}.layer_norm``.) The key/value concatenation follows the official ``kv``
    projection, whose output is split as ``k, v = kv[0], kv[1]`` (``mix_transformer.py``).
    Keys it does not know are kept (a strict load then reports them).

    Raises:
        ValueError: a key without its value projection (or the reverse).
    """
    sd = {k[len("segformer."):] if k.startswith("segformer.") else k: v
          for k, v in state_dict.items()}
    out: dict[str, Tensor] = {}
    kv: dict[str, dict[str, Tensor]] = {}
    for key, v in sd.items():
        if key.startswith(("classifier.", "decode_head.")):
            continue
        m = _HF_SEGFORMER_KEY.match(key)
        if m is None:
            out[key] = v
            continue
        if m.group("pe_rest"):
            i = int(m.group("pe") or m.group("pe5")) + 1
            part = "proj" if m.group("pe_rest") == "proj" else "norm"
            out[f"patch_embed{i}.{part}.{m.group('pe_p')}"] = v
        elif m.group("ln_p"):
            i = int(m.group("ln") or m.group("ln5")) + 1
            out[f"norm{i}.{m.group('ln_p')}"] = v
        else:
            prefix = f"block{int(m.group('bs') or m.group('bs5')) + 1}.{m.group('bj')}."
            rest = m.group("b_rest")
            mkv = _HF_SEGFORMER_KV.match(rest)
            if mkv:
                which = (mkv.group(1) or mkv.group(2))[0]
                kv.setdefault(f"{prefix}attn.kv.{mkv.group(3)}", {})[which] = v
                continue
            for pat, rep in _HF_SEGFORMER_BLOCK:
                if re.match(pat, rest):
                    rest = re.sub(pat, rep, rest, count=1)
                    break
            out[prefix + rest] = v
    for key, parts in kv.items():
        if set(parts) != {"k", "v"}:
            raise ValueError(f"Hugging Face SegFormer file: {key} needs both the key and the value "
                             f"projection, found only {sorted(parts)}")
        out[key] = torch.cat([parts["k"], parts["v"]], dim=0)
    return out


# --------------------------------------------------------------------------- recognition
#: defaults of ``transformers`` 5 ``SegformerConfig``, for keys a ``config.json`` leaves out
#: (older hub files store only the values that differ from them)
SEGFORMER_CONFIG_DEFAULTS: dict[str, object] = dict(
    num_channels=3, num_encoder_blocks=4, depths=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1],
    hidden_sizes=[32, 64, 160, 256], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
    num_attention_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4])


def recognise_hf_config(model_type: str, c: Mapping[str, object]) -> DetectedBackbone:
    """Our MiT for a Hugging Face ``segformer`` config (``hidden_sizes``, ``depths``,
    ``num_attention_heads``, ``sr_ratios``, ``mlp_ratios``; completed with
    :data:`SEGFORMER_CONFIG_DEFAULTS`).

    Raises:
        CheckpointError: other patch sizes, strides or stage counts than MiT's, or MLP ratios
            that differ between stages.
    """
    if list(c["patch_sizes"]) != [7, 3, 3, 3] or list(c["strides"]) != [4, 2, 2, 2] or (
            int(c["num_encoder_blocks"]) != 4):
        raise CheckpointError("SegFormer config: MiT has 4 stages with patch sizes [7, 3, 3, 3] "
                              f"and strides [4, 2, 2, 2], got {c['patch_sizes']} / "
                              f"{c['strides']}")
    ratios = {float(r) for r in c["mlp_ratios"]}
    if len(ratios) != 1:
        raise CheckpointError("SegFormer config: one MLP ratio for all stages, got "
                              f"{c['mlp_ratios']}")
    found = dict(embed_dims=c["hidden_sizes"], depths=c["depths"],
                 num_heads=c["num_attention_heads"], sr_ratios=c["sr_ratios"],
                 mlp_ratio=ratios.pop(), in_chans=c["num_channels"])
    return FAMILY.match(found, "hugging face", "config.json")


def recognise_state_dict(sd: Mapping[str, Tensor]) -> DetectedBackbone | None:
    """Our MiT for an NVlabs ``mit_b*.pth`` or Hugging Face SegFormer state dict (not a whole
    segmentation model of ours), or ``None``.

    Read from the weights: widths, depths, spatial-reduction ratios, MLP ratio, input
    channels. The heads are not stored: those of the published model with these widths, else
    ``C // 32`` per stage (as MiT-B0).
    """
    top = top_level_names(sd)
    if is_hf_segformer(sd) and top <= {"segformer", "encoder", "stages", "classifier",
                                       "decode_head"}:
        fmt, enc = "hugging face", convert_hf_segformer(sd)
    elif "patch_embed1.proj.weight" in sd and "block1.0.attn.q.weight" in sd:
        fmt, enc = "official", {k: v for k, v in sd.items() if not k.startswith("head.")}
    else:
        return None
    dims = [int(enc[f"patch_embed{i}.proj.weight"].shape[0]) for i in range(1, 5)]
    depths = [count_indices(enc, rf"^block{i}\.(\d+)\.norm1\.weight$") for i in range(1, 5)]
    srs = [int(enc[f"block{i}.0.attn.sr.weight"].shape[-1])
           if f"block{i}.0.attn.sr.weight" in enc else 1 for i in range(1, 5)]
    mlp = enc["block1.0.mlp.fc1.weight"].shape[0] / dims[0]
    std = next((kw["num_heads"] for kw in FAMILY.published().values()
                if list(kw["embed_dims"]) == dims), None)
    heads = list(std) if std is not None else [divisor_heads(c, c // 32) for c in dims]
    found = dict(embed_dims=dims, depths=depths, num_heads=heads, sr_ratios=srs,
                 mlp_ratio=float(mlp), in_chans=int(enc["patch_embed1.proj.weight"].shape[1]))
    return FAMILY.match(found, fmt, "state dict")


# --------------------------------------------------------------------------- registration
#: tiny constructor overrides used by the contract tests (a few thousand parameters)
MIT_TINY = dict(embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))

_NVLABS = "NVlabs/SegFormer, ImageNet-1k (README: Google Drive / OneDrive)"
_MIT_MB = (14.3, 54.7, 98.8, 178.3, 245.4, 327.8)  # encoder + 1000-way classifier, fp32

#: the NVlabs ImageNet-1k files (no direct link: Google Drive / OneDrive), fetched from the
#: ``transformers`` conversions on the hub and renamed back by :func:`checkpoint_filter_fn`
PRETRAINED: tuple[PretrainedWeights, ...] = tuple(
    PretrainedWeights(
        f"mit_b{i}", f"mit_b{i}", ("segformer", "sum_fusion", "stitchfusion"), _NVLABS,
        f"mit_b{i}.pth", None, mb, hf_repo=f"nvidia/mit-b{i}", hf_filename="pytorch_model.bin",
        hf_format="transformers")
    for i, mb in enumerate(_MIT_MB))


def _decoder_dim(name: str) -> dict[str, int]:
    """The SegFormer decode-head width used with each MiT (paper / official configs)."""
    return {"decoder_dim": 256 if name in ("mit_b0", "mit_b1") else 512}


# drop_path_rate: the constructor's default 0.1, as in the official configs
register_variants(MixVisionTransformer, MIT_SETTINGS,
                  "Build {name} (official settings, overridable by keyword).", tiny=MIT_TINY,
                  info=_decoder_dim)

FAMILY = register_family(BackboneFamily(
    "mit", MixVisionTransformer, MIT_SETTINGS, recognise_state_dict=recognise_state_dict,
    hf_configs={"segformer": SEGFORMER_CONFIG_DEFAULTS}, recognise_hf_config=recognise_hf_config))
register_pretrained(*PRETRAINED)
