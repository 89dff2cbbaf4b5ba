"""synthaerial: procedurally rendered orthophoto tiles with a DSM, in the ISPRS Vaihingen layout.

Every tile is a random piece of a small town built as a 2.5-D height field over sloping terrain:

- **terrain**: absolute height 240-300 m (metres above sea level, like the release's DSMs),
  a plane sloping 0.5-5 % in a random direction plus gentle undulation (0.1-0.3 m standard
  deviation, ~30 m wavelength);
- **impervious surfaces**: a main road (6-9 m wide) through the tile, often a cross street
  (full or T-junction) and a second parallel road, sidewalks, dashed centre lines, paved
  parking lots and yards; no height above the terrain;
- **buildings**: rotated rectangles and L-shapes (8-26 m x 7-15 m), flat (with a parapet),
  gable or hip roofs (pitch 22-45 degrees), eaves 3-14 m above the lowest terrain point of the
  footprint; roof colours red/brown tiles, dark/light grey, white and, for about a third of the
  buildings (mostly flat roofs), **exactly the tile's road asphalt grey with the same texture**;
- **trees**: street rows and garden clusters, lobed crowns (radius 1.5-5 m) with a spheroid
  height profile, tops 5-18 m above the terrain, rough in the DSM; their colour is drawn from the
  **same distribution as the lawn under them** (low vegetation, no height);
- **cars** (3.8-4.9 m x 1.7-2.0 m, 1.4-1.6 m high, body + cabin) on the lanes, parked at the
  road edge and in rows on parking lots;
- **clutter**: small boxes (0.6-3 m, 0.3-2.5 m high: bins, containers, sheds' junk) on lawns,
  yards and sidewalks.

So the task needs the DSM by design: a flat grey roof and the road differ in IRRG only by the
shadow the building casts, and a tree crown and the lawn only by shading, while in the DSM the
roof stands >= 3 m above the lowest ground of its footprint and the crown's rim >= 2 m above the
ground at its trunk.

Modalities (files as the release names them, all uncompressed TIFFs written by tifffile with no
metadata, so the loader memory-maps them):

``top/top_mosaic_09cm_area{id}.tif``, uint8 ``[H, W, 3]``, bands near-infrared, red, green
    Per-object albedo in the three bands (vegetation bright in NIR, so red in IRRG) with
    procedural texture (multi-octave value noise, roof-tile stripes), Lambertian shading from
    the DSM normals for a sun at elevation 35-65 degrees and azimuth within +-70 degrees of south
    (image rows run north to south), hard cast shadows from the height field, a bluish sky
    ambient term (shadows are darker in NIR), a gamma 1/1.8 tone curve and sensor noise.
``dsm/dsm_09cm_matching_area{id}.tif``, float32 ``[H, W]``, **metres**
    Absolute surface height: terrain + objects, plus noise (standard deviation 3 cm) and crown
    roughness on trees (0.15 m).
``gts_for_participants/top_mosaic_09cm_area{id}.tif``, uint8 ``[H, W, 3]``
    Colour-coded labels (:data:`SYNTHAERIAL_COLOURS`, ISPRS' colours), every pixel labelled
    with the class of the top-most surface (a crown over a road is tree).
``gts_eroded_for_participants/top_mosaic_09cm_area{id}_noBoundary.tif``, uint8 ``[H, W, 3]``
    The same with every pixel within ``boundary_px`` pixels of another class set to black
    (ignore), as the release's eroded labels.

Scale: a tile shows ``90 m x 90 m`` by default whatever its size (``gsd = 90 m / size``, so
Vaihingen's 9 cm at the default 1000 px); pass ``gsd`` to fix the pixel size instead.
``boundary_px`` defaults to ``max(1, round(0.27 m / gsd))`` (3 px at 9 cm).

Splits: tile ids are the release's (:data:`TILE_IDS`, numeric order: 1 2 3 4 5 6 7 8 10 11 ...),
each in the Vaihingen ``train`` or ``test`` list that holds it (:func:`tile_split`).
``n_tiles`` writes the first ``n`` ids (4 -> train 1 3, test 2 4; 12 -> train 1 3 5 7 11 13,
test 2 4 6 8 10 12; the default 33 -> all 16 train and 17 test ids), and the tiles of each split
are listed in ``{out}/splits/{split}.txt``, which the ``vaihingen`` loader reads in place of
its fixed lists when the folder exists: every ``n_tiles`` reads completely with the loader's
defaults (use ``val_split: test``). With ``n_tiles=1`` there is no test tile, so no
``test.txt`` (a stale one from an earlier render into the same folder is removed).

Layout: ``{out}/top``, ``{out}/dsm``, ``{out}/gts_for_participants``,
``{out}/gts_eroded_for_participants`` as above, ``{out}/splits/{train,test}.txt`` (tile ids,
one per line), plus ``{out}/synthaerial.json`` (classes, colours, options, gsd, tiles per
split, per-tile sun, slope, object counts and class fractions).

Determinism: every tile uses its own generator seeded from ``(seed, tile id)`` through
:class:`numpy.random.SeedSequence`, so the bytes depend neither on ``workers`` nor on
``n_tiles`` (tile 5 is the same tile in a 6- or a 33-tile render of the same seed and size).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from fusionseg.data.datasets.isprs import (
    ISPRS_CLASSES,
    ISPRS_COLOURS,
    SPLIT_LIST_DIR,
    VAIHINGEN_TEST_TILES,
    VAIHINGEN_TRAIN_TILES,
)
from fusionseg.data.synthetic._jobs import run_jobs
from fusionseg.errors import ConfigError

__all__ = [
    "GENERATOR_VERSION",
    "SYNTHAERIAL_CLASSES",
    "SYNTHAERIAL_COLOURS",
    "TILE_IDS",
    "render_aerial",
    "render_tile",
    "tile_split",
    "write_split_lists",
]

GENERATOR_VERSION = "1.0.0"

SYNTHAERIAL_CLASSES: tuple[str, ...] = tuple(ISPRS_CLASSES)
SYNTHAERIAL_COLOURS: tuple[tuple[int, int, int], ...] = tuple(ISPRS_COLOURS)
_PALETTE = np.array(list(SYNTHAERIAL_COLOURS) + [(0, 0, 0)], dtype=np.uint8)  # 6 -> black
IMPERVIOUS, BUILDING, LOW_VEG, TREE, CAR, CLUTTER = range(6)

#: every tile id of the Vaihingen train and test lists, in numeric order
TILE_IDS: tuple[str, ...] = tuple(sorted(VAIHINGEN_TRAIN_TILES + VAIHINGEN_TEST_TILES, key=int))
DEFAULT_TILES = len(TILE_IDS)  # 33
DEFAULT_SIZE = 1000
EXTENT_M = 90.0  # ground extent of a tile (metres) when gsd is not given
BOUNDARY_M = 0.27  # noBoundary erosion radius (metres): 3 px at 9 cm

FILES = {
    "irrg": ("top", "top_mosaic_09cm_area{id}.tif"),
    "dsm": ("dsm", "dsm_09cm_matching_area{id}.tif"),
    "label": ("gts_for_participants", "top_mosaic_09cm_area{id}.tif"),
    "label_noBoundary": ("gts_eroded_for_participants", "top_mosaic_09cm_area{id}_noBoundary.tif"),
}

# Texture kinds: amplitudes of (smooth 3-octave, white) noise in the albedo factor.
(K_VEG, K_ASPHALT, K_CONCRETE, K_TILES, K_FLATROOF, K_CAR, K_CLUTTER, K_PAINT) = range(8)
_TEX = np.array([
    [0.090, 0.05],  # vegetation (lawn and crowns alike)
    [0.050, 0.06],  # asphalt (roads and road-grey roofs)
    [0.042, 0.04],  # concrete / paving
    [0.050, 0.04],  # roof tiles (plus stripes)
    [0.050, 0.03],  # flat roof (gravel, membrane)
    [0.000, 0.02],  # car paint
    [0.030, 0.03],  # clutter
    [0.020, 0.04],  # road paint
], dtype=np.float32)

# Albedo in (NIR, R, G).
_ASPHALT = np.array([0.30, 0.29, 0.29], np.float32)
_CONCRETE = np.array([0.44, 0.43, 0.42], np.float32)
_PAINT = np.array([0.75, 0.74, 0.74], np.float32)
_VEG_LUSH = np.array([0.62, 0.09, 0.15], np.float32)
_VEG_DRY = np.array([0.42, 0.21, 0.25], np.float32)
_ROOFS = {  # name -> (albedo, probability)
    "red_tiles": ([0.46, 0.48, 0.20], 0.22),
    "brown_tiles": ([0.30, 0.27, 0.16], 0.14),
    "dark_grey": ([0.16, 0.15, 0.15], 0.12),
    "light_grey": ([0.55, 0.54, 0.53], 0.10),
    "white": ([0.78, 0.77, 0.76], 0.07),
    "road_grey": (None, 0.35),  # the tile's asphalt albedo, exactly
}
_CAR_PAINT = np.array([
    [0.75, 0.74, 0.74], [0.05, 0.05, 0.05], [0.32, 0.31, 0.31], [0.55, 0.55, 0.56],
    [0.35, 0.62, 0.08], [0.12, 0.06, 0.12], [0.20, 0.10, 0.25], [0.50, 0.62, 0.50],
], dtype=np.float32)
_CLUTTER_COL = np.array([
    [0.20, 0.08, 0.20], [0.70, 0.70, 0.69], [0.35, 0.30, 0.18], [0.45, 0.60, 0.35],
    [0.25, 0.25, 0.30], [0.55, 0.20, 0.40], [0.30, 0.55, 0.15],
], dtype=np.float32)

GAMMA = 1 / 1.8


def tile_split(tile: str) -> str:
    """``"train"`` or ``"test"``: the Vaihingen split list that holds tile id ``tile``.

    Raises:
        ValueError: an id in neither list.
    """
    if tile in VAIHINGEN_TRAIN_TILES:
        return "train"
    if tile in VAIHINGEN_TEST_TILES:
        return "test"
    raise ValueError(f"tile id '{tile}' is in neither Vaihingen split")


def _seq(*key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(k) for k in key])


def _u(rng: np.random.Generator, a: float, b: float) -> float:
    return float(rng.uniform(a, b))


# --------------------------------------------------------------------------------------------
# Noise


@lru_cache(maxsize=32)
def _interp_weights(n_out: int, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index ``int64 [n_out]`` and smoothstep weight ``float32 [n_out]`` of the next
    lattice point, for pixel centres over ``n_cells`` cells."""
    t = (np.arange(n_out) + 0.5) * (n_cells / n_out)
    i = np.minimum(np.floor(t).astype(np.int64), n_cells - 1)
    f = t - i
    f = (f * f * (3 - 2 * f)).astype(np.float32)
    i.setflags(write=False)
    f.setflags(write=False)
    return i, f


