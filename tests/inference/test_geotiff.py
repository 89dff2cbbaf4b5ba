"""GeoTIFF in, GeoTIFF out: georeferenced masks of an orthophoto + DSM, streamed in windows.

Train-free: a tiny MoBaNet (irrg + dsm, 32 px crops) is written as a checkpoint the way
training writes it; the GeoTIFFs are generated under ``tmp_path`` (80 x 96 px, EPSG:32632,
0.5 m pixels). The reference of every mask is ``predict``'s in-memory computation: the
arrays read with the trained specs and ``predict_logits`` with ``inference_settings``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import tiny_model_cfg  # noqa: E402

rasterio = pytest.importorskip("rasterio")
from affine import Affine  # noqa: E402

import fusionseg.inference.geotiff as geo  # noqa: E402
from fusionseg.cli import app  # noqa: E402
from fusionseg.config import config_from_dict, model_spec  # noqa: E402
from fusionseg.data.io import DataError  # noqa: E402
from fusionseg.data.modalities import get_spec  # noqa: E402
from fusionseg.errors import ConfigError  # noqa: E402
from fusionseg.inference import (  # noqa: E402
    PredictionIncomplete,
    inference_settings,
    load_predictor,
    predict,
)
from fusionseg.inference.geotiff import (  # noqa: E402
    NODATA,
    looks_georeferenced,
    plan_blocks,
    predict_geotiff,
)
from fusionseg.models import create_model  # noqa: E402
from fusionseg.models.inference_modes import predict_logits  # noqa: E402

H, W = 80, 96
CRS = "EPSG:32632"
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 5300000.0)  # 0.5 m pixels
PALETTE = [[255, 255, 255], [0, 0, 255], [0, 255, 0]]
SPECS = {"irrg": get_spec("irrg", bit_depth=8), "dsm": get_spec("dsm")}
#: a DSM nodata block (top left) and an orthophoto nodata block (bottom right, all bands 0)
DSM_HOLE = (slice(0, 16), slice(0, 20))
ORTHO_HOLE = (slice(64, 80), slice(72, 96))


def _checkpoint(path: Path, **eval_cfg) -> Path:
    """A tiny MoBaNet checkpoint with noisy weights (zero-initialised layers would hide the
    inputs), classes, palette and the irrg / dsm specs, as training writes it."""
    model_cfg = {k: list(v) if isinstance(v, tuple) else v
                 for k, v in tiny_model_cfg("mobanet").items()}
    cfg = config_from_dict({"name": "geo", "model": model_cfg,
                            "data": {"dataset": "vaihingen", "crop_size": [32, 32]},
                            "eval": eval_cfg})
    torch.manual_seed(0)
    model = create_model(model_spec(cfg, for_checkpoint=True))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "fusionseg_config": cfg.model_dump(mode="json"),
                "fusionseg_classes": ["surface", "building", "tree"],
                "fusionseg_palette": PALETTE,
                "fusionseg_specs": {m: s.model_dump(mode="json") for m, s in SPECS.items()}},
               path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "mobanet.ckpt")


def _arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An IRRG orthophoto ``uint8 [H, W, 3]`` and a DSM ``float32 [H, W]`` in metres (a
    building on a slope)."""
    rng = np.random.default_rng(seed)
    irrg = rng.integers(1, 256, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    dsm = (250.0 + 0.05 * xx + 8.0 * ((yy > 30) & (yy < 60) & (xx > 20) & (xx < 70))
           + rng.normal(0, 0.3, (H, W))).astype(np.float32)
    return irrg, dsm


def _write(path: Path, array: np.ndarray, nodata=None, crs=CRS, transform=TRANSFORM) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    bands = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    with rasterio.open(path, "w", driver="GTiff", height=bands.shape[1], width=bands.shape[2],
                       count=bands.shape[0], dtype=bands.dtype, crs=crs, transform=transform,
                       nodata=nodata) as dst:
        dst.write(bands)
    return path


def _pair(root: Path, holes: bool = False) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """``ortho/tile.tif`` (nodata 0) and ``dsm/tile.tif`` (nodata -9999) under ``root``; with
    ``holes`` the nodata blocks :data:`ORTHO_HOLE` and :data:`DSM_HOLE`."""
    irrg, dsm = _arrays()
    if holes:
        irrg[ORTHO_HOLE] = 0
        dsm[DSM_HOLE] = -9999.0
    return (_write(root / "ortho" / "tile.tif", irrg, nodata=0),
            _write(root / "dsm" / "tile.tif", dsm, nodata=-9999.0), irrg, dsm)


def _reference(ckpt: Path, irrg: np.ndarray, dsm: np.ndarray, holes: bool = False
               ) -> np.ndarray:
    """predict's in-memory mask: each array read with its trained spec and
    ``predict_logits`` on the whole image with ``inference_settings``; with ``holes`` each
    modality's nodata block is 0 after normalisation and the DSM min-max is over the DSM's
    valid pixels."""
    model, _, cfg = load_predictor(ckpt=ckpt)
    x_irrg = SPECS["irrg"].from_array(irrg, normalize=True)
    x_dsm = SPECS["dsm"].from_array(dsm)
    if holes:
        x_irrg[:, ORTHO_HOLE[0], ORTHO_HOLE[1]] = 0.0
        valid = np.ones((H, W), dtype=bool)
        valid[DSM_HOLE] = False
        lo, hi = dsm[valid].min(), dsm[valid].max()
        x_dsm = torch.from_numpy(np.where(valid, (dsm - lo) / (hi - lo), 0.0)[None]).float()
    settings = inference_settings(cfg, (H, W))
    with torch.no_grad():
        logits = predict_logits(model, {"irrg": x_irrg[None], "dsm": x_dsm[None]}, **settings)
    return logits.argmax(1)[0].numpy().astype(np.uint8)


def _mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


# --------------------------------------------------------------------------- georeferencing
def test_mask_keeps_crs_transform_and_palette_and_equals_predict_in_memory(ckpt, tmp_path):
    ortho, dsm_path, irrg, dsm = _pair(tmp_path)
    summary = predict_geotiff(ckpt, [f"irrg={ortho}", f"dsm={dsm_path}"], tmp_path / "out")
    out = tmp_path / "out" / "tile.tif"
    assert summary.written == ["tile"] and summary.rasters[0].path == out
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32632 and src.transform == TRANSFORM
        assert (src.height, src.width, src.count, src.dtypes[0]) == (H, W, 1, "uint8")
        assert src.nodata == NODATA
        assert src.colormap(1)[1] == (0, 0, 255, 255)
        mask = src.read(1)
    expected = _reference(ckpt, irrg, dsm)
    assert len(np.unique(expected)) > 1  # the model says something about the inputs
    np.testing.assert_array_equal(mask, expected)
    # the same files through the PNG path of predict: the same classes, colorized
    predict(ckpt, [f"irrg={ortho}", f"dsm={dsm_path}"], tmp_path / "png", health=False)
    png = np.asarray(Image.open(tmp_path / "png" / "masks" / "tile.png"))
    np.testing.assert_array_equal(png, np.asarray(PALETTE, dtype=np.uint8)[mask])


def test_nodata_in_any_input_is_nodata_in_the_mask(ckpt, tmp_path):
    ortho, dsm_path, irrg, dsm = _pair(tmp_path, holes=True)
    summary = predict_geotiff(ckpt, [f"irrg={ortho}", f"dsm={dsm_path}"], tmp_path / "out")
    mask = _mask(tmp_path / "out" / "tile.tif")
    hole = np.zeros((H, W), dtype=bool)
    hole[DSM_HOLE] = hole[ORTHO_HOLE] = True
    np.testing.assert_array_equal(mask == NODATA, hole)
    assert summary.rasters[0].nodata_px == 16 * 20 + 16 * 24
    # the rest: the DSM min-max left the -9999 out, each modality's nodata entered the
    # model as 0
    expected = _reference(ckpt, irrg, dsm, holes=True)
    np.testing.assert_array_equal(mask[~hole], expected[~hole])


def test_grids_that_differ_name_both_files_and_the_difference(ckpt, tmp_path):
    irrg, dsm = _arrays()
    ortho = _write(tmp_path / "ortho.tif", irrg)
    shifted = _write(tmp_path / "shifted.tif", dsm,
                     transform=Affine(0.5, 0.0, 500001.0, 0.0, -0.5, 5300000.0))
    other_crs = _write(tmp_path / "utm33.tif", dsm, crs="EPSG:32633")
    smaller = _write(tmp_path / "small.tif", dsm[:, :90])
    for path, what in ((shifted, "transform"), (other_crs, "CRS"), (smaller, "size 80x96")):
        with pytest.raises(DataError, match=what) as err:
            predict_geotiff(ckpt, [f"irrg={ortho}", f"dsm={path}"], tmp_path / "out",
                            on_error="stop")
        assert str(ortho) in str(err.value) and str(path) in str(err.value)


# --------------------------------------------------------------------------- streaming
@pytest.mark.parametrize(("eval_cfg", "budget_mb"), [
    ({}, 0.25),  # 80 x 96 > 4 x 32 x 32: windows of 32, stride 21, aligned
    ({"mode": "slide", "window": [32, 32], "stride": [12, 20], "slide_positions": "clamped",
      "flip": True}, 0.45),
], ids=["aligned", "clamped-flip"])
def test_a_budget_below_the_raster_streams_windows_and_gives_the_same_mask(
        tmp_path, monkeypatch, eval_cfg, budget_mb):
    ckpt = _checkpoint(tmp_path / "m.ckpt", **eval_cfg)
    ortho, dsm_path, irrg, dsm = _pair(tmp_path, holes=True)
    inputs = [f"irrg={ortho}", f"dsm={dsm_path}"]
    whole = predict_geotiff(ckpt, inputs, tmp_path / "whole")
    assert whole.rasters[0].blocks == 1
    reads = []
    read = geo.read_window

    def counting(src, window, masked):
        reads.append((Path(src.name).parent.name, int(window.height), int(window.width)))
        return read(src, window, masked)

    monkeypatch.setattr(geo, "read_window", counting)
    streamed = predict_geotiff(ckpt, inputs, tmp_path / "streamed",
                              tile_memory_mb=budget_mb)
    blocks = streamed.rasters[0].blocks
    assert blocks > 1
    # the DSM min-max pass reads each block once, then every block reads both rasters
    assert sum(r[0] == "dsm" for r in reads) == 2 * blocks
    assert sum(r[0] == "ortho" for r in reads) == blocks
    assert all(h * w < H * W for _, h, w in reads)
    np.testing.assert_array_equal(_mask(tmp_path / "streamed" / "tile.tif"),
                                  _mask(tmp_path / "whole" / "tile.tif"))


def test_plan_blocks_cover_the_raster_once_with_every_window_touching_them():
    blocks = plan_blocks((80, 96), (32, 32), (21, 21), max_region_px=60 * 60)
    owned = np.zeros((80, 96), dtype=int)
    for b in blocks:
        (r0, r1), (c0, c1) = b.rows, b.cols
        owned[r0:r1, c0:c1] += 1
        y0, y1, x0, x1 = b.region
        assert (y1 - y0) * (x1 - x0) <= 60 * 60
        for y, x, n in b.windows[0]:
            assert n == 1 and y < r1 and y + 32 > r0 and x < c1 and x + 32 > c0
    # 2 windows down (regions of 53 and 59 rows), 1 across (at most 54 columns): 2 x 5 blocks
    assert (owned == 1).all() and len(blocks) == 10
    assert max(b.region[1] - b.region[0] for b in blocks) == 59
    assert max(b.region[3] - b.region[2] for b in blocks) == 54
    # starts 0 21 42 (+48 aligned to the far edge) down, 0 21 42 63 (+64) across
    assert {(y, x) for b in blocks for y, x, _ in b.windows[0]} == {
        (y, x) for y in (0, 21, 42, 48) for x in (0, 21, 42, 63, 64)}
    with pytest.raises(ConfigError, match="one 32x32 window"):
        plan_blocks((80, 96), (32, 32), (21, 21), max_region_px=32 * 32)


def test_a_budget_below_one_window_and_rasterio_missing_are_clear_errors(ckpt, tmp_path,
                                                                        monkeypatch):
    ortho, dsm_path, _, _ = _pair(tmp_path)
    with pytest.raises(ConfigError, match="budget"):
        predict_geotiff(ckpt, [f"irrg={ortho}", f"dsm={dsm_path}"], tmp_path / "out",
                        tile_memory_mb=0.01)
    monkeypatch.setitem(sys.modules, "rasterio", None)
    with pytest.raises(ConfigError, match=r"pip install 'fusionseg\[geo\]'"):
        predict_geotiff(ckpt, [f"irrg={ortho}", f"dsm={dsm_path}"], tmp_path / "out")
    assert not looks_georeferenced([f"irrg={ortho}", f"dsm={dsm_path}"])


# --------------------------------------------------------------------------- COG
@pytest.mark.parametrize("cog_driver", [True, False], ids=["cog-driver", "gtiff-overviews"])
def test_cog_output_is_tiled_with_overviews(ckpt, tmp_path, monkeypatch, cog_driver):
    if not cog_driver:
        monkeypatch.setattr(geo, "_has_cog_driver", lambda: False)
    ortho, dsm_path, _, _ = _pair(tmp_path)
    summary = predict_geotiff(ckpt, [f"irrg={ortho}", f"dsm={dsm_path}"], tmp_path / "out",
                              cog=True)
    assert summary.rasters[0].layout.startswith("COG" if cog_driver else "tiled GTiff +")
    with rasterio.open(tmp_path / "out" / "tile.tif") as src:
        assert src.profile["tiled"] and src.block_shapes[0] == (32, 32)
        assert src.overviews(1) == [2, 4]
        assert src.crs.to_epsg() == 32632 and src.transform == TRANSFORM
        assert src.colormap(1)[2] == (0, 255, 0, 255)
        if cog_driver:
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert not list((tmp_path / "out").glob(".*"))  # no draft or temporary file left


# --------------------------------------------------------------------------- CLI
def test_cli_predict_writes_a_georeferenced_mask_for_geotiff_inputs(ckpt, tmp_path):
    ortho, dsm_path, _, _ = _pair(tmp_path)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["predict", "--ckpt", str(ckpt), "--input", f"irrg={ortho}",
                                   "--input", f"dsm={dsm_path}", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "tile.tif: 80x96 px, EPSG:32632, 0 nodata px, read whole" in res.output
    assert (out / "tile.tif").is_file() and not (out / "masks").exists()
    res = CliRunner().invoke(app, ["predict", "--ckpt", str(ckpt), "--input", f"irrg={ortho}",
                                   "--input", f"dsm={dsm_path}", "--out", str(out), "--overlay"])
    assert res.exit_code != 0 and "--no-geotiff" in res.output


def test_folders_match_tiles_by_stem_and_a_bad_pair_fails_alone(ckpt, tmp_path):
    irrg, dsm = _arrays()
    for stem in ("a", "b"):
        _write(tmp_path / "ortho" / f"{stem}.tif", irrg)
    _write(tmp_path / "dsm" / "a.tif", dsm)
    _write(tmp_path / "dsm" / "b.tif", dsm, crs="EPSG:32633")
    inputs = [f"irrg={tmp_path / 'ortho'}", f"dsm={tmp_path / 'dsm'}"]
    with pytest.raises(PredictionIncomplete) as err:
        predict_geotiff(ckpt, inputs, tmp_path / "out")
    assert err.value.summary.written == ["a"]
    failed = (tmp_path / "out" / "failed.txt").read_text()
    assert failed.startswith("b\t") and "not on the same grid: CRS" in failed
    _write(tmp_path / "dsm" / "b.tif", dsm)
    summary = predict_geotiff(ckpt, inputs, tmp_path / "out", skip_existing=True)
    assert (summary.written, summary.skipped_existing) == (["b"], ["a"])
    with pytest.raises(DataError, match="reads no labels"):
        predict_geotiff(ckpt, [*inputs, f"label={tmp_path / 'ortho'}"], tmp_path / "out")
