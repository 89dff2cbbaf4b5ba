"""Known-answer tests for the joint transforms: small patterned inputs, outputs worked out by hand.

Random draws come from :class:`Scripted`, a ``random.Random`` whose ``uniform`` / ``randint``
return listed values, so each test states the factors / offsets it draws and the exact output.
"""

from __future__ import annotations

import random

import pytest
import torch

from fusionseg.data.io import DataError
from fusionseg.data.modalities import ModalitySpec
from fusionseg.data.transforms import (
    CenterCrop,
    ColorJitter,
    Compose,
    GaussianBlur,
    PadToMultiple,
    RandomHorizontalFlip,
    RandomMisalign,
    RandomScaleCrop,
    RandomVerticalFlip,
    Resize,
    _hue_shift,
    build_eval_transforms,
    build_train_transforms,
    misalign,
)
from fusionseg.errors import ConfigError


class Scripted(random.Random):
    """``uniform(lo, hi) = lo + (hi - lo) * u`` for the listed ``us``; ``randint`` returns the
    listed ints (checked to lie in ``[lo, hi]``). Drawing more than listed is an error."""

    def __init__(self, us=(), ints=()) -> None:
        super().__init__(0)
        self.us, self.ints = list(us), list(ints)
        self.calls: list[tuple] = []

    def uniform(self, lo, hi):  # noqa: D102
        self.calls.append(("uniform", lo, hi))
        if not self.us:
            raise AssertionError(f"unexpected uniform({lo}, {hi}) draw")
        return lo + (hi - lo) * self.us.pop(0)

    def randint(self, lo, hi):  # noqa: D102
        self.calls.append(("randint", lo, hi))
        if not self.ints:
            raise AssertionError(f"unexpected randint({lo}, {hi}) draw")
        v = self.ints.pop(0)
        if not lo <= v <= hi:
            raise AssertionError(f"scripted {v} outside randint({lo}, {hi})")
        return v


def rgb_of(pixels) -> torch.Tensor:
    """``[3, 1, N]`` image from a list of N (r, g, b) pixels."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(3, 1, len(pixels))


def pixels_of(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(3, -1).T


# Three pixels; luma Y = 0.299 r + 0.587 g + 0.114 b:
#   P (0.6, 0.4, 0.2): Y = 0.1794 + 0.2348 + 0.0228 = 0.437
#   Q (0.9, 0.5, 0.1): Y = 0.2691 + 0.2935 + 0.0114 = 0.574
#   R (0.9, 0.05, 0.05): Y = 0.2691 + 0.02935 + 0.0057 = 0.30415
# mean luma m = (0.437 + 0.574 + 0.30415) / 3 = 0.43838333
PQR = [(0.6, 0.4, 0.2), (0.9, 0.5, 0.1), (0.9, 0.05, 0.05)]
DEPTH = torch.tensor([[[3.0, -1.0, 7.5]]])  # a non-photometric modality: never touched


def jitter(t: ColorJitter, gen: Scripted, rgb=PQR) -> dict:
    sample = {"rgb": rgb_of(rgb), "depth": DEPTH.clone(), "label": torch.tensor([[1, 2, 3]])}
    out = t(sample, gen)
    assert torch.equal(out["depth"], DEPTH)
    assert torch.equal(out["label"], torch.tensor([[1, 2, 3]]))
    assert not gen.us and not gen.ints, "every scripted draw is used"
    return out


IDENTITY_ORDER = [3, 2, 1]  # Fisher-Yates j draws for i = 3, 2, 1 that keep order [0, 1, 2, 3]


def test_color_jitter_brightness_multiplies_then_clamps_to_unit_range():
    """brightness=2: b uniform in [1 - 2, 1 + 2] = [-1, 3]; u = 0.75 -> b = 2; x * 2 clamped."""
    t = ColorJitter(p=1.0, brightness=2.0, contrast=0.0, saturation=0.0, hue=0.0)
    gen = Scripted(us=[0.75, 0.3, 0.6], ints=IDENTITY_ORDER)
    out = jitter(t, gen, rgb=[(-0.1, 0.3, 0.6), (0.45, 0.5, 0.55)])
    expected = [(0.0, 0.6, 1.0), (0.9, 1.0, 1.0)]
    torch.testing.assert_close(pixels_of(out["rgb"]), torch.tensor(expected))
    assert gen.calls[:3] == [("uniform", -1.0, 3.0), ("uniform", 1.0, 1.0), ("uniform", 1.0, 1.0)]


def test_color_jitter_contrast_scales_around_the_mean_luma():
    """contrast=2, u=0.75 -> c = -1 + 4 * 0.75 = 2: x' = (x - m) * 2 + m = 2x - 0.43838333."""
    t = ColorJitter(p=1.0, brightness=0.0, contrast=2.0, saturation=0.0, hue=0.0)
    out = jitter(t, Scripted(us=[0.1, 0.75, 0.2], ints=IDENTITY_ORDER))
    m = 0.43838333
    expected = [(2 * 0.6 - m, 2 * 0.4 - m, 0.0), (1.0, 2 * 0.5 - m, 0.0), (1.0, 0.0, 0.0)]
    torch.testing.assert_close(pixels_of(out["rgb"]), torch.tensor(expected))


def test_color_jitter_saturation_scales_around_each_pixels_luma():
    """saturation=2, u=0.75 -> s = 2: x' = (x - Y) * 2 + Y = 2x - Y per pixel, clamped."""
    t = ColorJitter(p=1.0, brightness=0.0, contrast=0.0, saturation=2.0, hue=0.0)
    out = jitter(t, Scripted(us=[0.1, 0.2, 0.75], ints=IDENTITY_ORDER))
    expected = [(0.763, 0.363, 0.0), (1.0, 0.426, 0.0), (1.0, 0.0, 0.0)]
    torch.testing.assert_close(pixels_of(out["rgb"]), torch.tensor(expected))


