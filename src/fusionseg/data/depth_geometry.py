"""Depth geometry: back-projection, surface normals, gravity, and the HHA encoding of depth.

HHA (Gupta, Girshick, Arbelaez, Malik, "Learning Rich Features from RGB-D Images for Object
Detection and Segmentation", ECCV 2014, Sec. 3) encodes a depth map as three 8-bit channels:

1. **horizontal disparity**, ``310 / max(Z, 1 m)`` with ``Z`` the depth in metres (the
   reference's ``31000 ./ max(Z_cm, 100)``), so 155 at 2 m; saturates at 255 below 1.216 m;
2. **height above the ground** in centimetres: each 3-D point's height along the inferred
   gravity direction, relative to the lowest point of the image (``h - h_min``); where the
   lowest point is less than 0.9 m below the camera the floor is assumed 1.3 m below it (the
   reference's ``if yMin > -90, yMin = -130``);
3. **angle** between the local surface normal and the up direction (opposite to gravity) in
   degrees, plus 38 (the reference's ``angle + 128 - 90``): a floor 38, a wall 128, a ceiling
   218; a pixel without a normal (no valid depth around it) counts 180 degrees (218), as the
   reference's ``acosd(min(1, max(-1, NaN)))`` gives in MATLAB.

Values are rounded half up and saturated to ``0..255`` (MATLAB ``uint8``). The gravity
direction is estimated as in Gupta, Arbelaez, Malik, "Perceptual Organization and
Recognition of Indoor Scenes from RGB-D Images", CVPR 2013, Sec. 3.1: starting from the
camera's down axis, normals within 45 degrees of it count as horizontal surfaces and those
within 45 degrees of perpendicular as vertical ones; the new direction is the unit vector
most aligned with the first set and most perpendicular to the second (the eigenvector of the
smallest eigenvalue of ``N_wall^T N_wall - N_floor^T N_floor``); 5 iterations at 45 degrees,
then 5 at 15 degrees. So the camera must be within 45 degrees of level. Normals are fitted over 7x7 windows for the angle channel and over
21x21 windows for the gravity estimate (the reference's ``patchSize = [3 10]`` radii).

The constants and scalings follow the reference implementation, s-gupta/rcnn-depth
(``rcnn/saveHHA.m``, ``mcg/depth_features/processDepthImage.m``) and its Python port
charlesCXK/Depth2HHA-python (``getHHA.py``, ``utils/rgbd_util.py``). Departures, none of
which changes the output on planar surfaces:

- normals are total-least-squares (PCA) plane fits of the valid points of each window; the
  reference solves ``n . p = 1`` in least squares weighted by ``1 / Z``;
- the gravity eigenproblem gets a tie-break ``-1e-6 * count * y y^T`` towards the previous
  estimate ``y``, so a scene whose normals leave gravity undetermined (a single wall)
  keeps the previous direction instead of an arbitrary one;
- pixel coordinates are 0-based (OpenCV: the first pixel's centre is ``(0, 0)``; ``cx, cy``
  as OpenCV calibration writes them); the reference's MATLAB code counts from 1;
- missing depth is filled by :func:`fill_depth_holes` (the reference takes NYU's colorization
  in-painting, which needs the RGB image).

Camera frame: ``x`` right, ``y`` down, ``z`` forward (along the optical axis), in metres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError

__all__ = [
    "HHA_ANGLE_OFFSET_DEG",
    "HHA_DISPARITY_SCALE_M",
    "HHA_FLOOR_FALLBACK_M",
    "HHA_FLOOR_MIN_DROP_M",
    "HHA_MIN_DEPTH_M",
    "check_intrinsics",
    "depth_to_hha",
    "depth_to_points",
    "disparity_to_depth",
    "estimate_gravity",
    "fill_depth_holes",
    "missing_depth",
    "surface_normals",
]

#: Channel 1 is ``HHA_DISPARITY_SCALE_M / depth_m`` (saveHHA.m: ``31000 ./ Z`` with Z in cm).
HHA_DISPARITY_SCALE_M: float = 310.0
#: Depth is clamped to at least this before channel 1 (saveHHA.m: ``max(Z, 100)`` in cm).
HHA_MIN_DEPTH_M: float = 1.0
#: Added to the normal-to-up angle in degrees (saveHHA.m: ``angl + 128 - 90``).
HHA_ANGLE_OFFSET_DEG: float = 38.0
#: A lowest point less than this far below the camera is not taken as the floor
#: (processDepthImage.m: ``if yMin > -90``, in cm) ...
HHA_FLOOR_MIN_DROP_M: float = 0.9
#: ... and the floor is then assumed this far below the camera (``yMin = -130``, in cm).
HHA_FLOOR_FALLBACK_M: float = 1.3

#: Normal-fit window radii in pixels: the angle channel, the gravity estimate
#: (processDepthImage.m: ``normalParam.patchSize = [3 10]``).
NORMAL_RADIUS_ANGLE: int = 3
NORMAL_RADIUS_GRAVITY: int = 10
#: Gravity estimation schedule (processDepthImage.m: ``yDirParam``): thresholds in degrees
#: and iterations per threshold.
GRAVITY_THRESHOLDS_DEG: tuple[float, ...] = (45.0, 15.0)
GRAVITY_ITERATIONS: tuple[int, ...] = (5, 5)


def check_intrinsics(intrinsics: Sequence[float]) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` in pixels as floats.

    Raises:
        DataError: not four finite numbers, or a focal length that is not positive.
    """
    try:
        values = tuple(float(v) for v in intrinsics)
    except (TypeError, ValueError):
        raise DataError(f"intrinsics must be four numbers (fx, fy, cx, cy) in pixels, "
                        f"got {intrinsics!r}") from None
    if len(values) != 4 or not all(np.isfinite(values)):
        raise DataError(f"intrinsics must be four finite numbers (fx, fy, cx, cy) in pixels, "
                        f"got {list(values)}")
    if values[0] <= 0 or values[1] <= 0:
        raise DataError(f"intrinsics: focal lengths fx, fy must be > 0, got {list(values)}")
    return values  # type: ignore[return-value]


