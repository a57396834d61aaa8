"""Building a report: every method on every image, timed, scored for faithfulness, ranked.

:func:`build_report` runs the chosen methods on each image, times each, computes its deletion and
insertion AUC (:func:`explain.faithfulness`), draws its panels at display size (as data URIs,
:func:`explain.render.data_uri`) and ranks the methods per image and overall
(:func:`explain.report.ranking.rank`). The methods are the registry's,
:data:`explain.methods.METHODS`, by default its :data:`~explain.methods.DEFAULT_METHODS`.

Models: for the default ``open-nsfw`` the black-box methods, the scores and the faithfulness
curves run on the fastest backend (``open-nsfw:auto``) and the white-box methods on the torch
one. Any other model is used for everything; a white-box method that it cannot serve (ONNX,
HTTP, a Python function) is skipped with a note, never a crash. A bad image becomes a failed row
with its reason; the other images are complete. A clip (animated image, video) is explained on
its max frame; its row shows the timeline of p(target) over its frames with that frame marked.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from explain.choices import (
    DEFAULT_MASKS,
    SANITY_LAYERS,
    SANITY_THRESHOLD,
    WHITE_BOX_MODEL,
    check_fill,
)
from explain.clips import judge_clip
from explain.errors import ExplainError, OptionError, WhiteBoxError
from explain.faithfulness import faithfulness
from explain.files import display
from explain.frames import is_clip
from explain.heatmap import Heatmap
from explain.images import load_image, to_tensor
from explain.methods import (
    DEFAULT_METHODS,
    METHODS,
    REPORT_OPTIONS,
    Models,
    Runner,
    check_options,
    parse_methods,
    resolve_models,
)
from explain.models import resolve_target
from explain.models.base import model_name
from explain.perturbation import probabilities
from explain.progress import LabelledProgress
from explain.render import (
    DISPLAY_SIDE,
    check_look,
    data_uri,
    figure,
    overlay,
    reading,
    scale,
    shrink,
    shrink_map,
)
from explain.render_clip import timeline
from explain.report.ranking import rank
from explain.report.results import ImageResult, MethodResult
from explain.sanity import Sanity, check_layers, sanity_checks
from explain.windows import DEFAULT_BOX, DEFAULT_STRIDE, Size

THUMB_SIDE = 64
Progress = LabelledProgress


@dataclass
class Options:
    """What every method is run and drawn with (the same for all, so panels compare)."""

    box: Size = DEFAULT_BOX
    stride: Size = DEFAULT_STRIDE
    target: str | int = "nsfw"
    steps: int = 20
    fill: str = "blur"
    batch_size: int | None = None
    masks: int = DEFAULT_MASKS
    drill_down: float | None = None
    colormap: str | None = None
    alpha: float = 0.5
    normalize: str | None = None
    vmin: float | None = None
    vmax: float | None = None
    sanity: bool = False
    sanity_layers: int = SANITY_LAYERS

    def check(self) -> None:
        """Refuse bad values before any model runs (not once per image)."""
        check_fill(self.fill)
        check_layers(self.sanity_layers)
        if self.steps < 1:
            raise OptionError(f"steps must be at least 1, got {self.steps}")
        check_options(REPORT_OPTIONS, self.settings)
        check_look(self.colormap, self.normalize, self.vmin, self.vmax)

    @property
    def settings(self) -> dict[str, object]:
        """The methods' options these hold (:data:`explain.methods.REPORT_OPTIONS`, by name;
        ``fill`` here is the deletion fill, not occlusion's, which is never read from here)."""
        return {o.name: getattr(self, o.name) for o in REPORT_OPTIONS if hasattr(self, o.name)}


@dataclass
class Report:
    """A built report: the run's settings, one :class:`ImageResult` per image, the ranking."""

    model: str
    white_model: str | None
    target: str
    methods: list[str]
    options: Options
    images: list[ImageResult]
    notes: list[str]
    summary: list[dict]
    ranking: str
    not_ranked: dict[str, str]
    seconds: float
    created: str


def _params(heatmap: Heatmap) -> dict:
    params = {"box": heatmap.box, "stride": heatmap.stride, "windows": heatmap.windows,
              **heatmap.params}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items() if v is not None}


