"""MoBaNet: release equivalence (tests/reference/mobanet_release.py), frozen backbone, parameter
counts, hard-pixel auxiliary route, MCRM, ablation switches, missing modalities, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from reference.mobanet_release import MoBaNetRelease, randomize_

from fusionseg.engine.losses import SegmentationCriterion
from fusionseg.engine.masking import modality_conditional_random_mask
from fusionseg.models import (
    CheckpointMismatchError,
    SegmentationOutput,
    create_model,
    load_checkpoint,
)
from fusionseg.models.segmentors.mobanet import MoBaNetSegmentor

K = 6
BB = {"embed_dim": 32, "depth": 4, "num_heads": 2, "out_indices": [0, 1, 2, 3], "img_size": 56}


def ours(seed=0, **kw) -> MoBaNetSegmentor:
    torch.manual_seed(seed)
    return create_model({"name": "mobanet", "backbone": "dinov2_vits14",
                         "modalities": ["irrg", "dsm"], "num_classes": K,
                         "backbone_kwargs": BB, **kw})


def inputs(b=2, h=50, w=61, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)


def release_forward(ref, x, d, aux=False):
    """The release's pipeline: pad bottom/right to 14 (loader), run, crop (test loop)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 14, (-w) % 14
    out = ref(F.pad(x, (0, pw, 0, ph)), F.pad(d[:, 0], (0, pw, 0, ph)), aux=aux)
    return [o[..., :h, :w] for o in out] if aux else out[..., :h, :w]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    ref = randomize_(MoBaNetRelease(K)).eval()
    path = tmp_path_factory.mktemp("mobanet") / "Net_epoch35_0.88.pth"
    torch.save(ref.state_dict(), path)
    return ref, path


@pytest.mark.parametrize("size", [(50, 61), (56, 56), (28, 70)])
def test_released_weights_give_released_logits(released, size):
    ref, path = released
    model = load_checkpoint(ours(seed=5), path).eval()
    x, d = inputs(h=size[0], w=size[1])
    with torch.no_grad():
        expect = release_forward(ref, x, d)
        got = model({"irrg": x, "dsm": d})
    assert got.shape == (2, K, *size)
    assert (got - expect).abs().max() < 1e-4 * expect.abs().max()


def test_released_aux_heads_and_name_variants(released, tmp_path):
    ref, path = released
    sd = torch.load(path, weights_only=True)
    # the paper-time name of DGFM ("BAGF") and the DataParallel prefix
    old = {("module." + k.replace("peft_dgfm_blocks", "peft_bagf_blocks")): v for k, v in sd.items()}
    torch.save({"state_dict": old}, tmp_path / "old.pth")
    model = load_checkpoint(ours(seed=3), tmp_path / "old.pth").eval()
    x, d = inputs()
    with torch.no_grad():
        _, r_opt, r_dsm = release_forward(ref, x, d, aux=True)
        xp, dp = model.pad_to_multiple(x), model.pad_to_multiple(d.expand(-1, 3, -1, -1))
        _, opt, dsm = model.encode(xp, dp)
        for head, m, r in (("opt", opt, r_opt), ("dsm", dsm, r_dsm)):
            got = model.upsample_logits(model.aux_heads[head](m[0]), x.shape[-2:], xp.shape[-2:])
            assert (got - r).abs().max() < 1e-4 * r.abs().max()
    assert MoBaNetSegmentor.is_released_format(sd) and not MoBaNetSegmentor.is_released_format(
        model.state_dict())


def test_released_checkpoint_of_another_size_lists_keys_and_shapes(released):
    _, path = released
    with pytest.raises(CheckpointMismatchError, match=r"backbone\.pos_embed: checkpoint"):
        load_checkpoint(ours(backbone_kwargs={**BB, "embed_dim": 64}), path)


def test_parameter_counts_match_the_release():
    with torch.device("meta"):
        s = create_model({"name": "mobanet", "backbone": "dinov2_vits14",
                          "modalities": ["irrg", "dsm"], "num_classes": 6})
        large = create_model({"name": "mobanet", "backbone": "dinov2_vitl14",
                              "modalities": ["irrg", "dsm"], "num_classes": 6})
    # counted on the official Net built from the release's code (see docs/methods/mobanet.md)
    assert s.param_counts() == {"total": 25_308_032, "trainable": 3_251_456}
    assert large.param_counts() == {"total": 313_350_016, "trainable": 8_981_376}


def test_frozen_backbone_gets_no_gradient_and_does_not_change():
    model = ours().train()
    frozen = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("backbone.") for n in trainable)
    assert {"dsm_patch_embed.proj.weight", "cpia.0.up.weight", "dgfm.3.gate.3.weight",
            "proj.0.weight", "decode_head.conv_seg.weight"} <= set(trainable)
    opt = torch.optim.AdamW(model.param_groups(1e-2, 0.05, 1.0))
    crit = SegmentationCriterion("ce")
    x, d = inputs(b=4, h=28, w=28)
    label = torch.randint(0, K, (4, 28, 28))
    for _ in range(2):
        loss, terms = crit(model({"irrg": x, "dsm": d, "label": label}), label)
        loss.backward()
        assert all(p.grad is None for p in model.backbone.parameters())
        opt.step()
        opt.zero_grad()
    for n, p in model.backbone.named_parameters():
        assert torch.equal(p, frozen[n]), n
    changed = [n for n, p in model.named_parameters() if p.requires_grad
               and not torch.equal(p, trainable[n])]
    assert "dsm_patch_embed.proj.weight" in changed and "aux_heads.opt.conv_seg.weight" in changed
    assert set(terms) == {"main", "aux_opt", "aux_dsm"}


