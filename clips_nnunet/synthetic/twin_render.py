"""Rasterisation of the whole-body twin: grids and a painter's algorithm over ellipsoids (numpy, bounding boxes).

The twin (:mod:`clips_nnunet.synthetic.twin`) is a scene of axis-aligned ellipsoids (organs, vertebrae, tube
segments, lesion lobules) and per-slice body cross-sections, painted in order onto a grid: a later shape covers an
earlier one. Two painters share the scene:

* :class:`PetCanvas`: partial-volume painting. Each shape covers a voxel by a fraction ``f`` from a first-order
  signed distance to its surface (``f = clip(0.5 - d / h, 0, 1)``, ``h`` the voxel size), and the voxel's value
  becomes ``v + f (value - v)``. A tissue map (uint8) and a lesion-id map (int16) take the shape where ``f >= 0.5``.
* :class:`CtCanvas`: binary painting in int16 HU, fast enough for a 512 x 512 x ~300 CT: for each (z, y) row of a
  shape's box the half-width of the ellipsoid is computed once and a voxel is inside when ``|x - cx| <= halfwidth``.

Coordinates are patient millimetres (x: patient left +, y: posterior +, z: head +), arrays are (z, y, x).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` and ``spacing`` (z, y, x) in voxels and mm, centred at ``centre_mm`` (z, y, x)."""
    shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    centre_mm: Tuple[float, float, float] = (0.0, 0.0, 0.0)

    def axis(self, i: int) -> np.ndarray:
        """Coordinates (mm) of the voxel centres along axis ``i`` (0: z, 1: y, 2: x)."""
        n, sp = self.shape[i], self.spacing[i]
        return (self.centre_mm[i] + (np.arange(n) - (n - 1) / 2.0) * sp).astype(np.float64)

    def index_range(self, i: int, lo_mm: float, hi_mm: float) -> slice:
        """Slice of the voxels along axis ``i`` whose centres may lie in [lo_mm, hi_mm] (clipped to the grid)."""
        n, sp = self.shape[i], self.spacing[i]
        first = self.centre_mm[i] - (n - 1) / 2.0 * sp
        a = int(np.floor((lo_mm - first) / sp))
        b = int(np.ceil((hi_mm - first) / sp)) + 1
        return slice(max(a, 0), min(b, n))


@dataclass(frozen=True)
class Shape:
    """One ellipsoid of the scene: ``tissue`` name, centre and radii (x, y, z) in mm, PET value (SUV), CT value (HU).

    ``lesion`` > 0 marks lesion tissue (its id, 1-based); -1 marks a necrotic core (cut out of the lesion masks).
    ``falloff`` in [0, 1) makes the uptake fall from ``suv`` at the centre to ``(1 - falloff) suv`` at the surface
    (``suv (1 - falloff q^2)``, ``q`` the normalised radius): tumours are hottest in their viable centre.
    """
    tissue: str
    centre: Tuple[float, float, float]
    radii: Tuple[float, float, float]
    suv: float
    hu: float
    lesion: int = 0
    falloff: float = 0.0


@dataclass(frozen=True)
class Section:
    """Per-slice body cross-sections: ellipse centre x, y and half-axes a (x), b (y) in mm for each z of a grid;
    NaN where the section is absent. Used for the body outline and the layers inside it (fat, muscle wall)."""
    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray
    b: np.ndarray


def _box(grid: Grid, centre: Sequence[float], radii: Sequence[float], pad: float
         ) -> Optional[Tuple[slice, slice, slice]]:
    """(z, y, x) slices of the grid box around an ellipsoid, padded by ``pad`` mm; None when it is outside."""
    cx, cy, cz = centre
    rx, ry, rz = radii
    sz = grid.index_range(0, cz - rz - pad, cz + rz + pad)
    sy = grid.index_range(1, cy - ry - pad, cy + ry + pad)
    sx = grid.index_range(2, cx - rx - pad, cx + rx + pad)
    if sz.start >= sz.stop or sy.start >= sy.stop or sx.start >= sx.stop:
        return None
    return sz, sy, sx


