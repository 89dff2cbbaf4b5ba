"""ViTDet simple feature pyramid: output shapes on odd grids, the stride-16 embed replacement,
level ``i`` from tap ``i``, a functional re-computation of each level, gradients, stable key
names (detectron2's ``simfp_*``) and input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusionseg.models.methods.mle_sam.simple_pyramid import SimpleFeaturePyramid

C, D = 16, 8


def _maps(b=2, h=3, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, C, h, w, generator=g) for _ in range(4)]


def _embed(b=2, h=3, w=5):
    return torch.randn(b, D, h, w, generator=torch.Generator().manual_seed(9))


def _randomise(m):
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5) if p.ndim == 1 else p.normal_(0, p[0].numel() ** -0.5)
    return m


def _ln(x, norm):
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), norm.weight, norm.bias,
                        1e-6).permute(0, 3, 1, 2)


def _head(x, seq, j):
    """Conv1x1 + LN then Conv3x3 + LN with the weights of ``seq[j]``, ``seq[j + 1]``."""
    x = _ln(F.conv2d(x, seq[j].weight), seq[j].norm)
    return _ln(F.conv2d(x, seq[j + 1].weight, padding=1), seq[j + 1].norm)


def test_key_names_are_stable():
    m = SimpleFeaturePyramid(C, D, embed_level=False)
    c2, c4 = C // 2, C // 4
    want = {
        "simfp_2.0.weight": (C, c2, 2, 2), "simfp_2.0.bias": (c2,),
        "simfp_2.1.weight": (c2,), "simfp_2.1.bias": (c2,),
        "simfp_2.3.weight": (c2, c4, 2, 2), "simfp_2.3.bias": (c4,),
        "simfp_2.4.weight": (D, c4, 1, 1), "simfp_2.5.weight": (D, D, 3, 3),
        "simfp_3.0.weight": (C, c2, 2, 2), "simfp_3.0.bias": (c2,),
        "simfp_3.1.weight": (D, c2, 1, 1), "simfp_3.2.weight": (D, D, 3, 3),
        "simfp_4.0.weight": (D, C, 1, 1), "simfp_4.1.weight": (D, D, 3, 3),
        "simfp_5.1.weight": (D, C, 1, 1), "simfp_5.2.weight": (D, D, 3, 3),
    }
    for conv in ("simfp_2.4", "simfp_2.5", "simfp_3.1", "simfp_3.2", "simfp_4.0", "simfp_4.1",
                 "simfp_5.1", "simfp_5.2"):
        want[f"{conv}.norm.weight"] = want[f"{conv}.norm.bias"] = (D,)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == want
    e = SimpleFeaturePyramid(C, D)  # embed_level=True by default: no stride-16 branch
    assert set(e.state_dict()) == {k for k in want if not k.startswith("simfp_4.")}
    assert e.out_channels == [D] * 4 and e.strides == (4, 8, 16, 32)


@pytest.mark.parametrize("embed_level", [True, False])
@pytest.mark.parametrize("hw", [(3, 5), (4, 2)])
def test_output_shapes_on_odd_grids(embed_level, hw):
    h, w = hw
    m = SimpleFeaturePyramid(C, D, embed_level=embed_level)
    out = m(_maps(2, h, w), embed=_embed(2, h, w) if embed_level else None)
    assert [tuple(o.shape) for o in out] == [(2, D, 4 * h, 4 * w), (2, D, 2 * h, 2 * w),
                                            (2, D, h, w), (2, D, h // 2, w // 2)]


def test_embed_replaces_the_stride16_level_exactly():
    m = _randomise(SimpleFeaturePyramid(C, D))
    maps, emb = _maps(), _embed()
    out = m(maps, embed=emb)
    assert out[2] is emb
    other = [maps[0], maps[1], torch.randn_like(maps[2]), maps[3]]  # tap 2 is unused
    for a, b in zip(out, m(other, embed=emb), strict=True):
        assert torch.equal(a, b)


def test_each_level_from_its_tap_and_matches_a_functional_recomputation():
    m = _randomise(SimpleFeaturePyramid(C, D, embed_level=False)).eval()
    maps = _maps(1, 3, 5)
    with torch.no_grad():
        out = m(maps)
        s2, s3, s4, s5 = m.simfp_2, m.simfp_3, m.simfp_4, m.simfp_5
        x = F.conv_transpose2d(maps[0], s2[0].weight, s2[0].bias, stride=2)
        x = F.gelu(_ln(x, s2[1]))
        x = F.conv_transpose2d(x, s2[3].weight, s2[3].bias, stride=2)
        ref = [_head(x, s2, 4),
               _head(F.conv_transpose2d(maps[1], s3[0].weight, s3[0].bias, stride=2), s3, 1),
               _head(maps[2], s4, 0),
               _head(F.max_pool2d(maps[3], 2, 2), s5, 1)]
        for got, want in zip(out, ref, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            assert want.abs().mean() > 0.1
        # perturbing tap i changes level i only
        for i in range(4):
            pert = [t.clone() for t in maps]
            pert[i] += 1.0
            changed = [not torch.allclose(a, b) for a, b in zip(out, m(pert), strict=True)]
            assert changed == [j == i for j in range(4)], i
        # one tensor: every level from the same map (ViTDet's single-map pyramid)
        single = m(maps[3])
        for got, want in zip(single, m([maps[3]] * 4), strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("embed_level", [True, False])
def test_gradients_flow(embed_level):
    m = _randomise(SimpleFeaturePyramid(C, D, embed_level=embed_level))
    maps = [t.requires_grad_() for t in _maps()]
    emb = _embed().requires_grad_() if embed_level else None
    out = m(maps, embed=emb)
    sum((o * torch.randn_like(o)).sum() for o in out).backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    for i, t in enumerate(maps):
        assert (t.grad is not None) == (i != 2 or not embed_level), i
    if embed_level:
        assert emb.grad.abs().sum() > 0


def test_bad_inputs():
    m = SimpleFeaturePyramid(C, D)
    maps, emb = _maps(), _embed()
    with pytest.raises(ValueError, match="expects embed"):
        m(maps)
    with pytest.raises(ValueError, match="expects embed"):
        m(maps, embed=emb[:, :, :2])
    with pytest.raises(ValueError, match=r"x 4 maps"):
        m(maps[:3], embed=emb)
    with pytest.raises(ValueError, match=r"expects \[B, 16, h, w\]"):
        m([t[:, :8] for t in maps], embed=emb)
    with pytest.raises(ValueError, match="of one shape"):
        m([*maps[:3], maps[3][:, :, :2]], embed=emb)
    with pytest.raises(ValueError, match="embed=None"):
        SimpleFeaturePyramid(C, D, embed_level=False)(maps, embed=emb)
    with pytest.raises(ValueError, match="multiple of 4"):
        SimpleFeaturePyramid(18, D)