def _lerp_lattice(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Smoothstep interpolation of a lattice ``[cy + 1, cx + 1]`` to pixel centres
    ``float32 [h, w]`` (separable, by gathers: no BLAS, whose worker threads would compete
    with the render processes)."""
    cy, cx = grid.shape[0] - 1, grid.shape[1] - 1
    ix, fx = _interp_weights(w, cx)
    gx = grid[:, ix] * (1 - fx) + grid[:, ix + 1] * fx  # [cy + 1, w]
    iy, fy = _interp_weights(h, cy)
    dg = gx[1:] - gx[:-1]
    out = dg[iy]
    out *= fy[:, None]
    out += gx[iy]
    return out


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: float | list[tuple[float, float]]
                 ) -> np.ndarray:
    """Smooth noise ``float32 [h, w]`` with ``cells`` lattice cells across (about unit
    variance), or a sum of octaves ``[(cells, amplitude), ...]``: the coarser lattices are
    resampled onto the finest one, so the image-sized interpolation runs once."""
    octaves = [(cells, 1.0)] if not isinstance(cells, list) else cells
    octaves = sorted(((max(1, int(round(c))), a) for c, a in octaves), reverse=True)
    c = octaves[0][0]
    cy = max(1, int(round(c * h / max(w, 1))))
    grid = rng.standard_normal((cy + 1, c + 1), dtype=np.float32) * np.float32(1.6 * octaves[0][1])
    for cc, a in octaves[1:]:
        ccy = max(1, int(round(cc * h / max(w, 1))))
        coarse = rng.standard_normal((ccy + 1, cc + 1), dtype=np.float32) * np.float32(1.6 * a)
        # lattice points of the fine grid in the coarse grid's coordinates
        ux, uy = np.linspace(0, cc, c + 1), np.linspace(0, ccy, cy + 1)
        jx, jy = np.minimum(ux.astype(np.int64), cc - 1), np.minimum(uy.astype(np.int64), ccy - 1)
        fx, fy = (ux - jx).astype(np.float32), (uy - jy).astype(np.float32)
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        gx = coarse[:, jx] * (1 - fx) + coarse[:, jx + 1] * fx
        grid += gx[jy] * (1 - fy)[:, None] + gx[jy + 1] * fy[:, None]
    return _lerp_lattice(grid, h, w)


def _white(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance white noise ``float32`` (uniform over 256 levels, from random
    bytes: much cheaper than normal draws)."""
    n = int(np.prod(shape))
    x = np.frombuffer(rng.bytes(n), np.uint8).astype(np.float32).reshape(shape)
    x -= np.float32(127.5)
    x *= np.float32(1 / math.sqrt((256 * 256 - 1) / 12))
    return x


# --------------------------------------------------------------------------------------------
# Scene state and painting


@dataclass
class _Scene:
    size: int
    gsd: float
    terrain: np.ndarray  # float32 [S, S], metres
    top: np.ndarray  # float32 [S, S], absolute surface height (metres)
    cls: np.ndarray  # uint8 [S, S]
    alb: np.ndarray  # float32 [3, S, S] (planar NIR, R, G)
    kind: np.ndarray  # uint8 [S, S]
    occ: np.ndarray  # bool [S, S]: taken for buildings (roads, lots, buildings)
    rough: np.ndarray  # bool [S, S]: crown pixels (DSM roughness)
    counts: dict = field(default_factory=dict)

    def window(self, cx: float, cy: float, r: float):
        """Clipped pixel box around ``(cx, cy)`` (metres) of radius ``r`` metres and the local
        coordinates of its pixel centres (``xs [1, w]``, ``ys [h, 1]``, metres), or None."""
        g, S = self.gsd, self.size
        x0, x1 = max(0, int(math.floor((cx - r) / g))), min(S, int(math.ceil((cx + r) / g)) + 1)
        y0, y1 = max(0, int(math.floor((cy - r) / g))), min(S, int(math.ceil((cy + r) / g)) + 1)
        if x0 >= x1 or y0 >= y1:
            return None
        xs = ((np.arange(x0, x1, dtype=np.float32) + 0.5) * g - cx)[None, :]
        ys = ((np.arange(y0, y1, dtype=np.float32) + 0.5) * g - cy)[:, None]
        return (slice(y0, y1), slice(x0, x1)), xs, ys

    def paint(self, sl, mask, height, cls, alb, kind, ztest=True) -> np.ndarray:
        """Write an object where ``mask`` (and, with ``ztest``, where it is above the current
        surface); ``height`` absolute metres (array or scalar), ``alb`` ``(3,)`` or ``[h, w, 3]``.
        Returns the written mask."""
        top = self.top[sl]
        height = np.broadcast_to(np.asarray(height, np.float32), mask.shape)
        win = mask & (height > top + np.float32(1e-3)) if ztest else mask
        if not win.any():
            return win
        top[win] = height[win]
        self.cls[sl][win] = cls
        a = np.asarray(alb, np.float32)
        planes = self.alb[:, sl[0], sl[1]]
        planes[:, win] = a[win].T if a.ndim == 3 else a[:, None]
        self.kind[sl][win] = kind
        return win

    def paint_ground(self, sl, mask, cls, alb, kind) -> np.ndarray:
        """Ground-level surface (no height): only where nothing stands yet. Returns the
        written mask."""
        m = mask & (self.top[sl] <= self.terrain[sl] + np.float32(1e-3))
        self.cls[sl][m] = cls
        planes = self.alb[:, sl[0], sl[1]]
        planes[:, m] = np.asarray(alb, np.float32)[:, None]
        self.kind[sl][m] = kind
        return m


def _rot(xs, ys, theta):
    c, s = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    return xs * c + ys * s, -xs * s + ys * c


def _jitter(rng, col, a=0.06):
    return np.clip(np.asarray(col, np.float32) * (1 + rng.uniform(-a, a, 3)).astype(np.float32), 0, 1)


# --------------------------------------------------------------------------------------------
# Scene generation


def _roads(rng, sc: _Scene, X, Y, asphalt) -> list[dict]:
    ext = sc.size * sc.gsd
    roads = []
    th0 = _u(rng, 0, math.pi)
    p0 = (ext * _u(rng, 0.25, 0.75), ext * _u(rng, 0.25, 0.75))
    roads.append(dict(p=p0, th=th0, w=_u(rng, 6.0, 9.0), tmin=-1e9, main=True))
    if rng.random() < 0.65:
        roads.append(dict(p=p0, th=th0 + math.pi / 2 + _u(rng, -0.25, 0.25), w=_u(rng, 5.0, 7.0),
                          tmin=-1e9 if rng.random() < 0.5 else 0.0, main=False))
        if roads[-1]["tmin"] == 0.0 and rng.random() < 0.5:
            roads[-1]["th"] += math.pi
    if rng.random() < 0.35:
        off = _u(rng, 38.0, 60.0) * (1 if rng.random() < 0.5 else -1)
        n = (-math.sin(th0), math.cos(th0))
        roads.append(dict(p=(p0[0] + off * n[0], p0[1] + off * n[1]), th=th0 + _u(rng, -0.1, 0.1),
                          w=_u(rng, 5.0, 7.0), tmin=-1e9, main=False))
    sidewalk_col = _jitter(rng, _CONCRETE, 0.08)
    paint_col = _jitter(rng, _PAINT, 0.05)
    # ground code: 0 lawn, 1 sidewalk, 2 asphalt, 3 road paint (painted at the end, in one go)
    code = np.zeros((sc.size, sc.size), np.uint8)
    for r in roads:
        r["sw"] = _u(rng, 1.5, 2.6) if rng.random() < 0.75 else 0.0
        d = (math.cos(r["th"]), math.sin(r["th"]))
        r["d"] = d
        r["n"] = (-d[1], d[0])
        c_n = r["p"][0] * r["n"][0] + r["p"][1] * r["n"][1]
        across = X * np.float32(r["n"][0]) + (Y * np.float32(r["n"][1]) - np.float32(c_n))
        np.abs(across, out=across)
        r["across"] = across
        ok = None
        if r["tmin"] > -1e8:
            c_d = r["p"][0] * d[0] + r["p"][1] * d[1] + r["tmin"]
            ok = X * np.float32(d[0]) + (Y * np.float32(d[1]) - np.float32(c_d)) >= 0
        for level, half in ((1, r["w"] / 2 + r["sw"]), (2, r["w"] / 2)):
            if level == 1 and r["sw"] <= 0:
                continue
            m = across < np.float32(half)
            if ok is not None:
                m &= ok
            np.maximum(code, m.view(np.uint8) * np.uint8(level), out=code)
    if sc.gsd <= 0.2:  # dashed centre lines (thin: only where the pixels resolve them)
        flat = code.reshape(-1)
        lines = []
        for r in roads:
            dash, gap = _u(rng, 2.5, 3.5), _u(rng, 4.0, 7.0)
            lw = max(0.15, 0.9 * sc.gsd)
            idx = np.flatnonzero(r["across"] < np.float32(lw / 2))
            idx = idx[flat[idx] == 2]
            iy, ix = np.divmod(idx, sc.size)
            px, py = (ix + 0.5) * sc.gsd - r["p"][0], (iy + 0.5) * sc.gsd - r["p"][1]
            keep = np.mod(px * r["d"][0] + py * r["d"][1], dash + gap) < dash
            for o in roads:  # not across junctions
                if o is not r:
                    keep &= o["across"].reshape(-1)[idx] > np.float32(o["w"] / 2 + 0.5)
            lines.append(idx[keep])
        for idx in lines:
            flat[idx] = 3
    for r in roads:  # free the big arrays
        r.pop("across")
    sel = code > 0
    sc.occ |= sel
    sc.cls[...] = np.array([LOW_VEG, IMPERVIOUS, IMPERVIOUS, IMPERVIOUS], np.uint8)[code]
    sc.kind[...] = np.array([K_VEG, K_CONCRETE, K_ASPHALT, K_PAINT], np.uint8)[code]
    cols = np.stack([np.zeros(3, np.float32), sidewalk_col, asphalt, paint_col])
    for c in range(3):
        np.copyto(sc.alb[c], cols[:, c][code], where=sel)
    return roads


def _rect_mask(xs, ys, theta, a, b):
    u, v = _rot(xs, ys, theta)
    return (np.abs(u) < a) & (np.abs(v) < b), u, v


def _parking_lots(rng, sc: _Scene, roads, cars_out: list) -> None:
    ext = sc.size * sc.gsd
    for _ in range(int(rng.integers(0, 3))):
        r = roads[int(rng.integers(len(roads)))]
        a, b = _u(rng, 7.0, 16.0), _u(rng, 5.5, 9.0)
        side = 1 if rng.random() < 0.5 else -1
        t = _u(rng, -ext, ext)
        dist = r["w"] / 2 + r["sw"] + b + 0.3
        cx = r["p"][0] + t * r["d"][0] + side * dist * r["n"][0]
        cy = r["p"][1] + t * r["d"][1] + side * dist * r["n"][1]
        if not (-a < cx < ext + a and -a < cy < ext + a):
            continue
        win = sc.window(cx, cy, math.hypot(a, b) + 1.0)
        if win is None:
            continue
        sl, xs, ys = win
        m, u, v = _rect_mask(xs, ys, r["th"], a, b)
        if (m & sc.occ[sl]).mean() > 0.02:
            continue
        sc.paint_ground(sl, m, IMPERVIOUS, _jitter(rng, _ASPHALT if rng.random() < 0.5 else _CONCRETE),
                        K_CONCRETE)
        sc.occ[sl] |= m
        sc.counts["parking_lots"] = sc.counts.get("parking_lots", 0) + 1
        # rows of cars parked across the lot, at its far side (and its near side if wide)
        rows = [side * (b - 2.6)] + ([-side * (b - 2.6)] if b > 6.5 else [])
        for cv in rows:
            for k in range(int((2 * a - 0.4) // 2.6)):
                if rng.random() < 0.55:
                    cu = -a + 1.5 + k * 2.6
                    cars_out.append((cx + cu * r["d"][0] + cv * r["n"][0],
                                     cy + cu * r["d"][1] + cv * r["n"][1],
                                     r["th"] + math.pi / 2 + _u(rng, -0.05, 0.05)))


def _roof_colour(rng, asphalt) -> tuple[str, np.ndarray]:
    names = list(_ROOFS)
    p = np.array([_ROOFS[n][1] for n in names])
    name = names[int(rng.choice(len(names), p=p / p.sum()))]
    if name == "road_grey":
        return name, asphalt.copy()
    return name, _jitter(rng, _ROOFS[name][0], 0.08)


def _hits(sc: _Scene, cx, cy, theta, parts, margin, step=1.0) -> bool:
    """Whether points sampled every ``step`` metres over the footprint parts grown by
    ``margin`` fall on taken pixels (``sc.occ``)."""
    c, s = math.cos(theta), math.sin(theta)
    for pu, pv, pa, pb in parts:
        us = np.linspace(pu - pa - margin, pu + pa + margin, int((pa + margin) * 2 / step) + 2)
        vs = np.linspace(pv - pb - margin, pv + pb + margin, int((pb + margin) * 2 / step) + 2)
        uu, vv = us[None, :], vs[:, None]
        ix = ((cx + uu * c - vv * s) / sc.gsd).astype(np.int64)
        iy = ((cy + uu * s + vv * c) / sc.gsd).astype(np.int64)
        ok = (ix >= 0) & (ix < sc.size) & (iy >= 0) & (iy < sc.size)
        if sc.occ[iy[ok], ix[ok]].any():
            return True
    return False


def _buildings(rng, sc: _Scene, roads, asphalt) -> None:
    ext = sc.size * sc.gsd
    target = int(round(ext * ext / 700.0 * _u(rng, 0.5, 1.0)))
    built = grey = 0
    for _ in range(target * 6):
        if built >= target:
            break
        r = roads[int(rng.integers(len(roads)))]
        theta = r["th"] + (_u(rng, -0.08, 0.08) if rng.random() < 0.8 else _u(rng, -0.6, 0.6))
        a, b = _u(rng, 4.0, 13.0), _u(rng, 3.5, 7.5)
        if b > a:
            a, b = b, a
        cx, cy = _u(rng, -0.1 * ext, 1.1 * ext), _u(rng, -0.1 * ext, 1.1 * ext)
        ix, iy = int(cx / sc.gsd), int(cy / sc.gsd)
        if 0 <= ix < sc.size and 0 <= iy < sc.size and sc.occ[iy, ix]:
            continue  # quick reject: the centre is taken
        parts = [(0.0, 0.0, a, b)]
        if rng.random() < 0.3:  # L-shape: a wing at one end
            wa, wb = _u(rng, 2.5, 5.0), _u(rng, 3.0, 6.0)
            su, sv = (1 if rng.random() < 0.5 else -1), (1 if rng.random() < 0.5 else -1)
            parts.append((su * (a - wa), sv * (b + wb - 0.5), wa, wb))
        margin = _u(rng, 1.5, 3.0)
        if _hits(sc, cx, cy, theta, parts, margin):
            continue  # quick reject: sampled points of the grown footprint are taken
        rad = max(math.hypot(abs(pu) + pa, abs(pv) + pb) for pu, pv, pa, pb in parts) + 2.5
        win = sc.window(cx, cy, rad)
        if win is None:
            continue
        sl, xs, ys = win
        u, v = _rot(xs, ys, theta)
        foot = np.zeros(u.shape, bool)
        grown = np.zeros(u.shape, bool)
        for pu, pv, pa, pb in parts:
            du, dv = np.abs(u - np.float32(pu)), np.abs(v - np.float32(pv))
            foot |= (du < pa) & (dv < pb)
            grown |= (du < pa + margin) & (dv < pb + margin)
        if not foot.any() or (grown & sc.occ[sl]).any():
            continue
        base = float(sc.terrain[sl][foot].min())
        eave = _u(rng, 3.0, 9.0) if rng.random() < 0.75 else _u(rng, 9.0, 14.0)
        name, col = _roof_colour(rng, asphalt)
        if name == "road_grey":
            roof = "flat" if rng.random() < 0.75 else ("gable" if rng.random() < 0.6 else "hip")
        elif name in ("red_tiles", "brown_tiles"):
            roof = "gable" if rng.random() < 0.65 else "hip"
        else:
            roof = "flat" if rng.random() < 0.6 else "gable"
        pitch = math.tan(math.radians(_u(rng, 22.0, 45.0)))
        h = np.full(u.shape, -np.inf, np.float32)
        for pu, pv, pa, pb in parts:
            du, dv = np.abs(u - np.float32(pu)), np.abs(v - np.float32(pv))
            inside = (du < pa) & (dv < pb)
            if roof == "flat":
                hp = np.full(u.shape, eave, np.float32)
                par = (pa - du < 0.35) | (pb - dv < 0.35)
                hp = np.where(par, hp + np.float32(0.4), hp)
            elif roof == "gable":  # ridge along the part's long axis
                if pa >= pb:
                    hp = np.float32(eave) + (np.float32(pb) - dv) * np.float32(pitch)
                else:
                    hp = np.float32(eave) + (np.float32(pa) - du) * np.float32(pitch)
            else:  # hip
                hp = np.float32(eave) + np.minimum(np.float32(pb) - dv, np.float32(pa) - du) * np.float32(pitch)
            h = np.where(inside, np.maximum(h, hp), h)
        height = np.where(foot, np.float32(base) + h, np.float32(0))
        alb = np.broadcast_to(col, u.shape + (3,)).copy()
        kind = K_ASPHALT if name == "road_grey" else (K_TILES if roof != "flat" else K_FLATROOF)
        if roof != "flat" and name != "road_grey":
            period = 0.33
            if period / sc.gsd >= 3:  # roof-tile courses, where the pixels resolve them
                across = dv if a >= b else du
                alb *= (1 + 0.07 * np.cos(np.float32(2 * math.pi / period) * across))[..., None]
        if rng.random() < 0.5 and sc.gsd <= 0.25:  # a few skylights / chimneys on big roofs
            for _k in range(int(rng.integers(1, 4))):
                qu, qv = _u(rng, -a + 1.5, a - 1.5), _u(rng, -b + 1.0, b - 1.0)
                m = (np.abs(u - np.float32(qu)) < 0.5) & (np.abs(v - np.float32(qv)) < 0.4) & foot
                alb[m] = np.float32(0.5) * col
                height = np.where(m, height + np.float32(0.5), height)
        # a paved yard around some houses (ground, impervious)
        if rng.random() < 0.3:
            ya = grown | ((np.abs(u) < a + margin + _u(rng, 1.0, 4.0)) & (np.abs(v) < b + margin))
            sc.paint_ground(sl, ya & ~sc.occ[sl], IMPERVIOUS, _jitter(rng, _CONCRETE), K_CONCRETE)
        sc.paint(sl, foot, height, BUILDING, alb, kind, ztest=False)
        sc.occ[sl] |= grown
        built += 1
        grey += name == "road_grey"
    sc.counts["buildings"] = built
    sc.counts["road_grey_roofs"] = grey


def _car(rng, sc: _Scene, cx, cy, theta, car_occ) -> bool:
    a, b = _u(rng, 1.9, 2.45), _u(rng, 0.85, 1.0)
    win = sc.window(cx, cy, math.hypot(a, b) + 0.6)
    if win is None:
        return False
    sl, xs, ys = win
    u, v = _rot(xs, ys, theta)
    m = (np.abs(u) < a) & (np.abs(v) < b)
    if not m.any() or (car_occ[sl] & ((np.abs(u) < a + 0.5) & (np.abs(v) < b + 0.4))).any():
        return False
    if (sc.cls[sl][m] != IMPERVIOUS).mean() > 0.05:
        return False
    body, hmax = _u(rng, 0.75, 0.9), _u(rng, 1.4, 1.6)
    c0, c1 = -0.45 * a + _u(rng, -0.1, 0.1), 0.35 * a
    cab = (u > c0) & (u < c1) & (np.abs(v) < b - 0.12)
    ground = sc.terrain[sl]
    height = ground + np.where(cab, np.float32(hmax), np.float32(body))
    col = _CAR_PAINT[int(rng.integers(len(_CAR_PAINT)))] * np.float32(_u(rng, 0.92, 1.08))
    alb = np.broadcast_to(np.clip(col, 0, 1), u.shape + (3,)).copy()
    glass = cab & ((u < c0 + 0.45) | (u > c1 - 0.35))
    alb[glass] = np.float32(0.06)
    sc.paint(sl, m, height, CAR, alb, K_CAR)
    car_occ[sl] |= m
    return True


def _cars(rng, sc: _Scene, roads, parked: list) -> None:
    ext = sc.size * sc.gsd
    car_occ = np.zeros_like(sc.occ)
    n = 0
    for r in roads:
        for _ in range(int(rng.poisson(ext / 14.0))):
            t = _u(rng, -ext, ext)
            if rng.random() < 0.55:  # in a lane
                off = (r["w"] / 4) * (1 if rng.random() < 0.5 else -1)
            else:  # parked at the kerb
                off = (r["w"] / 2 - 1.15) * (1 if rng.random() < 0.5 else -1)
            cx = r["p"][0] + t * r["d"][0] + off * r["n"][0]
            cy = r["p"][1] + t * r["d"][1] + off * r["n"][1]
            th = r["th"] + (math.pi if off < 0 else 0.0) + _u(rng, -0.04, 0.04)
            n += _car(rng, sc, cx, cy, th, car_occ)
    for cx, cy, th in parked:
        n += _car(rng, sc, cx, cy, th, car_occ)
    sc.counts["cars"] = n


def _clutter(rng, sc: _Scene) -> None:
    ext = sc.size * sc.gsd
    n = 0
    for _ in range(int(rng.integers(4, 14) * (ext / 90.0) ** 2)):
        a, b = _u(rng, 0.3, 1.5), _u(rng, 0.3, 1.0)
        cx, cy = _u(rng, 0, ext), _u(rng, 0, ext)
        win = sc.window(cx, cy, math.hypot(a, b) + 0.2)
        if win is None:
            continue
        sl, xs, ys = win
        m, _, _ = _rect_mask(xs, ys, _u(rng, 0, math.pi), a, b)
        if not m.any() or (sc.cls[sl][m] == BUILDING).any() or (sc.cls[sl][m] == CAR).any():
            continue
        # not on the carriageway: on lawns, yards, sidewalks
        if (sc.kind[sl][m] == K_ASPHALT).mean() > 0.2:
            continue
        h = sc.terrain[sl] + np.float32(_u(rng, 0.3, 2.5))
        col = _jitter(rng, _CLUTTER_COL[int(rng.integers(len(_CLUTTER_COL)))], 0.15)
        sc.paint(sl, m, h, CLUTTER, col, K_CLUTTER)
        n += 1
    sc.counts["clutter"] = n


def _trees(rng, sc: _Scene, roads, veg_t) -> None:
    ext = sc.size * sc.gsd
    spots: list[tuple[float, float]] = []
    for r in roads:  # street trees
        if rng.random() < 0.5:
            sides = [1, -1] if rng.random() < 0.4 else [1 if rng.random() < 0.5 else -1]
            step = _u(rng, 7.0, 13.0)
            for s in sides:
                off = s * (r["w"] / 2 + r["sw"] + _u(rng, 0.8, 2.0))
                t = -ext * 1.5 + _u(rng, 0, step)
                while t < ext * 1.5:
                    spots.append((r["p"][0] + t * r["d"][0] + off * r["n"][0] + _u(rng, -0.3, 0.3),
                                  r["p"][1] + t * r["d"][1] + off * r["n"][1] + _u(rng, -0.3, 0.3)))
                    t += step
    for _ in range(int(rng.integers(2, 7) * (ext / 90.0) ** 2)):  # garden clusters
        cx, cy = _u(rng, 0, ext), _u(rng, 0, ext)
        sd = _u(rng, 3.0, 8.0)
        for _k in range(int(rng.integers(1, 9))):
            spots.append((cx + rng.normal(0, sd), cy + rng.normal(0, sd)))
    n = 0
    S, g = sc.size, sc.gsd
    for cx, cy in spots:
        if not (-5 < cx < ext + 5 and -5 < cy < ext + 5):
            continue
        # trunks stand on the ground, not on roofs or carriageways
        ix, iy = min(max(int(cx / g), 0), S - 1), min(max(int(cy / g), 0), S - 1)
        if sc.cls[iy, ix] in (BUILDING, CAR) or sc.kind[iy, ix] == K_ASPHALT:
            continue
        R = _u(rng, 1.5, 5.0)
        total = min(18.0, max(5.0, R * _u(rng, 1.6, 3.2) + _u(rng, 1.0, 3.0)))
        dz = min(R * _u(rng, 0.7, 1.1), total - 2.0)
        win = sc.window(cx, cy, R * 1.3)
        if win is None:
            continue
        sl, xs, ys = win
        d = np.sqrt(xs * xs + ys * ys) + np.float32(1e-6)
        c1, s1 = xs / d, ys / d  # cos, sin of the angle around the trunk
        c2, s2 = c1 * c1 - s1 * s1, 2 * c1 * s1
        c3, s3 = c2 * c1 - s2 * s1, s2 * c1 + c2 * s1
        c5, s5 = c3 * c2 - s3 * s2, s3 * c2 + c3 * s2
        lobes = np.float32(1)
        for ck, sk in ((c3, s3), (c2 * c2 - s2 * s2, 2 * c2 * s2), (c5, s5)):
            amp, ph = _u(rng, 0.0, 0.09), _u(rng, 0, 2 * math.pi)
            lobes = lobes + (ck * np.float32(amp * math.cos(ph)) - sk * np.float32(amp * math.sin(ph)))
        dn = d / (np.float32(R) * lobes)
        m = dn < 1
        if not m.any():
            continue
        zc = float(sc.terrain[min(max(iy, 0), S - 1), ix]) + total - dz
        height = np.float32(zc) + np.float32(dz) * np.sqrt(np.maximum(0, 1 - dn * dn))
        t = float(np.clip(veg_t[iy, ix] + rng.normal(0, 0.06), 0, 1))
        col = _VEG_LUSH + (_VEG_DRY - _VEG_LUSH) * np.float32(t)
        written = sc.paint(sl, m, height, TREE, _jitter(rng, col, 0.04), K_VEG)
        sc.rough[sl] |= written
        n += 1
    sc.counts["trees"] = n


# --------------------------------------------------------------------------------------------
# Shading


def _cast_shadows(h: np.ndarray, gsd: float, sun_xy: tuple[float, float], tan_el: float,
                  eps: float) -> np.ndarray:
    """Lit mask ``bool [H, W]`` of a height field ``h`` (metres) for a sun in horizontal
    direction ``sun_xy`` (unit, image x = column, y = row, pointing to the sun) at elevation
    ``atan(tan_el)``.

    The field is sheared so that every row is one sun line, then a running maximum of
    ``h + k x`` along the rows finds the occluders in one pass (O(H W))."""
    sx, sy = sun_xy
    # B: the sun's major axis first; canonical: the sun towards decreasing B row index
    major_x = abs(sx) >= abs(sy)
    B = h.T if major_x else h
    major, minor = (sx, sy) if major_x else (sy, sx)
    flipped = major > 0
    if flipped:
        B = B[::-1]
    B = np.ascontiguousarray(B)
    n, m = B.shape
    s = minor / abs(major)  # B columns moved per row step towards the sun
    off = np.round(s * np.arange(n)).astype(np.int64)
    off -= off.min()
    width = m + int(off.max())
    k = np.float32(gsd * math.sqrt(1 + s * s) * tan_el)
    base = np.float32(B.min())
    G = np.full((n, width), -np.inf, np.float32)
    for i in range(n):  # shear: every column of G is one sun line
        G[i, off[i]:off[i] + m] = B[i] + (np.float32(i) * k - base)
    cm = np.maximum.accumulate(G, axis=0)
    lit = np.ones((n, m), bool)
    e = np.float32(eps)
    for i in range(1, n):
        o = off[i]
        np.less_equal(cm[i - 1, o:o + m], G[i, o:o + m] + e, out=lit[i])
    if flipped:
        lit = lit[::-1]
    return np.ascontiguousarray(lit.T if major_x else lit)


@lru_cache(maxsize=4)
def _gamma_lut(n: int = 4096) -> np.ndarray:
    lut = np.round(255 * np.linspace(0, 1, n) ** GAMMA).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def _erode_boundaries(cls: np.ndarray, r: int) -> np.ndarray:
    """``bool [H, W]``: pixels within ``r`` pixels (Euclidean) of a pixel of another class."""
    H, W = cls.shape
    out = np.zeros((H, W), bool)
    for dy in range(0, r + 1):
        for dx in range(-r, r + 1):
            if (dy == 0 and dx <= 0) or dx * dx + dy * dy > r * r:
                continue
            # pairs (p, p + (dy, dx)) with different classes mark both pixels
            ya, yb = slice(0, H - dy), slice(dy, H)
            xa, xb = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
            d = cls[ya, xa] != cls[yb, xb]
            out[ya, xa] |= d
            out[yb, xb] |= d
    return out


# --------------------------------------------------------------------------------------------
# One tile


def render_tile(rng: np.random.Generator, size: int, gsd: float,
                boundary_px: int | None = None) -> dict:
    """Render one tile.

    Args:
        rng: the tile's generator (all randomness comes from it).
        size: tile height and width in pixels.
        gsd: ground sampling distance in metres per pixel.
        boundary_px: noBoundary erosion radius in pixels (default ``max(1, round(0.27 / gsd))``).

    Returns:
        ``{"irrg": uint8 [S, S, 3] (NIR, R, G), "dsm": float32 [S, S] (absolute metres),
        "label": uint8 [S, S] class ids 0..5, "label_colour": uint8 [S, S, 3],
        "label_noBoundary": uint8 [S, S, 3] (black = ignore), "info": dict}`` where ``info``
        holds the sun (azimuth from north clockwise and elevation, degrees), terrain slope
        (percent), object counts and class fractions.
    """
    S, g = int(size), float(gsd)
    ext = S * g
    X = ((np.arange(S, dtype=np.float32) + 0.5) * np.float32(g))[None, :]
    Y = ((np.arange(S, dtype=np.float32) + 0.5) * np.float32(g))[:, None]

    # terrain: plane + gentle undulation, absolute metres
    z0 = _u(rng, 240.0, 300.0)
    slope = _u(rng, 0.005, 0.05)
    sdir = _u(rng, 0, 2 * math.pi)
    und = _value_noise(rng, S, S, max(1.0, ext / 30.0)) * np.float32(_u(rng, 0.1, 0.25))
    terrain = (np.float32(z0) + X * np.float32(slope * math.cos(sdir))
               + Y * np.float32(slope * math.sin(sdir)) + und).astype(np.float32)

    sc = _Scene(size=S, gsd=g, terrain=terrain, top=terrain.copy(),
                cls=np.full((S, S), LOW_VEG, np.uint8), alb=np.empty((3, S, S), np.float32),
                kind=np.full((S, S), K_VEG, np.uint8), occ=np.zeros((S, S), bool),
                rough=np.zeros((S, S), bool))

    # lawn: vegetation colour varying between lush and dry in patches
    dry0 = _u(rng, 0.1, 0.6)
    veg_t = np.clip(np.float32(dry0) + np.float32(0.2) * _value_noise(rng, S, S, max(1.0, ext / 12.0)),
                    0, 1)
    for c in range(3):
        np.multiply(veg_t, _VEG_DRY[c] - _VEG_LUSH[c], out=sc.alb[c])
        sc.alb[c] += _VEG_LUSH[c]

    asphalt = _jitter(rng, _ASPHALT, 0.08)
    roads = _roads(rng, sc, X, Y, asphalt)
    parked: list = []
    _parking_lots(rng, sc, roads, parked)
    _buildings(rng, sc, roads, asphalt)
    _cars(rng, sc, roads, parked)
    _clutter(rng, sc)
    _trees(rng, sc, roads, veg_t)
    del veg_t

    # texture: albedo factor from per-kind amplitudes of four noise octaves
    octaves = [(ext / 20.0, 1.0), (ext / 3.0, 1.0), (min(S / 2.0, ext / 0.6), 1.0)]
    tex = _TEX[:, 0][sc.kind] * _value_noise(rng, S, S, octaves)
    tex += _TEX[:, 1][sc.kind] * _white(rng, (S, S))
    tex += np.float32(1)
    np.clip(tex, 0.5, 1.5, out=tex)
    alb = sc.alb
    alb *= tex
    del tex

    # sun and shading from the (noise-free) surface
    el = math.radians(_u(rng, 35.0, 65.0))
    az = math.radians(180.0 + _u(rng, -70.0, 70.0))  # from north, clockwise
    sun_xy = (math.sin(az), -math.cos(az))  # image x east, y south
    L = np.array([math.cos(el) * sun_xy[0], math.cos(el) * sun_xy[1], math.sin(el)], np.float32)
    top = sc.top
    gy, gx = np.gradient(top, np.float32(g))
    gx = np.clip(gx, -20, 20)
    gy = np.clip(gy, -20, 20)
    inv = 1.0 / np.sqrt(gx * gx + gy * gy + 1)
    ndotl = np.maximum((L[2] - gx * L[0] - gy * L[1]) * inv, 0)
    lit = _cast_shadows(top, g, sun_xy, math.tan(el), eps=0.6 * g + 0.02)
    direct = np.where(lit, ndotl, np.float32(0))
    sky = np.float32(0.6) + np.float32(0.4) * inv  # less sky on steep faces
    del gx, gy
    sun_col = np.array([1.0, 1.0, 0.96], np.float32)
    amb_col = np.array([0.16, 0.24, 0.31], np.float32) * np.float32(_u(rng, 0.9, 1.15))
    norm = np.float32(math.sin(el)) + amb_col.mean()
    gain = np.float32(_u(rng, 1.0, 1.12)) / norm
    balance = (1 + rng.uniform(-0.03, 0.03, 3)).astype(np.float32)
    lut = _gamma_lut()
    q = np.float32(len(lut) - 1)
    irrg = np.empty((S, S, 3), np.uint8)
    noise = _white(rng, (3, S, S))
    for c in range(3):  # radiance = albedo x (sun + sky), then noise, tone curve, 8 bits
        rad = direct * np.float32(sun_col[c] * balance[c] * gain * q)
        rad += sky * np.float32(amb_col[c] * balance[c] * gain * q)
        rad *= alb[c]
        rad += noise[c] * np.float32(0.004 * q) + np.float32(0.5)
        np.clip(rad, 0, q, out=rad)
        irrg[..., c] = lut[rad.astype(np.int32)]
    del rad, noise, direct, sky

    # DSM: absolute metres, noise and crown roughness
    dsm = top + _white(rng, (S, S)) * np.float32(0.03)
    if sc.rough.any():
        dsm += np.where(sc.rough, _white(rng, (S, S)) * np.float32(0.15), np.float32(0))

    cls = sc.cls
    r = max(1, int(round(BOUNDARY_M / g))) if boundary_px is None else int(boundary_px)
    eroded = np.where(_erode_boundaries(cls, r), np.uint8(6), cls) if r > 0 else cls
    counts = np.bincount(cls.ravel(), minlength=6)[:6]
    info = {
        "gsd_m": round(g, 6),
        "sun_azimuth_deg": round(math.degrees(az), 3),
        "sun_elevation_deg": round(math.degrees(el), 3),
        "terrain_slope_percent": round(100 * slope, 3),
        "roads": len(roads),
        **sc.counts,
        "class_fractions": {SYNTHAERIAL_CLASSES[k]: round(float(counts[k]) / (S * S), 5)
                            for k in range(6)},
        "dsm_range_m": [round(float(dsm.min()), 3), round(float(dsm.max()), 3)],
    }
    return {"irrg": irrg, "dsm": dsm, "label": cls, "label_colour": _PALETTE[cls],
            "label_noBoundary": _PALETTE[eroded], "info": info}


# --------------------------------------------------------------------------------------------
# Writing


def _write_tif(path: Path, arr: np.ndarray) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    photometric = "rgb" if arr.ndim == 3 else "minisblack"
    tifffile.imwrite(path, arr, photometric=photometric, metadata=None)


def _job(args: tuple) -> dict:
    out, seed, size, gsd, boundary_px, tile = args
    rng = np.random.default_rng(_seq(seed, 11, int(tile)))
    res = render_tile(rng, size, gsd, boundary_px)
    arrays = {"irrg": res["irrg"], "dsm": res["dsm"], "label": res["label_colour"],
              "label_noBoundary": res["label_noBoundary"]}
    for key, arr in arrays.items():
        folder, pattern = FILES[key]
        _write_tif(Path(out) / folder / pattern.format(id=tile), arr)
    return {"id": tile, "split": tile_split(tile), **res["info"]}


def write_split_lists(out: Path, splits: dict[str, list[str]]) -> dict[str, Path]:
    """Write ``out/splits/{split}.txt`` (one tile id per line) for every split with tiles, and
    remove the list of a split without tiles (left by an earlier render into ``out``).

    Returns:
        split -> list file written.
    """
    folder = out / SPLIT_LIST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for split, tiles in splits.items():
        path = folder / f"{split}.txt"
        if not tiles:
            path.unlink(missing_ok=True)
            continue
        header = f"# synthaerial: the {split} tiles of this render (Vaihingen tile ids)\n"
        path.write_text(header + "".join(f"{t}\n" for t in tiles))
        written[split] = path
    return written


def render_aerial(out: str | Path, n_tiles: int = DEFAULT_TILES, size: int = DEFAULT_SIZE,
                  seed: int = 0, workers: int | None = None,
                  progress: Callable[[int, int], None] | None = None, *,
                  gsd: float | None = None, boundary_px: int | None = None) -> dict:
    """Render the synthaerial data set into ``out`` in the ISPRS Vaihingen layout.

    Args:
        out: output root (created); existing files of the same names are overwritten, others
            are left alone (render into an empty folder when changing options).
        n_tiles: number of tiles, 1..33; the first ``n_tiles`` of :data:`TILE_IDS`, listed per
            split in ``splits/{split}.txt`` (see :func:`write_split_lists`), so the
            ``vaihingen`` loader reads exactly the rendered tiles with its defaults. The
            default 33 covers both Vaihingen split lists (16 train, 17 test tiles).
        size: tile height and width in pixels (>= 16; default 1000).
        seed: non-negative seed fixing every byte (independent of ``workers``).
        workers: processes (default ``os.cpu_count()``); each renders and writes whole tiles.
        progress: ``progress(done, total)`` after every written tile.
        gsd: metres per pixel (default ``90 m / size``: every tile shows 90 m x 90 m).
        boundary_px: erosion radius of the noBoundary labels in pixels (default
            ``max(1, round(0.27 m / gsd))``, 3 px at 9 cm).

    Each tile writes ``top/top_mosaic_09cm_area{id}.tif`` (IRRG uint8 ``[S, S, 3]``),
    ``dsm/dsm_09cm_matching_area{id}.tif`` (float32 ``[S, S]``, metres),
    ``gts_for_participants/top_mosaic_09cm_area{id}.tif`` and
    ``gts_eroded_for_participants/top_mosaic_09cm_area{id}_noBoundary.tif`` (colour labels,
    uint8 ``[S, S, 3]``); ``splits/{split}.txt`` lists the tiles of each split and
    ``synthaerial.json`` at the root describes the render. About 0.3 s
    of CPU and 13 MB of disk per 1000 x 1000 tile.

    Returns:
        ``{"out", "total", "size", "gsd_m", "splits": {"train": {"total", "tiles"},
        "test": {"total", "tiles"}}}``.

    Raises:
        ConfigError: (a ValueError) ``n_tiles`` outside 1..33, ``size`` < 16, negative
            ``seed``, non-positive ``gsd``, negative ``boundary_px``.
    """
    out = Path(out)
    n_tiles, size, seed = int(n_tiles), int(size), int(seed)
    if not 1 <= n_tiles <= len(TILE_IDS):
        raise ConfigError(f"n_tiles must be 1..{len(TILE_IDS)} (the Vaihingen tile ids), got {n_tiles}")
    if size < 16:
        raise ConfigError(f"size must be at least 16 pixels, got {size}")
    if seed < 0:
        raise ConfigError(f"seed must be non-negative, got {seed}")
    g = EXTENT_M / size if gsd is None else float(gsd)
    if not g > 0:
        raise ConfigError(f"gsd must be positive, got {gsd}")
    if boundary_px is not None and boundary_px < 0:
        raise ConfigError(f"boundary_px must be >= 0, got {boundary_px}")
    tiles = list(TILE_IDS[:n_tiles])
    jobs = [(str(out), seed, size, g, boundary_px, t) for t in tiles]
    total = len(jobs)
    out.mkdir(parents=True, exist_ok=True)
    infos = {info["id"]: info for info in run_jobs(_job, jobs, workers, progress)}

    splits = {s: [t for t in tiles if tile_split(t) == s] for s in ("train", "test")}
    lists = write_split_lists(out, splits)
    meta = {
        "name": "synthaerial",
        "generator_version": GENERATOR_VERSION,
        "layout": "ISPRS Vaihingen",
        "classes": list(SYNTHAERIAL_CLASSES),
        "colours": [list(c) for c in SYNTHAERIAL_COLOURS],
        "files": {k: f"{folder}/{pattern}" for k, (folder, pattern) in FILES.items()},
        "encodings": {
            "irrg": "uint8 [H, W, 3]: near-infrared, red, green",
            "dsm": "float32 [H, W]: absolute surface height in metres",
            "label": "uint8 [H, W, 3] ISPRS colours; noBoundary: black (0, 0, 0) = ignore",
        },
        "options": {"n_tiles": n_tiles, "size": size, "seed": seed, "gsd_m": g,
                    "boundary_px": boundary_px},
        "splits": {s: {"total": len(v), "tiles": v} for s, v in splits.items()},
        "split_lists": {s: p.relative_to(out).as_posix() for s, p in lists.items()},
        "loader": "vaihingen: each split reads the tiles of its splits/{split}.txt",
        "tiles": [infos[t] for t in tiles],
    }
    (out / "synthaerial.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return {"out": str(out), "total": total, "size": size, "gsd_m": g,
            "splits": {s: {"total": len(v), "tiles": v} for s, v in splits.items()}}