def test_color_jitter_half_turn_hue_reflects_chroma_through_luma():
    """hue=0.5, u=1 -> shift 0.5 turn: YIQ (Y, I, Q) -> (Y, -I, -Q), i.e. x' = 2Y - x (the YIQ
    matrix maps (1, 1, 1) to (1, 0, 0)), clamped to [0, 1]."""
    t = ColorJitter(p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5)
    gen = Scripted(us=[0.1, 0.2, 0.3, 1.0], ints=IDENTITY_ORDER)
    out = jitter(t, gen)
    expected = [(0.274, 0.474, 0.674), (0.248, 0.648, 1.0), (0.0, 0.5583, 0.5583)]
    torch.testing.assert_close(pixels_of(out["rgb"]), torch.tensor(expected))
    assert gen.calls[3] == ("uniform", -0.5, 0.5)


def test_color_jitter_zero_hue_draw_leaves_colours_alone():
    """hue=0.5 and u=0.5 draw a shift of exactly 0: no hue step at all."""
    t = ColorJitter(p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5)
    out = jitter(t, Scripted(us=[0.1, 0.2, 0.3, 0.5], ints=IDENTITY_ORDER))
    assert torch.equal(out["rgb"], rgb_of(PQR))


def test_color_jitter_with_unit_factors_leaves_values_untouched():
    """All ranges 0 -> b = c = s = 1, hue 0: no step runs, so even out-of-range values are kept."""
    t = ColorJitter(p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    rgb = [(-0.1, 0.5, 1.2), (0.3, 1.5, -0.2)]
    out = jitter(t, Scripted(us=[0.9, 0.9, 0.9], ints=IDENTITY_ORDER), rgb=rgb)
    assert torch.equal(out["rgb"], rgb_of(rgb))


def test_color_jitter_applies_steps_in_the_drawn_order():
    """j draws (3, 0, 0): [0,1,2,3] -> [2,1,0,3] -> [1,2,0,3]: contrast, saturation, brightness.

    c = 0.5 (range 0.5, u=0), s = 2 (range 1, u=1), b = 1.5 (range 0.5, u=1):
    contrast  x1 = (x - m) / 2 + m              P: (0.519192, 0.419192, 0.319192)
    saturation x2 = 2 x1 - Y(x1), Y(x1) = (Y + m) / 2
    brightness x3 = 1.5 x2, clamped
    """
    t = ColorJitter(p=1.0, brightness=0.5, contrast=0.5, saturation=1.0, hue=0.0)
    out = jitter(t, Scripted(us=[1.0, 0.0, 1.0], ints=[3, 0, 0]))
    expected = [
        (0.901037, 0.601038, 0.301038),
        (1.0, 0.648288, 0.048288),
        (1.0, 0.175675, 0.175675),
    ]
    torch.testing.assert_close(pixels_of(out["rgb"]), torch.tensor(expected), atol=1e-5, rtol=0)


def test_color_jitter_with_factors_of_two_runs_every_step():
    """b = c = s = 2 (ranges 1, u = 1), identity order: brightness, contrast, saturation.

    P: x*2 -> (1, 0.8, 0.4); Y = 0.299 + 0.4696 + 0.0456 = 0.8142 ...; the other pixels
    saturate. Brightness first: Q -> (1, 1, 0.2), R -> (1, 0.1, 0.1).
    """
    t = ColorJitter(p=1.0, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0)
    out = jitter(t, Scripted(us=[1.0, 1.0, 1.0], ints=IDENTITY_ORDER))
    # after brightness: P (1, .8, .4) Y=.8142; Q (1, 1, .2) Y=.9088; R (1, .1, .1) Y=.3691
    # m = (.8142 + .9088 + .3691) / 3 = .69736667; contrast x -> 2x - m
    # P (1, .90263333, .10263333) Q (1, 1, 0) R (1, 0, 0)
    # saturation x -> 2x - Y(x): Y(P) = .299 + .52984576 + .01170020 = .84054596
    # P (1, 1.80526667 - .84054596 = .96472071, 0); Q, R saturate to (1, 1, 0), (1, 0, 0)
    expected = [(1.0, 0.96472071, 0.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0)]
    torch.testing.assert_close(pixels_of(out["rgb"]), torch.tensor(expected), atol=1e-5, rtol=0)


def test_color_jitter_without_photometric_modality_draws_nothing():
    """No photometric modality in the sample: returned as is, no coin drawn (p = 0.5)."""
    t = ColorJitter(p=0.5, photometric=("thermal",))
    sample = {"rgb": rgb_of(PQR), "label": torch.zeros(1, 3, dtype=torch.long)}
    assert t(sample, Scripted()) is sample


def test_color_jitter_coin_decides_with_p():
    """p = 0.5: u = 0.6 >= p -> unchanged (one draw); the default p is 0.2: u = 0.3 -> unchanged."""
    sample = {"rgb": rgb_of(PQR)}
    gen = Scripted(us=[0.6])
    assert ColorJitter(p=0.5, brightness=1.0)(sample, gen) is sample and not gen.us
    gen = Scripted(us=[0.3])
    assert ColorJitter(brightness=1.0)(sample, gen) is sample and not gen.us


def test_color_jitter_default_ranges_are_a_quarter():
    """Defaults: brightness/contrast/saturation 0.25 -> factors drawn in [0.75, 1.25]; no hue."""
    gen = Scripted(us=[0.0, 0.0, 0.5, 0.5], ints=IDENTITY_ORDER)  # coin, b = 0.75, c = s = 1
    out = ColorJitter()({"rgb": rgb_of(PQR)}, gen)
    assert gen.calls[1:4] == [("uniform", 0.75, 1.25)] * 3
    torch.testing.assert_close(out["rgb"], rgb_of(PQR) * 0.75)


@pytest.mark.parametrize("hue", [-0.1, 0.6])
def test_color_jitter_rejects_hue_outside_half_turn(hue):
    with pytest.raises(Exception, match=r"hue must be in \[0, 0.5\]"):
        ColorJitter(hue=hue)


def test_color_jitter_accepts_a_half_turn_hue():
    assert ColorJitter(hue=0.5).hue == 0.5


def test_hue_shift_quarter_turns_compose_to_the_half_turn():
    """Two quarter turns = a half turn: x' = 2Y - x; P -> (0.274, 0.474, 0.674) (float64)."""
    x = rgb_of(PQR).to(torch.float64)
    once = _hue_shift(x, 0.25)
    assert once.dtype == torch.float64
    # a quarter turn keeps the luma: Y(P) = 0.437
    luma = 0.299 * once[0] + 0.587 * once[1] + 0.114 * once[2]
    torch.testing.assert_close(luma.flatten(), torch.tensor([0.437, 0.574, 0.30415], dtype=torch.float64))
    twice = _hue_shift(once, 0.25)
    expected = [(0.274, 0.474, 0.674), (0.248, 0.648, 1.048), (-0.2917, 0.5583, 0.5583)]
    torch.testing.assert_close(pixels_of(twice), torch.tensor(expected, dtype=torch.float64))


def test_flip_coin_is_u_below_p():
    """p = 0.5: u = 0.4 flips, u = 0.5 does not; p = 0 and p = 1 draw nothing."""
    x = torch.arange(6.0).reshape(1, 2, 3)
    lab = torch.tensor([[0, 1, 2], [3, 4, 5]])
    s = {"rgb": x, "label": lab}
    out = RandomHorizontalFlip(0.5)(s, Scripted(us=[0.4]))
    assert out["rgb"].tolist() == [[[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]]
    assert out["label"].tolist() == [[2, 1, 0], [5, 4, 3]]
    assert RandomHorizontalFlip(0.5)(s, Scripted(us=[0.5])) is s
    assert RandomHorizontalFlip(0.0)(s, Scripted()) is s
    out = RandomVerticalFlip(1.0)(s, Scripted())
    assert out["label"].tolist() == [[3, 4, 5], [0, 1, 2]]
    # default p = 0.5
    assert RandomHorizontalFlip()(s, Scripted(us=[0.6])) is s


def test_color_jitter_hue_runs_once_in_its_slot():
    """b = 0.5 (range 0.5, u = 0) then a half-turn hue: P (0.6, 0.4, 0.2) -> (0.3, 0.2, 0.1),
    Y = 0.0897 + 0.1174 + 0.0114 = 0.2185 -> 2Y - x = (0.137, 0.237, 0.337)."""
    t = ColorJitter(p=1.0, brightness=0.5, contrast=0.0, saturation=0.0, hue=0.5)
    out = jitter(t, Scripted(us=[0.0, 0.5, 0.5, 1.0], ints=IDENTITY_ORDER), rgb=[PQR[0]])
    torch.testing.assert_close(pixels_of(out["rgb"]), torch.tensor([(0.137, 0.237, 0.337)]))


# --------------------------------------------------------------------------- RandomScaleCrop

GRID4 = torch.arange(16).reshape(4, 4)  # label[r, c] = 4 r + c


def test_random_scale_crop_cuts_the_drawn_window():
    """scale 1, crop 2x2 of a 4x4 grid: offsets drawn in [0, 2]; (1, 2) -> rows 1-2, cols 2-3."""
    t = RandomScaleCrop(2, scale_range=(1.0, 1.0))
    sample = {"rgb": GRID4[None].float(), "label": GRID4.clone()}
    for ints, want in (([1, 2], [[6, 7], [10, 11]]), ([2, 0], [[8, 9], [12, 13]])):
        gen = Scripted(us=[0.3], ints=ints)
        out = t(sample, gen)
        assert out["label"].tolist() == want
        assert out["rgb"][0].tolist() == [[float(v) for v in row] for row in want]
        assert gen.calls == [("uniform", 1.0, 1.0), ("randint", 0, 2), ("randint", 0, 2)]
        assert not gen.ints


def test_random_scale_crop_base_size_fits_the_height():
    """4x8 into base (2, 8): s0 = min(2/4, 8/8) = 0.5 -> 2x4; bilinear halving = 2x2 block means,
    label nearest-exact takes rows 1, 3 and odd columns."""
    img = torch.arange(32.0).reshape(1, 4, 8)
    t = RandomScaleCrop((2, 4), scale_range=(1.0, 1.0), base_size=(2, 8))
    out = t({"rgb": img, "label": img[0].long()}, Scripted(us=[0.5]))
    assert out["rgb"][0].tolist() == [[4.5, 6.5, 8.5, 10.5], [20.5, 22.5, 24.5, 26.5]]
    assert out["label"].tolist() == [[9, 11, 13, 15], [25, 27, 29, 31]]


def test_random_scale_crop_base_size_fits_the_width():
    """8x4 into base (8, 2): s0 = min(8/8, 2/4) = 0.5 -> 4x2 of 2x2 block means."""
    img = torch.arange(32.0).reshape(1, 8, 4)
    t = RandomScaleCrop((4, 2), scale_range=(1.0, 1.0), base_size=(8, 2))
    out = t({"rgb": img}, Scripted(us=[0.5]))
    assert out["rgb"][0].tolist() == [[2.5, 4.5], [10.5, 12.5], [18.5, 20.5], [26.5, 28.5]]


def test_random_scale_crop_keeps_at_least_one_pixel():
    """2x2 scaled by 0.2 -> round(0.4) = 0 -> 1x1: the bilinear mean 1.5; label pixel (1, 1)."""
    t = RandomScaleCrop(1, scale_range=(0.2, 0.2))
    img = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    out = t({"rgb": img, "label": torch.tensor([[0, 1], [2, 3]])}, Scripted(us=[0.5]))
    assert out["rgb"].tolist() == [[[1.5]]] and out["label"].tolist() == [[3]]


def test_random_scale_crop_pads_small_images_with_fill_and_ignore_index():
    """2x2 into a 3x3 crop: one row/column of fill 0.5 (image) and ignore_index 7 (label)."""
    t = RandomScaleCrop(3, scale_range=(1.0, 1.0), fill={"rgb": 0.5}, ignore_index=7)
    img = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    out = t({"rgb": img, "label": torch.tensor([[0, 1], [2, 3]])}, Scripted(us=[0.5]))
    assert out["rgb"][0].tolist() == [[1.0, 2.0, 0.5], [3.0, 4.0, 0.5], [0.5, 0.5, 0.5]]
    assert out["label"].tolist() == [[0, 1, 7], [2, 3, 7], [7, 7, 7]]


CAT_LABEL = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]])


