"""Joint transforms over all modalities and the label of a Sample.

Every transform is a callable class ``t(sample, generator=None) -> sample``: a new dict, or
the input dict itself when the transform leaves the sample unchanged (a flip not drawn, a
crop the size of the image); the input's tensors are never modified in place. Order of the
value pipeline (see :mod:`fusionseg.data.modalities`)::

    ModalitySpec.load (physical units: [0, 1] for images, metres for depth/DSM)
      -> geometric transforms (all modalities + label)
      -> photometric transforms (ColorJitter, GaussianBlur: photometric modalities only, rgb,
         values expected in [0, 1])
      -> Normalize (last)

Geometry:

- each modality is resized with its interpolation mode from ``interpolation`` (a map
  modality -> ``"bilinear"`` | ``"nearest"``, from the ModalitySpecs; modalities not in the
  map are bilinear); the label always uses nearest. ``"nearest"`` is torch's
  ``"nearest-exact"`` (pixel-centre aligned like bilinear with ``align_corners=False``), so
  nearest and bilinear maps stay aligned. :class:`Resize` can instead resample the label with
  torch's legacy nearest (``label_interpolation="nearest-legacy"``), as torchvision and OpenCV
  do, to reproduce a release's evaluation labels.
- padding goes bottom/right; images are filled with ``fill[modality]`` (default 0; the
  builders pass :meth:`ModalitySpec.pad_value`, the value that becomes exactly 0 after
  ``Normalize``), the label with ``ignore_index`` (255).

Randomness: each call draws from ``generator`` when given (a ``torch.Generator`` or a
``random.Random``), else from torch's global RNG (which DataLoader seeds per worker), so a
transform is deterministic given a seeded generator, and worker processes do not repeat each
other. :class:`Compose` passes the generator on.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from fusionseg.data.io import DataError
from fusionseg.data.modalities import ModalitySpec, resolve_specs
from fusionseg.data.sample import IGNORE_INDEX, LABEL_KEY, META_KEY, Sample, modality_keys

from ..errors import ConfigError

__all__ = [
    "CenterCrop",
    "ColorJitter",
    "Compose",
    "GaussianBlur",
    "LABEL_INTERPOLATIONS",
    "Normalize",
    "PadToMultiple",
    "RandomHorizontalFlip",
    "RandomMisalign",
    "RandomVerticalFlip",
    "RandomScaleCrop",
    "RandomSource",
    "Resize",
    "Transform",
    "build_eval_transforms",
    "build_train_transforms",
    "fill_map",
    "interpolation_map",
    "misalign",
]

RandomSource = torch.Generator | random.Random | None
Size2 = tuple[int, int]
FillValue = float | Sequence[float]


# --------------------------------------------------------------------------- random helpers


def _uniform(gen: RandomSource, lo: float, hi: float) -> float:
    if isinstance(gen, random.Random):
        return gen.uniform(lo, hi)
    u = float(torch.rand((), generator=gen))
    return lo + (hi - lo) * u


def _randint(gen: RandomSource, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive)."""
    if hi <= lo:
        return lo
    if isinstance(gen, random.Random):
        return gen.randint(lo, hi)
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def _coin(gen: RandomSource, p: float) -> bool:
    if p <= 0:
        return False
    if p >= 1:
        return True
    return _uniform(gen, 0.0, 1.0) < p


# --------------------------------------------------------------------------- tensor helpers


def _size2(size: int | Sequence[int], what: str) -> Size2:
    if isinstance(size, int):
        h = w = size
    else:
        if len(size) != 2:
            raise ConfigError(f"{what} must be an int or (height, width), got {size!r}")
        h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ConfigError(f"{what} must be positive, got {size!r}")
    return h, w


def _sample_size(sample: Sample) -> Size2:
    for k in modality_keys(sample):
        return int(sample[k].shape[-2]), int(sample[k].shape[-1])
    lab = sample.get(LABEL_KEY)
    if isinstance(lab, torch.Tensor):
        return int(lab.shape[-2]), int(lab.shape[-1])
    raise DataError("transform got a sample with neither modalities nor label")


def _resize_image(x: torch.Tensor, size: Size2, mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x[None], size=size, mode="nearest-exact")[0]
    if mode == "bilinear":
        return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    raise ConfigError(f"unknown interpolation mode {mode!r} (use 'bilinear' or 'nearest')")


