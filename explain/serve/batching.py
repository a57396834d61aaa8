"""Cross-job batching: the occluded copies of several queued images share model batches.

A service's occlusion jobs are small (open_nsfw at 64/48 on a 256² image: the intact image and
25 windows), and a model batch of 16 (CPU) or 64 (GPU) spent on one job's last windows is
mostly empty. Here each job is an :class:`OcclusionRun` over the library's own plan
(:func:`explain.occlusion.plan_occlusion`: the image at the model's input size, the fill, the
scaled windows, the masks), and :func:`score_step` fills ONE model batch with the next copies of
the runs in order, the oldest first: the head job's tail and the next job's head go in the same
model call. Each run is a copy builder of the engine (its plan's
:class:`~explain.occlusion.OccludedCopies`, what :func:`~explain.occlusion.occlusion_map`
scores through), and a batch is built and scored by the engine's loop
(:func:`explain.perturbation.build_parts`, :func:`~explain.perturbation.score_built`), so a
run's scores, and so its map (:meth:`OcclusionRun.heatmap`), are those of
:func:`~explain.occlusion.occlusion_map` for the same image and options; only how the copies
are grouped into model calls differs.

A drill-down run (``drill_down=r``, the service's ``fast``) shares the batches too: its copies
are one level of drill-down at a time (:func:`explain.drill_down.drill_levels`, the rows of
:class:`explain.occlusion.Drill`), and its next level is planned (:meth:`OcclusionRun.plan_level`)
once the scores of this one are all back (:attr:`OcclusionRun.needs_level`), from the same
scores in the same order as ``occlusion_map(..., drill_down=r, incremental=False)``: the same
map. Planning is a step of its own, so that the service plans on a preparation thread while
its model thread scores the other jobs' batches (:func:`score_step` plans at once).

A batch is taken (:func:`take`: which copies of which runs, reserved at once), built
(:func:`build`) and scored (:func:`score`) as three steps, so that the service's worker builds
the next batch on a preparation thread while its model thread scores this one
(:class:`explain.serve.worker.Worker`); :func:`score_step` does all three in one call.

Runs whose work size differs (a model without an input size sees each image at its own size)
cannot share a tensor: a batch takes the runs of the oldest run's size only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from explain.drill_down import Levels, drill_levels
from explain.heatmap import Heatmap
from explain.models.base import Classifier
from explain.occlusion import Drill, OcclusionPlan
from explain.perturbation import Buffers, build_parts, score_built


class OcclusionRun:
    """One occlusion job in progress: its plan, its copies planned so far (:attr:`copies`: all
    of the plan's rows, or with ``drill_down`` the drill-down levels planned so far), how many
    are taken into a batch (``reserved``) and scored, their scores.

    ``key`` is the caller's (the service's job id). Copies are taken in order (:func:`take`)
    and their scores put back by position (:meth:`put`), so a batch can be built and scored on
    other threads than the one that took it, in any order. ``dropped``: the caller gave the
    job up (deleted, failed); it is taken from no more."""

    def __init__(self, key: str, plan: OcclusionPlan, drill_down: float | None = None) -> None:
        self.key = key
        self.plan = plan
        self.drill_down = drill_down
        self.reserved = 0
        self.scored = 0
        self.dropped = False
        self.copies = plan.copies
        self._levels: Levels | None = None
        self._result: tuple[np.ndarray, np.ndarray] | None = None
        if drill_down is not None:
            self._drill = Drill(plan.bounds.numpy(), plan.windows)
            self._levels = drill_levels(self._drill.grid, drill_down)
            self.copies = plan.copies.rows(torch.from_numpy(self._drill.rows(next(self._levels))))
        self._level = 0  # where the level being scored starts
        self._p = np.zeros(self.n, np.float64)
        self.planning = False  # its next level is being planned (set by whoever plans it)

    @property
    def n(self) -> int:
        """Copies planned so far (all of them, unless drill-down has levels to come)."""
        return len(self.copies)

    @property
    def complete(self) -> bool:
        return self.scored >= self.n and (self._levels is None or self._result is not None)

    def put(self, lo: int, scores: torch.Tensor) -> None:
        """Record the scores of copies ``lo`` to ``lo + len(scores)``."""
        self._p[lo:lo + len(scores)] = scores.double().cpu().numpy()
        self.scored += len(scores)

    @property
    def needs_level(self) -> bool:
        """A drill-down run whose level is all scored, and whose next level (or end) is not
        planned yet, nor being planned."""
        return (self._levels is not None and self._result is None and not self.planning
                and self.scored == self.n)

    def plan_level(self) -> None:
        """Plan the next drill-down level from the scores of this one (or finish): its copies
        join :attr:`copies`, to be taken. Safe on another thread than the one taking batches:
        the scores' room grows before the copies do, and no copy of the run is taken or
        scored meanwhile (all of this level's are scored)."""
        assert self._levels is not None
        try:
            drops = self._drill.drops(self._p[self._level:])
            try:
                points = self._levels.send(drops)
            except StopIteration as done:
                self._result = done.value
                return
            rows = torch.from_numpy(self._drill.rows(points))
            level = self.n
            self._p = np.concatenate([self._p, np.zeros(len(rows), np.float64)])
            self._level = level
            self.copies = self.copies.rows(torch.cat([self.copies.bounds, rows]))
        finally:
            self.planning = False

    def probabilities(self) -> np.ndarray:
        """p(target) of every copy in order (float64), once :attr:`complete`."""
        return self._p

    def heatmap(self, seconds: float, batch_size: int) -> Heatmap:
        """The job's map, once :attr:`complete`: that of
        :func:`~explain.occlusion.occlusion_map` (with ``drill_down``, and
        ``incremental=False``)."""
        if self._levels is None:
            return self.plan.heatmap(self._p, seconds, batch_size)
        if self._result is None:
            raise RuntimeError(f"occlusion run {self.key} has levels left to score")
        score, baseline, drops, evaluated = self._drill.result(*self._result)
        return self.plan.drop_map(score, baseline, drops, seconds, batch_size, self.drill_down,
                                  evaluated)


Part = tuple[OcclusionRun, int, int]
"""Copies ``lo`` to ``hi`` of a run, in one batch."""


def take(runs: Sequence[OcclusionRun], batch_size: int) -> list[Part]:
    """Take the next batch: at most ``batch_size`` copies not yet taken from ``runs`` in order,
    those of the first such run's work size (a tensor holds one size); none when every copy
    planned is taken (a drill-down run's next level comes once this one is scored)."""
    pending = [r for r in runs if r.reserved < r.n and not r.dropped]
    if not pending:
        return []
    size = pending[0].plan.size
    parts: list[Part] = []
    room = batch_size
    for run in pending:
        if room == 0:
            break
        if run.plan.size != size:
            continue
        hi = min(run.reserved + room, run.n)
        parts.append((run, run.reserved, hi))
        room -= hi - run.reserved
        run.reserved = hi
    return parts


def build(parts: Sequence[Part], buffers: Buffers | None = None) -> torch.Tensor:
    """The model batch of ``parts``: each run's copies, in order
    (:func:`explain.perturbation.build_parts`), into one of ``buffers`` when given."""
    return build_parts([(r.copies, lo, hi) for r, lo, hi in parts], buffers)


@torch.no_grad()
def score(parts: Sequence[Part], batch: torch.Tensor) -> None:
    """Score ``batch`` (:func:`build` of ``parts``) in ONE model call
    (:func:`explain.perturbation.score_built`) and put each run's p(target) back (a drill-down
    run's next level is planned apart: :meth:`OcclusionRun.plan_level`)."""
    probs = score_built([(r.copies, lo, hi) for r, lo, hi in parts], batch)
    for (run, lo, _), p in zip(parts, probs, strict=True):
        run.put(lo, p[:, run.plan.target])


def score_step(classifier: Classifier, runs: Sequence[OcclusionRun],
               batch_size: int) -> list[OcclusionRun]:
    """Take, build and score one model batch of at most ``batch_size`` copies from ``runs``
    (:func:`take`), in ONE model call, then plan the next level of the drill-down runs whose
    level it completed; returns the runs that got scores (none when no copy is
    left to take). ``classifier`` is the runs' own (each plan holds it)."""
    parts = take(runs, batch_size)
    if parts:
        score(parts, build(parts))
    for run, _, _ in parts:
        if run.needs_level:
            run.plan_level()
    return [r for r, _, _ in parts]
