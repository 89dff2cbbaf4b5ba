"""Vectorized numpy ray casting against a few convex primitives.

World frame: metres, right-handed, ``z`` up, ground plane ``z = 0``.  Camera frame: ``x`` right,
``y`` down, ``z`` forward (pinhole, square pixels, pixel centres at ``i + 0.5``).

Primitives (all convex, so each ray meets one in a single interval ``[t_in, t_out]``):

- the ground plane ``z = 0`` (primitive id 0, infinite),
- axis-aligned boxes ``lo <= p <= hi``,
- vertical cylinders (axis along ``z``) ``(cx, cy, r, z0, z1)``,
- axis-aligned ellipsoids ``centre, radii``.

Primary rays share one origin, so every primitive is only tested on the pixels inside the
screen rectangle of its projected bounding box (culling); shadow rays share one direction (a
directional sun), so every primitive is only tested on the pixels inside the screen rectangle
of its projected shadow volume.  Everything runs in float32 over ``[H, W]`` planes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

EPS = 1e-3  # metres; minimum ray parameter accepted as a hit
NEAR = 0.05  # metres; points closer to the camera plane than this disable rectangle culling

KIND_GROUND, KIND_BOX, KIND_CYL, KIND_ELL = 0, 1, 2, 3


def _safe_inv(d: np.ndarray) -> np.ndarray:
    d = np.where(np.abs(d) < 1e-9, np.float32(1e-9), d)
    return (np.float32(1.0) / d).astype(np.float32, copy=False)


@dataclass
class Camera:
    """Pinhole camera.

    ``origin``: (3,) world position in metres.  ``rot``: (3, 3) world-from-camera rotation whose
    columns are the camera's right, down and forward axes in world coordinates.  ``fov_deg`` is
    the horizontal field of view.
    """

    origin: np.ndarray
    rot: np.ndarray
    width: int
    height: int
    fov_deg: float = 90.0

    @property
    def focal(self) -> float:
        return 0.5 * self.width / math.tan(math.radians(self.fov_deg) / 2)

    @staticmethod
    def from_angles(origin, yaw: float, pitch: float, roll: float, width: int, height: int,
                    fov_deg: float = 90.0) -> Camera:
        """Build a camera from yaw (0 = looking along +y, positive turns towards +x), pitch
        (positive looks up) and roll, all in radians."""
        cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
        fwd = np.array([sy * cp, cy * cp, sp])
        right = np.array([cy, -sy, 0.0])
        down = np.cross(fwd, right)
        cr, sr = math.cos(roll), math.sin(roll)
        right, down = cr * right + sr * down, -sr * right + cr * down
        rot = np.stack([right, down, fwd], axis=1)
        return Camera(np.asarray(origin, dtype=np.float64), rot, width, height, fov_deg)

    def rays(self) -> np.ndarray:
        """Unit ray directions in world coordinates, float32 ``[H, W, 3]``."""
        f = self.focal
        u = (np.arange(self.width, dtype=np.float64) + 0.5 - self.width / 2) / f
        v = (np.arange(self.height, dtype=np.float64) + 0.5 - self.height / 2) / f
        dc = np.empty((self.height, self.width, 3))
        dc[..., 0] = u[None, :]
        dc[..., 1] = v[:, None]
        dc[..., 2] = 1.0
        dc /= np.linalg.norm(dc, axis=-1, keepdims=True)
        return (dc @ self.rot.T).astype(np.float32)

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Project world points ``(..., 3)`` to pixel coordinates ``u, v`` and camera depth."""
        pc = (np.asarray(pts, dtype=np.float64) - self.origin) @ self.rot
        z = pc[..., 2]
        zs = np.where(np.abs(z) < 1e-9, 1e-9, z)
        f = self.focal
        return f * pc[..., 0] / zs + self.width / 2, f * pc[..., 1] / zs + self.height / 2, z

    def rect(self, pts: np.ndarray, pad: float = 1.0):
        """Screen rectangle ``(v0, v1, u0, u1)`` covering the projection of the convex hull of
        ``pts`` (N, 3), or ``None`` when it is entirely behind the camera or off screen."""
        u, v, z = self.project(pts)
        front = z > NEAR
        if not front.any():
            return None
        if not front.all():
            return 0, self.height, 0, self.width
        u0 = max(0, int(math.floor(u.min() - pad)))
        u1 = min(self.width, int(math.ceil(u.max() + pad)))
        v0 = max(0, int(math.floor(v.min() - pad)))
        v1 = min(self.height, int(math.ceil(v.max() + pad)))
        if u0 >= u1 or v0 >= v1:
            return None
        return v0, v1, u0, u1