def test_random_scale_crop_cat_max_ratio_redraws_dominated_windows():
    """cat_max_ratio 0.5: (0,0) one class, (2,2) all ignored, (0,2) 2/4 = 0.5 (not < 0.5),
    (0,1) 3/4 -> all redrawn; (1,1) = [0 1; 2 255] has max share 1/3 -> kept."""
    t = RandomScaleCrop(2, scale_range=(1.0, 1.0), cat_max_ratio=0.5)
    gen = Scripted(us=[0.5], ints=[0, 0, 2, 2, 0, 2, 0, 1, 1, 1])
    out = t({"rgb": CAT_LABEL[None].float(), "label": CAT_LABEL.clone()}, gen)
    assert out["label"].tolist() == [[0, 1], [2, 255]]
    assert out["rgb"][0].tolist() == [[0.0, 1.0], [2.0, 255.0]]
    assert not gen.ints and gen.calls[1:] == [("randint", 0, 2)] * 10


def test_random_scale_crop_cat_max_ratio_keeps_a_balanced_two_class_window():
    """cat_max_ratio 0.75: (0,0) is one class -> redrawn; (0,2) = [0 0; 1 1] share 0.5 -> kept."""
    t = RandomScaleCrop(2, scale_range=(1.0, 1.0), cat_max_ratio=0.75)
    gen = Scripted(us=[0.5], ints=[0, 0, 0, 2])
    assert t({"label": CAT_LABEL.clone()}, gen)["label"].tolist() == [[0, 0], [1, 1]]
    assert not gen.ints
    gen = Scripted(us=[0.5], ints=[2, 1])  # bottom window of a 4-class grid: kept at once
    assert t({"label": GRID4.clone()}, gen)["label"].tolist() == [[9, 10], [13, 14]]


