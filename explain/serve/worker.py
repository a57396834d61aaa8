"""The service's workers: threads in the server process that run the queued jobs.

Each :class:`Worker` claims queued jobs oldest first (:meth:`~explain.serve.jobs.JobStore.claim` is
atomic, so several workers never take one job twice). Occlusion jobs, with ``fast`` (drill-down)
or without, are held as :class:`~explain.serve.batching.OcclusionRun` s, up to ``interleave`` at
a time, and advanced one shared model batch at a time: windows of different jobs share batches,
built and scored by the engine's loop (:mod:`explain.serve.batching`); a ``fast`` job's next
drill-down level is planned when its level's scores are back, on a preparation thread. The
worker's own thread is the model's: for these jobs it only scores batches. Its preparation
threads (``prepare``, :data:`PREPARE`) do the rest beside it: decode the upload and plan the job
(:meth:`Worker._prepare`), build the next batch's copies while the model scores this one, and
turn a complete job's scores into its map and write it (:meth:`Worker._write`). At most every
:data:`TICK_S` ONE transaction (:meth:`~explain.serve.jobs.JobStore.tick`) records every held
job's progress and marks the written ones ``done``; after each batch a job deleted meanwhile is
dropped (a batch already built may still hold its windows: at most one more model call).
Every other method runs one job at a time through the registry
(:data:`explain.methods.METHODS`), on the worker's thread, and reports
each batch through its progress callback, which raises :class:`Cancelled` once the job is
deleted (or the server stops): a DELETE stops any method within one batch. A job whose image
cannot be decoded (truncated, corrupt) or whose model call fails becomes ``failed`` with the
reason; the worker goes on with the rest (a shared batch the model refuses is retried job by
job, so only the culprit fails). A fault outside any one job (the job table's disk is full, say)
fails the jobs the worker holds with the reason, and the worker goes on after a pause; it never
dies of an error (the app's supervisor restarts one that dies all the same, and puts the jobs it
held, in preparation and being written included, back in the queue).

A grid job (``method=grid``) runs on its own: :func:`explain.grid.similarity_grid` over the
job's own links to its collection's images (:data:`GRID_IMAGES`, :data:`GRID_MEMBERS`), its
files written by :func:`explain.grid.write_grid`, the writer of ``explain grid``. An audit job
(``method=audit``) runs :func:`explain.audit.audit` over a manifest of those links, into the
job's :data:`AUDIT_FOLDER`.

An animated upload (GIF, WebP, APNG) is judged as the CLI judges a clip: every frame scored,
the clip explained by its max frame (:func:`pixels`), which the job's answer names.

Results, in the job's folder: ``heatmap.npy`` + ``heatmap.json``
(:func:`explain.outputs.write_map`, the CLI's layout and record), written atomically before
the job is ``done``, under the job's lock (:meth:`~explain.serve.jobs.JobStore.locked`), so a
DELETE either comes first (nothing is written) or removes them (one that comes between the write
and the tick finds the row gone; the tick then removes the folder). The pictures
(:data:`PICTURES`: ``overlay.png``, the overlay with its legend strip,
:func:`explain.render.figure`; ``side.png``, original | heatmap | overlay,
:func:`explain.render.side_by_side`; ``original.png``, the decoded upload, or an animation's
max frame) are rendered from the input (or that frame, :data:`FRAME`) and the map
on their first request (:func:`draw`, at a bounded size) and kept: a client that wants only the
map and the score pays for no PNG, and rendering is off the model's path. Stored maps are
bounded too (:func:`write_results`).
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch
from PIL import Image

from explain.choices import FAST_DRILL_DOWN
from explain.clips import judge_clip
from explain.errors import ExplainError
from explain.heatmap import Heatmap
from explain.images import decoding_warnings, load_image
from explain.methods import METHODS, Models, Run
from explain.models.base import Classifier
from explain.occlusion import plan_occlusion
from explain.outputs import record, write_map
from explain.perturbation import Buffers
from explain.render import figure, save_png, shrink_map, side_by_side
from explain.serve.batching import OcclusionRun, Part, build, score, take
from explain.serve.jobs import MAX_ATTEMPTS, Job, JobStore
from explain.windows import check_batch_size

INPUT = "input"
GRID_IMAGES = "images"
"""A grid job's folder of its collection's images (links), named 00000… in their order."""
GRID_MEMBERS = "members.json"
"""A grid job's names and labels of its images, in that order."""
GRID_OUTPUT = "grid.png"
AUDIT_LABELS = "labels.csv"
"""An audit job's ``path,label`` manifest of its images (:data:`GRID_IMAGES`)."""
AUDIT_FOLDER = "audit"
"""An audit job's output folder: the audit's store and its files."""
FRAME = "frame.png"
FAULT_PAUSE_S = 1.0  # after a fault outside any one job: do not spin on a lasting one
WHITE_BOX = threading.Lock()  # white-box methods hook the one torch module: one job at a time
T = TypeVar("T")


