"""SAM 2 (and SAM v1) mask decoder as a prompt-free semantic segmentation head.

Method: the two-way-transformer mask decoder of

    Alexander Kirillov et al., "Segment Anything", ICCV 2023 (Sec. 3, App. A), as used with
    high-resolution features in Nikhila Ravi et al., "SAM 2: Segment Anything in Images and
    Videos", ICLR 2025 (arXiv 2408.00714), SAM 2.1 checkpoints.

Our own implementation written from the official code (``facebookresearch/sam2``:
``sam2/modeling/sam/mask_decoder.py``, ``sam2/modeling/sam/transformer.py``,
``sam2/modeling/sam/prompt_encoder.py``, ``sam2/modeling/position_encoding.py``
(``PositionEmbeddingRandom``), ``sam2/modeling/sam2_utils.py`` (``MLP``, ``LayerNorm2d``),
``sam2/modeling/sam2_base.py`` / ``sam2/sam2_image_predictor.py`` (``conv_s0`` / ``conv_s1`` on
the stride-4 / stride-8 FPN levels, ``no_mem_embed`` added to the stride-16 embedding when
``directly_add_no_mem_embed``) and the ``sam2/configs/sam2.1/*.yaml`` settings: width 256,
TwoWayTransformer depth 2, 8 heads, MLP 2048, attention downsample rate 2,
``use_high_res_features_in_sam: true``).

Submodule and parameter names are those of the official ``sam_mask_decoder.*`` keys (with the
prefix removed) wherever the module exists here::

    transformer.layers.{i}.{self_attn,cross_attn_token_to_image,cross_attn_image_to_token}
        .{q,k,v,out}_proj, .norm{1..4}, .mlp.layers.{0,1}
    transformer.final_attn_token_to_image.*, transformer.norm_final_attn
    iou_token [1, C], obj_score_token [1, C]       (keep_sam_tokens=True only)
    mask_tokens [K, C]                             one learned token per class (official: 4)
    output_upscaling.{0,1,3}                       ConvT(C, C/4), LayerNorm2d, ConvT(C/4, C/8)
    conv_s0 (C -> C/8, stride 4), conv_s1 (C -> C/4, stride 8)
    output_hypernetworks_mlps.{i}.layers.{0,1,2}   one per class (or one shared)

plus three tensors that the official model keeps outside the decoder: ``no_mask_embed`` [1, C]
(from ``sam_prompt_encoder.no_mask_embed.weight``), the buffer
``positional_encoding_gaussian_matrix`` [2, C/2] (from
``sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``) and ``no_mem_embed``
[1, 1, C] (top-level ``no_mem_embed``). ``iou_prediction_head`` and ``pred_obj_score_head`` are
not built (a semantic head has no use for them); the loader skips their keys.

Departures from the official code (our reconstruction choices, none of them in SAM 2):

* no sparse prompts: the token sequence is only the output tokens (``[obj_score, iou, class
  tokens]``, or only the class tokens with ``keep_sam_tokens=False``); the dense prompt is
  always ``no_mask_embed`` (official behaviour without a mask prompt). With no point or box
  the official predictor feeds one padding "not a point" token; we feed none.
* the ``4`` official mask tokens become ``num_classes`` class tokens; all their masks are
  returned (no multimask selection, no IoU / object-score outputs).
* ``shared_hypernetwork=True`` uses one hypernetwork MLP for every class token (official: one
  per mask token).
* ``conv_s0`` / ``conv_s1`` are applied inside :meth:`Sam2SemanticDecoder.forward` to the
  256-channel FPN maps (official ``forward_image`` applies them when extracting features).
* the image position encoding is computed for the actual ``(h, w)`` grid of each input (as
  ``PositionEmbeddingRandom.forward`` does for the fixed 64 x 64 grid of 1024-px inputs).
* :meth:`Sam2SemanticDecoder.load_pretrained` initialises class token / hypernetwork
  ``i`` from official mask token / MLP ``i % 4`` when the class count differs from 4.

Hugging Face ``transformers`` ``Sam2Model`` state dicts (``facebook/sam2.1-hiera-*``:
``mask_decoder.*``, ``prompt_encoder.no_mask_embed.weight``,
``shared_image_embedding.positional_embedding``, ``no_memory_embedding``) are converted to the
official names by :func:`convert_hf_sam2_decoder` (the loader does it automatically).
:func:`checkpoint_filter_fn` (also ``Sam2SemanticDecoder.checkpoint_filter_fn``) maps these
files, official or HF, and the SAM v1 ones below, to this module's keys;
:meth:`Sam2SemanticDecoder.load_pretrained` loads one.

SAM v1 mode (``variant="sam"``): the mask decoder of the original SAM (Kirillov et al. 2023;
official ``facebookresearch/segment-anything``: ``segment_anything/modeling/mask_decoder.py``,
``transformer.py``, ``common.py`` (``MLPBlock``), ``prompt_encoder.py``
(``PositionEmbeddingRandom``, ``no_mask_embed``), ``build_sam.py`` (width 256, depth 2, 8 heads,
MLP 2048, 3 multimask outputs + 1, IoU head depth 3)). Differences from the SAM 2 mode, all
official: no high-resolution features (no ``conv_s0`` / ``conv_s1``; ``output_upscaling`` is
``ConvT -> LayerNorm2d -> GELU -> ConvT -> GELU`` on the stride-16 embedding alone), no
``obj_score_token`` (tokens ``[iou, class tokens]``), no ``no_mem_embed``, and the two-way
blocks' token MLP is ``common.MLPBlock`` with keys ``mlp.lin1`` / ``mlp.lin2`` (SAM 2:
``mlp.layers.{0,1}``); the hypernetwork / IoU MLPs are ``MLP`` with ``layers.{0,1,2}`` as in
SAM 2. Official whole-SAM files (``sam_vit_{b,l,h}_*.pth``: a flat dict with ``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``) load from ``mask_decoder.<key>``,
``prompt_encoder.no_mask_embed.weight`` and
``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``; Hugging Face ``SamModel``
state dicts (``facebook/sam-vit-*``) through :func:`convert_hf_sam_decoder`.

Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ....errors import ConfigError
from ...layers import LayerNorm2d
from ...weights import CheckpointMismatchError, load_state_dict_strict, rename_key
from .pretrained import PretrainedSource, read_pretrained

__all__ = [
    "Attention",
    "LayerNorm2d",
    "MLP",
    "MLPBlock",
    "Sam2LoadReport",
    "Sam2SemanticDecoder",
    "TwoWayAttentionBlock",
    "TwoWayTransformer",
    "checkpoint_filter_fn",
    "convert_hf_sam2_decoder",
    "convert_hf_sam_decoder",
    "random_fourier_image_pe",
]

#: official key prefixes / names in a SAM 2 checkpoint (``{"model": {...}}``)
DECODER_PREFIX = "sam_mask_decoder."
PROMPT_PREFIX = "sam_prompt_encoder."
NO_MASK_KEY = PROMPT_PREFIX + "no_mask_embed.weight"
PE_KEY = PROMPT_PREFIX + "pe_layer.positional_encoding_gaussian_matrix"
NO_MEM_KEY = "no_mem_embed"

#: official key prefixes / names in a SAM v1 checkpoint (flat ``sam_vit_*.pth`` dict)
SAM1_DECODER_PREFIX = "mask_decoder."
SAM1_PROMPT_PREFIX = "prompt_encoder."
SAM1_NO_MASK_KEY = SAM1_PROMPT_PREFIX + "no_mask_embed.weight"
SAM1_PE_KEY = SAM1_PROMPT_PREFIX + "pe_layer.positional_encoding_gaussian_matrix"

VARIANTS = ("sam2", "sam")


# --------------------------------------------------------------------------- building blocks
class MLP(nn.Module):
    """Plain MLP (official ``sam2_utils.MLP``): ``num_layers`` Linear layers in ``layers``,
    ReLU between them (none after the last). ``[..., in_dim] -> [..., out_dim]``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


