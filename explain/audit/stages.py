"""The stages of ``explain audit`` that compute (see :mod:`explain.audit.run` for the order and
the resume rules): scoring (+ parts), the top-k heatmaps and the cue discovery, each reading what
is left to do from the store and writing each result as it is computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from explain.audit.clip_frame import audit_pixels
from explain.audit.concepts import (
    PartDetector,
    area_share,
    heat_share,
    scale_part,
    score_drops,
    seen_parts,
)
from explain.audit.cues import CueImage, Cues, StoreCache, find_cues
from explain.audit.options import AuditOptions
from explain.audit.slices import image_properties
from explain.audit.store import ImageRow, Store
from explain.choices import AUDIT_BATCH, DEFAULT_MAX_FRAMES
from explain.errors import ExplainError, ModelError
from explain.files import display, file_sha256
from explain.frames import is_clip
from explain.heatmap import Heatmap
from explain.images import collect_warnings, to_batch, to_tensor
from explain.models import Classifier
from explain.models.base import model_view, resize
from explain.occlusion import occlusion_map
from explain.outputs import write_map
from explain.perturbation import probabilities
from explain.progress import LabelledProgress
from explain.render import DISPLAY_SIDE, described, figure, scale, shrink
from explain.windows import WindowPlan, batch_limit, fit_batch

DETECT_SIDE = 640
SAVED_SIDE = 512


class Rate:
    """Stage progress through the library's callback ``progress(done, total, stage)``
    (:data:`explain.progress.LabelledProgress`; the CLI draws the bars), or nothing when it is
    None. ``task(stage, total)`` yields ``advance(n=1)``."""

    def __init__(self, progress: LabelledProgress | None) -> None:
        self.progress = progress

    @contextmanager
    def task(self, title: str, total: int) -> Iterator[Callable[..., None]]:
        report = self.progress
        if report is None:
            yield lambda n=1: None
            return
        done = 0
        report(0, total, title)

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            report(done, total, title)

        yield advance


@dataclass
class Loaded:
    """A decoded image ready for the model. For a model that declares an input size, ``x`` is
    the model's input: (3, h, w) float32 in [0, 1] from :func:`explain.images.to_tensor` (the
    conversion ``explain score`` uses too), resized there; otherwise ``rgb`` keeps the decoded
    RGB uint8 pixels (a quarter of the memory) until :func:`explain.images.to_batch` converts
    them with the same rule."""

    row: ImageRow
    x: torch.Tensor | None = None
    rgb: np.ndarray | None = None
    shape: tuple[int, int] | None = None
    small: np.ndarray | None = None
    factor: float = 1.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    clip: bool = False
    props: dict | None = None
    sha256: str | None = None


def _load(row: ImageRow, input_size: tuple[int, int] | None, need_small: bool,
          max_pixels: int, classifier: Classifier | None, target: int, *,
          frames: str = "auto", max_frames: int = DEFAULT_MAX_FRAMES) -> Loaded:
    """Decode one file and prepare what the scoring pass needs (off the main thread); the
    warnings its decoding raises are kept with it. A clip is its max frame for ``target``
    (:mod:`explain.audit.clip_frame`: ``classifier`` scores its frames); without a
    ``classifier`` (a decoding task with no model) a clip is left undecoded, ``clip=True``, for
    whoever holds the model to load with this same function. ``frames`` and ``max_frames``: a
    clip's sampling (:func:`explain.frames.read_clip`)."""
    if classifier is None and is_clip(row.file):
        return Loaded(row, clip=True)
    notes: list[str] = []
    try:
        rgb, frame = audit_pixels(row.file, max_pixels=max_pixels, notes=notes,
                                  classifier=classifier, target=target, frames=frames,
                                  max_frames=max_frames)
        digest = file_sha256(row.file)
    except ExplainError as exc:
        return Loaded(row, error=getattr(exc, "reason", str(exc)), notes=notes)
    except OSError as exc:
        return Loaded(row, error=f"cannot read the file: {exc.strerror or exc}", notes=notes)
    shape = rgb.shape[:2]
    x = pixels = None
    if input_size is None:
        pixels = rgb
    else:
        x = to_tensor(rgb)
        if tuple(input_size) != shape:
            x = resize(x, tuple(input_size))
        x = x[0]
    small, factor = None, 1.0
    if need_small:
        factor = min(1.0, DETECT_SIDE / max(shape))
        small = shrink(rgb, DETECT_SIDE)
    props = image_properties(rgb) | ({} if frame is None else {"frame": frame})
    return Loaded(row, x=x, rgb=pixels, shape=shape, small=small, factor=factor, notes=notes,
                  props=props, sha256=digest)