class Cancelled(Exception):  # noqa: N818 — a control signal, not an error
    """Raised from a running job's progress callback when the job was deleted or the server is
    stopping: the method stops after its current batch, and the worker drops the job."""


def reason(exc: BaseException) -> str:
    """What a failed job's ``error`` says: a library error's reason (an image error without the
    server's own path of the upload), else the exception's type and message."""
    if isinstance(exc, ExplainError):
        return getattr(exc, "reason", None) or str(exc)
    return f"{type(exc).__name__}: {exc}"


PICTURES = ("original.png", "overlay.png", "side.png")
"""The result pictures, rendered on their first request (:func:`draw`), not by the worker."""
PICTURE_PIXELS = 4_194_304
"""The most pixels a result picture is drawn with (2048²; a legend strip comes on top)."""
MAP_PIXELS = 4_194_304
"""The most values a stored map has (16 MiB of float32); larger maps are stored shrunk."""


def write_results(folder: Path, heatmap: Heatmap) -> None:
    """What a finished job writes (see the module docstring): the map, ``heatmap.npy`` +
    ``heatmap.json``, atomically, the JSON with the scale its pictures are drawn on and what
    their colours mean (:func:`explain.render.described`), which the page
    shows; the pictures are made from the input and the map when first asked for
    (:func:`draw`). A map of more than :data:`MAP_PIXELS` values is stored shrunk by area
    averaging to fit (:func:`explain.render.shrink_map`: a 12 KB upload of a huge 1-bit PNG must
    not leave a 400 MB file); its ``params`` then say ``original_shape`` (H, W), the original's,
    which its pixels span. The scale is the stored map's, the one its pictures are drawn from."""
    h, w = heatmap.shape
    if h * w > MAP_PIXELS:
        heatmap = shrink_map(heatmap, max(1, math.floor(max(h, w) * math.sqrt(MAP_PIXELS
                                                                            / (h * w)))))
    write_map(folder / "heatmap", heatmap, values=True, extra=record(heatmap))


def draw(folder: Path, name: str, max_pixels: int) -> np.ndarray:
    """Result picture ``name`` (one of :data:`PICTURES`) of the done job in ``folder``, drawn by
    the one renderer from the job's input (decoded as the worker decoded it) and its saved map,
    at most ``min(max_pixels, PICTURE_PIXELS)`` pixels (a larger image is drawn shrunk by area
    averaging; ``side.png`` has three panels, so each is a third of that). The caller writes it
    (under the job's lock: see :func:`explain.serve.app.create_app`)."""
    frame = folder / FRAME  # an animation's max frame, the image its map explains
    image = load_image(frame if frame.exists() else folder / INPUT, max_pixels=max_pixels)
    panels = 3 if name == "side.png" else 1
    budget = min(max_pixels, PICTURE_PIXELS) / panels
    h, w = image.shape[:2]
    if h * w > budget:
        factor = math.sqrt(budget / (h * w))
        image = cv2.resize(image, (max(1, math.floor(w * factor)),
                                   max(1, math.floor(h * factor))), interpolation=cv2.INTER_AREA)
    if name == "original.png":
        return image
    heatmap = Heatmap.load(folder / "heatmap")  # the renderer fits its size to the image's
    return figure(image, heatmap) if name == "overlay.png" else side_by_side(image, heatmap)


