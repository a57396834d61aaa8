"""Sliding-window map: where in the image the classifier sees the target on its own.

Each window (see :mod:`explain.windows`) is cropped, resized to the classifier's input size (when
it declares one; otherwise fed at the box size) and scored alone; each pixel gets the mean of
``p_t(crop)`` over the windows covering it. It answers "which part, shown by itself, is
classified as t", a complement to occlusion, which asks "which part, hidden, changes the score".

Speed: the whole image goes to the classifier's device once; each batch of crops
(:class:`Crops`, a copy builder of :mod:`explain.perturbation`) is one gather (pixel indices
built from the batch's window starts) and one resize, followed by one model call.
The resize is the one the classifier's own preprocessing applies, so the scores equal scoring each
crop separately.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from explain.heatmap import NOISE_FLOOR, Heatmap
from explain.images import as_rgb, to_tensor
from explain.models.base import (
    Classifier,
    execution_provider,
    model_view,
    precision_params,
    resize,
    resolve_target,
)
from explain.perturbation import Copies, probabilities, score_all, work_size
from explain.progress import Progress
from explain.windows import (
    DEFAULT_BOX,
    DEFAULT_STRIDE,
    Size,
    WindowPlan,
    check_batch_size,
    window_mean,
    window_plan,
)


@torch.no_grad()
def sliding_window_map(classifier: Classifier, image: np.ndarray | str | os.PathLike, *,
                       box: Size = DEFAULT_BOX, stride: Size = DEFAULT_STRIDE,
                       target: str | int = "nsfw", batch_size: int | None = None,
                       progress: Progress | None = None, windows: WindowPlan | None = None
                       ) -> Heatmap:
    """Sliding-window map of ``image`` for ``target`` (the maths: the module docstring).

    ``classifier``: any :class:`~explain.models.base.Classifier` (black box is enough). ``image``:
    an RGB array (uint8, or float in [0, 1]) or a path. ``box``/``stride``: original pixels (int) or
    fractions of the shorter side (float in (0, 1]), one or (h, w); see :mod:`explain.windows`.
    ``target``: the class, by name or index. ``batch_size``: crops per ``predict`` (default:
    :func:`~explain.windows.default_batch_size`; a given size over the memory budget is refused).
    ``progress(done, total)`` is called after each batch, counting windows. ``windows``: the
    window plan of ``box`` and ``stride`` when a job made it once for all its images (then
    ``box`` and ``stride`` are not given).

    Returns a :class:`~explain.heatmap.Heatmap` in the original image's coordinates: per pixel
    the mean over covering windows of p(target | the crop alone). A probability: unsigned, bounds
    (0, 1), noise floor :data:`~explain.heatmap.NOISE_FLOOR` on its spread; ``score`` is the
    whole image's probability of ``target``; ``params["baseline_score"]`` what a crop of nothing
    scores (:func:`blank_score`), ``params["model_view"]`` the part of the image some crop's
    model input covers (:func:`crops_view`).
    """
    start = time.perf_counter()
    x = to_tensor(as_rgb(image), classifier.device)[0]
    shape = (int(x.shape[1]), int(x.shape[2]))
    t = resolve_target(classifier, target)
    grid = window_plan(box, stride, windows)
    placed = grid.grid(shape)
    device = classifier.device
    bh, bw = (int(v) for v in placed[0, 2:] - placed[0, :2])
    size = work_size(classifier, (bh, bw))
    n = len(placed)
    step = check_batch_size(batch_size, device, (max(bh, size[0]), max(bw, size[1])), n)
    probs = probabilities(classifier, x.unsqueeze(0))
    score = float(probs[0, t])
    precision = precision_params(classifier, x.unsqueeze(0), probs)
    scores = crop_scores(classifier, x, placed, size, t, step, progress)
    values = window_mean(shape, placed, scores)
    name = classifier.class_names[t]
    return Heatmap(values=values, method="sliding", target=name, score=score,
                   box=(bh, bw), stride=grid.pixels(shape)[1], windows=n,
                   seconds=time.perf_counter() - start,
                   params={"baseline": BLANK, "baseline_score": blank_score(classifier, size, t),
                           "model_view": crops_view(classifier, placed),
                           "provider": execution_provider(classifier), **precision,
                           "batch_size": step, "crop_size": list(size), "box_asked": grid.box,
                           "stride_asked": grid.stride},
                   unit=f"p({name}) of the crop alone", bounds=(0.0, 1.0),
                   noise_floor=NOISE_FLOOR)


BLANK = "blank gray crop"
"""What a sliding map's baseline scores: a crop with nothing in it, uniform gray (0.5)."""


@torch.no_grad()
def blank_score(classifier: Classifier, size: tuple[int, int], target: int) -> float:
    """p(``target``) of a blank gray crop of ``size`` (the sliding map's canvas: a crop's score
    means something only against what a crop of nothing scores)."""
    blank = torch.full((1, 3, *size), 0.5, device=classifier.device)
    return float(probabilities(classifier, blank)[0, target])


def crops_view(classifier: Classifier, windows: np.ndarray) -> list[int]:
    """The part of the image some crop's model input covers: each window's
    :func:`~explain.models.base.model_view` (the model's resize and centre crop of the crop)
    placed at the window, their bounding box, in the image's pixels."""
    box = (int(windows[0, 2] - windows[0, 0]), int(windows[0, 3] - windows[0, 1]))
    top, left, bottom, right = model_view(classifier, box)
    return [int(windows[:, 0].min() + top), int(windows[:, 1].min() + left),
            int(windows[:, 0].max() + bottom), int(windows[:, 1].max() + right)]


class Crops(Copies):
    """The copy builder of the sliding map: each window of ``windows`` (n × 4 [y0, x0, y1, x1),
    one box size, in x's pixels) cropped from ``x`` (3 × H × W on the classifier's device) and
    resized to ``size`` when it differs from the box: one gather and one resize per batch.
    Neither fast path applies: a crop is a new image at the model's input (no intact activations
    to reuse), and drill-down's rule is occlusion's (its drops)."""

    def __init__(self, classifier: Classifier, x: torch.Tensor, windows: np.ndarray,
                 size: tuple[int, int]) -> None:
        self.classifier, self.x, self.size = classifier, x, size
        self.box = (int(windows[0, 2] - windows[0, 0]), int(windows[0, 3] - windows[0, 1])) \
            if len(windows) else (0, 0)
        self.starts = torch.from_numpy(windows[:, :2]).to(x.device)
        self.dy = torch.arange(self.box[0], device=x.device)
        self.dx = torch.arange(self.box[1], device=x.device)

    def __len__(self) -> int:
        return len(self.starts)

    def copies(self, lo: int, hi: int) -> torch.Tensor:
        s = self.starts[lo:hi]
        crops = self.x[:, (s[:, 0:1] + self.dy)[:, :, None],
                       (s[:, 1:2] + self.dx)[:, None, :]].transpose(0, 1)
        return crops if self.size == self.box else resize(crops, self.size)


def crop_scores(classifier: Classifier, x: torch.Tensor, windows: np.ndarray,
                size: tuple[int, int], target: int, step: int,
                progress: Progress | None = None) -> np.ndarray:
    """p(``target``) (float64 of the model's float32) of each window of ``windows`` cropped from
    ``x`` and scored alone (:class:`Crops`), ``step`` crops per model call;
    ``progress(done, n)`` after each batch. The sliding map's scoring, and the clip maps'
    (:mod:`explain.frame_reuse`)."""
    scores = score_all(Crops(classifier, x, windows, size), step, target, progress=progress)
    return scores.float().double().numpy()
