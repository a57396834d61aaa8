"""Cross-job batching: the occluded copies of several queued images share model batches.

A service's occlusion jobs are small (open_nsfw at 64/48 on a 256² image: the intact image and
25 windows), and a model batch of 16 (CPU) or 64 (GPU) spent on one job's last windows is
mostly empty. Here each job is an :class:`OcclusionRun` over the library's own plan
(:func:`explain.occlusion.plan_occlusion`: the image at the model's input size, the fill, the
scaled windows, the masks), and :func:`score_step` fills ONE model batch with the next masks of
the runs in order, the oldest first: the head job's tail and the next job's head go in the same
model call. Each run's copies are made by its plan's
:class:`~explain.occlusion.OccludedCopies` (what :func:`~explain.occlusion.occlusion_map`
scores through), so a run's scores, and so its map
(:meth:`~explain.occlusion.OcclusionPlan.heatmap`), are those of
:func:`~explain.occlusion.occlusion_map` for the same image and options; only how the copies
are grouped into model calls differs.

A batch is taken (:func:`take`: which masks of which runs, reserved at once), built
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

from explain.models.base import Classifier
from explain.occlusion import OcclusionPlan


class OcclusionRun:
    """One occlusion job in progress: its plan, how many of its masks are taken into a batch
    (``reserved``) and scored, their scores.

    ``key`` is the caller's (the service's job id). Masks are taken in order (:func:`take`)
    and their scores put back by position (:meth:`put`), so a batch can be built and scored on
    other threads than the one that took it, in any order. ``dropped``: the caller gave the
    job up (deleted, failed); it is taken from no more."""

    def __init__(self, key: str, plan: OcclusionPlan) -> None:
        self.key = key
        self.plan = plan
        self.reserved = 0
        self.scored = 0
        self.dropped = False
        self._p = np.zeros(plan.n, np.float64)

    @property
    def complete(self) -> bool:
        return self.scored >= self.plan.n

    def put(self, lo: int, scores: torch.Tensor) -> None:
        """Record the scores of masks ``lo`` to ``lo + len(scores)``."""
        self._p[lo:lo + len(scores)] = scores.double().cpu().numpy()
        self.scored += len(scores)

    def probabilities(self) -> np.ndarray:
        """p(target) of every mask in order (float64), once :attr:`complete`."""
        return self._p


Part = tuple[OcclusionRun, int, int]
"""Masks ``lo`` to ``hi`` of a run, in one batch."""


def take(runs: Sequence[OcclusionRun], batch_size: int) -> list[Part]:
    """Take the next batch: at most ``batch_size`` masks not yet taken from ``runs`` in order,
    those of the first such run's work size (a tensor holds one size); none when every mask is
    taken."""
    pending = [r for r in runs if r.reserved < r.plan.n and not r.dropped]
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
        hi = min(run.reserved + room, run.plan.n)
        parts.append((run, run.reserved, hi))
        room -= hi - run.reserved
        run.reserved = hi
    return parts


def build(parts: Sequence[Part]) -> torch.Tensor:
    """The model batch of ``parts``: each run's copies (:class:`~explain.occlusion.
    OccludedCopies`), concatenated in order."""
    return torch.cat([r.plan.copies.build(r.plan.bounds[lo:hi]) for r, lo, hi in parts])


@torch.no_grad()
def score(parts: Sequence[Part], batch: torch.Tensor) -> None:
    """Score ``batch`` (:func:`build` of ``parts``) in ONE model call and put each run's
    p(target) back."""
    probs = parts[0][0].plan.copies.score(batch)
    at = 0
    for run, lo, hi in parts:
        run.put(lo, probs[at:at + hi - lo, run.plan.target])
        at += hi - lo


def score_step(classifier: Classifier, runs: Sequence[OcclusionRun],
               batch_size: int) -> list[OcclusionRun]:
    """Take, build and score one model batch of at most ``batch_size`` masks from ``runs``
    (:func:`take`), in ONE model call; returns the runs that got scores (none when every run
    is complete). ``classifier`` is the runs' own (each plan holds it)."""
    parts = take(runs, batch_size)
    if parts:
        score(parts, build(parts))
    return [r for r, _, _ in parts]
