"""The pictures and the page of ``explain compare`` (:mod:`explain.audit.comparison` gathers what
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
from explain.render import (
    DISPLAY_SIDE,
    data_uri,
    figure,
    number,
    reading,
    scale,
    shrink,
    shrink_map,
)

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


def _pixels(path: str, frame: int | None) -> np.ndarray | None:
    """The stored path's pixels (a clip: the frame of that index, else its first), or None."""
    try:
        rgb, _ = audit_pixels(from_storable(path), max_pixels=DEFAULT_MAX_PIXELS, notes=[],
                              frame=0 if frame is None else frame)
    except ExplainError:
        return None
    return rgb


def pair_pictures(path: str, map_a: tuple[Path, str] | None, map_b: tuple[Path, str] | None
                  ) -> dict:
    """The pictures of one listed image (``path`` its stored form): ``thumb`` (a data URI, or
    None when the file cannot be read), ``a`` and ``b`` (each ``{uri, reading}`` or None) and a
    ``note`` saying which scale they share. Each map is drawn over the frame it explains (for a
    clip, each model judged it by its own max frame)."""
    heat = {"a": _map(map_a), "b": _map(map_b)}
    frame = {side: None if h is None else h.params.get("frame") for side, h in heat.items()}
    pixels: dict[int | None, np.ndarray | None] = {}
    for f in {frame["a"], frame["b"]}:
        pixels[f] = _pixels(path, f)
    thumb = pixels[frame["a"] if heat["a"] is not None else frame["b"]]
    out: dict = {"thumb": None, "a": None, "b": None, "note": ""}
    if thumb is None or any(pixels[f] is None for f in frame.values()):
        out["note"] = "the file can no longer be read"
        return out
    out["thumb"] = data_uri(shrink(thumb, THUMB), THUMB)
    notes = []
    if None not in frame.values() and frame["a"] != frame["b"]:
        notes.append(f"run A's map is of frame {frame['a']}, run B's of frame {frame['b']} "
                     "(each model's max frame)")
    a, b = heat["a"], heat["b"]
    if a is not None and b is not None and a.unit == b.unit and a.signed and b.signed:
        top = max(float(np.abs(a.values).max()), float(np.abs(b.values).max()))
        top = top if top > 0 else 1.0
        look = {"normalize": "fixed", "vmin": -top, "vmax": top}
        out["a"] = _drawn(pixels[frame["a"]], a, look)  # type: ignore[arg-type]
        out["b"] = _drawn(pixels[frame["b"]], b, look)  # type: ignore[arg-type]
        out["note"] = "; ".join([f"both maps on one scale, ±{top:.3g} {a.unit}", *notes])
        return out
    for side, h in heat.items():
        if h is not None:
            out[side] = _drawn(pixels[frame[side]], h, {})  # type: ignore[arg-type]
    if a is not None and b is not None:
        notes.insert(0, "the two maps measure different things; each is on its own scale")
    elif a is not None or b is not None:
        missing = "B" if a is not None else "A"
        notes.insert(0, f"run {missing} drew no map of this image (an audit draws maps for its "
                        "top-k errors only)")
    else:
        notes.insert(0, "neither run drew a map of this image (maps are drawn for top-k "
                        "errors)")
    out["note"] = "; ".join(notes)
    return out


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _signed_pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f} pp"


def _gain(value: float | None) -> str:
    """A signed score change to 3 significant digits: never "-0.000" for a tiny loss."""
    return "—" if value is None else ("+" if value > 0 else "") + number(value)


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def write_page(path: Path, page: dict) -> Path:
    """``compare.html``, one self-contained file (pictures inlined)."""
    from explain.files import write_text

    env = environment(finalize=lambda v: display(v) if isinstance(v, str) else v,
                      filters={"pct": _pct, "spct": _signed_pct, "p": _p, "gain": _gain})
    return write_text(path, env.get_template("compare.html.j2").render(**page))
