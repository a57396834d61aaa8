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


def _summed_area_over_every_pixel(shape, windows, values):
    """window_mean as it was: the corner grid over every pixel, summed whole."""
    h, w = shape
    t, le, b, r = (windows[:, i] for i in range(4))
    total, count = np.zeros((h + 1, w + 1)), np.zeros((h + 1, w + 1))
    for grid, v in ((total, values), (count, np.ones_like(values))):
        np.add.at(grid, (t, le), v)
        np.add.at(grid, (t, r), -v)
        np.add.at(grid, (b, le), -v)
        np.add.at(grid, (b, r), v)
    total = total.cumsum(0).cumsum(1)[:h, :w]
    count = np.rint(count.cumsum(0).cumsum(1)[:h, :w])
    return np.divide(total, count, out=np.zeros((h, w)), where=count > 0)


@pytest.mark.filterwarnings("ignore:invalid value")
def test_window_mean_sums_over_window_edges_only_to_the_same_bits():
    """The sums over the distinct edges give every pixel the bits the sums over every pixel
    give: grids, overlapping and uneven windows, empty ones, none at all, NaN and inf."""
    rng = np.random.default_rng(1)
    for trial in range(400):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        if trial % 2:
            box = int(rng.integers(1, min(h, w) + 1))
            windows = window_grid((h, w), box, int(rng.integers(1, box + 1)))
        else:
            m = int(rng.integers(0, 40))
            ys = np.sort(rng.integers(0, h + 1, (m, 2)))
            xs = np.sort(rng.integers(0, w + 1, (m, 2)))
            windows = np.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], 1)
        values = rng.normal(size=len(windows)) * 10.0 ** rng.uniform(-8, 3)
        if trial % 7 == 0 and len(values):
            values[rng.integers(len(values))] = (np.nan, np.inf, -np.inf, -0.0)[trial % 4]
        got = window_mean((h, w), windows, values)
        want = _summed_area_over_every_pixel((h, w), windows, values)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want, equal_nan=True), (h, w, len(windows))
        assert np.array_equal(np.signbit(got), np.signbit(want))


def test_window_mean_refuses_windows_outside_the_image_or_not_integers():
    windows = window_grid((20, 30), 5, 3)
    values = np.ones(len(windows))
    for bad in (windows - 1, windows + 5, windows.astype(float), windows[:, :3]):
        with pytest.raises(ValueError):
            window_mean((20, 30), bad, values)
    with pytest.raises(ValueError):
        window_mean((30, 20), windows, values)  # H and W swapped


def test_default_batch_size_bounded_by_input_size():
    import torch

    assert default_batch_size(torch.device("cpu"), (256, 256)) == 16
    assert default_batch_size(torch.device("cuda"), (256, 256)) == 64
    assert default_batch_size(torch.device("cpu"), (6000, 6000)) == 1
