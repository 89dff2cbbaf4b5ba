"""End to end against the AsymFusion release on NYUDv2: files on disk -> confusion -> IoU.

The release side is ``tests/reference/asymfusion_pipeline.py`` (a literal re-implementation of
the release's ``SegDataset``, validation transforms, ``main.validate`` with its cv2 bicubic
resize of the logits, ``confusion_matrix`` and ``getScores``) driving
``tests/reference/asymfusion_release.py`` (the released model, released key names, tiny
widths). The fusionseg side is ``fusionseg eval configs/asymfusion/nyudv2_rgbd.yaml --ckpt
<the release's Saver file>`` with ``--set`` overrides for the tiny model and the root only, so
the recipe's input conventions (depth units, normalisation, label mapping, the evaluation
upsampling) are what is tested.

One scene, each side in its own file conventions: our tree (``tests/fixtures/nyudv2_tree.py``:
``RGB/*.jpg``, ``Depth/*.png`` uint16 millimetres, ``Label/*.png`` 0 = void, 1..40 = classes)
and, next to it, the release's files of the same scene: ``depth/*.png`` in its unit (1/5000 m,
so raw = millimetres x 5) and ``masks/*.png`` in its encoding (0..39, 255 = void), listed in the
release's tab-separated list format (the RGB JPEGs are shared). 32x64 px: multiples of 32, so
neither side pads, as on NYUDv2's 480x640.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli_eval
from fixtures.nyudv2_tree import make_nyudv2_tree
from PIL import Image
from reference import asymfusion_pipeline as release
from reference.asymfusion_release import AsymFusionRelease, randomize_

from fusionseg.config import load_config
from fusionseg.engine.datamodule import build_dataset
from fusionseg.engine.runner import build_model
from fusionseg.models import load_checkpoint

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "configs" / "asymfusion" / "nyudv2_rgbd.yaml"
H, W = 32, 64
K = 40
TINY = {"layers": [2, 2, 2, 2], "width": 8}
OUTPUTS = ("rgb", "depth", "ensemble")  # the release's order: inputs, then 'ens'


def write_release_files(root: Path, names: list[str]) -> Path:
    """The release's ``depth/`` (1/5000 m) and ``masks/`` (0..39, 255 void) of our tree's
    samples, and its list file; returns the list path."""
    (root / "depth").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for n in names:
        mm = np.array(Image.open(root / "Depth" / f"{n}.png")).astype(np.int64)
        assert mm.max() * 5 < 65536
        Image.fromarray((mm * 5).astype(np.uint16)).save(root / "depth" / f"{n}.png")
        raw = np.array(Image.open(root / "Label" / f"{n}.png")).astype(np.int64)
        mask = np.where(raw == 0, 255, raw - 1).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"{n}.png")
    return release.write_list(root, names, root / "val_release.txt", rgb="RGB/{}.jpg")


def save_as_release_saver(model: torch.nn.Module, path: Path) -> Path:
    """What the release's ``Saver.save`` writes (``utils/meter.py:79-89``, ``main.py:430``): the
    DataParallel segmenter's state dict (``module.`` keys), the epoch and ``best_val`` (a numpy
    float64: ``getScores`` returns one)."""
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"segmenter": sd, "epoch_start": 299, "best_val": np.float64(51.2)}, path)
    return path


def overrides(root: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", "data.num_workers=0", "data.val_batch_size=1",
            "model.backbone=resnet50", "model.pretrained=null",
            f"model.backbone_kwargs={json.dumps(TINY)}", *extra]


def fusionseg_confusions(sets: list[str], ckpt: Path) -> dict[str, np.ndarray]:
    """Per-output confusion through the pieces ``fusionseg eval`` uses (build_dataset with the
    recipe's eval transforms, build_model, load_checkpoint, ``stream_logits``, argmax)."""
    cfg = load_config(CONFIG, sets)
    ds = build_dataset(cfg, cfg.data.val_split, train=False)
    model = load_checkpoint(build_model(cfg, ds.num_classes, for_checkpoint=True), ckpt).eval()
    cms = {n: np.zeros((K, K), dtype=np.int64) for n in OUTPUTS}
    with torch.no_grad():
        for i in range(len(ds)):
            s = ds[i]
            out = model.stream_logits({m: s[m][None] for m in ("rgb", "depth")})
            lab = s["label"].numpy()
            keep = lab != ds.ignore_index
            for n in OUTPUTS:
                pred = out[n].argmax(1)[0].numpy()
                cms[n] += np.bincount(lab[keep] * K + pred[keep], minlength=K * K).reshape(K, K)
    return cms


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    """Tree, the release's files of it, a released-format Saver file and the release's result."""
    base = tmp_path_factory.mktemp("asym_nyu")
    root = base / "NYUDepthv2"
    names = make_nyudv2_tree(root, splits={"train": 1, "test": 3}, height=H, width=W,
                             modalities=("rgb", "depth"), seed=4)["test"]
    lst = write_release_files(root, names)
    ref = randomize_(AsymFusionRelease(K, layers=tuple(TINY["layers"]), width=TINY["width"]),
                     seed=2).eval()
    ckpt = save_as_release_saver(ref, base / "model-best.pth.tar")
    conf = release.validate(ref, release.NYUDv2Release(root, lst))
    return {"root": root, "ckpt": ckpt, "conf": dict(zip(OUTPUTS, conf, strict=True)),
            "ref": ref, "list": lst}


def test_release_inputs_reach_the_model(nyu):
    """What the release feeds its model (RGB / 255 + ImageNet; depth raw / 5000 of its
    1/5000 m files, tiled, not normalised; masks 0..39) equals what the recipe feeds ours from
    our files (millimetres x 0.001; Label/ 1..40)."""
    rel = release.NYUDv2Release(nyu["root"], nyu["list"])
    cfg = load_config(CONFIG, overrides(nyu["root"]))
    ours = build_dataset(cfg, "test", train=False)
    assert len(ours) == len(rel) == 3
    for i in range(len(ours)):
        r, s = rel[i], ours[i]
        assert s["rgb"].shape == s["depth"].shape == (3, H, W)
        torch.testing.assert_close(s["rgb"], r["rgb"], atol=2e-6, rtol=0)
        torch.testing.assert_close(s["depth"], r["depth"], atol=0, rtol=1e-6)
        assert 0.4 < float(s["depth"].min()) and float(s["depth"].max()) < 10  # metres
        lab = r["mask"].clone()
        lab[lab >= K] = 255
        assert torch.equal(s["label"], lab)


def test_fusionseg_eval_of_the_release_checkpoint_equals_release(nyu):
    """Acceptance (issue 21): ``fusionseg eval configs/asymfusion/nyudv2_rgbd.yaml --ckpt
    <the release's Saver file>`` gives the release's confusion matrices (rgb, depth, ensemble)
    and its per-class IoU and mIoU (nanmean) to 0.01."""
    sets = overrides(nyu["root"])
    cms = fusionseg_confusions(sets, nyu["ckpt"])
    for n in OUTPUTS:
        np.testing.assert_array_equal(cms[n], nyu["conf"][n], err_msg=n)
    out = run_cli_eval(CONFIG, sets, nyu["ckpt"])
    assert out["miou"] == "nanmean"
    glob, mean, miou, iou = release.get_scores(nyu["conf"]["ensemble"])
    got = np.array([np.nan if v is None else v for v in out["overall"]["IoU"]], dtype=float)
    np.testing.assert_allclose(got, iou * 100, atol=0.01, equal_nan=True)
    assert out["overall"]["mIoU"] == pytest.approx(miou, abs=0.01)
    for n in OUTPUTS:
        g, m, mi, _ = release.get_scores(nyu["conf"][n])
        r = out["outputs"][n]
        assert (r["OA"], r["mAcc"], r["mIoU"]) == pytest.approx((g, m, mi), abs=0.01), n
    assert np.sum(np.nan_to_num(iou) > 0) >= 3  # not a trivial comparison


def test_old_recipe_disagrees(nyu):
    """The recipe before issue 21 (depth scale 0.0002 on millimetres: metres / 5; logits
    upsampled bilinearly) gives another result: the acceptance test can fail."""
    old = fusionseg_confusions(overrides(nyu["root"], "data.options.specs.depth.scale=0.0002",
                                         "model.eval_upsample=bilinear"), nyu["ckpt"])
    total = old["ensemble"].sum()
    for n in ("depth", "ensemble"):
        changed = np.abs(old[n] - nyu["conf"][n]).sum() / 2
        assert changed > 0.05 * total, n


def test_bicubic_evaluation_resize_is_matched(nyu):
    """With the release's inputs, the upsampling alone: bilinear logits (our default) flip some
    pixels against the release's cv2 bicubic; ``model.eval_upsample: bicubic`` does not."""
    bil = fusionseg_confusions(overrides(nyu["root"], "model.eval_upsample=bilinear"),
                               nyu["ckpt"])
    changed = sum(np.abs(bil[n] - nyu["conf"][n]).sum() / 2 for n in OUTPUTS)
    assert changed > 0


def test_release_masks_read_with_label_format_0_39(nyu, tmp_path):
    """The release's masks placed in ``Label/``: read as "0-39" they give the same classes; read
    as the default "1-40" every class shifts (wall lost) and the loader warns."""
    root = tmp_path / "NYUDepthv2"
    (root / "Label").mkdir(parents=True)
    for sub in ("RGB", "Depth"):
        (root / sub).symlink_to(nyu["root"] / sub, target_is_directory=True)
    for f in (nyu["root"] / "masks").iterdir():
        (root / "Label" / f.name).write_bytes(f.read_bytes())
    (root / "test.txt").write_text((nyu["root"] / "test.txt").read_text())
    cfg = load_config(CONFIG, overrides(nyu["root"]))
    ref = build_dataset(cfg, "test", train=False)
    cfg = load_config(CONFIG, overrides(root, "data.options.label_format=0-39"))
    ds = build_dataset(cfg, "test", train=False)
    for i in range(len(ds)):
        assert torch.equal(ds[i]["label"], ref[i]["label"])
    cfg = load_config(CONFIG, overrides(root))
    wrong = build_dataset(cfg, "test", train=False)
    with pytest.warns(UserWarning, match="label_format: '0-39'"):
        lab = wrong[0]["label"]
    assert not torch.equal(lab, ref[0]["label"])
