"""Reference re-implementation of the StitchFusion release's evaluation data path and metric.

Written for fusionseg's end-to-end tests from a reading of the official code (GitHub
``LiBingyu01/StitchFusion`` at 0626d4c; the files did not change up to f04ecb7):

* ``semseg/datasets/DELIVER.py`` (``DELIVER.__getitem__``, lines 73-101, ``_open_img`` 103-110):
  the file list, the path substitutions (``depth`` is the ``hha/`` image), the event image
  resized to the RGB size (nearest), the label ``[label == 255] = 0; label -= 1`` on uint8
  (so 0 wraps to 255, the ignore value);
* ``semseg/datasets/MFNet.py`` (``__getitem__`` 39-59, ``_get_file_names`` 73-84): ``img/``,
  ``ther/``, ``labels/``; the "val" loader reads ``test.txt``; labels used as stored;
* ``semseg/augmentations_mm.py``: ``Resize`` (278-312: short side to ``size[0]``, sizes by
  Python ``round``, then a second resize up to multiples of 32; every image bilinear, the
  mask nearest), ``Normalize`` (26-43: ``img`` / 255 then ImageNet mean/std, every other
  modality / 255 only), ``get_val_augmentation`` (374-378);
* ``semseg/datasets/mcubes.py`` (``MCubeS.__getitem__`` 78-121, ``transform_val`` 133-139,
  ``Normalize`` 157-185, ``ToTensor`` 188-231, ``FixScaleCrop`` 391-454): its own pipeline on
  HxWxC numpy arrays: RGB ``/ 255`` (``/ 65535`` for 16 bit), AoLP ``[sin, cos, sin]`` raw,
  DoLP ``(d + 0.55) / 2`` repeated, NIR ``/ 255`` (``/ 65535``) repeated and not normalised,
  every array and the label lose their left 192 columns; ``FixScaleCrop(1024)``: short side to
  the crop size (long side ``int(w * crop / h)``), OpenCV ``INTER_LINEAR`` for the images,
  ``INTER_NEAREST`` for the label, then the centre ``crop x crop`` window from
  ``round((ow - crop) / 2)``, ``round((oh - crop) / 2)``; then RGB ImageNet mean/std only;
  the "val" loader reads ``list_folder/test.txt``;
* ``getting_start/val_mm.py`` (``evaluate``, 68-99): ``model(images)``, softmax, then
  ``Metrics.update``;
* ``semseg/metrics.py`` (``Metrics``, 6-24): confusion ``hist`` over the pixels whose target is
  not the ignore label (rows = target, columns = prediction), IoU = diag / (col + row - diag)
  with NaN set to 0, mIoU the mean over every class.

The release runs this with torchvision 0.10 / torch 1.9 (its ``environment.yaml``), where
``TF.resize`` of a uint8 tensor converts to float32, calls ``F.interpolate`` (bilinear with
``align_corners=False`` and no antialiasing, or torch's legacy ``"nearest"``), rounds and
casts back to uint8 (``_cast_squeeze_in`` / ``_cast_squeeze_out``). :func:`tv_resize` does
exactly that with torch alone (torchvision is not a fusionseg dependency); ``quantize=False``
leaves the resampled values as float32, which is the only step fusionseg does differently
(it resamples the values already scaled to ``[0, 1]``).

For MCubeS, OpenCV (not a fusionseg dependency) is replaced by :func:`cv2_imread_unchanged`
(``cv2.imread(path, -1)`` followed by the release's BGR -> RGB flip: the file's channels in
stored order, its bit depth kept) and :func:`cv2_resize` (``cv2.resize`` of float32 arrays:
``INTER_LINEAR`` is bilinear with half-pixel centres, clamped borders and no antialiasing,
i.e. ``F.interpolate(align_corners=False)``; ``INTER_NEAREST`` takes source pixel
``floor(dst * in / out)``, torch's legacy ``"nearest"``; a resize to the same size is a copy).

Images are read as ``torchvision.io.read_image`` does (``[C, H, W]`` uint8, every channel of
the file); here with PIL. Only what the evaluation path needs is re-implemented; nothing is
part of the package.
"""

from __future__ import annotations

import glob
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- reading
def read_image(path: str | os.PathLike) -> Tensor:
    """``torchvision.io.read_image`` (unchanged mode) for 8-bit PNGs: uint8 ``[C, H, W]``."""
    array = np.asarray(Image.open(path))
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.array(array.transpose(2, 0, 1)))


