"""Scores and explanations of clips (animated images, videos): every sampled frame is scored, the
frames that matter are explained.

- :func:`score_clip` scores every sampled frame (:mod:`explain.frames`). A clip's answer is its
  MAX frame for the target (a clip is as unsafe as its worst frame: an animation whose first
  frame is safe and whose 40th is not must not pass as safe); the mean and the max frame's index
  and time come with it.
- :func:`explain_clip` explains the ``top_frames`` highest-scoring frames (ties: the earlier
  frame first), or every sampled frame with ``all_frames``, through a ``maps`` function such
  as :func:`frame_maps` (any method) or :func:`explain.frame_reuse.occlusion_maps` (occlusion
  with reuse of the previous frame's windows).
- :func:`frame_maps` reuses the previous explained frame's map, exactly, when the two frames
  differ nowhere by more than ``threshold`` levels (0..255; 0 = identical pixels, exact).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from explain.choices import (
    AUDIT_BATCH,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_REUSE_THRESHOLD,
    DEFAULT_TOP_FRAMES,
)
from explain.frames import Clip, read_clip
from explain.heatmap import Heatmap
from explain.models.base import Classifier, resolve_target
from explain.outputs import write_map
from explain.perturbation import Images, score_all
from explain.progress import Progress
from explain.render import figure
from explain.render_clip import animation, shown_frames, timeline
from explain.windows import fit_batch

FrameMaps = Callable[[Sequence[np.ndarray], Progress | None], list[Heatmap]]


@dataclass
class ClipScores:
    """Every sampled frame's class probabilities, ``scores`` (frames × classes), with the
    frames' source ``indices`` and ``times`` (seconds); ``target`` is the class the clip is
    judged by (its index into ``class_names``)."""

    class_names: list[str]
    target: int
    indices: list[int]
    times: list[float]
    scores: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def curve(self) -> np.ndarray:
        """p(target) of each sampled frame, in order."""
        return self.scores[:, self.target]

    @property
    def top(self) -> int:
        """Position (among the sampled frames) of the highest p(target); the earliest on ties."""
        return int(np.argmax(self.curve))

    @property
    def max(self) -> float:
        """The clip's answer: the highest p(target) over its sampled frames."""
        return float(self.curve[self.top])

    @property
    def mean(self) -> float:
        """The mean p(target) over the sampled frames (each frame counts once)."""
        return float(self.curve.mean())

    def summary(self) -> dict:
        """The clip's answer as JSON-ready values: target, max, mean, the max frame's index and
        time, the number of frames scored, and the class probabilities of the max frame."""
        top = self.top
        return {"target": self.class_names[self.target], "max": self.max, "mean": self.mean,
                "max_frame": self.indices[top], "max_time": round(self.times[top], 6),
                "frames_scored": len(self.indices),
                "scores": dict(zip(self.class_names, self.scores[top].tolist(), strict=True))}

    def frames(self) -> list[dict]:
        """Every sampled frame: its index, time (s) and class probabilities."""
        return [{"index": i, "time": round(t, 6),
                 "scores": dict(zip(self.class_names, row.tolist(), strict=True))}
                for i, t, row in zip(self.indices, self.times, self.scores, strict=True)]


@torch.no_grad()
def score_frames(classifier: Classifier, frames: Sequence[np.ndarray], *,
                 batch_size: int = AUDIT_BATCH, progress: Progress | None = None) -> np.ndarray:
    """Class probabilities (frames × classes, float64) of RGB uint8 ``frames`` of one size, in
    batches of ``batch_size`` (checked against the memory budget); ``progress(done, total)``
    after each batch."""
    shape = frames[0].shape[:2]
    step = fit_batch(batch_size, classifier.device, shape, classifier.input_size, len(frames))
    return score_all(Images(classifier, frames), step, progress=progress).double().numpy()


