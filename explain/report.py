"""Heatmap reports: every method on every image, timed, scored for faithfulness, ranked.

:func:`build_report` runs the chosen methods on each image, times each, computes its deletion and
insertion AUC (:func:`explain.faithfulness`) and ranks the methods per image and overall by
``insertion_auc − deletion_auc`` (higher is better). The methods are the registry's,
:data:`explain.methods.METHODS` (re-exported here with ``Method``, ``Models`` and
``parse_methods`` under their old names), by default its
:data:`~explain.methods.DEFAULT_METHODS`. :func:`render_html` turns the result into ONE
self-contained HTML file (pictures as base64 data URIs, no network resource, opens from disk;
jinja2 with autoescaping, since file and class names are untrusted text, and every shown text
passed through :func:`explain.files.display`); :func:`report_json` gives the same numbers for
machines; :func:`write_report` does both steps and writes the file atomically.

The ranking counts only what the measure can tell apart:

- An image has **no signal** when the curves cannot tell one map from another: its score is
  *saturated* (p_t of the image, of its fully deleted copy and of the blurred insertion canvas
  all within ``SATURATION_MARGIN`` = 0.01 of 0, or all within it of 1, for every method), or its
  curves are *flat* (for every method, all points of both curves within ``FLAT_TOLERANCE`` =
  0.01 of each other); see :mod:`explain.faithfulness`. Such an image is flagged with its reason
  and left out of the ranking, as is an image on which no method produced a map.
- A method has a **usable map** on an image when it produced one and the map is not constant (a
  constant map orders no pixel). Methods are compared on the same images only: the compared
  methods are the largest set of methods that all have a usable map on at least one image with a
  signal (among sets of that size, the one sharing the most images; then the earlier methods);
  they are ranked on exactly the images with a signal where every one of them has a usable map.
  Any other image with a signal is left out for all, with the methods that had no usable map on
  it. A method outside the compared set is *not ranked*, with its reason — never first.
- **Ties**: sorted by ``insertion_auc − deletion_auc`` (per image; overall its mean over the
  compared images), a method within ``TIE_TOLERANCE`` = 0.01 of the best of its group shares that
  group's rank, and the next group's rank counts all methods above it (1, 1, 3). A shared rank is
  marked ``tied``. With no image with a signal the verdict is "no ranking: no image had a signal".

Models: for the default ``open-nsfw`` the black-box methods, the scores and the faithfulness
curves run on the fastest backend (``open-nsfw:auto``) and the white-box methods on the torch
one. Any other model is used for everything; a white-box method that it cannot serve (ONNX,
HTTP, a Python function) is skipped with a note, never a crash. A bad image becomes a failed row
with its reason; the other images are complete.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

import numpy as np

from explain.choices import DEFAULT_MASKS, FILLS, FORMATS
from explain.errors import ExplainError, OptionError, WhiteBoxError
from explain.faithfulness import FLAT_TOLERANCE, SATURATION_MARGIN, faithfulness
from explain.files import display, to_storable, write_text
from explain.heatmap import Heatmap
from explain.html import environment
from explain.images import load_image, to_tensor
from explain.methods import DEFAULT_METHODS
from explain.methods import METHODS as METHODS
from explain.methods import Method as Method
from explain.methods import Models as Models
from explain.methods import parse_methods as parse_methods
from explain.models import load, resolve_target
from explain.render import DISPLAY_SIDE as DISPLAY_SIDE
from explain.render import check_look, data_uri, figure, overlay
from explain.render import shrink as shrink
from explain.rise import check_rise
from explain.windows import DEFAULT_BOX, DEFAULT_STRIDE, Size, check_windows

THUMB_SIDE = 64
DEFAULT_MODELS = ("open-nsfw", "open-nsfw:auto")
TIE_TOLERANCE = 0.01
Progress = Callable[[int, int, str], None]


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
    colormap: str | None = None
    alpha: float = 0.5
    normalize: str | None = None
    vmin: float | None = None
    vmax: float | None = None

    def check(self) -> None:
        """Refuse bad values before any model runs (not once per image)."""
        if self.fill not in FILLS:
            raise OptionError(f"unknown fill {self.fill!r}; use one of {', '.join(FILLS)}")
        if self.steps < 1:
            raise OptionError(f"steps must be at least 1, got {self.steps}")
        check_windows(self.box, self.stride)
        check_rise(self.masks)
        check_look(self.colormap, self.normalize, self.vmin, self.vmax)


@dataclass
class MethodResult:
    """One method on one image: its numbers, or why there are none; pictures as data URIs."""

    method: str
    title: str
    seconds: float | None = None
    faith_seconds: float | None = None
    params: dict = field(default_factory=dict)
    faithfulness: dict | None = None
    rank: int | None = None
    tied: bool = False
    error: str | None = None
    skipped: str | None = None
    overlay_uri: str | None = None
    raw_uri: str | None = None


@dataclass
class ImageResult:
    """One image's row; ``path`` is :func:`explain.files.to_storable` text (lossless and
    strict UTF-8, so a name that is not UTF-8 is written out as ``b:caf\\xe9.jpg``)."""

    path: str
    anchor: str
    error: str | None = None
    size: tuple[int, int] | None = None
    scores: dict[str, float] = field(default_factory=dict)
    score: float | None = None
    original_uri: str | None = None
    thumb_uri: str | None = None
    methods: list[MethodResult] = field(default_factory=list)
    left_out: str | None = None

    @property
    def best(self) -> list[MethodResult]:
        """The methods ranked first on this image (several when tied, none when not ranked)."""
        return [m for m in self.methods if m.rank == 1]

    @property
    def ranked(self) -> list[MethodResult]:
        """The methods best first; skipped and failed ones last."""
        return sorted(self.methods, key=lambda m: (m.rank is None, m.rank or 0))


@dataclass
class Report:
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


def resolve_models(model: object, device: str | None, methods: Sequence[str]) -> Models:
    """The default open_nsfw: black-box on the fastest backend, white-box on torch (loaded only
    when a white-box method is asked for). Any other model: the same one for both."""
    wants_white = any(METHODS[m].white_box for m in methods)
    if isinstance(model, str) and model in DEFAULT_MODELS:
        black = load("open-nsfw:auto", device)
        return Models(black, load("open-nsfw", device) if wants_white else None)
    clf = load(model, device)
    return Models(clf, clf if wants_white else None)


def _params(heatmap: Heatmap) -> dict:
    params = {"box": heatmap.box, "stride": heatmap.stride, "windows": heatmap.windows,
              **heatmap.params}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items() if v is not None}


def _run_method(name: str, models: Models, image: np.ndarray, o: Options) -> MethodResult:
    method = METHODS[name]
    result = MethodResult(name, method.title)
    start = time.perf_counter()
    heatmap = method.run(models, image, o)
    result.seconds = time.perf_counter() - start
    result.params = _params(heatmap)
    start = time.perf_counter()
    result.faithfulness = faithfulness(models.black, image, heatmap, steps=o.steps,
                                       target=o.target, fill=o.fill, batch_size=o.batch_size)
    result.faith_seconds = time.perf_counter() - start
    # panels are drawn at display size: the map is shrunk like the image, then rendered
    small = shrink(image, DISPLAY_SIDE)
    shown = replace(heatmap, values=shrink(heatmap.values.astype(np.float32), DISPLAY_SIDE))
    look = {"colormap": o.colormap, "normalize": o.normalize, "vmin": o.vmin, "vmax": o.vmax}
    result.overlay_uri = data_uri(figure(small, shown, alpha=o.alpha, **look))
    result.raw_uri = data_uri(overlay(small, shown, alpha=1.0, **look))
    return result


def _image(index: int, path: Path, models: Models, names: list[str], o: Options,
           skipped: dict[str, str], tick: Callable[[str], None]) -> ImageResult:
    row = ImageResult(path=str(path), anchor=f"img-{index}")
    try:
        image = load_image(path)
        probs = models.black.predict(to_tensor(image, models.black.device))[0].tolist()
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
    for name in names:
        if name in skipped:
            row.methods.append(MethodResult(name, METHODS[name].title, skipped=skipped[name]))
        else:
            try:
                row.methods.append(_run_method(name, models, image, o))
            except WhiteBoxError as exc:
                skipped[name] = str(exc)
                row.methods.append(MethodResult(name, METHODS[name].title, skipped=str(exc)))
            except (ExplainError, RuntimeError, ValueError) as exc:
                row.methods.append(MethodResult(name, METHODS[name].title, error=str(exc)))
        tick(f"{display(path.name)}: {name}")
    return row


def tie_ranks(values: Sequence[float], tolerance: float = TIE_TOLERANCE) -> list[int]:
    """Competition ranks of ``values``, highest first: going down the sorted values, one within
    ``tolerance`` of the best of its group shares the group's rank; a new group's rank counts
    every value above it (``[0.5, 0.495, 0.3]`` → ``[1, 1, 3]``)."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0] * len(values)
    lead, group_rank = None, 0
    for place, i in enumerate(order, 1):
        if lead is None or lead - values[i] > tolerance:
            lead, group_rank = values[i], place
        ranks[i] = group_rank
    return ranks


