"""DINOv2 ViT-S/B/L/g with patch 14 (and the ``_reg4`` register variants).

Our own compact implementation of the plain ViT of

    Maxime Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision",
    TMLR 2024 (arXiv 2304.07193); registers: Timothée Darcet et al., "Vision Transformers Need
    Registers", ICLR 2024 (arXiv 2309.16588).

Module and parameter names follow the official code (``facebookresearch/dinov2``,
``dinov2/models/vision_transformer.py``, ``dinov2/layers/*``), so the official
``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` files load strictly::

    cls_token [1, 1, C]   pos_embed [1, 1 + 37*37, C]   mask_token [1, C] (unused here)
    register_tokens [1, 4, C]                            (``_reg4`` variants only)
    patch_embed.proj                                     Conv2d(3, C, 14, stride 14)
    blocks.{i}.norm1 / .attn.qkv / .attn.proj / .ls1.gamma / .norm2 / .ls2.gamma
    blocks.{i}.mlp.fc1 / .mlp.fc2                        (S/B/L: GELU MLP, ratio 4)
    blocks.{i}.mlp.w12 / .mlp.w3                         (g: fused SwiGLU, hidden 4096)
    norm                                                 (final LayerNorm, eps 1e-6)

Hugging Face ``facebook/dinov2-*`` and ``facebook/dinov2-with-registers-*`` files (``embeddings.*``,
``encoder.layer.{i}.*``, ``layernorm.*``; the hub names and those current ``transformers``
holds in memory) convert through :func:`checkpoint_filter_fn`, so
``create_backbone("dinov2_vits14", pretrained=".../model.safetensors")`` and
``fusionseg weights convert`` accept them.

Position embeddings (pretrained on a 37 x 37 grid, 518 px) are interpolated bicubically to the
input's grid for any input whose sides are multiples of 14, as the official
``interpolate_pos_encoding`` does: with ``interpolate_offset = 0.1`` it passes the scale factor
``(g + 0.1) / 37`` (the hub's plain models), with ``0`` the target size and antialiasing
(the hub's ``_reg4`` models). Hugging Face ``transformers`` interpolates by size without
antialiasing; set ``interpolate_offset=0, interpolate_antialias=False`` to match it. Other sides
raise ``ValueError``; segmentors pad to :attr:`input_multiple` (14) first.

As a :class:`~fusionseg.models.backbones.base.ViTBackbone` the ViT's *stages* are the
groups of blocks that end at each tap (``out_indices``, default: the MoBaNet / ViT-Adapter taps
of the spec: S/B ``[2, 5, 8, 11]``, L ``[5, 11, 17, 23]``, g ``[9, 19, 29, 39]``);
``forward(x) -> [f_1..f_4]``, each the final-norm'd patch tokens of its tap as a ``[B, C,
H/14, W/14]`` map (the official ``get_intermediate_layers(..., norm=True, reshape=True)``).
Blocks after the last tap are not run. Attention runs through
:func:`torch.nn.functional.scaled_dot_product_attention`.

The file registers the builders ``dinov2_vit{s,b,l,g}14[_reg4]``, the family ``dinov2`` (its
files and ``dinov2`` / ``dinov2_with_registers`` configs recognised by
:func:`recognise_state_dict` / :func:`recognise_hf_config`) and the official pretrained files
of the catalogue (:data:`PRETRAINED`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CheckpointError, ConfigError
from ..catalogue import PretrainedWeights, register_pretrained
from ..export_ops import onnx_tracing
from ..layers import DropPath, PatchEmbed, drop_path_rates
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
    "DINOV2_CONFIG_DEFAULTS",
    "DINOV2_SETTINGS",
    "DINOV2_TINY",
    "PRETRAINED",
    "DinoVisionTransformer",
    "LayerScale",
    "SwiGLUFFN",
    "ViTBlock",
    "checkpoint_filter_fn",
    "convert_hf_dinov2",
    "recognise_hf_config",
    "recognise_state_dict",
]

_LN_EPS = 1e-6

#: official hub settings (``dinov2/hub/backbones.py``) and the spec's taps
DINOV2_SETTINGS: dict[str, dict] = {
    "dinov2_vits14": dict(embed_dim=384, depth=12, num_heads=6, out_indices=(2, 5, 8, 11)),
    "dinov2_vitb14": dict(embed_dim=768, depth=12, num_heads=12, out_indices=(2, 5, 8, 11)),
    "dinov2_vitl14": dict(embed_dim=1024, depth=24, num_heads=16, out_indices=(5, 11, 17, 23)),
    "dinov2_vitg14": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu",
                          out_indices=(9, 19, 29, 39)),
}
for _name in list(DINOV2_SETTINGS):
    # the hub's register variants: 4 registers, interpolation by size with antialiasing
    DINOV2_SETTINGS[f"{_name}_reg4"] = dict(DINOV2_SETTINGS[_name], num_register_tokens=4,
                                            interpolate_offset=0.0, interpolate_antialias=True)
del _name

#: tiny constructor overrides used by the contract tests
DINOV2_TINY = dict(embed_dim=32, depth=4, num_heads=2, out_indices=(0, 1, 2, 3), img_size=56)


class LayerScale(nn.Module):
    """Per-channel scale ``x * gamma`` (Touvron et al., CaiT). Key: ``gamma`` ``[C]``."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))``. Keys ``fc1``, ``fc2`` (official ``layers/mlp.py``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """Fused SwiGLU of ViT-g: ``w3(silu(a) * b)`` with ``[a, b] = w12(x)`` (official
    ``SwiGLUFFNFused``; hidden ``(int(4C * 2/3) + 7) // 8 * 8``, 4096 for C = 1536)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` Linear (bias) and ``proj``; SDPA.

    ``forward(x [B, N, C]) -> [B, N, C]``.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(
            2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    """Pre-norm ViT block with LayerScale (official ``NestedTensorBlock``).

    ``x = x + drop_path(ls1(attn(norm1(x)))); x = x + drop_path(ls2(mlp(norm2(x))))``.
    ``forward(x [B, N, C], H=None, W=None)`` (the grid is not used; the signature is the
    transformer-backbone block contract). Keys ``norm1, attn.{qkv,proj}, ls1.gamma, norm2,
    mlp.*, ls2.gamma``.
    """

    def __init__(self, dim: int, num_heads: int, ffn: str = "mlp", mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, init_values: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        if ffn == "mlp":
            self.mlp: nn.Module = Mlp(dim, int(dim * mlp_ratio))
        elif ffn == "swiglu":
            self.mlp = SwiGLUFFN(dim, mlp_ratio)
        else:
            raise ConfigError(f"unknown ffn {ffn!r}; use 'mlp' or 'swiglu'")
        self.ls2 = LayerScale(dim, init_values)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def attn_residual(self, x: Tensor, H: int | None = None, W: int | None = None) -> Tensor:
        """``drop_path(ls1(attn(norm1(x))))``."""
        return self.drop_path(self.ls1(self.attn(self.norm1(x))))

    def mlp_residual(self, x: Tensor, H: int | None = None, W: int | None = None) -> Tensor:
        """``drop_path(ls2(mlp(norm2(x))))``."""
        return self.drop_path(self.ls2(self.mlp(self.norm2(x))))

    def forward(self, x: Tensor, H: int | None = None, W: int | None = None) -> Tensor:
        x = x + self.attn_residual(x)
        return x + self.mlp_residual(x)


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor],
                         model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official or Hugging Face DINOv2 files -> our keys (= the official names).

    * ``module.`` / ``backbone.`` / ``dinov2.`` prefixes (DDP, whole-model files) carried by
      every key are stripped;
    * Hugging Face files (``embeddings.*``, ``encoder.layer.*``) are renamed by
      :func:`convert_hf_dinov2` (separate q/k/v joined);
    * a ``pos_embed`` of another grid than ``model``'s is resized bicubically to it;
    * a ``head.*`` classifier is dropped.

    Args:
        state_dict: the file's tensors.
        model: the :class:`DinoVisionTransformer` they are for; ``None``: no instance (every
            prefix above stripped, nothing resized).

    Returns:
        The tensors under our keys. ``model``'s own state dict comes back unchanged.
    """
    own = model.state_dict() if model is not None else {}
    sd = strip_prefixes(state_dict, ("module.", "backbone.", "dinov2."), list(own))
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in sd):
        sd = convert_hf_dinov2(sd)
    sd = {k: v for k, v in sd.items() if not k.startswith("head.") or k in own}
    pe = sd.get("pos_embed")
    if "pos_embed" in own and pe is not None and pe.shape != own["pos_embed"].shape and (
            pe.ndim == 3):
        sd["pos_embed"] = resize_pos_embed(pe, own["pos_embed"].shape[1] - 1)
    return sd


class DinoVisionTransformer(ViTBackbone):
    """DINOv2 ViT (see the module docstring).

    Args:
        embed_dim, depth, num_heads: width ``C``, blocks, heads.
        out_indices: block indices tapped (0-based); one output map per tap.
        patch_size: 14.
        img_size: pretraining size (518 -> a 37 x 37 position-embedding grid).
        ffn: ``"mlp"`` (S/B/L) or ``"swiglu"`` (g).
        num_register_tokens: 0, or 4 for the ``_reg4`` variants.
        interpolate_offset, interpolate_antialias: position-embedding interpolation (official
            hub: 0.1 / False for the plain models, 0.0 / True for ``_reg4``).
        drop_path_rate: stochastic depth, linear over the blocks (0; the models are frozen in
            MoBaNet).
        init_values: LayerScale initialisation, 1.0 as the official hub builds the models
            (irrelevant once weights are loaded).
        in_chans: 3.

    ``forward(x [B, 3, H, W]) -> list`` of ``len(out_indices)`` maps ``[B, C, H/14, W/14]``.

    Raises:
        ValueError: bad settings (a tap outside the depth, unsorted taps); at forward, an input
            that is not ``[B, in_chans, H, W]`` or whose sides are not multiples of 14.
    """

    input_multiple = 14
    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        out_indices: Sequence[int] = (2, 5, 8, 11),
        patch_size: int = 14,
        img_size: int = 518,
        ffn: str = "mlp",
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 0,
        interpolate_offset: float = 0.1,
        interpolate_antialias: bool = False,
        drop_path_rate: float = 0.0,
        init_values: float = 1.0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.set_taps(out_indices, depth, patch_size)
        self.embed_dim, self.depth, self.num_heads = int(embed_dim), int(depth), int(num_heads)
        self.in_chans = int(in_chans)
        self.num_register_tokens = int(num_register_tokens)
        self.num_prefix_tokens = 1 + self.num_register_tokens
        self.interpolate_offset = float(interpolate_offset)
        self.interpolate_antialias = bool(interpolate_antialias)
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        if self.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, self.num_register_tokens,
                                                            embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # in the official files
        dpr = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            ViTBlock(embed_dim, num_heads, ffn, mlp_ratio, dpr[i], init_values)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=_LN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        """Official initialisation: trunc-normal(0.02) position embedding and linears,
        normal(1e-6) class / register tokens."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.num_register_tokens:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ contract
    def no_weight_decay(self) -> set[str]:
        """Position embedding and the class / register / mask tokens."""
        names = {"pos_embed", "cls_token", "mask_token"}
        if self.num_register_tokens:
            names.add("register_tokens")
        return names

    # ------------------------------------------------------------------ stages
    def interpolate_pos_encoding(self, gh: int, gw: int) -> Tensor:
        """Position embeddings ``[1, 1 + gh*gw, C]`` for a ``gh x gw`` patch grid (official
        ``interpolate_pos_encoding``; computed in float32)."""
        n = self.pos_embed.shape[1] - 1
        m = int(math.sqrt(n))
        if gh * gw == n and gh == gw:
            return self.pos_embed
        pos = self.pos_embed.float()
        patch = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = ((gh + self.interpolate_offset) / m, (gw + self.interpolate_offset) / m)
            if onnx_tracing():  # traced sizes are tensors; F.interpolate takes Python floats
                scale = (float(scale[0]), float(scale[1]))
            kwargs = {"scale_factor": scale}
        else:
            kwargs = {"size": (gh, gw)}
        patch = F.interpolate(patch, mode="bicubic", antialias=self.interpolate_antialias,
                              **kwargs)
        if patch.shape[-2:] != (gh, gw):  # pragma: no cover - guards float rounding
            raise RuntimeError(f"position embedding grid {tuple(patch.shape[-2:])} != {(gh, gw)}")
        patch = patch.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([pos[:, :1], patch], dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, x: Tensor, patch_embed: nn.Module | None = None
                       ) -> tuple[Tensor, int, int]:
        """Image -> ``([B, 1 + R + N, C] tokens, gh, gw)``: patch embedding, class token,
        position embeddings (class + patches), then the registers after the class token
        (official ``prepare_tokens_with_masks`` without masks). ``patch_embed`` replaces the
        backbone's own (e.g. MoBaNet's trainable DSM copy).

        Raises:
            ValueError: sides not multiples of the patch size.
        """
        self.check_input_size(x)
        tokens, gh, gw = (patch_embed or self.patch_embed)(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(gh, gw)
        if self.num_register_tokens:
            reg = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens[:, :1], reg, tokens[:, 1:]], dim=1)
        return tokens, gh, gw

    def norm_of(self, stage_idx: int) -> nn.LayerNorm:
        """The final LayerNorm ``norm`` (shared by every tap, as ``get_intermediate_layers``)."""
        self._check_stage(stage_idx)
        return self.norm


def resize_pos_embed(pos_embed: Tensor, num_patches: int) -> Tensor:
    """Resize ``[1, 1 + M*M, C]`` position embeddings to ``1 + num_patches`` (square grids,
    bicubic, float32)."""
    m = int(math.sqrt(pos_embed.shape[1] - 1))
    g = int(math.sqrt(num_patches))
    patch = pos_embed[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(g, g), mode="bicubic", align_corners=False)
    patch = patch.permute(0, 2, 3, 1).reshape(1, g * g, -1).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :1], patch], dim=1)