@dataclass
class Scene:
    """A list of primitives with per-primitive attributes.

    Primitive ids: 0 is the ground plane, then primitives in insertion order.  ``attrs`` holds
    arbitrary per-primitive attribute lists (class id, albedo, material, ...) that ``finalize``
    turns into arrays indexed by ``pid + 1`` (index 0 = sky / no hit).
    """

    kinds: list[int] = field(default_factory=lambda: [KIND_GROUND])
    params: list[tuple] = field(default_factory=lambda: [()])
    attrs: dict[str, list] = field(default_factory=dict)

    def add(self, kind: int, params: tuple, **attrs) -> int:
        pid = len(self.kinds)
        self.kinds.append(kind)
        self.params.append(tuple(float(p) for p in params))
        for k, v in attrs.items():
            self.attrs.setdefault(k, {})[pid] = v
        return pid

    def box(self, lo, hi, **attrs) -> int:
        return self.add(KIND_BOX, (*lo, *hi), **attrs)

    def cylinder(self, cx, cy, r, z0, z1, **attrs) -> int:
        return self.add(KIND_CYL, (cx, cy, r, z0, z1), **attrs)

    def ellipsoid(self, centre, radii, **attrs) -> int:
        return self.add(KIND_ELL, (*centre, *radii), **attrs)

    def __len__(self) -> int:
        return len(self.kinds)

    def bounds(self, pid: int) -> tuple[np.ndarray, np.ndarray]:
        k, p = self.kinds[pid], self.params[pid]
        if k == KIND_BOX:
            return np.array(p[:3]), np.array(p[3:])
        if k == KIND_CYL:
            cx, cy, r, z0, z1 = p
            return np.array([cx - r, cy - r, z0]), np.array([cx + r, cy + r, z1])
        if k == KIND_ELL:
            c, r = np.array(p[:3]), np.array(p[3:])
            return c - r, c + r
        raise ValueError("the ground plane is unbounded")

    def corners(self, pid: int) -> np.ndarray:
        lo, hi = self.bounds(pid)
        sel = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        return np.where(sel == 0, lo, hi)

    def remove_containing(self, point, margin: float = 0.3) -> None:
        """Drop primitives whose (grown) bounding box contains ``point`` (e.g. the camera)."""
        point = np.asarray(point)
        keep = [0]
        for pid in range(1, len(self.kinds)):
            lo, hi = self.bounds(pid)
            if not (np.all(point > lo - margin) and np.all(point < hi + margin)):
                keep.append(pid)
        if len(keep) == len(self.kinds):
            return
        self.kinds = [self.kinds[p] for p in keep]
        self.params = [self.params[p] for p in keep]
        self.attrs = {name: {new: table[old] for new, old in enumerate(keep) if old in table}
                      for name, table in self.attrs.items()}

    def table(self, name: str, default, dtype=None) -> np.ndarray:
        """Attribute ``name`` as an array indexed by ``pid + 1`` (row 0 = sky)."""
        vals = self.attrs.get(name, {})
        rows = [default] + [vals.get(pid, default) for pid in range(len(self.kinds))]
        return np.asarray(rows, dtype=dtype)