#: label resampling modes: ``"nearest"`` = torch's ``"nearest-exact"`` (source pixel
#: ``floor((dst + 0.5) * in / out)``, aligned with bilinear); ``"nearest-legacy"`` = torch's
#: legacy ``"nearest"`` (``floor(dst * in / out)``), what torchvision's
#: ``InterpolationMode.NEAREST`` and OpenCV's ``INTER_NEAREST`` compute (release pipelines
#: such as StitchFusion's evaluation ``Resize``)
LABEL_INTERPOLATIONS = ("nearest", "nearest-legacy")


def _resize_label(lab: torch.Tensor, size: Size2, mode: str = "nearest") -> torch.Tensor:
    if tuple(lab.shape[-2:]) == size:
        return lab
    if mode not in LABEL_INTERPOLATIONS:
        raise ConfigError(f"unknown label interpolation {mode!r} (use "
                          f"{' or '.join(map(repr, LABEL_INTERPOLATIONS))})")
    torch_mode = "nearest-exact" if mode == "nearest" else "nearest"
    out = F.interpolate(lab[None, None].to(torch.float32), size=size, mode=torch_mode)
    return out[0, 0].round().to(lab.dtype)


def _pad_image(x: torch.Tensor, bottom: int, right: int, fill: FillValue) -> torch.Tensor:
    bottom, right = max(bottom, 0), max(right, 0)
    if bottom == 0 and right == 0:
        return x
    c, h, w = x.shape
    values = [float(fill)] * c if isinstance(fill, (int, float)) else [float(v) for v in fill]
    if len(values) == 1:
        values = values * c
    if len(values) != c:
        raise ConfigError(f"fill has {len(values)} values for a {c}-channel tensor")
    out = x.new_empty((c, h + bottom, w + right))
    out[:] = torch.tensor(values, dtype=x.dtype).view(c, 1, 1)
    out[:, :h, :w] = x
    return out


def _pad_label(lab: torch.Tensor, bottom: int, right: int, ignore_index: int) -> torch.Tensor:
    if bottom <= 0 and right <= 0:
        return lab
    return F.pad(lab, (0, max(right, 0), 0, max(bottom, 0)), value=ignore_index)


def _copy(sample: Sample) -> Sample:
    out = dict(sample)
    if isinstance(out.get(META_KEY), dict):
        out[META_KEY] = dict(out[META_KEY])
    return out


def interpolation_map(specs: Mapping[str, ModalitySpec]) -> dict[str, str]:
    """``{modality: spec.interpolation}`` for the transforms."""
    return {name: spec.interpolation for name, spec in specs.items()}


def fill_map(specs: Mapping[str, ModalitySpec]) -> dict[str, list[float]]:
    """``{modality: spec.pad_value()}``: image fill values that normalize to exactly 0."""
    return {name: spec.pad_value() for name, spec in specs.items()}


# --------------------------------------------------------------------------- base classes