def _as_depth(depth_m: np.ndarray) -> np.ndarray:
    depth = np.asarray(depth_m)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2 or depth.size == 0:
        raise DataError(f"depth must be a non-empty [H, W] array, got shape {depth.shape}")
    if depth.dtype.kind not in "biuf":
        raise DataError(f"depth must be numeric, got dtype {depth.dtype}")
    return depth.astype(np.float64)


def missing_depth(depth_m: np.ndarray) -> np.ndarray:
    """``bool [H, W]``: where ``depth_m`` holds no measurement (0, negative, NaN or inf)."""
    depth = _as_depth(depth_m)
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(depth) & (depth > 0))


def fill_depth_holes(depth_m: np.ndarray) -> np.ndarray:
    """Fill missing depth (0, negative, NaN, inf) from the valid depth around it.

    Onion peeling: each pass gives every missing pixel that touches a valid one (8-neighbours)
    the mean of those valid neighbours, until none is missing. Valid pixels are unchanged,
    filled values lie within the range of the valid ones.

    Args:
        depth_m: ``[H, W]`` depth in metres (any numeric dtype).

    Returns:
        ``float64 [H, W]`` depth in metres with no missing pixel.

    Raises:
        DataError: no valid pixel at all, or not a 2-D numeric array.
    """
    depth = _as_depth(depth_m)
    missing = missing_depth(depth)
    if missing.all():
        raise DataError("depth has no valid pixel (all 0, negative or not finite)")
    out = np.where(missing, 0.0, depth)
    known = ~missing
    h, w = out.shape
    while not known.all():
        vals = np.pad(np.where(known, out, 0.0), 1)
        cnt = np.pad(known.astype(np.float64), 1)
        total = np.zeros((h, w))
        count = np.zeros((h, w))
        for dy in range(3):
            for dx in range(3):
                if dy == 1 and dx == 1:
                    continue
                total += vals[dy:dy + h, dx:dx + w]
                count += cnt[dy:dy + h, dx:dx + w]
        ring = ~known & (count > 0)
        out[ring] = total[ring] / count[ring]
        known = known | ring
    return out