def _gap(m: MethodResult) -> float:
    return m.faithfulness["insertion_minus_deletion"]


def _usable(m: MethodResult) -> bool:
    return m.faithfulness is not None and not m.faithfulness["constant"]


def _unusable(m: MethodResult) -> str:
    if m.skipped:
        return "skipped"
    if m.error:
        return "failed"
    return "has a constant map"


def _no_signal(img: ImageResult, target: str) -> str | None:
    """Why the curves on ``img`` cannot tell maps apart (see the module docstring), or None."""
    curves = [m.faithfulness for m in img.methods if m.faithfulness is not None]
    if not curves:
        return "no method produced a map"
    if all(f["saturated"] for f in curves):
        end = 0 if curves[0]["score"] <= 0.5 else 1
        return (f"no signal: score saturated (p({target}) of the image, of its fully deleted "
                f"copy and of the blurred canvas all within {SATURATION_MARGIN:g} of {end})")
    if all(f["flat"] for f in curves):
        return (f"no signal: curves flat (every method's deletion and insertion curves stay "
                f"within {FLAT_TOLERANCE:g})")
    return None


def _compared(signal: list[ImageResult], names: list[str]) -> tuple[list[str], list[int]]:
    """The compared methods and the indices of the images they share (module docstring)."""
    usable = {n: {i for i, img in enumerate(signal) for m in img.methods
                  if m.method == n and _usable(m)} for n in names}
    candidates = [n for n in names if usable[n]]
    for size in range(len(candidates), 0, -1):
        shared = [(sorted(set.intersection(*(usable[n] for n in group))), list(group))
                  for group in combinations(candidates, size)]
        shared = [s for s in shared if s[0]]
        if shared:
            images, group = max(shared, key=lambda s: len(s[0]))
            return group, images
    return [], []