def test_random_scale_crop_gives_up_after_ten_windows():
    """A one-class label never passes: 10 windows are drawn (20 offsets), the last is kept."""
    t = RandomScaleCrop(2, scale_range=(1.0, 1.0), cat_max_ratio=0.9)
    ints = [0, 0] * 9 + [1, 2]
    gen = Scripted(us=[0.5], ints=ints)
    out = t({"rgb": GRID4[None].float(), "label": torch.zeros(4, 4, dtype=torch.long)}, gen)
    assert out["rgb"][0].tolist() == [[6.0, 7.0], [10.0, 11.0]]
    assert not gen.ints


def test_random_scale_crop_validates_its_arguments():
    with pytest.raises(ConfigError, match="crop_size must be positive"):
        RandomScaleCrop(0)
    with pytest.raises(ConfigError, match="base_size must be positive"):
        RandomScaleCrop(2, base_size=0)
    with pytest.raises(ConfigError, match=r"scale_range must satisfy 0 < min <= max"):
        RandomScaleCrop(2, scale_range=(0.0, 1.0))
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match=r"cat_max_ratio must be in \(0, 1\]"):
            RandomScaleCrop(2, cat_max_ratio=bad)
    assert RandomScaleCrop(2, cat_max_ratio=1.0).cat_max_ratio == 1.0
    assert RandomScaleCrop(2, base_size=(3, 5)).base_size == (3, 5)


# --------------------------------------------------------------------------- PadToMultiple


def test_pad_to_multiple_pads_bottom_rows_only():
    """3x4 -> multiple 4: one bottom row of fill 0.1 (float64 kept exact), label row of 9."""
    img = torch.ones(3, 3, 4, dtype=torch.float64)
    t = PadToMultiple(4, fill={"rgb": 0.1}, ignore_index=9)
    out = t({"rgb": img, "label": torch.zeros(3, 4, dtype=torch.long), "meta": {}})
    want = torch.ones(3, 4, 4, dtype=torch.float64)
    want[:, 3, :] = 0.1
    assert torch.equal(out["rgb"], want)
    assert out["label"].tolist() == [[0] * 4] * 3 + [[9] * 4]
    assert out["meta"]["unpadded_size"] == (3, 4)


def test_pad_to_multiple_pads_right_columns_only_with_per_channel_fill():
    """4x3 -> multiple 4: one right column; fill (0.1, 0.2) per channel; label column 255."""
    t = PadToMultiple(4, fill={"rgb": [0.25, 0.75]})
    out = t({"rgb": torch.zeros(2, 4, 3), "label": torch.ones(4, 3, dtype=torch.long)})
    assert out["rgb"][:, :, 3].tolist() == [[0.25] * 4, [0.75] * 4]
    assert out["rgb"].shape == (2, 4, 4) and out["rgb"][:, :, :3].abs().sum() == 0
    assert out["label"].tolist() == [[1, 1, 1, 255]] * 4


