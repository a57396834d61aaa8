"""The grid's picture: thumbnails in their cells, an optional coloured frame (score or label),
and a footer with the embedding, the quality figures and a legend.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from explain.budget import check_memory
from explain.choices import COLOR_BY
from explain.errors import OptionError
from explain.grid.embed import resize
from explain.grid.result import SimilarityGrid
from explain.render import font as text_font
from explain.render import wrap

EMPTY_CELL = (40, 40, 40)
TAB10 = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
         (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def mosaic_bytes(shape: tuple[int, int], cell_px: int) -> int:
    """Bytes of drawing a mosaic of a ``shape`` = (rows, cols) grid with ``cell_px`` cells: the
    picture, the canvas with its footer and the array copy (an estimate, for the budget)."""
    return 3 * 3 * shape[0] * shape[1] * cell_px * cell_px


def score_colours(scores: np.ndarray) -> np.ndarray:
    """Colours of ``scores`` (N values in [0, 1], clipped) on the jet colormap: blue for 0 →
    red for 1. Returns an N×3 RGB uint8 array."""
    values = np.clip(np.rint(np.asarray(scores, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(values.reshape(-1, 1), cv2.COLORMAP_JET).reshape(-1, 3)
    return bgr[:, ::-1].copy()


def label_colours(labels: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """A distinct colour per distinct label of ``labels``, given in sorted order: tab10, then
    evenly spaced hues beyond ten labels. Returns {label: (r, g, b)}, each 0..255."""
    names = sorted(set(labels))
    if len(names) <= len(TAB10):
        return dict(zip(names, TAB10, strict=False))
    hues = np.linspace(0, 180, len(names), endpoint=False).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 200), np.full_like(hues, 230)], axis=1)
    rgb = cv2.cvtColor(hsv.reshape(-1, 1, 3), cv2.COLOR_HSV2RGB).reshape(-1, 3)
    return {name: tuple(int(v) for v in c) for name, c in zip(names, rgb, strict=True)}


def draw_mosaic(grid: SimilarityGrid, *, color_by: str = "none", cell_px: int | None = None,
                border: int | None = None, caption: bool = True) -> np.ndarray:
    """The grid as an RGB uint8 picture: thumbnails in their cells, empty cells dark.

    ``color_by`` "score" frames each thumbnail with its target score on jet (legend: a colour
    bar), "label" with its label's colour (legend: swatches), "none" not at all. ``cell_px``
    is the cell side (default: the thumbnails' side), ``border`` the frame's width (default
    cell_px/16, at least 2). ``caption`` adds a footer with the embedding and the quality
    figures. Returns an H×W×3 uint8 array: rows·cell_px high (plus the footer), cols·cell_px
    wide (at least 512 with a footer). OptionError when the colouring lacks its scores or
    labels; refused before drawing when the mosaic would not fit the memory budget.
    """
    if color_by not in COLOR_BY:
        raise OptionError(f"unknown color_by {color_by!r}: use one of {', '.join(COLOR_BY)}")
    if color_by == "score" and grid.scores is None:
        raise OptionError("colouring by score needs scores: build the grid with a target")
    if color_by == "label" and grid.labels is None:
        raise OptionError("colouring by label needs labels (images in sub-folders DIR/label/)")
    side = cell_px or grid.thumbnails.shape[1]
    check_memory(mosaic_bytes(grid.shape, side),
                 f"a mosaic of {grid.shape[0]}x{grid.shape[1]} cells of {side} px",
                 "use a smaller cell_px")
    frame = (border if border is not None else max(2, side // 16)) if color_by != "none" else 0
    rows, cols = grid.shape
    mosaic = np.empty((rows * side, cols * side, 3), dtype=np.uint8)
    mosaic[:] = EMPTY_CELL
    if color_by == "score":
        colours = score_colours(grid.scores)  # type: ignore[arg-type]
    elif color_by == "label":
        palette = label_colours(grid.labels)  # type: ignore[arg-type]
        colours = np.array([palette[lab] for lab in grid.labels], dtype=np.uint8)  # type: ignore
    inner = side - 2 * frame
    for i, (r, c) in enumerate(grid.cells):
        y, x = r * side, c * side
        if frame:
            mosaic[y:y + side, x:x + side] = colours[i]
        mosaic[y + frame:y + frame + inner, x + frame:x + frame + inner] = \
            resize(grid.thumbnails[i], (inner, inner))
    if not caption:
        return mosaic
    return _with_footer(mosaic, grid, color_by)


def _with_footer(mosaic: np.ndarray, grid: SimilarityGrid, color_by: str) -> np.ndarray:
    width = max(mosaic.shape[1], 512)
    pad, size = 8, 14
    font = text_font(size)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text = (f"{len(grid.names)} images on {grid.shape[0]}x{grid.shape[1]}, embedding: "
            f"{grid.embed}. {grid.quality.summary()}.")
    lines = wrap(text, size, width - 2 * pad)
    swatches: list[tuple[str, tuple[int, int, int]]] = []
    if color_by == "label":
        swatches = list(label_colours(grid.labels).items())  # type: ignore[arg-type]
    line_h = size + 6
    legend_h = line_h * 2 if color_by != "none" else 0
    if swatches:
        widths = [size + 6 + int(scratch.textlength(name, font=font)) + 16 for name, _ in swatches]
        legend_rows, x = 1, 0
        for w in widths:
            if x + w > width - 2 * pad and x > 0:
                legend_rows, x = legend_rows + 1, 0
            x += w
        legend_h = line_h * legend_rows + pad
    footer_h = pad + line_h * len(lines) + legend_h + pad
    canvas = Image.new("RGB", (width, mosaic.shape[0] + footer_h), (255, 255, 255))
    canvas.paste(Image.fromarray(mosaic), ((width - mosaic.shape[1]) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    y = mosaic.shape[0] + pad
    for line in lines:
        draw.text((pad, y), line, fill=(0, 0, 0), font=font)
        y += line_h
    if color_by == "score":
        bar_w = min(256, width - 2 * pad - 140)
        ramp = score_colours(np.linspace(0, 1, bar_w))
        label = f"score ({grid.target}): 0"
        x = pad + int(draw.textlength(label, font=font)) + 6
        draw.text((pad, y), label, fill=(0, 0, 0), font=font)
        strip = np.repeat(ramp[None], size, axis=0)
        canvas.paste(Image.fromarray(strip), (x, y + 2))
        draw.text((x + bar_w + 6, y), "1", fill=(0, 0, 0), font=font)
    x = pad
    for name, colour in swatches:
        w = size + 6 + int(draw.textlength(name, font=font)) + 16
        if x + w > width - pad and x > pad:
            x, y = pad, y + line_h
        draw.rectangle((x, y + 2, x + size, y + 2 + size), fill=colour)
        draw.text((x + size + 6, y), name, fill=(0, 0, 0), font=font)
        x += w
    return np.asarray(canvas)
