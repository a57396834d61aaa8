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
  stretched over its own min..max; a signed map on ±max|value|, but never narrower than
  ±``noise_floor``, so a map without signal is drawn pale instead of saturated; any other map on
  its own min..max.

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

The legend (:func:`legend_strip`) is a strip as wide as the picture, or wider when its text
needs it (the picture is then padded with white on the right, so no label is ever clipped, even
for a 1×1 image): a colour bar with its end values (and 0 when inside), the unit and the
image's score, and in red the map's "no signal" note
(:meth:`~explain.heatmap.Heatmap.no_signal`). Its text grows with the width (one step per
:data:`LEGEND_STEP` px), so its height is
``legend_height(width, note)``; with ``legend=False`` a figure is exactly the overlay.

For pages (the report, the audit): :func:`shrink` brings a picture or a map down to display size,
:func:`data_uri` inlines a picture as a JPEG data URI.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

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
DISPLAY_SIDE = 256
NOTE_COLOUR = (200, 0, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


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
    return np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


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
    if (normalize is None and signed and symmetric and hm.noise_floor  # type: ignore[union-attr]
            and vmin is None and vmax is None):
        m = max(hi, hm.noise_floor)  # type: ignore[union-attr]
        lo, hi = -m, m
    return Scale(name, lo, hi)


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
    return _blend(rgb, _fit(colours, rgb.shape[:2]), alpha)


def _step(width: int) -> int:
    return max(1, round(width / LEGEND_STEP))


def _metrics(step: int) -> tuple[float, int, int, int, int, int]:
    """font scale, thickness, margin, bar height, line height and text height (above the
    baseline) at one size step; a line is the text plus its descent, 2 px per step above and
    below."""
    font_scale, thickness = 0.45 * step, step
    (_, th), base = cv2.getTextSize("0|p(", _FONT, font_scale, thickness)
    return font_scale, thickness, 4 * step, 8 * step, th + base + 4 * step, th


def _strip_height(step: int, note: bool) -> int:
    _, _, margin, bar, line, _ = _metrics(step)
    return 2 * margin + bar + (2 + note) * line


def legend_height(width: int, note: bool = False) -> int:
    """Height of the legend strip under a picture ``width`` px wide: margins, colour bar, the
    line of end values and the line of unit and score (``note``: plus the red "no signal" line)."""
    return _strip_height(_step(width), note)


def _text_width(text: str, step: int) -> int:
    font_scale, thickness, *_ = _metrics(step)
    return cv2.getTextSize(text, _FONT, font_scale, thickness)[0][0]


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def legend_strip(heatmap: Heatmap | np.ndarray, width: int, s: Scale) -> np.ndarray:
    """The legend strip (RGB uint8) for ``heatmap`` drawn on ``s``, at least ``width`` px wide
    and wider when its text needs it: colour bar, its end values (and 0), the unit, the score,
    the no-signal note."""
    hm = heatmap if isinstance(heatmap, Heatmap) else None
    step = _step(width)
    font_scale, thickness, margin, bar_h, line, text_h = _metrics(step)
    lo, hi = f"{s.lo:.3g}", f"{s.hi:.3g}"
    zero = s.lo < 0.0 < s.hi
    about = _ascii(hm.unit if hm is not None else "value")
    if hm is not None and hm.score is not None:
        about += _ascii(f";  image: p({hm.target}) = {hm.score:.4f}")
    note = _ascii(hm.no_signal() or "") if hm is not None else ""
    gap = 3 * margin
    ticks = 2 * max(_text_width(lo, step), _text_width(hi, step)) + gap * 2 + \
        (_text_width("0", step) if zero else 0)
    need = 2 * margin + max(ticks, *(_text_width(t, step) for t in (about, note)))
    width = max(width, need)
    strip = np.full((_strip_height(step, bool(note)), width, 3), 255, dtype=np.uint8)
    x0, x1 = margin, width - margin
    strip[margin:margin + bar_h, x0:x1] = \
        colormap_lut(s.colormap)[np.linspace(0, 255, x1 - x0).round().astype(np.uint8)]
    baseline = margin + bar_h + 2 * step + text_h

    def put(text: str, x: int, y: int, colour: tuple[int, int, int] = (0, 0, 0)) -> None:
        cv2.putText(strip, text, (int(x), int(y)), _FONT, font_scale, colour, thickness,
                    cv2.LINE_AA)

    put(lo, x0, baseline)
    put(hi, x1 - _text_width(hi, step), baseline)
    if zero:
        at = x0 + (x1 - x0) * (0.0 - s.lo) / (s.hi - s.lo) - _text_width("0", step) / 2
        if x0 + _text_width(lo, step) + margin <= at <= x1 - _text_width(hi, step) - margin - \
                _text_width("0", step):
            put("0", at, baseline)
    put(about, x0, baseline + line)
    if note:
        put(note, x0, baseline + 2 * line, NOTE_COLOUR)
    return strip


def with_legend(picture: np.ndarray, heatmap: Heatmap | np.ndarray, s: Scale) -> np.ndarray:
    """``picture`` with the legend strip of ``heatmap`` drawn on ``s`` below it (the picture
    padded with white on the right when the strip is wider)."""
    strip = legend_strip(heatmap, picture.shape[1], s)
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
    picture = _blend(rgb, _fit(_colours(_values(heatmap), s), rgb.shape[:2]), alpha)
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
    picture = np.concatenate([rgb, spacer, colours, spacer, _blend(rgb, colours, alpha)], axis=1)
    if not legend:
        return picture
    return with_legend(picture, heatmap, s)


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
        font_scale, thickness, margin, _, line, text_h = _metrics(step)
        title = np.full((line + margin, picture.shape[1], 3), 255, dtype=np.uint8)
        cv2.putText(title, _ascii(f"model: {label}"), (margin, margin + text_h), _FONT,
                    font_scale, (0, 0, 0), thickness, cv2.LINE_AA)
        pictures.append(np.concatenate([title, picture], axis=0))
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


def data_uri(rgb: np.ndarray, side: int = DISPLAY_SIDE) -> str:
    """An RGB uint8 picture (H, W, 3), shrunk to at most ``side`` pixels (:func:`shrink`), as a
    ``data:image/jpeg;base64,…`` URI (quality 85) to inline in a self-contained page."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(shrink(rgb, side)), "RGB").save(buf, format="JPEG",
                                                                         quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
