"""The audit's Ray engine (``explain audit --engine ray``): the scoring and heatmap stages of
:mod:`explain.audit.stages` spread over a Ray cluster, with the same store and the same outputs.

Imported only when the Ray engine is chosen (Ray is the optional extra ``ray``). The pipeline is
Ray Data, streamed:

1. the driver reads the store's pending rows page by page and puts them into Ray's object store
   in blocks of one model batch (it never holds the list, let alone the images);
2. **decode** tasks call the local engine's :func:`~explain.audit.stages._load` (a bad file
   becomes the same error row, with the same reason);
3. **score** runs in a fixed pool of actors (``actors``; ``gpus_per_actor`` GPUs each when the
   cluster has them), each loading the model (and the part detector) ONCE and calling the local
   engine's :func:`~explain.audit.stages._score_batch` (batched predict, retry image by image,
   parts and their score drops);
4. the driver commits each result batch to the store as it arrives, one transaction each, as
   the local engine does;
5. the top-k **heatmaps** (with the heat shares of their parts) are actor work too
   (:func:`~explain.audit.stages.compute_heatmap`); the driver writes their files and rows
   (:func:`~explain.audit.stages.write_heatmap`), so the cluster needs no shared output folder.

The answers are the local engine's by construction: the same functions run on the same inputs.
The store is written only by the driver, and a result is an update of its image's row, so an
actor killed mid-batch (Ray restarts it and retries the batch) can neither lose nor duplicate a
row; after a pass, anything still pending is passed again. A killed driver leaves committed
batches that either engine resumes. Cue discovery and the outputs run on the driver.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from explain.audit.concepts import NudeNetDetector, PartDetector
from explain.audit.options import AuditOptions, RayOptions
from explain.audit.stages import (
    Rate,
    _load,
    _score_batch,
    compute_heatmap,
    heatmap_todo,
    score_step,
    write_heatmap,
)
from explain.audit.store import ImageRow, Store
from explain.errors import ExplainError, OptionError
from explain.images import collect_warnings
from explain.models import Classifier, load
from explain.windows import WindowPlan

PASSES = 3
"""Scoring passes over what is still pending before the engine gives up (Ray retries a killed
actor's batch itself; a further pass catches anything a failure still dropped)."""


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or an OptionError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise OptionError(f"--engine ray needs Ray, the optional extra 'ray': pip install "
                          f"'explain[ray]' (import failed: {exc})") from None
    return ray


def _decode(batch: dict[str, np.ndarray], input_size: tuple[int, int] | None, need_small: bool,
            max_pixels: int) -> dict[str, np.ndarray]:
    """Ray task: the local engine's decoding of each row (pickled :class:`ImageRow`)."""
    with collect_warnings():
        # no model here: a clip (judged by its max frame) is decoded on the actor
        loaded = [_load(pickle.loads(raw), input_size, need_small, max_pixels, None, 0)
                  for raw in batch["row"]]
    return {"loaded": _objects([pickle.dumps(it, protocol=5) for it in loaded])}


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _nudenet(model_path: Path, min_confidence: float, batch_size: int, device: object
             ) -> NudeNetDetector:
    return NudeNetDetector(model_path, min_confidence=min_confidence, device=device,
                           batch_size=batch_size)


def _kept(detector: PartDetector, device: object) -> PartDetector:
    return detector


def detector_maker(detector: PartDetector | None
                   ) -> Callable[[object], PartDetector] | None:
    """What an actor calls with its device to get the part detector: NudeNet's is rebuilt there
    (its onnxruntime session does not travel); any other detector travels as it is."""
    if detector is None:
        return None
    if isinstance(detector, NudeNetDetector):
        return partial(_nudenet, detector.model_path, detector.min_confidence,
                       detector.batch_size)
    return _travels(partial(_kept, detector), "part detector")


class _Scorer:
    """Ray actor: loads the model (and part detector) once, then scores decoded batches."""

    def __init__(self, loader: Callable[[], Classifier],
                 detector: Callable[[object], PartDetector] | None, t: int, o: AuditOptions
                 ) -> None:
        self.classifier = loader()
        self.detector = None if detector is None else detector(self.classifier.device)
        self.t, self.o = t, o

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [pickle.loads(raw) for raw in batch["loaded"]]
        input_size = tuple(self.classifier.input_size) if self.classifier.input_size else None
        with collect_warnings():
            items = [_load(it.row, input_size, self.detector is not None, self.o.max_pixels,
                           self.classifier, self.t, frames=self.o.frames,
                           max_frames=self.o.max_frames) if it.clip else it for it in items]
        try:
            records = _score_batch(items, self.classifier, self.t, self.o, self.detector)
        except ExplainError as exc:  # a broken model: the driver raises it (see _unpacked)
            return {"records": _objects([pickle.dumps(exc)])}
        return {"records": _objects([pickle.dumps(records, protocol=5)])}


class _Heatmapper:
    """Ray actor: loads the model once, then computes top-k heatmaps one job at a time."""

    def __init__(self, loader: Callable[[], Classifier], o: AuditOptions, grid: WindowPlan
                 ) -> None:
        self.classifier = loader()
        self.o, self.grid = o, grid

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        with collect_warnings():
            for raw in batch["job"]:
                kind, row, parts = pickle.loads(raw)
                try:
                    done = compute_heatmap(self.classifier, row, parts, self.o, self.grid)
                except ExplainError as exc:  # a broken model: the driver raises it
                    out.append(pickle.dumps(exc))
                    continue
                out.append(pickle.dumps((kind, row, done), protocol=5))
        return {"done": _objects(out)}


class RayStages:
    """The scoring and heatmap stages on a connected Ray cluster, with the signatures of
    :func:`~explain.audit.stages.score_stage` and :func:`~explain.audit.stages.heatmap_stage`."""

    def __init__(self, ray: Any, settings: RayOptions, loader: Callable[[], Classifier]) -> None:
        self.ray = ray
        self.actors = settings.actors
        self.loader = loader
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        if cpus < self.actors + 1:
            raise OptionError(f"the Ray cluster has {cpus:g} CPUs: at most {max(int(cpus) - 1, 0)}"
                              " actors (each takes one CPU, and decoding needs one more)")
        self.gpus = settings.gpus_per_actor
        if self.gpus is None:
            self.gpus = 1.0 if gpus else 0.0
        elif self.gpus > 0 and self.gpus * self.actors > gpus:
            raise OptionError(f"{self.actors} actors × {self.gpus:g} GPUs need "
                              f"{self.actors * self.gpus:g} GPUs; the Ray cluster has {gpus:g}")
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the library never prints: progress is a callback
        context.print_on_execution_start = False

    def _pool(self, actors: int) -> dict[str, Any]:
        """The map_batches arguments of a fixed pool of ``actors`` model actors."""
        return {"compute": self.ray.data.ActorPoolStrategy(size=actors), "num_cpus": 1,
                "num_gpus": self.gpus}

    def score(self, store: Store, classifier: Classifier, t: int, o: AuditOptions,
              detector: PartDetector | None, rate: Rate) -> None:
        """Score (and run the part detector on) every image not done yet; see the module."""
        concepts = detector is not None
        with rate.task("scoring", store.pending_count(concepts=concepts)) as advance:
            for _ in range(PASSES):
                todo = store.pending_count(concepts=concepts)
                if todo == 0:
                    return
                self._score_pass(store, classifier, t, o, detector, todo, advance)
        left = store.pending_count(concepts=concepts)
        if left:
            raise ExplainError(f"the Ray engine lost {left} images in {PASSES} passes; run the "
                               "same command again to resume")

    def _score_pass(self, store: Store, classifier: Classifier, t: int, o: AuditOptions,
                    detector: PartDetector | None, todo: int,
                    advance: Callable[[int], None]) -> None:
        import pyarrow as pa

        ray = self.ray
        concepts = detector is not None
        step = score_step(classifier, o, todo)
        blocks, rows = [], []
        for row in store.pending(concepts=concepts, chunk=max(256, step)):
            rows.append(pickle.dumps(row, protocol=5))
            if len(rows) == step:
                blocks.append(ray.put(pa.table({"row": rows})))
                rows = []
        if rows:
            blocks.append(ray.put(pa.table({"row": rows})))
        input_size = tuple(classifier.input_size) if classifier.input_size else None
        # a decode task reserves the memory of its decoded batch (the model's input size, else
        # a megapixel an image); being unlike the actors', it also keeps Ray Data from fusing
        # decoding into the actors, so decoding runs in parallel tasks beside the scoring
        pixels = input_size[0] * input_size[1] if input_size else 2 ** 20
        data = ray.data.from_arrow_refs(blocks).map_batches(
            _decode, batch_size=step, batch_format="numpy", num_cpus=1,
            memory=step * pixels * 3 * 4,
            fn_kwargs={"input_size": input_size, "need_small": concepts,
                       "max_pixels": o.max_pixels})
        data = data.map_batches(_Scorer, batch_size=step, batch_format="numpy",
                                fn_constructor_args=(self.loader, detector_maker(detector), t, o),
                                **self._pool(min(self.actors, len(blocks))))
        for records in _unpacked(data, "records"):
            store.save_scores(records)
            advance(len(records))

    def heatmaps(self, store: Store, classifier: Classifier,
                 targets: list[tuple[str, ImageRow]], o: AuditOptions, grid: WindowPlan,
                 folder: Path, rate: Rate) -> list[str]:
        """An occlusion map for each target image not done yet, computed on the actors and
        written here; returns notes on failures (in the targets' order)."""
        todo = heatmap_todo(store, targets)
        if not todo:
            return []
        folder.mkdir(parents=True, exist_ok=True)
        jobs = [{"job": pickle.dumps((kind, row, store.parts(row.id)), protocol=5)}
                for kind, row in todo]
        data = self.ray.data.from_items(jobs, override_num_blocks=len(jobs)).map_batches(
            _Heatmapper, batch_size=1, batch_format="numpy",
            fn_constructor_args=(self.loader, o, grid), **self._pool(min(self.actors, len(jobs))))
        failed: dict[int, str] = {}
        with rate.task("heatmaps", len(todo)) as advance:
            for kind, row, done in _unpacked(data, "done"):
                if isinstance(done, str):
                    failed[row.id] = done
                else:
                    write_heatmap(store, folder, kind, row, done)
                advance()
        return [failed[row.id] for _, row in todo if row.id in failed]


def _unpacked(data: Any, column: str) -> Iterator[Any]:
    """The pickled results in ``column`` of ``data``'s output blocks, as they come. An actor
    returns a library error (a broken model) instead of raising it, since Ray would wrap it in
    its own exceptions and drop it; it is raised here as itself, and the run stops as the local
    engine's would."""
    for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
        for raw in batch[column]:
            result = pickle.loads(raw)
            if isinstance(result, ExplainError):
                raise result
            yield result


def model_loader(settings: RayOptions, model: object, device: str | None
                 ) -> Callable[[], Classifier]:
    """What an actor calls to build the classifier: ``settings.loader``, else the spec (or
    object) ``model`` loaded on ``device``."""
    return _travels(settings.loader or partial(load, model, device), "model")


def _travels(thing: Callable, what: str) -> Callable:
    """``thing`` when it survives pickling (the way it reaches the actors), else an
    OptionError saying what to give instead."""
    from ray import cloudpickle

    try:
        cloudpickle.dumps(thing)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means the same to the user
        raise OptionError(f"the Ray engine cannot send this {what} to its actors ({exc}); give "
                          "the model as a spec (a bundled name, a file, package.module:function"
                          " or a URL) and a part detector that pickles") from None
    return thing


@contextmanager
def ray_stages(settings: RayOptions, model: object, device: str | None) -> Iterator[RayStages]:
    """Connect to the cluster at ``settings.address`` (or start a local Ray instance, with one
    CPU for each actor and one for decoding at least, shut down on exit) and yield the stages.
    An audit inside a program that already called ``ray.init`` uses that connection."""
    ray = import_ray()
    started = not ray.is_initialized()
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # the library never prints
    if started:
        local = {} if settings.address else {
            "num_cpus": max(os.cpu_count() or 1, settings.actors + 1)}
        try:
            ray.init(address=settings.address, log_to_driver=False, include_dashboard=False,
                     logging_level=logging.ERROR, **local)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise OptionError(f"cannot reach the Ray cluster at {settings.address}: {exc}; "
                              "give --address auto on a cluster node, or ray://HOST:PORT "
                              "(the head's client port, 10001 by default)") from None
    try:
        yield RayStages(ray, settings, model_loader(settings, model, device))
    finally:
        if started:
            ray.shutdown()
