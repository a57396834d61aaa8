"""Occlusion sensitivity (Zeiler & Fergus): how much the target's probability drops when a window
of the image is hidden.

For target class t, each pixel gets the mean, over the windows covering it (see
:mod:`explain.windows`), of ``p_t(image) − p_t(image with the window filled)``. Positive values
mark regions that support t. The classic "1 − p_t(occluded)" picture is this map plus the constant
``1 − p_t(image)``; on ``jet`` the renderer's ``minmax`` normalisation is shift-invariant, so both
look the same (by default the signed map is drawn on a diverging scale centred on 0).

Relation to captum: with windows captum can express (stride ≤ box and ``(side − box) % stride ==
0`` on both axes, so that the grids coincide) and the image already at the classifier's input size,

    occlusion_map(...).values == Occlusion(f).attribute(x, sliding_window_shapes=(3, b, b),
        strides=(3, s, s), baselines=fill, target=t).sum(1)[0] / 3

captum also averages over covering windows and gives every channel the same value, so summing
the channels and dividing by 3 gives the same per-pixel mean.

Speed: when the classifier declares ``input_size``, the image is resized there once and the
windows (defined in original pixels) are scaled to it, so no occluded copy is ever resized. For
the torch and ONNX adapters the copies are built in the model's own input (:class:`OccludedCopies`:
the image and the fill preprocessed once, each window's rectangle copied from the fill's, so no
mask, normalisation or transpose runs per copy); for any other model each batch is one
``torch.where`` against masks built from the batch's window bounds; either way each batch is ONE
model call on the classifier's device, and the map is accumulated in original coordinates.
Every window is scored through the one function :func:`occluded_scores`;
``drill_down=r`` (:mod:`explain.drill_down`) scores only part of the fine grid and interpolates
the rest; for a torch model that torch.fx traces, :mod:`explain.incremental` scores the windows
exactly by recomputing only what each window changes (both combine).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import cast

import numpy as np
import torch

from explain.choices import DEFAULT_FILL, FILLS, check_occlusion_fill
from explain.drill_down import check_drill_down, drilled_drops
from explain.heatmap import NOISE_FLOOR, Heatmap
from explain.incremental import Network, check_incremental, network_for, window_scores
from explain.models.base import (
    Classifier,
    FixedInput,
    execution_provider,
    model_view,
    pixelwise_input,
    precision_params,
    resolve_target,
)
from explain.perturb import fill_values, masked
from explain.perturbation import Copies, probabilities, score_all, work_image
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


class OccludedCopies(Copies):
    """The occluded copies of one image and how ``classifier`` scores them, one model call per
    batch: :meth:`build` makes the batch of copies for some windows, :meth:`score` scores it;
    the copy builder (:class:`~explain.perturbation.Copies`) of the rows of ``bounds``
    (:meth:`rows` binds others).

    ``x``: the image, 1×3×H×W RGB in [0, 1] at the work size, on the classifier's device;
    ``fill``: what hidden pixels become, broadcastable to ``x``. When the classifier allows it
    (:func:`~explain.models.base.pixelwise_input`: the torch and ONNX adapters with a plain
    :class:`~explain.models.base.Preprocess` and the image at their input size), the image and
    the fill are turned into model inputs ONCE, and each copy is the image's input with its
    window's rectangle (:meth:`~explain.models.base.Preprocess.input_windows`) copied from the
    fill's, in the model's own layout (on the CPU one slice copy per window; on a GPU one
    ``torch.where`` per batch, so as not to launch two kernels per window): no per-copy
    preprocessing or transpose, and the same numbers as preprocessing each filled copy (every
    step of a Preprocess but the resize, which does not run, is pixel-wise). Otherwise (a
    function, an endpoint, an input transform) the copies are RGB images, ``torch.where``
    against :func:`window_masks`, scored by ``predict``."""

    def __init__(self, classifier: Classifier, x: torch.Tensor, fill: torch.Tensor,
                 bounds: torch.Tensor | None = None) -> None:
        self.classifier = classifier
        self.x, self.fill = x, fill
        self.bounds = torch.zeros((0, 4), dtype=torch.int64) if bounds is None else bounds.cpu()
        self.size = (int(x.shape[2]), int(x.shape[3]))
        self.in_input = pixelwise_input(classifier, self.size)
        if self.in_input:
            self.fixed = cast(FixedInput, classifier)  # what pixelwise_input checked
            self.last = self.fixed.layout == "NHWC"
            # the image in the input's memory order first (a decoded image is channels-last in
            # memory), so the pixel-wise preprocessing runs over dense rows; contiguous once
            # here: each batch is then a plain copy, not a transposing one
            dense = x.contiguous(memory_format=torch.channels_last if self.last
                                 else torch.contiguous_format)
            self.x_input = self.fixed.model_input(dense).contiguous()
            self.fill_input = self.fixed.model_input(fill.expand_as(x)).contiguous()
            shape = self.x_input.shape
            self._input_size = (int(shape[1]), int(shape[2])) if self.last else \
                (int(shape[2]), int(shape[3]))

    def __len__(self) -> int:
        return len(self.bounds)

    def rows(self, bounds: torch.Tensor) -> OccludedCopies:
        """The same copies (nothing prepared again) over the windows ``bounds``."""
        other = copy.copy(self)
        other.bounds = bounds.cpu()  # once: the batches never wait for the device
        return other

    def copies(self, lo: int, hi: int) -> torch.Tensor:
        return self.build(self.bounds[lo:hi])

    def empty(self, n: int) -> torch.Tensor:
        like = self.x_input if self.in_input else self.x
        return torch.empty((n, *like.shape[1:]), dtype=like.dtype, device=like.device)

    def copies_into(self, out: torch.Tensor, lo: int, hi: int) -> None:
        self.build(self.bounds[lo:hi], out)

    def build(self, bounds: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The copies for ``bounds`` ((b, 4) int64 windows [top, left, bottom, right) in work
        pixels; an empty one = the intact image): what :meth:`score` takes; written into
        ``out`` (b rows of :meth:`empty`) when given."""
        if not self.in_input:
            return masked(self.x, self.fill, window_masks(bounds.to(self.x.device), self.size),
                          out)
        rect = self.fixed.preprocess.input_windows(bounds.cpu().numpy(), self.size)
        if self.x_input.device.type != "cpu":  # one launch, not two per window
            where = torch.from_numpy(rect).to(self.x_input.device, non_blocking=True)
            keep = window_masks(where, self._input_size)
            keep = keep[..., None] if self.last else keep[:, None]
            if out is None:
                return torch.where(keep, self.x_input, self.fill_input)
            return torch.where(keep, self.x_input, self.fill_input, out=out)
        # always a new batch: contiguous() of a one-copy expand would be x_input itself
        batch = self.empty(len(rect)) if out is None else out
        batch.copy_(self.x_input.expand(len(rect), *self.x_input.shape[1:]))
        for i, (top, left, bottom, right) in enumerate(rect.tolist()):
            if bottom > top:
                if self.last:
                    batch[i, top:bottom, left:right] = self.fill_input[0, top:bottom, left:right]
                else:
                    batch[i, :, top:bottom, left:right] = \
                        self.fill_input[0, :, top:bottom, left:right]
        return batch

    def score(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N×C) of a batch :meth:`build` made (or several concatenated)."""
        if self.in_input:
            return self.fixed.predict_input(batch)
        return super().score(batch)


def window_masks(bounds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bool b×H×W masks at the work ``size``, on ``bounds``' device: True outside each window of
    ``bounds`` ((b, 4) top, left, bottom, right), the pixels each occluded copy keeps."""
    b = bounds[:, :, None]
    rows = torch.arange(size[0], device=bounds.device).view(1, -1, 1)
    cols = torch.arange(size[1], device=bounds.device).view(1, 1, -1)
    in_rows = (rows >= b[:, 0:1]) & (rows < b[:, 2:3])
    return ~(in_rows & (cols >= b[:, 1:2]) & (cols < b[:, 3:4]))