def test_pad_to_multiple_leaves_a_label_at_another_resolution():
    """Images 3x3 -> 4x4; a 6x6 label (kept at full resolution) is left as it is."""
    lab = torch.arange(36).reshape(6, 6)
    sample = {"rgb": torch.ones(1, 3, 3), "label": lab, "meta": {}}
    out = PadToMultiple(4, ignore_index=9)(sample)
    assert out["rgb"][0].tolist() == [[1.0, 1.0, 1.0, 0.0]] * 3 + [[0.0] * 4]
    assert torch.equal(out["label"], lab)
    assert out["meta"] == {"unpadded_size": (3, 3)} and sample["meta"] == {}


def test_pad_to_multiple_already_aligned_records_size_on_a_copy():
    """4x4 is a multiple of 2: no padding, meta["unpadded_size"] set on the output only."""
    sample = {"rgb": torch.ones(1, 4, 4), "label": torch.zeros(4, 4, dtype=torch.long), "meta": {}}
    out = PadToMultiple(2)(sample)
    assert out["meta"] == {"unpadded_size": (4, 4)} and sample["meta"] == {}
    sample = {"rgb": torch.ones(1, 4, 4), "label": torch.zeros(8, 8, dtype=torch.long), "meta": {}}
    out = PadToMultiple(2)(sample)
    assert out["meta"] == {"unpadded_size": (4, 4)} and sample["meta"] == {}
    assert out["label"].shape == (8, 8)


def test_pad_to_multiple_label_only_sample_uses_the_label_size():
    """A 3x5 label alone -> 4x8 (multiple 4) padded with 255."""
    out = PadToMultiple(4)({"label": torch.zeros(3, 5, dtype=torch.long)})
    assert out["label"].shape == (4, 8) and int(out["label"][3, 7]) == 255
    assert int(out["label"][2, 4]) == 0 and int(out["label"][2, 5]) == 255


def test_pad_to_multiple_defaults_and_validation():
    assert PadToMultiple().multiple == 32
    out = PadToMultiple()({"rgb": torch.zeros(1, 3, 3)})
    assert out["rgb"].shape == (1, 32, 32)
    assert PadToMultiple(1).multiple == 1
    with pytest.raises(ConfigError, match="multiple must be >= 1, got 0"):
        PadToMultiple(0)
    with pytest.raises(ConfigError, match="fill has 2 values for a 3-channel tensor"):
        PadToMultiple(4, fill={"rgb": [0.1, 0.2]})({"rgb": torch.zeros(3, 3, 3)})
    out = PadToMultiple(4, fill={"rgb": [0.5]})({"rgb": torch.zeros(3, 3, 4)})
    assert out["rgb"][:, 3, :].tolist() == [[0.5] * 4] * 3


def test_transforms_reject_a_sample_without_tensors():
    with pytest.raises(DataError, match="^transform got a sample with neither modalities nor label$"):
        PadToMultiple(4)({"meta": {}})


# --------------------------------------------------------------------------- CenterCrop / Resize


def test_center_crop_errors_name_the_sizes():
    with pytest.raises(DataError, match=r"sample is 3x4, smaller than the 4x4 centre crop \(data.eval_crop\)"):
        CenterCrop(4)({"rgb": torch.zeros(1, 3, 4)})
    with pytest.raises(DataError, match="label is 3x5, images 3x4: the centre crop needs both at one size"):
        CenterCrop(2)({"rgb": torch.zeros(1, 3, 4), "label": torch.zeros(1, 3, 5)})
    with pytest.raises(ConfigError, match="crop size must be positive"):
        CenterCrop(0)


def test_center_crop_cuts_a_label_with_a_leading_dimension():
    """4x4 -> centre 2x2 (top = left = 1) of the image and of a [1, 4, 4] label."""
    out = CenterCrop(2)({"rgb": GRID4[None].float(), "label": GRID4[None].clone()})
    assert out["label"].tolist() == [[[5, 6], [9, 10]]]


def test_resize_keep_ratio_fits_inside_the_size():
    """4x4 into (2, 8) keeping the ratio: s = min(2/4, 8/4) = 0.5 -> 2x2 block means."""
    out = Resize((2, 8), keep_ratio=True)({"rgb": GRID4[None].float()})
    assert out["rgb"][0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    out = Resize((1, 1), keep_ratio=True)({"rgb": torch.ones(1, 4, 8)})
    assert out["rgb"].shape == (1, 1, 1)  # s = 1/8: round(0.5) = 0 -> 1, round(1) = 1


def test_resize_uses_each_modalitys_interpolation():
    """lidar nearest (rows/cols 1, 3 of the grid), rgb bilinear (2x2 means); label kept if asked."""
    sample = {"rgb": GRID4[None].float(), "lidar": GRID4[None].float(), "label": GRID4.clone()}
    for resize_label in (True, False):
        out = Resize(2, resize_label=resize_label, interpolation={"lidar": "nearest"})(sample)
        assert out["lidar"][0].tolist() == [[5.0, 7.0], [13.0, 15.0]]
        assert out["rgb"][0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert torch.equal(out["label"], GRID4)


def test_resize_accepts_unit_sizes_and_names_bad_ones():
    assert Resize((1, 3)).size == (1, 3) and Resize((3, 1)).size == (3, 1)
    with pytest.raises(ConfigError, match="size must be positive, got 0"):
        Resize(0)
    with pytest.raises(ConfigError, match=r"size must be an int or \(height, width\)"):
        Resize((1, 2, 3))
    with pytest.raises(ConfigError, match="label_interpolation must be one of"):
        Resize(2, label_interpolation="bilinear")


# --------------------------------------------------------------------------- GaussianBlur

S_HALF = (1.0 / (2.0 * 0.6931471805599453)) ** 0.5  # exp(-1 / (2 s^2)) = 1/2: kernel (1, 2, 1) / 4


def test_gaussian_blur_of_a_corner_impulse_with_replicated_edges():
    """3x3 kernel (1,2,1)/4 x (1,2,1)/4; impulse at (0,0), edges replicated:
    (0,0) = 0.75 * 0.75, (0,1) = 0.75 * 0.25, (1,1) = 0.25 * 0.25, the rest 0."""
    x = torch.zeros(1, 3, 3, dtype=torch.float64)
    x[0, 0, 0] = 1.0
    gen = Scripted(us=[0.5])
    out = GaussianBlur(p=1.0, kernel_size=3, sigma=(S_HALF, S_HALF))({"rgb": x}, gen)
    want = [[0.5625, 0.1875, 0.0], [0.1875, 0.0625, 0.0], [0.0, 0.0, 0.0]]
    torch.testing.assert_close(out["rgb"][0], torch.tensor(want, dtype=torch.float64))
    assert gen.calls == [("uniform", S_HALF, S_HALF)]


def test_gaussian_blur_coin_defaults_and_validation():
    sample = {"rgb": torch.rand(3, 4, 4)}
    gen = Scripted(us=[0.3])
    assert GaussianBlur()(sample, gen) is sample and not gen.us  # p = 0.2: u = 0.3 -> no blur
    assert GaussianBlur(p=1.0, photometric=("thermal",))(sample, Scripted()) is sample
    gen = Scripted(us=[0.0, 0.5])
    GaussianBlur()(sample, gen)
    assert gen.calls[1] == ("uniform", 0.1, 2.0)
    assert GaussianBlur(kernel_size=1).kernel_size == 1
    with pytest.raises(ConfigError, match="kernel_size must be odd and >= 1, got 2"):
        GaussianBlur(kernel_size=2)


# --------------------------------------------------------------------------- misalign

TWO_ROWS = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]])