def model_batch(items: list[Loaded], device: torch.device) -> torch.Tensor:
    """The model's float32 batch (N, 3, h, w) in [0, 1] of same-size loaded images."""
    if items[0].x is not None:
        return torch.stack([it.x for it in items]).to(device)  # type: ignore[misc]
    return to_batch([it.rgb for it in items], device)  # type: ignore[misc]


def _predict(classifier: Classifier, items: list[Loaded]) -> list[np.ndarray | str]:
    """Probabilities for each item, batched by equal input shape.

    A batch the model rejects is retried one image at a time, so that one bad input only fails
    itself (its entry becomes the reason). When every image of a batch of several fails on its
    own, the model itself is broken (a server down, a wrong spec): that error is raised, so that
    the run stops and a later resume retries these images instead of recording them as bad.
    """
    out: list[np.ndarray | str] = [""] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        size = item.x.shape if item.x is not None else item.rgb.shape  # type: ignore[union-attr]
        groups.setdefault(tuple(size), []).append(i)
    for indices in groups.values():
        batch = model_batch([items[i] for i in indices], classifier.device)
        try:
            probs = probabilities(classifier, batch).double().cpu().numpy()
        except ModelError:
            failures: list[ModelError] = []
            for j, i in enumerate(indices):
                try:
                    out[i] = probabilities(classifier, batch[j:j + 1]).double().cpu().numpy()[0]
                except ModelError as exc:
                    failures.append(exc)
                    out[i] = f"the model failed on this image: {exc}"
            if len(indices) > 1 and len(failures) == len(indices):
                raise failures[-1] from None
            continue
        for j, i in enumerate(indices):
            out[i] = probs[j]
    return out


def score_step(classifier: Classifier, o: AuditOptions, todo: int) -> int:
    """Images per scoring batch: ``o.batch_size`` (refused when over the memory budget at the
    classifier's input size) or the default, capped by the budget."""
    step = o.batch_size or AUDIT_BATCH
    if classifier.input_size:
        size = tuple(classifier.input_size)
        step = fit_batch(step, classifier.device, size, items=todo) if o.batch_size else \
            min(step, batch_limit(classifier.device, size))
    return step


def score_stage(store: Store, classifier: Classifier, t: int, o: AuditOptions,
                detector: PartDetector | None, rate: Rate) -> None:
    """Score (and run the part detector on) every image not done yet, batch by batch."""
    concepts = detector is not None
    todo = store.pending_count(concepts=concepts)
    if todo == 0:
        return
    input_size = tuple(classifier.input_size) if classifier.input_size else None
    step = score_step(classifier, o, todo)
    rows = store.pending(concepts=concepts, chunk=max(256, step))

    def chunks() -> Iterator[list[ImageRow]]:
        batch: list[ImageRow] = []
        for row in rows:
            batch.append(row)
            if len(batch) == step:
                yield batch
                batch = []
        if batch:
            yield batch

    with collect_warnings(), ThreadPoolExecutor(max_workers=o.workers) as pool, \
            rate.task("scoring", todo) as advance:
        def submit(batch: list[ImageRow]) -> list[Future]:
            return [pool.submit(_load, r, input_size, concepts, o.max_pixels, classifier, t,
                                frames=o.frames, max_frames=o.max_frames) for r in batch]

        source = chunks()
        ahead = submit(next(source, []))
        while ahead:
            current = [f.result() for f in ahead]
            ahead = submit(next(source, []))
            store.save_scores(_score_batch(current, classifier, t, o, detector))
            advance(len(current))


