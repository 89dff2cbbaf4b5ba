"""MLE-SAM's modality router with absent modalities: known answers computed by hand from set
gate / integration weights (spec ``../shared/specs/mle_sam.md``: "Missing modalities are
excluded from the softmax"; the integrated path gets zeros and a presence flag of 0), and the
whole model's routers fed the batch's presence flags."""

from __future__ import annotations

import math

import torch
from conftest import tiny_model_cfg

from fusionseg.models import create_model
from fusionseg.models.methods.mle_sam.routing import ModalityRouter

LN3 = math.log(3.0)


def _feats() -> torch.Tensor:
    """``[M=3, B=2, C=2, 1, 1]``. With the gate rows of :func:`_router` the scores are: sample
    0: (0, ln 3, 5), sample 1: (10, 0, ln 3); the highest-scoring stream is the absent one."""
    f = torch.zeros(3, 2, 2, 1, 1)
    f[:, 0, :, 0, 0] = torch.tensor([[0.0, 1.0], [2.0, LN3], [5.0, 5.0]])
    f[:, 1, :, 0, 0] = torch.tensor([[10.0, 4.0], [0.0, 0.0], [LN3, 0.0]])
    return f


PRESENT = torch.tensor([[True, True, False], [False, True, True]])


def _router(**kw) -> ModalityRouter:
    r = ModalityRouter(2, 3, gate="pixel", **kw)
    if r.gate_weight is not None:
        with torch.no_grad():  # score_m = <gate_m, F_m>: channel 0, 1, 0 of modality 0, 1, 2
            r.gate_weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
            r.gate_bias.zero_()
    return r


def test_absent_modality_gets_zero_weight_and_the_softmax_runs_over_the_present_ones():
    r = _router(integrate="mean")
    out = r(_feats(), PRESENT)
    # sample 0: softmax(0, ln 3) = (1/4, 3/4) over modalities 0, 1; modality 2 (score 5) gone
    # sample 1: softmax(0, ln 3) = (1/4, 3/4) over modalities 1, 2; modality 0 (score 10) gone
    w = torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.25, 0.75]]).view(2, 3, 1, 1)
    torch.testing.assert_close(r.last_weights, w)
    # weighted = sum w_m F_m; integrated ("mean") = mean of the present F_m
    s0 = 0.25 * torch.tensor([0.0, 1.0]) + 0.75 * torch.tensor([2.0, LN3])
    s0 = s0 + (torch.tensor([0.0, 1.0]) + torch.tensor([2.0, LN3])) / 2
    s1 = 0.25 * torch.tensor([0.0, 0.0]) + 0.75 * torch.tensor([LN3, 0.0])
    s1 = s1 + torch.tensor([LN3, 0.0]) / 2
    torch.testing.assert_close(out[:, :, 0, 0], torch.stack([s0, s1]))


def test_integrated_path_sees_zeros_and_a_zero_presence_flag_for_an_absent_modality():
    r = _router(weighted=False, integrate="conv")
    with torch.no_grad():  # out_c = sum_m F_m[c] + (channel 0 only) 10 p_0 + 20 p_1 + 30 p_2
        w = torch.zeros(2, 3 * 2 + 3)
        w[0, [0, 2, 4]] = 1.0
        w[1, [1, 3, 5]] = 1.0
        w[0, 6:] = torch.tensor([10.0, 20.0, 30.0])
        r.integrate.weight.copy_(w.view(2, 9, 1, 1))
        r.integrate.bias.zero_()
    out = r(_feats(), PRESENT)[:, :, 0, 0]
    want = torch.tensor([[0.0 + 2.0 + 10 + 20, 1.0 + LN3],  # modality 2 absent
                         [0.0 + LN3 + 20 + 30, 0.0]])  # modality 0 absent
    torch.testing.assert_close(out, want)
    assert r.last_weights is None


def test_the_models_routers_get_the_batch_presence_flags():
    """A whole tiny MLE-SAM: at every FPN level, the routing weight of a modality flagged
    absent is exactly 0 for that sample and the present ones' weights sum to 1."""
    torch.manual_seed(0)
    model = create_model(tiny_model_cfg("mle_sam", modalities=["rgb", "depth", "lidar"])).eval()
    g = torch.Generator().manual_seed(1)
    batch = {m: torch.randn(2, 3 if m == "rgb" else 1, 64, 64, generator=g)
             for m in ("rgb", "depth", "lidar")}
    batch["present"] = PRESENT
    with torch.no_grad():
        model(batch)
    for router in model.routers:
        w = router.last_weights  # [B, M, h, w]
        assert w is not None and w.shape[:2] == (2, 3)
        assert torch.all(w[0, 2] == 0) and torch.all(w[1, 0] == 0)
        torch.testing.assert_close(w.sum(1), torch.ones_like(w[:, 0]))
        assert torch.all(w[0, :2] > 0) and torch.all(w[1, 1:] > 0)