class Transform:
    """Base class: ``__call__(sample, generator=None) -> sample``."""

    def __call__(self, sample: Sample, generator: RandomSource = None) -> Sample:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply ``transforms`` in order, passing the same ``generator`` to each.

    Items may be :class:`Transform` s or plain callables ``f(sample) -> sample``.
    """

    def __init__(self, transforms: Sequence[Transform | Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, generator: RandomSource = None) -> Sample:
        for t in self.transforms:
            sample = t(sample, generator) if isinstance(t, Transform) else t(sample)
        return sample

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n])"


class _Geometric(Transform):
    def __init__(
        self,
        interpolation: Mapping[str, str] | None = None,
        fill: Mapping[str, FillValue] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.interpolation = dict(interpolation or {})
        for name, mode in self.interpolation.items():
            if mode not in ("bilinear", "nearest"):
                raise ConfigError(f"interpolation for '{name}' must be bilinear|nearest: {mode!r}")
        self.fill = dict(fill or {})
        self.ignore_index = ignore_index

    def _resize_all(self, sample: Sample, size: Size2, label_mode: str = "nearest") -> Sample:
        out = _copy(sample)
        for k in modality_keys(sample):
            out[k] = _resize_image(sample[k], size, self.interpolation.get(k, "bilinear"))
        if isinstance(sample.get(LABEL_KEY), torch.Tensor):
            out[LABEL_KEY] = _resize_label(sample[LABEL_KEY], size, label_mode)
        return out

    def _pad_all(self, sample: Sample, bottom: int, right: int) -> Sample:
        if bottom <= 0 and right <= 0:
            return sample
        out = _copy(sample)
        for k in modality_keys(sample):
            out[k] = _pad_image(sample[k], bottom, right, self.fill.get(k, 0.0))
        if isinstance(sample.get(LABEL_KEY), torch.Tensor):
            out[LABEL_KEY] = _pad_label(sample[LABEL_KEY], bottom, right, self.ignore_index)
        return out


# --------------------------------------------------------------------------- geometric


class RandomScaleCrop(_Geometric):
    """Resize by a random factor, then take a random ``crop_size`` window (padding if needed).

    The factor ``r`` is uniform in ``scale_range``; the new size is ``round(H * r * s0)`` x
    ``round(W * r * s0)`` with ``s0 = 1``, or, with ``base_size=(bh, bw)``, the factor that
    fits the image into ``base_size`` (``min(bh / H, bw / W)``). Where the resized image is
    smaller than the crop it is padded bottom/right (images with ``fill``, label with
    ``ignore_index``). With ``cat_max_ratio`` (mmseg's rule) up to 10 crop windows are drawn
    until no single class covers ``>= cat_max_ratio`` of the window's labelled pixels.

    Args:
        crop_size: ``(height, width)`` (or an int for square) of the output.
        scale_range: ``(min, max)`` of ``r``.
        cat_max_ratio: see above; ``None`` disables.
        base_size: see above.
        interpolation: modality -> ``"bilinear"`` | ``"nearest"`` (default bilinear).
        fill: modality -> image pad value(s) (default 0).
        ignore_index: label pad value.

    Output: every modality ``[C, crop_h, crop_w]``, label ``[crop_h, crop_w]``.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int],
        scale_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float | None = None,
        *,
        base_size: int | Sequence[int] | None = None,
        interpolation: Mapping[str, str] | None = None,
        fill: Mapping[str, FillValue] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(interpolation, fill, ignore_index)
        self.crop_size = _size2(crop_size, "crop_size")
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range must satisfy 0 < min <= max, got {scale_range!r}")
        self.scale_range = (lo, hi)
        if cat_max_ratio is not None and not 0 < cat_max_ratio <= 1:
            raise ConfigError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        self.cat_max_ratio = cat_max_ratio
        self.base_size = None if base_size is None else _size2(base_size, "base_size")

    def _crop_ok(self, label: torch.Tensor, top: int, left: int) -> bool:
        ch, cw = self.crop_size
        window = label[top : top + ch, left : left + cw]
        valid = window[window != self.ignore_index]
        if valid.numel() == 0:
            return False
        counts = torch.bincount(valid.flatten().clamp_min(0))
        counts = counts[counts > 0]
        return len(counts) > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio

    def __call__(self, sample: Sample, generator: RandomSource = None) -> Sample:
        h, w = _sample_size(sample)
        s0 = 1.0
        if self.base_size is not None:
            s0 = min(self.base_size[0] / h, self.base_size[1] / w)
        r = _uniform(generator, *self.scale_range) * s0
        nh, nw = max(1, int(round(h * r))), max(1, int(round(w * r)))
        out = self._resize_all(sample, (nh, nw))
        ch, cw = self.crop_size
        out = self._pad_all(out, ch - nh, cw - nw)
        ph, pw = max(nh, ch), max(nw, cw)
        top, left = _randint(generator, 0, ph - ch), _randint(generator, 0, pw - cw)
        label = out.get(LABEL_KEY)
        if self.cat_max_ratio is not None and isinstance(label, torch.Tensor):
            for _ in range(9):
                if self._crop_ok(label, top, left):
                    break
                top, left = _randint(generator, 0, ph - ch), _randint(generator, 0, pw - cw)
        for k in modality_keys(out):
            out[k] = out[k][:, top : top + ch, left : left + cw].contiguous()
        if isinstance(label, torch.Tensor):
            out[LABEL_KEY] = label[top : top + ch, left : left + cw].contiguous()
        return out


