"""The audit's pixels for a file: a still image as :func:`explain.images.load_image` reads it; a
clip (animated GIF/WebP/PNG, video) as its MAX frame.

A clip is judged by the frame with the highest p(target) among its sampled frames (the audit's
``--frames``, by default every frame up to ``--max-frames`` 3600, past it the difference pass of
:func:`explain.frames.read_clip`): an animation whose first frame is safe and whose 40th is not
is as unsafe as its 40th frame. That frame is what the audit scores, detects parts on, explains
(its heatmap records ``params["frame"]``, the frame's index in the clip) and shows on the FP/FN
card (read again by that index, :func:`explain.frames.frame_at`); the image's notes say which
frame it was, how many frames were scored, and the clip's mean score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from explain.choices import DEFAULT_MAX_FRAMES
from explain.clips import judge_clip
from explain.frames import frame_at, is_clip
from explain.images import load_image
from explain.models.base import Classifier


def audit_pixels(path: Path, *, max_pixels: int, notes: list[str],
                 classifier: Classifier | None = None, target: str | int = "nsfw",
                 frame: int | None = None, frames: str = "auto",
                 max_frames: int = DEFAULT_MAX_FRAMES) -> tuple[np.ndarray, int | None]:
    """(RGB uint8 pixels, the clip frame's index or None for a still image) of ``path``.

    A clip's frame is its max frame for ``target`` among the frames sampled by ``frames`` (at
    most ``max_frames``) and scored by ``classifier`` (a sentence saying which, and how many
    frames were scored, is appended to ``notes``), or, given ``frame`` (or without a
    classifier), the frame of that source index (0): the page shows the frame the audit judged
    without scoring again. ``max_pixels`` as in :func:`explain.images.load_image`. Raises
    :class:`~explain.errors.ImageError` for a bad file."""
    if not is_clip(path):
        return load_image(path, max_pixels=max_pixels, notes=notes), None
    if frame is not None or classifier is None:
        chosen = frame_at(path, frame or 0, max_pixels=max_pixels)
        return chosen.rgb, chosen.index
    clip, scores, note = judge_clip(classifier, path, target, max_pixels=max_pixels,
                                    frames=frames, max_frames=max_frames)
    notes.append(note)
    top = clip.frames[scores.top]
    return top.rgb, top.index


def judged_frame(npy: Path) -> int | None:
    """The clip frame a saved audit heatmap (``NAME.npy`` beside its ``NAME.json``) explains,
    or None (a still image, or metadata that cannot be read)."""
    try:
        meta = json.loads(npy.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    frame = meta.get("params", {}).get("frame")
    return frame if isinstance(frame, int) else None
