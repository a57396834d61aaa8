"""How good a grid is: the field's DPQ_p, and mean k-NN preservation against random placements.

**DPQ_p** (Distance Preservation Quality; Barthel, Hezel, Jung, Schall, Computer Graphics Forum
2023, p = 16 by default), the measure the field reports for grid layouts: for every image, order
the other images by their grid distance to it (squared Euclidean between cells, ties broken by
feature distance) and take D_k, the mean feature distance (Euclidean) to its first k of them,
averaged over all images; ΔD_k = max(0, (D̄ − D_k)/D̄) with D̄ the mean distance of all pairs.
DPQ_p is the p-norm of ΔD over k = 1..N−1 divided by that of the ideal ordering (every image's
neighbours sorted by feature distance): 1 = every image's grid neighbours are its nearest
features, ~0.3 a random layout. Empty cells are left out (only occupied cells are neighbours).
Equal to ``vc_flas.metrics.distance_preservation_quality`` (the authors' code) within 1e-6;
computed here in float32 blocks of rows (memory ~ 32·chunk·N bytes), so N = 16,384 fits.

**k-NN preservation**: for each image, the fraction of its k nearest neighbours in embedding
space that sit within Chebyshev radius r of it on the grid, r the smallest radius whose
neighbourhood holds at least k cells — for the layout and for seeded random placements; their
ratio says how much the layout helps. With labels, also the fraction of grid neighbours that
share an image's label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from explain.errors import OptionError
from explain.grid.layout import grid_cells

DPQ_P = 16
DPQ_BLOCK_BYTES = 2**27


@dataclass(frozen=True)
class GridQuality:
    """How well a grid keeps embedding-space neighbours together, against random placement.

    ``layout`` and ``random`` are k-NN preservations in [0, 1] (higher = neighbours kept
    closer) within grid ``radius``, ``random`` the mean over ``trials`` placements;
    ``label_layout`` and ``label_random`` the same-label fractions, None without labels;
    ``dpq`` the layout's DPQ_``dpq_p`` in [0, 1] (higher = better; :func:`dpq_scores`).
    """

    k: int
    radius: int
    layout: float
    random: float
    trials: int
    label_layout: float | None = None
    label_random: float | None = None
    dpq: float | None = None
    dpq_p: int = DPQ_P

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
        text = f"DPQ{self.dpq_p} {self.dpq:.3f}; " if self.dpq is not None else ""
        text += (f"{self.k}-NN preservation (grid radius {self.radius}): {self.layout:.3f} vs "
                 f"random {self.random:.3f} (x{self.ratio:.1f})")
        if self.label_ratio is not None:
            text += (f"; same-label grid neighbours {self.label_layout:.3f} vs random "
                     f"{self.label_random:.3f} (x{self.label_ratio:.1f})")
        return text

    def to_json(self) -> dict:
        """The ``quality`` object of ``grid.json``: every field, the ratios, ``random_trials``."""
        return {"dpq": self.dpq, "dpq_p": self.dpq_p, "k": self.k, "radius": self.radius,
                "layout": self.layout, "random": self.random,
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
    """Each row's ``k`` nearest other rows of ``vectors`` (N×D), Euclidean.

    The vectors are centred and compared in float32 (half the time and memory of float64;
    the ranking differs only between neighbours at equal distance to ~1e-7), ``chunk`` rows
    at a time (memory ~ 12·chunk·N bytes: the block and its argpartition). Returns an N×k
    int64 array of row indices, nearest first; a row is never its own neighbour. k < N.
    """
    x = np.asarray(vectors, dtype=np.float32)
    x = x - x.mean(axis=0, dtype=np.float64).astype(np.float32)
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk]
        d = block @ x.T
        d *= -2.0
        d += sq[None, :]  # the row's own |x|² is the same for all its candidates: left out
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


def _block_rows(n: int) -> int:
    return int(max(8, min(1024, DPQ_BLOCK_BYTES // (32 * max(n, 1)))))


def dpq_bytes(n: int) -> int:
    """Peak bytes of :func:`dpq_scores`' distance blocks for ``n`` vectors (about 32 bytes per
    distance of a block of rows: the float32 block, its sorted copy, the int64 sort keys and
    the distances' bits)."""
    return 32 * min(n, _block_rows(n)) * n


