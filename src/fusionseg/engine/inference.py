"""Inference modes over a multimodal batch: whole image, sliding window, multi-scale + flip.

All modes take the batch dict (modality -> ``[B, C, H, W]``, optional ``"present"``) and
return logits ``[B, K, H, W]`` at the input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.segmentors.base import logits_of

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


def slide_inference(model: nn.Module, batch: dict, window: Sequence[int],
                    stride: Sequence[int], window_batch: int = 1) -> torch.Tensor:
    """Sliding-window inference; overlapping logits are averaged with a real count map.

    Windows of ``window = (h, w)`` px move by ``stride``; the last window in each direction is
    aligned to the image border, so every pixel is covered. An image smaller than the window is
    zero-padded and the padding cropped away. ``window_batch`` windows go through the model as
    one batch (faster for small batches; the result is the same).
    """
    h, w = _input_size(batch)
    wh, ww = window
    sh, sw = stride
    ph, pw = max(wh - h, 0), max(ww - w, 0)
    if ph or pw:
        batch = _map_images(batch, lambda _k, x: F.pad(x, (0, pw, 0, ph)))
    H, W = h + ph, w + pw
    ys = list(range(0, max(H - wh, 0) + 1, sh))
    xs = list(range(0, max(W - ww, 0) + 1, sw))
    if ys[-1] + wh < H:
        ys.append(H - wh)
    if xs[-1] + ww < W:
        xs.append(W - ww)
    total = None
    count = torch.zeros(1, 1, H, W)
    positions = [(y, x) for y in ys for x in xs]
    keys = _image_keys(batch)
    n_img = batch[keys[0]].shape[0]
    step = max(int(window_batch), 1)
    for i in range(0, len(positions), step):
        chunk = positions[i:i + step]
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
            total[..., y:y + wh, x:x + ww] += logits[j * n_img:(j + 1) * n_img]
            count[..., y:y + wh, x:x + ww] += 1
    return (total / count)[..., :h, :w]


@torch.no_grad()
def predict_logits(model: nn.Module, batch: dict, mode: str = "whole",
                   window: Sequence[int] = (512, 512), stride: Sequence[int] = (341, 341),
                   scales: Sequence[float] = (1.0,), flip: bool = False,
                   window_batch: int = 1) -> torch.Tensor:
    """Logits ``[B, K, H, W]`` at input size, averaged over ``scales`` and an optional h-flip.

    Args:
        mode: ``"whole"`` (one forward pass) or ``"slide"`` (windows of ``window`` px).
        scales: resize factors; logits are resized back before averaging (softmax-free mean).
        flip: also run the horizontally flipped input and flip its logits back.
        window_batch: sliding windows per model call (see :func:`slide_inference`).

    Raises:
        ConfigError: unknown mode.
    """
    if mode not in ("whole", "slide"):
        raise ConfigError(f"unknown inference mode {mode!r}; use 'whole' or 'slide'")
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
                logits = slide_inference(model, inp, window, stride, window_batch)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            acc = logits if acc is None else acc + logits
            n += 1
    return acc / n