def _run_method(name: str, runner: Runner, models: Models, image: np.ndarray, o: Options,
                maps: dict[str, Heatmap]) -> MethodResult:
    """Run one method (``runner``: prepared once for the report), time it, score its
    faithfulness and draw its panels; its map goes into ``maps`` (for the sanity check)."""
    result = MethodResult(name, METHODS[name].title)
    start = time.perf_counter()
    heatmap = maps[name] = runner(models, image)
    result.seconds = time.perf_counter() - start
    result.params = _params(heatmap)
    start = time.perf_counter()
    result.faithfulness = faithfulness(models.black, image, heatmap, steps=o.steps,
                                       target=o.target, fill=o.fill, batch_size=o.batch_size)
    result.faith_seconds = time.perf_counter() - start
    # panels are drawn at display size: the map is shrunk like the image, then rendered
    small = shrink(image, DISPLAY_SIDE)
    shown = shrink_map(heatmap, DISPLAY_SIDE)
    look = {"colormap": o.colormap, "normalize": o.normalize, "vmin": o.vmin, "vmax": o.vmax}
    drawn = figure(small, shown, alpha=o.alpha, **look)  # shown at native size: not shrunk
    result.overlay_uri = data_uri(drawn, max(drawn.shape[:2]))
    result.reading = reading(shown, scale(shown, **look))
    result.raw_uri = data_uri(overlay(small, shown, alpha=1.0, **look))
    return result


def _image(index: int, path: Path, models: Models, runners: dict[str, Runner], o: Options,
           skipped: dict[str, str], tick: Callable[[str], None]) -> ImageResult:
    names = list(runners)
    row = ImageResult(path=str(path), anchor=f"img-{index}")
    try:
        image = _pixels(path, models, o, row)
        probs = probabilities(models.black, to_tensor(image, models.black.device))[0].tolist()
    except ExplainError as exc:
        row.error = getattr(exc, "reason", None) or str(exc)
        for name in names:
            tick(f"{display(path.name)}: {name}")
        return row
    classes = list(models.black.class_names)
    row.size = image.shape[:2]
    row.scores = dict(zip(classes, probs, strict=True))
    row.score = probs[resolve_target(models.black, o.target)]
    row.original_uri, row.thumb_uri = data_uri(image), data_uri(image, THUMB_SIDE)
    maps: dict[str, Heatmap] = {}
    for name in names:
        if name in skipped:
            row.methods.append(MethodResult(name, METHODS[name].title, skipped=skipped[name]))
        else:
            try:
                row.methods.append(_run_method(name, runners[name], models, image, o, maps))
            except WhiteBoxError as exc:
                skipped[name] = str(exc)
                row.methods.append(MethodResult(name, METHODS[name].title, skipped=str(exc)))
            except (ExplainError, RuntimeError, ValueError) as exc:
                row.methods.append(MethodResult(name, METHODS[name].title, error=str(exc)))
        tick(f"{display(path.name)}: {name}")
    if o.sanity:
        _sanity(row, models, image, o, runners, {m.method: maps[m.method] for m in row.methods
                                                 if m.faithfulness is not None})
    return row


def _sanity(row: ImageResult, models: Models, image: np.ndarray, o: Options,
            runners: dict[str, Runner], maps: dict[str, Heatmap]) -> None:
    """The sanity check (:mod:`explain.sanity`) of every method that made a map on this row;
    a method whose map cannot be recomputed on a randomised model records why."""
    def model_of(name: str) -> object:
        return models.white if METHODS[name].white_box else models.black

    def run(name: str, randomised: object) -> Heatmap:
        black = randomised if models.black is model_of(name) else models.black
        white = randomised if models.white is model_of(name) else models.white
        return runners[name](Models(black, white), image)

    try:
        checks = sanity_checks(maps, model_of, run, layers=o.sanity_layers)
    except (ExplainError, RuntimeError, ValueError) as exc:
        checks = {name: Sanity(False, note=f"the sanity check failed: {exc}") for name in maps}
    for m in row.methods:
        if m.method in checks:
            m.sanity = checks[m.method].as_dict()


def _pixels(path: Path, models: Models, o: Options, row: ImageResult) -> np.ndarray:
    """The image a report row explains: a still image, or a clip's max frame (every sampled
    frame scored: :func:`explain.clips.judge_clip`), whose row then carries the timeline of
    p(target) with that frame marked and a sentence saying which frame it is."""
    if not is_clip(path):
        return load_image(path)
    clip, scores, row.clip = judge_clip(models.black, path, o.target)
    picture = timeline(scores.times, scores.curve.tolist(), [f.duration for f in clip.frames],
                       target=scores.class_names[scores.target], marked=[scores.top],
                       indices=scores.indices, total=clip.source_frames,
                       scored=clip.scored_text())
    row.timeline_uri = data_uri(picture, picture.shape[1])
    return clip.frames[scores.top].rgb