class PetCanvas:
    """Partial-volume painter on a PET grid: activity (float32 SUV), tissue map (uint8), lesion ids (int16)."""

    def __init__(self, grid: Grid, tissue_ids: dict, background: float = 0.0):
        self.grid = grid
        self.tissue_ids = tissue_ids
        self.activity = np.full(grid.shape, background, dtype=np.float32)
        self.tissue = np.zeros(grid.shape, dtype=np.uint8)
        self.lesion = np.zeros(grid.shape, dtype=np.int16)
        self.h = float(np.prod(grid.spacing) ** (1.0 / 3.0))
        self.axes = [grid.axis(i) for i in range(3)]

    def _apply(self, box: Tuple[slice, slice, slice], f: np.ndarray, shape_suv, tissue: str,
               lesion: int) -> None:
        act = self.activity[box]
        act += (f * (shape_suv - act)).astype(np.float32)
        inside = f >= 0.5
        if inside.any():
            self.tissue[box][inside] = self.tissue_ids[tissue]
            self.lesion[box][inside] = max(lesion, 0)  # a later non-lesion shape (a necrotic core) covers it

    def paint(self, shape: Shape) -> None:
        """Paint one ellipsoid with partial-volume coverage."""
        box = _box(self.grid, shape.centre, shape.radii, self.h)
        if box is None:
            return
        cx, cy, cz = shape.centre
        rx, ry, rz = (max(r, 1e-3) for r in shape.radii)
        dz = (self.axes[0][box[0]] - cz)[:, None, None]
        dy = (self.axes[1][box[1]] - cy)[None, :, None]
        dx = (self.axes[2][box[2]] - cx)[None, None, :]
        q2 = (dx / rx) ** 2 + (dy / ry) ** 2 + (dz / rz) ** 2
        g2 = (dx / rx ** 2) ** 2 + (dy / ry ** 2) ** 2 + (dz / rz ** 2) ** 2
        q = np.sqrt(q2)
        d = (q - 1.0) * q / np.sqrt(np.maximum(g2, 1e-12))  # first-order signed distance (mm)
        d = np.where(q2 < 1e-9, -min(rx, ry, rz), d)
        f = np.clip(0.5 - d / self.h, 0.0, 1.0)
        value = shape.suv * (1.0 - shape.falloff * np.minimum(q2, 1.0)) if shape.falloff else shape.suv
        self._apply(box, f, value, shape.tissue, shape.lesion)

    def paint_section(self, section: Section, suv: float, tissue: str) -> None:
        """Paint per-slice ellipses (partial volume in-plane), slice by slice inside each ellipse's box."""
        y, x = self.axes[1], self.axes[2]
        for k in np.flatnonzero(np.isfinite(section.a)):
            a, b, cx, cy = (float(v[k]) for v in (section.a, section.b, section.cx, section.cy))
            sy = self.grid.index_range(1, cy - b - self.h, cy + b + self.h)
            sx = self.grid.index_range(2, cx - a - self.h, cx + a + self.h)
            dy = ((y[sy] - cy).astype(np.float32))[:, None]
            dx = ((x[sx] - cx).astype(np.float32))[None, :]
            q = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
            g = np.sqrt((dx / a ** 2) ** 2 + (dy / b ** 2) ** 2)
            d = (q - 1.0) * q / np.maximum(g, 1e-9)
            f = np.clip(0.5 - d / self.h, 0.0, 1.0)[None]
            self._apply((slice(k, k + 1), sy, sx), f, suv, tissue, 0)


class CtCanvas:
    """Binary painter on a CT grid in int16 HU (row intervals; no partial volume)."""

    def __init__(self, grid: Grid, air_hu: int = -1000):
        self.grid = grid
        self.hu = np.full(grid.shape, air_hu, dtype=np.int16)
        self.axes = [grid.axis(i) for i in range(3)]

    def paint(self, shape: Shape) -> None:
        """Paint one ellipsoid (voxel centres inside it)."""
        box = _box(self.grid, shape.centre, shape.radii, 0.0)
        if box is None:
            return
        cx, cy, cz = shape.centre
        rx, ry, rz = (max(r, 1e-3) for r in shape.radii)
        dz = ((self.axes[0][box[0]] - cz) / rz)[:, None]
        dy = ((self.axes[1][box[1]] - cy) / ry)[None, :]
        rest = 1.0 - dz ** 2 - dy ** 2
        half = np.where(rest > 0, rx * np.sqrt(np.maximum(rest, 0.0)), -1.0)
        inside = np.abs(self.axes[2][box[2]][None, None, :] - cx) <= half[:, :, None]
        np.putmask(self.hu[box], inside, np.int16(round(shape.hu)))

    def paint_section(self, section: Section, hu: float) -> None:
        """Paint per-slice ellipses."""
        ok = np.isfinite(section.a)
        if not ok.any():
            return
        y = self.axes[1]
        x = self.axes[2]
        for k in np.flatnonzero(ok):
            dy = (y - section.cy[k]) / section.b[k]
            rest = 1.0 - dy ** 2
            rows = np.flatnonzero(rest > 0)
            if rows.size == 0:
                continue
            half = section.a[k] * np.sqrt(rest[rows])
            inside = np.abs(x[None, :] - section.cx[k]) <= half[:, None]
            np.putmask(self.hu[k, rows[0]:rows[-1] + 1], inside, np.int16(round(hu)))