def test_misalign_integer_shift_is_an_exact_copy():
    """Shift (1, 0): content moves one column right, column 0 filled with 9; rotation 0 or 360."""
    x = TWO_ROWS.to(torch.float64)
    want = torch.tensor([[[9.0, 0.0, 1.0], [9.0, 3.0, 4.0]]], dtype=torch.float64)
    for out in (misalign(x, (1, 0), fill=9.0), misalign(x, (1.0, 0.0), 360.0, fill=9.0),
                misalign(x, (1, 0), fill=[9.0], mode="nearest")):
        assert out.dtype == torch.float64 and torch.equal(out, want)
    batched = misalign(x[None], (1, 0), fill=9.0)
    assert batched.shape == (1, 1, 2, 3) and torch.equal(batched[0], want)


def test_misalign_half_pixel_shift_blends_neighbours():
    """Shift (0.5, 0) bilinear: out[x] = (in[x - 1] + in[x]) / 2, with in[-1] = fill 0."""
    out = misalign(TWO_ROWS, (0.5, 0.0))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.5, 1.5], [1.5, 3.5, 4.5]]]))


def test_misalign_nearest_rounds_a_small_shift_away():
    """Shift 0.4 with nearest: every pixel samples itself."""
    torch.testing.assert_close(misalign(TWO_ROWS, (0.4, 0.0), mode="nearest"), TWO_ROWS)
    with pytest.raises(ConfigError, match="unknown interpolation mode 'bicubic'"):
        misalign(TWO_ROWS, (1, 0), mode="bicubic")


def test_random_misalign_moves_each_non_reference_modality_with_its_draws():
    """lidar (nearest): dx = -2 + 4 * 0.6 = 0.4, angle -360 + 720 * 0.75 = 180 -> the 180 deg
    turn [[5,4,3],[2,1,0]]; thermal (bilinear, fill 9): dx = 1, angle 180 ->
    [[9,5,4],[9,2,1]]; depth: coin 0.5 not < 0.5 -> unmoved; rgb is the reference."""
    t = RandomMisalign("rgb", p=0.5, max_shift=2.0, max_rotation=360.0,
                       interpolation={"lidar": "nearest"}, fill={"thermal": 9.0})
    sample = {"rgb": TWO_ROWS.clone(), "lidar": TWO_ROWS.clone(), "thermal": TWO_ROWS.clone(),
              "depth": TWO_ROWS.clone()}
    gen = Scripted(us=[0.1, 0.6, 0.5, 0.75, 0.2, 0.75, 0.5, 0.75, 0.5])
    out = t(sample, gen)
    torch.testing.assert_close(out["lidar"], torch.tensor([[[5.0, 4.0, 3.0], [2.0, 1.0, 0.0]]]))
    torch.testing.assert_close(out["thermal"], torch.tensor([[[9.0, 5.0, 4.0], [9.0, 2.0, 1.0]]]))
    assert torch.equal(out["rgb"], TWO_ROWS) and torch.equal(out["depth"], TWO_ROWS)
    assert gen.calls[1:4] == [("uniform", -2.0, 2.0)] * 2 + [("uniform", -360.0, 360.0)]
    assert not gen.us


def test_random_misalign_default_fill_is_zero():
    """Shift 1 of thermal without a fill map: column 0 becomes 0."""
    t = RandomMisalign("rgb", p=1.0, max_shift=1.0, max_rotation=0.0)
    out = t({"rgb": TWO_ROWS, "thermal": TWO_ROWS + 1}, Scripted(us=[1.0, 0.5, 0.5]))
    assert out["thermal"].tolist() == [[[0.0, 1.0, 2.0], [0.0, 4.0, 5.0]]]


def test_random_misalign_defaults_and_validation():
    t = RandomMisalign("rgb")
    assert (t.p, t.max_shift, t.max_rotation) == (0.5, 4.0, 2.0)
    with pytest.raises(ConfigError, match="misalign max_shift / max_rotation must be >= 0"):
        RandomMisalign("rgb", max_shift=-1.0)
    with pytest.raises(ConfigError, match="misalign max_shift / max_rotation must be >= 0"):
        RandomMisalign("rgb", max_rotation=-1.0)


