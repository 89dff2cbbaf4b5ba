"""FeatureCross: StitchFusion's per-stage fusion of the modality streams ("+FFMs").

Source: Bingyu Li et al., "StitchFusion", arXiv 2408.01343, Sec. 4 (MultiAdapter combined with
feature fusion modules, "+FFMs" rows of the MCubeS / MFNet / FMB tables) and the official code,
``semseg/models/backbones/stitchfusion.py`` of GitHub ``LiBingyu01/StitchFusion`` (classes
``FeatureCross``, ``MixFFN``, ``CustomPWConv``, ``CustomDWConv``, ``ChannelAttentionBlock``).

For ``M`` stream maps of one stage (tokens ``x_m: [B, N, C]``, ``N = H * W``)::

    y   = proj(concat_m x_m)                     # Linear(M * C -> C) per token
    out = MixFFN(y) + ChannelAttention(y)        # [B, N, C] -> map [B, C, H, W]

    MixFFN(y) = fc2(GELU(BN(pw2(z + dw3(z) + dw5(z) + dw7(z)))))
                with z = BN(pw1(fc1(y)))          # fc1/fc2 C -> C, pw 1x1 convs, dw depthwise
    ChannelAttention(y) = y * sigmoid(W2 ReLU(W1 mean_N(y)))   # squeeze-excitation, C/16

The concatenation order is the stream order (the config's modality order): channel block ``m``
of ``proj``'s input belongs to stream ``m``, as in the release's ``torch.cat(x, dim=1)``.

Key names (ours -> release ``backbone.feature_cross.*``):

* ``proj``                      <- ``liner_fusion_layers.{stage}`` (sic)
* ``mix_ffn.{fc1, pwconv1.pwconv, pwconv1.bn, dwconv3.dwconv, dwconv5.dwconv,
  dwconv7.dwconv, pwconv2.pwconv, pwconv2.bn, fc2}`` <- ``mix_ffn.{stage}.*`` (same names)
* ``channel_attn.fc.0``, ``channel_attn.fc.2`` (no bias) <- ``channel_attns.{stage}.fc.*``

Differences from the release (same function and parameters): the Mix-FFN stays in the map
layout between its convolutions instead of converting tokens <-> maps around every layer; its
1x1 convolutions run as per-pixel linears and ``z + dw3(z) + dw5(z) + dw7(z)`` as one 7x7
depthwise convolution with the summed kernels; the concatenation is one permute-copy of the
batched streams.

Initialisation follows what the release effectively uses (its constructors' Kaiming inits are
overwritten by the model-level ``_init_weights``): truncated-normal(0.02) linears with zero
bias; convolutions normal with std ``sqrt(2 / (k * k * C_out))`` (the release does not divide
by ``groups`` for the depthwise ones) and zero bias; BatchNorm weight 1, bias 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ....errors import ConfigError
from ...export_ops import onnx_tracing
from ...layers import check_stream_indices

__all__ = [
    "ChannelAttention",
    "DWConvK",
    "FeatureCrossStage",
    "MultiScaleMixFFN",
    "PWConvBN",
    "release_init",
]


def release_init(module: nn.Module) -> None:
    """The release's model-level ``_init_weights`` for the modules of FeatureCross."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PWConvBN(nn.Module):
    """1x1 convolution (with bias) + BatchNorm on a map ``[B, C, H, W]`` (release
    ``CustomPWConv``). Keys ``pwconv`` (a ``Conv2d(C, C, 1)``, as released), ``bn``.

    The 1x1 convolution runs as a per-pixel ``F.linear`` on the channels-last view (the same
    function; CPU convolution kernels are slower for 1x1 on channels-last maps)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pwconv = nn.Conv2d(dim, dim, 1)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        w = self.pwconv.weight
        y = F.linear(x.permute(0, 2, 3, 1), w.view(w.shape[0], w.shape[1]), self.pwconv.bias)
        return self.bn(y.permute(0, 3, 1, 2))


class DWConvK(nn.Module):
    """Depthwise ``k x k`` convolution, "same" padding, with bias (release ``CustomDWConv``).
    Key ``dwconv``. ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel, 1, padding=kernel // 2, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.dwconv(x)