def rank(images: list[ImageResult], names: list[str], target: str
         ) -> tuple[str, dict[str, str], list[dict]]:
    """Rank ``names`` over ``images`` as the module docstring says: sets each image's
    ``left_out`` and each compared method's ``rank``/``tied``; returns the verdict line, the
    methods not ranked with their reasons, and the summary rows (best first)."""
    loaded = [img for img in images if img.error is None]
    for img in loaded:
        img.left_out = _no_signal(img, target)
    signal = [img for img in loaded if img.left_out is None]
    group, shared = _compared(signal, names)
    for i, img in enumerate(signal):
        by_name = {m.method: m for m in img.methods}
        if i not in shared:
            img.left_out = "not comparable: " + ", ".join(
                f"{by_name[n].title} {_unusable(by_name[n])}" for n in group
                if not _usable(by_name[n]))
            continue
        compared = [by_name[n] for n in group]
        ranks = tie_ranks([_gap(m) for m in compared])
        for m, r in zip(compared, ranks, strict=True):
            m.rank, m.tied = r, ranks.count(r) > 1

    if not loaded:
        none = "no image could be read"
    elif not any(m.faithfulness is not None for img in loaded for m in img.methods):
        none = "no method produced a map"
    elif not signal:
        none = "no image had a signal"
    elif not group:
        none = "no method has a usable map on an image with a signal"
    else:
        none = None
    verdict = f"no ranking: {none}" if none else (
        f"{len(group)} method{'s' * (len(group) != 1)} ranked on {len(shared)} of "
        f"{len(images)} image{'s' * (len(images) != 1)}, the same for every method")
    not_ranked = {}
    for n in names:
        if n in group:
            continue
        results = [m for img in loaded for m in img.methods if m.method == n]
        if results and all(m.skipped for m in results):
            not_ranked[n] = "skipped"
        elif not signal:
            not_ranked[n] = none
        elif any(_usable(m) for img in signal for m in img.methods if m.method == n):
            not_ranked[n] = "shares no image with a signal with the ranked methods"
        else:
            not_ranked[n] = "no usable map on an image with a signal"

    rows = []
    for n in group:
        done = [m for i in shared for m in signal[i].methods if m.method == n]
        f = [m.faithfulness for m in done]
        rows.append({
            "method": n, "title": METHODS[n].title, "images": len(done),
            "deletion_auc": float(np.mean([x["deletion_auc"] for x in f])),
            "insertion_auc": float(np.mean([x["insertion_auc"] for x in f])),
            "insertion_minus_deletion": float(np.mean([x["insertion_minus_deletion"]
                                                       for x in f])),
            "mean_rank": float(np.mean([m.rank for m in done])),
            "wins": sum(m.rank == 1 and not m.tied for m in done),
            "shared_wins": sum(m.rank == 1 and m.tied for m in done),
            "seconds": float(np.mean([m.seconds for m in done])),
            "faith_seconds": float(np.mean([m.faith_seconds for m in done])),
        })
    ranks = tie_ranks([r["insertion_minus_deletion"] for r in rows])
    for r, place in zip(rows, ranks, strict=True):
        r["rank"], r["tied"] = place, ranks.count(place) > 1
    rows.sort(key=lambda r: (r["rank"], -r["insertion_minus_deletion"]))
    return verdict, not_ranked, rows


