"""Which layout puts the images on the grid: the named ones, and ``auto`` that keeps the best.

- ``tsne-jv``: t-SNE to 2-D, then the optimal dense assignment of points to cells
  (:func:`explain.grid.layout.assign_to_grid`; an N×N cost matrix, cubic time: up to
  :data:`JV_MAX` images).
- ``tsne-jv+polish``: that layout improved by swaps that optimise DPQ16's own objective
  (:func:`explain.grid.swaps.swap_polish`, up to :data:`~explain.grid.swaps.SWAP_MAX` images),
  kept only when its DPQ is higher; ``flas+polish`` (beyond JV_MAX) is FLAS improved locally by
  small-radius FLAS steps (:func:`explain.grid.sorting.polish_layout`).
- ``flas``: FLAS on the features (:func:`explain.grid.sorting.flas_layout`).
- ``tsne-snap``: t-SNE, then the windowed assignment with no N×N matrix
  (:func:`explain.grid.sorting.snap_to_grid`): the t-SNE layout for large N.
- ``auto``: every candidate that fits the size (up to :data:`JV_MAX` images: tsne-jv,
  tsne-jv+polish, flas; beyond: flas and flas+polish), measured together by DPQ16
  (:func:`explain.grid.quality.dpq_scores`, one pass over the distances); the highest is kept.

FLAS and the polish search on the features' first :data:`~explain.grid.sorting.LAYOUT_DIMS`
principal components (:func:`explain.grid.sorting.principal_components`); every DPQ is
measured on the full features.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from explain.choices import GRID_PERPLEXITY, LAYOUTS
from explain.errors import OptionError
from explain.grid.layout import assign_to_grid, grid_cells, tsne_layout
from explain.grid.quality import dpq_and_neighbours
from explain.grid.sorting import (
    LAYOUT_DIMS,
    flas_layout,
    polish_layout,
    principal_components,
    snap_to_grid,
)
from explain.grid.swaps import swap_polish

JV_MAX = 4096  # also the swap polish's limit (explain.grid.swaps.SWAP_MAX)
FLAS_DECAY = {1024: 0.99, 16384: 0.97}  # up to N images: slower decay, better grids
FLAS_DECAY_LARGE = 0.93


@dataclass
class Arranged:
    """A layout's outcome: ``cells`` (N×2 (row, col)), ``coords`` (N×2: the t-SNE points when
    t-SNE ran, else the cells as (x, y)), the ``perplexity`` t-SNE used (0 without t-SNE), the
    ``layout`` kept, its ``dpq``, the DPQ of every candidate ``tried``, ``seconds`` per step,
    ``notes`` in words, and each vector's ``neighbours`` (N×k) when they were asked for and
    measured with the DPQ."""

    layout: str
    cells: np.ndarray
    coords: np.ndarray
    perplexity: float
    dpq: float
    tried: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    neighbours: np.ndarray | None = None


def flas_decay(n: int) -> float:
    """FLAS's radius decay for ``n`` images: the slow decay where it is affordable."""
    return next((d for most, d in sorted(FLAS_DECAY.items()) if n <= most), FLAS_DECAY_LARGE)


def candidates(layout: str, n: int) -> list[str]:
    """The layouts ``layout`` runs for ``n`` images (``auto``: those that fit the size).
    OptionError for an unknown layout or tsne-jv beyond :data:`JV_MAX` images."""
    if layout not in LAYOUTS:
        raise OptionError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        return ["tsne-jv", "tsne-jv+polish", "flas"] if n <= JV_MAX else ["flas", "flas+polish"]
    if layout.startswith("tsne-jv") and n > JV_MAX:
        raise OptionError(f"--layout {layout} solves a dense {n}x{n} assignment; it is limited "
                          f"to {JV_MAX} images: use --layout tsne-snap, flas or auto")
    return [layout]