def _distance_block(x: np.ndarray, sq: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Euclidean distances (float32) of rows lo..hi of ``x`` to every row; exact 0 to itself."""
    d = sq[lo:hi, None] + sq[None, :] - 2.0 * (x[lo:hi] @ x.T)
    np.maximum(d, 0.0, out=d)
    np.sqrt(d, out=d)
    rows = np.arange(hi - lo)
    d[rows, rows + lo] = 0.0
    return d


def dpq_scores(vectors: np.ndarray, layouts: Sequence[np.ndarray], *, p: float = DPQ_P
               ) -> list[float]:
    """DPQ_``p`` of each of ``layouts`` of the same images (see the module docstring).

    ``vectors`` (N×D) are the features, each layout an N×2 array of distinct (row, col) cells,
    aligned with them. Distances are float32, computed a block of rows at a time and shared by
    all layouts (the costly part, ~N²·D, is paid once); sums are float64. Returns one value in
    [0, 1] per layout (1.0 when N < 3 or all vectors are equal: nothing to preserve).
    OptionError for a layout of the wrong shape.
    """
    return dpq_and_neighbours(vectors, layouts, 0, p=p)[0]


def dpq_and_neighbours(vectors: np.ndarray, layouts: Sequence[np.ndarray], k: int, *,
                       p: float = DPQ_P) -> tuple[list[float], np.ndarray | None]:
    """:func:`dpq_scores` and, from the same distance blocks, each row's ``k`` nearest other
    rows (as :func:`nearest_neighbours` gives them, N×k, nearest first; None for k = 0 or
    N < 3): the quality figures then need no second pass over the N² distances (at 16,384
    pixel vectors, one N²·D product is about a third of the grid's CPU time)."""
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    cells = [np.asarray(c, dtype=np.int64) for c in layouts]
    if any(c.shape != (n, 2) for c in cells):
        raise OptionError(f"each layout must be an Nx2 array of cells for N = {n} vectors")
    if n < 3 or k >= n:
        return [1.0] * len(cells) if n < 3 else dpq_scores(vectors, layouts, p=p), None
    near = np.empty((n, k), dtype=np.int64) if k else None
    x = x - x.mean(axis=0, dtype=np.float64).astype(np.float32)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64).astype(np.float32)
    total, ideal = 0.0, np.zeros(n - 1)
    by_grid = [np.zeros(n - 1) for _ in cells]
    step = _block_rows(n)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        d = _distance_block(x, sq, lo, hi)
        total += float(d.sum(dtype=np.float64))
        ideal += np.sort(d, axis=1)[:, 1:].sum(axis=0, dtype=np.float64)
        # a distance's float32 bits, sign cleared, rank as the distance does: the sort key
        # (grid distance << 32 | bits) orders by grid distance, ties by feature distance
        bits = (d.view(np.uint32) & np.uint32(0x7FFFFFFF)).astype(np.int64)
        for c, acc in zip(cells, by_grid, strict=True):
            key = ((c[lo:hi, None, 0] - c[None, :, 0]) ** 2
                   + (c[lo:hi, None, 1] - c[None, :, 1]) ** 2) << 32
            key |= bits
            key.sort(axis=1)  # itself first: grid distance 0
            acc += key[:, 1:].astype(np.uint32).view(np.float32).sum(axis=0, dtype=np.float64)
        if near is not None:
            d[np.arange(hi - lo), np.arange(lo, hi)] = np.inf
            part = np.argpartition(d, k - 1, axis=1)[:, :k]
            order = np.take_along_axis(d, part, axis=1).argsort(axis=1, kind="stable")
            near[lo:hi] = np.take_along_axis(part, order, axis=1)
    mean = total / (n * (n - 1))
    if mean <= 0:
        return [1.0] * len(cells), near
    k = np.arange(1, n)

    def gain(column_sums: np.ndarray) -> np.ndarray:
        return np.clip((mean - np.cumsum(column_sums) / (k * n)) / mean, 0.0, None)

    best = float(np.linalg.norm(gain(ideal), ord=p))
    if best == 0:
        return [1.0] * len(cells), near
    return [float(np.linalg.norm(gain(acc), ord=p)) / best for acc in by_grid], near


def random_cells(n: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random placement of ``n`` images on distinct cells of a ``shape`` grid, drawn with
    ``rng``: an n×2 array of (row, col)."""
    return grid_cells(shape)[rng.permutation(shape[0] * shape[1])[:n]]


def grid_quality(vectors: np.ndarray, cells: np.ndarray, shape: tuple[int, int], *, k: int = 8,
                 labels: Sequence[str] | None = None, seed: int = 0, trials: int = 10,
                 dpq: float | None = None, neighbours: np.ndarray | None = None
                 ) -> GridQuality:
    """DPQ16 and k-NN preservation of a layout, this against ``trials`` seeded random
    placements (mean).

    ``vectors`` (N×D) are the embeddings, ``cells`` (N×2) where the layout put them on the
    ``shape`` grid; ``k`` (clipped to N − 1) neighbours per image; ``labels`` (one per image)
    adds the same-label figures; ``seed`` draws the random placements; ``dpq``, when already
    measured (:func:`dpq_scores`), is taken as is, and so are ``neighbours`` (N×k, from
    :func:`dpq_and_neighbours`) when they have k columns. Returns the :class:`GridQuality`;
    OptionError for fewer than 2 images or k < 1.
    """
    n = len(cells)
    if n < 2:
        raise OptionError("grid quality needs at least 2 images")
    if k < 1:
        raise OptionError(f"k must be at least 1, got {k}")
    k = min(k, n - 1)
    radius = neighbourhood_radius(k)
    if neighbours is None or neighbours.shape != (n, k):
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
    if dpq is None:
        dpq = dpq_scores(vectors, [cells])[0]
    return GridQuality(k=k, radius=radius, layout=layout, random=random, trials=trials,
                       label_layout=label_layout, label_random=label_random, dpq=dpq)