class MLPBlock(nn.Module):
    """Two-layer token MLP of SAM v1's two-way blocks (official
    ``segment_anything/modeling/common.py`` ``MLPBlock`` with the ReLU that
    ``TwoWayTransformer`` passes): ``lin2(relu(lin1(x)))``, keys ``lin1``, ``lin2``.
    ``[..., dim] -> [..., dim]``."""

    def __init__(self, dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class Attention(nn.Module):
    """Multi-head attention whose inner width is ``dim // downsample_rate`` (official
    ``transformer.Attention``). Keys ``q_proj``, ``k_proj``, ``v_proj`` (``C -> C/r``),
    ``out_proj`` (``C/r -> C``).

    ``forward(q [B, Nq, C], k [B, Nk, C], v [B, Nk, C]) -> [B, Nq, C]``.

    Raises:
        ValueError: ``num_heads`` does not divide the inner width.
    """

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ConfigError(f"num_heads={num_heads} must divide the inner width {inner}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class TwoWayAttentionBlock(nn.Module):
    """One two-way block (official ``TwoWayAttentionBlock``): token self-attention (without
    residual nor position encoding in the first block), tokens -> image cross-attention, token
    MLP (ReLU), image -> tokens cross-attention; each followed by a LayerNorm (post-norm).
    The token MLP is :class:`MLP` (keys ``mlp.layers.{0,1}``, SAM 2) or, with
    ``mlp_block=True``, :class:`MLPBlock` (keys ``mlp.lin1`` / ``mlp.lin2``, SAM v1); the two
    compute the same function.

    ``forward(queries [B, N, C], keys [B, HW, C], query_pe [B, N, C], key_pe [B, HW, C])
    -> (queries, keys)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False, mlp_block: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim) if mlp_block else MLP(dim, mlp_dim, dim, 2)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor,
                key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:  # official: the first block replaces the tokens
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(keys + key_pe, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """SAM's two-way transformer (official ``TwoWayTransformer``): ``depth`` blocks, then a
    final tokens -> image attention and LayerNorm. Keys ``layers.{i}.*``,
    ``final_attn_token_to_image.*``, ``norm_final_attn``. ``mlp_block``: see
    :class:`TwoWayAttentionBlock` (``True`` for SAM v1 key names).

    ``forward(image [B, C, h, w], image_pe [B or 1, C, h, w], tokens [B, N, C])
    -> (tokens [B, N, C], image tokens [B, h*w, C])``.
    """

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int,
                 attention_downsample_rate: int = 2, mlp_block: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, attention_downsample_rate,
                                 skip_first_layer_pe=(i == 0), mlp_block=mlp_block)
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads,
                                                   attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2).expand_as(keys)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


def random_fourier_image_pe(gaussian_matrix: Tensor, h: int, w: int) -> Tensor:
    """Random-Fourier position encoding of an ``h x w`` grid (official
    ``PositionEmbeddingRandom.forward``): cell centres ``((x + 0.5) / w, (y + 0.5) / h)``
    mapped to ``[-1, 1]``, times ``gaussian_matrix`` [2, C/2], times ``2 pi``, then
    ``[sin, cos]``. Returns ``[C, h, w]`` (float32)."""
    g = gaussian_matrix.float()
    ys = (torch.arange(h, device=g.device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=g.device, dtype=torch.float32) + 0.5) / w
    coords = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), dim=-1)  # [h, w, 2]
    proj = (2 * coords - 1) @ g * (2 * math.pi)
    return torch.cat([proj.sin(), proj.cos()], dim=-1).permute(2, 0, 1)


# --------------------------------------------------------------------------- the head
@dataclass
class Sam2LoadReport:
    """What :meth:`Sam2SemanticDecoder.load_pretrained` did.

    Attributes:
        loaded: our keys copied exactly from the tensor of the same (official) name.
        cycled: our keys initialised from official mask token / hypernetwork ``i % n``
            (``n`` = the file's mask-token count, 4 for SAM 2.1 and SAM v1).
        skipped: source keys under the decoder / prompt-encoder prefixes
            (``sam_mask_decoder.`` / ``sam_prompt_encoder.`` for SAM 2, ``mask_decoder.`` /
            ``prompt_encoder.`` for SAM v1; official names, Hugging Face keys after conversion
            or as stored when unknown) that were not used (e.g. ``iou_prediction_head.*``,
            ``pred_obj_score_head.*``, point embeddings, ``mask_downscaling.*``).
        ignored: number of other keys in the file (image encoder, memory modules, ...).
        source_format: ``"official"``, ``"hf"`` or ``"fusionseg"`` (this module's own keys,
            loaded strictly: every key in ``loaded``).
    """

    loaded: list[str] = field(default_factory=list)
    cycled: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ignored: int = 0
    source_format: str = "official"


# --------------------------------------------------------------------------- conversion
#: official decoder heads a semantic head does not build (their keys are skipped)
_UNUSED_HEADS = ("iou_prediction_head.", "pred_obj_score_head.")


def _prefixes(variant: str) -> tuple[str, str, dict[str, str]]:
    """``(decoder prefix, prompt-encoder prefix, {official key: our key})`` for ``variant``;
    the mapping covers the tensors the official model keeps outside its decoder."""
    if variant == "sam2":
        return DECODER_PREFIX, PROMPT_PREFIX, {
            NO_MASK_KEY: "no_mask_embed", PE_KEY: "positional_encoding_gaussian_matrix",
            NO_MEM_KEY: "no_mem_embed"}
    return SAM1_DECODER_PREFIX, SAM1_PROMPT_PREFIX, {
        SAM1_NO_MASK_KEY: "no_mask_embed", SAM1_PE_KEY: "positional_encoding_gaussian_matrix"}


def _released_variant(sd: Mapping[str, Tensor]) -> str | None:
    """The SAM generation that a state dict's names show: ``"sam2"`` (official
    ``sam_mask_decoder.*``, or Hugging Face ``Sam2Model``: ``no_memory_embedding``,
    ``mask_decoder.obj_score_token``, ``o_proj``), ``"sam"`` (other ``mask_decoder.*`` keys:
    an official ``sam_vit_*.pth`` or a Hugging Face ``SamModel``), ``None`` (no SAM decoder
    keys, e.g. this module's own state dict)."""
    if any(k.startswith(DECODER_PREFIX) or k == "no_memory_embedding"
           or (k.startswith("mask_decoder.") and (".o_proj." in k or "obj_score_token" in k))
           for k in sd):
        return "sam2"
    return "sam" if any(k.startswith(SAM1_DECODER_PREFIX) for k in sd) else None


def _to_official(sd: Mapping[str, Tensor], variant: str) -> tuple[dict[str, Tensor], str]:
    """``sd`` in the official names of ``variant``, and ``"official"`` / ``"hf"``."""
    if variant == "sam2":
        if not any(k.startswith(DECODER_PREFIX) for k in sd) and any(
            k.startswith("mask_decoder.") for k in sd
        ):
            return convert_hf_sam2_decoder(sd), "hf"
        return dict(sd), "official"
    if _looks_like_hf_sam(sd):
        return convert_hf_sam_decoder(sd), "hf"
    return dict(sd), "official"


def _mask_token_count(official: Mapping[str, Tensor], variant: str) -> int:
    """``n``, the mask-token count of an official-named state dict (4 if it does not tell)."""
    tok = official.get(_prefixes(variant)[0] + "mask_tokens.weight")
    return tok.shape[0] if isinstance(tok, Tensor) and tok.ndim == 2 else 4


def _take(value: Tensor, key: str, how: str, n_official: int, num_classes: int) -> Tensor:
    """The tensor our ``key`` gets from its official source ``value``: rows ``i % n_official``
    for a cycled ``mask_tokens.weight``, else ``value`` itself (a cycled hypernetwork's source
    key already names official MLP ``i % n_official``)."""
    if key == "mask_tokens.weight" and how == "cycle":
        return value[torch.arange(num_classes) % n_official]
    return value


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor],
                         model: Sam2SemanticDecoder | None = None) -> dict[str, Tensor]:
    """Official or Hugging Face SAM 2 / 2.1 or SAM v1 files -> :class:`Sam2SemanticDecoder`
    keys (the names and rules: :meth:`Sam2SemanticDecoder.load_pretrained`).

    Args:
        state_dict: the file's tensors (a ``{"model": ...}`` nesting already unwrapped):
            official ``sam_mask_decoder.*`` / ``sam_prompt_encoder.*`` / ``no_mem_embed``
            (SAM 2), official ``mask_decoder.*`` / ``prompt_encoder.*`` (SAM v1), or the
            Hugging Face ``Sam2Model`` / ``SamModel`` names; other keys (image encoder, memory
            modules, the unused IoU / object-score heads, point embeddings) are dropped.
        model: the decoder the result is for. Given, its ``variant`` decides the SAM
            generation and its class count the cycling (class token / hypernetwork ``i`` from
            official ``i % n``); the result holds those of its keys whose source is in the file
            (shapes not checked). ``None``: the generation is read off the key names and the
            file's own ``n`` mask tokens are kept, so the result loads strictly into
            ``Sam2SemanticDecoder(n, variant=...)`` with the default ``keep_sam_tokens=True``
            and ``shared_hypernetwork=False``.

    Returns:
        A new dict. A state dict without SAM decoder keys (this module's own) comes back
        unchanged.
    """
    found = _released_variant(state_dict)
    if found is None:
        return dict(state_dict)
    variant = found if model is None else model.variant
    official, _ = _to_official(state_dict, variant)
    if model is not None:
        n = _mask_token_count(official, variant)
        return {k: _take(official[src], k, how, n, model.num_classes)
                for k, (src, how) in model._sources(n).items() if src in official}
    dec, _, extras = _prefixes(variant)
    out = {}
    for k, v in official.items():
        if k in extras:
            out[extras[k]] = v
        elif k.startswith(dec) and not k[len(dec):].startswith(_UNUSED_HEADS):
            out[k[len(dec):]] = v
    return out


class Sam2SemanticDecoder(nn.Module):
    """Prompt-free SAM 2 (or SAM v1) mask decoder predicting one mask (logit map) per class.

    Args:
        num_classes: ``K``, the number of class tokens and output channels.
        transformer_dim: ``C`` (256 in SAM 2.1 and SAM v1).
        depth: two-way transformer blocks (2).
        num_heads: attention heads (8).
        mlp_dim: token MLP width (2048).
        attention_downsample_rate: cross-attention inner width ``C / rate`` (2).
        keep_sam_tokens: [our choice] keep the pretrained ``obj_score_token`` (SAM 2 only) and
            ``iou_token`` in front of the class tokens (tokens ``[obj_score, iou,
            class_0..K-1]``; SAM v1: ``[iou, class_0..K-1]``) so the class tokens attend to
            them as SAM's mask tokens do; their outputs are unused. ``False``: the tokens are
            the class tokens only (and those tokens are not built).
        shared_hypernetwork: [our choice] one hypernetwork MLP
            (``output_hypernetworks_mlps.0``) for all class tokens instead of one per class.
        variant: ``"sam2"`` (default; SAM 2 / 2.1 decoder with high-resolution features) or
            ``"sam"`` (SAM v1 decoder: no ``conv_s0`` / ``conv_s1``, no ``obj_score_token``,
            no ``no_mem_embed``; two-way block MLP keys ``mlp.lin1`` / ``mlp.lin2``; see the
            module docstring).

    ``forward(image_embed, high_res=None)``:
        * ``image_embed``: ``[B, C, h, w]``, stride 16 (SAM 2: the FPN level it calls
          ``vision_features``; SAM v1: the image-encoder neck output), any ``h, w``;
        * ``high_res``: ``"sam2"``: required, ``(feat_s0 [B, C, 4h, 4w] stride 4, feat_s1
          [B, C, 2h, 2w] stride 8)``, the raw ``C``-channel FPN maps (``conv_s0`` /
          ``conv_s1`` are applied here); ``"sam"``: must be ``None``;
        * returns logits ``[B, K, 4h, 4w]`` (stride 4).

    Computation (official ``MaskDecoder.predict_masks`` with no sparse prompt):
    ``src = image_embed + no_mem_embed + no_mask_embed`` (SAM v1: ``image_embed +
    no_mask_embed``); image PE for the ``h x w`` grid; ``TwoWayTransformer(src, pe, tokens)``;
    upscaling ``act(LN(ConvT1(src) + conv_s1(feat_s1)))`` then ``act(ConvT2(.) +
    conv_s0(feat_s0))`` (GELU; SAM v1: ``act(ConvT2(act(LN(ConvT1(src)))))``); mask ``i`` =
    ``hypernetwork_i(class_token_out_i) @ upscaled``.

    Raises:
        ValueError (constructor): ``num_classes < 1``, ``transformer_dim`` not a multiple of
            8, unknown ``variant``.
        ValueError (forward): inputs not shaped as above, or ``high_res`` missing ("sam2") /
            given ("sam") (messages start "Sam2SemanticDecoder expects ...").
    """

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def __init__(
        self,
        num_classes: int,
        transformer_dim: int = 256,
        depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        keep_sam_tokens: bool = True,
        shared_hypernetwork: bool = False,
        variant: str = "sam2",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        if transformer_dim % 8:
            raise ConfigError(f"transformer_dim must be a multiple of 8, got {transformer_dim}")
        if variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got {variant!r}")
        c = transformer_dim
        sam2 = variant == "sam2"
        self.num_classes = num_classes
        self.transformer_dim = c
        self.keep_sam_tokens = keep_sam_tokens
        self.shared_hypernetwork = shared_hypernetwork
        self.variant = variant

        self.transformer = TwoWayTransformer(depth, c, num_heads, mlp_dim,
                                             attention_downsample_rate, mlp_block=not sam2)
        if keep_sam_tokens:
            self.iou_token = nn.Embedding(1, c)
            if sam2:
                self.obj_score_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(num_classes, c)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            nn.GELU(),
            nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        if sam2:
            self.conv_s0 = nn.Conv2d(c, c // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(c, c // 4, kernel_size=1)
        n_mlps = 1 if shared_hypernetwork else num_classes
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(c, c, c // 8, 3) for _ in range(n_mlps)
        )
        # prompt-encoder / model-level tensors (official init: Embedding N(0,1), randn PE,
        # trunc_normal(0.02) for no_mem_embed)
        self.no_mask_embed = nn.Parameter(torch.randn(1, c))
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, c // 2))
        if sam2:
            self.no_mem_embed = nn.Parameter(
                nn.init.trunc_normal_(torch.zeros(1, 1, c), std=0.02))

    # ------------------------------------------------------------------ forward
    def no_weight_decay(self) -> set[str]:
        """Names of the learned tokens / embeddings (no weight decay, as for ViT tokens)."""
        names = {"mask_tokens.weight", "no_mask_embed"}
        if self.variant == "sam2":
            names.add("no_mem_embed")
        if self.keep_sam_tokens:
            names.add("iou_token.weight")
            if self.variant == "sam2":
                names.add("obj_score_token.weight")
        return names

    def image_pe(self, h: int, w: int) -> Tensor:
        """Image position encoding ``[1, C, h, w]`` (see :func:`random_fourier_image_pe`)."""
        return random_fourier_image_pe(self.positional_encoding_gaussian_matrix, h, w)[None]

    def _check(self, image_embed: Tensor,
               high_res: Sequence[Tensor] | None) -> tuple[Tensor, Tensor] | None:
        c = self.transformer_dim
        if image_embed.ndim != 4 or image_embed.shape[1] != c:
            raise ValueError(f"Sam2SemanticDecoder expects [B, {c}, h, w] image_embed, got "
                             f"{list(image_embed.shape)}")
        if self.variant == "sam":
            if high_res is not None:
                raise ValueError("Sam2SemanticDecoder expects high_res=None with "
                                 "variant='sam' (SAM v1 uses no high-resolution features)")
            return None
        if high_res is None:
            raise ValueError("Sam2SemanticDecoder expects [B, ...] high_res = (feat_s0, "
                             "feat_s1) with variant='sam2', got None")
        b, _, h, w = image_embed.shape
        if len(high_res) != 2:
            raise ValueError("Sam2SemanticDecoder expects [B, ...] high_res = (feat_s0, feat_s1), "
                             f"got {len(high_res)} tensors")
        feat_s0, feat_s1 = high_res
        for name, f, s in (("feat_s0", feat_s0, 4), ("feat_s1", feat_s1, 2)):
            want = [b, c, s * h, s * w]
            if list(f.shape) != want:
                raise ValueError(f"Sam2SemanticDecoder expects {name} {want} (stride-16 grid "
                                 f"{h}x{w} times {s}), got {list(f.shape)}")
        return feat_s0, feat_s1

    def forward(self, image_embed: Tensor, high_res: Sequence[Tensor] | None = None) -> Tensor:
        """``image_embed [B, C, h, w]``, ``high_res = (feat_s0 [B, C, 4h, 4w], feat_s1 [B, C,
        2h, 2w])`` ("sam2"; ``None`` for "sam") -> logits ``[B, num_classes, 4h, 4w]``. See
        the class docstring."""
        feats = self._check(image_embed, high_res)
        sam2 = feats is not None
        b, c, h, w = image_embed.shape
        if sam2:
            src = (image_embed + self.no_mem_embed.view(1, c, 1, 1)
                   + self.no_mask_embed.view(1, c, 1, 1))
        else:
            src = image_embed + self.no_mask_embed.view(1, c, 1, 1)
        pe = self.image_pe(h, w).to(src.dtype)
        if self.keep_sam_tokens:
            sam_tokens = ([self.obj_score_token.weight, self.iou_token.weight] if sam2
                          else [self.iou_token.weight])
            tokens = torch.cat([*sam_tokens, self.mask_tokens.weight], dim=0)
            first = len(sam_tokens)
        else:
            tokens, first = self.mask_tokens.weight, 0
        tokens = tokens.to(src.dtype)[None].expand(b, -1, -1)
        hs, keys = self.transformer(src, pe, tokens)
        class_out = hs[:, first:first + self.num_classes]

        src = keys.transpose(1, 2).reshape(b, c, h, w)
        if sam2:
            feat_s0, feat_s1 = feats
            dc1, ln1, act1, dc2, act2 = self.output_upscaling
            up = act1(ln1(dc1(src) + self.conv_s1(feat_s1)))
            up = act2(dc2(up) + self.conv_s0(feat_s0))  # [B, C/8, 4h, 4w]
        else:
            up = self.output_upscaling(src)  # [B, C/8, 4h, 4w]

        if self.shared_hypernetwork:
            hyper = self.output_hypernetworks_mlps[0](class_out)
        else:
            hyper = torch.stack([mlp(class_out[:, i])
                                 for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        return (hyper @ up.flatten(2)).view(b, self.num_classes, 4 * h, 4 * w)

    # ------------------------------------------------------------------ loading
    def _sources(self, n_official: int) -> dict[str, tuple[str, str]]:
        """``our key -> (official key, how)``; ``how`` in ``{"copy", "cycle"}`` (``"cycle"``:
        rows / modules ``i`` from ``i % n_official``)."""
        dec, _, extras = _prefixes(self.variant)
        official_of = {ours: off for off, ours in extras.items()}
        out: dict[str, tuple[str, str]] = {}
        for k in self.state_dict():
            if k in official_of:
                out[k] = (official_of[k], "copy")
            elif k == "mask_tokens.weight":
                how = "copy" if self.num_classes == n_official else "cycle"
                out[k] = (dec + k, how)
            elif k.startswith("output_hypernetworks_mlps."):
                i, rest = k[len("output_hypernetworks_mlps."):].split(".", 1)
                j = int(i) % n_official
                how = "copy" if j == int(i) else "cycle"
                out[k] = (f"{dec}output_hypernetworks_mlps.{j}.{rest}", how)
            else:
                out[k] = (dec + k, "copy")
        return out

    def load_pretrained(self, path: PretrainedSource) -> Sam2LoadReport:
        """Load the decoder (and ``no_mask_embed``, the PE matrix and, for SAM 2,
        ``no_mem_embed``) from an official or Hugging Face file of this module's ``variant``,
        in place.

        Args:
            path: a file, Hugging Face folder or catalogue name, or a state dict in memory
                (see :func:`~fusionseg.models.methods.mle_sam.pretrained.read_pretrained`: the
                same rule as :meth:`Sam2FpnNeck.load_pretrained
                <fusionseg.models.methods.mle_sam.fpn_neck.Sam2FpnNeck.load_pretrained>`).
                ``"sam2"``: an official SAM 2 / 2.1 file (``{"model": {...}}``) or a Hugging
                Face ``Sam2Model`` state dict (``mask_decoder.*`` keys). ``"sam"``: an official
                SAM v1 file (``sam_vit_{b,l,h}_*.pth``, flat ``image_encoder.*`` /
                ``prompt_encoder.*`` / ``mask_decoder.*``) or a Hugging Face ``SamModel``
                state dict (``facebook/sam-vit-*``; recognised by its ``upscale_conv1`` /
                ``layer_norm*`` / ``proj_in`` / ``shared_image_embedding`` names). A state
                dict with no SAM decoder key at all is taken as this module's own keys and
                loaded strictly.

        Every tensor of this module comes from the official key of the same name
        (SAM 2: ``sam_mask_decoder.<key>``, ``sam_prompt_encoder.no_mask_embed.weight``,
        ``sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``, ``no_mem_embed``;
        SAM v1: ``mask_decoder.<key>``, ``prompt_encoder.no_mask_embed.weight``,
        ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``) and must match its
        shape exactly. [Our choice] When ``num_classes`` differs from the file's mask-token
        count ``n`` (4): class token ``i`` is official mask token ``i % n`` and hypernetwork
        ``i`` is official ``output_hypernetworks_mlps.{i % n}`` (a shared hypernetwork is
        official MLP 0). The renaming is :func:`checkpoint_filter_fn`'s. Nothing is changed
        when an error is raised.

        Returns:
            :class:`Sam2LoadReport`.

        Raises:
            CheckpointError: unreadable file (see
                :func:`~fusionseg.models.weights.load_state_dict_file`).
            CheckpointMismatchError: a required official key (transformer, upscaling,
                ``conv_s*``, tokens, hypernetworks, the prompt / model tensors) is missing -
                the error's ``missing`` lists the official names - or a tensor's shape
                differs (``mismatched``). A file of the other SAM generation fails this way.
        """
        sd, where = read_pretrained(path)
        if _released_variant(sd) is None:  # our own keys
            load_state_dict_strict(self, sd, where)
            return Sam2LoadReport(loaded=list(self.state_dict()), source_format="fusionseg")
        sd, fmt = _to_official(sd, self.variant)
        dec, prompt, _ = _prefixes(self.variant)
        n_official = _mask_token_count(sd, self.variant)
        sources = self._sources(n_official)
        own = self.state_dict()
        missing, mismatched = [], []
        for k, (src, how) in sources.items():
            v = sd.get(src)
            if v is None:
                missing.append(src)
                continue
            want = tuple(own[k].shape)
            if how == "cycle" and k == "mask_tokens.weight":
                want = (n_official, *want[1:])
            if tuple(v.shape) != want:
                mismatched.append((src, tuple(v.shape), want))
        if missing or mismatched:
            raise CheckpointMismatchError(where, sorted(set(missing)), [], mismatched)

        report = Sam2LoadReport(source_format=fmt)
        with torch.no_grad():
            for k, (src, how) in sources.items():
                own[k].copy_(_take(sd[src], k, how, n_official, self.num_classes))
                (report.cycled if how == "cycle" else report.loaded).append(k)
        used = {src for src, _ in sources.values()}
        for k in sd:
            if k in used:
                continue
            if k.startswith((dec, prompt)):
                report.skipped.append(k)
            else:
                report.ignored += 1
        return report


# --------------------------------------------------------------------------- Hugging Face
_HF_RULES: tuple[tuple[str, str], ...] = (
    (r"^mask_decoder\.transformer\.(.*)\.o_proj\.", r"sam_mask_decoder.transformer.\1.out_proj."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.",
     r"sam_mask_decoder.transformer.layers.\1.norm\2."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.proj_in\.",
     r"sam_mask_decoder.transformer.layers.\1.mlp.layers.0."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.proj_out\.",
     r"sam_mask_decoder.transformer.layers.\1.mlp.layers.1."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.",
     "sam_mask_decoder.transformer.norm_final_attn."),
    (r"^mask_decoder\.upscale_conv1\.", "sam_mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "sam_mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "sam_mask_decoder.output_upscaling.3."),
    (r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)"
     r"\.proj_in\.", r"sam_mask_decoder.\1.layers.0."),
    (r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)"
     r"\.proj_out\.", r"sam_mask_decoder.\1.layers.2."),
    (r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)"
     r"\.layers\.0\.", r"sam_mask_decoder.\1.layers.1."),
    (r"^mask_decoder\.", "sam_mask_decoder."),
    (r"^prompt_encoder\.no_mask_embed\.weight$", NO_MASK_KEY),
    (r"^shared_image_embedding\.positional_embedding$", PE_KEY),
    (r"^no_memory_embedding$", NO_MEM_KEY),
)


def convert_hf_sam2_decoder(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face ``transformers`` ``Sam2Model`` state dict (the
    ``facebook/sam2.1-hiera-*`` hub names) to the official SAM 2 names of the decoder part.

    ``mask_decoder.*`` -> ``sam_mask_decoder.*`` (``o_proj`` -> ``out_proj``,
    ``layer_norm{i}`` -> ``norm{i}``, ``layer_norm_final_attn`` -> ``norm_final_attn``,
    ``upscale_conv1`` / ``upscale_layer_norm`` / ``upscale_conv2`` -> ``output_upscaling.{0,1,3}``,
    ``Sam2FeedForward`` ``proj_in`` / ``layers.0`` / ``proj_out`` -> ``layers.{0,1,2}`` for the
    3-layer heads and ``proj_in`` / ``proj_out`` -> ``layers.{0,1}`` for the transformer MLPs);
    ``prompt_encoder.no_mask_embed.weight`` -> ``sam_prompt_encoder.no_mask_embed.weight``;
    ``shared_image_embedding.positional_embedding`` (the matrix Hugging Face uses for the image
    PE; the hub's ``prompt_encoder.shared_embedding.positional_embedding`` holds the same
    values) -> ``sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``;
    ``no_memory_embedding`` -> ``no_mem_embed``. Other keys are kept as stored. The IoU and
    object-score heads are renamed assuming depth 3 (SAM 2.1's).
    """
    return {rename_key(k, _HF_RULES): v for k, v in sd.items()}


# SAM v1 (``SamModel``): same renames as SAM 2 except that attention keeps ``out_proj`` and the
# token MLPs keep ``lin1`` / ``lin2`` (official ``MLPBlock``); prefixes ``mask_decoder.`` /
# ``prompt_encoder.`` are the official ones already.
_HF_SAM_RULES: tuple[tuple[str, str], ...] = (
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.",
     r"mask_decoder.transformer.layers.\1.norm\2."),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn\.",
     "mask_decoder.transformer.norm_final_attn."),
    (r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    (r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    (r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
    (r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.proj_in\.",
     r"mask_decoder.\1.layers.0."),
    (r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.proj_out\.",
     r"mask_decoder.\1.layers.2."),
    (r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.0\.",
     r"mask_decoder.\1.layers.1."),
    (r"^shared_image_embedding\.positional_embedding$", SAM1_PE_KEY),
)

_HF_SAM_MARKERS = re.compile(
    r"^(mask_decoder\.(upscale_conv[12]|upscale_layer_norm|transformer\.layer_norm_final_attn"
    r"|transformer\.layers\.\d+\.layer_norm\d|output_hypernetworks_mlps\.\d+\.proj_in)\."
    r"|shared_image_embedding\.)"
)


def _looks_like_hf_sam(sd: Mapping[str, Tensor]) -> bool:
    """Whether a SAM v1 state dict uses the Hugging Face ``SamModel`` names (the official and
    HF files share the ``mask_decoder.`` prefix, so the renamed modules tell them apart)."""
    return any(_HF_SAM_MARKERS.match(k) for k in sd)


def convert_hf_sam_decoder(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face ``transformers`` ``SamModel`` state dict (the
    ``facebook/sam-vit-{base,large,huge}`` hub names) to the official SAM v1 names of the
    decoder part.

    ``mask_decoder.transformer.layers.{i}.layer_norm{j}`` -> ``.norm{j}``,
    ``layer_norm_final_attn`` -> ``norm_final_attn``, ``upscale_conv1`` /
    ``upscale_layer_norm`` / ``upscale_conv2`` -> ``output_upscaling.{0,1,3}``, the 3-layer
    ``SamFeedForward`` heads' ``proj_in`` / ``layers.0`` / ``proj_out`` -> ``layers.{0,1,2}``
    (IoU head renamed assuming depth 3, SAM's); ``shared_image_embedding.positional_embedding``
    -> ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``. Attention
    (``q/k/v/out_proj``), token MLPs (``mlp.lin1/lin2``), tokens and
    ``prompt_encoder.no_mask_embed.weight`` already have the official names. Other keys are
    kept as stored. Apply it to HF names only: on official names the hypernetwork rule would
    rename ``layers.0`` (use :meth:`Sam2SemanticDecoder.load_pretrained`, which detects the
    format).
    """
    return {rename_key(k, _HF_SAM_RULES): v for k, v in sd.items()}
