"""The one renderer: heatmap → normalised → colormap → alpha-composited on the image (RGB uint8),
and the legend that says what the colours mean.

Every picture the project draws goes through :func:`overlay` (or :func:`colorize` for the bare
colour map); :func:`figure` and :func:`side_by_side` are the pictures the CLI writes: the overlay
(or original | heatmap | overlay) with a legend strip below it; :func:`model_rows` stacks the
side-by-sides of several models' maps of one image on one scale.

What the values mean comes from the :class:`~explain.heatmap.Heatmap` (``signed``, ``unit``,
``bounds``, ``noise_floor``); a bare array is an unsigned map in arbitrary units. Defaults, each
overridden by the caller's ``colormap``/``normalize``/``vmin``/``vmax``:

- colormap: :data:`DIVERGING_DEFAULT` (blue-white-red, white exactly at 0) for a signed map, so a
  region that supports the target is red and one that works against it blue whatever the other
  values are; ``jet`` (the classic figures) for an unsigned one.
- range: an unsigned map with ``bounds`` (a probability) is drawn on them (``fixed`` 0..1), never
  stretched over its own min..max; a signed map on ±max|value|, any other map on its own
  min..max (or percentiles), but never narrower than its ``noise_floor`` (±floor on a diverging
  colormap, lo..lo + floor on another) unless the caller fixes the range, so a map without
  signal is drawn pale (or flat) instead of saturated, never as a hot spot.

Normalisation modes map the values to [0, 1] before the colormap:

- ``minmax``: the map's own range. It is shift-invariant, so an occlusion map and the classic
  "1 − p(occluded)" picture (the same map plus a constant) render identically on ``jet``.
- ``percentile``: captum-style outlier clipping, the range between the ``percentile``-th lowest
  and highest values, so one hot pixel does not wash out the rest.
- ``fixed``: ``vmin``/``vmax`` given by the caller, for comparing several images on one scale.

``vmin``/``vmax``, when given, override the bound that the mode would compute. On a diverging
colormap (see :data:`DIVERGING`) the range is made symmetric about zero, so zero is the neutral
middle colour and signs read as colours. A constant map renders as the lowest colour (the middle
one on a diverging map), never as a division by zero.

The legend (:func:`legend_strip`) is a strip as wide as the picture: a colour bar with its end
values (and 0 when inside), the unit and the image's score, the line of :func:`context_line`
(the map's baseline score, and what the hatching means when the map has an unseen part), and in
red the map's notes (:meth:`~explain.heatmap.Heatmap.notes`: "no signal", a baseline not below
the score). Its text is drawn in a TrueType font (:func:`font`: Pillow's bundled Aileron, where
0 and 8 never look alike) at :data:`TEXT_SIZE` px per :data:`LEGEND_STEP` px of width, numbers to
significant digits (:func:`number`), and wrapped to the width, so a 256-px card shows its legend
at native size; the strip is wider (the picture padded with white on the right) only when one
word needs it, so no label is ever clipped, even for a 1×1 image. Its height is
:func:`legend_height`; with ``legend=False`` a figure is exactly the overlay.

What the model never sees (``params["model_view"]``, :mod:`explain.heatmap`) is hatched grey on
every picture of the map (:func:`hatch_unseen`): the overlay, the figure and the map panel and
overlay of :func:`side_by_side`; the map's values there mean nothing.

For pages (the report, the audit): :func:`shrink` brings a picture or a map down to display size,
:func:`data_uri` inlines a picture as a JPEG data URI.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from explain.choices import NORMALIZE_MODES
from explain.errors import OptionError
from explain.files import write_bytes
from explain.heatmap import Heatmap

DIVERGING_DEFAULT = "bwr"
DIVERGING = frozenset({
    "bwr", "coolwarm", "seismic", "RdBu", "RdBu_r", "RdYlBu", "RdYlBu_r", "RdYlGn", "RdGy",
    "PiYG", "PRGn", "BrBG", "PuOr", "Spectral", "Spectral_r", "PuOr_r", "PiYG_r", "PRGn_r",
    "BrBG_r", "RdGy_r", "RdYlGn_r", "bwr_r", "coolwarm_r", "seismic_r",
})
LEGEND_STEP = 600
TEXT_SIZE = 13
DISPLAY_SIDE = 256
NOTE_COLOUR = (200, 0, 0)
HATCH_PERIOD = 8
HATCH_GREY = 128


def _bwr() -> np.ndarray:
    """Blue (0) → white (exactly at 128, where 0 lands on a symmetric range) → red (255)."""
    i = np.arange(256, dtype=np.float64)
    fade = np.where(i < 128, (128.0 - i) / 128.0, (i - 128.0) / 127.0)
    lut = np.full((256, 3), 255.0)
    lut[i < 128, :2] = 255.0 * (1.0 - fade[i < 128, None])
    lut[i >= 128, 1:] = 255.0 * (1.0 - fade[i >= 128, None])
    return np.rint(lut).astype(np.uint8)


@lru_cache(maxsize=64)
def colormap_lut(name: str) -> np.ndarray:
    """A (256, 3) RGB uint8 lookup table: the built-in ``bwr`` or ``gray``, an OpenCV name
    (``jet``, ``turbo``…) or a matplotlib one (when matplotlib is installed)."""
    if name == "bwr":
        return _bwr()
    if name == "gray":
        return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    code = getattr(cv2, f"COLORMAP_{name.upper()}", None)
    if code is not None:
        bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), code)
        return np.ascontiguousarray(bgr.reshape(256, 3)[:, ::-1])
    try:
        import matplotlib
        cmap = matplotlib.colormaps[name]
    except (ImportError, KeyError):
        raise OptionError(
            f"unknown colormap {name!r}; use bwr, gray, an OpenCV name (jet, turbo, viridis, "
            "inferno, …) or, with matplotlib installed, a matplotlib one (coolwarm, RdBu, …)"
        ) from None
    rgba = cmap(np.linspace(0.0, 1.0, 256))
    return np.clip(np.rint(rgba[:, :3] * 255.0), 0, 255).astype(np.uint8)


def _values(heatmap: Heatmap | np.ndarray) -> np.ndarray:
    values = heatmap.values if isinstance(heatmap, Heatmap) else np.asarray(heatmap)
    while values.ndim > 2 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2 or values.size == 0:
        raise OptionError(f"a heatmap must be 2-D (H, W) and not empty, got shape "
                          f"{np.shape(values)}")
    return np.nan_to_num(values.astype(np.float64), copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def value_range(values: np.ndarray, *, normalize: str = "minmax", vmin: float | None = None,
                vmax: float | None = None, percentile: float = 99.0,
                symmetric: bool = False) -> tuple[float, float]:
    """The (lo, hi) that ``normalize`` maps to the ends of the colormap."""
    if normalize not in NORMALIZE_MODES:
        raise OptionError(f"unknown normalize {normalize!r}; use one of "
                          f"{', '.join(NORMALIZE_MODES)}")
    if normalize == "fixed" and (vmin is None or vmax is None):
        raise OptionError("normalize='fixed' needs both vmin and vmax")
    if not 50.0 < percentile <= 100.0:
        raise OptionError(f"percentile must be in (50, 100], got {percentile}")
    if normalize == "percentile":
        if symmetric:
            m = float(np.percentile(np.abs(values), percentile))
            lo, hi = -m, m
        else:
            lo, hi = (float(v) for v in np.percentile(values, [100.0 - percentile, percentile]))
    elif normalize == "minmax":
        lo, hi = float(values.min()), float(values.max())
        if symmetric:
            m = max(abs(lo), abs(hi))
            lo, hi = -m, m
    else:
        lo, hi = float(vmin), float(vmax)  # type: ignore[arg-type]
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    if hi < lo:
        raise OptionError(f"vmax ({hi}) is below vmin ({lo})")
    return lo, hi


def normalized(values: np.ndarray, lo: float, hi: float, *, symmetric: bool = False) -> np.ndarray:
    """``values`` mapped to [0, 1] by (lo, hi), clipped; a zero range gives 0 (0.5 if symmetric)."""
    span = hi - lo
    if span <= 0.0:
        return np.full(values.shape, 0.5 if symmetric else 0.0)
    return np.clip((values - lo) / span, 0.0, 1.0)


@dataclass(frozen=True)
class Scale:
    """How values become colours: the colormap and the (lo, hi) at its two ends."""

    colormap: str
    lo: float
    hi: float

    @property
    def symmetric(self) -> bool:
        return self.colormap in DIVERGING


def check_look(colormap: str | None = None, normalize: str | None = None,
               vmin: float | None = None, vmax: float | None = None) -> None:
    """Refuse bad drawing options before any work: unknown colormap or mode, a ``fixed`` range
    without both ends, ``vmax`` below ``vmin``."""
    if colormap is not None:
        colormap_lut(colormap)
    if normalize is not None and normalize not in NORMALIZE_MODES:
        raise OptionError(f"unknown normalize {normalize!r}; use one of "
                          f"{', '.join(NORMALIZE_MODES)}")
    if normalize == "fixed" and (vmin is None or vmax is None):
        raise OptionError("normalize 'fixed' needs both vmin and vmax")
    if vmin is not None and vmax is not None and vmax < vmin:
        raise OptionError(f"vmax ({vmax}) is below vmin ({vmin})")


def scale(heatmap: Heatmap | np.ndarray, *, colormap: str | None = None,
          normalize: str | None = None, vmin: float | None = None, vmax: float | None = None,
          percentile: float = 99.0) -> Scale:
    """The :class:`Scale` a heatmap is drawn on: the caller's choices, else the map's defaults
    (see the module docstring)."""
    values = _values(heatmap)
    hm = heatmap if isinstance(heatmap, Heatmap) else None
    signed = hm is not None and hm.signed
    name = colormap or (DIVERGING_DEFAULT if signed else "jet")
    colormap_lut(name)
    symmetric = name in DIVERGING
    if normalize is None and hm is not None and hm.bounds is not None:
        normalize = "fixed"
        vmin = hm.bounds[0] if vmin is None else vmin
        vmax = hm.bounds[1] if vmax is None else vmax
    lo, hi = value_range(values, normalize=normalize or "minmax", vmin=vmin, vmax=vmax,
                         percentile=percentile, symmetric=symmetric)
    floor = hm.noise_floor if hm is not None else None
    if floor and normalize != "fixed" and vmin is None and vmax is None:
        if symmetric:
            m = max(hi, floor)
            lo, hi = -m, m
        else:
            hi = max(hi, lo + floor)
    return Scale(name, lo, hi)


ENDS = {
    "bwr": ("blue", "red"), "coolwarm": ("blue", "red"), "seismic": ("dark blue", "dark red"),
    "RdBu": ("red", "blue"), "RdBu_r": ("blue", "red"), "jet": ("dark blue", "dark red"),
    "turbo": ("dark blue", "dark red"), "gray": ("black", "white"), "hot": ("black", "white"),
    "viridis": ("purple", "yellow"), "inferno": ("black", "yellow"), "magma": ("black", "pale"),
    "plasma": ("blue", "yellow"),
}
"""The colours at the two ends of the colormaps the docs name, for :func:`reading`."""


def reading(heatmap: Heatmap, s: Scale) -> str:
    """What the colours of ``heatmap`` drawn on ``s`` mean, in one sentence made from the map's
    own fields (``signed``, ``unit``, ``target``, the no-signal note) and the drawn scale: the
    words every page prints under a picture, never a fixed sentence. Only a signed map drawn on
    a diverging colormap speaks of supporting and working against the target; an unsigned map
    says that none of its colours means the opposite of the target."""
    low, high = ENDS.get(s.colormap, ("the bar's left end", "its right end"))
    t = heatmap.target
    if heatmap.signed and s.symmetric:
        text = (f"Colour = {heatmap.unit}: {high} where the region supports {t} (above 0), "
                f"{low} where it works against {t} (below 0), the middle colour at 0; the bar "
                f"runs from {number(s.lo)} to {number(s.hi)}.")
    elif heatmap.signed:
        text = (f"Colour = {heatmap.unit}, from {number(s.lo)} ({low}) to {number(s.hi)} "
                f"({high}); above 0 supports {t}, below 0 works against it.")
    else:
        text = (f"Colour = {heatmap.unit}, from {number(s.lo)} ({low}) to {number(s.hi)} "
                f"({high}). The map has no sign: no colour says that a region lowers p({t}).")
    notes = [context_line(heatmap, heatmap.shape), *heatmap.notes()]
    return " ".join([text, *(f"{n[0].upper()}{n[1:]}." for n in notes if n)])


def described(heatmap: Heatmap, s: Scale) -> dict:
    """What a map's JSON says about a picture of it drawn on ``s``: ``drawn`` (colormap and the
    values at the two ends) and ``reading`` (:func:`reading`); part of a map's record
    (:func:`explain.outputs.record`)."""
    return {"drawn": {"colormap": s.colormap, "lo": s.lo, "hi": s.hi},
            "reading": reading(heatmap, s)}


def _colours(values: np.ndarray, s: Scale) -> np.ndarray:
    index = np.rint(normalized(values, s.lo, s.hi, symmetric=s.symmetric) * 255.0)
    return colormap_lut(s.colormap)[index.astype(np.uint8)]


def colorize(heatmap: Heatmap | np.ndarray, *, colormap: str | None = None,
             normalize: str | None = None, vmin: float | None = None, vmax: float | None = None,
             percentile: float = 99.0) -> np.ndarray:
    """The heatmap alone as an RGB uint8 (H, W, 3) picture."""
    return _colours(_values(heatmap), scale(heatmap, colormap=colormap, normalize=normalize,
                                            vmin=vmin, vmax=vmax, percentile=percentile))


def _picture(image: np.ndarray) -> np.ndarray:
    """The image to draw on, through the one intake (:func:`explain.images.as_rgb`: uint8,
    integers 0..255, floats in [0, 1], gray, RGBA composited on white; anything else refused),
    as a contiguous RGB uint8 array."""
    from explain.images import as_rgb

    return np.ascontiguousarray(as_rgb(image, name="picture"))


def _fit(picture: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if picture.shape[:2] == shape:
        return picture
    return cv2.resize(picture, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _blend(rgb: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    if not 0.0 <= alpha <= 1.0:
        raise OptionError(f"alpha must be in [0, 1], got {alpha}")
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: Heatmap | np.ndarray, *, colormap: str | None = None,
            alpha: float = 0.5, normalize: str | None = None, vmin: float | None = None,
            vmax: float | None = None, percentile: float = 99.0) -> np.ndarray:
    """``image`` with the coloured ``heatmap`` blended on top: RGB uint8 of the image's size.

    - ``image``: RGB (or gray) uint8, or float in [0, 1].
    - ``heatmap``: a :class:`Heatmap` (its ``signed``/``bounds`` choose the default scale, see
      the module docstring) or a bare (h, w) array. A map of another size (e.g. a coarse
      Grad-CAM map) is resized bilinearly to the image after colouring.
    - ``colormap``: an OpenCV or matplotlib name; None = the map's default (``bwr`` centred on 0
      for signed maps, ``jet`` otherwise).
    - ``alpha``: the heatmap's opacity (0 = image only, 1 = heatmap only).
    - ``normalize``: ``minmax``, ``percentile`` (clip at the ``percentile``-th percentile of
      |values|), ``fixed`` (``vmin``..``vmax``) or None = the map's default.
    - ``vmin``/``vmax``: the values drawn at the two ends of the colormap (``fixed``), so several
      pictures share one scale.

    Returns the blended picture without legend (:func:`figure` adds the legend strip).
    """
    if not 0.0 <= alpha <= 1.0:
        raise OptionError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _picture(image)
    colours = colorize(heatmap, colormap=colormap, normalize=normalize, vmin=vmin, vmax=vmax,
                       percentile=percentile)
    return hatch_unseen(_blend(rgb, _fit(colours, rgb.shape[:2]), alpha), heatmap)


def unseen_mask(heatmap: Heatmap | np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """True where a picture of ``shape`` (H, W) of ``heatmap`` lies outside the map's
    ``params["model_view"]`` (in the original image's pixels: ``params["original_shape"]`` for a
    shrunk map, :func:`shrink_map`, else the values'; scaled to ``shape``); None when the model
    sees it all (or the map does not say)."""
    view = heatmap.params.get("model_view") if isinstance(heatmap, Heatmap) else None
    if view is None:
        return None
    vh, vw = heatmap.params.get("original_shape") or heatmap.values.shape[-2:]  # type: ignore
    h, w = shape
    top, bottom = round(view[0] * h / vh), round(view[2] * h / vh)
    left, right = round(view[1] * w / vw), round(view[3] * w / vw)
    if top <= 0 and left <= 0 and bottom >= h and right >= w:
        return None
    mask = np.ones((h, w), dtype=bool)
    mask[max(0, top):max(0, bottom), max(0, left):max(0, right)] = False
    return mask


def hatch_unseen(picture: np.ndarray, heatmap: Heatmap | np.ndarray) -> np.ndarray:
    """``picture`` (RGB uint8, any size) with the part ``heatmap``'s model never sees
    (:func:`unseen_mask`) greyed and hatched with diagonal lines, so that it never reads as
    "no relevance"; returned as is when the model sees it all."""
    mask = unseen_mask(heatmap, picture.shape[:2])
    if mask is None:
        return picture
    out = picture.copy()
    grey = (out[mask].astype(np.float32) + HATCH_GREY) / 2.0
    out[mask] = np.rint(grey).astype(np.uint8)
    rows, cols = np.indices(mask.shape)
    lines = mask & ((rows + cols) % HATCH_PERIOD < max(1, HATCH_PERIOD // 4))
    out[lines] = (HATCH_GREY // 2,) * 3
    return out


def context_line(heatmap: Heatmap | np.ndarray, shape: tuple[int, int]) -> str:
    """The legend's line under the unit: the map's baseline
    (:meth:`~explain.heatmap.Heatmap.baseline_text`) and, when a picture of ``shape`` has an
    unseen part, what its hatching means; "" when there is neither."""
    if not isinstance(heatmap, Heatmap):
        return ""
    parts = [heatmap.baseline_text() or ""]
    if unseen_mask(heatmap, shape) is not None:
        parts.append("hatched: never seen by the model")
    return ";  ".join(p for p in parts if p)


def _step(width: int) -> int:
    return max(1, round(width / LEGEND_STEP))


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont:
    """The one typeface of every picture's text: Pillow's bundled TrueType font (Aileron, drawn
    by FreeType; Pillow >= 10.1) at ``size`` px, so "0" and "8" differ at any size, unlike
    OpenCV's Hershey strokes; no system font is needed."""
    return ImageFont.load_default(size=size)  # type: ignore[return-value]


def text_width(text: str, size: int) -> int:
    """Width in px of ``text`` drawn by :func:`draw_text` at ``size``."""
    return math.ceil(font(size).getlength(text))


def line_height(size: int) -> int:
    """Height in px of one line of text at ``size`` (ascent + descent)."""
    ascent, descent = font(size).getmetrics()
    return ascent + descent


def draw_text(picture: np.ndarray, items: list[tuple[str, float, float, tuple[int, int, int]]],
              size: int) -> np.ndarray:
    """``picture`` (RGB uint8) with each ``(text, x, y, colour)`` of ``items`` drawn on it, its
    top-left corner at (x, y), anti-aliased, at ``size`` px; returns a new array."""
    canvas = Image.fromarray(np.ascontiguousarray(picture), "RGB")
    draw = ImageDraw.Draw(canvas)
    for text, x, y, colour in items:
        draw.text((round(x), round(y)), text, fill=colour, font=font(size), anchor="la")
    return np.asarray(canvas).copy()


def wrap(text: str, size: int, width: int) -> list[str]:
    """``text`` broken at spaces into lines at most ``width`` px wide at ``size`` (a single word
    wider than ``width`` gets a line of its own)."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and text_width(candidate, size) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


def number(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits ("0.0218", "1.2e-07"), with more digits where
    rounding would show a probability below 1 as "1" or a nonzero value as "0"."""
    for d in range(digits, 9):
        text = f"{value:.{d}g}"
        if float(text) not in (0.0, 1.0) or float(text) == value:
            return text
    return text


@dataclass(frozen=True)
class _Legend:
    """The legend strip's layout at one width: text size, spacing and its lines of text."""

    size: int
    margin: int
    bar: int
    line: int
    width: int
    lines: list[str]
    note: list[str]

    @property
    def height(self) -> int:
        return 2 * self.margin + self.bar + (1 + len(self.lines) + len(self.note)) * self.line


def _legend(heatmap: Heatmap | np.ndarray, width: int, s: Scale,
            shape: tuple[int, int] | None = None) -> _Legend:
    """The legend's layout for ``heatmap`` on ``s`` under a picture ``width`` px wide (one panel
    of the map in it ``shape``, default the map's): its text at one size per
    :data:`LEGEND_STEP` px, wrapped to the width; the strip is wider only when one word or the
    end values need it."""
    hm = heatmap if isinstance(heatmap, Heatmap) else None
    step = _step(width)
    size, margin = TEXT_SIZE * step, 4 * step
    about = hm.unit if hm is not None else "value"
    if hm is not None and hm.score is not None:
        about += f";  image: p({hm.target}) = {number(hm.score)}"
    context = context_line(hm, shape or hm.shape) if hm is not None else ""
    notes = hm.notes() if hm is not None else []
    lo, hi = number(s.lo), number(s.hi)
    ticks = 2 * max(text_width(lo, size), text_width(hi, size)) + 6 * margin + \
        text_width("0", size)
    words = max(text_width(w, size) for w in " ".join([about, context, *notes]).split())
    width = max(width, 2 * margin + max(ticks, words))
    inner = width - 2 * margin
    lines = wrap(about, size, inner) + (wrap(context, size, inner) if context else [])
    return _Legend(size, margin, 8 * step, line_height(size) + 4 * step, width, lines,
                   [line for note in notes for line in wrap(note, size, inner)])


def legend_height(heatmap: Heatmap | np.ndarray, width: int, s: Scale,
                  shape: tuple[int, int] | None = None) -> int:
    """Height of the legend strip of ``heatmap`` drawn on ``s`` under a picture ``width`` px
    wide: margins, colour bar, the line of end values, the unit and score, the context line
    (:func:`context_line`) and the red notes (:meth:`~explain.heatmap.Heatmap.notes`), each
    wrapped."""
    return _legend(heatmap, width, s, shape).height


def legend_strip(heatmap: Heatmap | np.ndarray, width: int, s: Scale,
                 shape: tuple[int, int] | None = None) -> np.ndarray:
    """The legend strip (RGB uint8) for ``heatmap`` drawn on ``s``, at least ``width`` px wide
    and wider when a word needs it: colour bar, its end values (and 0), the unit, the score,
    the context line for a panel of ``shape`` (default the map's), the notes in red."""
    g = _legend(heatmap, width, s, shape)
    strip = np.full((g.height, g.width, 3), 255, dtype=np.uint8)
    x0, x1 = g.margin, g.width - g.margin
    strip[g.margin:g.margin + g.bar, x0:x1] = \
        colormap_lut(s.colormap)[np.linspace(0, 255, x1 - x0).round().astype(np.uint8)]
    top = g.margin + g.bar + 2 * (g.size // TEXT_SIZE)
    lo, hi = number(s.lo), number(s.hi)
    ink = (0, 0, 0)
    items = [(lo, x0, top, ink), (hi, x1 - text_width(hi, g.size), top, ink)]
    zero_w = text_width("0", g.size)
    if s.lo < 0.0 < s.hi:
        at = x0 + (x1 - x0) * (0.0 - s.lo) / (s.hi - s.lo) - zero_w / 2
        if x0 + text_width(lo, g.size) + g.margin <= at <= \
                x1 - text_width(hi, g.size) - g.margin - zero_w:
            items.append(("0", at, top, ink))
    for k, text in enumerate(g.lines):
        items.append((text, x0, top + (1 + k) * g.line, ink))
    for k, text in enumerate(g.note):
        items.append((text, x0, top + (1 + len(g.lines) + k) * g.line, NOTE_COLOUR))
    return draw_text(strip, items, g.size)


def with_legend(picture: np.ndarray, heatmap: Heatmap | np.ndarray, s: Scale,
                shape: tuple[int, int] | None = None) -> np.ndarray:
    """``picture`` with the legend strip of ``heatmap`` drawn on ``s`` below it (the picture
    padded with white on the right when the strip is wider); ``shape``: that of one panel of
    the map in it (default: the picture's)."""
    strip = legend_strip(heatmap, picture.shape[1], s, shape or picture.shape[:2])
    width = max(picture.shape[1], strip.shape[1])
    pad = np.full((picture.shape[0], width - picture.shape[1], 3), 255, dtype=np.uint8)
    return np.concatenate([np.concatenate([picture, pad], axis=1), strip], axis=0)


def figure(image: np.ndarray, heatmap: Heatmap | np.ndarray, *, colormap: str | None = None,
           alpha: float = 0.5, normalize: str | None = None, vmin: float | None = None,
           vmax: float | None = None, percentile: float = 99.0,
           legend: bool = True) -> np.ndarray:
    """The overlay with its legend strip below (see the module docstring); ``legend=False``
    gives exactly :func:`overlay`."""
    rgb = _picture(image)
    s = scale(heatmap, colormap=colormap, normalize=normalize, vmin=vmin, vmax=vmax,
              percentile=percentile)
    picture = hatch_unseen(_blend(rgb, _fit(_colours(_values(heatmap), s), rgb.shape[:2]),
                                  alpha), heatmap)
    if not legend:
        return picture
    return with_legend(picture, heatmap, s)


def side_by_side(image: np.ndarray, heatmap: Heatmap | np.ndarray, *,
                 colormap: str | None = None, alpha: float = 0.5, normalize: str | None = None,
                 vmin: float | None = None, vmax: float | None = None, percentile: float = 99.0,
                 gap: int = 8, legend: bool = True) -> np.ndarray:
    """original | heatmap | overlay on one scale, ``gap`` white pixels apart, with the legend
    strip below (any image size, 1×1 included)."""
    rgb = _picture(image)
    s = scale(heatmap, colormap=colormap, normalize=normalize, vmin=vmin, vmax=vmax,
              percentile=percentile)
    colours = _fit(_colours(_values(heatmap), s), rgb.shape[:2])
    spacer = np.full((rgb.shape[0], gap, 3), 255, dtype=np.uint8)
    picture = np.concatenate([rgb, spacer, hatch_unseen(colours, heatmap), spacer,
                              hatch_unseen(_blend(rgb, colours, alpha), heatmap)], axis=1)
    if not legend:
        return picture
    return with_legend(picture, heatmap, s, rgb.shape[:2])


def model_rows(image: np.ndarray, rows: Sequence[tuple[str, Heatmap]], *,
               colormap: str | None = None, alpha: float = 0.5, gap: int = 8) -> np.ndarray:
    """Several models' maps of one image in one picture: a row per model (its name, then
    original | heatmap | overlay with the legend strip and that model's score), every row on
    one colour scale, the union of the rows' own default scales, so that equal colours mean
    equal values across models."""
    scales = [scale(hm, colormap=colormap) for _, hm in rows]
    name = scales[0].colormap
    lo, hi = min(s.lo for s in scales), max(s.hi for s in scales)
    pictures = []
    for label, hm in rows:
        picture = side_by_side(image, hm, colormap=name, alpha=alpha, normalize="fixed",
                               vmin=lo, vmax=hi, gap=gap)
        step = _step(picture.shape[1])
        size, margin = TEXT_SIZE * step, 4 * step
        text = f"model: {label}"
        title = np.full((line_height(size) + 2 * margin,
                         max(picture.shape[1], text_width(text, size) + 2 * margin), 3), 255,
                        dtype=np.uint8)
        title = draw_text(title, [(text, margin, margin, (0, 0, 0))], size)
        pad = np.full((picture.shape[0], title.shape[1] - picture.shape[1], 3), 255,
                      dtype=np.uint8)
        pictures.append(np.concatenate([title, np.concatenate([picture, pad], axis=1)], axis=0))
    width = max(p.shape[1] for p in pictures)
    out = []
    for i, picture in enumerate(pictures):
        pad = np.full((picture.shape[0], width - picture.shape[1], 3), 255, dtype=np.uint8)
        out.append(np.concatenate([picture, pad], axis=1))
        if i < len(pictures) - 1:
            out.append(np.full((2 * gap, width, 3), 255, dtype=np.uint8))
    return np.concatenate(out, axis=0)


def save_png(picture: np.ndarray, path: str | os.PathLike) -> Path:
    """Write ``picture`` (an RGB uint8 array; float [0, 1] and grey are converted as everywhere)
    as a PNG at ``path``, atomically, creating the folder; return the path written.

    The picture comes first, as the thing in every other function does. zlib level 1: about 3×
    faster to write than PIL's default 6 for ~10 % more bytes (a 256×768 strip: 8.5 ms and 127 KB
    against 27 ms and 114 KB), which matters where pictures are written per job (the service,
    batch commands).
    """
    buffer = io.BytesIO()
    Image.fromarray(_picture(picture), "RGB").save(buffer, format="PNG", compress_level=1)
    return write_bytes(path, buffer.getvalue())


def shrink(picture: np.ndarray, side: int) -> np.ndarray:
    """``picture`` (an image (H, W, 3) or a map (H, W), any dtype cv2 resizes) shrunk by area
    averaging so that its longer side is at most ``side`` pixels; returned as is (not copied)
    when it already fits."""
    h, w = picture.shape[:2]
    factor = side / max(h, w)
    if factor >= 1.0:
        return picture
    return cv2.resize(picture, (max(1, round(w * factor)), max(1, round(h * factor))),
                      interpolation=cv2.INTER_AREA)


def shrink_map(heatmap: Heatmap, side: int) -> Heatmap:
    """``heatmap`` with its values shrunk to at most ``side`` px (:func:`shrink`), for a picture
    at display size; ``params["original_shape"]`` keeps the shape its ``model_view`` refers
    to."""
    if max(heatmap.shape) <= side:
        return heatmap
    original = heatmap.params.get("original_shape") or list(heatmap.shape)
    return replace(heatmap, values=shrink(heatmap.values.astype(np.float32), side),
                   params={**heatmap.params, "original_shape": original})


def data_uri(rgb: np.ndarray, side: int = DISPLAY_SIDE) -> str:
    """An RGB uint8 picture (H, W, 3), shrunk to at most ``side`` pixels (:func:`shrink`), as a
    ``data:image/jpeg;base64,…`` URI (quality 85) to inline in a self-contained page."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(shrink(rgb, side)), "RGB").save(buf, format="JPEG",
                                                                         quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
