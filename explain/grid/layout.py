"""The grid's layout: reduce the embeddings to 2-D with t-SNE, then snap the points to a grid.

**Reduce** with openTSNE (FFT-accelerated, seeded). openTSNE needs 3·perplexity nearest
neighbours per point, so the perplexity is clipped to (N − 1)/3: N = 16 runs at 5.

**Snap** to a rows×cols grid: the 2-D points are scaled to the grid's extent (x → columns,
y → rows), the cost of point i in cell c is their squared (or plain) distance, and scipy's
``linear_sum_assignment`` (a Jonker-Volgenant variant) finds the one-to-one map of least total
cost. With fewer images than cells the cost matrix is rectangular and cells stay empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from explain.choices import COSTS, GRID_PERPLEXITY
from explain.errors import ModelError, OptionError

TSNE_ITERATIONS = 250 + 500


def grid_shape(n: int) -> tuple[int, int]:
    """The smallest near-square grid holding ``n`` images: ceil(√n) columns and as few rows as
    hold them. Returns (rows, cols), each at least 1."""
    cols = max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / cols)), cols


def grid_cells(shape: tuple[int, int]) -> np.ndarray:
    """All cells of a ``shape`` = (rows, cols) grid, row-major, as a (rows·cols)×2 int array of
    (row, col)."""
    rows, cols = shape
    r, c = np.divmod(np.arange(rows * cols), cols)
    return np.stack([r, c], axis=1)


def scaled_points(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """2-D ``points`` (N×2, x → column, y → row) scaled per axis to the extent of a ``shape``
    = (rows, cols) grid: x in [0, cols − 1], y in [0, rows − 1] (a constant axis → 0).
    Returns N×2 float64; OptionError when they are not N×2 or more than rows·cols."""
    pts = np.asarray(points, dtype=np.float64)
    rows, cols = shape
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise OptionError(f"points must be Nx2, got shape {pts.shape}")
    if len(pts) > rows * cols:
        raise OptionError(f"{len(pts)} points do not fit a {rows}x{cols} grid")
    if not len(pts):
        return pts
    lo, span = pts.min(axis=0), np.ptp(pts, axis=0)
    span[span == 0] = 1.0
    return (pts - lo) / span * np.array([cols - 1, rows - 1], dtype=np.float64)


def assign_to_grid(points: np.ndarray, shape: tuple[int, int], *, cost: str = "sqeuclidean"
                   ) -> np.ndarray:
    """Cells for 2-D ``points`` (N×2, x → column, y → row): the optimal one-to-one map.

    Points are scaled to the extent of the ``shape`` = (rows, cols) grid per axis; ``cost``
    ("sqeuclidean" or "euclidean") is the (squared) distance from each point to each cell
    centre; ``linear_sum_assignment`` minimises its sum. N ≤ rows·cols, else OptionError.
    Returns an N×2 int64 array: the (row, col) of each point, all distinct.
    """
    if cost not in COSTS:
        raise OptionError(f"unknown cost {cost!r}: use one of {', '.join(COSTS)}")
    scaled = scaled_points(points, shape)
    cells = grid_cells(shape)
    matrix = cdist(scaled, cells[:, ::-1].astype(np.float64), metric=cost)
    point_idx, cell_idx = linear_sum_assignment(matrix)
    out = np.empty((len(scaled), 2), dtype=np.int64)
    out[point_idx] = cells[cell_idx]
    return out


def tsne_layout(vectors: np.ndarray, *, perplexity: float = GRID_PERPLEXITY, seed: int = 0,
                n_jobs: int = 1, callback: Callable[[int], None] | None = None
                ) -> tuple[np.ndarray, float]:
    """2-D openTSNE embedding of ``vectors`` (N×D) and the perplexity used.

    ``perplexity`` (> 0) is clipped to (N − 1)/3; ``seed`` makes the run reproducible;
    ``n_jobs`` is openTSNE's thread count. ``callback(iterations)`` is called as the
    optimisation advances, with the iterations done since the last call (for progress bars;
    :data:`TSNE_ITERATIONS` in all). Returns (N×2 float64 coordinates, the perplexity used);
    ModelError when t-SNE's output is not finite. One-dimensional vectors (a one-class model's
    probabilities, an embedding of one number) get a zero second column: the distances, all
    t-SNE reads, are unchanged, and its PCA initialisation needs two dimensions.

    One thread by default: on a busy 2-core machine openTSNE's threads made N = 64 take 14 s
    instead of 0.8 s and N = 4096 75 s instead of 26 s.
    """
    from openTSNE import TSNE

    n = len(vectors)
    if perplexity <= 0:
        raise OptionError(f"perplexity must be positive, got {perplexity}")
    used = float(min(perplexity, (n - 1) / 3))
    every = 25
    callbacks = None
    if callback is not None:
        def callbacks(*_: object) -> bool:
            callback(every)
            return False
    tsne = TSNE(n_components=2, perplexity=used, random_state=seed, n_jobs=n_jobs,
                callbacks=callbacks, callbacks_every_iters=every)
    x = np.asarray(vectors, dtype=np.float64).reshape(n, -1)
    if x.shape[1] < 2:
        x = np.pad(x, ((0, 0), (0, 2 - x.shape[1])))
    coords = np.asarray(tsne.fit(x), dtype=np.float64)
    if not np.isfinite(coords).all():
        raise ModelError("t-SNE produced non-finite coordinates; the embeddings may be degenerate")
    return coords, used
