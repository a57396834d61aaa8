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
    """One occlusion job in progress: its plan, how many of its masks are scored, their scores.

    ``key`` is the caller's (the service's job id)."""

    def __init__(self, key: str, plan: OcclusionPlan) -> None:
        self.key = key
        self.plan = plan
        self.scored = 0
        self._scores: list[torch.Tensor] = []

    @property
    def complete(self) -> bool:
        return self.scored >= self.plan.n

    def add(self, scores: torch.Tensor) -> None:
        """Record the scores of the next ``len(scores)`` masks."""
        self._scores.append(scores)
        self.scored += len(scores)

    def probabilities(self) -> np.ndarray:
        """p(target) of every mask in order (float64), once :attr:`complete`."""
        return torch.cat(self._scores).double().cpu().numpy()


@torch.no_grad()
def score_step(classifier: Classifier, runs: Sequence[OcclusionRun],
               batch_size: int) -> list[OcclusionRun]:
    """Score one model batch of at most ``batch_size`` masks, taken from ``runs`` in order (those
    of the first unfinished run's work size), in ONE model call; returns the runs
    that got scores (none when every run is complete)."""
    pending = [r for r in runs if not r.complete]
    if not pending:
        return []
    size = pending[0].plan.size
    parts: list[tuple[OcclusionRun, int, int]] = []
    room = batch_size
    for run in pending:
        if room == 0:
            break
        if run.plan.size != size:
            continue
        hi = min(run.scored + room, run.plan.n)
        parts.append((run, run.scored, hi))
        room -= hi - run.scored
    batch = torch.cat([r.plan.copies.build(r.plan.bounds[lo:hi]) for r, lo, hi in parts])
    probs = parts[0][0].plan.copies.score(batch)
    at = 0
    for run, lo, hi in parts:
        run.add(probs[at:at + hi - lo, run.plan.target])
        at += hi - lo
    return [r for r, _, _ in parts]
