"""The window grid (DESIGN.md "Definitions") and the per-pixel mean over covering windows."""

from __future__ import annotations

import numpy as np
import pytest

from explain.errors import OptionError
from explain.windows import axis_starts, default_batch_size, window_grid, window_mean


def coverage(shape, windows) -> np.ndarray:
    cov = np.zeros(shape, dtype=int)
    for t, le, b, r in windows:
        cov[t:b, le:r] += 1
    return cov


def test_stride_dividing_gives_plain_grid():
    assert axis_starts(256, 64, 64).tolist() == [0, 64, 128, 192]
    assert axis_starts(256, 64, 48).tolist() == [0, 48, 96, 144, 192]


def test_stride_not_dividing_adds_one_flush_window():
    assert axis_starts(512, 64, 48).tolist() == [0, 48, 96, 144, 192, 240, 288, 336, 384, 432,
                                                  448]
    assert axis_starts(10, 4, 4).tolist() == [0, 4, 6]


def test_stride_larger_than_box_is_refused_it_would_leave_gaps():
    with pytest.raises(OptionError, match="larger than box"):
        window_grid((20, 20), 3, 8)
    with pytest.raises(OptionError, match="larger than box"):
        window_grid((20, 20), (8, 3), (4, 4))


def test_box_larger_than_image_is_clipped():
    w = window_grid((30, 40), 64, 48)
    assert w.tolist() == [[0, 0, 30, 40]]
    assert window_grid((30, 100), 64, 48).tolist() == [[0, 0, 30, 64], [0, 36, 30, 100]]


def test_box_one_stride_one_is_every_pixel():
    w = window_grid((3, 4), 1, 1)
    assert len(w) == 12
    assert np.array_equal(coverage((3, 4), w), np.ones((3, 4), dtype=int))


@pytest.mark.parametrize("shape,box,stride", [((37, 53), 10, 7), ((53, 37), (10, 9), (3, 9)),
                                              ((5, 200), 64, 48), ((64, 64), 64, 1)])
def test_non_square_grids_cover_every_pixel_rows_first(shape, box, stride):
    w = window_grid(shape, box, stride)
    assert (coverage(shape, w) >= 1).all()
    assert (w[:, 2] <= shape[0]).all() and (w[:, 3] <= shape[1]).all()
    assert np.array_equal(w[:, 0], np.sort(w[:, 0], kind="stable"))
    sizes = w[:, 2:] - w[:, :2]
    assert (sizes == sizes[0]).all()


def test_bad_box_or_stride_is_an_option_error():
    for box, stride in ((0, 4), (4, 0), ((4, 4, 4), 2), (4.5, 2), (-1, 1)):
        with pytest.raises(OptionError):
            window_grid((10, 10), box, stride)


def test_window_mean_matches_explicit_loops():
    rng = np.random.default_rng(0)
    shape = (23, 31)
    w = window_grid(shape, (7, 5), (4, 3))
    vals = rng.normal(size=len(w))
    total, count = np.zeros(shape), np.zeros(shape)
    for (t, le, b, r), v in zip(w, vals, strict=True):
        total[t:b, le:r] += v
        count[t:b, le:r] += 1
    assert np.allclose(window_mean(shape, w, vals), total / count, atol=1e-12)


def test_default_batch_size_bounded_by_input_size():
    import torch

    assert default_batch_size(torch.device("cpu"), (256, 256)) == 16
    assert default_batch_size(torch.device("cuda"), (256, 256)) == 64
    assert default_batch_size(torch.device("cpu"), (6000, 6000)) == 1
