"""HHA and depth from raw sensors (issue 25): geometry on analytic scenes, the file
conversions and their CLI, and ``encode: hha`` specs.

Scenes are rendered exactly: a pinhole camera (64x48 px, f = 50 px, principal point at the
image centre) whose rays hit planes given in the camera frame (``x`` right, ``y`` down, ``z``
forward). Expected HHA values come from the published encoding (Gupta et al., ECCV 2014;
s-gupta/rcnn-depth ``saveHHA.m``): disparity ``310 / max(Z, 1 m)``, height in cm above the
lowest point (or 130 cm below the camera when that point is less than 90 cm below it), angle
of the normal to the up direction in degrees + 38; rounded half up, saturated to 0..255.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from fusionseg.cli import app
from fusionseg.data.datasets import create_dataset
from fusionseg.data.depth_convert import depth_files, parse_intrinsics
from fusionseg.data.depth_geometry import (
    depth_to_hha,
    depth_to_points,
    disparity_to_depth,
    estimate_gravity,
    fill_depth_holes,
    missing_depth,
    surface_normals,
)
from fusionseg.data.modalities import ModalitySpec, get_spec
from fusionseg.errors import ConfigError, DataError
from fusionseg.inference.inputs import FileInput
from fusionseg.inference.specs import (
    apply_spec_overrides,
    parse_spec_overrides,
    stored_specs,
)

H, W, F = 48, 64, 50.0
CX, CY = (W - 1) / 2, (H - 1) / 2
K = (F, F, CX, CY)
runner = CliRunner()


def _rays() -> np.ndarray:
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    return np.stack([(u - CX) / F, (v - CY) / F, np.ones((H, W))], axis=-1)


def _up(pitch_deg: float) -> np.ndarray:
    """World up in the frame of a camera pitched ``pitch_deg`` down."""
    p = np.deg2rad(pitch_deg)
    return np.array([0.0, -np.cos(p), -np.sin(p)])


def _forward(pitch_deg: float) -> np.ndarray:
    """The horizontal direction the camera faces, in its frame."""
    p = np.deg2rad(pitch_deg)
    return np.array([0.0, -np.sin(p), np.cos(p)])


def _plane_depth(normal: np.ndarray, offset: float) -> np.ndarray:
    """Depth Z of each pixel's ray on the plane ``normal . p = offset`` (inf where missed)."""
    den = _rays() @ normal
    with np.errstate(divide="ignore", invalid="ignore"):
        t = offset / den
    return np.where((t > 0) & np.isfinite(t), t, np.inf)  # rays have z = 1, so Z = t


def _floor(height_m: float, pitch_deg: float) -> np.ndarray:
    """A camera ``height_m`` above an endless floor, pitched down so that it sees only floor."""
    z = _plane_depth(_up(pitch_deg), -height_m)
    assert np.isfinite(z).all()
    return z


def _room(pitch_deg: float = 20.0, height_m: float = 1.2, wall_m: float = 4.0) -> np.ndarray:
    """Floor ``height_m`` below the camera and a wall ``wall_m`` ahead, facing the camera."""
    z = np.minimum(_plane_depth(_up(pitch_deg), -height_m),
                   _plane_depth(_forward(pitch_deg), wall_m))
    assert np.isfinite(z).all()
    return z


# ------------------------------------------------------------------------------ geometry

def test_depth_to_points_pinhole():
    depth = np.full((H, W), 2.0)
    depth[0, 0] = 0.0
    pts = depth_to_points(depth, (100.0, 50.0, 10.0, 20.0))
    # pixel (u=30, v=5): x = (30 - 10) * 2 / 100 = 0.4, y = (5 - 20) * 2 / 50 = -0.6
    np.testing.assert_allclose(pts[5, 30], [0.4, -0.6, 2.0])
    assert np.isnan(pts[0, 0]).all()  # missing depth: no point


def test_normals_of_planes_face_the_camera():
    up = _up(35.0)
    normals = surface_normals(depth_to_points(_floor(1.5, 35.0), K), radius=3)
    np.testing.assert_allclose(normals, np.broadcast_to(up, normals.shape), atol=1e-9)
    wall = surface_normals(depth_to_points(np.full((H, W), 2.0), K), radius=3)
    np.testing.assert_allclose(wall, np.broadcast_to([0, 0, -1], wall.shape), atol=1e-9)


