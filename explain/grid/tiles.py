"""The mosaic as a tiled pyramid plus ``grid.html``, a self-contained page that pans and zooms.

A grid of 16,384 images at 64 px is 8,192 px square; larger ones do not fit one PNG a browser
will show. The pyramid holds the full-size mosaic (level ``levels − 1``) and each level below
it at half the size, down to one that fits a tile, cut into JPEG tiles of :data:`TILE_PX`
pixels: ``<tiles>/<level>/<row>_<col>.jpg``. ``grid.html`` (no CDN, no server: open it from
disk) draws the tiles of the level that matches the zoom, pans with the mouse or the arrow
keys, zooms with the wheel or +/−, and shows each image's name, score and label on hover.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np

from explain.errors import ExplainError
from explain.files import display, to_storable, write_bytes, write_text
from explain.grid.mosaic import draw_mosaic
from explain.grid.result import SimilarityGrid

TILE_PX = 256
PNG_MAX_PX = 8192
JPEG_QUALITY = 90


def pyramid_levels(width: int, height: int) -> int:
    """Levels of a pyramid over a ``width``×``height`` picture: the full size and each half
    below it, down to the first that fits one :data:`TILE_PX` tile (at least 1)."""
    return 1 + max(0, math.ceil(math.log2(max(width, height, 1) / TILE_PX)))


def fits_png(grid: SimilarityGrid, cell_px: int) -> bool:
    """Whether the mosaic of ``grid`` at ``cell_px`` fits one PNG (:data:`PNG_MAX_PX` a side)."""
    return max(grid.shape) * cell_px <= PNG_MAX_PX


def pyramid_tiles(grid: SimilarityGrid, *, color_by: str = "none", cell_px: int | None = None
                  ) -> tuple[dict, Iterator[tuple[int, int, int, np.ndarray]]]:
    """The pyramid of ``grid``'s mosaic (:func:`explain.grid.mosaic.draw_mosaic` with ``color_by``
    and ``cell_px``, no footer) before encoding: what the viewer needs (``{"tile", "levels",
    "width", "height", "cell"}``, pixels of the full-size level) and the tiles, lazily, as
    ``(level, row, col, RGB uint8 tile)`` from the full-size level down."""
    side = cell_px or grid.thumbnails.shape[1]
    mosaic = draw_mosaic(grid, color_by=color_by, cell_px=side, caption=False)
    height, width = mosaic.shape[:2]
    levels = pyramid_levels(width, height)

    def tiles() -> Iterator[tuple[int, int, int, np.ndarray]]:
        level = mosaic
        for z in range(levels - 1, -1, -1):
            for top in range(0, level.shape[0], TILE_PX):
                for left in range(0, level.shape[1], TILE_PX):
                    yield z, top // TILE_PX, left // TILE_PX, level[top:top + TILE_PX,
                                                                    left:left + TILE_PX]
            if z:
                level = cv2.resize(level, (max(1, (level.shape[1] + 1) // 2),
                                           max(1, (level.shape[0] + 1) // 2)),
                                   interpolation=cv2.INTER_AREA)

    info = {"tile": TILE_PX, "levels": levels, "width": width, "height": height, "cell": side}
    return info, tiles()


def write_pyramid(grid: SimilarityGrid, folder: str | os.PathLike, *, color_by: str = "none",
                  cell_px: int | None = None) -> dict:
    """Write :func:`pyramid_tiles` into ``folder`` (created) as ``<level>/<row>_<col>.jpg``;
    return what the viewer needs. ExplainError when a tile cannot be encoded."""
    info, tiles = pyramid_tiles(grid, color_by=color_by, cell_px=cell_px)
    root = Path(folder)
    for z, row, col, tile in tiles:
        ok, data = cv2.imencode(".jpg", tile[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ExplainError(f"could not encode a tile of level {z}")
        write_bytes(root / str(z) / f"{row}_{col}.jpg", data.tobytes())
    return info


def tiles_folder(page: str | os.PathLike) -> Path:
    """The folder of the pyramid of the page ``page``: ``<page stem>_tiles/`` beside it."""
    page = Path(page)
    return page.with_name(f"{page.stem}_tiles")


def viewer_data(grid: SimilarityGrid, pyramid: dict, tiles: str) -> dict:
    """The JSON the page embeds: the pyramid, the ``tiles`` folder (relative to the page, as a
    URL path: its bytes percent-encoded, so ``#``, ``?`` or ``%`` in the name still load), the
    grid's shape, quality and layout, and per image its cell, name, score and label."""
    return {
        **pyramid, "tiles": quote(os.fsencode(tiles)), "rows": grid.shape[0], "cols": grid.shape[1],
        "cells": [[int(r), int(c)] for r, c in grid.cells],
        "names": [display(to_storable(n)) for n in grid.names],
        "scores": None if grid.scores is None else [round(float(s), 4) for s in grid.scores],
        "target": grid.target, "labels": grid.labels,
        "summary": f"{len(grid.names)} images on {grid.shape[0]}x{grid.shape[1]}, layout "
                   f"{grid.layout}, embedding {grid.embed}. {grid.quality.summary()}",
    }


def write_viewer(grid: SimilarityGrid, page: str | os.PathLike, *, color_by: str = "none",
                 cell_px: int | None = None) -> Path:
    """Write ``page`` (``grid.html``) and its pyramid in :func:`tiles_folder` beside it.

    ``color_by`` and ``cell_px`` are the mosaic's (see :func:`write_pyramid`). Returns the
    page's path.
    """
    from explain.html import environment

    page = Path(page)
    tiles = tiles_folder(page)
    pyramid = write_pyramid(grid, tiles, color_by=color_by, cell_px=cell_px)
    text = environment().get_template("grid.html.j2").render(
        data=viewer_data(grid, pyramid, tiles.name), title=f"similarity grid: {page.stem}")
    return write_text(page, text)


def write_grid(grid: SimilarityGrid, output: str | os.PathLike, *, color_by: str = "none",
               cell_px: int | None = None) -> list[Path]:
    """Write every file of a grid, as ``explain grid -o OUTPUT`` does: the mosaic PNG at
    ``output`` (only when it :func:`fits_png`), ``grid.json`` and ``grid.html`` beside it (the
    output's stem) and the page's pyramid (:func:`tiles_folder`). One writer for the CLI and
    the service's grid jobs, so both write the same files. ``cell_px``: the mosaic's cell side
    (default: the thumbnails'). Returns the files written, the PNG first when written."""
    from explain.render import save_png

    output = Path(output)
    written = []
    if fits_png(grid, cell_px or int(grid.thumbnails.shape[1])):
        written.append(save_png(draw_mosaic(grid, color_by=color_by, cell_px=cell_px), output))
    written.append(grid.save_json(output.with_suffix(".json")))
    written.append(write_viewer(grid, output.with_suffix(".html"), color_by=color_by,
                                cell_px=cell_px))
    return written
