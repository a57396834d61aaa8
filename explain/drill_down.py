"""Adaptive drill-down: a fine occlusion map from a fraction of its windows, for any classifier.

The fine grid is the map's own windows (:func:`explain.windows.window_grid`), indexed (i, j) rows
first, n_r × n_c of them; d(i, j) is window (i, j)'s score drop. Drill-down evaluates d on a subset
of the grid and estimates the rest; the map is :func:`explain.windows.window_mean` of those values,
exactly as for the exact map. The rule, with ``r`` in (0, 1] and K = ``coarse`` (a power of two):

1. Coarse pass. Along an axis of n indices the coarse indices are 0, K, 2K, … below n, plus n − 1:
   the coarse windows are fine windows (stride K × the fine stride, plus the flush last one). d is
   evaluated at every pair of coarse indices; consecutive coarse indices bound the coarse cells,
   closed index rectangles [i0, i1] × [j0, j1] (an axis of one index gives cells of height 0).
2. Levels. The active cells are the coarse cells. While an active cell spans more than one step
   on some axis, among the m such cells the ⌈r·m⌉ of highest priority (ties: row-major order of
   their top-left corners) are split at ⌊(i0 + i1) / 2⌋ and ⌊(j0 + j1) / 2⌋ (an axis of one step
   is not split) into up to four child cells; d is evaluated at every corner of the children not
   evaluated yet, in one batch; the children are the next level's active cells. A cell's priority
   is, over d at its four corners, (max − min) + |mean|: the first term is how far bilinear
   interpolation can miss inside the cell (where the coarse map varies), the second how much the
   cell matters. Cells that are not split are leaves.
3. Estimate. A window never evaluated takes the bilinear interpolation, in index coordinates, of d
   at the four corners of the smallest leaf containing it (of equal ones, the one made last).

Consequences: every evaluated d is scored once and kept (the coarse scores are the fine map's own
scores of those windows, never recomputed); a pixel whose covering windows were all evaluated has
exactly the exact map's value; with r = 1 every cell is split down to single steps, so every
window is evaluated and the map IS the exact map. At most ⌈log2 K⌉ levels follow the coarse pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from explain.errors import OptionError
from explain.windows import window_mean

COARSE = 4
Cell = tuple[int, int, int, int]  # i0, i1, j0, j1: a closed rectangle of grid indices


def check_drill_down(r: float | None) -> float | None:
    """``r`` when it is None (no drill-down) or a fraction in (0, 1], else an OptionError."""
    if r is None:
        return None
    if isinstance(r, bool) or not isinstance(r, int | float) or not 0.0 < float(r) <= 1.0:
        raise OptionError(f"drill-down fraction must be in (0, 1] (1 = the exact map), got {r!r}")
    return float(r)


def coarse_step(box: tuple[int, int], stride: tuple[int, int]) -> int:
    """K, the coarse pass's stride in fine steps, for windows of ``box`` and ``stride`` pixels:
    :data:`COARSE` (a power of two)."""
    return COARSE


def coarse_indices(n: int, k: int) -> np.ndarray:
    """Coarse indices along an axis of ``n`` fine indices: 0, k, 2k, … below n, plus n − 1."""
    idx = np.arange(0, n, k, dtype=np.int64)
    return idx if idx[-1] == n - 1 else np.append(idx, n - 1)


def _pairs(idx: np.ndarray) -> list[tuple[int, int]]:
    return [(int(idx[0]), int(idx[0]))] if len(idx) == 1 else \
        [(int(a), int(b)) for a, b in zip(idx[:-1], idx[1:], strict=True)]


def _split(cell: Cell) -> list[Cell]:
    i0, i1, j0, j1 = cell
    rows = [(i0, i1)] if i1 - i0 <= 1 else [(i0, (i0 + i1) // 2), ((i0 + i1) // 2, i1)]
    cols = [(j0, j1)] if j1 - j0 <= 1 else [(j0, (j0 + j1) // 2), ((j0 + j1) // 2, j1)]
    return [(a, b, c, e) for a, b in rows for c, e in cols]


def _corners(cells: list[Cell]) -> np.ndarray:
    c = np.array(cells, dtype=np.int64).reshape(-1, 4)
    return np.stack([c[:, [0, 0, 1, 1]], c[:, [2, 3, 2, 3]]], axis=-1).reshape(-1, 2)


def _priority(d: np.ndarray, cells: list[Cell]) -> np.ndarray:
    c = np.array(cells, dtype=np.int64)
    v = np.stack([d[c[:, 0], c[:, 2]], d[c[:, 0], c[:, 3]], d[c[:, 1], c[:, 2]],
                  d[c[:, 1], c[:, 3]]], axis=1)
    return v.max(1) - v.min(1) + np.abs(v.mean(1))


def drill_down(grid: tuple[int, int], score: Callable[[np.ndarray], np.ndarray], r: float,
               coarse: int) -> tuple[np.ndarray, np.ndarray]:
    """Drops on a fine grid of ``grid`` = (n_r, n_c) windows by the rule of the module docstring.

    ``score(points)`` gets an (m, 2) int64 array of (row, column) grid indices, never one it got
    before, and returns their m drops; it is called once for the coarse pass and once per level.
    ``r``: the fraction of cells split at each level (see :func:`check_drill_down`); ``coarse``:
    K, the coarse stride in fine steps (a power of two ≥ 1; 1 = the exact map).

    Returns (the drops, float64 (n_r, n_c): evaluated or estimated; the evaluated mask, bool).
    """
    d = np.zeros(grid)
    known = np.zeros(grid, dtype=bool)

    def evaluate(points: np.ndarray) -> None:
        points = np.unique(points, axis=0)
        points = points[~known[points[:, 0], points[:, 1]]]
        if len(points):
            d[points[:, 0], points[:, 1]] = score(points)
            known[points[:, 0], points[:, 1]] = True

    rows, cols = coarse_indices(grid[0], coarse), coarse_indices(grid[1], coarse)
    evaluate(np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2))
    active = [(a, b, c, e) for a, b in _pairs(rows) for c, e in _pairs(cols)]
    leaves: list[Cell] = []
    while active:
        splittable = sorted(c for c in active if c[1] - c[0] > 1 or c[3] - c[2] > 1)
        leaves += [c for c in active if c[1] - c[0] <= 1 and c[3] - c[2] <= 1]
        if not splittable:
            break
        order = np.argsort(-_priority(d, splittable), kind="stable")
        chosen = order[:math.ceil(r * len(splittable))]
        leaves += [splittable[k] for k in order[len(chosen):]]
        active = [child for k in chosen for child in _split(splittable[k])]
        evaluate(_corners(active))
    return _estimate(d, known, leaves), known


def _estimate(d: np.ndarray, known: np.ndarray, leaves: list[Cell]) -> np.ndarray:
    """``d`` with every unknown window set by bilinear interpolation in its smallest leaf."""
    out = d.copy()
    area = [(c[1] - c[0]) * (c[3] - c[2]) for c in leaves]
    for k in np.argsort(-np.array(area), kind="stable"):
        i0, i1, j0, j1 = leaves[k]
        if i1 - i0 <= 1 and j1 - j0 <= 1:
            continue
        ti = np.linspace(0.0, 1.0, i1 - i0 + 1)[:, None]
        tj = np.linspace(0.0, 1.0, j1 - j0 + 1)[None, :]
        patch = ((1 - ti) * (1 - tj) * d[i0, j0] + (1 - ti) * tj * d[i0, j1]
                 + ti * (1 - tj) * d[i1, j0] + ti * tj * d[i1, j1])
        block = known[i0:i1 + 1, j0:j1 + 1]
        out[i0:i1 + 1, j0:j1 + 1] = np.where(block, d[i0:i1 + 1, j0:j1 + 1], patch)
    return out


def exact_pixels(shape: tuple[int, int], windows: np.ndarray, evaluated: np.ndarray) -> np.ndarray:
    """Bool (H, W): the pixels of an image of ``shape`` whose covering ``windows`` (the fine grid,
    rows first) were all ``evaluated`` (the mask :func:`drill_down` returns): where a drill-down
    map equals the exact map."""
    return window_mean(shape, windows, (~evaluated).ravel().astype(np.float64)) == 0.0
