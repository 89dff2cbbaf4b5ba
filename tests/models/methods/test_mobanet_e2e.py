"""End to end against the MoBaNet release: Vaihingen files on disk -> confusion matrix -> IoU.

The release side is ``tests/reference/mobanet_pipeline.py`` (a literal re-implementation of the
release's Vaihingen test loop: file names, optical / 255 + ImageNet, DSM fitted to the tile and
min-max normalised, ``convert_from_color``, the clamping ``sliding_window`` with summed logits,
sklearn's confusion matrix and its ``metrics``) driving ``tests/reference/mobanet_release.py``
(the released ``Net`` with its key names, tiny widths). The fusionseg side is ``fusionseg eval
configs/mobanet/vaihingen.yaml --ckpt <released .pth>`` with ``--set`` overrides for the tiny
model, the root and the window sizes only, so the recipe's conventions are what is tested.

Sizes: the 17 test tiles are 70-72 x 88 px with windows of 32 every 16 px on both sides (the
release: 256 every 32 on 2000-2500 px tiles), so every tile has several windows per side and
starts past the edge that the release clamps to the last position and sums again (rows 70:
starts 0, 16, 32, 38, 38; columns 88: 0, 16, 32, 48, 56, 56). Two tiles have DSMs of another
size (cropped / edge-padded to the tile), three labels hold colours of no class besides the
black boundary band. The tree has the folders the release reads (``top/``, ``dsm/``,
``label/`` with the eroded labels), which fusionseg finds as well.

Without ``eval.slide_positions: clamped`` or ``data.options.off_palette_class: 0`` (the recipe
before issue 21) the confusion matrices differ: the last two tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import run_cli_eval
from fixtures.isprs_tree import make_vaihingen_tree
from reference import mobanet_pipeline as release
from reference.mobanet_release import MoBaNetRelease, randomize_

from fusionseg.config import load_config
from fusionseg.data.datasets.isprs import Vaihingen, decode_isprs_colours
from fusionseg.engine.datamodule import build_dataset
from fusionseg.engine.runner import build_model
from fusionseg.errors import ConfigError, DataError
from fusionseg.models import load_checkpoint
from fusionseg.models.inference_modes import (
    inference_kwargs,
    predict_logits,
    slide_inference,
    window_starts,
)

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "configs" / "mobanet" / "vaihingen.yaml"
K = 6
BB = {"embed_dim": 32, "depth": 4, "num_heads": 2, "out_indices": [0, 1, 2, 3], "img_size": 56}
HEIGHT, WIDTH, WINDOW, STRIDE = 70, 88, 32, 16
#: off-palette label pixels written into the noBoundary files: tile -> (rows, cols, colour)
OFF_PALETTE = {"2": (slice(3, 9), slice(10, 20), (254, 0, 0)),
               "14": (slice(40, 46), slice(60, 75), (255, 0, 255)),
               "38": (slice(0, 70), slice(85, 88), (128, 128, 128))}


def overrides(root: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", "data.num_workers=0", "model.backbone=dinov2_vits14",
            f"model.backbone_kwargs={json.dumps(BB)}", f"eval.window=[{WINDOW}, {WINDOW}]",
            f"eval.stride=[{STRIDE}, {STRIDE}]", "train.precision='32'", *extra]


def write_tree(root: Path) -> None:
    """The 17 test tiles in the layout the release reads (utils.py:82-85): ``top/``, ``dsm/``
    and the eroded labels in ``label/``; no full labels (neither side needs them)."""
    make_vaihingen_tree(root, tiles=release.VAIHINGEN_TEST_IDS, height=HEIGHT, width=WIDTH,
                        dsm_offsets={"4": (2, -1), "8": (-1, 3)}, seed=4)
    shutil.rmtree(root / "gts_for_participants")
    (root / "gts_eroded_for_participants").rename(root / "label")
    for tile, (rows, cols, colour) in OFF_PALETTE.items():
        path = root / "label" / f"top_mosaic_09cm_area{tile}_noBoundary.tif"
        lab = tifffile.imread(path)
        lab[rows, cols] = colour
        tifffile.imwrite(path, lab, photometric="rgb")


def fusionseg_confusion(sets: list[str], ckpt: Path) -> torch.Tensor:
    """Confusion matrix through the pieces ``fusionseg eval`` uses (build_dataset, build_model,
    load_checkpoint, predict_logits with the config's eval settings, argmax)."""
    cfg = load_config(CONFIG, sets)
    ds = build_dataset(cfg, cfg.data.val_split, train=False)
    model = build_model(cfg, ds.num_classes, for_checkpoint=True)
    load_checkpoint(model, ckpt)
    model.eval()
    e = cfg.eval
    cm = torch.zeros(K, K, dtype=torch.long)
    for i in range(len(ds)):
        s = ds[i]
        batch = {m: s[m][None] for m in cfg.model.modalities}
        logits = predict_logits(model, batch, **inference_kwargs(e))
        pred, label = logits.argmax(1)[0], s["label"]
        keep = label != ds.ignore_index
        cm += torch.bincount(label[keep] * K + pred[keep], minlength=K * K).view(K, K)
    return cm


@pytest.fixture(scope="module")
def vaihingen(tmp_path_factory):
    """Tree, released-format checkpoint and the release's result on it."""
    base = tmp_path_factory.mktemp("mobanet_e2e")
    root = base / "Vaihingen"
    write_tree(root)
    ref = randomize_(MoBaNetRelease(K), seed=4).eval()  # predicts all six classes
    ckpt = base / "Net_epoch35_0.88.pth"
    torch.save(ref.state_dict(), ckpt)
    out = release.evaluate_vaihingen(ref, root, window=(WINDOW, WINDOW), stride=STRIDE)
    return {"root": root, "ckpt": ckpt, "ref": ref, **out}


def test_release_inputs_reach_the_model(vaihingen):
    """Tile for tile, what the release's test loop feeds its model equals what the recipe's
    dataset gives ours: IRRG, DSM (incl. the two DSMs of another size) and label ids (the
    release's black id 6 is our ignore; its off-palette 0 is our ``off_palette_class: 0``)."""
    cfg = load_config(CONFIG, overrides(vaihingen["root"]))
    ds = build_dataset(cfg, "test", train=False)
    assert [ds[i]["meta"]["tile"] for i in range(len(ds))] == release.VAIHINGEN_TEST_IDS
    for i, tile in enumerate(release.VAIHINGEN_TEST_IDS):
        img, dsm, gt = release.read_tile(vaihingen["root"], tile)
        s = ds[i]
        torch.testing.assert_close(s["irrg"], torch.from_numpy(img).permute(2, 0, 1),
                                   atol=2e-6, rtol=0)
        torch.testing.assert_close(s["dsm"][0], torch.from_numpy(dsm), atol=1e-6, rtol=0)
        expect = torch.from_numpy(gt.astype(np.int64))
        expect[expect == 6] = ds.ignore_index
        assert torch.equal(s["label"], expect), tile
        if tile in OFF_PALETTE:
            rows, cols, _ = OFF_PALETTE[tile]
            assert (s["label"][rows, cols] == 0).all()


def test_fusionseg_eval_equals_release(vaihingen):
    """Acceptance (issue 21): ``fusionseg eval configs/mobanet/vaihingen.yaml --ckpt
    <released .pth>`` gives the release's confusion matrix, per-class IoU and F1, OA, and its
    5-class mIoU / mF1."""
    sets = overrides(vaihingen["root"])
    cm = fusionseg_confusion(sets, vaihingen["ckpt"])
    assert torch.equal(cm, torch.from_numpy(vaihingen["cm"]))
    out = run_cli_eval(CONFIG, sets, vaihingen["ckpt"])["overall"]
    for key in ("IoU", "F1"):
        got = [np.nan if v is None else v / 100 for v in out[key]]
        np.testing.assert_allclose(got, vaihingen[key], atol=1e-6)
    assert out["mIoU"] / 100 == pytest.approx(vaihingen["mIoU"], abs=1e-6)
    assert out["mF1"] / 100 == pytest.approx(vaihingen["mF1"], abs=1e-6)
    assert out["OA"] / 100 == pytest.approx(vaihingen["OA"], abs=1e-6)
    assert (vaihingen["cm"].sum(0) > 0).all() and (vaihingen["IoU"] > 0.01).all()  # not trivial


def test_aligned_windows_disagree(vaihingen):
    """Our default placement (each window once, ``slide_positions: aligned``; the recipe before
    issue 21) weighs the clamped edge windows once, the release several times: other
    predictions along the bottom / right window seams."""
    cm = fusionseg_confusion(overrides(vaihingen["root"], "eval.slide_positions=aligned"),
                             vaihingen["ckpt"])
    changed = int((cm - torch.from_numpy(vaihingen["cm"])).abs().sum()) // 2
    assert changed > 0.005 * int(cm.sum())


def test_off_palette_as_ignore_disagrees(vaihingen):
    """The dataset default (colours of no class are ignore) leaves the off-palette pixels out
    of the confusion matrix; the release counts them as class 0."""
    cm = fusionseg_confusion(overrides(vaihingen["root"], "data.options.off_palette_class=null"),
                             vaihingen["ckpt"])
    ref = torch.from_numpy(vaihingen["cm"])
    off = sum((r.stop - r.start) * (c.stop - c.start) for r, c, _ in OFF_PALETTE.values())
    assert int(ref.sum() - cm.sum()) == off
    assert torch.equal(cm[1:], ref[1:])  # only the class-0 row loses pixels


# --------------------------------------------------------------------------- units
def test_window_starts_known_answers():
    # 70 px, window 32, stride 16: the release's starts 0, 16, 32, 48 -> 38, 64 -> 38
    assert window_starts(70, 32, 16, "clamped") == [(0, 1), (16, 1), (32, 1), (38, 2)]
    assert window_starts(70, 32, 16) == [(0, 1), (16, 1), (32, 1), (38, 1)]
    assert window_starts(64, 32, 16, "clamped") == [(0, 1), (16, 1), (32, 2)]
    assert window_starts(64, 32, 16) == [(0, 1), (16, 1), (32, 1)]
    assert window_starts(2500, 256, 32, "clamped")[-1] == (2244, 8)
    assert window_starts(32, 32, 16, "clamped") == [(0, 2)]
    for size, win, step in ((70, 32, 16), (88, 32, 16), (2000, 256, 32), (41, 7, 5)):
        starts = [min(s, size - win) for s in range(0, size, step)]
        assert window_starts(size, win, step, "clamped") == [
            (p, starts.count(p)) for p in dict.fromkeys(starts)]


def _window_mean(batch: dict) -> torch.Tensor:
    """A model whose logits are its window's mean value, everywhere in the window."""
    x = batch["x"]
    return x.mean((1, 2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:])


def test_slide_positions_weights_known_answer():
    """1 x 6 ramp, window 1 x 4, stride 1: windows 0, 1, 2 (means 1.5, 2.5, 3.5); the release's
    loop visits window 2 four times (starts 2..5 clamp to it)."""
    batch = {"x": torch.arange(6.0).view(1, 1, 1, 6)}
    aligned = slide_inference(_window_mean, batch, (1, 4), (1, 1))
    clamped = slide_inference(_window_mean, batch, (1, 4), (1, 1), positions="clamped")
    torch.testing.assert_close(aligned.flatten(), torch.tensor([1.5, 2, 2.5, 2.5, 3, 3.5]))
    torch.testing.assert_close(clamped.flatten(),
                               torch.tensor([1.5, 2, 3, 3, 16.5 / 5, 3.5]))
    with pytest.raises(ConfigError, match="placement"):
        predict_logits(_window_mean, batch, mode="slide", window=(1, 4), stride=(1, 1),
                       positions="edge")


def test_slide_positions_clamped_equals_the_release_loop():
    """2-D: the weighted mean over distinct windows equals the release's sum over its loop
    (repeats included) divided by its per-pixel visit count, for every window batch."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 23, 29, generator=g)
    total = torch.zeros(2, 1, 23, 29)
    visits = torch.zeros(1, 1, 23, 29)
    for r, c, h, w in release.windows((23, 29), 5, (8, 10)):
        total[..., r:r + h, c:c + w] += _window_mean({"x": x[..., r:r + h, c:c + w]})
        visits[..., r:r + h, c:c + w] += 1
    for wb in (1, 4):
        got = slide_inference(_window_mean, {"x": x}, (8, 10), (5, 5), wb, positions="clamped")
        torch.testing.assert_close(got, total / visits)


def test_off_palette_class_option():
    rgb = np.array([[[255, 255, 255], [0, 0, 255], [255, 0, 0], [0, 0, 0], [254, 0, 0],
                     [255, 0, 255], [7, 9, 11]]], dtype=np.uint8)
    assert decode_isprs_colours(rgb).tolist() == [[0, 1, 5, 255, 255, 255, 255]]
    assert decode_isprs_colours(rgb, off_palette_class=0).tolist() == [[0, 1, 5, 255, 0, 0, 0]]
    assert decode_isprs_colours(rgb, 100, off_palette_class=2).tolist() == [
        [0, 1, 5, 100, 2, 2, 2]]
    for bad in (6, -1, "0", True):
        with pytest.raises(DataError, match="off_palette_class"):
            Vaihingen("/nonexistent", "test", off_palette_class=bad)