def _score_batch(items: list[Loaded], classifier: Classifier, t: int, o: AuditOptions,
                 detector: PartDetector | None) -> list[dict]:
    """The store records for one batch: scores, parts (with their score drops) or errors."""
    records: dict[int, dict] = {}
    scores: dict[int, float] = {}
    for it in items:
        records[it.row.id] = {"id": it.row.id, "notes": [display(n) for n in it.notes],
                              "error": None if it.error is None else display(it.error)}
        if it.row.score is not None:
            scores[it.row.id] = it.row.score
    need_score = [it for it in items if it.error is None and it.row.score is None]
    probs = _predict(classifier, need_score) if need_score else []
    for it, p in zip(need_score, probs, strict=True):
        if isinstance(p, str):
            records[it.row.id]["error"] = display(p)
            continue
        scores[it.row.id] = float(p[t])
        records[it.row.id].update(score=float(p[t]), probs=p.tolist(), height=it.shape[0],
                                  width=it.shape[1], props=it.props,  # type: ignore[index]
                                  sha256=it.sha256)
    if detector is not None:
        alive = [it for it in items if it.row.id in scores and it.error is None]
        found = detector.detect([it.small for it in alive]) if alive else []
        for it, parts in zip(alive, found, strict=True):
            shape = it.shape  # type: ignore[assignment]
            view = model_view(classifier, shape)
            parts = seen_parts([scale_part(p, it.factor, shape) for p in parts], view)
            x = model_batch([it], classifier.device)
            drops = score_drops(classifier, x, shape, parts, t, o.fill, scores[it.row.id],
                                o.batch_size)
            records[it.row.id]["parts"] = [
                {"concept": p.concept, "confidence": p.confidence, "box": p.box,
                 "area_share": area_share(p.box, shape, view), "score_drop": float(d)}
                for p, d in zip(parts, drops, strict=True)]
    return list(records.values())


def heatmap_targets(store: Store, labels: list[str], target_name: str, o: AuditOptions
                    ) -> list[tuple[str, ImageRow]]:
    """(kind, row) of the images that get a heatmap: top-k false positives and false negatives
    for labeled data, the top-k scores otherwise."""
    if o.top == 0:
        return []
    if labels:
        fps = store.ranked("fp", (target_name, o.threshold), descending=True, limit=o.top)
        fns = store.ranked("fn", (target_name, o.threshold), descending=False, limit=o.top)
        return [("fp", r) for r in fps] + [("fn", r) for r in fns]
    return [("top", r) for r in store.ranked("all", (), descending=True, limit=o.top)]


@dataclass
class HeatmapDone:
    """One top-k image's heatmap, computed and drawn, not yet written: ``saved`` is the map at
    most :data:`SAVED_SIDE` px (its params name the source and the original shape), ``picture``
    the drawn figure (RGB uint8) at the page's card size (:data:`~explain.render.DISPLAY_SIDE`,
    so the card shows its legend at native size), ``described`` its drawn scale and what its
    colours mean (:func:`explain.render.described`, saved in the map's JSON for the page),
    ``shares`` the heat share of each of the image's parts (by part number), ``seconds`` the
    map's computing time."""

    saved: Heatmap
    picture: np.ndarray
    shares: dict[int, float | None]
    seconds: float
    described: dict = field(default_factory=dict)


def compute_heatmap(classifier: Classifier, row: ImageRow, parts: list[dict], o: AuditOptions,
                    grid: WindowPlan) -> HeatmapDone | str:
    """The occlusion map of one top-k image (``grid``: the audit's window plan of ``o.box`` and
    ``o.stride``, made once per run) with the heat shares of its ``parts`` (the store's part
    rows) and its picture; a note (str) when the file can no longer be read. Both engines call
    it (the Ray engine on its actors)."""
    try:  # its decoding warnings were recorded when it was scored
        rgb, frame = audit_pixels(row.file, max_pixels=o.max_pixels, notes=[],
                                  classifier=classifier, target=o.target, frames=o.frames,
                                  max_frames=o.max_frames)
    except ExplainError as exc:
        return f"no heatmap for {display(row.file)}: {exc.reason}"
    heatmap = occlusion_map(classifier, rgb, windows=grid, fill=o.fill, target=o.target,
                            batch_size=o.batch_size, drill_down=o.drill_down)
    view = heatmap.params.get("model_view")
    shares = {p["n"]: heat_share(heatmap.values, (p["top"], p["left"], p["bottom"], p["right"]),
                                 view)
              for p in parts}
    small_rgb = shrink(rgb, SAVED_SIDE)
    saved = replace(heatmap, values=shrink(heatmap.values, SAVED_SIDE),
                    params={**heatmap.params, "source": row.path,
                            "original_shape": list(heatmap.shape),
                            **({} if frame is None else {"frame": frame})})
    shown = replace(saved, values=shrink(saved.values, DISPLAY_SIDE))
    look = {"colormap": o.colormap, "normalize": o.normalize, "vmin": o.vmin, "vmax": o.vmax}
    picture = figure(shrink(small_rgb, DISPLAY_SIDE), shown, alpha=o.alpha, **look)
    return HeatmapDone(saved, picture, shares, heatmap.seconds or 0.0,
                       described(shown, scale(shown, **look)))


