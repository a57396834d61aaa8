"""A swap polish that optimises DPQ's own objective, for layouts of up to :data:`SWAP_MAX` images.

DPQ_p (:func:`explain.grid.quality.dpq_scores`) ranks each image's grid neighbours by grid
distance (ties by feature distance) and scores the p-norm of the gains of the mean cumulative
neighbour distances D_k. Its derivative with respect to the distance at neighbour rank j is
proportional to c_j = Σ_{k≥j} gain_k^(p−1) / k; for p = 16 these weights fall off fast (on real
layouts c_2 ≈ 0.2·c_1, c_8 < 0.01·c_1), so DPQ16 is, to first order, the weighted sum, over
images, of the sorted feature distances to its 8 nearest cells (the 4 sides first, then the 4
corners, each ring sorted), weighted by c_1…c_8.

The polish minimises that sum by swapping the contents of two cells at most :data:`SWAP_RADIUS`
apart (a cell may be empty): each sweep evaluates the exact change of the sum for every such
swap at once (only the two cells and their 8 neighbours change cost), then applies the best
improving swaps greedily, skipping any within 2 cells (Chebyshev) of one already applied, so
that every applied change is exactly the one evaluated. Sweeps stop when none improves.
It needs the N×N float32 feature distances (4·N² bytes), less than the dense assignment of
tsne-jv it follows.
"""

from __future__ import annotations

import numpy as np

from explain.errors import OptionError
from explain.grid.quality import DPQ_P

SWAP_MAX = 4096
SWAP_RADIUS = 2
SWAP_SWEEPS = 30
_RANKS = 8
_RING = np.array([(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)])
_BOX = np.concatenate([[(0, 0)], _RING])
_PAD = 2
_CHUNK = 512  # candidate swaps evaluated at a time (~8 KB of gathered arrays per swap)


def swap_bytes(n: int) -> int:
    """Peak bytes of :func:`swap_polish` for ``n`` images: the N×N float32 distances, the
    rank weights' blocks and the candidate chunks."""
    return 4 * n * n + 8 * 3 * min(256, n) * n + 8192 * min(_CHUNK, 12 * n)


