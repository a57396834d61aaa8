"""The tiled pyramid and ``grid.html``: the tiles hold the mosaic, and the page opens in a real
headless Chromium with its tiles loaded, no console error, and the hover naming the image."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from test_report_browser import Browser

from explain.grid import (
    TILE_PX,
    draw_mosaic,
    fits_png,
    pyramid_levels,
    pyramid_tiles,
    similarity_grid,
    write_pyramid,
    write_viewer,
)


@pytest.fixture(scope="module")
def grid():
    """36 solid colours (6×6 cells of 64 px: a 384 px mosaic, so two levels) with labels."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(36, 3))
    images = [np.broadcast_to(c.astype(np.uint8), (16, 16, 3)).copy() for c in colours]
    labels = ["warm" if c[0] > c[2] else "cool" for c in colours]
    return similarity_grid(images, embed="pixels", labels=labels, layout="flas",
                           names=[f"colour <{i}>.png" for i in range(36)])


def test_pyramid_levels():
    assert pyramid_levels(TILE_PX, TILE_PX) == 1
    assert pyramid_levels(TILE_PX + 1, 10) == 2
    assert pyramid_levels(8192, 8192) == 6


def test_tiles_hold_the_mosaic(tmp_path, grid):
    mosaic = draw_mosaic(grid, color_by="label", caption=False)
    info, tiles = pyramid_tiles(grid, color_by="label")
    assert info == {"tile": TILE_PX, "levels": 2, "width": 384, "height": 384, "cell": 64}
    tiles = {(z, row, col): tile for z, row, col, tile in tiles}
    assert sorted(tiles) == [(0, 0, 0), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    for (z, row, col), tile in tiles.items():  # exact before encoding
        if z == 1:
            top, left = row * TILE_PX, col * TILE_PX
            np.testing.assert_array_equal(tile, mosaic[top:top + TILE_PX, left:left + TILE_PX])
    np.testing.assert_array_equal(
        tiles[0, 0, 0], cv2.resize(mosaic, (192, 192), interpolation=cv2.INTER_AREA))
    # the files: every tile written, decodable, its size; what the JPEG encoder does to the
    # pixels is the encoder's, so only a bound any encoder at quality 90 meets (PSNR > 20 dB)
    assert write_pyramid(grid, tmp_path / "tiles", color_by="label") == info
    for (z, row, col), tile in tiles.items():
        decoded = cv2.imread(str(tmp_path / f"tiles/{z}/{row}_{col}.jpg"))[..., ::-1]
        assert decoded.shape == tile.shape
        mse = np.mean((decoded.astype(float) - tile) ** 2)
        assert 10 * np.log10(255 ** 2 / max(mse, 1e-12)) > 20
    assert fits_png(grid, 64) and not fits_png(grid, 2048)


@pytest.mark.parametrize("name", ["grid.html", "a #1?%41 é.html"])  # '#', '?', '%': issue 28
def test_grid_html_opens_with_tiles_and_hover(chromium, tmp_path, grid, name):
    page = write_viewer(grid, tmp_path / name, color_by="label")
    assert "<script src" not in page.read_text() and "http" not in page.read_text()
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open(page.as_uri())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tiles = browser.evaluate("window.gridTiles")
            if tiles["requested"] and tiles["loaded"] + tiles["failed"] == tiles["requested"]:
                break
            time.sleep(0.1)
        assert tiles["loaded"] >= 1 and tiles["failed"] == 0, tiles
        assert browser.console_errors() == []
        r, c = (int(v) for v in grid.cells[5])
        hover = browser.evaluate(
            "(() => { const v = document.getElementById('view'), G = JSON.parse("
            "document.getElementById('grid-data').textContent);"
            "const b = v.getBoundingClientRect(); const i = window.gridView.under(0, 0);"
            f"const s = Math.min(v.width / G.width, (v.height - 24) / G.height);"
            f"const x = (v.width - G.width * s) / 2 + ({c} + 0.5) * G.cell * s;"
            f"const y = (v.height - 24 - G.height * s) / 2 + ({r} + 0.5) * G.cell * s;"
            "v.dispatchEvent(new MouseEvent('mousemove', {clientX: x + b.left, "
            "clientY: y + b.top}));"
            "return [i, document.getElementById('tip').textContent]; })()")
        assert hover[0] == -1  # the page's corner is outside the grid
        assert hover[1] == f"colour <5>.png · label {grid.labels[5]}"
        assert browser.console_errors() == []
    finally:
        browser.close()