def score_clip(classifier: Classifier, clip: Clip, target: str | int = "nsfw", *,
               batch_size: int = AUDIT_BATCH, progress: Progress | None = None) -> ClipScores:
    """Every sampled frame of ``clip`` scored by ``classifier``; the clip is judged by
    ``target`` (name or index). See :class:`ClipScores` for the answer (max, mean, top)."""
    t = resolve_target(classifier, target)
    scores = score_frames(classifier, [f.rgb for f in clip.frames], batch_size=batch_size,
                          progress=progress)
    return ClipScores(list(classifier.class_names), t, [f.index for f in clip.frames],
                      [f.time for f in clip.frames], scores, list(clip.notes))


def judge_clip(classifier: Classifier, path: str | Path, target: str | int = "nsfw", *,
               max_pixels: int = DEFAULT_MAX_PIXELS, frames: str = "auto",
               max_frames: int = DEFAULT_MAX_FRAMES) -> tuple[Clip, ClipScores, str]:
    """Read the clip at ``path`` and score its frames: (the clip, its scores, a sentence saying
    which frame judges it and how many were scored). The clip's answer is its max frame,
    ``clip.frames[scores.top]`` (see the module docstring). ``max_pixels``, ``frames`` (the
    sampling) and ``max_frames`` as in :func:`explain.frames.read_clip`; a bad file raises its
    ImageError."""
    clip = read_clip(path, frames, max_frames=max_frames, max_pixels=max_pixels)
    scores = score_clip(classifier, clip, target)
    top = clip.frames[scores.top]
    return clip, scores, (
        f"clip: {clip.scored_text()} scored; "
        f"judged by its max frame {top.index} at {top.time:.2f} s (mean "
        f"p({scores.class_names[scores.target]}) over frames {scores.mean:.4f})")


def changed(a: np.ndarray, b: np.ndarray, threshold: int = 0) -> np.ndarray:
    """Pixels (H, W) where frames ``a`` and ``b`` differ by more than ``threshold`` levels
    (0..255) in any channel."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)
    return diff > threshold


def frame_maps(make_map: Callable[[np.ndarray], Heatmap], frames: Sequence[np.ndarray], *,
               threshold: int = DEFAULT_REUSE_THRESHOLD,
               progress: Progress | None = None) -> list[Heatmap]:
    """``make_map(frame)`` for each frame, except that a frame differing from the previous one
    nowhere by more than ``threshold`` levels takes the previous map (``params["reuse"]`` says
    ``identical``; exact with threshold 0, whatever the method). ``progress(done, total)``
    counts frames."""
    maps: list[Heatmap] = []
    for k, frame in enumerate(frames):
        if maps and not changed(frames[k - 1], frame, threshold).any():
            maps.append(replace(maps[-1], params={**maps[-1].params, "reuse": "identical"},
                                seconds=0.0))
        else:
            hm = make_map(frame)
            maps.append(replace(hm, params={**hm.params, "reuse": "none"}))
        if progress is not None:
            progress(k + 1, len(frames))
    return maps


@dataclass
class ClipExplanation:
    """The explained frames of a clip: ``positions`` (among the sampled frames, in time order)
    and their ``maps``, beside the clip's ``scores``."""

    scores: ClipScores
    positions: list[int]
    maps: list[Heatmap]


def pick_frames(scores: ClipScores, top_frames: int = DEFAULT_TOP_FRAMES,
                all_frames: bool = False) -> list[int]:
    """Positions of the frames to explain, in time order: all, or the ``top_frames`` with the
    highest p(target) (the earlier frame first on ties)."""
    n = len(scores.indices)
    if all_frames:
        return list(range(n))
    order = np.argsort(-scores.curve, kind="stable")
    return sorted(order[:max(1, top_frames)].tolist())


