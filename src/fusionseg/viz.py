"""Visualisation: palettes, colorized masks, modality images and per-sample panels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def default_palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """A fixed pseudo-random ``[K, 3]`` uint8 palette for datasets that define none."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(num_classes, 3), dtype=np.uint8)


def colorize(mask: np.ndarray | torch.Tensor, palette: np.ndarray | Sequence,
             ignore_index: int = 255) -> np.ndarray:
    """Class-id mask ``[H, W]`` -> ``[H, W, 3]`` uint8 image; ``ignore_index`` is black.

    Raises:
        ValueError: a class id outside the palette (other than ``ignore_index``).
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.cpu().numpy()
    palette = np.asarray(palette, dtype=np.uint8)
    mask = mask.astype(np.int64)
    ignore = mask == ignore_index
    if mask[~ignore].size and (mask[~ignore].min() < 0 or mask[~ignore].max() >= len(palette)):
        raise ValueError(f"mask holds class ids outside 0..{len(palette) - 1}")
    out = palette[np.where(ignore, 0, mask)]
    out[ignore] = 0
    return out


def modality_image(x: torch.Tensor, name: str = "") -> np.ndarray:
    """Modality tensor ``[C, H, W]`` (any scale, e.g. normalized) -> ``[H, W, 3]`` uint8.

    Values are stretched between the 1st and 99th percentile: jointly over channels for
    ``rgb`` (keeps colours), per channel otherwise; one-channel inputs (or three identical
    channels) are shown with the ``inferno`` colormap.
    """
    import matplotlib

    x = x.detach().float().cpu()
    if x.ndim == 2:
        x = x[None]
    if x.shape[0] == 3 and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]):
        x = x[:1]

    def stretch(a: torch.Tensor) -> torch.Tensor:
        flat = a.flatten()
        if flat.numel() > 100_000:
            flat = flat[:: flat.numel() // 100_000 + 1]
        lo, hi = torch.quantile(flat, 0.01), torch.quantile(flat, 0.99)
        return ((a - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)

    if x.shape[0] == 1:
        v = stretch(x[0]).numpy()
        return (matplotlib.colormaps["inferno"](v)[..., :3] * 255).astype(np.uint8)
    x = x[:3]
    if x.shape[0] == 2:
        x = torch.cat([x, torch.zeros_like(x[:1])])
    x = stretch(x) if name == "rgb" else torch.stack([stretch(c) for c in x])
    return (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def save_panel(path: str | Path, images: dict[str, np.ndarray], title: str = "") -> None:
    """Save one row of ``[H, W, 3]`` uint8 images with captions as a PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    for ax, (caption, img) in zip(axes[0], images.items(), strict=True):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sample_panel(sample: dict, modalities: Sequence[str], pred: torch.Tensor | np.ndarray,
                 palette, ignore_index: int = 255) -> dict[str, np.ndarray]:
    """The images of one panel: each present modality, the label if any, the prediction."""
    images = {m: modality_image(sample[m], m) for m in modalities if m in sample}
    if "label" in sample:
        images["label"] = colorize(sample["label"], palette, ignore_index)
    images["prediction"] = colorize(pred, palette, ignore_index)
    return images