def is_animated(path: Path) -> bool:
    """Whether the upload at ``path`` has more than one frame (an animated GIF, WebP or PNG).
    The upload is stored without a suffix, so :func:`explain.frames.is_clip` (which goes by
    the suffix first) cannot tell; unreadable files are False (the still intake reports them)."""
    try:
        with decoding_warnings(None, ignore=True), Image.open(path) as img:
            return bool(getattr(img, "is_animated", False))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return False


def pixels(folder: Path, classifier: Classifier, target: str | int, max_pixels: int
           ) -> tuple[np.ndarray, dict | None]:
    """The image a job explains, and for an animated upload how it was judged: as the CLI and
    the report do, every sampled frame is scored (:func:`explain.clips.judge_clip`) and the
    clip is explained by its max frame (kept as :data:`FRAME` when the job finishes: its
    pictures are drawn from it); the dict says which frame and why (``sentence``), with the
    clip's scores."""
    path = folder / INPUT
    if not is_animated(path):
        return load_image(path, max_pixels=max_pixels), None
    clip, scores, sentence = judge_clip(classifier, path, target, max_pixels=max_pixels)
    top = clip.frames[scores.top].rgb
    summary = scores.summary()
    return top, {"sentence": sentence, "frame": summary["max_frame"],
                 "time": summary["max_time"], "frames_scored": summary["frames_scored"],
                 "source_frames": clip.source_frames, "max": summary["max"],
                 "mean": summary["mean"], "notes": clip.notes}


class _Active:
    """An occlusion job a worker holds: its row, its run and (an animation) its judgement and
    its max frame."""

    def __init__(self, job: Job, run: OcclusionRun, clip: dict | None,
                 frame: np.ndarray | None) -> None:
        self.job, self.run, self.clip, self.frame = job, run, clip, frame
        self.start = time.perf_counter()


PREPARE = 2
"""Preparation threads of a worker (``explain serve --prepare``)."""


def one_torch_thread() -> None:
    """Run this thread's torch operations on one thread (a preparation thread's initializer).

    A preparation thread works on one image at a time, where torch's intra-op threads buy
    nothing, and OpenMP's workers busy-wait after every operation for the next one: with one
    preparation thread the service ran 9 jobs/s on 100 ms of CPU per job
    (``scripts/bench_serve.py --null``, 2 cores). OpenMP's team size is a per-thread setting,
    so this thread's is set to one, after torch's own per-thread set-up (its first operation,
    which would set it back); the model's thread keeps torch's setting. Where torch runs no
    OpenMP runtime that can be found, nothing changes."""
    torch.zeros(1 << 16).add_(1)  # torch's per-thread set-up of its team size, first
    runtime = _openmp()
    if runtime is not None:
        runtime.omp_set_num_threads(1)


