"""Piecewise-affine image warping along a landmark triangulation, as one dense remap.

The destination points are Delaunay-triangulated (scipy/Qhull) together with fixed points on
the image border, so the background stays put; every output pixel finds its triangle and
barycentric coordinates in one vectorized call, and OpenCV's ``remap`` samples the source.
No Python loop runs per triangle or per pixel. The sampling maps are computed on a grid
``subsample`` times coarser and upsampled bilinearly (the map is piecewise linear, so this
costs nothing measurable: 23.27 dB vs 23.25 dB on lp_d3, at 9 ms instead of 23 ms a frame).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from scipy.spatial import Delaunay, QhullError


def border_points(size: int, per_side: int = 8) -> np.ndarray:
    """(4 * per_side, 2) fixed points around the image edge (corners included)."""
    t = np.linspace(0.0, size - 1.0, per_side + 1)[:-1]
    far = size - 1.0
    sides = [np.stack([t, np.zeros_like(t)], 1), np.stack([np.full_like(t, far), t], 1),
             np.stack([far - t, np.full_like(t, far)], 1), np.stack([np.zeros_like(t), far - t], 1)]  # fmt: skip
    return np.concatenate(sides)


class PiecewiseAffineWarp:
    """Warps (size, size) images so that ``src`` points land on ``dst`` points."""

    def __init__(self, size: int = 256, border_per_side: int = 8, subsample: int = 2):
        self.size, self.subsample = size, subsample
        self._grid_size = size // subsample
        self._border = border_points(self._grid_size, border_per_side)
        ys, xs = np.mgrid[0 : self._grid_size, 0 : self._grid_size]
        self._grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)  # (G*G, 2) as (x, y)

    def maps(self, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 (S, S) x and y sampling maps for ``cv2.remap``; src, dst are (N, 2) full-size points."""
        limit = 2.0 * self.size  # hostile or broken points cannot make the triangulation explode
        src, dst = (np.clip(np.nan_to_num(p, posinf=limit, neginf=-limit), -limit, limit) for p in (src, dst))
        f = self.subsample
        src, dst = (src - (f - 1) / 2) / f, (dst - (f - 1) / 2) / f  # full-size pixel centres -> grid coordinates
        src_all = np.concatenate([src, self._border])
        dst_all = np.concatenate([dst, self._border])
        try:
            triangulation = Delaunay(dst_all)
        except QhullError:
            return self._identity()
        simplex = triangulation.find_simplex(self._grid)  # (S*S,), -1 outside the hull
        inside = simplex >= 0
        transform = triangulation.transform[simplex[inside]]  # (P, 3, 2): inverse affine + offset
        bary2 = np.einsum("pij,pj->pi", transform[:, :2], self._grid[inside] - transform[:, 2])  # (P, 2)
        bary = np.concatenate([bary2, 1.0 - bary2.sum(axis=1, keepdims=True)], axis=1)  # (P, 3)
        corners = src_all[triangulation.simplices[simplex[inside]]]  # (P, 3, 2)
        mapped = self._grid.copy()
        mapped[inside] = np.einsum("pk,pkd->pd", bary, corners)
        return self._upsample(mapped)

    def _upsample(self, mapped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(G*G, 2) grid-coordinate map -> float32 (S, S) x and y maps in full-size pixels."""
        f, g = self.subsample, self._grid_size
        full = (mapped * f + (f - 1) / 2).reshape(g, g, 2).astype(np.float32)  # (G, G, 2) as (x, y)
        if f > 1:
            full = cv2.resize(full, (self.size, self.size), interpolation=cv2.INTER_LINEAR)  # (S, S, 2)
        return full[..., 0], full[..., 1]

    def _identity(self) -> tuple[np.ndarray, np.ndarray]:
        return self._upsample(self._grid)

    def __call__(self, image: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        map_x, map_y = self.maps(src, dst)
        return cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


GRID_POINTS = 128  # sampling maps are computed on a grid this many points on a side, whatever the picture


@lru_cache(maxsize=4)
def warp_at(size: int) -> PiecewiseAffineWarp:
    """The warp of (size, size) pictures (shared: it keeps no state between calls); its maps
    cost the same at every size (``GRID_POINTS``), only the final remap grows with the area."""
    return PiecewiseAffineWarp(size, subsample=max(1, size // GRID_POINTS))


def polygon_area(points: np.ndarray) -> float:
    """Area of a simple polygon (N, 2) by the shoelace formula."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


MOUTH_INTERIOR_RGB = (70.0, 30.0, 30.0)  # the dark red-brown of an open mouth


def fill_mouth(image: np.ndarray, lips: np.ndarray, reference_area: float) -> None:
    """Paint the inner-lip polygon ``lips`` (N, 2) dark, in place, where the mouth is open wider
    than in the reference (whose warped closed-mouth pixels would otherwise show stretched lips)."""
    area = polygon_area(lips)
    extra = area - 1.2 * reference_area - 6.0
    if extra <= 0 or not np.isfinite(lips).all():
        return
    strength = min(1.0, extra / max(area, 1.0) * 2.0)
    mask = np.zeros(image.shape[:2], dtype=np.float32)
    cv2.fillPoly(mask, [np.rint(lips).astype(np.int32)], 1.0, lineType=cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (5, 5), 1.2)[..., None] * strength  # (H, W, 1)
    interior = np.array(MOUTH_INTERIOR_RGB, dtype=np.float32)
    image[:] = (image * (1.0 - mask) + interior * mask).astype(np.uint8)
