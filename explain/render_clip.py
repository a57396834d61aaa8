"""The renderer's pictures of clips: the timeline of p(target) over time, and the animated
overlay. Frames and maps are drawn by :mod:`explain.render` (the one renderer); this module lays
them out in time.

- :func:`timeline`: p(target) of every sampled frame against time (seconds) on a fixed 0..1
  axis, a step per frame held for its duration; explained frames are marked with a red dot and
  their frame index, the max frame with a ring.
- :func:`animation`: one picture per frame given, each shown for the frame's duration; an
  explained frame carries its overlay, drawn on ONE scale for the whole clip (±max |value| over
  the explained maps for signed maps; never narrower than their noise floor, so a clip without
  signal is not drawn saturated) so that colours compare across frames; an unexplained
  frame is shown plain, with the legend strip's space left blank.
- :func:`shown_frames`: which frames an animation shows: every frame up to
  :data:`ANIMATION_FRAMES`, past it the explained frames and frames evenly spaced (a clip of
  3,600 frames would make a GIF of 3,600 pictures held in memory at once).
- :func:`save_gif`: the pictures as an animated GIF with those durations, written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from explain.files import write_bytes
from explain.heatmap import Heatmap
from explain.render import TEXT_SIZE, draw_text, figure, number, shrink, shrink_map

LINE = (40, 90, 200)
MARK = (220, 30, 30)
GRID = (225, 225, 225)
GAP = (160, 160, 160)
INK = (60, 60, 60)
ANIMATION_SIDE = 512
ANIMATION_FRAMES = 600  # at most this many pictures in an animated overlay (20 s at 30 fps)


def shown_frames(count: int, keep: Sequence[int], most: int | None = None) -> list[int]:
    """Positions (of ``count`` frames) an animation shows: all when there are at most ``most``
    (default :data:`ANIMATION_FRAMES`), else frame 0, the positions ``keep`` (the explained
    frames) and frames evenly spaced up to about ``most``, in order; each is then held until
    the next one shown."""
    most = ANIMATION_FRAMES if most is None else most
    if count <= most:
        return list(range(count))
    spread = np.rint(np.linspace(0, count - 1, max(0, most - len(keep)))).astype(int)
    return sorted({0, *keep, *spread.tolist()})


def timeline(times: Sequence[float], scores: Sequence[float], durations: Sequence[float], *,
             target: str, marked: Sequence[int] = (), indices: Sequence[int] | None = None,
             total: int | None = None, scored: str = "", width: int = 800,
             height: int = 260) -> np.ndarray:
    """RGB uint8 picture (``height``, ``width``, 3) of p(``target``) against time.

    ``times`` (s), ``scores`` (p(target), 0..1) and ``durations`` (s) are per sampled frame, in
    order; ``marked``: positions of the explained frames. With the frames' source ``indices``
    and the source's ``total`` frame count, a frame followed by frames that were not scored holds
    its value for its own share of its duration only, and a gray line crosses the frames not
    scored (a one-frame flash never looks like a long stretch). ``scored``: which frames were
    scored (:meth:`explain.frames.Clip.scored_text`), written under the axis. The y axis is 0..1
    whatever the scores.
    """
    pic = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 48, width - 16, 16, height - 36
    end = max(times[-1] + durations[-1], 1e-6)

    def x(t: float) -> int:
        return int(round(left + (right - left) * t / end))

    def y(p: float) -> int:
        return int(round(bottom - (bottom - top) * min(max(p, 0.0), 1.0)))

    labels = []
    for p in (0.0, 0.25, 0.5, 0.75, 1.0):
        cv2.line(pic, (left, y(p)), (right, y(p)), GRID, 1)
        labels.append((f"{p:.2f}", 4, y(p) - 6, INK))
    for t in np.linspace(0.0, end, 6):
        labels.append((f"{number(t, 2)} s", x(t) - 12, bottom + 4, INK))
    caption = f"p({target}) per frame" + (f": {scored} scored" if scored else "")
    if indices is not None and total and len(indices) < total:
        caption += "; gray: frames not scored"
    labels.append((caption, left, height - 17, INK))
    cv2.rectangle(pic, (left, top), (right, bottom), INK, 1)
    own_share = list(durations)
    if indices is not None and total:
        ends = [*indices[1:], total]
        own_share = [d / max(1, e - i) for d, e, i in zip(durations, ends, indices, strict=True)]
    points: list[tuple[int, int]] = []
    for k, (t, d, p, own) in enumerate(zip(times, durations, scores, own_share, strict=True)):
        if own < d:  # frames not scored follow: the step, then a gray line to the next one
            points += [(x(t), y(p)), (x(t + own), y(p))]
            cv2.polylines(pic, [np.array(points, np.int32)], False, LINE, 2, cv2.LINE_AA)
            following = (x(t + d), y(scores[k + 1] if k + 1 < len(scores) else p))
            cv2.line(pic, points[-1], following, GAP, 1, cv2.LINE_AA)
            points = []
        else:
            points += [(x(t), y(p)), (x(t + d), y(p))]
    if points:
        cv2.polylines(pic, [np.array(points, np.int32)], False, LINE, 2, cv2.LINE_AA)
    top_k = int(np.argmax(scores))
    cv2.circle(pic, (x(times[top_k] + own_share[top_k] / 2), y(scores[top_k])), 8, MARK, 1,
               cv2.LINE_AA)
    for k in marked:
        centre = (x(times[k] + own_share[k] / 2), y(scores[k]))
        cv2.circle(pic, centre, 4, MARK, -1, cv2.LINE_AA)
    return draw_text(pic, labels, TEXT_SIZE - 2)


def animation(frames: Sequence[np.ndarray], maps: dict[int, Heatmap], *,
              colormap: str | None = None, alpha: float = 0.5, legend: bool = True,
              side: int = ANIMATION_SIDE) -> list[np.ndarray]:
    """One picture per frame of ``frames`` (RGB uint8, in order): ``maps`` gives the map of
    each explained frame by position; all are drawn on one scale (see the module docstring),
    frames and maps shrunk so that the longer side is at most ``side`` pixels (an animation
    holds every frame in memory and in the file)."""
    values = [hm.values for hm in maps.values()]
    signed = any(hm.signed for hm in maps.values())
    floor = max((hm.noise_floor or 0.0) for hm in maps.values())
    if signed:
        m = max(max(float(np.abs(v).max()) for v in values), floor) or 1.0
        lo, hi = -m, m
    else:
        lo, hi = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
        hi = max(hi, lo + floor)
    pictures = []
    for k, frame in enumerate(frames):
        small = shrink(frame, side)
        if k in maps:
            shown = shrink_map(maps[k], side)
            pictures.append(figure(small, shown, colormap=colormap, alpha=alpha,
                                   normalize="fixed", vmin=lo, vmax=hi, legend=legend))
        else:
            pictures.append(small)
    height = max(p.shape[0] for p in pictures)
    width = max(p.shape[1] for p in pictures)
    return [np.pad(p, ((0, height - p.shape[0]), (0, width - p.shape[1]), (0, 0)),
                   constant_values=255) for p in pictures]


def save_gif(pictures: Sequence[np.ndarray], durations: Sequence[float],
             path: str | os.PathLike) -> Path:
    """Write ``pictures`` (RGB uint8, one size) as an animated GIF that loops, picture k shown
    for ``durations[k]`` seconds (GIF keeps hundredths of a second; at least 0.02 s), atomically;
    return the path written."""
    images = [Image.fromarray(np.ascontiguousarray(p), "RGB") for p in pictures]
    ms = [max(20, int(round(d * 100)) * 10) for d in durations]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=ms,
                   loop=0, disposal=1)
    return write_bytes(path, buffer.getvalue())