LEAD = 2
"""Rows of :attr:`OcclusionPlan.bounds` before the windows: the intact image (an empty window)
and the baseline (one window over the whole work image: every window hidden at once)."""


@dataclass
class OcclusionPlan:
    """Everything an occlusion map scores (see :func:`plan_occlusion`): the image and the fill
    ready on the classifier's device; ``bounds`` (on the host), row 0 an empty window (the intact
    image), row 1 the whole image (the baseline: the fill's own score), rows 2… the windows
    scaled to the work size (``grid``: the window plan, box and stride as asked);
    :attr:`copies` builds and scores the occluded copies of any rows and
    :meth:`heatmap` turns their scores into the map. ``fill`` is the fill used (``fill_asked``
    ``auto`` chose it; ``fill_scores``: each fill's own score, when it did).
    :func:`occlusion_map` drives it batch after batch; the service
    (:mod:`explain.serve.batching`) interleaves several plans in one model batch."""

    shape: tuple[int, int]
    windows: np.ndarray
    x: torch.Tensor
    baseline: torch.Tensor
    bounds: torch.Tensor
    target: int
    target_name: str
    grid: WindowPlan
    fill: str
    classifier: Classifier
    fill_asked: str = ""
    fill_scores: dict[str, float] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """The work size (H, W): the classifier's input size, else the image's."""
        return tuple(self.x.shape[2:])  # type: ignore[return-value]

    @property
    def n(self) -> int:
        """Masks to score: the intact image, the baseline and one per window."""
        return len(self.bounds)

    @cached_property
    def copies(self) -> OccludedCopies:
        """How the occluded copies of rows of :attr:`bounds` are built and scored."""
        return OccludedCopies(self.classifier, self.x, self.baseline, self.bounds)

    def heatmap(self, p: np.ndarray, seconds: float, batch_size: int) -> Heatmap:
        """The map from ``p``, p(target) of every row in order (float64, length :attr:`n`)."""
        return self.drop_map(float(p[0]), float(p[1]), p[0] - p[LEAD:], seconds, batch_size,
                             None, len(self.windows))

    def drop_map(self, score: float, baseline: float, drops: np.ndarray, seconds: float,
                 batch_size: int, drill: float | None, evaluated: int,
                 incremental: bool = False, tau: float | None = None) -> Heatmap:
        """The map from every window's drop (scored or, after drill-down ``drill``, estimated;
        ``evaluated`` of them scored), the intact image's ``score`` and the ``baseline`` (the
        whole image filled); ``incremental`` and ``tau`` say how the windows were scored
        (recorded in ``params``)."""
        return Heatmap(values=window_mean(self.shape, self.windows, drops),
                       method="occlusion", target=self.target_name, score=score,
                       box=tuple(int(v) for v in self.windows[0, 2:] - self.windows[0, :2]),
                       stride=self.grid.pixels(self.shape)[1],
                       windows=len(self.windows), seconds=seconds,
                       params={"fill": self.fill, "fill_asked": self.fill_asked or self.fill,
                               "fill_scores": self.fill_scores,
                               "baseline": f"whole image {self.fill}-filled",
                               "baseline_score": baseline,
                               "model_view": model_view(self.classifier, self.shape),
                               "provider": execution_provider(self.classifier),
                               **precision_params(self.classifier, self.x),
                               "batch_size": batch_size,
                               "work_size": list(self.size), "box_asked": self.grid.box,
                               "stride_asked": self.grid.stride, "incremental": incremental,
                               "tau": tau, "drill_down": drill, "windows_evaluated": evaluated,
                               "windows_total": len(self.windows)},
                       signed=True, unit=f"drop in p({self.target_name})",
                       noise_floor=NOISE_FLOOR)


