"""Export-safe forms of the few operations the TorchScript ONNX exporter cannot translate.

Each function here is the PyTorch operation itself in eager mode (the same call, so outputs
are bit-identical) and switches to an equivalent form only while the TorchScript-based ONNX
exporter (``torch.onnx.export(..., dynamo=False)``) traces the model
(:func:`onnx_tracing`). The modules that need one call it in place of the PyTorch
operation; nothing is replaced process-wide. The ``torch.export``-based exporter
(``dynamo=True``) translates the PyTorch operations themselves and takes the eager path.

============================  ===============================  ==============================
operation                     the TorchScript exporter         used by
============================  ===============================  ==============================
``torch.block_diag``          has no ``aten::block_diag``      StitchFusion's batched
                                                               MultiAdapters
``F.adaptive_avg_pool2d``     fixes the traced input size or   UperNet's pyramid pooling
(output size other than 1)    refuses sizes it does not        (MoBaNet)
                              divide ("input size not
                              accessible")
============================  ===============================  ==============================

Two more cases are handled where they occur, with one line each: a depthwise kernel computed
in forward needs a static shape (StitchFusion's FeatureCross), and a scale factor computed
from traced sizes must be a Python float (DINOv2's position-embedding interpolation).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AdaptiveAvgPool2d", "adaptive_avg_pool2d", "block_diag", "onnx_tracing"]


def onnx_tracing() -> bool:
    """Whether the TorchScript-based ONNX exporter is tracing the model now (``False`` in eager
    mode, under ``torch.export`` and under ``torch.compile``)."""
    return torch.onnx.is_in_onnx_export() and torch.jit.is_tracing()


def block_diag(*blocks: Tensor) -> Tensor:
    """``torch.block_diag(*blocks)``; while :func:`onnx_tracing`, the same matrix built by zero
    padding and concatenation (bit-identical: only copies).

    0-d and 1-d blocks are taken as ``[1, 1]`` and ``[1, n]``, as ``torch.block_diag`` does.

    Raises:
        ValueError: a block with more than 2 dimensions.
    """
    if not onnx_tracing():
        return torch.block_diag(*blocks)
    mats = [b.reshape(1, -1) if b.ndim < 2 else b for b in blocks]
    if any(m.ndim != 2 for m in mats):
        raise ValueError("block_diag takes 0-, 1- or 2-dimensional tensors")
    widths = [int(m.shape[1]) for m in mats]
    total, left, rows = sum(widths), 0, []
    dtype = functools.reduce(torch.promote_types, [m.dtype for m in mats])
    for m, w in zip(mats, widths, strict=True):
        rows.append(F.pad(m.to(dtype), (left, total - left - w)))
        left += w
    return torch.cat(rows, dim=0)


def _pool_matrix(n: int | Tensor, s: int, like: Tensor) -> Tensor:
    """``[s, n]`` averaging matrix of adaptive average pooling from ``n`` to ``s`` cells: row
    ``i`` averages input cells ``floor(i n / s) <= j < ceil((i + 1) n / s)`` (PyTorch's bins,
    ``aten/src/ATen/native/AdaptiveAveragePooling.cpp``, ``start_index`` / ``end_index``).
    Built from tensor ops, so a traced ``n`` stays symbolic in the ONNX graph."""
    i = torch.arange(s, device=like.device)
    start = torch.div(i * n, s, rounding_mode="floor")
    end = torch.div((i + 1) * n + s - 1, s, rounding_mode="floor")
    j = torch.arange(n, device=like.device)
    mask = ((j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])).to(like.dtype)
    return mask / mask.sum(dim=1, keepdim=True)


def adaptive_avg_pool2d(x: Tensor, output_size: int | tuple[int | None, int | None]) -> Tensor:
    """``F.adaptive_avg_pool2d(x, output_size)`` of ``x [B, C, H, W]`` (or ``[C, H, W]``).

    While :func:`onnx_tracing`, an output size other than 1 is computed as two matrix products
    with PyTorch's averaging matrices (:func:`_pool_matrix`): equal up to float rounding, and
    dynamic in ``H, W`` in the exported graph. Output size 1 (a global average pool, which the
    exporter translates for any size) and eager mode call PyTorch.
    """
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if not onnx_tracing() or all(s == 1 for s in size) or x.ndim not in (3, 4):
        return F.adaptive_avg_pool2d(x, output_size)
    h, w = x.shape[-2:]
    out = x if size[0] is None else torch.matmul(_pool_matrix(h, int(size[0]), x), x)
    return out if size[1] is None else torch.matmul(out, _pool_matrix(w, int(size[1]), x).t())


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` whose forward is :func:`adaptive_avg_pool2d` (export-safe; the
    same module otherwise: no parameters, same ``repr``)."""

    def forward(self, input: Tensor) -> Tensor:
        return adaptive_avg_pool2d(input, self.output_size)
