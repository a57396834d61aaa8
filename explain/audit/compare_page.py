"""The pictures and the page of ``explain compare`` (:mod:`explain.audit.compare` gathers what
they show): each listed image with run A's and run B's occlusion maps side by side, drawn on one
colour scale (± the larger |value| of the two maps) so that equal colours mean equal score drops
in both; a map drawn by one run only is shown alone on its own scale, and the caption says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from explain.audit.clip_frame import audit_pixels
from explain.choices import DEFAULT_MAX_PIXELS
from explain.errors import ExplainError
from explain.files import display, from_storable
from explain.heatmap import Heatmap
from explain.html import environment
from explain.render import DISPLAY_SIDE, data_uri, figure, reading, scale, shrink, shrink_map

THUMB = 160


def _map(found: tuple[Path, str] | None) -> Heatmap | None:
    """The saved map of a run's heatmap row: (audit folder, its ``npy`` path relative to it)."""
    if found is None:
        return None
    folder, npy = found
    try:
        return Heatmap.load((folder / npy).with_suffix(""))
    except (OSError, ValueError, TypeError):
        return None


def _card_size(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` at the card's size: shrunk to :data:`~explain.render.DISPLAY_SIDE`, or a small
    image enlarged to it by whole pixels (nearest neighbour), so that a map of a 64 px image
    is not drawn, legend and all, 64 px wide."""
    h, w = rgb.shape[:2]
    if max(h, w) >= DISPLAY_SIDE:
        return shrink(rgb, DISPLAY_SIDE)
    factor = max(1, DISPLAY_SIDE // max(h, w))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def _drawn(rgb: np.ndarray, heatmap: Heatmap, look: dict) -> dict:
    shown = shrink_map(heatmap, DISPLAY_SIDE)
    return {"uri": data_uri(figure(_card_size(rgb), shown, **look), DISPLAY_SIDE * 2),
            "reading": reading(shown, scale(shown, **look))}


def pair_pictures(path: str, map_a: tuple[Path, str] | None, map_b: tuple[Path, str] | None
                  ) -> dict:
    """The pictures of one listed image (``path`` its stored form): ``thumb`` (a data URI, or
    None when the file cannot be read), ``a`` and ``b`` (each ``{uri, reading}`` or None) and a
    ``note`` saying which scale they share."""
    heat_a, heat_b = _map(map_a), _map(map_b)
    frame = next((h.params.get("frame") for h in (heat_a, heat_b) if h is not None), None)
    try:
        rgb, _ = audit_pixels(from_storable(path), max_pixels=DEFAULT_MAX_PIXELS, notes=[],
                              frame=0 if frame is None else frame)
    except ExplainError:
        return {"thumb": None, "a": None, "b": None,
                "note": "the file can no longer be read"}
    out = {"thumb": data_uri(shrink(rgb, THUMB), THUMB), "a": None, "b": None, "note": ""}
    if heat_a is not None and heat_b is not None and heat_a.unit == heat_b.unit \
            and heat_a.signed and heat_b.signed:
        top = max(float(np.abs(heat_a.values).max()), float(np.abs(heat_b.values).max()))
        top = top if top > 0 else 1.0
        look = {"normalize": "fixed", "vmin": -top, "vmax": top}
        out["a"], out["b"] = _drawn(rgb, heat_a, look), _drawn(rgb, heat_b, look)
        out["note"] = f"both maps on one scale, ±{top:.3g} {heat_a.unit}"
        return out
    for side, heat in (("a", heat_a), ("b", heat_b)):
        if heat is not None:
            out[side] = _drawn(rgb, heat, {})
    if heat_a is not None and heat_b is not None:
        out["note"] = "the two maps measure different things; each is on its own scale"
    elif heat_a is not None or heat_b is not None:
        missing = "B" if heat_a is not None else "A"
        out["note"] = (f"run {missing} drew no map of this image (an audit draws maps for its "
                       "top-k errors only)")
    else:
        out["note"] = "neither run drew a map of this image (maps are drawn for top-k errors)"
    return out


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _signed_pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f} pp"


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def write_page(path: Path, page: dict) -> Path:
    """``compare.html``, one self-contained file (pictures inlined)."""
    from explain.files import write_text

    env = environment(finalize=lambda v: display(v) if isinstance(v, str) else v,
                      filters={"pct": _pct, "spct": _signed_pct, "p": _p})
    return write_text(path, env.get_template("compare.html.j2").render(**page))