class RandomHorizontalFlip(Transform):
    """Flip all modalities and the label left-right with probability ``p``."""

    dim = -1

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, sample: Sample, generator: RandomSource = None) -> Sample:
        if not _coin(generator, self.p):
            return sample
        out = _copy(sample)
        for k in modality_keys(sample):
            out[k] = sample[k].flip(self.dim)
        if isinstance(sample.get(LABEL_KEY), torch.Tensor):
            out[LABEL_KEY] = sample[LABEL_KEY].flip(self.dim)
        return out


class RandomVerticalFlip(RandomHorizontalFlip):
    """Flip all modalities and the label top-bottom with probability ``p`` (aerial images, e.g.
    the MoBaNet recipe)."""

    dim = -2


def misalign(x: torch.Tensor, shift: Sequence[float] = (0.0, 0.0), rotation: float = 0.0, *,
             fill: FillValue = 0.0, mode: str = "bilinear") -> torch.Tensor:
    """Move the content of an image by a rotation about its centre, then a shift.

    The content at pixel ``p`` (column ``x``, row ``y``; pixel centres at integers) moves to
    ``c + R(rotation) (p - c) + (dx, dy)`` with ``c = ((W - 1) / 2, (H - 1) / 2)`` and ``R``
    counter-clockwise as the image is displayed (rows pointing down). Each output pixel
    samples the input at the inverse map (``grid_sample``, ``align_corners=False``); output
    pixels whose source lies outside the image get ``fill`` (bilinear: pixels within one
    pixel of the border blend towards it). An integer shift without rotation is an exact
    copy of the shifted window (no resampling). Deterministic on CPU.

    Args:
        x: ``[C, H, W]`` or ``[B, C, H, W]`` float tensor (every image of a batch gets the
            same motion).
        shift: ``(dx, dy)`` in pixels: content moves ``dx`` to the right, ``dy`` down.
        rotation: degrees, counter-clockwise on screen.
        fill: value of the uncovered pixels: one float or one per channel (0 for a normalised
            tensor is the normalisation mean; :meth:`ModalitySpec.pad_value` before
            normalisation).
        mode: ``"bilinear"`` or ``"nearest"`` resampling.

    Returns:
        A new tensor of ``x``'s shape and dtype.

    Raises:
        ConfigError: an unknown ``mode``, or ``fill`` with a wrong number of values.
    """
    if mode not in ("bilinear", "nearest"):
        raise ConfigError(f"unknown interpolation mode {mode!r} (use 'bilinear' or 'nearest')")
    batched = x.dim() == 4
    xb = x if batched else x[None]
    c, h, w = xb.shape[-3:]
    values = [float(fill)] * c if isinstance(fill, (int, float)) else [float(v) for v in fill]
    if len(values) == 1:
        values = values * c
    if len(values) != c:
        raise ConfigError(f"fill has {len(values)} values for a {c}-channel tensor")
    fv = torch.tensor(values, dtype=xb.dtype).view(1, c, 1, 1)
    dx, dy = float(shift[0]), float(shift[1])
    if float(rotation) % 360.0 == 0.0 and dx.is_integer() and dy.is_integer():
        out = fv.expand_as(xb).clone()
        sx, sy = int(dx), int(dy)
        if abs(sx) < w and abs(sy) < h:
            out[..., max(sy, 0):h + min(sy, 0), max(sx, 0):w + min(sx, 0)] = \
                xb[..., max(-sy, 0):h + min(-sy, 0), max(-sx, 0):w + min(-sx, 0)]
        return out if batched else out[0]
    a = math.radians(float(rotation))
    cos, sin = math.cos(a), math.sin(a)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    u, v = xs - cx - dx, ys - cy - dy  # output pixel relative to the moved centre
    src_x = cos * u - sin * v + cx  # inverse rotation (screen counter-clockwise forward)
    src_y = sin * u + cos * v + cy
    grid = torch.stack(((2 * src_x + 1) / w - 1, (2 * src_y + 1) / h - 1), -1)
    grid = grid.to(xb.dtype)[None].expand(xb.shape[0], h, w, 2)
    out = F.grid_sample(xb - fv, grid, mode=mode, padding_mode="zeros",
                        align_corners=False) + fv
    return out if batched else out[0]


