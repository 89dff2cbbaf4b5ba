"""Inference modes over a multimodal batch: whole image, sliding window, multi-scale + flip.

All modes take the batch dict (modality -> ``[B, C, H, W]``, optional ``"present"``) and
return logits ``[B, K, H, W]`` at the input size. ``model`` is anything that maps such a batch
to logits (or a :class:`~fusionseg.models.segmentor.SegmentationOutput`): a segmentor, or an
exported :class:`fusionseg.inference.onnx_model.OnnxModel`.

This module sits below both users: validation and evaluation (``fusionseg.engine``) and
prediction (``fusionseg.inference``) run the same code, and it imports neither of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .segmentor import logits_of

_NON_IMAGE_KEYS = ("label", "meta", "present")


def _image_keys(batch: dict) -> list[str]:
    return [k for k, v in batch.items()
            if k not in _NON_IMAGE_KEYS and isinstance(v, torch.Tensor) and v.ndim == 4]


def _map_images(batch: dict, fn) -> dict:
    out = {k: v for k, v in batch.items() if k not in ("label",)}
    for k in _image_keys(batch):
        out[k] = fn(k, batch[k])
    return out


def _input_size(batch: dict) -> tuple[int, int]:
    keys = _image_keys(batch)
    if not keys:
        raise ValueError("batch holds no modality image [B, C, H, W]")
    return tuple(batch[keys[0]].shape[-2:])


#: window placements of :func:`slide_inference`
SLIDE_POSITIONS = ("aligned", "clamped")


def window_starts(size: int, window: int, stride: int,
                  positions: str = "aligned") -> list[tuple[int, int]]:
    """Start offsets of the sliding windows along one side, each with its weight.

    ``"aligned"``: a start every ``stride`` px while the window fits, plus one window aligned
    to the far edge when those leave pixels uncovered; every window weighs 1.
    ``"clamped"``: the loop of the ISPRS code lineage (DeepNetsForEO's ``sliding_window``, as
    the MoBaNet release runs it): a start every ``stride`` px up to ``size``, and every start
    whose window would cross the edge moved back to ``size - window``; the last position is
    thus visited once per moved start and its logits are summed that many times (its weight).
    ``size`` is at least ``window`` (the caller pads smaller images).
    """
    last = max(size - window, 0)
    if positions == "clamped":
        weights: dict[int, int] = {}
        for s in range(0, size, stride):
            p = min(s, last)
            weights[p] = weights.get(p, 0) + 1
        return list(weights.items())
    starts = list(range(0, last + 1, stride))
    if starts[-1] + window < size:
        starts.append(last)
    return [(s, 1) for s in starts]


def slide_inference(model: nn.Module, batch: dict, window: Sequence[int],
                    stride: Sequence[int], window_batch: int = 1,
                    positions: str = "aligned") -> torch.Tensor:
    """Sliding-window inference; overlapping logits are averaged with a real count map.

    Windows of ``window = (h, w)`` px move by ``stride``; the last window in each direction is
    aligned to the image border, so every pixel is covered. An image smaller than the window is
    zero-padded and the padding cropped away. ``window_batch`` windows go through the model as
    one batch (faster for small batches; the result is the same).

    ``positions`` (see :func:`window_starts`): ``"aligned"`` runs each window once, all of
    equal weight; ``"clamped"`` gives each window the weight the clamping loop of the ISPRS
    code (the MoBaNet release) gives it (the product of its row and column multiplicity), so
    the logits are the release's summed logits divided by a per-pixel total and the argmax is
    the release's. Each distinct window still runs once.

    Raises:
        ConfigError: unknown ``positions``.
    """
    if positions not in SLIDE_POSITIONS:
        raise ConfigError(f"unknown sliding-window placement {positions!r}; use "
                          f"{' or '.join(map(repr, SLIDE_POSITIONS))}")
    h, w = _input_size(batch)
    wh, ww = window
    sh, sw = stride
    ph, pw = max(wh - h, 0), max(ww - w, 0)
    if ph or pw:
        batch = _map_images(batch, lambda _k, x: F.pad(x, (0, pw, 0, ph)))
    H, W = h + ph, w + pw
    ys = window_starts(H, wh, sh, positions)
    xs = window_starts(W, ww, sw, positions)
    total = None
    count = torch.zeros(1, 1, H, W)
    weighted = [((y, x), ny * nx) for y, ny in ys for x, nx in xs]
    windows = [p for p, _ in weighted]
    weight = dict(weighted)
    keys = _image_keys(batch)
    n_img = batch[keys[0]].shape[0]
    step = max(int(window_batch), 1)
    for i in range(0, len(windows), step):
        chunk = windows[i:i + step]
        crop = {k: v for k, v in batch.items() if k not in ("label", "meta")}
        for k in keys:
            crop[k] = torch.cat([batch[k][..., y:y + wh, x:x + ww] for y, x in chunk])
        if isinstance(batch.get("present"), torch.Tensor):
            crop["present"] = batch["present"].repeat(len(chunk), 1)
        logits = logits_of(model(crop)).float()
        if total is None:
            total = logits.new_zeros(n_img, logits.shape[1], H, W)
            count = count.to(logits.device)
        for j, (y, x) in enumerate(chunk):
            n = weight[(y, x)]
            part = logits[j * n_img:(j + 1) * n_img]
            total[..., y:y + wh, x:x + ww] += part if n == 1 else n * part
            count[..., y:y + wh, x:x + ww] += n
    return (total / count)[..., :h, :w]


@torch.no_grad()
def inference_kwargs(e: Any) -> dict[str, Any]:
    """The :func:`predict_logits` keywords of an ``eval`` config section
    (:class:`fusionseg.config.EvalConfig`: mode, window, stride, scales, flip, window_batch,
    slide_positions), so every caller runs inference the same way."""
    return {"mode": e.mode, "window": tuple(e.window), "stride": tuple(e.stride),
            "scales": list(e.scales), "flip": e.flip, "window_batch": e.window_batch,
            "positions": e.slide_positions}


def predict_logits(model: nn.Module, batch: dict, mode: str = "whole",
                   window: Sequence[int] = (512, 512), stride: Sequence[int] = (341, 341),
                   scales: Sequence[float] = (1.0,), flip: bool = False,
                   window_batch: int = 1, positions: str = "aligned") -> torch.Tensor:
    """Logits ``[B, K, H, W]`` at input size, averaged over ``scales`` and an optional h-flip.

    Args:
        mode: ``"whole"`` (one forward pass) or ``"slide"`` (windows of ``window`` px).
        scales: resize factors; logits are resized back before averaging (softmax-free mean).
        flip: also run the horizontally flipped input and flip its logits back.
        window_batch: sliding windows per model call (see :func:`slide_inference`).
        positions: sliding-window placement, ``"aligned"`` or ``"clamped"`` (the ISPRS code's
            loop; see :func:`window_starts`).

    Raises:
        ConfigError: unknown mode or placement.
    """
    if mode not in ("whole", "slide"):
        raise ConfigError(f"unknown inference mode {mode!r}; use 'whole' or 'slide'")
    if positions not in SLIDE_POSITIONS:
        raise ConfigError(f"unknown sliding-window placement {positions!r}; use "
                          f"{' or '.join(map(repr, SLIDE_POSITIONS))}")
    h, w = _input_size(batch)
    acc = None
    n = 0
    for s in scales:
        if s != 1.0:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            scaled = _map_images(batch, lambda _k, x, size=size: F.interpolate(
                x, size=size, mode="bilinear", align_corners=False))
        else:
            scaled = batch
        for flipped in ([False, True] if flip else [False]):
            inp = _map_images(scaled, lambda _k, x: x.flip(-1)) if flipped else scaled
            if mode == "whole":
                logits = logits_of(model(inp)).float()
            else:
                logits = slide_inference(model, inp, window, stride, window_batch, positions)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            acc = logits if acc is None else acc + logits
            n += 1
    return acc / n