def open_img(path: str | os.PathLike) -> Tensor:
    """The datasets' ``_open_img``: RGBA loses alpha, one channel is repeated to three."""
    img = read_image(path)
    c = img.shape[0]
    if c == 4:
        img = img[:3, ...]
    if c == 1:
        img = img.repeat(3, 1, 1)
    return img


# ----------------------------------------------------------------------------- transforms
def tv_resize(x: Tensor, size: tuple[int, int], mode: str, quantize: bool = True) -> Tensor:
    """``TF.resize(x, size, mode)`` of torchvision 0.10 for a ``[C, H, W]`` tensor.

    Integer input is resampled in float32 and, with ``quantize``, rounded back to its dtype;
    ``mode`` is ``"bilinear"`` (``align_corners=False``, no antialiasing) or ``"nearest"``
    (torch's legacy nearest: source index ``floor(dst * in / out)``).
    """
    dtype = x.dtype
    y = x[None].to(torch.float32) if not x.is_floating_point() else x[None]
    if mode == "bilinear":
        y = F.interpolate(y, size=list(size), mode="bilinear", align_corners=False)
    elif mode == "nearest":
        y = F.interpolate(y, size=list(size), mode="nearest")
    else:
        raise ValueError(mode)
    y = y[0]
    if not dtype.is_floating_point and (quantize or mode == "nearest"):
        y = torch.round(y).to(dtype)
    return y


class Resize:
    """The release's evaluation ``Resize``: scale so that the short side is ``size[0]``
    (``round`` of each side), then resize again to the next multiples of 32. Every key but
    ``mask`` bilinear, ``mask`` nearest. ``quantize``: see :func:`tv_resize`."""

    def __init__(self, size, quantize: bool = True) -> None:
        self.size = size
        self.quantize = quantize

    def __call__(self, sample: dict) -> dict:
        h, w = sample["img"].shape[1:]
        factor = self.size[0] / min(h, w)
        nh, nw = round(h * factor), round(w * factor)
        for k, v in sample.items():
            sample[k] = tv_resize(v, (nh, nw), "nearest" if k == "mask" else "bilinear",
                                  self.quantize)
        ah, aw = int(math.ceil(nh / 32)) * 32, int(math.ceil(nw / 32)) * 32
        for k, v in sample.items():
            sample[k] = tv_resize(v, (ah, aw), "nearest" if k == "mask" else "bilinear",
                                  self.quantize)
        return sample


class Normalize:
    """The release's ``Normalize``: ``img`` / 255 then ImageNet mean/std; every other key
    except ``mask`` / 255 only."""

    def __call__(self, sample: dict) -> dict:
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        for k in sample:
            if k == "mask":
                continue
            x = sample[k].float() / 255
            sample[k] = (x - mean) / std if k == "img" else x
        return sample


class Compose:
    def __init__(self, transforms) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: dict) -> dict:
        for t in self.transforms:
            sample = t(sample)
        return sample


def get_val_augmentation(size, quantize: bool = True) -> Compose:
    """``Resize(size)`` then ``Normalize``, as ``get_val_augmentation`` composes them."""
    return Compose([Resize(size, quantize), Normalize()])