class RandomMisalign(Transform):
    """Training augmentation against imperfect registration: every modality but
    ``reference`` is, with probability ``p`` (independently per modality), rotated by an angle
    uniform in ``[-max_rotation, max_rotation]`` degrees about the image centre and shifted
    by ``(dx, dy)``, each uniform in ``[-max_shift, max_shift]`` pixels (of the sample as it
    reaches this transform, i.e. the training crop), with :func:`misalign`. The reference
    modality and the label do not move; uncovered pixels get ``fill[modality]`` (default 0;
    the builder passes the value that normalises to 0). Modalities absent from a sample are
    skipped.

    Draws (from ``generator``): per non-reference modality in the sample's order, one coin,
    then (when it moves) ``dx``, ``dy`` and the angle.

    Raises:
        ConfigError: ``p`` outside ``[0, 1]``, a negative ``max_shift`` or ``max_rotation``.
    """

    def __init__(self, reference: str, p: float = 0.5, max_shift: float = 4.0,
                 max_rotation: float = 2.0, interpolation: Mapping[str, str] | None = None,
                 fill: Mapping[str, FillValue] | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"misalign probability must be in [0, 1], got {p}")
        if max_shift < 0 or max_rotation < 0:
            raise ConfigError(f"misalign max_shift / max_rotation must be >= 0, got "
                              f"{max_shift} / {max_rotation}")
        self.reference, self.p = reference, float(p)
        self.max_shift, self.max_rotation = float(max_shift), float(max_rotation)
        self.interpolation = dict(interpolation or {})
        self.fill = dict(fill or {})

    def __call__(self, sample: Sample, generator: RandomSource = None) -> Sample:
        out = None
        for k in modality_keys(sample):
            if k == self.reference or not _coin(generator, self.p):
                continue
            dx = _uniform(generator, -self.max_shift, self.max_shift)
            dy = _uniform(generator, -self.max_shift, self.max_shift)
            angle = _uniform(generator, -self.max_rotation, self.max_rotation)
            out = _copy(sample) if out is None else out
            out[k] = misalign(sample[k], (dx, dy), angle, fill=self.fill.get(k, 0.0),
                              mode=self.interpolation.get(k, "bilinear"))
        return sample if out is None else out


