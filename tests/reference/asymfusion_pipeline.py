"""Reference re-implementation of the AsymFusion release's NYUDv2 evaluation data path and metric.

Written for fusionseg's end-to-end tests from a reading of the official code (GitHub
``yikaiw/AsymFusion`` at 25dbb6f); nothing here is part of the package:

* ``config.py``: ``NORMALISE_PARAMS`` (lines 15-18: image scale 1/255, ImageNet mean/std, depth
  scale 1/5000), ``NUM_CLASSES = 40``, ``IGNORE_LABEL = 255`` (21, 24), the lists
  ``nyudv2/val.txt`` (one ``rgb/X.png<TAB>masks/X.png<TAB>depth/X.png`` line per image);
* ``utils/datasets.py``: ``SegDataset`` (lines 8-9 split a list line on tabs; 59-82
  ``__getitem__``: inputs ``rgb`` and ``depth`` from the columns ``input_mask_idxs = [0, 2, 1]``
  of ``main.py:176``, the mask from column 1 read with PIL as stored, 2-D required),
  ``read_image`` (91-104: ``np.array(Image.open(x))``, a 2-D image - the uint16 depth - tiled to
  3 channels);
* ``utils/transforms.py``: the validation transforms of ``main.py:189-194``:
  ``CropAlignToMask`` (151-167: each input centre-cropped to the mask's size when it differs),
  ``ResizeInputs(None)`` (189-198: a no-op, ``RESIZE_SIZE = None``), ``Normalise`` (240-276:
  ``(scale * rgb - mean) / std`` in float64; ``depth * depth_scale``), ``ToTensor`` (279-290:
  HWC -> CHW float32, mask int64);
* ``main.py`` ``validate`` (289-345): batch size 1; the mask cast to uint8 and only pixels
  ``< num_classes`` kept (313-314); every output (rgb, depth, ensemble) resized from 1/4 scale to
  the mask's size with ``cv2.resize(..., interpolation=cv2.INTER_CUBIC)`` on the HWC float32
  logits, argmax (318-320); ``confusion_matrix(gt, pred, 40)`` summed over the images (322);
* ``utils/meter.py``: ``confusion_matrix`` (7-11: ``bincount(n * gt + pred)``, rows = ground
  truth), ``getScores`` (14-22: overall accuracy, ``nanmean`` of per-class accuracy, ``nanmean``
  of IoU - classes without union are left out - all in percent).

OpenCV is not a fusionseg dependency: :func:`cv2_resize_cubic` re-implements
``cv2.resize(src, (W, H), interpolation=cv2.INTER_CUBIC)`` for float images (destination pixel
``d`` samples the source at ``(d + 0.5) * in / out - 0.5``; Keys cubic kernel with
``A = -0.75``; taps outside the image clamped to the edge pixel; separable, rows first).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMG_SCALE = 1.0 / 255
IMG_MEAN = np.array([0.485, 0.456, 0.406]).reshape((1, 1, 3))
IMG_STD = np.array([0.229, 0.224, 0.225]).reshape((1, 1, 3))
DEPTH_SCALE = 1.0 / 5000
NUM_CLASSES = 40
IGNORE_LABEL = 255


# ----------------------------------------------------------------------------- reading
def read_image(path: str | os.PathLike) -> np.ndarray:
    """``SegDataset.read_image``: the file as PIL gives it; one channel -> tiled to 3 (HWC)."""
    arr = np.array(Image.open(path))
    if arr.ndim == 2:
        arr = np.stack([arr, arr, arr], axis=2)
    return arr


def crop_align_to_mask(x: np.ndarray, mask_hw: tuple[int, int]) -> np.ndarray:
    """``CropAlignToMask``: a centre crop to the mask's size (the extra odd row / column comes
    off the bottom / right)."""
    h, w = x.shape[:2]
    mh, mw = mask_hw
    if (h, w) == (mh, mw):
        return x
    top, left = (h - mh) // 2, (w - mw) // 2
    return x[top: h - top - (h - mh) % 2, left: w - left - (w - mw) % 2]


class NYUDv2Release:
    """The release's ``SegDataset`` in the validation stage, for ``dataset='nyudv2'``.

    ``list_file``: lines ``<rgb path>\\t<mask path>\\t<depth path>`` relative to ``root``. The
    masks are the release's encoding (0..39 classes, 255 void); the depth PNGs are uint16 in the
    release's unit (1/5000 m: ``raw / 5000`` is metres).
    """

    def __init__(self, root: str | os.PathLike, list_file: str | os.PathLike) -> None:
        self.root = str(root)
        with open(list_file, "rb") as f:
            self.datalist = [line.decode("utf-8").strip("\n").split("\t") for line in f]

    def __len__(self) -> int:
        return len(self.datalist)

    def __getitem__(self, index: int) -> dict:
        names = [os.path.join(self.root, rel) for rel in self.datalist[index]]
        rgb_path, mask_path, depth_path = names[0], names[1], names[2]  # idxs [0, 2, 1]
        sample = {"rgb": read_image(rgb_path), "depth": read_image(depth_path)}
        mask = np.array(Image.open(mask_path))
        assert mask.ndim == 2, "Masks must be encoded without colourmap"
        # validation transforms: CropAlignToMask, ResizeInputs(None), Normalise, ToTensor
        for key in ("rgb", "depth"):
            sample[key] = crop_align_to_mask(sample[key], mask.shape)
        sample["rgb"] = (IMG_SCALE * sample["rgb"] - IMG_MEAN) / IMG_STD
        sample["depth"] = DEPTH_SCALE * sample["depth"]
        out = {k: torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1))).float()
               for k, v in sample.items()}
        out["mask"] = torch.from_numpy(mask).long()
        return out


# ----------------------------------------------------------------------------- cv2 cubic
def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """OpenCV's ``interpolateCubic`` (A = -0.75) for fractions ``t`` -> ``[len(t), 4]``."""
    a = -0.75
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    w3 = 1 - w0 - w1 - w2
    return np.stack([w0, w1, w2, w3], axis=1)