def depth_to_points(depth_m: np.ndarray, intrinsics: Sequence[float]) -> np.ndarray:
    """Back-project a depth map to 3-D points in the camera frame (pinhole model).

    ``X = (u - cx) Z / fx``, ``Y = (v - cy) Z / fy``, ``Z = depth`` for the column ``u`` and
    row ``v`` (0-based); ``x`` right, ``y`` down, ``z`` forward, metres.

    Args:
        depth_m: ``[H, W]`` depth along the optical axis in metres (not the range along the
            ray); missing pixels (0, NaN) give NaN points.
        intrinsics: ``(fx, fy, cx, cy)`` in pixels.

    Returns:
        ``float64 [H, W, 3]``.

    Raises:
        DataError: bad intrinsics or depth array.
    """
    fx, fy, cx, cy = check_intrinsics(intrinsics)
    depth = _as_depth(depth_m)
    z = np.where(missing_depth(depth), np.nan, depth)
    h, w = z.shape
    u = np.arange(w, dtype=np.float64)[None, :]
    v = np.arange(h, dtype=np.float64)[:, None]
    return np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1)


def _box_sum(a: np.ndarray, r: int) -> np.ndarray:
    """Sum of ``a [H, W, K]`` over the ``(2r+1) x (2r+1)`` window of each pixel (clipped at
    the border), by separable running sums (each accumulates at most one row or column)."""
    h, w = a.shape[:2]
    p = np.pad(a, ((r + 1, r), (0, 0), (0, 0)))
    c = np.cumsum(p, axis=0)
    a = c[2 * r + 1:2 * r + 1 + h] - c[:h]
    p = np.pad(a, ((0, 0), (r + 1, r), (0, 0)))
    c = np.cumsum(p, axis=1)
    return c[:, 2 * r + 1:2 * r + 1 + w] - c[:, :w]