def build_report(paths: Sequence[str | os.PathLike], *, model: object = "open-nsfw",
                 methods: str | Sequence[str] = DEFAULT_METHODS, device: str | None = None,
                 options: Options | None = None, progress: Progress | None = None) -> Report:
    """Run ``methods`` on every image of ``paths`` and collect numbers and pictures.

    ``model`` is a spec for :func:`explain.models.load` or a Classifier; ``progress(done, total,
    label)`` is called after each (image, method).
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

    images = [_image(i, Path(p), models, names, o, skipped, tick) for i, p in enumerate(paths)]
    notes = [f"{METHODS[m].title} skipped: {why}" for m, why in skipped.items()]
    verdict, not_ranked, summary = rank(images, names, target)
    return Report(
        model=getattr(models.black, "name", str(model)),
        white_model=None if models.white is None else getattr(models.white, "name", str(model)),
        target=target, methods=names, options=o, images=images, notes=notes, summary=summary,
        ranking=verdict, not_ranked=not_ranked, seconds=time.perf_counter() - start,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def curve_range(f: dict) -> tuple[float, float]:
    """The y-axis range of a panel's curve plot: lowest to highest point of both curves."""
    values = [*f["deletion"], *f["insertion"]]
    lo, hi = min(values), max(values)
    return lo, max(hi, lo + 1e-6)


def curve_points(ys: Sequence[float], xs: Sequence[float], y_range: tuple[float, float],
                 width: int = 160, height: int = 60) -> str:
    """An SVG polyline ``points`` string for a curve on [0, 1]×``y_range``, 2 px inside."""
    lo, hi = y_range
    return " ".join(f"{x * width:.1f},{2 + (1.0 - (y - lo) / (hi - lo)) * (height - 4):.1f}"
                    for x, y in zip(xs, ys, strict=True))


def _text(value: object) -> object:
    """jinja2's ``finalize``: a printed text as :func:`display` shows it, any other value as is."""
    return display(value) if isinstance(value, str) else value


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page; every text shown as :func:`display` shows it
    (any file name, even with undecodable bytes, becomes printable strict-UTF-8 text)."""
    titles = {name: m.title for name, m in METHODS.items()}
    env = environment(finalize=_text, filters={"points": curve_points, "y_range": curve_range})
    return env.get_template("report.html.j2").render(
        r=report, titles=titles, tie=TIE_TOLERANCE, margin=SATURATION_MARGIN, flat=FLAT_TOLERANCE)


def _shown(value: object) -> object:
    """Every text in a JSON-able value as :func:`display` shows it."""
    if isinstance(value, str):
        return display(value)
    if isinstance(value, dict):
        return {_shown(k): _shown(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shown(v) for v in value]
    return value


def report_json(report: Report) -> dict:
    """The report's numbers (no pictures) as a JSON-able dict of strict UTF-8 text: image paths
    in :func:`explain.files.to_storable` form (lossless), other texts as :func:`display` shows
    them."""
    def method(m: MethodResult) -> dict:
        return {"method": m.method, "seconds": m.seconds, "faith_seconds": m.faith_seconds,
                "params": m.params, "rank": m.rank, "tied": m.tied, "error": m.error,
                "skipped": m.skipped, "faithfulness": m.faithfulness}

    def image(img: ImageResult) -> dict:
        return {"path": to_storable(img.path), **_shown({
            "error": img.error, "left_out": img.left_out,
            "size": list(img.size) if img.size else None, "scores": img.scores,
            "score": img.score, "best": [m.method for m in img.best],
            "methods": [method(m) for m in img.methods]})}

    return {**_shown({
        "model": report.model, "white_model": report.white_model, "target": report.target,
        "methods": report.methods, "created": report.created, "seconds": report.seconds,
        "options": asdict(report.options), "notes": report.notes,
        "ranking": {"verdict": report.ranking, "not_ranked": report.not_ranked,
                    "tie_tolerance": TIE_TOLERANCE, "saturation_margin": SATURATION_MARGIN,
                    "flat_tolerance": FLAT_TOLERANCE},
        "summary": report.summary}), "images": [image(img) for img in report.images]}


def write_report(paths: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                 format: str = "html", **kwargs: object) -> Report:
    """:func:`build_report` and write it to ``output`` as ``html`` or ``json``, atomically
    (:func:`explain.files.write_text`: a crash never leaves a partial file)."""
    if format not in FORMATS:
        raise OptionError(f"unknown format {format!r}; use html or json")
    report = build_report(paths, **kwargs)  # type: ignore[arg-type]
    text = render_html(report) if format == "html" else json.dumps(report_json(report), indent=2)
    write_text(output, text)
    return report
