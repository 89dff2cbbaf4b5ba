"""SAM 2 / 2.1 FPN neck of the image encoder, and its sine position encoding.

Our own implementation of the official ``FpnNeck`` (``facebookresearch/sam2``,
``sam2/modeling/backbones/image_encoder.py``) with the SAM 2.1 config settings
(``sam2/configs/sam2.1/sam2.1_hiera_*.yaml``, ``image_encoder.neck``): ``d_model`` 256, 1 x 1
lateral convolutions, top-down (nearest, x2) sums only into levels 2 and 3 (the two lowest
resolutions; the higher ones are lateral-only), no output convolutions. Keys are the official
ones, so the ``image_encoder.neck.*`` keys of an official ``sam2.1_hiera_*.pt`` load strictly::

    convs.{i}.conv.weight [256, C_i, 1, 1] / .bias     i = 0: the LOWEST resolution (8C)

Hugging Face ``facebook/sam2.1-hiera-*`` files (``vision_encoder.neck.convs.{i}.weight``;
``Sam2VisionModel``: ``neck.convs.{i}.*``) convert through :func:`checkpoint_filter_fn`.

:func:`sine_position_encoding` is the parameter-free ``PositionEmbeddingSine`` of
``sam2/modeling/position_encoding.py`` (``num_pos_feats`` 256, normalised, temperature 10000)
that SAM 2 adds to the neck outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ....errors import ConfigError
from ...backbones.base import strip_prefixes
from ...weights import load_state_dict_strict, rename_key
from .pretrained import PretrainedSource, read_pretrained

__all__ = ["Sam2FpnNeck", "checkpoint_filter_fn", "sine_position_encoding"]


def sine_position_encoding(x: Tensor, num_pos_feats: int = 256, temperature: float = 10000.0,
                           normalize: bool = True, scale: float | None = None) -> Tensor:
    """2-D sine / cosine position encoding of a map's grid (official ``PositionEmbeddingSine``,
    DETR style).

    Args:
        x: ``[B, *, H, W]``; only its batch, height, width, device are used.
        num_pos_feats: output channels (even): the first half encodes y, the second x.
        temperature: frequency base.
        normalize: positions ``1..H`` / ``1..W`` divided by the last one (+1e-6) and scaled
            by ``scale`` (default ``2 pi``), as SAM 2 uses it.
        scale: see ``normalize``; only allowed with ``normalize=True``.

    Returns:
        ``[B, num_pos_feats, H, W]`` float32 (cast it to the map's dtype as the official neck
        does).

    Raises:
        ValueError: odd ``num_pos_feats``, or ``scale`` without ``normalize``.
    """
    if num_pos_feats % 2:
        raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
    if scale is not None and not normalize:
        raise ValueError("normalize must be True when scale is given")
    scale = 2 * math.pi if scale is None else scale
    b, (h, w), dev = x.shape[0], x.shape[-2:], x.device
    npf = num_pos_feats // 2
    y = torch.arange(1, h + 1, dtype=torch.float32, device=dev)
    xs = torch.arange(1, w + 1, dtype=torch.float32, device=dev)
    if normalize:
        y = y / (y[-1:] + 1e-6) * scale
        xs = xs / (xs[-1:] + 1e-6) * scale
    dim_t = torch.arange(npf, dtype=torch.float32, device=dev)
    dim_t = temperature ** (2 * (dim_t // 2) / npf)

    def enc(p: Tensor) -> Tensor:  # [L] -> [L, npf], sin on even, cos on odd channels
        p = p[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = enc(y)[:, None, :].expand(h, w, npf)
    pos_x = enc(xs)[None, :, :].expand(h, w, npf)
    pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)
    return pos[None].expand(b, -1, -1, -1)


class _Lateral(nn.Module):
    """Holds the lateral ``conv`` (key ``convs.{i}.conv``, the official ``nn.Sequential``
    with one module named ``conv``)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


