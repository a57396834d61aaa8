"""Grid sorting without a dense N×N matrix: FLAS, a local polish, and a windowed snap.

All three repeat one step over a tiling of the grid by small square tiles (at a random offset
each time): the images of each tile are re-assigned to the tile's occupied cells by the exact
least-cost assignment (scipy's ``linear_sum_assignment``). Empty cells never move. A tile is
``window``×``window`` cells ``stride`` apart, so one small assignment can move an image
window·stride cells.

**FLAS** (Fast Linear Assignment Sorting; Barthel, Hezel, Jung, Schall, Computer Graphics
Forum 2023): start from the input order; each step blurs the grid of feature vectors with a
box filter of radius r (mirrored borders, empty cells weighted 0.01), and the cost of image i
in cell c is the squared distance of its vector to the blurred vector at c; r decays from half
the grid's side to 1 by ``radius_decay`` per step, the tiles' stride follows r (a tile spans
about the filter's 2r+1 cells, as FLAS's swap area does).

**Polish**: the same steps started from an existing layout with a SMALL radius (2, 2, 1, 1, …),
so the layout's global order stays and only local order improves; the caller keeps the result
only if it measures better.

**Snap** puts 2-D points (t-SNE) on the grid: a legal start (points by y into rows, each row by
x), then steps whose cost is the squared distance of a point to a cell centre, at strides from
coarse to 1 — memory and time linear in N.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.optimize import linear_sum_assignment

from explain.grid.layout import grid_cells, scaled_points

HOLE_WEIGHT = 0.01
WINDOW = 5
POLISH_RADII = (2, 2, 1, 1, 1, 1)
SNAP_ROUNDS = 4

LAYOUT_DIMS = 128
PCA_OVERSAMPLE = 16
PCA_POWER = 2

Cost = Callable[[np.ndarray, np.ndarray], np.ndarray]


def principal_components(vectors: np.ndarray, dims: int = LAYOUT_DIMS, *, seed: int = 0
                         ) -> np.ndarray:
    """``vectors`` (N×D) centred and projected on their first ``dims`` principal axes, as
    float32 N×min(dims, N, D); unchanged (as float32) when D ≤ ``dims``.

    The axes come from a randomised PCA (Halko, Martinsson, Tropp 2011, algorithm 4.4): a
    seeded Gaussian sketch of ``dims`` + :data:`PCA_OVERSAMPLE` columns, :data:`PCA_POWER`
    power iterations each re-orthonormalised (QR of the N×k block only), and the exact
    eigenvectors of the small k×k projection, in float32: O(N·D·dims) time, no D×D matrix
    (a dense ``eigh`` on the 3,072×3,072 covariance of raw pixels took 20 s). On a spectrum
    that decays (pixels, features) the variance kept is the exact top-``dims`` variance to
    within 1 % (``tests/test_grid_layouts.py``); where the sketch spans every dimension it is
    exact.
    Squared distances between rows shrink by the variance left out; the layout search (FLAS,
    polish) needs only their ranking, so a copy of 128 dims sorts about as well as 1,024 at a
    fraction of the cost (16,384 crop features: FLAS 4 s instead of 30 s, DPQ16 0.897 instead
    of 0.900 at the same radius decay; DPQ is measured on the full vectors)."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] <= dims:
        return x
    x = x - x.mean(axis=0, dtype=np.float64).astype(np.float32)
    width = min(dims + PCA_OVERSAMPLE, *x.shape)
    sketch = np.random.default_rng(seed).standard_normal((x.shape[1], width), dtype=np.float32)
    basis = np.linalg.qr(x @ sketch)[0]
    for _ in range(PCA_POWER):
        basis = np.linalg.qr(x @ (x.T @ basis))[0]
    back = x.T @ basis  # B = basisᵀx = U S Vᵀ, so x V = basis U S with B Bᵀ = U S² Uᵀ
    values, u = np.linalg.eigh((back.T @ back).astype(np.float64))
    keep = min(dims, width)
    top = u[:, ::-1][:, :keep] * np.sqrt(np.clip(values[::-1][:keep], 0.0, None))
    return basis @ top.astype(np.float32)