class Resize(_Geometric):
    """Deterministic resize to ``size`` (``(h, w)`` or int for square), e.g. for evaluation.

    With ``keep_ratio`` the image is scaled by ``min(h / H, w / W)`` (fits into ``size``,
    aspect kept). With ``resize_label=False`` the label keeps its original size (evaluate at
    the original resolution by resizing logits back). ``label_interpolation``: ``"nearest"``
    (default, pixel-centre aligned) or ``"nearest-legacy"`` (torchvision / OpenCV nearest, for
    parity with pipelines that resize labels that way); see :data:`LABEL_INTERPOLATIONS`.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        keep_ratio: bool = False,
        resize_label: bool = True,
        interpolation: Mapping[str, str] | None = None,
        label_interpolation: str = "nearest",
    ) -> None:
        super().__init__(interpolation)
        self.size = _size2(size, "size")
        self.keep_ratio = keep_ratio
        self.resize_label = resize_label
        if label_interpolation not in LABEL_INTERPOLATIONS:
            raise ConfigError(f"label_interpolation must be one of {LABEL_INTERPOLATIONS}, "
                              f"got {label_interpolation!r}")
        self.label_interpolation = label_interpolation

    def __call__(self, sample: Sample, generator: RandomSource = None) -> Sample:
        h, w = _sample_size(sample)
        size = self.size
        if self.keep_ratio:
            s = min(size[0] / h, size[1] / w)
            size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        if self.resize_label:
            return self._resize_all(sample, size, self.label_interpolation)
        out = _copy(sample)
        for k in modality_keys(sample):
            out[k] = _resize_image(sample[k], size, self.interpolation.get(k, "bilinear"))
        return out


class PadToMultiple(_Geometric):
    """Pad bottom/right so H and W are multiples of ``multiple`` (e.g. 32 for a stride-32 net).

    Images are filled with ``fill`` (default 0), the label with ``ignore_index``. Sets
    ``meta["unpadded_size"] = (H, W)`` so predictions can be cropped back.
    """

    def __init__(
        self,
        multiple: int = 32,
        *,
        fill: Mapping[str, FillValue] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(None, fill, ignore_index)
        if multiple < 1:
            raise ConfigError(f"multiple must be >= 1, got {multiple}")
        self.multiple = multiple

    def __call__(self, sample: Sample, generator: RandomSource = None) -> Sample:
        h, w = _sample_size(sample)
        m = self.multiple
        bottom, right = (-h) % m, (-w) % m
        label = sample.get(LABEL_KEY)
        if isinstance(label, torch.Tensor) and tuple(label.shape[-2:]) != (h, w):
            # label kept at another resolution (Resize(resize_label=False)): leave it alone
            out = _copy(sample)
            out[LABEL_KEY] = None
            out = self._pad_all(out, bottom, right)
            out = out if out is not sample else _copy(sample)
            out[LABEL_KEY] = label
        else:
            out = self._pad_all(sample, bottom, right)
            out = out if out is not sample else _copy(sample)
        if isinstance(out.get(META_KEY), dict):
            out[META_KEY]["unpadded_size"] = (h, w)
        return out


class CenterCrop(_Geometric):
    """Cut the centre ``size`` window (``(h, w)`` or int for square) of every modality and the
    label, e.g. to score a release's centre crop (MCubeS: 1024 x 1024 of 1024 x 1032).

    The window starts at ``top = round((H - h) / 2)``, ``left = round((W - w) / 2)`` (Python's
    ``round``, as torchvision's ``CenterCrop`` and the MCubeS release's ``FixScaleCrop``). A
    dimension already of the crop's size is kept; the label must have the images' size.

    Raises:
        ConfigError: a size that is not positive.
        DataError: a sample smaller than ``size``, or a label of another size than the images.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        self.size = _size2(size, "crop size")

    def __call__(self, sample: Sample, generator: RandomSource = None) -> Sample:
        h, w = _sample_size(sample)
        ch, cw = self.size
        if h < ch or w < cw:
            raise DataError(f"sample is {h}x{w}, smaller than the {ch}x{cw} centre crop "
                            "(data.eval_crop)")
        label = sample.get(LABEL_KEY)
        if isinstance(label, torch.Tensor) and tuple(label.shape[-2:]) != (h, w):
            raise DataError(f"label is {label.shape[-2]}x{label.shape[-1]}, images {h}x{w}: "
                            "the centre crop needs both at one size")
        if (h, w) == (ch, cw):
            return sample
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        out = _copy(sample)
        for k in modality_keys(sample):
            out[k] = sample[k][..., top : top + ch, left : left + cw].contiguous()
        if isinstance(label, torch.Tensor):
            out[LABEL_KEY] = label[..., top : top + ch, left : left + cw].contiguous()
        return out


# --------------------------------------------------------------------------- photometric


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == 3:
        return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    return x.mean(0, keepdim=True)


def _hue_shift(x: torch.Tensor, frac: float) -> torch.Tensor:
    """Rotate the chroma of an RGB tensor by ``frac`` of a full turn (YIQ rotation)."""
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=x.dtype
    )
    theta = 2 * math.pi * frac
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=x.dtype)
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.einsum("ij,jhw->ihw", m, x)