_HF_RULES = ((r"^convs\.(\d+)\.(weight|bias)$", r"convs.\1.conv.\2"),)


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor],
                         model: nn.Module | None = None) -> dict[str, Tensor]:
    """Official or Hugging Face SAM 2 / 2.1 files -> :class:`Sam2FpnNeck` keys.

    A DDP ``module.`` prefix on every key is stripped; the keys under the first of
    ``image_encoder.neck.`` (official ``sam2.1_hiera_*.pt``), ``vision_encoder.neck.`` (HF
    ``Sam2Model``), ``neck.`` (official ``ImageEncoder`` / HF ``Sam2VisionModel``) that any key
    carries are taken (prefix stripped; everything else dropped); HF's ``convs.{i}.weight``
    become ``convs.{i}.conv.weight``. Our own state dict comes back unchanged.

    Args:
        state_dict: the file's tensors (a ``{"model": ...}`` nesting already unwrapped).
        model: unused (the renaming does not depend on the neck's settings); accepted for the
            package-wide ``checkpoint_filter_fn(state_dict, model)`` signature.
    """
    sd = strip_prefixes(state_dict, ("module.",), ("convs.",))
    for prefix in ("image_encoder.neck.", "vision_encoder.neck.", "neck."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    return {rename_key(k, _HF_RULES): v for k, v in sd.items()}


class Sam2FpnNeck(nn.Module):
    """SAM 2 FPN neck (official ``FpnNeck``, see the module docstring).

    Args:
        backbone_channel_list: trunk widths, LOWEST resolution first as official (t/s
            ``[768, 384, 192, 96]``, b+ ``[896, 448, 224, 112]``, l ``[1152, 576, 288, 144]``;
            :meth:`from_trunk` reads them off a trunk).
        d_model: output width (256).
        kernel_size, stride, padding: of the lateral convolutions (1, 1, 0).
        fpn_interp_model: top-down upsampling mode (``"nearest"``; ``"bilinear"`` /
            ``"bicubic"`` use ``align_corners=False``).
        fuse_type: ``"sum"`` or ``"avg"`` (sum halved) of lateral and top-down.
        fpn_top_down_levels: output levels (indices into the trunk's outputs, 0 = highest
            resolution) that receive the top-down path (``[2, 3]``); the others are lateral
            only.

    ``forward(feats) -> outs``: ``feats`` the trunk's 4 NCHW maps, HIGHEST resolution first
    (``Hiera.forward``); ``outs`` 4 maps ``[B, d_model, H/s, W/s]``, highest resolution first
    (strides 4, 8, 16, 32), each in the dtype of its lateral convolution's output.

    SAM 2 drops the lowest-resolution level (``ImageEncoder(scalp=1)``: it keeps strides 4, 8,
    16, the last one its "vision_features"); that is the caller's choice here: take
    ``outs[:3]``. Position encodings: :meth:`position_encoding`.

    Departure from the official code: the top-down sum is cast back to the lateral dtype (the
    official one upsamples in float32 and so returns a float32 level 2 under autocast; the
    values are the same in float32). HF's ``Sam2VisionNeck`` casts back the same way.

    Raises:
        ValueError: bad settings; at forward, a wrong number of maps or channels.
    """

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def __init__(
        self,
        backbone_channel_list: Sequence[int] = (768, 384, 192, 96),
        d_model: int = 256,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "nearest",
        fuse_type: str = "sum",
        fpn_top_down_levels: Sequence[int] | None = (2, 3),
    ) -> None:
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ConfigError(f"fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        if fpn_interp_model not in ("nearest", "bilinear", "bicubic"):
            raise ConfigError(f"unknown fpn_interp_model {fpn_interp_model!r}")
        self.backbone_channel_list = [int(c) for c in backbone_channel_list]
        self.d_model = int(d_model)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        n = len(self.backbone_channel_list)
        self.fpn_top_down_levels = (list(range(n)) if fpn_top_down_levels is None
                                    else [int(i) for i in fpn_top_down_levels])
        self.convs = nn.ModuleList(
            _Lateral(nn.Conv2d(c, self.d_model, kernel_size, stride=stride, padding=padding))
            for c in self.backbone_channel_list
        )

    @classmethod
    def from_trunk(cls, trunk: nn.Module, **kwargs) -> Sam2FpnNeck:
        """The neck for a trunk whose ``out_channels`` are highest resolution first (e.g.
        :class:`~fusionseg.models.backbones.hiera.Hiera`); ``kwargs`` as the constructor."""
        return cls(backbone_channel_list=list(reversed(trunk.out_channels)), **kwargs)

    @property
    def out_channels(self) -> list[int]:
        """``[d_model] * 4``."""
        return [self.d_model] * len(self.convs)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Trunk maps (highest resolution first) -> FPN maps (highest resolution first)."""
        n = len(self.convs)
        if len(feats) != n:
            raise ValueError(f"Sam2FpnNeck expects {n} maps, got {len(feats)}")
        outs: list[Tensor | None] = [None] * n
        prev: Tensor | None = None
        for i in range(n - 1, -1, -1):  # lowest resolution first
            x = feats[i]
            want = self.backbone_channel_list[n - 1 - i]
            if x.ndim != 4 or x.shape[1] != want:
                raise ValueError(f"Sam2FpnNeck level {i} expects [B, {want}, H, W], got "
                                 f"{tuple(x.shape)}")
            lateral = self.convs[n - 1 - i](x)
            if i in self.fpn_top_down_levels and prev is not None:
                top = F.interpolate(
                    prev.float(), scale_factor=2.0, mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False)
                prev = (lateral + top).to(lateral.dtype)
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            outs[i] = prev
        return outs  # type: ignore[return-value]

    def position_encoding(self, outs: Sequence[Tensor]) -> list[Tensor]:
        """:func:`sine_position_encoding` (``num_pos_feats = d_model``) of each map, in its
        dtype: ``[B, d_model, H_i, W_i]`` (the official neck's second output)."""
        return [sine_position_encoding(o, self.d_model).to(o.dtype) for o in outs]

    def load_pretrained(self, path: PretrainedSource) -> Sam2FpnNeck:
        """Load the neck of an official or HF SAM 2 / 2.1 file (or a state dict) strictly.

        Args:
            path: a file, Hugging Face folder or catalogue name, or a state dict in memory
                (see :func:`~fusionseg.models.methods.mle_sam.pretrained.read_pretrained`: the
                same rule as :meth:`Sam2SemanticDecoder.load_pretrained
                <fusionseg.models.methods.mle_sam.decoder.Sam2SemanticDecoder.load_pretrained>`);
                its keys go through :func:`checkpoint_filter_fn`, so our own state dict loads
                too.

        Returns:
            ``self``.

        Raises:
            CheckpointError: unreadable file.
            CheckpointMismatchError: missing / unexpected keys or shape mismatches (names
                listed), after :func:`checkpoint_filter_fn`; nothing is loaded then.
        """
        sd, where = read_pretrained(path)
        load_state_dict_strict(self, checkpoint_filter_fn(sd, self), where)
        return self
