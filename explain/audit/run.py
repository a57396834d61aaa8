"""Orchestration of ``explain audit``: list → score (+ parts) → heatmaps for the top-k → outputs.

Every stage reads what is left to do from the store and writes each result as it is computed,
so the same call after a kill resumes where the last committed batch ended:

Only what changes scores and maps is in the run key (:mod:`explain.audit.store`): the threshold,
a target precision or recall and every report-only option reuse the stored scores and maps, so
changing them costs no model call (except heatmaps, cue harvests and embeddings of images that
had none yet).

1. **list**: the dataset's (path, label) rows go into the store once (``runs.listed`` marks the
   listing complete; files added later are not picked up by a resumed run).
2. **score**: images still without a score (or, with concepts on, without a part detection) are
   read by a small thread pool one batch ahead, resized once to the classifier's input size,
   scored in batches on the classifier's device, and the part detector and the part-occlusion
   pass run on the same decoded pixels. A bad file becomes an error row; a batch that the model
   rejects is retried image by image so that only the culprit fails.
3. **heatmaps**: the top-k false positives (true label ≠ target, score ≥ threshold, highest first)
   and false negatives (true label = target, score < threshold, lowest first), or for unlabeled
   data the top-k scores, get an occlusion map each; its PNGs are written first and its row (with
   the heat shares of the image's parts) committed after, so a kill leaves no row without files.
4. **cues** (``options.cues``, labeled data with at least ``cue_options.min_fps`` false positives
   with a heatmap): :func:`explain.audit.cues.find_cues` over those false positives (their stored
   heatmaps reused), a seeded sample of true negatives and of true positives; each image's
   harvest and each cluster's paste test is committed as computed.
   With ``options.pool``, the pool is then mined for counter-examples of the cues
   (:mod:`explain.audit.mining`: its outputs and its own store in the audit folder, resumed
   the same way).
5. **embeddings** (labeled data, with label issues or error clusters on): each labeled image's
   vector in the model's feature space (:mod:`explain.audit.embedding`), once per image.
6. **mosaic** (when :mod:`explain.grid` is available) and the outputs, rebuilt from the store on
   every call with no model call: ``scores.csv``, ``errors.csv``, ``concepts.csv``,
   ``parts.csv``, ``cues.csv``, ``cue_patches.csv``, ``slices.csv``, ``label_issues.csv``,
   ``error_clusters.csv``, ``metrics.json``, ``summary.md``, plots and ``audit.html``.

Memory is bounded by a few batches of images plus one heatmap, whatever the dataset's size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from explain.audit import metrics as m
from explain.audit.concepts import NudeNetDetector, PartDetector
from explain.audit.cues import Cues
from explain.audit.dataset import open_dataset
from explain.audit.embedding import embed_labeled
from explain.audit.mining import from_cues, mine
from explain.audit.options import AuditOptions, RayOptions
from explain.audit.outputs import write_outputs
from explain.audit.result import AuditResult
from explain.audit.stages import Rate, cue_stage, heatmap_stage, heatmap_targets, score_stage
from explain.audit.store import Store
from explain.choices import BLACK_BOX_MODEL, DEFAULT_MAX_FRAMES
from explain.files import check_output_dir
from explain.images import collect_warnings
from explain.models import Classifier, load, resolve_target
from explain.models.base import model_name
from explain.progress import LabelledProgress
from explain.windows import WindowPlan

__all__ = ["AuditOptions", "AuditResult", "audit"]

AUDIT_FORMAT = 2  # 2: float batches for every image size (format 1 could score 256×256 ones 0)


def code_version() -> str:
    try:
        package = version("explain")
    except PackageNotFoundError:
        package = "unknown"
    return f"explain {package}, audit format {AUDIT_FORMAT}"


def spec_of(model: object, classifier: Classifier) -> str:
    """How the model enters the run key: its spec string, or for an object its kind and name."""
    if isinstance(model, str | os.PathLike):
        return str(model)
    return f"{type(classifier).__name__}:{model_name(classifier, '?')}"


def chosen_threshold(store: Store, target: str, o: AuditOptions) -> float:
    """The operating threshold: ``o.threshold``, or the one that meets ``o.target_precision`` /
    ``o.target_recall`` on the labeled scored images (an :class:`~explain.errors.OptionError`
    when there are none, or when no threshold meets the target; the scores stay stored)."""
    if o.target_precision is None and o.target_recall is None:
        return o.threshold
    scores, positive = [], []
    for _, _, label, score in store.scored():
        if label is not None:
            scores.append(score)
            positive.append(label == target)
    return m.operating_threshold(scores, positive, precision=o.target_precision,
                                 recall=o.target_recall)


def pool_stage(store: Store, classifier: Classifier, cues: Cues | None, o: AuditOptions,
               folder: Path, rate: Rate) -> tuple[list[str], dict[str, Path]]:
    """The counter-examples of the cues found, mined from ``o.pool`` into the audit's folder
    (:func:`explain.audit.mining.mine`): the notes and the files written, or why not."""
    if cues is None or not cues.cues:
        return ["counter-examples skipped: the audit found no cues to mine the pool for"], {}
    mining = from_cues(cues, store, o.cue_options, store.params, o.threshold)
    with collect_warnings():
        found = mine(classifier, mining, o.pool, folder, synthesize=o.synthesize,
                     batch_size=o.batch_size, run=folder, progress=rate.progress)
    return found.notes, found.files


def audit(data: str | os.PathLike, output: str | os.PathLike, *,
          labels: str | os.PathLike | None = None, model: object = BLACK_BOX_MODEL,
          device: str | None = None, options: AuditOptions | None = None,
          detector: PartDetector | None = None, progress: LabelledProgress | None = None,
          model_spec: str | None = None, engine: str = "local",
          ray: RayOptions | None = None) -> AuditResult:
    """Audit a labeled (or unlabeled) image collection; see the module docstring.

    ``model`` is a spec for :func:`explain.models.load` or a ready classifier; ``detector``
    replaces the NudeNet part detector (used only when ``options.concepts``); ``model_spec``
    names the model in the run key when ``model`` is an object (default: its type and name);
    ``progress(done, total, stage)`` is called as each stage ("scoring", "heatmaps", "cues")
    advances (the library never prints). ``engine``: ``"local"`` (this process) or ``"ray"``
    (:mod:`explain.audit.ray_engine`, set by ``ray``; the same store and outputs, either engine
    resumes the other's run). Calling it again with the same arguments resumes; changed
    arguments start a new run in the same folder.
    """
    o = options or AuditOptions()
    o.check()
    ray = ray or RayOptions()
    ray.check(engine)
    engine_stages = ExitStack()
    score, heatmaps = score_stage, heatmap_stage
    if engine == "ray":  # connected before any work, so a missing extra costs nothing
        from explain.audit.ray_engine import ray_stages

        on_ray = engine_stages.enter_context(ray_stages(ray, model, device))
        score, heatmaps = on_ray.score, on_ray.heatmaps
    with engine_stages:
        return _audit(data, output, labels, model, device, o, detector, progress, model_spec,
                      score, heatmaps)


def _audit(data: str | os.PathLike, output: str | os.PathLike,
           labels: str | os.PathLike | None, model: object, device: str | None,
           o: AuditOptions, detector: PartDetector | None, progress: LabelledProgress | None,
           model_spec: str | None, score: Callable, heatmaps: Callable) -> AuditResult:
    """:func:`audit` with the chosen engine's ``score`` and ``heatmaps`` stages."""
    out = check_output_dir(output)
    classifier = load(model, device)
    t = resolve_target(classifier, o.target)
    class_names = list(classifier.class_names)
    dataset = open_dataset(data, class_names, labels=labels, exclude=[out])
    if o.concepts and detector is None:
        detector = NudeNetDetector(device=classifier.device)
    grid = WindowPlan(o.box, o.stride)
    box, stride = grid.box_pair, grid.stride_pair
    params = {
        "model": model_spec or spec_of(model, classifier), "classes": class_names,
        "data": dataset.source, "target": class_names[t],
        "box": list(box), "stride": list(stride),
        "fill": o.fill, "max_pixels": o.max_pixels,
        "concepts": model_name(detector) if o.concepts else None,
        "code": code_version(),
    }
    if o.drill_down is not None:  # only then, so that earlier exact runs keep their keys
        params["drill_down"] = o.drill_down
    if (o.frames, o.max_frames) != ("auto", DEFAULT_MAX_FRAMES):  # the same: clips' sampling
        params["frames"] = [o.frames, o.max_frames]
    store = Store(out, params)
    rate = Rate(progress)
    seconds: dict[str, float] = {}
    try:
        start = time.perf_counter()
        if not store.stage_done("listed"):
            store.add_items((item.path, item.label) for item in dataset)
            store.mark_stage("listed")
        seconds["list"] = time.perf_counter() - start

        start = time.perf_counter()
        score(store, classifier, t, o, detector if o.concepts else None, rate)
        if not store.stage_done("scored"):
            store.mark_stage("scored")
        seconds["score"] = time.perf_counter() - start

        labels_seen = store.labels()
        o = replace(o, threshold=chosen_threshold(store, class_names[t], o))
        start = time.perf_counter()
        targets = heatmap_targets(store, labels_seen, class_names[t], o)
        notes = heatmaps(store, classifier, targets, o, grid, out / "heatmaps", rate)
        seconds["heatmaps"] = time.perf_counter() - start

        start = time.perf_counter()
        cues, cue_notes = cue_stage(store, classifier, targets, o, grid, labels_seen,
                                    class_names[t], out, rate)
        notes += cue_notes
        if cues is not None:
            seconds["cues"] = time.perf_counter() - start
        mined: dict[str, Path] = {}
        if o.pool is not None:
            start = time.perf_counter()
            pool_notes, mined = pool_stage(store, classifier, cues, o, out, rate)
            notes += pool_notes
            seconds["pool"] = time.perf_counter() - start

        embedded = None
        if labels_seen and (o.label_issues or o.clusters):
            start = time.perf_counter()
            vectors, what, embed_notes = embed_labeled(store, classifier, o, progress)
            embedded = (vectors, what)
            notes += embed_notes
            seconds["embeddings"] = time.perf_counter() - start

        start = time.perf_counter()
        with collect_warnings():
            result = write_outputs(store, out, classifier=classifier, target=class_names[t],
                                   class_names=class_names, options=o, targets=targets,
                                   labels=labels_seen, notes=notes, seconds=seconds,
                                   cues=cues, dataset=dataset, embedded=embedded)
        seconds["outputs"] = time.perf_counter() - start
        store.mark_stage("finished")
        result.files.update({f"pool_{name}": path for name, path in mined.items()})
        result.seconds = seconds
        result.cues = cues
        return result
    finally:
        store.close()