@functools.cache
def _openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime torch runs on (the one bundled in torch/lib, else the system's)."""
    folder = Path(torch.__file__).parent / "lib"
    for path in [*sorted(folder.glob("libgomp*")), *sorted(folder.glob("libiomp*")),
                 *sorted(folder.glob("libomp*")), "libgomp.so.1"]:
        try:
            runtime = ctypes.CDLL(str(path))
            runtime.omp_set_num_threads  # noqa: B018 — present, or not this library
            return runtime
        except (OSError, AttributeError):
            continue
    return None
EMPTY_RECHECK_S = 0.2  # a worker that found the queue empty looks again this often, or when woken
TICK_S = 0.05
"""How often at most a worker records its occlusion jobs' progress and marks the written ones
done (:meth:`Worker._tick`), in one transaction: one per model batch cost about 1 ms of a
2-core machine's CPU per job at the service's pace with a model that costs nothing. A job's
``done`` shows at most this much later than it would (at the end of the model batch in flight
when its map is written); a deleted job is still dropped after the batch in flight (between
ticks, a read asks which held jobs are gone)."""


class Worker(threading.Thread):
    """One worker thread (see the module docstring). ``models``: the served classifiers;
    ``wake`` is set when a job is queued; ``interleave``: occlusion jobs sharing batches (1: no
    cross-job batching); ``batch_size``: masks per model call (None: the library's default for
    the device); ``max_pixels``: the decoding limit; ``prepare``: preparation threads (0: the
    worker's own thread prepares, builds and writes too, as when its methods are called
    without :meth:`run`)."""

    def __init__(self, store: JobStore, models: Models, wake: threading.Event, *,
                 interleave: int = 16, batch_size: int | None = None,
                 max_pixels: int, prepare: int = PREPARE, tick_s: float = TICK_S,
                 name: str = "explain-worker") -> None:
        super().__init__(name=name, daemon=True)
        self.store, self.models, self.wake = store, models, wake
        self.interleave, self.batch_size, self.max_pixels = interleave, batch_size, max_pixels
        self.prepare, self.tick_s = prepare, tick_s
        self._ticked = -math.inf  # when the table was last updated (time.monotonic())
        self.stopping = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._preparing: dict[str, Future[_Active]] = {}  # claimed, being decoded and planned
        self._active: list[_Active] = []  # planned: their masks go into the model's batches
        self._next: tuple[list[Part], Future[torch.Tensor]] | None = None  # built meanwhile
        self._planning: dict[str, Future[None]] = {}  # a fast job's next drill-down level
        self._buffers = Buffers()  # the batches, reused: no fresh 50 MB to map at each one
        self._finishing: dict[str, tuple[_Active, Future[float | None]]] = {}  # being written
        self._alone: str | None = None  # the job run on its own right now
        self._unrecorded: dict[str, str] = {}  # failed jobs the table could not record yet
        self._empty_at: float | None = None  # when a claim last found the queue empty

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def held(self) -> list[str]:
        """The ids of the jobs this worker is running (what a supervisor puts back in the queue
        when the worker died)."""
        alone = [] if self._alone is None else [self._alone]
        return [*self._preparing, *(a.job.id for a in self._active), *self._finishing, *alone]

    def run(self) -> None:
        if self.prepare:
            self._pool = ThreadPoolExecutor(self.prepare, f"{self.name}-prepare",
                                            initializer=one_torch_thread)
        try:
            while not self.stopping.is_set():
                try:
                    self._record_failures()
                    self._claim()
                    if self._active:
                        self._step()
                    elif self._preparing or self._finishing:
                        self._tick()
                        self._idle()
                    else:
                        self.wake.wait(EMPTY_RECHECK_S)
                except Exception as exc:  # noqa: BLE001 — a fault outside any one job (the disk)
                    # jobs whose map is written, or being written, are kept for a later tick:
                    # their work is done (a write that fails is failed by that tick)
                    written = {job_id: held for job_id, held in self._finishing.items()
                               if not held[1].done() or held[1].exception() is None}
                    for job_id in self.held():
                        if job_id not in written:
                            self._fail(job_id, reason(exc))
                    self._preparing.clear()
                    self._active.clear()
                    self._finishing = written
                    self._planning.clear()
                    self._next = None
                    self._alone = None
                    self.stopping.wait(FAULT_PAUSE_S)
        finally:
            self._ticked = -math.inf  # the jobs written so far are recorded done, not run again
            try:
                self._tick()
            except Exception:  # noqa: BLE001 — they are run again at the next start
                pass
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)

    def _submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """``fn(*args)`` on a preparation thread; without any, here and now (the future done)."""
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 — read by whoever takes the result
            future.set_exception(exc)
        return future

    def _fail(self, job_id: str, why: str) -> None:
        """Fail job ``job_id`` with ``why``; when the table cannot record it (its disk is
        full), it is kept and recorded as soon as the table can be written."""
        try:
            self.store.fail(job_id, why)
        except Exception:  # noqa: BLE001 — retried by _record_failures
            self._unrecorded[job_id] = why

    def _record_failures(self) -> None:
        for job_id, why in list(self._unrecorded.items()):
            self.store.fail(job_id, why)
            del self._unrecorded[job_id]

    def _claim(self) -> None:
        """Claim queued jobs while fewer than ``interleave`` occlusion jobs are held: an
        occlusion job is prepared on a preparation thread (:meth:`_prepare`), any other job is
        run here on its own; then take in the prepared ones."""
        while (len(self._active) + len(self._preparing) < self.interleave
               and not self.stopping.is_set()):
            if (self._empty_at is not None and not self.wake.is_set()
                    and time.monotonic() - self._empty_at < EMPTY_RECHECK_S):
                break
            job = self.store.claim()
            if job is None:
                self._empty_at = time.monotonic()
                self.wake.clear()
                break
            self._empty_at = None
            if job.attempts > MAX_ATTEMPTS:
                self._fail(job.id, f"the server stopped {MAX_ATTEMPTS} times while running "
                           "this job; it is not tried again")
                continue
            if job.method == "occlusion":
                self._preparing[job.id] = self._submit(self._prepare, job)
                continue
            self._alone = job.id
            try:
                if job.method in ("grid", "audit"):
                    (self._run_grid if job.method == "grid" else self._run_audit)(job)
                else:
                    image, clip = pixels(self.store.folder(job.id), self.models.black,
                                         job.options["target"], self.max_pixels)
                    self._run_alone(job, image, clip)
            except Cancelled:
                pass  # deleted (its files went with it), or the server stops (run again at start)
            except Exception as exc:  # noqa: BLE001 — a bad job never stops the worker
                self._fail(job.id, reason(exc))
            self._alone = None
        for job_id, future in list(self._preparing.items()):  # in the order they were claimed
            if future.done():
                del self._preparing[job_id]
                try:
                    self._active.append(future.result())
                except Exception as exc:  # noqa: BLE001 — an undecodable upload, say
                    self._fail(job_id, reason(exc))

    def _prepare(self, job: Job) -> _Active:
        """An occlusion job made ready for the model's batches (on a preparation thread): its
        upload decoded (an animation judged, :func:`pixels`), its plan
        (:func:`explain.occlusion.plan_occlusion`), the model inputs its copies are built
        from, and with ``fast`` its first drill-down level
        (:data:`explain.choices.FAST_DRILL_DOWN`)."""
        image, clip = pixels(self.store.folder(job.id), self.models.black,
                             job.options["target"], self.max_pixels)
        o = job.options
        plan = plan_occlusion(self.models.black, image, box=o["box"], stride=o["stride"],
                              fill=o["fill"], target=o["target"])
        plan.copies  # noqa: B018 — made here, not on the model's thread
        run = OcclusionRun(job.id, plan, FAST_DRILL_DOWN if o.get("fast") else None)
        return _Active(job, run, clip, None if clip is None else image)

    def _watch(self, job_id: str) -> Callable[..., None]:
        """The progress callback of a job run on its own, ``(done, total, stage=None)``:
        records progress, and raises :class:`Cancelled` once the job is deleted or the server
        stops."""
        def report(done: int, total: int, stage: str | None = None) -> None:
            if not self.store.progress(job_id, done, total, stage) or self.stopping.is_set():
                raise Cancelled(job_id)
        return report

    def _run_alone(self, job: Job, image: np.ndarray, clip: dict | None) -> None:
        start = time.perf_counter()
        watch = self._watch(job.id)
        watch(0, 1)
        o = job.options
        method = METHODS[job.method]
        with WHITE_BOX if method.white_box else nullcontext():
            watch(0, 1)  # waiting for the white-box lock may have taken a while
            heatmap = method.run(self.models, image, Run(o["target"], self.batch_size, o),
                                 watch)
        heatmap.seconds = time.perf_counter() - start
        self._finish(job, heatmap, clip, None if clip is None else image)

    def _run_grid(self, job: Job) -> None:
        """A grid job: :func:`explain.grid.similarity_grid` over the job's own copy of the
        collection, with `explain grid`'s defaults for every option the job does not set, its
        files written by :func:`explain.grid.write_grid` (the CLI's writer), then ``done``;
        progress counts the images embedded, then the t-SNE iterations."""
        from explain.grid import TSNE_ITERATIONS, similarity_grid, tiles_folder, write_grid

        folder = self.store.folder(job.id)
        members = json.loads((folder / GRID_MEMBERS).read_text())
        names = members["names"]
        paths = [folder / GRID_IMAGES / f"{i:05d}" for i in range(len(names))]
        o = job.options
        watch = self._watch(job.id)
        total = len(names) + TSNE_ITERATIONS

        def progress(done: int, _: int, stage: str) -> None:
            watch(done if stage == "embedding" else len(names) + min(done, TSNE_ITERATIONS),
                  total, stage)

        progress(0, 0, "embedding")
        classifier = None
        if o["embed"] != "pixels" or o["color_by"] == "score":
            classifier = self.models.black
        result = similarity_grid(
            paths, classifier, embed=o["embed"], names=names, labels=members["labels"],
            target=o["target"] if o["color_by"] == "score" else None, size=o["size"],
            layout=o["layout"], batch_size=self.batch_size or 32, progress=progress)
        try:
            with self.store.locked(job.id):
                if self.store.get(job.id) is None:
                    return  # deleted meanwhile
                output = folder / GRID_OUTPUT
                shutil.rmtree(tiles_folder(output.with_suffix(".html")), ignore_errors=True)
                write_grid(result, output, color_by=o["color_by"])
                self.store.finish(job.id, None)
        except Exception as exc:  # noqa: BLE001 — e.g. a full disk: this job fails
            self._fail(job.id, reason(exc))

    def _run_audit(self, job: Job) -> None:
        """An audit job: :func:`explain.audit.audit` over the job's manifest
        (:data:`AUDIT_LABELS`) into :data:`AUDIT_FOLDER`, with `explain audit`'s defaults for
        every option the job does not set; the audit resumes its own run after a restart.
        Progress is the audit's, stage by stage."""
        from explain.audit import audit
        from explain.audit.options import AuditOptions

        folder = self.store.folder(job.id)
        o = job.options
        watch = self._watch(job.id)
        watch(0, 1, "starting")
        options = AuditOptions(threshold=o["threshold"], top=o["top"], concepts=o["concepts"],
                               cues=o["cues"], target=o["target"], max_pixels=self.max_pixels,
                               batch_size=self.batch_size)
        result = audit(folder / AUDIT_LABELS, folder / AUDIT_FOLDER, model=self.models.black,
                       options=options,
                       progress=lambda done, total, stage: watch(done, total, stage))
        nothing = result.measured_nothing()
        if nothing:  # as the CLI exits 2: its files stay, for the errors they list
            self._fail(job.id, nothing)
            return
        with self.store.locked(job.id):
            if self.store.get(job.id) is not None:
                self.store.finish(job.id, None)

    def _finish(self, job: Job, heatmap: Heatmap, clip: dict | None,
                frame: np.ndarray | None) -> None:
        """Write a computed job's map (and an animation's max ``frame``), then mark it
        ``done``, under the job's lock (a DELETE waits, then removes them; or came first, and
        nothing is written); a failure to write (a full disk) fails this job with the reason,
        and the worker goes on."""
        try:
            with self.store.locked(job.id):
                if self.store.get(job.id) is None:
                    return  # deleted meanwhile
                write_results(self.store.folder(job.id), heatmap)
                if frame is not None:
                    save_png(frame, self.store.folder(job.id) / FRAME)
                self.store.finish(job.id, heatmap.score, clip)
        except Exception as exc:  # noqa: BLE001 — e.g. a full disk: this job fails
            self._fail(job.id, reason(exc))

    def _step(self) -> None:
        """One shared model batch for the held occlusion jobs: the batch built meanwhile (or
        built now), while a preparation thread builds the next; complete jobs go to be written
        (:meth:`_write`), and the table is updated (:meth:`_tick`)."""
        runs = [a.run for a in self._active]
        first = runs[0].plan
        step = check_batch_size(self.batch_size, first.x.device, first.size)
        if self._next is not None and all(r.dropped for r, _, _ in self._next[0]):
            self._next = None  # every job in it was deleted or failed: no model call
        if self._next is not None:
            (parts, built), self._next = self._next, None
        else:
            parts = take(runs, step)
            built = self._submit(build, parts, self._buffers) if parts else None
        following = take(runs, step)
        if following:
            self._next = following, self._submit(build, following, self._buffers)
        if built is not None:
            self._score(parts, built)
            if built.exception() is None:
                self._buffers.give(built.result())  # scored: its rows may be built over
        self._plan_levels()
        if built is None and self._planning:  # nothing to score until a level is planned
            wait(list(self._planning.values()), timeout=0.05, return_when=FIRST_COMPLETED)
        for a in list(self._active):
            if a.run.complete:
                self._active.remove(a)
                self._finishing[a.job.id] = a, self._submit(self._write, a, step)
        self._tick()

    def _plan_levels(self) -> None:
        """Plan the next drill-down level of each ``fast`` job whose level is all scored, on a
        preparation thread (:meth:`~explain.serve.batching.OcclusionRun.plan_level`); a job
        whose planning failed is failed with the reason."""
        for job_id, future in list(self._planning.items()):
            if future.done():
                del self._planning[job_id]
                if future.exception() is not None:
                    self._drop(job_id)
                    self._fail(job_id, reason(future.exception()))  # type: ignore[arg-type]
        for a in self._active:
            if a.run.needs_level and a.job.id not in self._planning:
                a.run.planning = True
                self._planning[a.job.id] = self._submit(a.run.plan_level)

    def _score(self, parts: list[Part], built: Future[torch.Tensor]) -> None:
        """Score a built batch in one model call; when it fails, each job's part alone, and a
        job whose own part fails is failed with the model's reason, the others go on."""
        try:
            score(parts, built.result())
            return
        except Exception:  # noqa: BLE001 — which job's copies broke the call is unknown
            pass
        for part in parts:
            run = part[0]
            if run.dropped:
                continue
            try:
                score([part], build([part]))
            except Exception as exc:  # noqa: BLE001 — only this job fails
                self._drop(run.key)
                self._fail(run.key, f"the model failed: {reason(exc)}")

    def _drop(self, job_id: str) -> None:
        """Give up held occlusion job ``job_id`` (deleted, or failed): no more of its masks
        go into a batch."""
        for a in list(self._active):
            if a.job.id == job_id:
                a.run.dropped = True
                self._active.remove(a)

    def _write(self, a: _Active, step: int) -> float | None:
        """A complete job's map written (and an animation's max frame), under the job's lock,
        on a preparation thread; its score, or None when the job was deleted meanwhile (nothing
        is written). The next :meth:`_tick` marks it done."""
        heatmap = a.run.heatmap(time.perf_counter() - a.start, step)
        with self.store.locked(a.job.id):
            if self.store.get(a.job.id) is None:
                return None
            write_results(self.store.folder(a.job.id), heatmap)
            if a.frame is not None:
                save_png(a.frame, self.store.folder(a.job.id) / FRAME)
        return heatmap.score

    def _tick(self) -> None:
        """One transaction for every held occlusion job (:meth:`~explain.serve.jobs.JobStore.
        tick`), at most every ``tick_s``: the progress of those in the model's batches,
        ``done`` for those written (a job whose write failed, a full disk say, is failed with
        the reason); a job deleted meanwhile is dropped (between two ticks too:
        :meth:`~explain.serve.jobs.JobStore.gone`)."""
        if time.monotonic() - self._ticked < self.tick_s:  # between ticks: only a read
            for job_id in self.store.gone([a.job.id for a in self._active]):
                self._drop(job_id)
            return
        self._ticked = time.monotonic()
        finished: dict[str, tuple[float | None, dict | None]] = {}
        progress: dict[str, tuple[int, int]] = {}
        recorded = []  # written (or deleted meanwhile): held until the table has them
        for job_id, (a, future) in list(self._finishing.items()):
            if not future.done():
                continue
            try:
                written = future.result()
            except Exception as exc:  # noqa: BLE001 — e.g. a full disk: this job fails
                del self._finishing[job_id]
                self._fail(job_id, reason(exc))
                continue
            recorded.append(job_id)
            if written is not None:
                finished[job_id] = written, a.clip
                progress[job_id] = a.run.n, a.run.n
        progress.update({a.job.id: (a.run.scored, a.run.n) for a in self._active})
        gone = self.store.tick(progress, finished) if progress or finished else set()
        for job_id in recorded:
            del self._finishing[job_id]
        for job_id in gone:
            self._drop(job_id)

    def _idle(self) -> None:
        """No batch to score: wait until a job's preparation or writing ends, the next tick is
        due (written jobs wait for it) or a job is queued, whichever comes first; never spin
        on a future that is already done."""
        if any(f.done() for f in self._preparing.values()):
            return  # a job is ready to be taken in
        busy = [f for f in (*self._preparing.values(), *(f for _, f in self._finishing.values()))
                if not f.done()]
        until_tick = max(0.0, self._ticked + self.tick_s - time.monotonic())
        if busy:
            wait(busy, timeout=min(0.05, until_tick) if self._finishing and until_tick else 0.05,
                 return_when=FIRST_COMPLETED)
        else:  # only written jobs, waiting for the tick
            self.wake.wait(until_tick)
