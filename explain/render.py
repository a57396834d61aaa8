"""The one renderer: heatmap → normalised → colormap → alpha-composited on the image (RGB uint8).

Every picture the project draws goes through :func:`overlay` (or :func:`colorize` for the bare
colour map). Normalisation maps the values to [0, 1] before the colormap:

- ``minmax``: the map's own range. It is shift-invariant, so an occlusion map and the classic
  "1 − p(occluded)" picture (the same map plus a constant) render identically.
- ``percentile``: captum-style outlier clipping, the range between the ``percentile``-th lowest
  and highest values, so one hot pixel does not wash out the rest.
- ``fixed``: ``vmin``/``vmax`` given by the caller, for comparing several images on one scale.

``vmin``/``vmax``, when given, override the bound that the mode would compute. On a diverging
colormap (``bwr``, ``coolwarm``, ``RdBu``, … see :data:`DIVERGING`) the range is made symmetric
about zero, so zero is the neutral middle colour and signs read as colours. A constant map renders
as the lowest colour (the middle one on a diverging map), never as a division by zero.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from explain.errors import OptionError
from explain.files import atomic_write
from explain.heatmap import Heatmap

NORMALIZE_MODES = ("minmax", "percentile", "fixed")
DIVERGING = frozenset({
    "bwr", "coolwarm", "seismic", "RdBu", "RdBu_r", "RdYlBu", "RdYlBu_r", "RdYlGn", "RdGy",
    "PiYG", "PRGn", "BrBG", "PuOr", "Spectral", "Spectral_r", "PuOr_r", "PiYG_r", "PRGn_r",
    "BrBG_r", "RdGy_r", "RdYlGn_r", "bwr_r", "coolwarm_r", "seismic_r",
})


@lru_cache(maxsize=64)
def colormap_lut(name: str) -> np.ndarray:
    """A (256, 3) RGB uint8 lookup table for an OpenCV (``jet``, ``turbo``…) or matplotlib name."""
    code = getattr(cv2, f"COLORMAP_{name.upper()}", None)
    if code is not None:
        bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), code)
        return np.ascontiguousarray(bgr.reshape(256, 3)[:, ::-1])
    try:
        import matplotlib
        cmap = matplotlib.colormaps[name]
    except (ImportError, KeyError):
        raise OptionError(
            f"unknown colormap {name!r}; use an OpenCV name (jet, turbo, viridis, inferno, …) "
            "or a matplotlib one (coolwarm, bwr, RdBu, …)"
        ) from None
    rgba = cmap(np.linspace(0.0, 1.0, 256))
    return np.clip(np.rint(rgba[:, :3] * 255.0), 0, 255).astype(np.uint8)


def _values(heatmap: Heatmap | np.ndarray) -> np.ndarray:
    values = heatmap.values if isinstance(heatmap, Heatmap) else np.asarray(heatmap)
    while values.ndim > 2 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise OptionError(f"a heatmap must be 2-D (H, W), got shape {np.shape(values)}")
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
    else:
        lo, hi = float(values.min()), float(values.max())
        if symmetric:
            m = max(abs(lo), abs(hi))
            lo, hi = -m, m
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


def colorize(heatmap: Heatmap | np.ndarray, *, colormap: str = "jet", normalize: str = "minmax",
             vmin: float | None = None, vmax: float | None = None,
             percentile: float = 99.0) -> np.ndarray:
    """The heatmap alone as an RGB uint8 (H, W, 3) picture."""
    values = _values(heatmap)
    symmetric = colormap in DIVERGING
    lo, hi = value_range(values, normalize=normalize, vmin=vmin, vmax=vmax,
                         percentile=percentile, symmetric=symmetric)
    index = np.rint(normalized(values, lo, hi, symmetric=symmetric) * 255.0).astype(np.uint8)
    return colormap_lut(colormap)[index]


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) from uint8 or [0, 1] float, gray (H, W) or RGB(A) input."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise OptionError(f"an image must be (H, W), (H, W, 3) or (H, W, 4), got {img.shape}")
    return np.ascontiguousarray(img[:, :, :3])


def _fit(picture: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if picture.shape[:2] == shape:
        return picture
    return cv2.resize(picture, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def overlay(image: np.ndarray, heatmap: Heatmap | np.ndarray, *, colormap: str = "jet",
            alpha: float = 0.5, normalize: str = "minmax", vmin: float | None = None,
            vmax: float | None = None, percentile: float = 99.0) -> np.ndarray:
    """``image`` with the coloured heatmap blended on top: RGB uint8 of the image's size.

    ``alpha`` is the heatmap's opacity (0 = image only, 1 = heatmap only). A heatmap of another
    size (e.g. a coarse Grad-CAM map) is resized bilinearly to the image after colouring.
    """
    if not 0.0 <= alpha <= 1.0:
        raise OptionError(f"alpha must be in [0, 1], got {alpha}")
    rgb = as_rgb_uint8(image)
    colours = _fit(colorize(heatmap, colormap=colormap, normalize=normalize, vmin=vmin, vmax=vmax,
                            percentile=percentile), rgb.shape[:2])
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _text_scale(height: int) -> float:
    return max(0.3, height / 40.0)


def _label(text: str, width: int, height: int) -> np.ndarray:
    tile = np.full((height, width, 3), 255, dtype=np.uint8)
    scale = _text_scale(height)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(tile, text, (max(0, (width - tw) // 2), (height + th) // 2),
                cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def colorbar(height: int, lo: float, hi: float, *, colormap: str = "jet",
             width: int | None = None) -> np.ndarray:
    """A vertical colour bar (high values on top) with its end values written above and below;
    as wide as the wider label unless ``width`` is given."""
    label_h = max(14, height // 16)
    if width is None:
        texts = (f"{hi:.3g}", f"{lo:.3g}")
        widest = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, _text_scale(label_h), 1)[0][0]
                     for t in texts)
        width = max(48, height // 8, widest + 8)
    bar_h = max(1, height - 2 * label_h)
    ramp = colormap_lut(colormap)[np.linspace(255, 0, bar_h).round().astype(np.uint8)]
    bar = np.full((bar_h, width, 3), 255, dtype=np.uint8)
    bar[:, width // 4: 3 * width // 4] = ramp[:, None, :]
    column = np.concatenate([_label(f"{hi:.3g}", width, label_h), bar,
                             _label(f"{lo:.3g}", width, height - bar_h - label_h)])
    return column


def side_by_side(image: np.ndarray, heatmap: Heatmap | np.ndarray, *, colormap: str = "jet",
                 alpha: float = 0.5, normalize: str = "minmax", vmin: float | None = None,
                 vmax: float | None = None, percentile: float = 99.0,
                 gap: int = 8) -> np.ndarray:
    """original | heatmap | overlay, plus a colour bar of the value range, as one RGB picture."""
    rgb = as_rgb_uint8(image)
    values = _values(heatmap)
    symmetric = colormap in DIVERGING
    lo, hi = value_range(values, normalize=normalize, vmin=vmin, vmax=vmax,
                         percentile=percentile, symmetric=symmetric)
    colours = _fit(colorize(values, colormap=colormap, vmin=lo, vmax=hi), rgb.shape[:2])
    blended = overlay(rgb, values, colormap=colormap, alpha=alpha, vmin=lo, vmax=hi)
    h = rgb.shape[0]
    spacer = np.full((h, gap, 3), 255, dtype=np.uint8)
    return np.concatenate([rgb, spacer, colours, spacer, blended, spacer,
                           colorbar(h, lo, hi, colormap=colormap)], axis=1)


def save_png(path: str | os.PathLike, picture: np.ndarray) -> Path:
    """Write an RGB uint8 picture as PNG, atomically (creating the folder); return the path."""
    with atomic_write(path) as f:
        Image.fromarray(as_rgb_uint8(picture), "RGB").save(f, format="PNG")
    return Path(path)