def plan_occlusion(classifier: Classifier, image: np.ndarray | str | os.PathLike, *,
                   box: Size = DEFAULT_BOX, stride: Size = DEFAULT_STRIDE, fill: str = DEFAULT_FILL,
                   target: str | int = "nsfw", windows: WindowPlan | None = None
                   ) -> OcclusionPlan:
    """The :class:`OcclusionPlan` of :func:`occlusion_map` (same arguments, same checks): the
    image at the classifier's input size on its device, the fill (``auto``:
    :func:`choose_fill`, one model call), the scaled windows."""
    check_occlusion_fill(fill)
    work = work_image(classifier, image)
    shape, size, x = work.shape, work.size, work.x
    t = resolve_target(classifier, target)
    grid = window_plan(box, stride, windows)
    windows = grid.grid(shape)
    scaled = work.to_work(windows)
    window = tuple(int(v) for v in scaled[0, 2:] - scaled[0, :2])
    asked, fill_scores = fill, None
    if fill == "auto":
        fill, fill_scores = choose_fill(classifier, x, t, window)
    baseline = fill_values(x, fill, window)
    # on the host: building copies from them never waits for the device
    bounds = torch.from_numpy(np.concatenate([lead_rows(size), scaled]))
    return OcclusionPlan(shape=shape, windows=windows, x=x, baseline=baseline, bounds=bounds,
                         target=t, target_name=classifier.class_names[t], grid=grid, fill=fill,
                         classifier=classifier, fill_asked=asked, fill_scores=fill_scores)


