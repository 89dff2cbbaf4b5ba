"""Bottleneck adapters and StitchFusion's MultiAdapter (cross-modal adapters between streams).

Source: Bingyu Li et al., "StitchFusion: Weaving Any Visual Modalities to Enhance Multimodal
Semantic Segmentation", arXiv 2408.01343, Sec. 3.2-3.3 (MultiAdapter, Fig. 3 densities), and
the official code, ``semseg/models/backbones/stitchfusion.py`` and
``stitchfusion_with_tips_you_can_copy.py`` of GitHub ``LiBingyu01/StitchFusion`` (classes
``Bi_direct_adapter``, ``Block_every_one`` / ``Block_every_one_2`` (pairwise),
``Block_every_two`` (directional), ``Block_shared`` / ``Block_every_one_1`` (shared)).

:class:`BottleneckAdapter` ``A(x) = up(Dropout(GELU(mid(down(x)))))`` with ``down: dim -> 8``,
``mid: 8 -> 8``, ``up: 8 -> dim`` (biases everywhere): ``17 * dim + 80`` parameters for the
default hidden width 8. Parameter names are the release's ``adapter_down``, ``adapter_mid``,
``adapter_up``.

:class:`MultiAdapter` holds the adapters of one transformer block for ``M`` modality streams and
applies them after the block's attention residual (``kind="att"``, input normalised by the
block's ``norm1``) and after its MLP residual (``kind="mlp"``, ``norm2``). Densities:

==============  ================================  ==========================================
density         adapters per block and kind        release key names (1-based streams)
==============  ================================  ==========================================
``shared``      1 (all pairs, both directions)     ``adap_t`` (att), ``adap2_t`` (mlp)
``pairwise``    ``M (M - 1) / 2`` (unordered pair) ``adap_t_att{a}{b}``, ``adap_t_mlp{a}{b}``,
                                                   ``a < b``; the same adapter both ways
``directional`` ``M (M - 1)`` (ordered pair)       ``adap_t_att{a}{b}``, ``adap_t_mlp{a}{b}``,
                                                   ``a != b``: source ``a`` -> target ``b``
==============  ================================  ==========================================

Our module names are exactly those names, so a block's adapters load from the release's
``backbone.block{i}.{j}.<name>.*`` keys by moving the prefix only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ....errors import ConfigError
from ...export_ops import block_diag
from ...layers import check_stream_indices
from ...peft.base import PeftModule

__all__ = ["ADAPTER_DENSITIES", "BottleneckAdapter", "MultiAdapter", "adapter_param_count"]

#: accepted densities of :class:`MultiAdapter`
ADAPTER_DENSITIES = ("shared", "pairwise", "directional")


def adapter_param_count(dim: int, hidden: int = 8) -> int:
    """Parameters of one :class:`BottleneckAdapter`: ``17 * dim + 80`` for ``hidden = 8``."""
    return (dim * hidden + hidden) + (hidden * hidden + hidden) + (hidden * dim + dim)


class BottleneckAdapter(PeftModule):
    """``A(x) = up(Dropout(GELU(mid(down(x)))))``, ``[..., dim] -> [..., dim]``.

    Release class ``Bi_direct_adapter``: ``adapter_down`` (dim -> hidden), ``adapter_mid``
    (hidden -> hidden), GELU, ``Dropout(0.1)``, ``adapter_up`` (hidden -> dim).

    Initialisation: the release's constructor zeroes all weights, but the model-level
    ``self.apply(self._init_weights)`` (``semseg/models/stitchfusion.py``) runs afterwards and
    overwrites them with truncated-normal(0.02) weights and zero biases; that is what the
    published runs trained from, and what we do. (An all-zero bottleneck would receive a
    gradient only on ``adapter_up.bias``.)
    """

    def __init__(self, dim: int, hidden: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.adapter_down = nn.Linear(dim, hidden)
        self.adapter_mid = nn.Linear(hidden, hidden)
        self.adapter_up = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for lin in (self.adapter_down, self.adapter_mid, self.adapter_up):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.adapter_mid(self.adapter_down(x)))
        return self.adapter_up(self.dropout(h))


def drop_path_scale(drop_path: Callable[[Tensor], Tensor], n: int, like: Tensor) -> Tensor | None:
    """The per-sample factor ``mask / keep`` that ``drop_path`` would multiply ``n`` samples by.

    Returns a ``[n, 1, 1]`` tensor (dtype and device of ``like``) drawn exactly as
    :class:`~fusionseg.models.layers.DropPath` draws its mask (same RNG use), or ``None``
    when ``drop_path`` is the identity (``nn.Identity``, ``p == 0`` or eval mode). Any other
    callable is probed by applying it to ones, which gives the same factor.
    """
    if isinstance(drop_path, nn.Identity):
        return None
    p = getattr(drop_path, "p", None)
    if p is not None and (p == 0.0 or not getattr(drop_path, "training", True)):
        return None
    return drop_path(like.new_ones((n, 1, 1)))


class MultiAdapter(PeftModule):
    """Cross-stream adapters of one transformer block (StitchFusion MultiAdapter).

    Args:
        dim: token channels ``C`` of the block.
        num_streams: ``M`` modality streams (1..8; with ``M = 1`` there is nothing to adapt
            and no adapter is created).
        density: ``"shared"``, ``"pairwise"`` or ``"directional"`` (see the module doc).
        hidden: bottleneck width (8).
        dropout: dropout inside each adapter (0.1).
        recompute: in training, keep only each source stream for backward and recompute
            ``LN`` and the adapters there (:func:`torch.utils.checkpoint.checkpoint`, RNG state
            preserved so dropout masks repeat): saves the ``[B, N, C]`` LayerNorm output per
            source and the adapters' activations for a few cheap recomputed ops.

    :meth:`forward` ``(x, kind, norm, drop_path)`` applies, for streams ``x_1..x_M``
    (``x: [M, B, N, C]``), with ``LN`` = ``norm`` and ``DP`` = ``drop_path``::

        for i in 1..M:                 # sequential over source streams
            s = LN(x_i)                # x_i already holds the contributions of sources < i
            for j != i:
                x_j = x_j + DP(A_ij(s))

    **Update order.** This is the released code's order and it is deliberate to keep it: in
    ``Block_every_one.forward`` the list ``outputs_orig_beforeAtt = outputs`` aliases the list
    that the loop updates, so the "original" source ``x_ori = outputs_orig_beforeAtt[i]`` is
    the stream *after* the adapter contributions of the streams before it. Stream ``i``
    therefore sends a function of ``x_i + sum_{k<i} A_ki(...)``, not of the plain
    post-attention ``x_i``. The published checkpoints were trained with exactly this
    computation, so loading them requires it (a "simultaneous" update gives different logits).

    In training, each (source, target) application draws its own dropout and drop-path masks,
    as in the release; in eval a shared adapter's output for one source is computed once and
    added to every target (identical result). The ``M - 1`` adapters of one source run as one
    batched computation (see :meth:`_send`) and the targets are updated with one
    fused multiply-add per target (``x_j + scale * y_j``: the drop-path factor folded in), so
    the cost grows with the number of sources, not of pairs, in kernels.

    **Missing streams** (ours; the release always has every stream): ``forward``'s ``streams``
    runs a subset of the ``M`` streams, using only the adapters among them (a missing
    modality of the whole batch is skipped); ``present`` zeroes a row's messages for the
    samples that miss it, which gives the other rows the same values as skipping it.
    """

    def __init__(
        self,
        dim: int,
        num_streams: int,
        density: str = "pairwise",
        hidden: int = 8,
        dropout: float = 0.1,
        recompute: bool = True,
    ) -> None:
        super().__init__()
        if density not in ADAPTER_DENSITIES:
            raise ConfigError(
                f"unknown adapter density {density!r}; choose one of {', '.join(ADAPTER_DENSITIES)}"
            )
        if not 1 <= num_streams <= 8:
            raise ConfigError(f"MultiAdapter supports 1..8 streams, got {num_streams}")
        self.dim = dim
        self.num_streams = num_streams
        self.density = density
        self.hidden = hidden
        self.p_dropout = dropout
        self.recompute = recompute
        m = num_streams

        def make() -> BottleneckAdapter:
            return BottleneckAdapter(dim, hidden=hidden, dropout=dropout)

        if m < 2:
            return
        if density == "shared":
            self.adap_t = make()
            self.adap2_t = make()
        else:
            for a in range(m):
                for b in range(m):
                    if a == b or (density == "pairwise" and a > b):
                        continue
                    setattr(self, f"adap_t_att{a + 1}{b + 1}", make())
                    setattr(self, f"adap_t_mlp{a + 1}{b + 1}", make())

    def adapter(self, kind: str, src: int, dst: int) -> BottleneckAdapter:
        """The adapter carrying stream ``src`` to stream ``dst`` (0-based) after ``kind``
        (``"att"`` or ``"mlp"``)."""
        if self.density == "shared":
            return self.adap_t if kind == "att" else self.adap2_t
        a, b = (src, dst) if self.density == "directional" or src < dst else (dst, src)
        return getattr(self, f"adap_t_{kind}{a + 1}{b + 1}")

    def forward(
        self,
        x: Tensor,
        kind: str,
        norm: Callable[[Tensor], Tensor],
        drop_path: Callable[[Tensor], Tensor],
        streams: Sequence[int] | None = None,
        present: Tensor | None = None,
    ) -> Tensor:
        """Mix the streams.

        Args:
            x: stream tokens ``[R, B, N, C]`` (after the block's attention or MLP residual),
                row ``r`` = stream ``streams[r]``.
            kind: ``"att"`` (after attention; ``norm`` = the block's ``norm1``) or ``"mlp"``
                (after the Mix-FFN; ``norm`` = ``norm2``).
            norm: the block's LayerNorm applied to the source stream.
            drop_path: the block's stochastic-depth module.
            streams: which of the ``M`` streams the rows of ``x`` are, strictly increasing
                (``None`` = all, ``R = M``). A stream left out is *skipped*: it neither sends
                nor receives, so only the adapters among the given streams run, in the same
                sequential source order (a missing modality of the whole batch).
            present: ``bool[B, R]`` or ``None`` (all true): where false, the row's messages to
                the other rows are zeroed for that sample (it still receives; a sample missing
                a modality in a mixed batch). With ``present`` false exactly for the samples
                and rows left out by ``streams``, the other rows get the same values as with
                those streams skipped.

        Returns:
            ``[R, B, N, C]``: ``x`` plus the adapter contributions (a new tensor).

        Raises:
            ValueError: ``streams`` not increasing indices below ``M``, or not ``R`` of them;
                ``present`` not ``[B, R]``.
        """
        r = x.shape[0]
        if streams is None:
            if r != self.num_streams:
                raise ValueError(f"MultiAdapter built for {self.num_streams} streams, got {r}")
            streams = range(r)
        else:
            streams = check_stream_indices(streams, self.num_streams)
            if len(streams) != r:
                raise ValueError(f"x has {r} stream rows but streams names {len(streams)}")
        if r < 2:
            return x
        _, b, n, c = x.shape
        if present is not None and tuple(present.shape) != (b, r):
            raise ValueError(f"present must be bool[{b}, {r}], got {tuple(present.shape)}")
        recompute = self.recompute and self.training and torch.is_grad_enabled()
        rows = list(x.unbind(0))  # views; each update below writes one new [B, N, C] row
        for i in range(r):
            targets = [j for j in range(r) if j != i]
            dsts = [streams[j] for j in targets]
            if recompute:
                y = checkpoint(self._send, kind, streams[i], dsts, rows[i], norm,
                               use_reentrant=False)
            else:
                y = self._send(kind, streams[i], dsts, rows[i], norm)
            # Per-(target, sample) factor: the drop-path mask (per target and sample, as the
            # release's separate calls draw it) times ``present`` (no message from a gap).
            scale = None
            if self.training:
                scale = drop_path_scale(drop_path, (r - 1) * b, y)
                scale = None if scale is None else scale.view(r - 1, b, 1, 1)
            if present is not None and not bool(present[:, i].all()):
                gap = present[:, i].to(y.dtype).view(1, b, 1, 1)
                scale = gap if scale is None else scale * gap
            for k, j in enumerate(targets):
                yk = y[min(k, y.shape[0] - 1)]  # a shared adapter in eval: one output for all
                if scale is None:
                    rows[j] = rows[j] + yk
                else:  # one row of factors when only ``present`` applies
                    rows[j] = torch.addcmul(rows[j], yk, scale[min(k, scale.shape[0] - 1)])
        return torch.stack(rows)

    def _send(
        self, kind: str, i: int, targets: Sequence[int], s: Tensor,
        norm: Callable[[Tensor], Tensor],
    ) -> Tensor:
        """Contributions ``A_ij(norm(s))`` of source stream ``i`` (tokens ``s: [B, N, C]``) to
        the streams ``j`` in ``targets`` (in order): ``[len(targets), B, N, C]``
        (``[1, B, N, C]`` for a shared adapter in eval, to be broadcast).

        The adapters run batched: one ``Linear(C -> K * h)`` of the stacked ``adapter_down``
        weights, a block-diagonal ``adapter_mid``, GELU, dropout (independent per target) and
        a batched ``adapter_up``; the same function as applying each
        :class:`BottleneckAdapter` in turn.
        """
        src = norm(s)
        if self.density == "shared" and not self.training:
            return self.adapter(kind, i, targets[0])(src).unsqueeze(0)
        ads = [self.adapter(kind, i, j) for j in targets]
        if len(ads) == 1:
            return ads[0](src).unsqueeze(0)
        k, hd = len(ads), self.hidden
        h = F.linear(
            src,
            torch.cat([a.adapter_down.weight for a in ads]),
            torch.cat([a.adapter_down.bias for a in ads]),
        )  # [B, N, K * h]
        h = F.linear(
            h,
            block_diag(*[a.adapter_mid.weight for a in ads]),  # export-safe torch.block_diag
            torch.cat([a.adapter_mid.bias for a in ads]),
        )
        h = F.dropout(F.gelu(h), self.p_dropout, self.training)
        b, n, _ = h.shape
        h = h.view(b * n, k, hd).transpose(0, 1)  # [K, B * N, h]
        w_up = torch.stack([a.adapter_up.weight.t() for a in ads])  # [K, h, C]
        b_up = torch.stack([a.adapter_up.bias for a in ads]).unsqueeze(1)  # [K, 1, C]
        return torch.baddbmm(b_up, h, w_up).view(k, b, n, -1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, streams={self.num_streams}, density={self.density!r}"