def test_normals_need_three_points_off_a_line():
    depth = np.zeros((H, W))
    depth[10, 5:40] = 2.0  # one row: collinear points fix no plane
    normals = surface_normals(depth_to_points(depth, K), radius=1)
    assert np.isnan(normals).all()


def test_gravity_of_a_floor_is_its_normal():
    for pitch in (30.0, 40.0, 44.0):  # the camera within 45 degrees of level (see the module)
        z = _floor(1.5, pitch)
        g = estimate_gravity(surface_normals(depth_to_points(z, K), radius=10))
        np.testing.assert_allclose(g, -_up(pitch), atol=1e-9)
    # floor and wall: normals fitted across the crease tilt it by under a degree
    g = estimate_gravity(surface_normals(depth_to_points(_room(20.0), K), radius=10))
    assert np.degrees(np.arccos(g @ -_up(20.0))) < 1.0


def test_gravity_of_a_lone_wall_keeps_the_initial_direction():
    """Normals all along z leave gravity free in the x-y plane: keep the camera's down."""
    normals = np.broadcast_to([0.0, 0.0, -1.0], (8, 8, 3))
    np.testing.assert_allclose(estimate_gravity(normals), [0, 1, 0], atol=1e-12)


# ------------------------------------------------------------------------------ HHA

def test_hha_floor_height_and_angle():
    """A camera 1.5 m above the floor sees it at height 0 cm and at 0 degrees (38)."""
    hha = depth_to_hha(_floor(1.5, 35.0), K)
    assert hha.dtype == np.uint8 and hha.shape == (H, W, 3)
    assert (hha[..., 1] == 0).all()
    assert (hha[..., 2] == 38).all()
    np.testing.assert_array_equal(
        hha[..., 0], np.floor(310.0 / np.maximum(_floor(1.5, 35.0), 1.0) + 0.5))


def test_hha_low_camera_assumes_floor_130_cm_below():
    """The lowest point 0.5 m below the camera (> -0.9 m): the floor is taken at -1.3 m, so
    the seen floor is 130 - 50 = 80 cm high."""
    hha = depth_to_hha(_floor(0.5, 35.0), K)
    assert (hha[..., 1] == 80).all()


def test_hha_heights_of_a_platform():
    """A horizontal platform 0.4 m above the floor: 40 cm; the floor: 0 cm."""
    up, fwd = _up(40.0), _forward(40.0)
    floor, top = _plane_depth(up, -1.5), _plane_depth(up, -1.1)
    ahead = (_rays() * top[..., None]) @ fwd
    on_top = (ahead > 2.2) & (ahead < 3.2)  # a band 2.2..3.2 m ahead of the camera
    z = np.where(on_top, top, floor)
    hha = depth_to_hha(z, K, gravity=-up)  # gravity known (e.g. from an IMU)
    assert (hha[..., 1][on_top] == 40).all()
    assert (hha[..., 1][~on_top] == 0).all()
    # estimated gravity: normals across the platform's edges tilt it by about half a degree
    est = depth_to_hha(z, K)
    assert np.abs(est[..., 1].astype(int) - hha[..., 1]).max() <= 5


def test_hha_wall_is_90_degrees():
    """Room: wall pixels away from the crease are at 90 degrees (128), floor at 0 (38)."""
    z = _room(20.0)
    wall = np.isclose(z, _plane_depth(_forward(20.0), 4.0))
    hha = depth_to_hha(z, K, gravity=-_up(20.0))
    rows = np.flatnonzero(wall.all(axis=1))
    crease = rows.max() + 0.5  # the wall ends between two rows (the crease is level)
    far = np.broadcast_to((np.abs(np.arange(H) - crease) > 3)[:, None], (H, W))  # 7x7 off it
    assert (hha[..., 2][wall & far] == 128).all()
    assert (hha[..., 2][~wall & far] == 38).all()
    est = depth_to_hha(z, K)  # estimated gravity: within one level
    assert np.abs(est[..., 2][far].astype(int) - hha[..., 2][far]).max() <= 1


def test_hha_disparity_channel_formula():
    """310 / max(Z, 1 m): 2 m -> 155, 4 m -> 77.5 -> 78 (half up), 0.5 m -> 310 -> 255."""
    for depth_m, expected in ((2.0, 155), (4.0, 78), (0.5, 255), (1.0, 255), (31.0, 10)):
        hha = depth_to_hha(np.full((H, W), depth_m), K)
        assert (hha[..., 0] == expected).all(), depth_m
        assert (hha[..., 2] == 128).all()  # fronto-parallel wall: 90 degrees