# ----------------------------------------------------------------------------- datasets
class DeliverRelease(Dataset):
    """The release's ``DELIVER`` dataset (no ``case`` filter). ``modals`` use the release's
    names: ``img``, ``depth`` (the ``hha/`` image), ``event``, ``lidar``.

    The paths of the other modalities come from the RGB path by plain string substitution
    (``/img`` -> ``/hha``, ``_rgb`` -> ``_depth`` ...) over the whole path, as released, so
    ``root`` itself must not contain ``/img`` or ``_rgb``.
    """

    n_classes = 25
    ignore_label = 255

    def __init__(self, root, split="val", transform=None, modals=("img",)) -> None:
        root = str(root)
        if "/img" in root or "_rgb" in root:
            raise ValueError(f"root {root!r} would be rewritten by the release's substitutions")
        self.transform = transform
        self.modals = list(modals)
        self.files = sorted(glob.glob(os.path.join(root, "img", "*", split, "*", "*.png")))
        if not self.files:
            raise FileNotFoundError(f"no DELIVER images under {root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        rgb = str(self.files[index])
        hha = rgb.replace("/img", "/hha").replace("_rgb", "_depth")
        lidar = rgb.replace("/img", "/lidar").replace("_rgb", "_lidar")
        event = rgb.replace("/img", "/event").replace("_rgb", "_event")
        label_path = rgb.replace("/img", "/semantic").replace("_rgb", "_semantic")
        sample = {"img": read_image(rgb)[:3, ...]}
        h, w = sample["img"].shape[1:]
        if "depth" in self.modals:
            sample["depth"] = open_img(hha)
        if "lidar" in self.modals:
            sample["lidar"] = open_img(lidar)
        if "event" in self.modals:
            sample["event"] = tv_resize(open_img(event), (h, w), "nearest")
        label = read_image(label_path)[0, ...].unsqueeze(0)
        label[label == 255] = 0
        label -= 1  # uint8: raw 0 wraps to 255 (ignore)
        sample["mask"] = label
        if self.transform:
            sample = self.transform(sample)
        label = torch.from_numpy(sample.pop("mask").squeeze().numpy()).long()
        return [sample[k] for k in self.modals], label


class MFNetRelease(Dataset):
    """The release's ``MFNet`` dataset: ``img/``, ``ther/``, ``labels/``; ``split="val"`` reads
    ``test.txt`` (anything else ``train.txt``); labels as stored (class 0 counts)."""

    n_classes = 9
    ignore_label = 255

    def __init__(self, root, split="val", transform=None, modals=("img", "ther")) -> None:
        self.root = str(root)
        self.transform = transform
        self.modals = list(modals)
        source = os.path.join(self.root, "test.txt" if split == "val" else "train.txt")
        self.files = [line.strip().split(" ")[0] for line in Path(source).read_text().splitlines()
                      if line.strip()]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        name = self.files[index]
        sample = {"img": read_image(os.path.join(self.root, "img", name + ".png"))[:3, ...]}
        if "ther" in self.modals:
            sample["ther"] = open_img(os.path.join(self.root, "ther", name + ".png"))
        label = read_image(os.path.join(self.root, "labels", name + ".png"))[0, ...].unsqueeze(0)
        sample["mask"] = label
        if self.transform:
            sample = self.transform(sample)
        label = torch.from_numpy(sample.pop("mask").squeeze().numpy()).long()
        return [sample[k] for k in self.modals], label


class MCubeSRelease(Dataset):
    """The release's ``MCubeS`` dataset on its evaluation path (``split="val"`` reads
    ``list_folder/test.txt`` and applies ``transform_val``). ``modals`` use the release's
    names ``image``, ``nir``, ``aolp``, ``dolp``; ``crop_size`` is ``FixScaleCrop``'s (1024 in
    the release; tiny trees pass their own). The unused ``u_map``/``v_map``/``nir_mask``/``SS``
    entries are left out; they do not reach the model or the label."""

    n_classes = 20
    ignore_label = 255
    left_offset = 192

    def __init__(self, root, split="val", modals=("image", "nir", "aolp", "dolp"),
                 crop_size: int = 1024) -> None:
        assert split in ("train", "val")
        self.root = str(root)
        self.modals = list(modals)
        self.crop_size = crop_size
        source = os.path.join(self.root, "list_folder",
                              "test.txt" if split == "val" else "train.txt")
        self.files = [line.strip().split(" ")[0] for line in Path(source).read_text().splitlines()
                      if line.strip()]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        name = self.files[index]
        path = lambda folder, ext: os.path.join(self.root, folder, name + ext)  # noqa: E731
        img = cv2_imread_unchanged(path("polL_color", ".png"))
        img = img.astype(np.float32) / (65535 if img.dtype == np.uint16 else 255)
        target = cv2_imread_unchanged(path("GT", ".png"))
        sin = np.load(path("polL_aolp_sin", ".npy"))
        cos = np.load(path("polL_aolp_cos", ".npy"))
        aolp = np.stack([sin, cos, sin], axis=2)
        dolp = (np.load(path("polL_dolp", ".npy")) + 0.55) / 2.0
        dolp = np.stack([dolp, dolp, dolp], axis=2)
        nir = cv2_imread_unchanged(path("NIR_warped", ".png"))
        nir = nir.astype(np.float32) / (65535 if nir.dtype == np.uint16 else 255)
        nir = np.stack([nir, nir, nir], axis=2)
        o = self.left_offset
        sample = {"image": img[:, o:], "label": target[:, o:], "aolp": aolp[:, o:],
                  "dolp": dolp[:, o:], "nir": nir[:, o:]}
        sample = fix_scale_crop(sample, self.crop_size)
        # Normalize: image - mean, / std; label and nir to float32, nir not scaled
        image = np.array(sample["image"]).astype(np.float32)
        image -= IMAGENET_MEAN  # in place: stays float32, as released
        image /= IMAGENET_STD
        sample["image"] = image
        # ToTensor: HWC -> CHW float32
        out = {k: torch.from_numpy(np.array(v).astype(np.float32).transpose(2, 0, 1).copy())
               for k, v in sample.items() if k != "label"}
        label = torch.from_numpy(np.array(sample["label"]).astype(np.float32)).long()
        return [out[k] for k in self.modals], label


def fix_scale_crop(sample: dict, crop_size: int) -> dict:
    """``FixScaleCrop(crop_size)`` on HxW(xC) arrays: the short side to ``crop_size``, the long
    side ``int(long * crop / short)``; ``label`` nearest, the rest bilinear; then the centre
    ``crop_size`` square from ``round((ow - crop) / 2)``, ``round((oh - crop) / 2)``."""
    h, w = sample["image"].shape[:2]
    if w > h:
        oh = crop_size
        ow = int(1.0 * w * oh / h)
    else:
        ow = crop_size
        oh = int(1.0 * h * ow / w)
    x1 = int(round((ow - crop_size) / 2.0))
    y1 = int(round((oh - crop_size) / 2.0))
    out = {}
    for k, v in sample.items():
        v = cv2_resize(v, (oh, ow), "nearest" if k == "label" else "bilinear")
        out[k] = v[y1:y1 + crop_size, x1:x1 + crop_size]
    return out


def cv2_resize(a: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """``cv2.resize(a, (w, h), INTER_LINEAR | INTER_NEAREST)`` of an HxW or HxWxC array (see
    the module docstring); the dtype is kept (nearest only moves values)."""
    if tuple(a.shape[:2]) == tuple(size):
        return a.copy()
    t = torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32)
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    if mode == "bilinear":
        t = F.interpolate(t, size=list(size), mode="bilinear", align_corners=False)
    elif mode == "nearest":
        t = F.interpolate(t, size=list(size), mode="nearest")
    else:
        raise ValueError(mode)
    t = t[0, 0] if a.ndim == 2 else t[0].permute(1, 2, 0)
    return t.numpy().astype(a.dtype)


def cv2_imread_unchanged(path: str | os.PathLike) -> np.ndarray:
    """``cv2.imread(path, -1)`` then, for colour, the release's ``[:, :, ::-1]``: HxW or HxWxC
    in the file's channel order and bit depth. 16-bit colour PNGs (which Pillow cannot hold)
    are decoded here; only unfiltered scanlines (filter 0) are supported."""
    data = Path(path).read_bytes()
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if depth != 16 or colour not in (2, 6):
        return np.array(Image.open(path))
    channels = 3 if colour == 2 else 4
    pos, idat = 8, b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = 1 + width * channels * 2
    rows = []
    for y in range(height):
        line = raw[y * stride:(y + 1) * stride]
        if line[0] != 0:
            raise NotImplementedError("filtered 16-bit PNG scanlines")
        rows.append(np.frombuffer(line[1:], dtype=">u2").reshape(width, channels))
    return np.stack(rows).astype(np.uint16)


# ----------------------------------------------------------------------------- metric
class Metrics:
    """The release's ``Metrics``: ``hist[target, prediction]`` over non-ignored pixels."""

    def __init__(self, num_classes: int, ignore_label: int) -> None:
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.hist = torch.zeros(num_classes, num_classes)

    def update(self, pred: Tensor, target: Tensor) -> None:
        pred = pred.argmax(dim=1)
        keep = target != self.ignore_label
        k = self.num_classes
        self.hist += torch.bincount(target[keep] * k + pred[keep], minlength=k * k).view(k, k)

    def compute_iou(self) -> tuple[list[float], float]:
        """Per-class IoU and mIoU in percent, unrounded (the release rounds both to 2
        decimals for printing): classes without union count 0."""
        ious = self.hist.diag() / (self.hist.sum(0) + self.hist.sum(1) - self.hist.diag())
        ious[ious.isnan()] = 0.0
        return (ious * 100).tolist(), float(ious.mean()) * 100


@torch.no_grad()
def evaluate(model, dataset: Dataset, batch_size: int = 2) -> Metrics:
    """``val_mm.evaluate`` without sliding / MSF: softmax of ``model(images)`` into Metrics."""
    model.eval()
    metrics = Metrics(dataset.n_classes, dataset.ignore_label)
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        preds = model(images)
        metrics.update(preds.softmax(dim=1), labels)
    return metrics