def write_heatmap(store: Store, folder: Path, kind: str, row: ImageRow, done: HeatmapDone
                  ) -> None:
    """Write a computed heatmap's files (atomically, first) and then its store row."""
    png, npy, _ = write_map(folder / f"{kind}_{row.id:07d}", done.saved,
                            pictures={".png": done.picture}, values=True, extra=done.described)
    store.save_heatmap(row.id, kind, str(png.relative_to(folder.parent)),
                       str(npy.relative_to(folder.parent)), done.seconds, done.shares)


def heatmap_todo(store: Store, targets: list[tuple[str, ImageRow]]
                 ) -> list[tuple[str, ImageRow]]:
    """The targets (kind, row) whose heatmap is not in the store yet."""
    return [(kind, row) for kind, row in targets if store.heatmap(row.id) is None]


def heatmap_stage(store: Store, classifier: Classifier, targets: list[tuple[str, ImageRow]],
                  o: AuditOptions, grid: WindowPlan, folder: Path, rate: Rate) -> list[str]:
    """An occlusion map for each target image not done yet, on the window plan ``grid``;
    returns notes on failures."""
    todo = heatmap_todo(store, targets)
    notes: list[str] = []
    if not todo:
        return notes
    folder.mkdir(parents=True, exist_ok=True)
    with collect_warnings(), rate.task("heatmaps", len(todo)) as advance:
        for kind, row in todo:
            done = compute_heatmap(classifier, row, store.parts(row.id), o, grid)
            if isinstance(done, str):
                notes.append(done)
            else:
                write_heatmap(store, folder, kind, row, done)
            advance()
    return notes


def cue_stage(store: Store, classifier: Classifier, targets: list[tuple[str, ImageRow]],
              o: AuditOptions, grid: WindowPlan, labels: list[str], target_name: str,
              folder: Path, rate: Rate) -> tuple[Cues | None, list[str]]:
    """Discovered cues over the false positives that have a heatmap (step 4), on the window
    plan ``grid``, or why not."""
    if not o.cues:
        return None, []
    c = o.cue_options
    if not labels:
        return None, ["cue discovery skipped: it needs labeled data (it explains false "
                      "positives)"]
    fps = [(row, store.heatmap(row.id)) for kind, row in targets if kind == "fp"]
    fps = [(row, done) for row, done in fps if done is not None]
    if len(fps) < c.min_fps:
        return None, [f"cue discovery skipped: {len(fps)} false positive(s) with a heatmap, it "
                      f"needs {c.min_fps} (raise --top or lower --threshold)"]
    items = [CueImage(row.id, "fp", row.file, row.path, row.score,
                      heatmap=lambda npy=done["npy"]: np.load(folder / npy))
             for row, done in fps]
    for role, n in (("tn", c.negatives), ("tp", c.positives)):
        items += [CueImage(row.id, role, row.file, row.path, row.score)
                  for row in store.sample(role, target_name, o.threshold, n, c.seed)]
    box, stride = grid.box_pair, grid.stride_pair
    cache = StoreCache(store, c.setting(box=box, stride=stride, fill=o.fill, target=target_name))
    todo = len(items) - len(cache.harvested().keys() & {it.key for it in items})
    with collect_warnings(), rate.task("cues", todo) as advance:
        cues = find_cues(classifier, items, options=c, target=target_name, windows=grid,
                         fill=o.fill, batch_size=o.batch_size,
                         max_pixels=o.max_pixels, cache=cache,
                         progress=lambda stage, done, total: advance())
    cues.setting = cache.setting
    return cues, cues.notes