class ColorJitter(Transform):
    """With probability ``p``, jitter brightness, contrast, saturation and hue of the
    photometric modalities (default ``("rgb",)``) in a random order; other modalities are
    untouched. Values are expected in ``[0, 1]`` (before ``Normalize``) and clamped to it.

    Factors are uniform in ``[1 - b, 1 + b]`` (brightness/contrast/saturation) and the hue
    shift uniform in ``[-hue, hue]`` turns (``hue <= 0.5``). Saturation and hue act on
    3-channel modalities only.
    """

    def __init__(
        self,
        p: float = 0.2,
        brightness: float = 0.25,
        contrast: float = 0.25,
        saturation: float = 0.25,
        hue: float = 0.0,
        *,
        photometric: Sequence[str] = ("rgb",),
    ) -> None:
        self.p = p
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        if not 0 <= hue <= 0.5:
            raise ConfigError(f"hue must be in [0, 0.5], got {hue}")
        self.hue = hue
        self.photometric = tuple(photometric)

    def __call__(self, sample: Sample, generator: RandomSource = None) -> Sample:
        names = [k for k in modality_keys(sample) if k in self.photometric]
        if not names or not _coin(generator, self.p):
            return sample
        b = _uniform(generator, 1 - self.brightness, 1 + self.brightness)
        c = _uniform(generator, 1 - self.contrast, 1 + self.contrast)
        s = _uniform(generator, 1 - self.saturation, 1 + self.saturation)
        hshift = _uniform(generator, -self.hue, self.hue) if self.hue > 0 else 0.0
        order = list(range(4))
        for i in range(3, 0, -1):  # Fisher-Yates with our generator
            j = _randint(generator, 0, i)
            order[i], order[j] = order[j], order[i]
        out = _copy(sample)
        for k in names:
            x = sample[k]
            for op in order:
                if op == 0 and b != 1:
                    x = (x * b).clamp(0, 1)
                elif op == 1 and c != 1:
                    mean = _gray(x).mean()
                    x = ((x - mean) * c + mean).clamp(0, 1)
                elif op == 2 and s != 1 and x.shape[0] == 3:
                    g = _gray(x)
                    x = ((x - g) * s + g).clamp(0, 1)
                elif op == 3 and hshift != 0 and x.shape[0] == 3:
                    x = _hue_shift(x, hshift).clamp(0, 1)
            out[k] = x.contiguous()
        return out