def _cubic_axis(x: np.ndarray, out: int, axis: int) -> np.ndarray:
    n = x.shape[axis]
    scale = n / out
    pos = (np.arange(out) + 0.5) * scale - 0.5
    base = np.floor(pos).astype(np.int64)
    w = _cubic_weights(pos - base)
    res = 0
    for k in range(4):
        idx = np.clip(base - 1 + k, 0, n - 1)
        shape = [1] * x.ndim
        shape[axis] = out
        res = res + np.take(x, idx, axis=axis) * w[:, k].reshape(shape)
    return res


def cv2_resize_cubic(x: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(x, (W, H), interpolation=cv2.INTER_CUBIC)`` of an ``[h, w, C]`` float
    image (computed in float64)."""
    y = _cubic_axis(x.astype(np.float64), size_hw[1], axis=1)
    return _cubic_axis(y, size_hw[0], axis=0)


# ----------------------------------------------------------------------------- metric
def confusion_matrix(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    """``utils/meter.py`` ``confusion_matrix``: rows ``x`` (ground truth), columns ``y``."""
    k = (x >= 0) & (y < n)
    return np.bincount(n * x[k].astype(int) + y[k], minlength=n ** 2).reshape(n, n)


def get_scores(conf: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    """``getScores``: overall acc, nanmean class acc, nanmean IoU (percent); plus the per-class
    IoU (fraction, NaN where a class has no union) that the nanmean runs over."""
    if conf.sum() == 0:
        return 0.0, 0.0, 0.0, np.full(len(conf), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        overall = np.diag(conf).sum() / float(conf.sum())
        perclass = np.diag(conf) / conf.sum(1).astype(float)
        iou = np.diag(conf) / (conf.sum(1) + conf.sum(0) - np.diag(conf)).astype(float)
    return overall * 100.0, np.nanmean(perclass) * 100.0, np.nanmean(iou) * 100.0, iou


@torch.no_grad()
def validate(segmenter, dataset: NYUDv2Release, num_classes: int = NUM_CLASSES,
             upsample=cv2_resize_cubic) -> list[np.ndarray]:
    """``main.validate``: one confusion matrix per output (rgb, depth, ensemble).

    ``segmenter([rgb, depth])`` returns ``([out_rgb, out_depth, out_ens], alpha)`` at 1/4
    scale, as the released ``RefineNet`` does; ``upsample(logits_hwc, (H, W))`` is the
    evaluation resize (the release's cv2 bicubic by default).
    """
    segmenter.eval()
    conf = [np.zeros((num_classes, num_classes), dtype=int) for _ in range(3)]
    for i in range(len(dataset)):
        s = dataset[i]
        inputs = [s["rgb"][None], s["depth"][None]]
        target = s["mask"][None]
        gt = target[0].numpy().astype(np.uint8)
        gt_idx = gt < num_classes
        outputs, _ = segmenter(inputs)
        for idx, output in enumerate(outputs):
            logits = output[0, :num_classes].numpy().transpose(1, 2, 0)
            pred = upsample(logits, tuple(target.shape[1:])).argmax(axis=2).astype(np.uint8)
            conf[idx] += confusion_matrix(gt[gt_idx], pred[gt_idx], num_classes)
    return conf


def write_list(root: str | os.PathLike, names: list[str], path: str | os.PathLike, *,
               rgb: str = "rgb/{}.png", mask: str = "masks/{}.png",
               depth: str = "depth/{}.png") -> Path:
    """A list file in the release's format (``rgb<TAB>mask<TAB>depth`` per line)."""
    path = Path(path)
    path.write_text("".join(f"{rgb.format(n)}\t{mask.format(n)}\t{depth.format(n)}\n"
                            for n in names))
    return path