def feature_distances(vectors: np.ndarray) -> np.ndarray:
    """N×N float32 Euclidean distances of ``vectors`` (N×D), centred as DPQ centres them,
    exact 0 on the diagonal."""
    x = np.asarray(vectors, dtype=np.float32)
    x = x - x.mean(axis=0, dtype=np.float64).astype(np.float32)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64).astype(np.float32)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(d, 0.0, out=d)
    np.sqrt(d, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def rank_weights(distances: np.ndarray, cells: np.ndarray, *, p: float = DPQ_P,
                 ranks: int = _RANKS) -> np.ndarray:
    """DPQ_p's weights c_1…c_ranks of the neighbour ranks at the layout ``cells`` (N×2), for
    the N×N ``distances``: c_j ∝ Σ_{k≥j} gain_k^(p−1)/k, scaled to c_1 = 1 (see the module
    docstring). All ones when the layout has no gain at all."""
    d = distances
    n = len(d)
    cells = np.asarray(cells, dtype=np.int64)
    scale = float(d.max()) * 1.0001 + 1e-30
    sums = np.zeros(n - 1)
    for lo in range(0, n, 256):
        hi = min(n, lo + 256)
        grid = ((cells[lo:hi, None, :] - cells[None, :, :]) ** 2).sum(axis=2)
        key = grid + d[lo:hi] / scale  # grid distance first, ties by feature distance
        order = np.argsort(key, axis=1)[:, 1:]
        sums += np.take_along_axis(d[lo:hi], order, axis=1).sum(axis=0, dtype=np.float64)
    k = np.arange(1, n)
    mean = float(d.sum(dtype=np.float64)) / (n * (n - 1))
    gain = np.clip((mean - np.cumsum(sums) / (k * n)) / max(mean, 1e-30), 0.0, None)
    c = np.cumsum((gain ** (p - 1) / k)[::-1])[::-1][:ranks]
    out = np.ones(ranks)
    if c.size and c[0] > 0:
        out[:c.size] = c / c[0]
    return out


def _costs(distances: np.ndarray, weights: np.ndarray, item: np.ndarray, near: np.ndarray
           ) -> np.ndarray:
    """Cost of cells holding ``item`` (…) with the 8 neighbours ``near`` (…×8, −1 empty):
    sides then corners, each ring sorted, missing ones dropped, times the rank weights."""
    valid = (near >= 0) & (item[..., None] >= 0)
    d = distances[np.maximum(item, 0)[..., None], np.maximum(near, 0)]
    d = np.where(valid, d, np.inf)
    ranked = np.concatenate([np.sort(d[..., :4], axis=-1), np.sort(d[..., 4:], axis=-1)], axis=-1)
    ranked = np.take_along_axis(ranked, np.argsort(np.isinf(ranked), axis=-1, kind="stable"),
                                axis=-1)
    return (np.where(np.isinf(ranked), 0.0, ranked) * weights[:ranked.shape[-1]]).sum(axis=-1)


def _deltas(occ: np.ndarray, distances: np.ndarray, weights: np.ndarray, a: np.ndarray,
            b: np.ndarray) -> np.ndarray:
    """Exact change of the polish's cost for swapping the contents of padded cells a[i] and
    b[i] (each an M×2 array), one swap at a time."""
    qy = np.concatenate([a[:, None, 0] + _BOX[:, 0], b[:, None, 0] + _BOX[:, 0]], axis=1)
    qx = np.concatenate([a[:, None, 1] + _BOX[:, 1], b[:, None, 1] + _BOX[:, 1]], axis=1)
    flat = qy * occ.shape[1] + qx
    order = np.argsort(flat, axis=1, kind="stable")
    ranked = np.take_along_axis(flat, order, axis=1)
    repeat = np.zeros_like(flat, dtype=bool)  # a cell near both a and b counts once
    np.put_along_axis(repeat, order, np.concatenate(
        [np.zeros((len(flat), 1), dtype=bool), ranked[:, 1:] == ranked[:, :-1]], axis=1), axis=1)
    ny, nx = qy[..., None] + _RING[:, 0], qx[..., None] + _RING[:, 1]
    before = _costs(distances, weights, occ[qy, qx], occ[ny, nx])
    ia, ib = occ[a[:, 0], a[:, 1]], occ[b[:, 0], b[:, 1]]

    def swapped(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        shape = (-1,) + (1,) * (yy.ndim - 1)
        at_a = (yy == a[:, 0].reshape(shape)) & (xx == a[:, 1].reshape(shape))
        at_b = (yy == b[:, 0].reshape(shape)) & (xx == b[:, 1].reshape(shape))
        return np.where(at_a, ib.reshape(shape), np.where(at_b, ia.reshape(shape), occ[yy, xx]))

    after = _costs(distances, weights, swapped(qy, qx), swapped(ny, nx))
    return np.where(repeat, 0.0, after - before).sum(axis=1)


def swap_polish(vectors: np.ndarray, cells: np.ndarray, shape: tuple[int, int], *,
                radius: int = SWAP_RADIUS, sweeps: int = SWAP_SWEEPS, p: float = DPQ_P
                ) -> np.ndarray:
    """Raise a layout's DPQ_p by swaps of cells at most ``radius`` apart (module docstring).

    ``vectors`` (N×D, N ≤ :data:`SWAP_MAX`) are the features, ``cells`` (N×2 distinct
    (row, col) on the ``shape`` grid) the layout to start from; at most ``sweeps`` sweeps.
    Deterministic. Returns a new N×2 int64 array of cells (empty cells may move); the caller
    keeps it only if it measures better. OptionError beyond SWAP_MAX images.
    """
    cells = np.asarray(cells, dtype=np.int64)
    n = len(cells)
    if n > SWAP_MAX:
        raise OptionError(f"the swap polish holds an {n}x{n} distance matrix; it is limited to "
                          f"{SWAP_MAX} images: use --layout flas or auto")
    if n < 3:
        return cells.copy()
    distances = feature_distances(vectors)
    weights = rank_weights(distances, cells, p=p)
    rows, cols = shape
    occ = np.full((rows + 2 * _PAD, cols + 2 * _PAD), -1, dtype=np.int64)
    occ[cells[:, 0] + _PAD, cells[:, 1] + _PAD] = np.arange(n)
    here = np.argwhere(np.ones(shape, dtype=bool)) + _PAD
    pairs = []
    for dy in range(radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy, dx) > (0, 0) and dy * dy + dx * dx <= radius * radius:
                there = here + (dy, dx)
                inside = ((there[:, 0] < rows + _PAD) & (there[:, 1] >= _PAD)
                          & (there[:, 1] < cols + _PAD))
                pairs.append(np.concatenate([here[inside], there[inside]], axis=1))
    a_all, b_all = np.split(np.concatenate(pairs), 2, axis=1)
    for _ in range(sweeps):
        live = (occ[a_all[:, 0], a_all[:, 1]] >= 0) | (occ[b_all[:, 0], b_all[:, 1]] >= 0)
        a, b = a_all[live], b_all[live]
        delta = np.concatenate([_deltas(occ, distances, weights, a[s:s + _CHUNK],
                                        b[s:s + _CHUNK]) for s in range(0, len(a), _CHUNK)])
        better = np.flatnonzero(delta < -1e-7 * weights[0])
        better = better[np.argsort(delta[better], kind="stable")]
        locked = np.zeros(occ.shape, dtype=bool)
        applied = 0
        for i in better:
            (ay, ax), (by, bx) = a[i], b[i]
            if locked[ay, ax] or locked[by, bx]:
                continue
            occ[ay, ax], occ[by, bx] = occ[by, bx], occ[ay, ax]
            locked[ay - 2:ay + 3, ax - 2:ax + 3] = True
            locked[by - 2:by + 3, bx - 2:bx + 3] = True
            applied += 1
        if not applied:
            break
    out = np.empty((n, 2), dtype=np.int64)
    filled = np.argwhere(occ >= 0)
    out[occ[filled[:, 0], filled[:, 1]]] = filled - _PAD
    return out