# --------------------------------------------------------------------------- builders

IMNET_MEAN, IMNET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def rows_of_std(h: int, w: int) -> torch.Tensor:
    """[3, h, w] with value mean_c + std_c * row: normalises to the row index."""
    mean = torch.tensor(IMNET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMNET_STD).view(3, 1, 1)
    return mean + std * torch.arange(h, dtype=torch.float32).view(1, h, 1).expand(3, h, w)


def test_build_eval_transforms_resizes_each_modality_its_way_then_normalises():
    """size (2, 4) of 4x4: rgb bilinear averages row pairs -> rows 0.5, 2.5 after Normalize;
    lidar (nearest) and the label take rows 1 and 3."""
    t = build_eval_transforms(["rgb", "lidar"], size=(2, 4))
    lab = torch.arange(4).view(4, 1).expand(4, 4).clone()
    out = t({"rgb": rows_of_std(4, 4), "lidar": rows_of_std(4, 4), "label": lab})
    torch.testing.assert_close(out["rgb"], torch.tensor([0.5, 2.5]).view(1, 2, 1).expand(3, 2, 4))
    torch.testing.assert_close(out["lidar"], torch.tensor([1.0, 3.0]).view(1, 2, 1).expand(3, 2, 4))
    assert out["label"].tolist() == [[1] * 4, [3] * 4]


def test_build_eval_transforms_two_legacy_nearest_resizes():
    """pre_size 2x2 (legacy nearest: rows/cols 0, 2) then (4, 8) with keep_ratio -> 4x4
    (s = min(4/2, 8/2) = 2; legacy nearest repeats each row/column twice)."""
    t = build_eval_transforms({"rgb": ModalitySpec(name="rgb", channels=3)}, (4, 8), keep_ratio=True,
                              pre_size=(2, 2), label_interpolation="nearest-legacy", normalize=False)
    out = t({"rgb": torch.zeros(3, 4, 4), "label": GRID4.clone()})
    assert out["rgb"].shape == (3, 4, 4)
    assert out["label"].tolist() == [[0, 0, 2, 2], [0, 0, 2, 2], [8, 8, 10, 10], [8, 8, 10, 10]]


def test_build_eval_transforms_centre_crop_then_pad():
    """crop 3x3 of 4x4: top = left = round(0.5) = 0; pad to multiple 2 with the ImageNet mean
    (rgb) and ignore_index 7 (label); meta records (3, 3)."""
    t = build_eval_transforms(["rgb"], crop=(3, 3), pad_multiple=2, ignore_index=7, normalize=False)
    out = t({"rgb": torch.ones(3, 4, 4), "label": GRID4.clone(), "meta": {}})
    assert out["label"].tolist() == [[0, 1, 2, 7], [4, 5, 6, 7], [8, 9, 10, 7], [7, 7, 7, 7]]
    for c in range(3):
        assert out["rgb"][c, 3].tolist() == pytest.approx([IMNET_MEAN[c]] * 4)
        assert out["rgb"][c, :3, :3].tolist() == [[1.0] * 3] * 3
    assert out["meta"] == {"unpadded_size": (3, 3)}


def test_build_eval_transforms_label_at_full_size_and_no_unit_padding():
    """resize_label=False keeps the 4x4 label; pad_multiple=1 adds no PadToMultiple step."""
    t = build_eval_transforms(["rgb"], 2, resize_label=False, pad_multiple=1, normalize=False)
    out = t({"rgb": torch.ones(3, 4, 4), "label": GRID4.clone(), "meta": {}})
    assert out["rgb"].shape == (3, 2, 2) and torch.equal(out["label"], GRID4)
    assert out["meta"] == {}


def test_build_train_transforms_default_draws():
    """Steps: crop, hflip (coin 0.9 -> none), jitter and blur (p 0.2: coins 0.9 -> none)."""
    t = build_train_transforms(["rgb", "lidar"], 2, (1.0, 1.0), normalize=False)
    assert [type(s).__name__ for s in t.transforms] == [
        "RandomScaleCrop", "RandomHorizontalFlip", "ColorJitter", "GaussianBlur"]
    sample = {"rgb": torch.rand(3, 2, 2), "lidar": torch.rand(3, 2, 2), "label": GRID4[:2, :2]}
    gen = Scripted(us=[0.5, 0.9, 0.9, 0.9])
    out = t(sample, gen)
    assert not gen.us and not gen.ints
    for k in ("rgb", "lidar", "label"):
        assert torch.equal(out[k], sample[k])


def test_build_train_transforms_full_pipeline_known_answer():
    """4x4 -> base (2,2) -> 2x2; both flips; jitter b = 0.75 on cam; blur of kernel 1 (identity);
    aux (nearest) moved by dx = 0.4 (rounds away), dy = 1 (row 0 filled with the ImageNet mean).

    cam 2x2 means of (4r + c) / 32: [[2.5, 4.5], [10.5, 12.5]] / 32, flipped both ways
    [[12.5, 10.5], [4.5, 2.5]] / 32, times 0.75. aux nearest rows/cols 1, 3: [[5, 7], [13, 15]],
    flipped [[15, 13], [7, 5]], then shifted down one row.
    """
    specs = {"cam": ModalitySpec(name="cam", channels=3, photometric=True, normalize=None),
             "aux": ModalitySpec(name="aux", channels=3, interpolation="nearest")}
    t = build_train_transforms(specs, 2, (1.0, 1.0), flip_prob=1.0, vflip_prob=1.0, jitter_p=1.0,
                               blur_p=1.0, blur_kernel=1, normalize=False, base_size=(2, 2),
                               misalign={"prob": 1.0, "max_shift": 1.0, "max_rotation": 0.0})
    grid = (GRID4.float() / 32)[None].expand(3, 4, 4).clone()
    gen = Scripted(us=[0.5, 0.0, 0.5, 0.5, 0.5, 0.7, 1.0, 1.0], ints=IDENTITY_ORDER)
    out = t({"cam": grid, "aux": grid.clone(), "label": GRID4.clone()}, gen)
    assert not gen.us and not gen.ints
    cam = torch.tensor([[12.5, 10.5], [4.5, 2.5]]) / 32 * 0.75
    torch.testing.assert_close(out["cam"], cam.expand(3, 2, 2))
    for c in range(3):
        assert out["aux"][c].tolist() == [[pytest.approx(IMNET_MEAN[c])] * 2, [15 / 32, 13 / 32]]
    assert out["label"].tolist() == [[15, 13], [7, 5]]
    assert gen.calls[-3:] == [("uniform", -1.0, 1.0)] * 2 + [("uniform", 0.0, 0.0)]
    assert [type(s).__name__ for s in t.transforms][2:4] == ["RandomVerticalFlip", "ColorJitter"]