def _images(n: int) -> str:
    return f"{n} image" + ("" if n == 1 else "s")


def sanity_notes(images: Sequence[ImageResult], names: Sequence[str], layers: int
                 ) -> list[str]:
    """The page's sentences on the sanity check: per method, on how many images it was flagged,
    or why it could not be checked."""
    notes = []
    for name in names:
        checks = [m.sanity for img in images for m in img.methods
                  if m.method == name and m.sanity is not None]
        if not checks:
            continue
        title = METHODS[name].title
        done = [c for c in checks if c["checked"]]
        if not done:
            notes.append(f"Sanity check: {title} cannot be checked: {checks[0]['note']}")
            continue
        flagged = sum(c["flagged"] for c in done)
        verdict = (f"FLAGGED on {flagged} of {_images(len(done))}: its map keeps rank correlation "
                   f"≥ {SANITY_THRESHOLD} with the original after the top {layers} layers are "
                   "re-initialised, so it does not show what the model learned" if flagged else
                   f"passes on {_images(len(done))} (its map changes when the top {layers} "
                   "layers are re-initialised)")
        unchecked = len(checks) - len(done)
        notes.append(f"Sanity check: {title} {verdict}" + (
            f"; not checked on {_images(unchecked)} (constant map)." if unchecked else "."))
    return notes


def build_report(paths: Sequence[str | os.PathLike], *, model: object = WHITE_BOX_MODEL,
                 methods: str | Sequence[str] = DEFAULT_METHODS, device: str | None = None,
                 options: Options | None = None, progress: Progress | None = None) -> Report:
    """Run ``methods`` on every image of ``paths`` and collect numbers and pictures.

    ``methods`` is a comma-separated string or a list of registry names; ``model`` a spec for
    :func:`explain.models.load` or a Classifier (see the module docstring for the default one);
    ``device`` where to load it; ``options`` what every method is run and drawn with;
    ``progress(done, total, label)`` is called after each (image, method). Returns the
    :class:`Report`: one row per path (a bad image is a row with its ``error``), each method's
    faithfulness (``insertion_minus_deletion``: higher is better) and its rank
    (:func:`explain.report.ranking.rank`).
    """
    start = time.perf_counter()
    o = options or Options()
    o.check()
    names = parse_methods(methods)
    models = resolve_models(model, device, names)
    target = list(models.black.class_names)[resolve_target(models.black, o.target)]
    skipped: dict[str, str] = {}
    total, done = len(paths) * len(names), 0

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, label)

    runners = {name: METHODS[name].prepared(o) for name in names}  # once, for every image
    images = [_image(i, Path(p), models, runners, o, skipped, tick)
              for i, p in enumerate(paths)]
    notes = [f"{METHODS[m].title} skipped: {why}" for m, why in skipped.items()]
    if o.sanity:
        notes += sanity_notes(images, names, o.sanity_layers)
    verdict, not_ranked, summary = rank(images, names, target)
    return Report(
        model=model_name(models.black, str(model)),
        white_model=None if models.white is None else model_name(models.white, str(model)),
        target=target, methods=names, options=o, images=images, notes=notes, summary=summary,
        ranking=verdict, not_ranked=not_ranked, seconds=time.perf_counter() - start,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def build_reports(paths: Sequence[str | os.PathLike], *, models: Sequence[object],
                  methods: str | Sequence[str] = DEFAULT_METHODS, device: str | None = None,
                  options: Options | None = None, progress: Progress | None = None
                  ) -> list[Report]:
    """One :func:`build_report` per model of ``models`` (specs or Classifiers, each loaded on
    ``device``), on the same ``paths`` with the same ``methods`` and ``options``, so that the page
    can show them a column each. Each model runs the white-box methods only if it can (the others
    are skipped with a note, as on a one-model report). ``progress(done, total, label)`` counts
    over all the models, each label led by the model's spec or name. Returns the reports in the
    order of ``models``."""
    o = options or Options()
    o.check()
    reports: list[Report] = []
    for i, model in enumerate(models):
        name = display(model if isinstance(model, str) else model_name(model, str(model)))

        def step(done: int, total: int, label: str, i: int = i, name: str = name) -> None:
            if progress is not None:
                progress(i * total + done, len(models) * total, f"{name}: {label}")

        reports.append(build_report(paths, model=model, methods=methods, device=device,
                                    options=o, progress=step))
    return reports