class GaussianBlur(Transform):
    """With probability ``p``, blur the photometric modalities (default ``("rgb",)``) with a
    ``kernel_size`` x ``kernel_size`` Gaussian of sigma uniform in ``sigma`` (edge pixels
    replicated). Other modalities are untouched."""

    def __init__(
        self,
        p: float = 0.2,
        kernel_size: int = 3,
        sigma: tuple[float, float] = (0.1, 2.0),
        *,
        photometric: Sequence[str] = ("rgb",),
    ) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        self.p = p
        self.kernel_size = kernel_size
        self.sigma = (float(sigma[0]), float(sigma[1]))
        self.photometric = tuple(photometric)

    def __call__(self, sample: Sample, generator: RandomSource = None) -> Sample:
        names = [k for k in modality_keys(sample) if k in self.photometric]
        if not names or not _coin(generator, self.p):
            return sample
        sig = _uniform(generator, *self.sigma)
        k = self.kernel_size
        t = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
        g = torch.exp(-(t**2) / (2 * sig**2))
        g = g / g.sum()
        kernel2d = g[:, None] * g[None, :]
        out = _copy(sample)
        for name in names:
            x = sample[name]
            cch = x.shape[0]
            weight = kernel2d.to(x.dtype).expand(cch, 1, k, k)
            xp = F.pad(x[None], (k // 2,) * 4, mode="replicate")
            out[name] = F.conv2d(xp, weight, groups=cch)[0].contiguous()
        return out


# --------------------------------------------------------------------------- normalization


class Normalize(Transform):
    """Normalize each modality with its spec (:meth:`ModalitySpec.normalize_tensor`); the last
    transform. Modalities without a spec pass unchanged."""

    def __init__(self, specs: Mapping[str, ModalitySpec]) -> None:
        self.specs = dict(specs)

    def __call__(self, sample: Sample, generator: RandomSource = None) -> Sample:
        out = _copy(sample)
        for k in modality_keys(sample):
            spec = self.specs.get(k)
            if spec is not None:
                out[k] = spec.normalize_tensor(sample[k])
        return out

    def __repr__(self) -> str:
        return f"Normalize({ {k: s.normalize for k, s in self.specs.items()} })"


# --------------------------------------------------------------------------- builders


def _as_specs(specs: Mapping[str, ModalitySpec] | Sequence[str]) -> dict[str, ModalitySpec]:
    if isinstance(specs, Mapping):
        return dict(specs)
    return resolve_specs(list(specs))


def build_train_transforms(
    specs: Mapping[str, ModalitySpec] | Sequence[str],
    crop_size: int | Sequence[int],
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip_prob: float = 0.5,
    photometric: bool = True,
    *,
    vflip_prob: float = 0.0,
    cat_max_ratio: float | None = None,
    base_size: int | Sequence[int] | None = None,
    jitter_p: float = 0.2,
    blur_p: float = 0.2,
    blur_kernel: int = 3,
    normalize: bool = True,
    ignore_index: int = IGNORE_INDEX,
    misalign: Mapping[str, float] | None = None,
    reference: str | None = None,
) -> Compose:
    """Training pipeline: RandomScaleCrop -> RandomHorizontalFlip -> [RandomVerticalFlip]
    -> [ColorJitter ->
    GaussianBlur on modalities whose spec has ``photometric=True``] -> [RandomMisalign]
    -> [Normalize].

    Interpolation modes and pad values come from ``specs`` (a dict of ModalitySpecs, e.g. the
    dataset's ``specs``, or modality names for the defaults); padded image pixels are 0 after
    Normalize, padded label pixels ``ignore_index``. ``misalign`` (``{"prob", "max_shift",
    "max_rotation"}``, pixels and degrees; None: off) adds :class:`RandomMisalign` of every
    modality but ``reference`` (default: the first of ``specs``), after the other random
    transforms so their draws are those of the run without it. Call as ``t(sample)`` or
    ``t(sample, generator)``.
    """
    specs = _as_specs(specs)
    ts: list[Transform] = [
        RandomScaleCrop(
            crop_size,
            scale_range,
            cat_max_ratio,
            base_size=base_size,
            interpolation=interpolation_map(specs),
            fill=fill_map(specs),
            ignore_index=ignore_index,
        ),
        RandomHorizontalFlip(flip_prob),
    ]
    if vflip_prob > 0:
        ts.append(RandomVerticalFlip(vflip_prob))
    photo = [k for k, s in specs.items() if s.photometric]
    if photometric and photo:
        ts.append(ColorJitter(jitter_p, photometric=photo))
        ts.append(GaussianBlur(blur_p, blur_kernel, photometric=photo))
    if misalign is not None:
        ref = reference if reference is not None else next(iter(specs), None)
        ts.append(RandomMisalign(ref, misalign.get("prob", 0.5), misalign.get("max_shift", 4.0),
                                 misalign.get("max_rotation", 2.0),
                                 interpolation=interpolation_map(specs), fill=fill_map(specs)))
    if normalize:
        ts.append(Normalize(specs))
    return Compose(ts)


def build_eval_transforms(
    specs: Mapping[str, ModalitySpec] | Sequence[str],
    size: int | Sequence[int] | None = None,
    *,
    keep_ratio: bool = False,
    resize_label: bool = True,
    pad_multiple: int | None = None,
    normalize: bool = True,
    ignore_index: int = IGNORE_INDEX,
    label_interpolation: str = "nearest",
    crop: int | Sequence[int] | None = None,
    pre_size: int | Sequence[int] | None = None,
) -> Compose:
    """Evaluation pipeline: [Resize(pre_size)] -> [Resize(size)] -> [CenterCrop(crop)] ->
    [PadToMultiple(pad_multiple)] -> [Normalize].

    ``size=None`` keeps the native size. DELIVER's reference protocol is ``size=(1024, 1024)``
    with the label resized (nearest); ``resize_label=False`` keeps the label at full size;
    ``label_interpolation`` picks the label's nearest rule (see :class:`Resize`). ``crop``
    cuts the centre window of that size from every modality and the label after the resize
    (:class:`CenterCrop`; MCubeS releases score the centre 1024 x 1024); it needs the label
    at the images' size. ``pre_size`` is a first resize before ``size``, for releases that
    resize twice (StitchFusion: short side to the eval size, then up to multiples of 32; two
    bilinear / nearest steps are not one).
    """
    specs = _as_specs(specs)
    ts: list[Transform] = []
    for step in (pre_size, size):
        if step is None:
            continue
        ts.append(
            Resize(
                step,
                keep_ratio=keep_ratio,
                resize_label=resize_label,
                interpolation=interpolation_map(specs),
                label_interpolation=label_interpolation,
            )
        )
    if crop is not None:
        ts.append(CenterCrop(crop))
    if pad_multiple is not None and pad_multiple > 1:
        ts.append(PadToMultiple(pad_multiple, fill=fill_map(specs), ignore_index=ignore_index))
    if normalize:
        ts.append(Normalize(specs))
    return Compose(ts)
