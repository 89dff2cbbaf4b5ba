"""Known answers for the robust recipe's consistency term (``train.robust``): the full-input
half of the paired batch teaches the corrupted half with ``w * T^2 * KL(softmax(sg(z) / T) ||
softmax(z' / T))`` averaged over the valid pixels of the changed samples
(:mod:`fusionseg.engine.robust_training`, module docstring)."""

from __future__ import annotations

import math

import torch

from fusionseg.engine.robust_training import RobustTraining, consistency_kl

LN3 = math.log(3.0)


def _paired_logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Main logits ``[2B, 2, 1, 2]`` of a paired batch (B = 2), labels, ``changed``.

    Sample 0 (changed), pixel 0 (valid): teacher logits ``(2 ln 3, 0)`` -> at T = 2
    probabilities ``(3/4, 1/4)``; student logits 0 -> ``(1/2, 1/2)``. Pixel 1 is ignored (255)
    and sample 1 did not change: both have teacher and student far apart, so any contribution
    from them would show."""
    z = torch.zeros(4, 2, 1, 2)
    z[0, :, 0, 0] = torch.tensor([2 * LN3, 0.0])  # teacher of sample 0
    z[0, :, 0, 1] = torch.tensor([0.0, 6.0])
    z[2, :, 0, 1] = torch.tensor([6.0, 0.0])  # student of sample 0, ignored pixel
    z[1] = torch.tensor([4.0, -4.0]).view(2, 1, 1)  # teacher of sample 1 (unchanged)
    z[3] = torch.tensor([-4.0, 4.0]).view(2, 1, 1)
    label = torch.tensor([[0, 255], [1, 1]]).view(2, 1, 2).repeat(2, 1, 1)  # both halves
    return z.requires_grad_(True), label, torch.tensor([True, False])


def test_consistency_loss_first_half_teaches_the_second_by_hand():
    rt = RobustTraining(["rgb", "depth"], consistency_weight=0.5, temperature=2.0)
    z, label, changed = _paired_logits()
    loss = rt.consistency_loss(z, label, changed)
    # one valid pixel: KL(teacher || student) = 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    torch.testing.assert_close(loss, torch.tensor(0.5 * 2.0 ** 2 * kl))
    swapped = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(student || teacher)
    assert abs(loss.item() - 0.5 * 4 * swapped) > 1e-3
    loss.backward()
    # d/ds T^2 KL(p || softmax(s / T)) = T (softmax(s / T) - p): 0.5 * 2 * (1/2 - 3/4, 1/2 - 1/4)
    want = torch.zeros_like(z)
    want[2, :, 0, 0] = torch.tensor([-0.25, 0.25])
    torch.testing.assert_close(z.grad, want)  # teacher half, ignored pixel, unchanged: 0


def test_consistency_kl_direction_temperature_and_masking_by_hand():
    teacher = torch.tensor([2 * LN3, 0.0]).view(1, 2, 1, 1).repeat(1, 1, 1, 2)
    teacher.requires_grad_(True)
    student = torch.zeros(1, 2, 1, 2, requires_grad=True)
    with torch.no_grad():
        student[0, :, 0, 1] = torch.tensor([0.0, 9.0])  # the invalid pixel: far off
    valid = torch.tensor([[[True, False]]])
    loss = consistency_kl(student, teacher, valid, temperature=2.0)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    torch.testing.assert_close(loss, torch.tensor(4.0 * kl))
    loss.backward()
    assert teacher.grad is None  # the teacher is detached
    torch.testing.assert_close(student.grad[0, :, 0, 0], torch.tensor([-0.5, 0.5]))
    assert student.grad[..., 1].abs().sum() == 0
    # T = 1: teacher (3/4 at T = 2) becomes (9/10, 1/10)
    one = consistency_kl(student.detach(), teacher.detach(), valid, temperature=1.0)
    torch.testing.assert_close(one, torch.tensor(0.9 * math.log(1.8) + 0.1 * math.log(0.2)))
    assert consistency_kl(student, teacher, torch.zeros_like(valid)).item() == 0.0
