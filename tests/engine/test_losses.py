import math

import pytest
import torch
import torch.nn.functional as F

from fusionseg.engine.losses import CrossEntropy, OhemCrossEntropy, build_loss


def test_ce_ignores_255_and_resizes():
    logits = torch.randn(2, 4, 8, 8)
    label = torch.randint(0, 4, (2, 8, 8))
    label[0, :4] = 255
    ref = F.cross_entropy(logits, label, ignore_index=255)
    assert torch.allclose(CrossEntropy()(logits, label), ref)
    small = torch.randn(2, 4, 4, 4)
    assert CrossEntropy()(small, label).ndim == 0


def test_ohem_keeps_hard_pixels_and_minimum():
    label = torch.zeros(1, 1, 32, dtype=torch.long)
    logits = torch.zeros(1, 2, 1, 32)
    logits[0, 0, 0, :16] = 10.0  # easy: p(true) ~ 1
    logits[0, 1, 0, 16:] = 10.0  # hard: p(true) ~ 0
    per_pixel = F.cross_entropy(logits, label, reduction="none").flatten()
    loss = OhemCrossEntropy(thresh=0.7, min_kept_frac=1 / 16)(logits, label)
    assert torch.allclose(loss, per_pixel[16:].mean())
    # all easy: the min_kept hardest pixels are still averaged
    easy = torch.zeros(1, 2, 1, 32)
    easy[0, 0] = 10.0
    assert OhemCrossEntropy(min_kept_frac=0.5)(easy, label) > 0


def test_all_ignored_gives_zero_with_grad():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    label = torch.full((1, 4, 4), 255)
    for name in ("ce", "ohem"):
        loss = build_loss(name)(logits, label)
        assert loss.item() == 0.0
        loss.backward()


def _two_class_logits(p_true: list[float], label: torch.Tensor) -> torch.Tensor:
    """Logits ``[1, 2, H, W]`` whose softmax gives the labelled class probability ``p_true``
    (row-major over the label's pixels): logit ``log(p / (1 - p))`` on the true class, 0 on
    the other. Ignored pixels (255) get a confidently wrong class 0 prediction."""
    h, w = label.shape[-2:]
    logits = torch.zeros(1, 2, h, w, dtype=torch.float64)
    flat = label.flatten()
    for i, p in enumerate(p_true):
        true = int(flat[i]) if int(flat[i]) != 255 else 1
        z = math.log(p / (1 - p))
        logits[0, true, i // w, i % w] = z
    return logits


def test_ohem_threshold_is_on_minus_log_probability_and_ignored_pixels_never_count():
    # true-class probabilities 0.9, 0.6, 0.3, 0.1 on the first row, ignored pixels after them
    label = torch.full((1, 2, 4), 255, dtype=torch.long)
    label[0, 0] = torch.tensor([0, 1, 0, 1])
    # ignored pixels: p(class 1) = 0.01 (would be the hardest of all if counted)
    logits = _two_class_logits([0.9, 0.6, 0.3, 0.1] + [0.01] * 4, label)
    ln = math.log
    # thresh 0.7: keep p < 0.7, i.e. loss -log p > -log 0.7 = 0.357 (StitchFusion semantics)
    loss = OhemCrossEntropy(thresh=0.7, min_kept_frac=1 / 16)(logits, label)
    assert loss.item() == pytest.approx(-(ln(0.6) + ln(0.3) + ln(0.1)) / 3, rel=1e-6)
    # thresh 0.5: keep p < 0.5 only (0.6 now easy; loss 0.51 is above 0.5 but below 0.693)
    loss = OhemCrossEntropy(thresh=0.5, min_kept_frac=1 / 16)(logits, label)
    assert loss.item() == pytest.approx(-(ln(0.3) + ln(0.1)) / 2, rel=1e-6)
    # thresh 0.95: every valid pixel is hard; still no ignored pixel
    loss = OhemCrossEntropy(thresh=0.95, min_kept_frac=1 / 16)(logits, label)
    assert loss.item() == pytest.approx(-(ln(0.9) + ln(0.6) + ln(0.3) + ln(0.1)) / 4, rel=1e-6)


def test_ohem_min_kept_counts_valid_pixels_only():
    # 8 valid pixels, all easy for thresh 0.7 (p >= 0.75); 8 ignored pixels
    label = torch.full((1, 4, 4), 255, dtype=torch.long)
    label[0, :2] = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]])
    p = [0.99, 0.98, 0.95, 0.9, 0.85, 0.8, 0.75, 0.97]
    logits = _two_class_logits(p + [0.01] * 8, label)
    # min_kept = int(0.25 * 8 valid) = 2: the two hardest valid pixels, p = 0.75 and 0.8
    # (counting all 16 pixels would keep 4; counting ignored losses would pull in p = 0.01)
    loss = OhemCrossEntropy(thresh=0.7, min_kept_frac=0.25)(logits, label)
    assert loss.item() == pytest.approx(-(math.log(0.75) + math.log(0.8)) / 2, rel=1e-6)
    # min_kept never drops below one pixel: int(0.0625 * 8) = 0 -> 1, the p = 0.75 pixel
    loss = OhemCrossEntropy(thresh=0.7, min_kept_frac=1 / 16)(logits, label)
    assert loss.item() == pytest.approx(-math.log(0.75), rel=1e-6)
