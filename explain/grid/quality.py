"""How good a grid is: mean k-NN preservation against seeded random placements.

For each image, the fraction of its k nearest neighbours in embedding space (Euclidean) that sit
within Chebyshev radius r of it on the grid, r the smallest radius whose neighbourhood holds at
least k cells — for the layout and for seeded random placements; their ratio says how much the
layout helps. With labels, also the fraction of grid neighbours that share an image's label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from explain.errors import OptionError
from explain.grid.layout import grid_cells


@dataclass(frozen=True)
class GridQuality:
    """How well a grid keeps embedding-space neighbours together, against random placement.

    ``layout`` and ``random`` are k-NN preservations in [0, 1] (higher = neighbours kept
    closer) within grid ``radius``, ``random`` the mean over ``trials`` placements;
    ``label_layout`` and ``label_random`` the same-label fractions, None without labels.
    """

    k: int
    radius: int
    layout: float
    random: float
    trials: int
    label_layout: float | None = None
    label_random: float | None = None

    @property
    def ratio(self) -> float:
        """``layout`` / ``random``: above 1 the layout beats chance (inf when random is 0)."""
        return self.layout / self.random if self.random > 0 else math.inf

    @property
    def label_ratio(self) -> float | None:
        """``label_layout`` / ``label_random`` (inf when random is 0); None without labels."""
        if self.label_layout is None or self.label_random is None:
            return None
        return self.label_layout / self.label_random if self.label_random > 0 else math.inf

    def summary(self) -> str:
        """The figures in one line of words, for the CLI and the mosaic's footer."""
        text = (f"{self.k}-NN preservation (grid radius {self.radius}): {self.layout:.3f} vs "
                f"random {self.random:.3f} (x{self.ratio:.1f})")
        if self.label_ratio is not None:
            text += (f"; same-label grid neighbours {self.label_layout:.3f} vs random "
                     f"{self.label_random:.3f} (x{self.label_ratio:.1f})")
        return text

    def to_json(self) -> dict:
        """The ``quality`` object of ``grid.json``: every field, the ratios, ``random_trials``."""
        return {"k": self.k, "radius": self.radius, "layout": self.layout, "random": self.random,
                "ratio": self.ratio, "random_trials": self.trials,
                "label_layout": self.label_layout, "label_random": self.label_random,
                "label_ratio": self.label_ratio}


def neighbourhood_radius(k: int) -> int:
    """The smallest Chebyshev radius r ≥ 1 whose grid neighbourhood, (2r+1)² − 1 cells, holds
    at least ``k`` cells."""
    r = 1
    while (2 * r + 1) ** 2 - 1 < k:
        r += 1
    return r


def nearest_neighbours(vectors: np.ndarray, k: int, *, chunk: int = 1024) -> np.ndarray:
    """Each row's ``k`` nearest other rows of ``vectors`` (N×D), exact Euclidean.

    Distances are computed ``chunk`` rows at a time (memory ~ chunk·N). Returns an N×k int64
    array of row indices, nearest first; a row is never its own neighbour. k < N.
    """
    x = np.asarray(vectors, dtype=np.float64)
    sq = (x * x).sum(axis=1)
    out = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk]
        d = sq[start:start + chunk, None] + sq[None, :] - 2.0 * block @ x.T
        d[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(d, part, axis=1).argsort(axis=1, kind="stable")
        out[start:start + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def knn_preservation(neighbours: np.ndarray, cells: np.ndarray, radius: int) -> float:
    """Mean fraction of each image's embedding neighbours within ``radius`` of it on the grid.

    ``neighbours`` is N×k (from :func:`nearest_neighbours`), ``cells`` N×2 (row, col), the
    distance on the grid Chebyshev. Returns a fraction in [0, 1]; higher = neighbours kept closer.
    """
    gap = np.abs(cells[:, None, :] - cells[neighbours]).max(axis=2)
    return float((gap <= radius).mean())


def label_agreement(cells: np.ndarray, labels: Sequence[str], shape: tuple[int, int],
                    radius: int) -> float:
    """Fraction of (image, grid neighbour within ``radius``) pairs that share a label.

    ``cells`` (N×2, row and col) places the images on a ``shape`` = (rows, cols) grid,
    ``labels`` gives one label per image. Returns a fraction in [0, 1]; 0 when no image has a
    neighbour.
    """
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    occupant = np.full((shape[0] + 2 * radius, shape[1] + 2 * radius), -1, dtype=np.int64)
    occupant[cells[:, 0] + radius, cells[:, 1] + radius] = codes
    same = pairs = 0
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            if dr == dc == 0:
                continue
            other = occupant[cells[:, 0] + radius + dr, cells[:, 1] + radius + dc]
            filled = other >= 0
            pairs += int(filled.sum())
            same += int((other[filled] == codes[filled]).sum())
    return same / pairs if pairs else 0.0


def random_cells(n: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random placement of ``n`` images on distinct cells of a ``shape`` grid, drawn with
    ``rng``: an n×2 array of (row, col)."""
    return grid_cells(shape)[rng.permutation(shape[0] * shape[1])[:n]]


def grid_quality(vectors: np.ndarray, cells: np.ndarray, shape: tuple[int, int], *, k: int = 8,
                 labels: Sequence[str] | None = None, seed: int = 0, trials: int = 10
                 ) -> GridQuality:
    """k-NN preservation of a layout and of ``trials`` seeded random placements (mean).

    ``vectors`` (N×D) are the embeddings, ``cells`` (N×2) where the layout put them on the
    ``shape`` grid; ``k`` (clipped to N − 1) neighbours per image; ``labels`` (one per image)
    adds the same-label figures; ``seed`` draws the random placements. Returns the
    :class:`GridQuality`; OptionError for fewer than 2 images or k < 1.
    """
    n = len(cells)
    if n < 2:
        raise OptionError("grid quality needs at least 2 images")
    if k < 1:
        raise OptionError(f"k must be at least 1, got {k}")
    k = min(k, n - 1)
    radius = neighbourhood_radius(k)
    neighbours = nearest_neighbours(vectors, k)
    rng = np.random.default_rng(seed)
    placements = [random_cells(n, shape, rng) for _ in range(trials)]
    layout = knn_preservation(neighbours, cells, radius)
    random = float(np.mean([knn_preservation(neighbours, p, radius) for p in placements]))
    label_layout = label_random = None
    if labels is not None:
        label_layout = label_agreement(cells, labels, shape, radius)
        label_random = float(np.mean([label_agreement(p, labels, shape, radius)
                                      for p in placements]))
    return GridQuality(k=k, radius=radius, layout=layout, random=random, trials=trials,
                       label_layout=label_layout, label_random=label_random)