class MultiScaleMixFFN(nn.Module):
    """FeatureCross's Mix-FFN (release class ``MixFFN(c1, c2)``, hidden width ``c2``).

    ``forward(x [B, N, C_in], H, W) -> [B, N, C_in]``::

        z = pwconv1(fc1(x))                       # to the map layout, 1x1 conv + BN
        out = fc2(GELU(pwconv2(z + dwconv3(z) + dwconv5(z) + dwconv7(z))))

    The three depthwise convolutions and the identity are linear with the same "same"
    padding, so they run as one depthwise 7x7 convolution with the summed kernels
    (:meth:`combined_kernel`; same parameters and function, one kernel call instead of
    three plus two additions).
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.fc1 = nn.Linear(dim, hidden)
        self.pwconv1 = PWConvBN(hidden)
        self.dwconv3 = DWConvK(hidden, 3)
        self.dwconv5 = DWConvK(hidden, 5)
        self.dwconv7 = DWConvK(hidden, 7)
        self.pwconv2 = PWConvBN(hidden)
        self.fc2 = nn.Linear(hidden, dim)
        identity = torch.zeros(1, 1, 7, 7)
        identity[..., 3, 3] = 1.0
        self.register_buffer("identity7", identity, persistent=False)  # not in state_dict

    def combined_kernel(self) -> tuple[Tensor, Tensor]:
        """``z + dw3(z) + dw5(z) + dw7(z)`` as one depthwise 7x7 convolution: the 3x3 and 5x5
        kernels zero-padded to 7x7, summed with the 7x7 one, plus 1 at the centre (the
        identity); the biases summed. Returns ``(weight [C, 1, 7, 7], bias [C])``."""
        w = (
            self.dwconv7.dwconv.weight
            + F.pad(self.dwconv5.dwconv.weight, (1, 1, 1, 1))
            + F.pad(self.dwconv3.dwconv.weight, (2, 2, 2, 2))
            + self.identity7
        )
        b = self.dwconv3.dwconv.bias + self.dwconv5.dwconv.bias + self.dwconv7.dwconv.bias
        return w, b

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        b, n, _ = x.shape
        z = self.fc1(x)
        c = z.shape[-1]
        z = self.pwconv1(z.transpose(1, 2).reshape(b, c, H, W))  # channels-last view in
        w, bias = self.combined_kernel()  # == z + dwconv3(z) + dwconv5(z) + dwconv7(z)
        if onnx_tracing():  # the TorchScript exporter needs a static kernel shape
            w = w.reshape(self.fc1.out_features, 1, 7, 7)
        z = F.conv2d(z, w, bias, padding=3, groups=c)
        z = F.gelu(self.pwconv2(z))
        return self.fc2(z.flatten(2).transpose(1, 2))


class ChannelAttention(nn.Module):
    """Squeeze-excitation on tokens (release ``ChannelAttentionBlock``).

    ``forward(x [B, N, C]) -> x * sigmoid(fc(mean_N x))``; ``fc`` = ``Linear(C, C // r,
    bias=False)``, ReLU, ``Linear(C // r, C, bias=False)``, Sigmoid (keys ``fc.0``, ``fc.2``).
    """

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = dim // reduction
        if hidden < 1:
            raise ConfigError(f"ChannelAttention needs dim >= reduction ({reduction}), got {dim}")
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, dim, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x.mean(dim=1)).unsqueeze(1)


class FeatureCrossStage(nn.Module):
    """FeatureCross of one stage: ``M`` stream token maps -> one fused map.

    Args:
        dim: stage channels ``C``.
        num_streams: ``M`` (1..8).
        reduction: channel-attention reduction (16).

    ``forward(x [R, B, N, C], H, W, streams=None, present=None) -> [B, C, H, W]`` (a
    channels-last view); ``R = M`` unless ``streams`` names a subset.

    Missing streams (ours; the release has no such case): ``proj`` is a sum of per-stream
    linear maps, ``proj(concat_m x_m) = bias + sum_m W_m x_m`` (``W_m``: the ``C`` input columns
    of stream ``m``), so a missing stream is skipped by leaving its term out: the streams not
    in ``streams`` (absent from the whole batch) drop their columns of ``proj``, and a row whose
    ``present`` entry is false contributes zeros for that sample. The Mix-FFN and the channel
    attention then run on that projection, as with every stream present. Leaving the term out
    is what StitchFusion's sum fusion does for a missing stream, it is defined for any
    non-empty subset and per sample, and it gives the same result whether a stream is absent
    or present-flagged false.
    """

    def __init__(self, dim: int, num_streams: int, reduction: int = 16) -> None:
        super().__init__()
        self.dim = dim
        self.num_streams = num_streams
        self.proj = nn.Linear(dim * num_streams, dim)
        self.mix_ffn = MultiScaleMixFFN(dim, dim)
        self.channel_attn = ChannelAttention(dim, reduction)
        release_init(self)

    def forward(
        self,
        x: Tensor,
        H: int,
        W: int,
        streams: list[int] | None = None,
        present: Tensor | None = None,
    ) -> Tensor:
        """Fuse the stream tokens.

        Args:
            x: ``[R, B, N, C]`` tokens, ``N = H * W``; row ``r`` is stream ``streams[r]``.
            H, W: the stage's token grid.
            streams: the streams the rows are, increasing, from ``0..M-1`` (``None`` = all).
            present: ``bool[B, R]`` or ``None`` (all true); false = the row is missing for
                that sample (its tokens are not read).

        Returns:
            ``[B, C, H, W]``.

        Raises:
            ValueError: ``x`` not ``[R, B, N, C]`` for ``R`` = the number of ``streams``, bad
                ``streams`` or ``present``.
        """
        r, b, n, c = x.shape
        expected = self.num_streams if streams is None else len(streams)
        if r != expected or c != self.dim:
            raise ValueError(
                f"FeatureCrossStage expects [{expected}, B, N, {self.dim}], "
                f"got {tuple(x.shape)}"
            )
        weight = self.proj.weight
        if streams is not None and list(streams) != list(range(self.num_streams)):
            streams = check_stream_indices(streams, self.num_streams)
            # keep the input columns of the given streams: [C, M * C] -> [C, R * C]
            weight = weight.view(c, self.num_streams, c)[:, list(streams)].reshape(c, r * c)
        if present is not None:
            if tuple(present.shape) != (b, r):
                raise ValueError(f"present must be bool[{b}, {r}], got {tuple(present.shape)}")
            if not bool(present.all()):
                x = x * present.t().to(x.dtype).view(r, b, 1, 1)
        # concat over streams along channels: [B, N, R * C] with block r = row r
        cat = x[0] if r == 1 else x.permute(1, 2, 0, 3).reshape(b, n, r * c)
        y = F.linear(cat, weight, self.proj.bias)  # == self.proj(cat) with every stream
        y = self.mix_ffn(y, H, W) + self.channel_attn(y)
        return y.transpose(1, 2).reshape(b, c, H, W)
