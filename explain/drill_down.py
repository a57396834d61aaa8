"""Adaptive drill-down: a fine occlusion map from a fraction of its windows, for any classifier.

The fine grid is the map's own windows (:func:`explain.windows.window_grid`), indexed (i, j) rows
first, n_r × n_c of them; d(i, j) is window (i, j)'s score drop. Drill-down scores d on a subset of
the grid and estimates the rest; the map is :func:`explain.windows.window_mean` of those values,
exactly as for the exact map. The rule, with ``r`` in (0, 1]:

1. Coarse pass: two interleaved coarse grids of stride K = :data:`COARSE` fine steps: the windows
   whose i and j are both coarse indices (0, K, 2K, … and the axis's last index, so that the
   grid's edges are covered), and those with i ≡ j ≡ K/2 (mod K). They are fine windows, so their
   scores are the fine map's own.
2. :data:`ROUNDS` rounds of refinement. U = the windows the coarse pass left out; each round scores
   the ⌈r·U / ROUNDS⌉ (at most all left) unscored windows of highest priority, in one batch. A
   window's priority comes from the triangle holding it in the Delaunay triangulation of the
   scored windows' (i, j) (:class:`scipy.spatial.Delaunay`): (max − min) + ½ · max |·| of d at the
   triangle's three corners — how far linear interpolation can miss there (where the map
   varies) plus how much the place matters. Ties go to the earlier window, rows first.
3. Estimate: an unscored window takes the linear (barycentric) interpolation of d over its
   triangle in the Delaunay triangulation of all scored windows.

Consequences: every d is scored once and kept (the coarse scores are never recomputed); a pixel
whose covering windows were all scored has exactly the exact map's value (up to the rounding of
the summed-area mean); with r = 1 the rounds score every window, so the map IS the exact map. A
grid one window thick along an axis holds no triangle, and one of fewer than
:data:`MIN_WINDOWS` windows gains little: both are scored in full (the exact map).
The defaults (K = 4, three rounds, ``--fast`` = :data:`~explain.choices.FAST_DRILL_DOWN`) were
tuned with ``scripts/bench_fast.py`` on crops of photos that open_nsfw scores ≥ 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

import numpy as np

from explain.errors import OptionError
from explain.windows import window_mean

COARSE = 4
ROUNDS = 3
MIN_WINDOWS = 100
"""Grids with fewer windows are scored in full: there the coarse pass alone is a large share of
the windows and the estimate misses the top (open_nsfw, box 64/stride 48 on 256² crops: 8 of 25
windows scored, top-10 % overlap 0.06–0.86)."""


def check_drill_down(r: float | None) -> float | None:
    """``r`` when it is None (no drill-down) or a fraction in (0, 1], else an OptionError."""
    if r is None:
        return None
    if isinstance(r, bool) or not isinstance(r, int | float) or not 0.0 < float(r) <= 1.0:
        raise OptionError(f"drill-down fraction must be in (0, 1] (1 = the exact map), got {r!r}")
    return float(r)


def coarse_indices(n: int, k: int) -> np.ndarray:
    """Coarse indices along an axis of ``n`` fine indices: 0, k, 2k, … below n, plus n − 1."""
    idx = np.arange(0, n, k, dtype=np.int64)
    return idx if idx[-1] == n - 1 else np.append(idx, n - 1)


def coarse_mask(grid: tuple[int, int]) -> np.ndarray:
    """Bool ``grid``: the windows of the coarse pass (step 1 of the module docstring); all of them
    when an axis has a single window or the grid has fewer than :data:`MIN_WINDOWS`."""
    if min(grid) < 2 or grid[0] * grid[1] < MIN_WINDOWS:
        return np.ones(grid, dtype=bool)
    mask = np.zeros(grid, dtype=bool)
    mask[np.ix_(coarse_indices(grid[0], COARSE), coarse_indices(grid[1], COARSE))] = True
    half = COARSE // 2
    mask[half::COARSE, half::COARSE] = True
    return mask


def _triangles(known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every window of the grid, the (i, j) of the three corners of the Delaunay triangle of
    the ``known`` windows holding it, (n, 3, 2), and its barycentric weights, (n, 3)."""
    from scipy.spatial import Delaunay

    points = np.argwhere(known)
    tri = Delaunay(points)
    every = np.argwhere(np.ones(known.shape, dtype=bool)).astype(np.float64)
    simplex = tri.find_simplex(every, tol=1e-9)
    transform = tri.transform[simplex]
    b = np.einsum("nij,nj->ni", transform[:, :2], every - transform[:, 2])
    return points[tri.simplices[simplex]], np.c_[b, 1.0 - b.sum(1)]


Levels = Generator[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]
"""Drill-down one level at a time (:func:`drill_levels`): yields a level's points, is sent their
drops, returns (the drops, the scored mask)."""


def drill_levels(grid: tuple[int, int], r: float) -> Levels:
    """The rule of the module docstring on a fine grid of ``grid`` = (n_r, n_c) windows, one level
    at a time, for a caller that scores a level when it can (the service's shared batches): it
    yields an (m, 2) int64 array of (row, column) grid indices, rows first, never one it yielded
    before (the coarse pass, then each round that has windows left), and must be sent their m
    drops; it returns what :func:`drilled_drops` returns."""
    d = np.zeros(grid)
    known = coarse_mask(grid)
    points = np.argwhere(known)
    d[known] = yield points
    per_round = math.ceil(r * (known.size - len(points)) / ROUNDS)
    for _ in range(ROUNDS):
        left = int((~known).sum())
        if not left or not per_round:
            break
        corners, _ = _triangles(known)
        vals = d[corners[..., 0], corners[..., 1]]
        priority = vals.max(1) - vals.min(1) + 0.5 * np.abs(vals).max(1)
        priority[known.ravel()] = -np.inf
        pick = np.argsort(-priority, kind="stable")[:min(per_round, left)]
        points = np.stack(np.unravel_index(np.sort(pick), grid), axis=1).astype(np.int64)
        d[points[:, 0], points[:, 1]] = yield points
        known[points[:, 0], points[:, 1]] = True
    if known.all():
        return d, known
    corners, weights = _triangles(known)
    estimate = (weights * d[corners[..., 0], corners[..., 1]]).sum(1).reshape(grid)
    return np.where(known, d, estimate), known


def drilled_drops(grid: tuple[int, int], score: Callable[[np.ndarray], np.ndarray], r: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Drops on a fine grid of ``grid`` = (n_r, n_c) windows by the rule of the module docstring
    (:func:`drill_levels`, driven here).

    ``score(points)`` gets an (m, 2) int64 array of (row, column) grid indices, rows first, never
    one it got before, and returns their m drops; it is called once for the coarse pass and once
    per round that has windows left. ``r``: the fraction of the windows left after the coarse pass
    that the rounds score (see :func:`check_drill_down`).

    Returns (the drops, float64 (n_r, n_c): scored or estimated; the scored mask, bool).
    """
    levels = drill_levels(grid, r)
    points = next(levels)
    while True:
        drops = score(points)
        try:
            points = levels.send(drops)
        except StopIteration as done:
            return done.value


def exact_pixels(shape: tuple[int, int], windows: np.ndarray, evaluated: np.ndarray) -> np.ndarray:
    """Bool (H, W): the pixels of an image of ``shape`` whose covering ``windows`` (the fine grid,
    rows first) were all ``evaluated`` (the mask :func:`drill_down` returns): where a drill-down
    map equals the exact map."""
    return window_mean(shape, windows, (~evaluated).ravel().astype(np.float64)) == 0.0