def test_build_train_transforms_misalign_defaults_and_reference():
    """misalign {} -> prob 0.5, shift 4 px, rotation 2 deg; reference lidar: rgb moves by
    dx = -4 + 8 * 0.75 = 2 (cols 0-1 get the ImageNet mean), lidar stays."""
    t = build_train_transforms(["rgb", "lidar"], (2, 4), (1.0, 1.0), flip_prob=0.0,
                               photometric=False, normalize=False, misalign={}, reference="lidar")
    grid = torch.arange(8.0).reshape(1, 2, 4).expand(3, 2, 4).clone()
    gen = Scripted(us=[0.5, 0.4, 0.75, 0.5, 0.5])
    out = t({"rgb": grid, "lidar": grid.clone()}, gen)
    assert gen.calls[1:] == [("uniform", 0.0, 1.0), ("uniform", -4.0, 4.0), ("uniform", -4.0, 4.0),
                             ("uniform", -2.0, 2.0)]
    assert torch.equal(out["lidar"], grid)
    assert out["rgb"][0].tolist() == [[pytest.approx(0.485)] * 2 + [0.0, 1.0],
                                      [pytest.approx(0.485)] * 2 + [4.0, 5.0]]


def test_build_train_transforms_cat_max_ratio_uses_the_ignore_index():
    """cat_max_ratio 0.6, ignore 7: window (0,0) = [0 0; 1 7] -> 2/3 of labelled -> redrawn;
    (0,2) = [1 2; 7 7] -> 1/2 -> kept."""
    lab = torch.tensor([[0, 0, 1, 2], [1, 7, 7, 7], [0, 0, 0, 0], [0, 0, 0, 0]])
    t = build_train_transforms(["rgb"], 2, (1.0, 1.0), flip_prob=0.0, photometric=False,
                               normalize=False, cat_max_ratio=0.6, ignore_index=7)
    gen = Scripted(us=[0.5], ints=[0, 0, 0, 2])
    assert t({"label": lab}, gen)["label"].tolist() == [[1, 2], [7, 7]]
    assert not gen.ints


def test_build_train_transforms_misalign_without_modalities():
    t = build_train_transforms({}, 2, misalign={})
    assert t.transforms[-2].reference is None


def test_gaussian_blur_keeps_the_size_and_a_constant_image():
    """kernel 5 (pad 2 each side, replicated): a constant 0.3 image stays 0.3 everywhere."""
    x = torch.full((2, 4, 4), 0.3)
    out = GaussianBlur(p=1.0, kernel_size=5)({"rgb": x}, Scripted(us=[0.5]))
    torch.testing.assert_close(out["rgb"], x)


def test_misalign_batched_fractional_shift_keeps_the_batch_dimension():
    out = misalign(TWO_ROWS[None], (0.5, 0.0))
    assert out.shape == (1, 1, 2, 3)
    torch.testing.assert_close(out[0], torch.tensor([[[0.0, 0.5, 1.5], [1.5, 3.5, 4.5]]]))


def test_pad_to_multiple_pads_a_label_with_a_leading_dimension():
    out = PadToMultiple(4)({"rgb": torch.ones(1, 3, 3), "label": torch.zeros(1, 3, 3, dtype=torch.long)})
    assert out["label"].shape == (1, 4, 4) and int(out["label"][0, 3, 3]) == 255


def test_compose_passes_the_generator_to_transforms_only():
    """Plain callables get the sample alone; Transforms get the generator (here a hflip coin)."""
    t = Compose([lambda s: {**s, "seen": True}, RandomHorizontalFlip(0.5)])
    gen = Scripted(us=[0.1])
    out = t({"rgb": TWO_ROWS}, gen)
    assert out["seen"] is True and out["rgb"].tolist() == [[[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]]
    assert not gen.us


def test_reprs_list_the_public_settings():
    assert repr(RandomHorizontalFlip(0.25)) == "RandomHorizontalFlip(p=0.25)"
    assert repr(RandomMisalign("rgb")) == (
        "RandomMisalign(reference='rgb', p=0.5, max_shift=4.0, max_rotation=2.0, "
        "interpolation={}, fill={})")
    assert repr(Compose([RandomHorizontalFlip(0.25), RandomVerticalFlip(1.0)])) == (
        "Compose([\n  RandomHorizontalFlip(p=0.25),\n  RandomVerticalFlip(p=1.0)\n])")
    # private state (a cache, a counter) stays out of the repr
    flip = RandomHorizontalFlip(0.25)
    flip._calls = 3
    assert repr(flip) == "RandomHorizontalFlip(p=0.25)"


def test_geometric_interpolation_is_checked_per_modality():
    with pytest.raises(ConfigError, match=r"interpolation for 'rgb' must be bilinear\|nearest: 'bicubic'"):
        Resize(2, interpolation={"rgb": "bicubic"})