def test_hard_pixel_targets_weights_and_the_mcrm_coupling():
    model = ours(mcrm=False, hard_pixel_loss=True).train()
    x, d = inputs(b=2, h=28, w=42)
    label = torch.randint(0, K, (2, 28, 42))
    out = model({"irrg": x, "dsm": d, "label": label})
    assert isinstance(out, SegmentationOutput) and set(out.aux) == {"aux_opt", "aux_dsm"}
    pred = out.logits.argmax(1)
    expect = torch.where(pred == label, torch.full_like(label, 255), label)
    for a in out.aux.values():
        assert torch.equal(a.target, expect) and a.weight == 0.01 and a.loss == {"name": "ce"}
        assert a.logits.shape == out.logits.shape
    # as released, the auxiliary losses run only with MCRM
    assert ours(mcrm=False)({"irrg": x, "dsm": d, "label": label}).aux == {}
    assert ours().hard_pixel_loss and not ours(mcrm=False).hard_pixel_loss


def test_ablation_switches():
    full, no_cpia, no_dgfm = ours(), ours(cpia=False), ours(dgfm=False)
    assert no_cpia.cpia is None and no_dgfm.dgfm is None
    n = full.param_counts()["trainable"]
    cpia = sum(p.numel() for p in full.cpia.parameters())
    assert no_cpia.param_counts()["trainable"] == n - cpia
    # without DGFM the fusion is the plain average
    m = no_dgfm.eval()
    x, d = inputs(b=1, h=28, w=28)
    with torch.no_grad():
        fused, opt, dsm = m.encode(x, d.expand(-1, 3, -1, -1))
        torch.testing.assert_close(fused[2], 0.5 * (opt[2] + dsm[2]), rtol=1e-5, atol=1e-6)
        assert full.eval()({"irrg": x, "dsm": d}).shape == (1, K, 28, 28)


def test_missing_modality_is_zero_input_and_both_streams_run():
    model = ours().eval()
    x, d = inputs(b=2, h=28, w=28)
    with torch.no_grad():
        absent = model({"irrg": x})
        zeros = model({"irrg": x, "dsm": torch.zeros_like(d)})
        flagged = model({"irrg": x, "dsm": d + 5, "present": torch.tensor([[1, 0], [1, 0]]).bool()})
        dsm_only = model({"dsm": d})
    torch.testing.assert_close(absent, zeros)
    torch.testing.assert_close(absent, flagged)
    assert dsm_only.shape == (2, K, 28, 28)


def test_nan_and_nodata_dsm_never_give_a_nan_loss():
    model = ours().train()
    x, d = inputs(b=4, h=28, w=28)
    d[0, 0, :5] = float("nan")
    d[1, 0, 3, 3] = float("inf")
    label = torch.randint(0, K, (4, 28, 28))
    loss, _ = SegmentationCriterion("ce")(model({"irrg": x, "dsm": d, "label": label}), label)
    assert torch.isfinite(loss)
    assert model.nonfinite_inputs == 5 * 28 + 1


def test_bad_modalities_name_the_two_stream_design():
    for mods in (["irrg", "dsm", "rgb"], ["dsm", "irrg"], ["rgb", "thermal"], ["irrg"]):
        with pytest.raises(ValueError, match="two-stream"):
            ours(modalities=mods)


def test_mcrm_masks_one_modality_of_a_quarter_of_the_batch():
    g = torch.Generator().manual_seed(0)
    x, d = torch.ones(16, 3, 40, 60), torch.ones(16, 3, 40, 60)
    xo, do, which = modality_conditional_random_mask(x, d, generator=g)
    assert torch.equal(x, torch.ones_like(x))  # inputs untouched
    assert (which == 1).sum() == 2 and (which == 2).sum() == 2 and (which == 0).sum() == 12
    for i in range(16):
        zo, zd = (xo[i, 0] == 0).sum().item(), (do[i, 0] == 0).sum().item()
        if which[i] == 0:
            assert zo == zd == 0
        else:
            z = zo if which[i] == 1 else zd
            assert (zd if which[i] == 1 else zo) == 0
            assert 0.08 * 2400 <= z <= 0.32 * 2400  # area in [0.1, 0.3] up to rounding
            assert torch.equal(xo[i, 0] == 0, xo[i, 2] == 0)


def test_cli_evaluates_released_file_with_missing_modalities(released, tmp_path):
    from fixtures.isprs_tree import make_vaihingen_tree
    from typer.testing import CliRunner

    from fusionseg.cli import app

    _, path = released
    root = tmp_path / "vaihingen"
    make_vaihingen_tree(root, tiles=["1", "2"], height=40, width=44)
    cfg = {"name": "mobanet_tiny",
           "model": {"name": "mobanet", "backbone": "dinov2_vits14",
                     "modalities": ["irrg", "dsm"], "num_classes": 6, "backbone_kwargs": BB,
                     "pretrained": "not/needed/for/eval.pth"},
           "data": {"dataset": "vaihingen", "root": str(root), "train_split": "train",
                    "val_split": "test", "options": {"tiles": ["2"]}, "num_workers": 0,
                    "val_batch_size": 1},
           "eval": {"mode": "slide", "window": [28, 28], "stride": [14, 14],
                    "ignore_classes": [5]}}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "m.yaml"), "--ckpt", str(path),
                                   "--missing", "all"])
    assert res.exit_code == 0, res.output
    out = json.loads(Path(path).with_name(f"{Path(path).stem}_eval_test.json").read_text())
    assert set(out["missing"]) == {"irrg+dsm", "irrg", "dsm"}
