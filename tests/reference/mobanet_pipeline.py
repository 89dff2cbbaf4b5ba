"""Reference re-implementation of the MoBaNet release's Vaihingen test pipeline and metric.

Written for fusionseg's end-to-end tests from a reading of the official code (GitHub
``sauryeo/MoBaNet`` at 77b59b9), ``utils.py`` and ``train.py`` with ``DATASET = 'Vaihingen'``:

* files (utils.py:82-85): ``{MAIN_FOLDER}top/top_mosaic_09cm_area{id}.tif``,
  ``dsm/dsm_09cm_matching_area{id}.tif`` and ``label/top_mosaic_09cm_area{id}_noBoundary.tif``
  (the eroded labels, in a folder named ``label/``), over the fixed ``test_ids`` (utils.py:75);
* ``test()`` (train.py:117-183): the optical tile ``1 / 255 * float32`` then ``normalize_rgb``
  (ImageNet mean/std, utils.py:43-44, 137-156; on because the encoder is a DINOv2 one); the DSM
  as float32, cropped / edge-padded at the bottom-right to the tile's size when it differs
  (``match_spatial_shape``, utils.py:158-178, train.py:137-138), then min-max normalised over
  the whole tile (zeros when flat, train.py:139-144); the label ``convert_from_color``
  (utils.py:190-198: starts from zeros, writes the id of every pixel that equals a palette
  colour exactly; black is id 6, "undefined"); windows from ``sliding_window`` (utils.py:
  423-431: a start every ``step`` up to the tile's end, a start whose window would cross the
  edge clamped to the last position, so that position comes several times), grouped by
  ``batch_size`` (``grouper``, 447-454); each group cut HWC -> CHW, zero-padded at the
  bottom-right to multiples of 14 (``pad_batch_to_multiple``, 219-227), run as
  ``net(image_patches, dsm_patches, mode='Test')``, cropped back to the window and **added**
  into a float64 ``[H, W, 6]`` array; ``argmax`` over classes;
* ``metrics`` (utils.py:457-505): sklearn's ``confusion_matrix(gts, preds, labels=range(6))``
  over every pixel of every tile (pixels whose label or prediction is not one of the six ids,
  i.e. the black id 6, are left out), OA over the six classes, F1 and IoU per class, mean F1
  and mIoU as ``nanmean`` over the first five (clutter left out).

The release runs at ``WINDOW_SIZE = (256, 256)`` and, in ``MODE == 'Test'``, stride 32
(train.py:263); both are parameters here (the tests use small tiles). Reading: the release's
``skimage.io.imread`` reads these TIFFs with tifffile, as here. The model is any callable
``net(x [B, 3, h, w], dsm [B, h, w]) -> logits [B, 6, h, w]`` (``reference/mobanet_release.py``
in the tests). Only the evaluation path is re-implemented; nothing is part of the package.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tifffile
import torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
N_CLASSES = 6
PATCH_MULTIPLE = 14
#: the release's palette: the six classes, then black as "undefined" (id 6)
PALETTE = {
    0: (255, 255, 255),
    1: (0, 0, 255),
    2: (0, 255, 255),
    3: (0, 255, 0),
    4: (255, 255, 0),
    5: (255, 0, 0),
    6: (0, 0, 0),
}
VAIHINGEN_TEST_IDS = ["2", "4", "6", "8", "10", "12", "14", "16", "20", "22", "24", "27", "29",
                      "31", "33", "35", "38"]


# ----------------------------------------------------------------------------- files
def vaihingen_paths(main_folder: str | os.PathLike, tile: str) -> tuple[str, str, str]:
    """(optical, DSM, label) paths of a tile as the release's format strings build them."""
    base = str(main_folder).rstrip("/") + "/"
    return (base + f"top/top_mosaic_09cm_area{tile}.tif",
            base + f"dsm/dsm_09cm_matching_area{tile}.tif",
            base + f"label/top_mosaic_09cm_area{tile}_noBoundary.tif")


# ----------------------------------------------------------------------------- inputs
def optical(path: str) -> np.ndarray:
    """The test loop's optical tile: ``[H, W, 3]`` float32, scaled by 1/255 then ImageNet."""
    scaled = 1 / 255 * np.asarray(tifffile.imread(path), dtype="float32")
    return (scaled - IMAGENET_MEAN.reshape(1, 1, 3)) / IMAGENET_STD.reshape(1, 1, 3)