def lead_rows(size: tuple[int, int]) -> np.ndarray:
    """The :data:`LEAD` rows scored before the windows, in work pixels of ``size``: an empty
    window (the intact image) and the whole image (the baseline)."""
    return np.array([[0, 0, 0, 0], [0, 0, size[0], size[1]]], np.int64)


@torch.no_grad()
def choose_fill(classifier: Classifier, x: torch.Tensor, target: int, window: tuple[int, int]
                ) -> tuple[str, dict[str, float]]:
    """``fill="auto"``: of :data:`~explain.choices.FILLS`, the one whose own score (the whole
    image ``x`` filled with it, ``window`` the work-pixel window for ``blur``'s σ) has the least
    evidence for ``target``, the lowest p(target); ties go to the earlier fill. Returns it and
    every fill's score (one model call of four images)."""
    canvases = torch.cat([fill_values(x, f, window).expand_as(x) for f in FILLS])
    scores = probabilities(classifier, canvases)[:, target].double().tolist()
    chosen = FILLS[int(np.argmin(scores))]
    return chosen, {f: float(v) for f, v in zip(FILLS, scores, strict=True)}


def occluded_scores(classifier: Classifier, x: torch.Tensor, fill: torch.Tensor,
                   bounds: torch.Tensor, target: int, step: int, progress: Progress | None,
                   net: Network | None = None, tau: float | None = None,
                   copies: OccludedCopies | None = None) -> torch.Tensor:
    """p(``target``) of ``x`` (1×3×H×W at the work size, on the classifier's device) with each
    window of ``bounds`` filled with ``fill`` (broadcastable to ``x``), as a tensor on the CPU,
    one score per row. ``bounds``: (n, 4) int64 windows (top, left, bottom, right) in work
    pixels; an empty window (e.g. all zeros) scores the intact image. ``step`` windows per
    ``predict``; ``progress(done, n)`` after each batch. ``net`` (from
    :func:`explain.incremental.network_for`): score by incremental inference
    (:func:`~explain.incremental.window_scores`: its copy builder through the same loop), with
    ``tau`` its projective-field threshold; None: full re-inference of every occluded copy, made by
    ``copies`` (the :class:`OccludedCopies` of ``x`` and ``fill``, so that several calls on one
    image prepare them once; made here when None). Every window an occlusion map scores goes
    through here: exact, drill-down, incremental or both."""
    if net is not None:
        return window_scores(classifier, net, x, fill, bounds.to(x.device), target, step,
                             progress, tau=tau).cpu()
    copies = (copies or OccludedCopies(classifier, x, fill)).rows(bounds)
    return score_all(copies, step, target, progress=progress)


