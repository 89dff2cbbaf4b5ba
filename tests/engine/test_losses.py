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
