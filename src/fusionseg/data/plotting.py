"""A matplotlib figure of one sample: every modality, the label in the dataset's palette, and
optionally a prediction (what :meth:`MultimodalDataset.plot
<fusionseg.data.datasets.base.MultimodalDataset.plot>` draws, in the style of torchgeo's
``dataset.plot(sample)``).

The images come from :mod:`fusionseg.viz` (``modality_image``: a percentile stretch, one-channel
maps in ``inferno``; ``colorize``: class ids to palette colours, ignore black;
``class_legend``), and so does the figure (``panel_figure``, which also draws the panels that
``fusionseg predict`` saves); :mod:`fusionseg.viz` sits below the data layer
(``tests/test_layering.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fusionseg.data.io import DataError
from fusionseg.data.sample import IGNORE_INDEX, LABEL_KEY, META_KEY, Sample
from fusionseg.viz import class_legend, colorize, modality_image, panel_figure

__all__ = ["plot_sample"]

#: panel size in inches (width, height)
PANEL_INCHES = (2.6, 2.6)


def plot_sample(
    sample: Sample,
    modalities: Sequence[str],
    *,
    classes: Sequence[str] | None,
    palette: np.ndarray | Sequence,
    ignore_index: int = IGNORE_INDEX,
    prediction: torch.Tensor | np.ndarray | None = None,
    show_titles: bool = True,
    suptitle: str | None = None,
    legend: bool = True,
) -> Any:
    """One row of panels: each of ``modalities``, the label (if the sample has one), the
    prediction (if given), with a legend of the classes that occur.

    Args:
        sample: a Sample (:mod:`fusionseg.data.sample`): modality -> ``float32 [C, H, W]``
            (any scale), ``"label"`` -> ``int64 [H, W]``; a modality absent from the sample is
            drawn as an empty panel titled ``"<modality> (absent)"``.
        modalities: panels in this order.
        classes: class names (index = class id), for the legend.
        palette: ``uint8 [K, 3]`` class colours; ``ignore_index`` pixels are black.
        prediction: class ids ``[H, W]`` (or logits ``[K, H, W]``, arg-maxed over ``K``).
        show_titles: caption each panel with its modality (``"label"``, ``"prediction"``).
        suptitle: figure title (None: the sample's ``meta["id"]`` if it has one).
        legend: draw the class legend below the panels.

    Returns:
        A ``matplotlib.figure.Figure`` made with ``pyplot`` (the caller shows, saves or closes
        it: ``plt.close(fig)``); the backend is left as configured.

    Raises:
        DataError: nothing to draw (no modality, label or prediction), or a class id outside
            the palette.
    """
    images: dict[str, np.ndarray | None] = {
        m: modality_image(sample[m], m) if m in sample else None for m in modalities}
    label = sample.get(LABEL_KEY)
    masks = []
    if prediction is not None:
        prediction = torch.as_tensor(prediction)
        if prediction.ndim == 3:
            prediction = prediction.argmax(0)
        masks.append(prediction)
    try:
        if label is not None:
            images["label"] = colorize(label, palette, ignore_index)
        if prediction is not None:
            images["prediction"] = colorize(prediction, palette, ignore_index)
        entries = class_legend(classes, palette, label, *masks, ignore_index=ignore_index)
    except ValueError as err:
        raise DataError(f"cannot plot the sample: {err}") from err
    if not images:
        raise DataError("cannot plot the sample: no modality, label or prediction to draw")

    entries = entries if legend else []
    meta = sample.get(META_KEY)
    if suptitle is None and isinstance(meta, dict) and meta.get("id") is not None:
        suptitle = str(meta["id"])
    return panel_figure(images, titles=show_titles, suptitle=suptitle, legend=entries,
                        legend_columns=max(1, min(len(entries), 2 * len(images))),
                        panel_inches=(PANEL_INCHES[0], PANEL_INCHES[1] + 0.4))