def fit_to(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``match_spatial_shape``: cut what lies beyond the reference height / width, then repeat
    the last row / column (numpy ``edge`` padding) up to it."""
    h_ref, w_ref = shape[:2]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.shape[0] > h_ref or arr.shape[1] > w_ref:
        arr = arr[:h_ref, :w_ref]
    more_h, more_w = h_ref - arr.shape[0], w_ref - arr.shape[1]
    if more_h > 0 or more_w > 0:
        widths = [(0, max(more_h, 0)), (0, max(more_w, 0))] + [(0, 0)] * (arr.ndim - 2)
        arr = np.pad(arr, widths, mode="edge")
    return arr


def dsm_for(path: str, image_shape: Sequence[int]) -> np.ndarray:
    """The test loop's DSM: float32, fitted to the tile when its size differs, min-max to
    [0, 1] over the tile (all zeros for a flat tile)."""
    dsm = np.asarray(tifffile.imread(path), dtype="float32")
    if dsm.shape[:2] != tuple(image_shape[:2]):
        dsm = fit_to(dsm, image_shape)
    lo, hi = np.min(dsm), np.max(dsm)
    return (dsm - lo) / (hi - lo) if hi > lo else np.zeros_like(dsm)


def ids_from_colours(rgb: np.ndarray) -> np.ndarray:
    """``convert_from_color``: uint8 ids, 0 wherever no palette colour matches exactly."""
    out = np.zeros(rgb.shape[:2], dtype=np.uint8)
    for k, colour in PALETTE.items():
        out[np.all(rgb == np.array(colour).reshape(1, 1, 3), axis=2)] = k
    return out


# ----------------------------------------------------------------------------- windows
def windows(shape: Sequence[int], step: int, size: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """``sliding_window``: ``(row, col, h, w)``; a start whose window would pass the end is
    clamped to ``end - size`` (and so repeats that position)."""
    for r in range(0, shape[0], step):
        if r + size[0] > shape[0]:
            r = shape[0] - size[0]
        for c in range(0, shape[1], step):
            if c + size[1] > shape[1]:
                c = shape[1] - size[1]
            yield r, c, size[0], size[1]


def chunks(n: int, items: Iterable) -> Iterator[tuple]:
    """``grouper``: consecutive tuples of ``n`` items (the last may be shorter)."""
    it = iter(items)
    while True:
        group = tuple(next(it, None) for _ in range(n))
        group = tuple(g for g in group if g is not None)
        if not group:
            return
        yield group


def pad_to_14(images: np.ndarray, dsms: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``pad_batch_to_multiple``: zeros at the bottom / right of both up to multiples of 14."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % PATCH_MULTIPLE, (-w) % PATCH_MULTIPLE
    if ph == 0 and pw == 0:
        return images, dsms, False

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)], mode="constant",
                      constant_values=0.0)

    return pad(images), pad(dsms), True


@torch.no_grad()
def predict_tile(net, img: np.ndarray, dsm: np.ndarray, window: Sequence[int], stride: int,
                 batch_size: int) -> np.ndarray:
    """The test loop's inner part for one tile: summed window logits, then the argmax."""
    acc = np.zeros(img.shape[:2] + (N_CLASSES,))
    for group in chunks(batch_size, windows(img.shape, stride, window)):
        ims = np.asarray([np.copy(img[r:r + h, c:c + w]).transpose(2, 0, 1)
                          for r, c, h, w in group])
        ds = np.asarray([np.copy(dsm[r:r + h, c:c + w]) for r, c, h, w in group])
        ims, ds, padded = pad_to_14(ims, ds)
        out = net(torch.from_numpy(ims), torch.from_numpy(ds)).numpy()
        if padded:
            out = out[:, :, :window[0], :window[1]]
        for o, (r, c, h, w) in zip(out, group, strict=True):
            acc[r:r + h, c:c + w] += o.transpose(1, 2, 0)
    return np.argmax(acc, axis=-1)


# ----------------------------------------------------------------------------- test + metric
def read_tile(main_folder, tile: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(optical ``[H, W, 3]``, DSM ``[H, W]``, label ids ``[H, W]``) as the test loop has them."""
    top, dsm_path, label = vaihingen_paths(main_folder, tile)
    img = optical(top)
    return img, dsm_for(dsm_path, img.shape), ids_from_colours(tifffile.imread(label))


def evaluate_vaihingen(net, main_folder, ids: Sequence[str] = VAIHINGEN_TEST_IDS,
                   window: Sequence[int] = (256, 256), stride: int = 32,
                   batch_size: int = 24) -> dict:
    """``test(net, test_ids, all=True, stride=...)`` then ``metrics``: returns the confusion
    matrix and the release's numbers (fractions, not percent) and the per-tile predictions."""
    preds, gts = [], []
    for tile in ids:
        img, dsm, gt = read_tile(main_folder, tile)
        preds.append(predict_tile(net, img, dsm, window, stride, batch_size))
        gts.append(gt)
    out = release_metrics(np.concatenate([p.ravel() for p in preds]),
                          np.concatenate([g.ravel() for g in gts]))
    out["preds"] = preds
    return out


def release_metrics(preds: np.ndarray, gts: np.ndarray) -> dict:
    """``metrics``: the confusion matrix over the pixels whose label and prediction are both
    among the six ids (sklearn ``labels=range(6)``: rows = label, columns = prediction), then
    OA, per-class F1 and IoU (NaN where undefined), mean F1 / mIoU over the first five."""
    keep = (gts < N_CLASSES) & (preds < N_CLASSES)
    k = N_CLASSES
    cm = np.bincount(gts[keep].astype(np.int64) * k + preds[keep].astype(np.int64),
                     minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * tp / (cm.sum(1) + cm.sum(0))
        iou = tp / (cm.sum(1) + cm.sum(0) - tp)
    return {"cm": cm, "OA": tp.sum() / cm.sum(), "F1": f1, "IoU": iou,
            "mF1": float(np.nanmean(f1[:5])), "mIoU": float(np.nanmean(iou[:5]))}