def _interval(kind: int, p: tuple, ox, oy, oz, dx, dy, dz, ix, iy, iz):
    """Entry/exit ray parameters for one primitive.  Origins may be scalars or arrays,
    directions and their inverses (``ix`` ...) broadcast against them."""
    if kind == KIND_BOX:
        a = (p[0] - ox) * ix
        b = (p[3] - ox) * ix
        tn = np.minimum(a, b)
        tf = np.maximum(a, b)
        a = (p[1] - oy) * iy
        b = (p[4] - oy) * iy
        tn = np.maximum(tn, np.minimum(a, b))
        tf = np.minimum(tf, np.maximum(a, b))
        a = (p[2] - oz) * iz
        b = (p[5] - oz) * iz
        tn = np.maximum(tn, np.minimum(a, b))
        tf = np.minimum(tf, np.maximum(a, b))
        return tn, tf
    if kind == KIND_CYL:
        cx, cy, r, z0, z1 = p
        qx = ox - cx
        qy = oy - cy
        a = dx * dx + dy * dy + np.float32(1e-12)
        b = qx * dx + qy * dy
        c = qx * qx + qy * qy - r * r
        disc = b * b - a * c
        s = np.sqrt(np.maximum(disc, 0))
        tn = (-b - s) / a
        tf = np.where(disc >= 0, (-b + s) / a, -np.inf)
        za = (z0 - oz) * iz
        zb = (z1 - oz) * iz
        return np.maximum(tn, np.minimum(za, zb)), np.minimum(tf, np.maximum(za, zb))
    if kind == KIND_ELL:
        cx, cy, cz, rx, ry, rz = p
        qx = (ox - cx) / rx
        qy = (oy - cy) / ry
        qz = (oz - cz) / rz
        ex = dx / rx
        ey = dy / ry
        ez = dz / rz
        a = ex * ex + ey * ey + ez * ez
        b = qx * ex + qy * ey + qz * ez
        c = qx * qx + qy * qy + qz * qz - 1.0
        disc = b * b - a * c
        s = np.sqrt(np.maximum(disc, 0))
        tn = (-b - s) / a
        tf = np.where(disc >= 0, (-b + s) / a, -np.inf)
        return tn, tf
    raise ValueError(kind)


def cast(scene: Scene, cam: Camera, dirs: np.ndarray, max_t: float = 5000.0):
    """Primary visibility.

    ``dirs``: unit ray directions ``[H, W, 3]`` (float32) from ``cam.origin``.  Returns
    ``t`` (float32 ``[H, W]``, metres along the ray, ``inf`` for no hit) and ``pid`` (int32
    ``[H, W]``, -1 for no hit / sky).  The ground plane is hit up to ``max_t``.
    """
    H, W = dirs.shape[:2]
    ox, oy, oz = (float(c) for c in cam.origin)
    dx, dy, dz = dirs[..., 0], dirs[..., 1], dirs[..., 2]
    t = np.full((H, W), np.inf, dtype=np.float32)
    pid = np.full((H, W), -1, dtype=np.int32)
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = np.float32(-oz) / dz
    g = (dz < 0) & (tg < max_t)
    t[g] = tg[g]
    pid[g] = 0
    ix, iy, iz = _safe_inv(dx), _safe_inv(dy), _safe_inv(dz)
    for k in range(1, len(scene.kinds)):
        r = cam.rect(scene.corners(k))
        if r is None:
            continue
        sl = (slice(r[0], r[1]), slice(r[2], r[3]))
        tn, tf = _interval(scene.kinds[k], scene.params[k], ox, oy, oz, dx[sl], dy[sl], dz[sl],
                           ix[sl], iy[sl], iz[sl])
        tv = t[sl]
        hit = (tn <= tf) & (tn > EPS) & (tn < tv)
        if hit.any():
            tv[hit] = tn[hit]
            pid[sl][hit] = k
    return t, pid


