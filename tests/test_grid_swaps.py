"""The swap polish (explain.grid.swaps): known answers on small grids, never a lower DPQ16,
holes, the size limit and its memory estimate."""

from __future__ import annotations

import numpy as np
import pytest

from explain.errors import OptionError
from explain.grid import (
    SWAP_MAX,
    dpq_scores,
    flas_layout,
    grid_bytes,
    grid_cells,
    random_cells,
    swap_bytes,
    swap_polish,
)
from explain.grid.swaps import rank_weights


def test_a_perfect_gradient_is_left_as_it_is():
    cells = grid_cells((8, 8))
    gradient = cells.astype(np.float32)
    order = np.random.default_rng(0).permutation(64)
    np.testing.assert_array_equal(swap_polish(gradient[order], cells[order], (8, 8)),
                                  cells[order])


def test_a_locally_shuffled_gradient_gets_strictly_better():
    cells = grid_cells((8, 8))
    gradient = cells.astype(np.float32)
    shuffled = cells.copy()
    for a, b in [(0, 9), (20, 21), (35, 43), (50, 59), (13, 22)]:  # swaps within radius 2
        shuffled[[a, b]] = shuffled[[b, a]]
    polished = swap_polish(gradient, shuffled, (8, 8))
    before, after = dpq_scores(gradient, [shuffled, polished])
    assert before < 1.0
    assert after > before
    assert after == pytest.approx(1.0)  # each displaced pair is within reach: fully undone


@pytest.mark.parametrize("seed", range(4))
def test_the_polish_never_lowers_dpq_on_random_colours(seed):
    rng = np.random.default_rng(seed)
    colours = rng.random((60, 3))  # 60 on an 8x8 grid: 4 empty cells
    for start in (random_cells(60, (8, 8), rng), flas_layout(colours, (8, 8), seed=seed)):
        polished = swap_polish(colours, start, (8, 8))
        assert polished.shape == (60, 2)
        assert len({tuple(c) for c in polished}) == 60
        assert ((polished >= 0) & (polished < 8)).all()
        before, after = dpq_scores(colours, [start, polished])
        assert after > before


def test_rank_weights_fall_from_the_nearest_neighbour():
    colours = np.random.default_rng(5).random((64, 3))
    cells = flas_layout(colours, (8, 8))
    d = np.sqrt(((colours[:, None] - colours[None]) ** 2).sum(-1))
    c = rank_weights(d, cells)
    assert c[0] == 1.0
    assert (np.diff(c) <= 0).all() and c[-1] > 0


def test_the_size_limit_and_the_memory_estimate():
    n = SWAP_MAX + 1
    with pytest.raises(OptionError, match="limited to"):
        swap_polish(np.zeros((n, 2)), np.zeros((n, 2), int), (n, 1))
    assert swap_bytes(2048) > 4 * 2048 ** 2
    assert grid_bytes(1024, (32, 32), 32, "tsne-jv+polish") >= swap_bytes(1024)