def arrange(vectors: np.ndarray, shape: tuple[int, int], *, layout: str = "auto",
            perplexity: float = GRID_PERPLEXITY, seed: int = 0, cost: str = "sqeuclidean",
            tsne_step: Callable[[int], None] | None = None, k: int = 0) -> Arranged:
    """Lay ``vectors`` (N×D, N ≤ rows·cols) out on a ``shape`` = (rows, cols) grid.

    ``layout`` is one of :data:`explain.choices.LAYOUTS` (see the module docstring);
    ``perplexity`` and ``seed`` drive t-SNE (``seed`` also FLAS and the polish), ``cost`` the
    dense assignment; ``tsne_step(iterations)`` follows t-SNE's progress; ``k`` > 0 also
    finds each vector's k nearest neighbours in the DPQ's distance pass. Returns the
    :class:`Arranged` layout with the highest DPQ16 among those run; OptionError for a bad
    option.
    """
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    runs = candidates(layout, n)
    out = Arranged(layout=runs[0], cells=grid_cells(shape)[:n], coords=np.zeros((n, 2)),
                   perplexity=0.0, dpq=1.0)
    layouts: dict[str, np.ndarray] = {}

    def timed(step: str, fn: Callable[[], np.ndarray]) -> np.ndarray:
        start = time.perf_counter()
        result = fn()
        out.seconds[step] = out.seconds.get(step, 0.0) + time.perf_counter() - start
        return result

    if n < 2 or np.ptp(x, axis=0).max() == 0:
        if n > 1:
            out.notes.append("all embeddings are identical: images placed in input order")
        out.tried = {out.layout: 1.0}
        return out
    if any(r.startswith("tsne") for r in runs):
        if n < 4:
            points = grid_cells(shape)[:n, ::-1].astype(np.float64)
            out.notes.append(f"t-SNE needs 4 points or more: {n} placed in input order")
        else:
            points, out.perplexity = timed("tsne", lambda: tsne_layout(
                x, perplexity=perplexity, seed=seed, callback=tsne_step))
            if out.perplexity < perplexity:
                out.notes.append(f"perplexity {perplexity:g} clipped to (N-1)/3 = "
                                 f"{out.perplexity:.3g} for N = {n}")
        out.coords = points
        if "tsne-snap" in runs:
            layouts["tsne-snap"] = timed("assign", lambda: snap_to_grid(points, shape, seed=seed))
        else:
            layouts["tsne-jv"] = timed("assign", lambda: assign_to_grid(points, shape, cost=cost))
    if "flas" in runs or "flas+polish" in runs:
        small = timed("pca", lambda: principal_components(x, LAYOUT_DIMS))
        layouts["flas"] = timed("flas", lambda: flas_layout(
            small, shape, seed=seed, radius_decay=flas_decay(n)))
    if "flas+polish" in runs:
        layouts["flas+polish"] = timed("polish", lambda: polish_layout(
            small, layouts["flas"], shape, seed=seed))
    if "tsne-jv+polish" in runs:
        layouts["tsne-jv+polish"] = timed("polish", lambda: swap_polish(
            x, layouts["tsne-jv"], shape))
    start = time.perf_counter()
    measured, out.neighbours = dpq_and_neighbours(x, list(layouts.values()), k)
    scores = dict(zip(layouts, measured, strict=True))
    out.seconds["dpq"] = time.perf_counter() - start
    out.tried = scores
    pool = runs if layout == "auto" else list(layouts)
    best = max(pool, key=lambda name: (scores[name], -pool.index(name)))
    if layout.endswith("+polish") and scores[best] <= scores[layout.removesuffix("+polish")]:
        best = layout.removesuffix("+polish")
        out.notes.append(f"the polish did not raise DPQ16 ({scores[layout]:.4f} <= "
                         f"{scores[best]:.4f}): kept {best}")
    out.layout, out.cells, out.dpq = best, layouts[best], scores[best]
    if not best.startswith("tsne"):
        out.coords = out.cells[:, ::-1].astype(np.float64)
    if layout == "auto":
        out.notes.append("layout auto kept " + best + " (DPQ16 " + ", ".join(
            f"{name} {scores[name]:.4f}" for name in runs) + ")")
    return out