def normals(scene: Scene, pts: np.ndarray, pid: np.ndarray) -> np.ndarray:
    """Outward unit normals ``[H, W, 3]`` (float32) at hit points ``pts`` of primitives
    ``pid``; zero for sky."""
    n = np.zeros(pts.shape, dtype=np.float32)
    n[pid == 0, 2] = 1.0
    kinds = np.asarray(scene.kinds)
    kind_px = np.where(pid >= 0, kinds[np.maximum(pid, 0)], -1)
    # Boxes: nearest face.
    m = kind_px == KIND_BOX
    if m.any():
        par = np.asarray([p if k == KIND_BOX else (0.0,) * 6 for k, p in
                          zip(scene.kinds, scene.params, strict=True)], dtype=np.float32)
        P = pts[m]
        bb = par[pid[m]]
        dist = np.concatenate([np.abs(P - bb[:, :3]), np.abs(P - bb[:, 3:])], axis=1)
        face = dist.argmin(axis=1)
        nn = np.zeros_like(P)
        nn[np.arange(len(P)), face % 3] = np.where(face < 3, -1.0, 1.0)
        n[m] = nn
    m = kind_px == KIND_CYL
    if m.any():
        par = np.asarray([p if k == KIND_CYL else (0.0, 0.0, 1.0, 0.0, 0.0) for k, p in
                          zip(scene.kinds, scene.params, strict=True)], dtype=np.float32)
        P = pts[m]
        cp = par[pid[m]]
        qx, qy = P[:, 0] - cp[:, 0], P[:, 1] - cp[:, 1]
        rad = np.sqrt(qx * qx + qy * qy)
        cap = (P[:, 2] > cp[:, 4] - 2e-3) & (rad < cp[:, 2] - 2e-3)
        inv = 1.0 / np.maximum(rad, 1e-6)
        nn = np.stack([qx * inv, qy * inv, np.zeros_like(qx)], axis=1)
        nn[cap] = (0.0, 0.0, 1.0)
        n[m] = nn
    m = kind_px == KIND_ELL
    if m.any():
        par = np.asarray([p if k == KIND_ELL else (0.0, 0.0, 0.0, 1.0, 1.0, 1.0) for k, p in
                          zip(scene.kinds, scene.params, strict=True)], dtype=np.float32)
        P = pts[m]
        ep = par[pid[m]]
        g = (P - ep[:, :3]) / (ep[:, 3:] ** 2)
        n[m] = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-9)
    return n


def shadows(scene: Scene, cam: Camera, pts: np.ndarray, pid: np.ndarray, cand: np.ndarray,
            sun: np.ndarray) -> np.ndarray:
    """Cast shadow rays towards a directional light.

    ``pts``: hit points ``[H, W, 3]`` (already pushed off their surface), ``cand``: bool
    ``[H, W]`` pixels to test, ``sun``: unit vector towards the light (``sun[2] > 0``).
    Returns bool ``[H, W]``, True where the light is blocked.
    """
    sx, sy, sz = (float(c) for c in sun)
    inv = [1.0 / c if abs(c) > 1e-9 else 1e9 for c in (sx, sy, sz)]
    shadowed = np.zeros(pid.shape, dtype=bool)
    for k in range(1, len(scene.kinds)):
        c = scene.corners(k)
        ground = c - (c[:, 2:3] / sz) * np.asarray(sun)[None, :]
        r = cam.rect(np.concatenate([c, ground]))
        if r is None:
            continue
        sl = (slice(r[0], r[1]), slice(r[2], r[3]))
        m = cand[sl] & ~shadowed[sl] & (pid[sl] != k)
        idx = np.nonzero(m)
        if len(idx[0]) == 0:
            continue
        P = pts[sl][idx]
        tn, tf = _interval(scene.kinds[k], scene.params[k], P[:, 0], P[:, 1], P[:, 2],
                           sx, sy, sz, inv[0], inv[1], inv[2])
        hit = tf >= np.maximum(tn, EPS)
        if hit.any():
            sv = shadowed[sl]
            sv[idx[0][hit], idx[1][hit]] = True
    return shadowed