def _tiles(shape: tuple[int, int], window: int, stride: int, rng: np.random.Generator
           ) -> np.ndarray:
    """Every cell's tile id (flat, rows·cols) for ``window``×``window`` tiles of cells
    ``stride`` apart, shifted by a random offset: cells in the same block of window·stride
    cells a side and with the same (row, col) modulo ``stride`` share a tile."""
    span = window * stride
    dy, dx = rng.integers(0, span, size=2)
    r, c = np.divmod(np.arange(shape[0] * shape[1]), shape[1])
    across = (shape[1] + span) // span + 1
    block = ((r + dy) // span) * across + (c + dx) // span
    return (block * stride + (r + dy) % stride) * stride + (c + dx) % stride


def _assign_tiles(occupant: np.ndarray, tiles: np.ndarray, cost_of: Cost, *,
                  holes_move: bool = False) -> None:
    """Re-assign the images of each tile to its cells at least total cost, in place.

    ``occupant`` (rows·cols: image index or −1) is updated; ``cost_of(images, cells)`` is the
    len(images)×len(cells) cost of image i in flat cell j. The images go to the tile's
    occupied cells, or with ``holes_move`` to any of its cells (empty cells may move).
    """
    cells = np.arange(len(occupant)) if holes_move else np.flatnonzero(occupant >= 0)
    order = cells[np.argsort(tiles[cells], kind="stable")]
    for tile in np.split(order, np.flatnonzero(np.diff(tiles[order])) + 1):
        images = occupant[tile]
        images = images[images >= 0]
        if len(images) and len(tile) > 1:
            _, col = linear_sum_assignment(cost_of(images, tile))
            occupant[tile] = -1
            occupant[tile[col]] = images


def _occupancy(cells: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    occupant = np.full(shape[0] * shape[1], -1, dtype=np.int64)
    occupant[cells[:, 0] * shape[1] + cells[:, 1]] = np.arange(len(cells))
    return occupant


def _cells_of(occupant: np.ndarray, n: int, shape: tuple[int, int]) -> np.ndarray:
    out = np.empty((n, 2), dtype=np.int64)
    filled = np.flatnonzero(occupant >= 0)
    out[occupant[filled]] = np.stack(np.divmod(filled, shape[1]), axis=1)
    return out


def _sort_steps(x: np.ndarray, occupant: np.ndarray, shape: tuple[int, int],
                radii: Sequence[int], window: int, rng: np.random.Generator) -> None:
    """One blur-and-reassign step per radius of ``radii`` on ``occupant``, in place."""
    rows, cols = shape
    norms = np.einsum("ij,ij->i", x, x)
    for radius in radii:
        filled = occupant >= 0
        weight = np.where(filled, 1.0, HOLE_WEIGHT).astype(np.float32).reshape(rows, cols)
        plane = np.zeros((rows * cols, x.shape[1]), dtype=np.float32)
        plane[filled] = x[occupant[filled]]
        size = (min(2 * radius + 1, rows), min(2 * radius + 1, cols))
        blurred = uniform_filter(plane.reshape(rows, cols, -1) * weight[..., None],
                                 size=(*size, 1), mode="mirror")
        blurred /= uniform_filter(weight, size=size, mode="mirror")[..., None]
        target = blurred.reshape(rows * cols, -1)

        def cost(images: np.ndarray, flat: np.ndarray, target: np.ndarray = target
                 ) -> np.ndarray:
            t = target[flat]
            return norms[images, None] - 2.0 * x[images] @ t.T + np.einsum("ij,ij->i", t, t)

        stride = max(1, (2 * radius + 1) // window)
        _assign_tiles(occupant, _tiles(shape, window, stride, rng), cost)


def flas_radii(shape: tuple[int, int], radius_decay: float) -> list[int]:
    """FLAS's filter radii for a ``shape`` grid: from half the longer side, times
    ``radius_decay`` (< 1) each step, while above 1; each rounded, at least 1."""
    radius, out = max(shape) * 0.5, []
    while True:
        out.append(max(1, round(radius)))
        radius *= radius_decay
        if radius <= 1:
            return out


def flas_layout(vectors: np.ndarray, shape: tuple[int, int], *, seed: int = 0,
                radius_decay: float = 0.93, window: int = WINDOW) -> np.ndarray:
    """Cells for ``vectors`` (N×D, N ≤ rows·cols) on a ``shape`` = (rows, cols) grid by FLAS
    (see the module docstring), from the input order.

    ``radius_decay`` (in (0, 1); nearer 1 = more steps, slower and better), ``window`` the
    side of the tiles solved exactly, ``seed`` the tilings' offsets. Empty cells are the last
    ones in row-major order. Returns an N×2 int64 array of distinct (row, col).
    """
    x = np.asarray(vectors, dtype=np.float32)
    occupant = _occupancy(grid_cells(shape)[:len(x)], shape)
    _sort_steps(x, occupant, shape, flas_radii(shape, radius_decay), window,
                np.random.default_rng(seed))
    return _cells_of(occupant, len(x), shape)


def polish_layout(vectors: np.ndarray, cells: np.ndarray, shape: tuple[int, int], *,
                  radii: Sequence[int] = POLISH_RADII, window: int = WINDOW, seed: int = 0
                  ) -> np.ndarray:
    """Improve a layout locally: one FLAS step per radius of ``radii`` (small ones).

    ``vectors`` (N×D) and ``cells`` (N×2 distinct (row, col) on the ``shape`` grid) are the
    layout to start from; ``window`` is the side of the tiles solved exactly; ``seed`` draws
    the tilings' offsets. Returns a new N×2 int64 array of cells (the same occupied cells).
    """
    x = np.asarray(vectors, dtype=np.float32)
    occupant = _occupancy(np.asarray(cells, dtype=np.int64), shape)
    _sort_steps(x, occupant, shape, radii, window, np.random.default_rng(seed))
    return _cells_of(occupant, len(x), shape)


def _bisect(points: np.ndarray, members: np.ndarray, box: tuple[int, int, int, int],
            occupant: np.ndarray, cols: int) -> None:
    """Fill the cells of ``box`` = (top, bottom, left, right) with ``members`` (no more than
    it holds): split the box's longer side in half, the points sorted along that axis, each
    half getting its share of the points by its share of the cells; recurse."""
    top, bottom, left, right = box
    height, width = bottom - top, right - left
    if len(members) == 0:
        return
    if height * width == 1:
        occupant[top * cols + left] = members[0]
        return
    axis = 1 if height >= width else 0  # split rows along y, columns along x
    ranked = members[np.argsort(points[members, axis], kind="stable")]
    if axis == 1:
        boxes = ((top, top + height // 2, left, right), (top + height // 2, bottom, left, right))
    else:
        boxes = ((top, bottom, left, left + width // 2), (top, bottom, left + width // 2, right))
    first = (boxes[0][1] - boxes[0][0]) * (boxes[0][3] - boxes[0][2])
    take = min(first, max(len(members) - (height * width - first),
                          round(len(members) * first / (height * width))))
    _bisect(points, ranked[:take], boxes[0], occupant, cols)
    _bisect(points, ranked[take:], boxes[1], occupant, cols)


def snap_to_grid(points: np.ndarray, shape: tuple[int, int], *, seed: int = 0,
                 window: int = WINDOW, rounds: int = SNAP_ROUNDS) -> np.ndarray:
    """Cells for 2-D ``points`` (N×2, x → column, y → row; N ≤ rows·cols) with no N×N matrix.

    The points are scaled to the grid as in :func:`explain.grid.layout.assign_to_grid`; the
    start splits the grid and the points in halves recursively (each half of the cells gets
    its share of the points, sorted along the split axis); then tiled exact assignments
    (``window``, offsets drawn with ``seed``; empty cells may move) at strides halving from the
    grid's side to 1, and ``rounds`` more at stride 1, lower the total squared distance point
    → cell centre. Returns an N×2 int64 array of
    distinct (row, col).
    """
    scaled = scaled_points(points, shape)
    n, (rows, cols) = len(scaled), shape
    occupant = np.full(rows * cols, -1, dtype=np.int64)
    _bisect(scaled, np.arange(n), (0, rows, 0, cols), occupant, cols)
    centres = grid_cells(shape)[:, ::-1].astype(np.float64)
    rng = np.random.default_rng(seed)

    def cost(images: np.ndarray, flat: np.ndarray) -> np.ndarray:
        return ((scaled[images, None, :] - centres[None, flat, :]) ** 2).sum(axis=2)

    strides, stride = [], max(rows, cols) // window
    while stride > 1:
        strides.append(stride)
        stride //= 2
    for stride in [*strides, *[1] * rounds]:
        _assign_tiles(occupant, _tiles(shape, window, stride, rng), cost, holes_move=True)
    return _cells_of(occupant, n, shape)