_HF_RULES: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.register_tokens$", "register_tokens"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.(?:weights_in|w12)\.", r"blocks.\1.mlp.w12."),
    (r"^encoder\.layer\.(\d+)\.mlp\.(?:weights_out|down_proj|w3)\.", r"blocks.\1.mlp.w3."),
    (r"^encoder\.layer\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.", r"blocks.\1.\2."),
    (r"^layernorm\.", "norm."),
)
_HF_QKV = re.compile(
    r"^encoder\.layer\.(\d+)\.attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$"
)
_HF_GATE = re.compile(r"^encoder\.layer\.(\d+)\.mlp\.(gate|up)_proj\.(weight|bias)$")


def convert_hf_dinov2(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Hugging Face Dinov2 / Dinov2WithRegisters state dict to the official keys.

    Handles the hub file names (``attention.attention.{query,key,value}``,
    ``attention.output.dense``, SwiGLU ``weights_in`` / ``weights_out``) and the module names
    of ``transformers`` 5 (``attention.{q,k,v,o}_proj``, SwiGLU ``gate_proj`` / ``up_proj`` /
    ``down_proj``): q, k, v are concatenated into ``attn.qkv``; gate and up into ``mlp.w12``
    (gate first, the official ``chunk`` order). Keys it does not know are kept as they are (the
    strict load then reports them).
    """
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    gate: dict[tuple[str, str], dict[str, Tensor]] = {}
    for k, v in sd.items():
        mt = _HF_QKV.match(k)
        if mt:
            part = (mt.group(2) or mt.group(3))[0]
            qkv.setdefault((mt.group(1), mt.group(4)), {})[part] = v
            continue
        mt = _HF_GATE.match(k)
        if mt:
            gate.setdefault((mt.group(1), mt.group(3)), {})[mt.group(2)] = v
            continue
        out[rename_key(k, _HF_RULES)] = v
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    for (i, kind), parts in gate.items():
        out[f"blocks.{i}.mlp.w12.{kind}"] = torch.cat([parts["gate"], parts["up"]], 0)
    if "mask_token" in out and out["mask_token"].ndim == 3:  # some exports keep [1, 1, C]
        out["mask_token"] = out["mask_token"].reshape(1, -1)
    return out


# --------------------------------------------------------------------------- recognition
#: defaults of ``transformers`` 5 ``Dinov2Config`` / ``Dinov2WithRegistersConfig``, for keys a
#: ``config.json`` leaves out
DINOV2_CONFIG_DEFAULTS: dict[str, dict[str, object]] = {
    "dinov2": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                   image_size=224, patch_size=14, num_channels=3, qkv_bias=True,
                   use_swiglu_ffn=False),
    "dinov2_with_registers": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                  mlp_ratio=4, image_size=224, patch_size=16, num_channels=3,
                                  qkv_bias=True, use_swiglu_ffn=False, num_register_tokens=4),
}


def even_taps(depth: int, n: int = 4) -> tuple[int, ...]:
    """``n`` block indices spread evenly over ``depth`` blocks, the last one last (``depth=12``:
    ``(2, 5, 8, 11)``, the spec's ViT-S/B taps)."""
    if depth <= n:
        return tuple(range(depth))
    return tuple(round((k + 1) * depth / n) - 1 for k in range(n))


def _match(found: Mapping[str, object], key_format: str, origin: str,
           registers: int) -> DetectedBackbone:
    """The closest published model with (``_reg4``) or without registers; a depth that the
    model's taps do not fit gets :func:`even_taps`."""
    table = FAMILY.published()
    cands = [n for n in table if ("_reg4" in n) == bool(registers)]
    got = FAMILY.match(found, key_format, origin, cands)
    depth = got.overrides.get("depth")
    if depth is not None and max(table[got.name]["out_indices"]) >= depth:
        got = replace(got, overrides={**got.overrides, "out_indices": even_taps(depth)})
    return got


def recognise_hf_config(model_type: str, c: Mapping[str, object]) -> DetectedBackbone:
    """Our DINOv2 for a Hugging Face ``dinov2`` / ``dinov2_with_registers`` config
    (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``image_size``,
    ``patch_size``, ``use_swiglu_ffn``, ``num_register_tokens``; completed with
    :data:`DINOV2_CONFIG_DEFAULTS`).

    Raises:
        CheckpointError: ``qkv_bias`` false, or a non-square ``image_size``.
    """
    if not c["qkv_bias"]:
        raise CheckpointError("DINOv2 config: qkv_bias false is not supported")
    img = as_pair(c["image_size"])
    regs = int(c.get("num_register_tokens", 0)) if model_type == "dinov2_with_registers" else 0
    found = dict(embed_dim=c["hidden_size"], depth=c["num_hidden_layers"],
                 num_heads=c["num_attention_heads"], patch_size=c["patch_size"],
                 img_size=img[0], mlp_ratio=float(c["mlp_ratio"]),
                 ffn="swiglu" if c["use_swiglu_ffn"] else "mlp",
                 num_register_tokens=regs, in_chans=c["num_channels"])
    if img[0] != img[1]:
        raise CheckpointError(f"DINOv2 config: square image_size expected, got {c['image_size']}")
    return _match(found, "hugging face", "config.json", regs)


def recognise_state_dict(sd: Mapping[str, Tensor]) -> DetectedBackbone | None:
    """Our DINOv2 for an official ``dinov2_vit*14[_reg4]_pretrain.pth`` or a Hugging Face
    Dinov2 state dict (``Dinov2ForImageClassification``: under ``dinov2.``, with a
    ``classifier``), or ``None``.

    Read from the weights: depth, width, patch size, pretraining grid, FFN type, registers,
    input channels. The heads are not stored: ``C // 64`` (as all four models).

    Raises:
        CheckpointError: a SwiGLU width our ViT-g rule does not build.
    """
    top = top_level_names(sd)
    d = under_prefix(sd, "dinov2.") if "dinov2" in top and top <= {"dinov2", "classifier"} else (
        dict(sd))
    if "embeddings.cls_token" in d and any(k.startswith("encoder.layer.") for k in d):
        fmt, enc = "hugging face", convert_hf_dinov2(d)
    elif "cls_token" in sd and "blocks.0.attn.qkv.weight" in sd and "blocks.0.ls1.gamma" in sd:
        fmt, enc = "official", {k: v for k, v in sd.items() if not k.startswith("head.")}
    else:
        return None
    w = enc["patch_embed.proj.weight"]
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    grid = math.isqrt(int(enc["pos_embed"].shape[1]) - 1)
    regs = int(enc["register_tokens"].shape[1]) if "register_tokens" in enc else 0
    swiglu = "blocks.0.mlp.w12.weight" in enc
    mlp = 4.0 if swiglu else enc["blocks.0.mlp.fc1.weight"].shape[0] / dim
    if swiglu:
        hidden = (int(int(dim * 4.0) * 2 / 3) + 7) // 8 * 8
        if int(enc["blocks.0.mlp.w3.weight"].shape[1]) != hidden:
            raise CheckpointError(f"DINOv2 SwiGLU width {enc['blocks.0.mlp.w3.weight'].shape[1]} "
                                  f"is not the ViT-g rule's {hidden} for width {dim}")
    found = dict(embed_dim=dim, depth=count_indices(enc, r"^blocks\.(\d+)\.norm1\.weight$"),
                 num_heads=divisor_heads(dim, dim // 64), patch_size=patch,
                 img_size=grid * patch, mlp_ratio=float(mlp),
                 ffn="swiglu" if swiglu else "mlp", num_register_tokens=regs,
                 in_chans=int(w.shape[1]))
    return _match(found, fmt, "state dict", regs)


# --------------------------------------------------------------------------- registration
_DINO = "facebookresearch/dinov2 (LVD-142M, distilled S/B/L)"

#: the official pretrained files (``dl.fbaipublicfiles.com``), also on the hub as
#: ``transformers`` conversions (renamed back by :func:`checkpoint_filter_fn` when fetched)
PRETRAINED: tuple[PretrainedWeights, ...] = tuple(
    PretrainedWeights(
        f"dinov2_vit{v}14{reg}", f"dinov2_vit{v}14{reg}", ("mobanet",),
        _DINO + (", registers" if reg else ""), f"dinov2_vit{v}14{reg}_pretrain.pth",
        f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{v}14/dinov2_vit{v}14{reg}_pretrain.pth",
        mb, hf_repo=f"facebook/dinov2-{'with-registers-' if reg else ''}{hub}",
        hf_filename="model.safetensors", hf_format="transformers")
    for reg in ("", "_reg4")
    for v, hub, mb in (("s", "small", 88), ("b", "base", 346), ("l", "large", 1218),
                       ("g", "giant", 4546)))


def _tiny(name: str) -> dict:
    """:data:`DINOV2_TINY`, with registers / SwiGLU where the variant has them."""
    tiny = dict(DINOV2_TINY)
    if "reg4" in name:
        tiny["num_register_tokens"] = 2
    if "vitg" in name:
        tiny["ffn"] = "swiglu"
    return tiny


register_variants(DinoVisionTransformer, DINOV2_SETTINGS,
                  "Build {name} (official hub settings, overridable by keyword).", tiny=_tiny)

FAMILY = register_family(BackboneFamily(
    "dinov2", DinoVisionTransformer, DINOV2_SETTINGS, recognise_state_dict=recognise_state_dict,
    hf_configs=DINOV2_CONFIG_DEFAULTS, recognise_hf_config=recognise_hf_config))
register_pretrained(*PRETRAINED)