def test_hha_missing_normals_count_180_degrees():
    depth = np.zeros((H, W))
    depth[:, : W // 2] = 2.0  # right half missing, more than the 7x7 window away: no normal
    hha = depth_to_hha(depth, K)
    assert (hha[:, W // 2 + 4:, 2] == 180 + 38).all()
    assert (hha[:, W // 2 + 4:, 0] == 155).all()  # filled from the left half


def test_hha_rejects_bad_input():
    with pytest.raises(DataError, match="no valid pixel"):
        depth_to_hha(np.zeros((H, W)), K)
    with pytest.raises(DataError, match="focal lengths"):
        depth_to_hha(np.ones((H, W)), (0.0, 50.0, 1.0, 1.0))
    with pytest.raises(DataError, match="four"):
        depth_to_hha(np.ones((H, W)), (50.0, 50.0, 1.0))


# ------------------------------------------------------------------------------ holes, disparity

def test_fill_depth_holes_keeps_known_and_fills_all():
    z = _room(20.0)
    depth = z.copy()
    depth[10:20, 5:30] = 0.0
    depth[30, 40] = np.nan
    depth[0:3, 0:3] = -1.0
    filled = fill_depth_holes(depth)
    known = ~missing_depth(depth)
    assert not missing_depth(filled).any()
    np.testing.assert_array_equal(filled[known], depth[known])
    assert filled.min() >= depth[known].min() and filled.max() <= depth[known].max()
    # a single missing pixel gets the mean of its 8 neighbours
    one = np.arange(1.0, 26.0).reshape(5, 5)
    one[2, 2] = 0.0
    assert fill_depth_holes(one)[2, 2] == pytest.approx((7 + 8 + 9 + 12 + 14 + 17 + 18 + 19) / 8)


def test_disparity_to_depth_known_numbers():
    disp = np.array([[42.0, 84.0, 0.0], [-3.0, np.nan, 4.2]])
    depth = disparity_to_depth(disp, baseline_m=0.12, focal_px=700.0)
    # 700 px * 0.12 m = 84 px m: 42 px -> 2 m, 84 px -> 1 m, 4.2 px -> 20 m; d <= 0 / NaN -> 0
    np.testing.assert_allclose(depth, [[2.0, 1.0, 0.0], [0.0, 0.0, 20.0]])
    with pytest.raises(DataError, match="baseline"):
        disparity_to_depth(disp, baseline_m=0.0, focal_px=700.0)


# ------------------------------------------------------------------------------ files and CLI

def _write_depth_mm(path, depth_m: np.ndarray) -> np.ndarray:
    mm = np.rint(depth_m * 1000).astype(np.uint16)
    Image.fromarray(mm).save(path)
    return mm


def test_cli_depth2hha_folder(tmp_path):
    src = tmp_path / "depth"
    src.mkdir()
    mm = _write_depth_mm(src / "000001.png", _room(20.0))
    small = _floor(1.5, 35.0)[:32, :40]
    np.save(src / "000002.npy", (small * 1000).astype(np.float32))
    (src / "notes.txt").write_text("not an image")
    res = runner.invoke(app, ["data", "depth2hha", str(src), "--out", str(tmp_path / "hha"),
                              "--intrinsics", f"{F},{F},{CX},{CY}", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "2 HHA image(s)" in res.output
    outs = sorted((tmp_path / "hha").iterdir())
    assert [p.name for p in outs] == ["000001.png", "000002.png"]
    a, b = (np.asarray(Image.open(p)) for p in outs)
    assert a.dtype == np.uint8 and a.shape == (H, W, 3) and b.shape == (32, 40, 3)
    np.testing.assert_array_equal(a, depth_to_hha(mm * 0.001, K))


def test_cli_depth2hha_errors(tmp_path):
    res = runner.invoke(app, ["data", "depth2hha", str(tmp_path / "*.png"), "--out",
                              str(tmp_path / "o"), "--intrinsics", "50,50,31.5,23.5"])
    assert res.exit_code == 2 and "no .png" in res.output and str(tmp_path) in res.output
    _write_depth_mm(tmp_path / "d.png", _room())
    res = runner.invoke(app, ["data", "depth2hha", str(tmp_path / "d.png"), "--out",
                              str(tmp_path / "o"), "--intrinsics", "50,50,31.5"])
    assert res.exit_code == 2 and "--intrinsics '50,50,31.5'" in res.output
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    res = runner.invoke(app, ["data", "depth2hha", str(tmp_path / "rgb.png"), "--out",
                              str(tmp_path / "o"), "--intrinsics", "50,50,4,4"])
    assert res.exit_code == 2 and "rgb.png" in res.output and "1-channel" in res.output
    with pytest.raises(ConfigError, match="FX,FY,CX,CY"):
        parse_intrinsics("a,b,c,d")
    (tmp_path / "d.npy").write_bytes(b"")
    with pytest.raises(DataError, match="stem 'd'"):
        depth_files(tmp_path / "d.*")


def test_cli_disparity2depth(tmp_path):
    src = tmp_path / "disp"
    src.mkdir()
    disp = np.array([[42 * 256, 84 * 256], [0, 21 * 256]], dtype=np.uint16)  # KITTI: d * 256
    Image.fromarray(disp).save(src / "000007.png")
    res = runner.invoke(app, ["data", "disparity2depth", str(src), "--out", str(tmp_path / "d"),
                              "--baseline", "0.12", "--focal", "700", "--scale", "0.00390625"])
    assert res.exit_code == 0, res.output
    out = np.asarray(Image.open(tmp_path / "d" / "000007.png"))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[2000, 1000], [0, 4000]])  # millimetres


# ------------------------------------------------------------------------------ encode: hha specs

def _hha_spec(**extra) -> ModalitySpec:
    return get_spec("depth", encode="hha", intrinsics=list(K), **extra)


def test_spec_encode_hha_fields_and_round_trip():
    spec = _hha_spec()
    assert spec.out_channels == 3 and spec.repeat_to is None and spec.normalize == "imagenet"
    again = ModalitySpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec
    stored = stored_specs({"fusionseg_specs": {"depth": spec.model_dump(mode="json")}})
    assert stored["depth"] == spec
    by_override = apply_spec_overrides({"depth": get_spec("depth")},
                                       {"depth": {"encode": "hha", "intrinsics": list(K)}})
    assert by_override["depth"] == spec
    overrides = parse_spec_overrides(["depth.encode=hha",
                                      f"depth.intrinsics=[{F}, {F}, {CX}, {CY}]"])
    assert apply_spec_overrides({"depth": get_spec("depth")}, overrides)["depth"] == spec
    with pytest.raises(DataError, match="modality 'depth'.*needs intrinsics"):
        get_spec("depth", encode="hha")
    with pytest.raises(DataError, match="needs depth in metres"):
        get_spec("thermal", channels=1, repeat_to=None, encode="hha", intrinsics=list(K))


def test_spec_encode_hha_equals_offline_png(tmp_path):
    """Raw depth read with ``encode: hha`` = the HHA PNG of it read by the ``hha`` spec."""
    mm = _write_depth_mm(tmp_path / "a.png", _room(20.0))
    x = _hha_spec().load(tmp_path / "a.png")
    hha = depth_to_hha(mm.astype(np.float64) * 0.001, K)
    assert x.shape == (3, H, W) and x.dtype == torch.float32
    Image.fromarray(hha).save(tmp_path / "hha.png")
    torch.testing.assert_close(x, get_spec("hha").load(tmp_path / "hha.png"), rtol=0, atol=0)
    files = {"depth": {"a": tmp_path / "a.png"}}
    sample = FileInput(files, {"depth": _hha_spec()})[0]  # the predict path
    torch.testing.assert_close(sample["depth"], x, rtol=0, atol=0)


def test_folder_dataset_with_encode_hha(tmp_path):
    (tmp_path / "train" / "depth").mkdir(parents=True)
    (tmp_path / "train" / "label").mkdir(parents=True)
    mm = _write_depth_mm(tmp_path / "train" / "depth" / "s0.png", _room(20.0))
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "train" / "label" / "s0.png")
    cfg = {"classes": ["floor", "wall"],
           "modalities": {"depth": {"encode": "hha", "intrinsics": list(K)}}}
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(cfg))
    ds = create_dataset("folder", tmp_path, "train", ["depth"])
    x = ds[0]["depth"]
    expected = torch.from_numpy(depth_to_hha(mm * 0.001, K).transpose(2, 0, 1).astype(np.float32))
    torch.testing.assert_close(x, expected / 255.0, rtol=0, atol=1e-7)
    assert ds.specs["depth"].out_channels == 3