class Drill:
    """Drill-down's levels over an occlusion map's rows ``bounds`` (:attr:`OcclusionPlan.bounds`:
    the :data:`LEAD` rows, then the fine windows in work pixels): :meth:`rows` are the rows a
    level of grid points scores (the lead rows ride in the first level, as in the exact map's
    first batch), :meth:`drops` turns their p(target) into the drops
    :func:`explain.drill_down.drill_levels` is sent. ``windows``: the same windows in original
    pixels, which give the grid's shape (scaled down, distinct tops may coincide). Stills and
    clips (:func:`drilled_scores`) and the service's shared batches
    (:class:`explain.serve.batching.OcclusionRun`) drill through here."""

    def __init__(self, bounds: np.ndarray, windows: np.ndarray) -> None:
        rows = len(np.unique(windows[:, 0]))
        self.grid = (rows, len(windows) // rows)
        self.head, self.scaled = bounds[:LEAD], bounds[LEAD:]
        self.intact: list[float] = []  # p(target) of the intact image and of the baseline

    @property
    def lead(self) -> int:
        """Lead rows in the next level: all of them in the first, none after."""
        return 0 if self.intact else len(self.head)

    def rows(self, points: np.ndarray) -> np.ndarray:
        """The rows (work-pixel bounds) of the level of grid ``points`` ((m, 2) row, column)."""
        return np.concatenate([self.head[:self.lead],
                               self.scaled[points[:, 0] * self.grid[1] + points[:, 1]]])

    def drops(self, p: np.ndarray) -> np.ndarray:
        """The level's drops from ``p``, p(target) of its :meth:`rows` in order (float64)."""
        lead = self.lead
        self.intact.extend(p[:lead].tolist())
        return self.intact[0] - p[lead:]

    def result(self, drops: np.ndarray, known: np.ndarray) -> tuple[float, float, np.ndarray, int]:
        """(the intact image's score, the baseline's, every window's drop, the number scored)
        from what drill-down returned."""
        return self.intact[0], self.intact[1], drops.ravel(), int(known.sum())


def drilled_scores(scores: Callable[[torch.Tensor, Progress | None], torch.Tensor],
                   bounds: np.ndarray, windows: np.ndarray, progress: Progress | None, r: float
                   ) -> tuple[float, float, np.ndarray, int]:
    """Drill-down (:func:`explain.drill_down.drilled_drops`) over an occlusion map's rows
    ``bounds``, each level's rows (:class:`Drill`) scored by ``scores(bounds, progress)`` (the
    map's :func:`occluded_scores`): (the intact image's score, the baseline's, every window's
    drop, evaluated or estimated, the number evaluated). Stills (:func:`occlusion_map`) and clips
    (:func:`explain.frame_reuse.occlusion_maps`) drill through here."""
    drill = Drill(bounds, windows)
    done = 0  # windows scored so far, the head rows not counted

    def score(points: np.ndarray) -> np.ndarray:
        nonlocal done
        lead = drill.lead
        report = None if progress is None else \
            lambda k, total, before=done: progress(before + max(0, k - lead),
                                                   before + total - lead)
        p = scores(torch.from_numpy(drill.rows(points)), report).double().numpy()
        done += len(points)
        return drill.drops(p)

    return drill.result(*drilled_drops(drill.grid, score, r))


@torch.no_grad()
def occlusion_map(classifier: Classifier, image: np.ndarray | str | os.PathLike, *,
                  box: Size = DEFAULT_BOX, stride: Size = DEFAULT_STRIDE, fill: str = DEFAULT_FILL,
                  target: str | int = "nsfw", batch_size: int | None = None,
                  progress: Progress | None = None, drill_down: float | None = None,
                  incremental: bool | None = None, tau: float | None = None,
                  windows: WindowPlan | None = None) -> Heatmap:
    """Occlusion sensitivity map of ``image`` for ``target`` (the maths: the module docstring).

    ``classifier``: any :class:`~explain.models.base.Classifier` (black box is enough). ``image``:
    an RGB array (uint8, or float in [0, 1]) or a path. ``box``/``stride``: original pixels (int) or
    fractions of the shorter side (float in (0, 1]), one or (h, w); see :mod:`explain.windows`.
    ``fill``: what a hidden window becomes, ``gray`` (0.5), ``black``, ``mean`` (the image's mean
    colour), ``blur`` (a heavily blurred copy) or ``auto`` (of those four, the one the model
    scores lowest for ``target`` when it fills the whole image: :func:`choose_fill`; ``params``
    record ``fill`` chosen, ``fill_asked`` and ``fill_scores``). ``target``: the class, by name
    or index. ``windows``: the window plan of ``box`` and ``stride``
    (:class:`~explain.windows.WindowPlan`) when a job made it once for all its images (then
    ``box`` and ``stride`` are not given).
    ``batch_size``: occluded copies per ``predict`` (default:
    :func:`~explain.windows.default_batch_size`; a given size over the memory budget is refused).
    ``progress(done, total)`` is called after each batch, counting windows (with drill-down,
    ``total`` is the windows planned so far: it grows with each round). ``drill_down``: None =
    the exact map (every window scored); r in (0, 1] = adaptive drill-down
    (:mod:`explain.drill_down`): a coarse pass (two interleaved grids at 4 × the stride), then
    rounds that score the fraction r of the other windows, where the map varies or matters most,
    the rest interpolated; equal to the exact map wherever every covering window was scored, and
    everywhere when r = 1. ``incremental``: reuse the intact image's activations
    (:mod:`explain.incremental`, exact to float rounding): None = when the classifier is a
    torch module torch.fx traces, on the CPU, and the window's side is at most a quarter of the
    work image's (:func:`explain.incremental.pays`: where it was measured to win); True =
    required (an OptionError says why when impossible); False = never. ``tau``: Krypton's
    projective-field threshold in (0, 1] (approximate, faster; None = exact); it needs
    incremental inference. ``params`` records what ran: ``incremental``, ``tau``,
    ``drill_down``, ``windows_evaluated`` and ``windows_total``; and what the map is measured
    against and where it means anything: ``baseline_score`` (p(target) of the image with every
    window hidden at once, scored beside the intact image; :meth:`Heatmap.baseline_note` warns
    when it is not below ``score``) and ``model_view`` (the part of the image the model sees,
    :func:`~explain.models.base.model_view`).

    Returns a :class:`~explain.heatmap.Heatmap` in the original image's coordinates: per pixel
    the mean over covering windows of p(target | image) − p(target | window hidden). SIGNED,
    in units of p(target): positive = hiding the region lowers the score (it supports the
    target), negative = hiding it raises the score; noise floor
    :data:`~explain.heatmap.NOISE_FLOOR`; ``score`` is the intact image's probability.
    """
    start = time.perf_counter()
    drill = check_drill_down(drill_down)
    check_incremental(incremental, tau)
    plan = plan_occlusion(classifier, image, box=box, stride=stride, fill=fill, target=target,
                          windows=windows)
    window = plan.bounds[LEAD, 2:] - plan.bounds[LEAD, :2]
    net = network_for(classifier, incremental, tau, tuple(window.tolist()), plan.size)
    step = check_batch_size(batch_size, plan.x.device, plan.size, plan.n)
    ran = {"incremental": net is not None, "tau": tau}

    def scores(bounds: torch.Tensor, report: Progress | None) -> torch.Tensor:
        return occluded_scores(classifier, plan.x, plan.baseline, bounds, plan.target, step,
                              report, net, tau, None if net is not None else plan.copies)

    if drill is None:
        done = None if progress is None else \
            lambda done, total: progress(max(0, done - LEAD), total - LEAD)
        p = scores(plan.bounds, done).double().numpy()
        return plan.drop_map(float(p[0]), float(p[1]), p[0] - p[LEAD:],
                             time.perf_counter() - start, step, None, len(plan.windows), **ran)
    score, baseline, drops, evaluated = drilled_scores(scores, plan.bounds.numpy(), plan.windows,
                                                       progress, drill)
    return plan.drop_map(score, baseline, drops, time.perf_counter() - start, step, drill,
                         evaluated, **ran)
