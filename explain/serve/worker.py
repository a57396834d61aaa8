"""The service's workers: threads in the server process that run the queued jobs.

Each :class:`Worker` claims queued jobs oldest first (:meth:`~explain.serve.jobs.JobStore.claim`
is atomic, so several workers never take one job twice). Occlusion jobs are held as
:class:`~explain.serve.batching.OcclusionRun` s, up to ``interleave`` at a time, and advanced
one shared model batch at a time (:func:`~explain.serve.batching.score_step`): windows of
different jobs share batches. An occlusion job with ``fast`` (drill-down, whose later windows
depend on the earlier scores) runs on its own through :func:`explain.occlusion.occlusion_map`
with ``drill_down=``:data:`explain.choices.FAST_DRILL_DOWN`; every other method runs one job at
a time through the registry (:data:`explain.methods.METHODS`). After each batch the worker
records progress; a job deleted meanwhile is dropped. A job whose image cannot be decoded
(truncated, corrupt) or whose model call fails becomes ``failed`` with the reason; the worker
goes on with the rest (a shared batch the model refuses is retried job by job, so only the
culprit fails).

Results, in the job's folder: ``heatmap.npy`` + ``heatmap.json``
(:meth:`explain.heatmap.Heatmap.save`), written atomically before the job is ``done``. The
pictures
(:data:`PICTURES`: ``overlay.png``, the overlay with its legend strip,
:func:`explain.render.figure`; ``side.png``, original | heatmap | overlay,
:func:`explain.render.side_by_side`; ``original.png``, the decoded upload) are rendered from the
input and the map on their first request (:func:`picture`) and kept: a client that wants only
the map and the score pays for no PNG, and rendering is off the model's path.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explain.choices import FAST_DRILL_DOWN
from explain.errors import ExplainError
from explain.heatmap import Heatmap
from explain.images import load_image
from explain.methods import METHODS, Models
from explain.occlusion import occlusion_map, plan_occlusion
from explain.render import figure, reading, save_png, scale, side_by_side
from explain.serve.batching import OcclusionRun, score_step
from explain.serve.jobs import MAX_ATTEMPTS, Job, JobStore
from explain.windows import check_batch_size

INPUT = "input"
WHITE_BOX = threading.Lock()  # white-box methods hook the one torch module: one job at a time


@dataclass(frozen=True)
class JobOptions:
    """A job's options as the registry's run functions take them
    (:class:`explain.methods.RunOptions`)."""

    box: int | float | tuple
    stride: int | float | tuple
    target: str | int
    batch_size: int | None
    masks: int
    drill_down: float | None = None


def reason(exc: BaseException) -> str:
    """What a failed job's ``error`` says: a library error's reason (an image error without the
    server's own path of the upload), else the exception's type and message."""
    if isinstance(exc, ExplainError):
        return getattr(exc, "reason", None) or str(exc)
    return f"{type(exc).__name__}: {exc}"


PICTURES = ("original.png", "overlay.png", "side.png")
"""The result pictures, rendered on their first request (:func:`picture`), not by the worker."""


def write_results(folder: Path, heatmap: Heatmap) -> None:
    """What a finished job writes (see the module docstring): the map, ``heatmap.npy`` +
    ``heatmap.json``, atomically, the JSON with the scale its pictures are drawn on (``drawn``)
    and what their colours mean (``reading``, :func:`explain.render.reading`), which the page
    shows; the pictures are made from the input and the map when first asked for
    (:func:`picture`)."""
    s = scale(heatmap)
    heatmap.save(folder / "heatmap", extra={
        "drawn": {"colormap": s.colormap, "lo": s.lo, "hi": s.hi},
        "reading": reading(heatmap, s)})


def picture(folder: Path, name: str, max_pixels: int) -> Path:
    """Result picture ``name`` (one of :data:`PICTURES`) of the done job in ``folder``: rendered
    by the one renderer from the job's input (decoded as the worker decoded it) and its saved
    map on the first request, written atomically and kept; the path. A folder deleted meanwhile
    raises OSError."""
    path = folder / name
    if path.exists():
        return path
    image = load_image(folder / INPUT, max_pixels=max_pixels)
    if name == "original.png":
        return save_png(image, path)
    heatmap = Heatmap.load(folder / "heatmap")
    return save_png(figure(image, heatmap) if name == "overlay.png"
                    else side_by_side(image, heatmap), path)


class _Active:
    """An occlusion job a worker holds: its row and its run."""

    def __init__(self, job: Job, run: OcclusionRun) -> None:
        self.job, self.run = job, run
        self.start = time.perf_counter()


class Worker(threading.Thread):
    """One worker thread (see the module docstring). ``models``: the served classifiers;
    ``wake`` is set when a job is queued; ``interleave``: occlusion jobs sharing batches (1: no
    cross-job batching); ``batch_size``: masks per model call (None: the library's default for
    the device); ``max_pixels``: the decoding limit."""

    def __init__(self, store: JobStore, models: Models, wake: threading.Event, *,
                 interleave: int = 16, batch_size: int | None = None,
                 max_pixels: int, name: str = "explain-worker") -> None:
        super().__init__(name=name, daemon=True)
        self.store, self.models, self.wake = store, models, wake
        self.interleave, self.batch_size, self.max_pixels = interleave, batch_size, max_pixels
        self.stopping = threading.Event()
        self._active: list[_Active] = []

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            self._claim()
            if not self._active:
                self.wake.wait(0.2)
                self.wake.clear()
                continue
            self._step()

    def _claim(self) -> None:
        while len(self._active) < self.interleave and not self.stopping.is_set():
            job = self.store.claim()
            if job is None:
                return
            if job.attempts > MAX_ATTEMPTS:
                self.store.fail(job.id, f"the server stopped {MAX_ATTEMPTS} times while running "
                                "this job; it is not tried again")
                continue
            try:
                image = load_image(self.store.folder(job.id) / INPUT, max_pixels=self.max_pixels)
                if job.method == "occlusion" and not job.options.get("fast"):
                    o = job.options
                    plan = plan_occlusion(self.models.black, image, box=o["box"],
                                          stride=o["stride"], fill=o["fill"],
                                          target=o["target"])
                    self._active.append(_Active(job, OcclusionRun(job.id, plan)))
                    self.store.progress(job.id, 0, plan.n)
                else:
                    self._run_alone(job, image)
            except Exception as exc:  # noqa: BLE001 — a bad job never stops the worker
                self.store.fail(job.id, reason(exc))

    def _run_alone(self, job: Job, image: np.ndarray) -> None:
        start = time.perf_counter()
        self.store.progress(job.id, 0, 1)
        o = job.options
        method = METHODS[job.method]
        if job.method == "occlusion":  # drill-down: adaptive, so it runs on its own
            heatmap = occlusion_map(self.models.black, image, box=o["box"], stride=o["stride"],
                                    fill=o["fill"], target=o["target"],
                                    batch_size=self.batch_size, drill_down=FAST_DRILL_DOWN,
                                    progress=lambda done, total: self.store.progress(job.id, done,
                                                                                     total))
        else:
            options = JobOptions(box=o["box"], stride=o["stride"], target=o["target"],
                                 batch_size=self.batch_size, masks=o["masks"])
            with WHITE_BOX if method.white_box else nullcontext():
                heatmap = method.run(self.models, image, options)
        heatmap.seconds = time.perf_counter() - start
        self._finish(job, heatmap)

    def _finish(self, job: Job, heatmap: Heatmap) -> None:
        """Write a computed job's map, then mark it ``done``; a failure to write (a full disk)
        fails this job with the reason, and the worker goes on."""
        try:
            if self.store.get(job.id) is None:
                return  # deleted meanwhile
            write_results(self.store.folder(job.id), heatmap)
            self.store.finish(job.id, heatmap.score)
        except Exception as exc:  # noqa: BLE001 — e.g. a full disk: this job fails
            self.store.fail(job.id, reason(exc))

    def _step(self) -> None:
        """One shared model batch for the held occlusion jobs; finish the complete ones."""
        runs = [a.run for a in self._active]
        first = runs[0].plan
        step = check_batch_size(self.batch_size, first.x.device, first.size)
        try:
            stepped = score_step(self.models.black, runs, step)
        except Exception:  # noqa: BLE001 — which job's copies broke the call is unknown
            stepped = self._one_by_one(step)
        keys = {r.key for r in stepped}
        for a in list(self._active):
            if a.run.key not in keys:
                continue
            if not self.store.progress(a.job.id, a.run.scored, a.run.plan.n):
                self._active.remove(a)  # deleted meanwhile
            elif a.run.complete:
                self._active.remove(a)
                heatmap = a.run.plan.heatmap(a.run.probabilities(),
                                             time.perf_counter() - a.start, step)
                self._finish(a.job, heatmap)

    def _one_by_one(self, step: int) -> list[OcclusionRun]:
        """After a shared batch failed: one batch of each held job alone; a job whose own batch
        fails is failed with the model's reason, the others go on."""
        stepped = []
        for a in list(self._active):
            try:
                stepped += score_step(self.models.black, [a.run], step)
            except Exception as exc:  # noqa: BLE001 — only this job fails
                self._active.remove(a)
                self.store.fail(a.job.id, f"the model failed: {reason(exc)}")
        return stepped