def surface_normals(points: np.ndarray, radius: int = NORMAL_RADIUS_ANGLE) -> np.ndarray:
    """Unit surface normals by a plane fit over the ``(2r+1) x (2r+1)`` window of each pixel.

    The normal is the direction of least spread of the window's valid points (the
    eigenvector of the smallest eigenvalue of their covariance: a total-least-squares plane
    fit), oriented towards the camera (``n . p < 0``).

    Args:
        points: ``[H, W, 3]`` camera-frame points in metres (:func:`depth_to_points`); NaN
            marks a missing point, which the fits leave out.
        radius: window radius ``r`` in pixels (3: 7x7 windows).

    Returns:
        ``float64 [H, W, 3]``; NaN where the window has fewer than 3 valid points or they lie
        on a line.

    Raises:
        DataError: ``points`` not ``[H, W, 3]`` or a negative radius.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[2] != 3:
        raise DataError(f"points must be [H, W, 3], got shape {pts.shape}")
    if radius < 0:
        raise DataError(f"normal window radius must be >= 0, got {radius}")
    valid = np.isfinite(pts).all(axis=2)
    if not valid.any():
        return np.full(pts.shape, np.nan)
    centre = pts[valid].mean(axis=0)  # centring keeps the running sums small
    q = np.where(valid[..., None], pts - centre, 0.0)
    x, y, z = q[..., 0], q[..., 1], q[..., 2]
    moments = np.stack([valid.astype(np.float64), x, y, z,
                        x * x, x * y, x * z, y * y, y * z, z * z], axis=-1)
    s = _box_sum(moments, int(radius))
    n = s[..., 0]
    ok = n >= 3
    out = np.full(pts.shape, np.nan)
    if not ok.any():
        return out
    s = s[ok]
    count = s[:, 0]
    mean = s[:, 1:4] / count[:, None]
    second = np.empty((len(s), 3, 3))
    idx = {(0, 0): 4, (0, 1): 5, (0, 2): 6, (1, 1): 7, (1, 2): 8, (2, 2): 9}
    for (i, j), k in idx.items():
        second[:, i, j] = second[:, j, i] = s[:, k] / count
    cov = second - mean[:, :, None] * mean[:, None, :]
    evals, evecs = np.linalg.eigh(cov)  # ascending eigenvalues
    normal = evecs[:, :, 0]
    # collinear points (a 1-pixel-wide strip) fix no plane
    flat = evals[:, 1] <= 1e-12 * np.maximum(evals[:, 2], 1e-300)
    normal[flat] = np.nan
    facing = np.einsum("ki,ki->k", normal, mean + centre)
    normal *= np.where(facing > 0, -1.0, 1.0)[:, None]
    out[ok] = normal
    return out


def estimate_gravity(normals: np.ndarray,
                     initial: Sequence[float] = (0.0, 1.0, 0.0),
                     thresholds_deg: Sequence[float] = GRAVITY_THRESHOLDS_DEG,
                     iterations: Sequence[int] = GRAVITY_ITERATIONS) -> np.ndarray:
    """The direction of gravity in the camera frame (Gupta et al., CVPR 2013, Sec. 3.1).

    For each threshold ``t`` and its number of iterations: normals within ``t`` of the
    current direction ``y`` (``|n . y| > cos t``) are horizontal surfaces, those within ``t``
    of perpendicular (``|n . y| < sin t``) vertical ones; the new ``y`` is the unit vector
    minimising ``sum_wall (n . y)^2 - sum_floor (n . y)^2`` (smallest eigenvector), signed to
    agree with the previous one. Constants: processDepthImage.m ``yDirParam``.

    The camera must be within 45 degrees of level: a floor further from the initial
    direction counts as a wall in the first pass, and the result is wrong (as in the
    reference); pass a known gravity to :func:`depth_to_hha` then.

    Args:
        normals: ``[H, W, 3]`` or ``[N, 3]`` unit normals (any sign); NaN rows are skipped.
        initial: the starting direction (the camera's down axis: ``(0, 1, 0)``).
        thresholds_deg: angle thresholds in degrees.
        iterations: iterations per threshold.

    Returns:
        ``float64 [3]``: unit vector pointing down (the way gravity pulls), camera frame.

    Raises:
        DataError: a zero initial direction, or thresholds and iterations of different
            lengths.
    """
    nn = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    nn = nn[np.isfinite(nn).all(axis=1)]
    y = np.asarray(initial, dtype=np.float64).reshape(3)
    if not np.isfinite(y).all() or np.linalg.norm(y) == 0:
        raise DataError(f"initial gravity direction must be a non-zero vector, got {initial}")
    if len(thresholds_deg) != len(iterations):
        raise DataError("estimate_gravity: thresholds_deg and iterations differ in length")
    y = y / np.linalg.norm(y)
    for thresh, iters in zip(thresholds_deg, iterations, strict=True):
        t = np.deg2rad(float(thresh))
        for _ in range(int(iters)):
            sim = np.abs(nn @ y)
            floor = nn[sim > np.cos(t)]
            wall = nn[sim < np.sin(t)]
            if len(floor) == 0 and len(wall) == 0:
                break
            count = len(floor) + len(wall)
            a = wall.T @ wall - floor.T @ floor - 1e-6 * count * np.outer(y, y)
            _, vecs = np.linalg.eigh(a)
            new = vecs[:, 0]
            y = new * (-1.0 if new @ y < 0 else 1.0)
    return y


def _round_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB ``uint8``: round half away from zero, saturate to 0..255 (NaN -> 0)."""
    x = np.nan_to_num(x, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.floor(np.abs(x) + 0.5) * np.sign(x), 0, 255).astype(np.uint8)


def depth_to_hha(depth_m: np.ndarray, intrinsics: Sequence[float], *,
                 gravity: Sequence[float] | None = None) -> np.ndarray:
    """HHA encoding of a depth map (Gupta et al., ECCV 2014, Sec. 3; see the module docstring).

    Missing depth (0, negative, NaN, inf) is filled first (:func:`fill_depth_holes`) for the
    disparity and height channels; the normals use the measured points only.

    Args:
        depth_m: ``[H, W]`` depth along the optical axis in metres.
        intrinsics: ``(fx, fy, cx, cy)`` of the depth image in pixels.
        gravity: the down direction in the camera frame if known (e.g. from an IMU; any
            length); default: estimated from the normals (:func:`estimate_gravity`).

    Returns:
        ``uint8 [H, W, 3]``: horizontal disparity (``310 / max(depth_m, 1)``), height above
        the lowest point in centimetres, angle of the normal to the up direction in degrees
        + 38.

    Raises:
        DataError: bad intrinsics, not a 2-D numeric array, no valid depth pixel, a zero
            gravity vector.
    """
    intr = check_intrinsics(intrinsics)
    depth = _as_depth(depth_m)
    filled = fill_depth_holes(depth)
    raw_points = depth_to_points(depth, intr)
    points = depth_to_points(filled, intr)
    normals = surface_normals(raw_points, NORMAL_RADIUS_ANGLE)
    if gravity is None:
        g = estimate_gravity(surface_normals(raw_points, NORMAL_RADIUS_GRAVITY))
    else:
        g = np.asarray(gravity, dtype=np.float64).reshape(3)
        if not np.isfinite(g).all() or np.linalg.norm(g) == 0:
            raise DataError(f"gravity must be a non-zero vector, got {gravity}")
        g = g / np.linalg.norm(g)

    disparity = HHA_DISPARITY_SCALE_M / np.maximum(filled, HHA_MIN_DEPTH_M)
    up = -(points @ g)  # height above the camera, metres
    lowest = float(up.min())
    if lowest > -HHA_FLOOR_MIN_DROP_M:
        lowest = -HHA_FLOOR_FALLBACK_M
    height_cm = (up - lowest) * 100.0
    cos = np.clip(normals @ -g, -1.0, 1.0)
    angle = np.degrees(np.arccos(cos))
    angle = np.where(np.isnan(angle), 180.0, angle) + HHA_ANGLE_OFFSET_DEG
    return np.stack([_round_uint8(disparity), _round_uint8(height_cm), _round_uint8(angle)],
                    axis=-1)


def disparity_to_depth(disparity_px: np.ndarray, baseline_m: float,
                       focal_px: float) -> np.ndarray:
    """Stereo disparity to depth: ``depth = focal * baseline / disparity``.

    Args:
        disparity_px: ``[H, W]`` disparity in pixels (of the rectified pair).
        baseline_m: distance between the two cameras' centres in metres (> 0).
        focal_px: focal length of the rectified images in pixels (> 0).

    Returns:
        ``float64 [H, W]`` depth in metres; 0 (missing) where the disparity is 0, negative
        or not finite.

    Raises:
        DataError: a baseline or focal length that is not a positive finite number.
    """
    for name, value in (("baseline", baseline_m), ("focal length", focal_px)):
        if not np.isfinite(value) or value <= 0:
            raise DataError(f"{name} must be a positive number, got {value}")
    d = np.asarray(disparity_px, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        valid = np.isfinite(d) & (d > 0)
        return np.where(valid, float(focal_px) * float(baseline_m) / np.where(valid, d, 1.0),
                        0.0)