def explain_clip(scores: ClipScores, clip: Clip, maps: FrameMaps, *,
                 top_frames: int = DEFAULT_TOP_FRAMES, all_frames: bool = False,
                 progress: Progress | None = None) -> ClipExplanation:
    """Explain the frames of ``clip`` that :func:`pick_frames` chooses from ``scores`` (made by
    :func:`score_clip` on the same clip) with ``maps(frames, progress)``, which returns one
    map per frame, in order (:func:`frame_maps`, or occlusion with reuse)."""
    positions = pick_frames(scores, top_frames, all_frames)
    return ClipExplanation(scores, positions,
                           maps([clip.frames[k].rgb for k in positions], progress))


def write_clip(clip: Clip, explained: ClipExplanation, stem: str | Path, *,
               colormap: str | None = None, alpha: float = 0.5, legend: bool = True,
               frame_pictures: int | None = None, **look: object) -> list[Path]:
    """Write a clip's explanation next to ``stem`` (``folder/NAME.METHOD``) and return the paths:

    - ``STEM.gif``: the animated overlay, every sampled frame for its duration (same timing as
      the clip's sampled frames), explained frames with their map on one scale for the clip
      (:func:`explain.render_clip.animation`); past
      :data:`~explain.render_clip.ANIMATION_FRAMES` frames, the explained frames and frames
      evenly spaced, each held until the next one shown
      (:func:`explain.render_clip.shown_frames`);
    - ``STEM.timeline.png``: p(target) over time, explained frames marked
      (:func:`explain.render_clip.timeline`);
    - ``STEM.frameINDEX.png``: each explained frame's figure (:func:`explain.render.figure`,
      with ``look``: normalize, vmin, vmax), INDEX the frame's index in the source; with
      ``frame_pictures`` only that many, the highest-scoring first.

    ``colormap``, ``alpha`` and ``legend`` are the renderer's drawing options.
    """
    maps = dict(zip(explained.positions, explained.maps, strict=True))
    scores = explained.scores
    shown = shown_frames(len(clip.frames), explained.positions)
    pictures = animation([clip.frames[k].rgb for k in shown],
                         {i: maps[k] for i, k in enumerate(shown) if k in maps},
                         colormap=colormap, alpha=alpha, legend=legend)
    ends = [clip.frames[k].time for k in shown[1:]] + [
        clip.frames[-1].time + clip.frames[-1].duration]
    held = [end - clip.frames[k].time for k, end in zip(shown, ends, strict=True)]
    picture = timeline(scores.times, scores.curve.tolist(), [f.duration for f in clip.frames],
                       target=scores.class_names[scores.target], marked=explained.positions,
                       indices=scores.indices, total=clip.source_frames,
                       scored=clip.scored_text())
    frames = {f".frame{clip.frames[k].index}.png": figure(
        clip.frames[k].rgb, maps[k], colormap=colormap, alpha=alpha, legend=legend, **look)
        for k in pictured(scores, explained.positions, frame_pictures)}
    return write_map(stem, animation=(pictures, held),
                     pictures={".timeline.png": picture, **frames}, json=False)


def pictured(scores: ClipScores, positions: Sequence[int],
             frame_pictures: int | None = None) -> list[int]:
    """The explained ``positions`` that get a picture of their own: all, or the
    ``frame_pictures`` highest-scoring (in time order)."""
    return sorted(sorted(positions, key=lambda k: -scores.curve[k])[:frame_pictures])


# the longest ending write_clip adds to a stem (a frame index of up to 10 digits): names are
# sized for it before any work
LONGEST_ENDING = ".frame0000000000.png"


def output_names(stem: str | Path, clip: Clip, scores: ClipScores, positions: Sequence[int],
                 frame_pictures: int | None = None) -> list[str]:
    """Every file :func:`write_clip` writes for these explained ``positions`` (to check them
    before any work)."""
    return [f"{stem}.gif", f"{stem}.timeline.png",
            *(f"{stem}.frame{clip.frames[k].index}.png"
              for k in pictured(scores, positions, frame_pictures))]
