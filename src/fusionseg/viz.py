"""Visualisation: palettes, colorized masks, modality images, per-sample panels with class
legends, mask overlays, GIF / MP4 videos of frames, and the robustness plots."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .files import atomic_path


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


def class_legend(classes: Sequence[str] | None, palette: np.ndarray | Sequence,
                 *masks: np.ndarray | torch.Tensor | None,
                 ignore_index: int = 255) -> list[tuple[int, str, tuple[int, int, int]]]:
    """Legend entries ``(class id, name, (r, g, b))`` of the classes present in ``masks``.

    Args:
        classes: class names (index = class id); ``None`` or a short list names the others
            ``"class {id}"``.
        palette: ``[K, 3]`` uint8 colours (the ones :func:`colorize` uses).
        masks: class-id masks ``[H, W]`` (prediction, label ...); ``None`` entries are skipped.
        ignore_index: id left out (not a class).

    Returns:
        One entry per class id occurring in any mask, sorted by id.

    Raises:
        ValueError: a class id outside the palette.
    """
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    ids: set[int] = set()
    for mask in masks:
        if mask is None:
            continue
        values = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        ids.update(int(v) for v in np.unique(values) if int(v) != ignore_index)
    bad = sorted(k for k in ids if k < 0 or k >= len(palette))
    if bad:
        raise ValueError(f"class id {bad[0]} is outside the palette 0..{len(palette) - 1}")
    names = list(classes or [])
    return [(k, names[k] if k < len(names) else f"class {k}",
             tuple(int(c) for c in palette[k])) for k in sorted(ids)]


def panel_figure(images: Mapping[str, np.ndarray | None], *, titles: bool = True,
                 suptitle: str | None = None,
                 legend: Sequence[tuple[int, str, tuple[int, int, int]]] = (),
                 legend_columns: int = 1,
                 panel_inches: tuple[float, float] = (2.6, 2.9)) -> Any:
    """A matplotlib figure of one row of panels, with an optional class legend below them.

    Args:
        images: caption -> ``[H, W, 3]`` uint8 image, one panel each in this order; None
            draws an empty panel reading "absent", captioned ``"<caption> (absent)"``.
        titles: caption each panel (9 pt).
        suptitle: figure title (9 pt); None or empty: none.
        legend: entries of :func:`class_legend`, drawn as coloured patches labelled
            ``"<id> <name>"`` (7 pt) in ``legend_columns`` columns; the figure grows by a
            strip of 0.22 in per legend row plus 0.1 in.
        legend_columns: columns of the legend (at least 1).
        panel_inches: (width, height) of one panel in inches, the height without the legend.

    Returns:
        A ``matplotlib.figure.Figure`` made with ``pyplot`` (the caller saves, shows or
        closes it); the backend is left as configured.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = len(images)
    rows = -(-len(legend) // legend_columns) if legend else 0
    strip = 0.22 * rows + 0.1 if rows else 0.0  # legend height in inches
    height = panel_inches[1] + strip
    fig, axes = plt.subplots(1, n, figsize=(panel_inches[0] * n, height), squeeze=False)
    for ax, (caption, img) in zip(axes[0], images.items(), strict=True):
        if img is None:
            ax.text(0.5, 0.5, "absent", ha="center", va="center", transform=ax.transAxes)
            caption = f"{caption} (absent)"
        else:
            ax.imshow(img, interpolation="nearest")
        if titles:
            ax.set_title(caption, fontsize=9)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    if legend:
        handles = [Patch(facecolor=np.asarray(rgb) / 255.0, edgecolor="black", linewidth=0.4,
                         label=f"{k} {name}") for k, name, rgb in legend]
        fig.legend(handles=handles, loc="lower center", ncol=legend_columns, fontsize=7,
                   frameon=False, handlelength=1.0, columnspacing=0.8, borderaxespad=0.2)
    fig.tight_layout(rect=(0, strip / height, 1, 1))
    return fig


def save_panel(path: str | Path, images: dict[str, np.ndarray], title: str = "",
               legend: Sequence[tuple[int, str, tuple[int, int, int]]] | None = None) -> None:
    """Save one row of ``[H, W, 3]`` uint8 images with captions as a PNG (matplotlib, Agg
    backend unless one is set; the figure is :func:`panel_figure`, 2.6 x 2.9 in a panel).

    ``legend``: entries of :func:`class_legend`, drawn as coloured patches with the class
    names in rows below the images (the figure grows by one strip per legend row), in as
    many columns as fit the figure's width.

    The PNG is written atomically (:func:`fusionseg.files.atomic_path`): an interrupted call
    leaves no truncated file at ``path``. The figure is closed before returning.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    legend = list(legend or [])
    # legend columns that fit the figure width (about 0.055 in per character at 7 pt)
    longest = max((len(f"{k} {name}") for k, name, _ in legend), default=1)
    ncol = max(1, min(len(legend), int(2.5 * len(images) / (0.055 * longest + 0.45))))
    fig = panel_figure(images, suptitle=title, legend=legend, legend_columns=ncol)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)


def overlay_mask(image: np.ndarray, mask_rgb: np.ndarray, alpha: float = 0.5,
                 keep: np.ndarray | None = None) -> np.ndarray:
    """Blend a colour mask on an image: ``(1 - alpha) * image + alpha * mask_rgb``.

    Args:
        image: ``[H, W, 3]`` uint8 (e.g. the RGB frame).
        mask_rgb: ``[H, W, 3]`` uint8 colorized mask (:func:`colorize`), same size.
        alpha: mask weight in ``[0, 1]``.
        keep: optional bool ``[H, W]``: pixels left as in ``image`` (e.g. ignore pixels).

    Returns:
        ``[H, W, 3]`` uint8, rounded to the nearest integer.

    Raises:
        ValueError: sizes differ, or ``alpha`` outside ``[0, 1]``.
    """
    image = np.asarray(image)
    mask_rgb = np.asarray(mask_rgb)
    if image.shape != mask_rgb.shape or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay needs two [H, W, 3] images of one size, got "
                         f"{image.shape} and {mask_rgb.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * mask_rgb.astype(np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if keep is not None:
        out[keep] = image[keep]
    return out


def mp4_writer() -> str | None:
    """The MP4 writer available here: ``"av"`` (PyAV), ``"imageio"`` (imageio with the
    imageio-ffmpeg plugin) or ``None``."""
    import importlib.util

    if importlib.util.find_spec("av") is not None:
        return "av"
    if (importlib.util.find_spec("imageio") is not None
            and importlib.util.find_spec("imageio_ffmpeg") is not None):
        return "imageio"
    return None


def check_video_path(path: str | Path) -> Path:
    """Validate a video output path before any work: ``.gif`` (Pillow) always works, ``.mp4``
    needs :func:`mp4_writer`.

    Raises:
        ConfigError: another suffix, or ``.mp4`` without PyAV / imageio-ffmpeg installed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return path
    if suffix == ".mp4":
        if mp4_writer() is None:
            raise ConfigError(f"{path}: writing MP4 needs PyAV (pip install av) or imageio "
                              "with imageio-ffmpeg, and neither is installed; write an animated "
                              "GIF instead (e.g. --video out.gif)")
        return path
    raise ConfigError(f"{path}: video must end in .gif or .mp4, got {suffix or 'no suffix'!r}")


def _frame_array(frame: str | Path | np.ndarray) -> np.ndarray:
    from PIL import Image

    if isinstance(frame, np.ndarray):
        return frame
    with Image.open(frame) as im:
        return np.asarray(im.convert("RGB"))


def _video_images(frames: Iterable[str | Path | np.ndarray]) -> Iterator:
    """RGB Pillow images of ``frames``, read one at a time (files are opened only when their
    turn comes), each resized (bilinear) to the size of the first."""
    from PIL import Image

    size = None
    for frame in frames:
        im = Image.fromarray(np.ascontiguousarray(_frame_array(frame)[..., :3]).astype(np.uint8))
        if size is None:
            size = im.size
        elif im.size != size:
            im = im.resize(size, Image.BILINEAR)
        yield im


def _write_mp4(path: Path, images: Iterator, fps: float) -> None:
    """Encode ``images`` (RGB Pillow images of one size) as H.264 MP4 at ``path``, one frame at
    a time; the size is padded to even numbers (4:2:0 needs them)."""
    from PIL import Image

    first = next(images)
    w, h = first.size
    even = (w + w % 2, h + h % 2)

    def padded(im) -> np.ndarray:
        canvas = Image.new("RGB", even)
        canvas.paste(im, (0, 0))
        return np.asarray(canvas)

    arrays = (padded(im) for im in itertools.chain([first], images))
    if mp4_writer() == "av":
        from fractions import Fraction

        import av

        with av.open(str(path), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height = even
            stream.pix_fmt = "yuv420p"
            for a in arrays:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
            container.mux(stream.encode())
    else:  # imageio's ffmpeg binding, called directly: the temporary name has no .mp4 suffix
        import imageio_ffmpeg

        writer = imageio_ffmpeg.write_frames(str(path), even, fps=fps, codec="libx264",
                                             pix_fmt_out="yuv420p", macro_block_size=2,
                                             output_params=["-f", "mp4"])
        writer.send(None)  # start ffmpeg
        try:
            for a in arrays:
                writer.send(np.ascontiguousarray(a))
        finally:
            writer.close()


def save_video(frames: Iterable[str | Path | np.ndarray], path: str | Path,
               fps: float = 2.0) -> Path:
    """Write ``frames`` (image files or ``[H, W, 3]`` uint8 arrays, in the given order) as an
    animated GIF (Pillow, looping) or an MP4 (PyAV or imageio-ffmpeg, H.264).

    Frames of another size than the first are resized to it (bilinear). For MP4 the size is
    padded to even numbers (H.264 4:2:0 needs them). Pillow merges identical consecutive GIF
    frames into one longer frame.

    Memory: frames are read one at a time (``frames`` may be a generator). An MP4 is encoded
    as they come; Pillow's GIF writer keeps every frame, quantized to 1 byte per pixel, until
    the file is written. The file is written atomically (:func:`fusionseg.files.atomic_path`).

    Args:
        frames: at least one frame.
        path: ``*.gif`` or ``*.mp4``; parent dirs are created.
        fps: frames per second (> 0); a GIF stores ``round(1000 / fps)`` ms per frame.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: no frames.
        ConfigError: ``fps <= 0``, or see :func:`check_video_path`.
    """
    path = check_video_path(path)
    if fps <= 0:
        raise ConfigError(f"video fps must be > 0, got {fps}")
    images = _video_images(frames)
    first = next(images, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".gif":
            first.save(tmp, format="GIF", save_all=True, append_images=images,
                       duration=max(1, round(1000 / fps)), loop=0)
        else:
            _write_mp4(tmp, itertools.chain([first], images), fps)
    return path


def sample_panel(sample: dict, modalities: Sequence[str], pred: torch.Tensor | np.ndarray,
                 palette, ignore_index: int = 255) -> dict[str, np.ndarray]:
    """The images of one panel: each present modality, the label if any, the prediction."""
    images = {m: modality_image(sample[m], m) for m in modalities if m in sample}
    if "label" in sample:
        images["label"] = colorize(sample["label"], palette, ignore_index)
    images["prediction"] = colorize(pred, palette, ignore_index)
    return images


# --------------------------------------------------------------------------- robustness plots
def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def _no_data(ax, title: str) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _subset_label(entry: dict) -> str:
    return "+".join(entry["present"])


def _plot_emm_bars(ax, emm: dict) -> None:
    """Horizontal mIoU bars per subset (first subset on top), mean line, expectations."""
    subsets = emm.get("subsets") or []
    if not subsets:
        _no_data(ax, "EMM: mIoU per modality subset")
        return
    ys = np.arange(len(subsets))
    for y, entry in zip(ys, subsets, strict=True):
        v = entry.get("mIoU")
        if v is None:
            ax.text(0.5, y, "n/a", va="center", fontsize=8)
            continue
        ax.barh(y, v, color="tab:blue", height=0.7)
        ax.text(v, y, f" {v:.1f}", va="center", fontsize=8)
    ax.set_yticks(ys, [_subset_label(e) for e in subsets], fontsize=8)
    ax.set_ylim(len(subsets) - 0.5, -0.5)  # first subset on top
    if emm.get("mean") is not None:
        ax.axvline(emm["mean"], color="tab:red", linestyle="--", label=f"mean {emm['mean']:.1f}")
    for p, v in (emm.get("expectation") or {}).items():
        if v is not None:  # legend entries without a marker
            ax.plot([], [], linestyle="none", label=f"E[p={p}] {v:.1f}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, handlelength=1.5)
    ax.set_xlabel("mIoU (%)")
    ax.set_xlim(0, max([e["mIoU"] for e in subsets if e.get("mIoU") is not None] + [1]) * 1.25)
    ax.set_title("EMM: mIoU per modality subset", fontsize=10)


def _plot_emm_curve(ax, emm: dict) -> None:
    """Mean mIoU over the subsets with ``k`` missing modalities, against ``k``."""
    by_missing: dict[int, list[float]] = {}
    for entry in emm.get("subsets") or []:
        if entry.get("mIoU") is not None:
            by_missing.setdefault(len(entry.get("missing", [])), []).append(entry["mIoU"])
    if not by_missing:
        _no_data(ax, "EMM: degradation with missing modalities")
        return
    ks = sorted(by_missing)
    means = [float(np.mean(by_missing[k])) for k in ks]
    ax.plot(ks, means, marker="o", color="tab:blue")
    for k, v in zip(ks, means, strict=True):
        ax.annotate(f"{v:.1f}", (k, v), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
    ax.set_xticks(ks)
    ax.set_xlabel("missing modalities")
    ax.set_ylabel("mean mIoU (%)")
    ax.set_ylim(0, max(means) * 1.2 + 1)
    ax.set_title("EMM: degradation with missing modalities", fontsize=10)


def _plot_rmm(ax, rmm: dict) -> None:
    """Grouped horizontal bars: one group per subset, one bar per failure ratio ``r``."""
    ratios = rmm.get("ratios") or []
    labels: list[str] = []
    for ratio in ratios:
        for entry in ratio.get("subsets") or []:
            if _subset_label(entry) not in labels:
                labels.append(_subset_label(entry))
    if not labels:
        _no_data(ax, "RMM: mIoU per subset and failure ratio r")
        return
    height = 0.8 / len(ratios)
    for i, ratio in enumerate(ratios):
        values = {_subset_label(e): e.get("mIoU") for e in ratio.get("subsets") or []}
        ys = [j - 0.4 + (i + 0.5) * height for j, lab in enumerate(labels)
              if values.get(lab) is not None]
        xs = [values[lab] for lab in labels if values.get(lab) is not None]
        mean = ratio.get("mean")
        name = f"r={ratio['r']}" + (f" (mean {mean:.1f})" if mean is not None else "")
        ax.barh(ys, xs, height=height, label=name)
    ax.set_yticks(np.arange(len(labels)), labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first subset on top
    ax.set_xlabel("mIoU (%)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("RMM: mIoU per subset and failure ratio r", fontsize=10)


def _plot_nm(ax, nm: dict) -> None:
    """mIoU against the noise level for both noise variants; the clean mIoU is level 0."""
    levels = nm.get("levels") or []
    ticks = ["clean"] + [
        f"{lv['level']}\np={lv.get('density')}, σ={lv.get('std')}" for lv in levels
    ]
    variants = {"salt-and-pepper + Gaussian": "mIoU",
                "salt-and-pepper only": "mIoU_salt_pepper_only"}
    drawn = False
    for name, key in variants.items():
        points = [(0, nm.get("clean"))] + [(i + 1, lv.get(key)) for i, lv in enumerate(levels)]
        points = [(x, y) for x, y in points if y is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=name)
            drawn = True
    if not drawn:
        _no_data(ax, "NM: degradation with sensor noise")
        return
    ax.set_xticks(np.arange(len(ticks)), ticks, fontsize=8)
    ax.set_xlabel("noise level")
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("NM: degradation with sensor noise", fontsize=10)


def _plot_mam(ax, mam: dict) -> None:
    """mIoU against the misalignment level (level 0 = aligned)."""
    points = [(i, lv.get("mIoU")) for i, lv in enumerate(mam.get("levels") or [])]
    points = [(x, y) for x, y in points if y is not None]
    if not points:
        _no_data(ax, "MAM: degradation with misalignment")
        return
    levels = mam["levels"]
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, marker="o", color="tab:green")
    ax.set_xticks(np.arange(len(levels)),
                  [f"{lv['level']}\n{lv['shift'] * 100:g}%, {lv['rotation']:g}°" for lv in levels],
                  fontsize=8)
    ax.set_xlabel("level (shift per axis, % of the shorter side; rotation)")
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(bottom=0)
    ax.set_title("MAM: degradation with misalignment", fontsize=10)


def plot_robustness(results: dict[str, dict], path: str | Path) -> Path:
    """One PNG of the robustness protocols' results, one panel per protocol given.

    Args:
        results: protocol name (``"emm"``, ``"rmm"``, ``"nm"``, ``"mam"``; any subset) ->
            the result JSON dict written by ``fusionseg eval --protocol`` (percent floats or null).
            EMM gives two panels: mIoU bars per modality subset (mean as a dashed line, the
            Bernoulli-failure expectations in a box) and the mean mIoU against the number of
            missing modalities; RMM gives grouped bars per subset, one per failure ratio ``r``;
            NM gives mIoU against the noise level (clean, low, mid, high) for the two noise
            variants; MAM gives mIoU against the misalignment level. Null values are left
            out.
        path: the PNG to write; parent dirs are created.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``results`` is empty or names an unknown protocol.
    """
    known = ("emm", "rmm", "nm", "mam")
    unknown = [k for k in results if k not in known]
    if not results or unknown:
        raise ValueError(f"plot_robustness needs results of protocols {', '.join(known)}; "
                         f"got {sorted(results) or 'none'}")
    panels = []
    if "emm" in results:
        panels += [(_plot_emm_bars, results["emm"]), (_plot_emm_curve, results["emm"])]
    if "rmm" in results:
        panels.append((_plot_rmm, results["rmm"]))
    if "nm" in results:
        panels.append((_plot_nm, results["nm"]))
    if "mam" in results:
        panels.append((_plot_mam, results["mam"]))
    ncols = min(len(panels), 2)
    nrows = -(-len(panels) // ncols)
    plt = _pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.4 * nrows), squeeze=False)
    for ax, (draw, res) in zip(axes.flat, panels, strict=False):
        draw(ax, res)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    first = next(iter(results.values()))
    header = [str(first.get(k)) for k in ("dataset", "split") if first.get(k)]
    if first.get("modalities"):
        header.append("+".join(first["modalities"]))
    if first.get("checkpoint"):
        header.append(Path(first["checkpoint"]).name)
    if header:
        fig.suptitle("  ".join(header), fontsize=11)
    return _save_figure(fig, path)


def plot_report(rows: list[dict], path: str | Path) -> Path:
    """Grouped bar chart across runs: mIoU (all modalities), EMM mean and E[p=0.1] per run.

    Args:
        rows: one dict per run as :func:`fusionseg.report.collect_run` returns (keys ``run``,
            ``mIoU``, ``emm_mean``, ``expectation``); null values are left out.
        path: the PNG to write; parent dirs are created.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    series = {
        "mIoU (all modalities)": [r.get("mIoU") for r in rows],
        "EMM mean": [r.get("emm_mean") for r in rows],
        "E[p=0.1]": [(r.get("expectation") or {}).get("0.1") for r in rows],
    }
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(rows) + 2), 4.2))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        points = [(j - 0.4 + (i + 0.5) * width, v) for j, v in enumerate(values) if v is not None]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        bars = ax.bar(xs, ys, width=width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(np.arange(len(rows)), [r["run"].replace("/", "/\n") for r in rows],
                  fontsize=8)
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(bottom=0)
    ax.margins(y=0.15)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title("runs compared", fontsize=10)
    return _save_figure(fig, path)
