"""Heatmap reports: every method on every image, timed, scored for faithfulness, ranked.

:func:`build_report` runs the chosen methods on each image, times each, computes its deletion and
insertion AUC (:func:`explain.faithfulness`) and ranks the methods per image and overall by
``insertion_auc − deletion_auc`` (higher is better). :func:`render_html` turns the result into ONE
self-contained HTML file (pictures as base64 data URIs, no network resource, opens from disk;
jinja2 with autoescaping, since file and class names are untrusted text); :func:`report_json`
gives the same numbers for machines; :func:`write_report` does both steps.

Models: for the default ``open-nsfw`` the black-box methods, the scores and the faithfulness
curves run on the fastest backend (``open-nsfw:auto``) and the white-box methods on the torch
one. Any other model is used for everything; a white-box method that it cannot serve (ONNX,
HTTP, a Python function) is skipped with a note, never a crash. A bad image becomes a failed row
with its reason; the other images are complete.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import jinja2
import numpy as np
from PIL import Image

from explain.backprop import deconvnet, guided_backprop
from explain.errors import ExplainError, OptionError, WhiteBoxError
from explain.faithfulness import faithfulness
from explain.files import to_storable, write_text
from explain.grad_cam import gradcam
from explain.heatmap import Heatmap
from explain.images import load_image, to_tensor
from explain.models import Classifier, load, resolve_target
from explain.occlusion import FILLS, occlusion_map
from explain.render import colormap_lut, overlay
from explain.sliding import sliding_window_map
from explain.windows import check_windows

DISPLAY_SIDE = 256
THUMB_SIDE = 64
FORMATS = ("html", "json")
DEFAULT_MODELS = ("open-nsfw", "open-nsfw:auto")
Progress = Callable[[int, int, str], None]


@dataclass
class Options:
    """What every method is run and drawn with (the same for all, so panels compare)."""

    box: int | tuple[int, int] = 64
    stride: int | tuple[int, int] = 48
    target: str | int = "nsfw"
    steps: int = 20
    fill: str = "blur"
    batch_size: int | None = None
    colormap: str = "jet"
    alpha: float = 0.5
    normalize: str = "minmax"

    def check(self) -> None:
        """Refuse bad values before any model runs (not once per image)."""
        if self.fill not in FILLS:
            raise OptionError(f"unknown fill {self.fill!r}; use one of {', '.join(FILLS)}")
        if self.normalize not in ("minmax", "percentile"):
            raise OptionError(f"unknown normalize {self.normalize!r}; use minmax or percentile")
        if self.steps < 1:
            raise OptionError(f"steps must be at least 1, got {self.steps}")
        check_windows(self.box, self.stride)
        colormap_lut(self.colormap)


@dataclass
class Models:
    black: Classifier
    white: object | None


def _occlusion(models: Models, image: np.ndarray, o: Options) -> Heatmap:
    return occlusion_map(models.black, image, box=o.box, stride=o.stride, target=o.target,
                         batch_size=o.batch_size)


def _sliding(models: Models, image: np.ndarray, o: Options) -> Heatmap:
    return sliding_window_map(models.black, image, box=o.box, stride=o.stride, target=o.target,
                              batch_size=o.batch_size)


def _deconv(models: Models, image: np.ndarray, o: Options) -> Heatmap:
    return deconvnet(models.white, image, target=o.target).magnitude


def _guided(models: Models, image: np.ndarray, o: Options) -> Heatmap:
    return guided_backprop(models.white, image, target=o.target).magnitude


def _gradcam(models: Models, image: np.ndarray, o: Options) -> Heatmap:
    return gradcam(models.white, image, target=o.target)


@dataclass(frozen=True)
class Method:
    title: str
    white_box: bool
    run: Callable[[Models, np.ndarray, Options], Heatmap]


METHODS: dict[str, Method] = {
    "occlusion": Method("Occlusion", False, _occlusion),
    "sliding": Method("Sliding window", False, _sliding),
    "deconv": Method("Deconvnet", True, _deconv),
    "guided": Method("Guided backprop", True, _guided),
    "gradcam": Method("Grad-CAM", True, _gradcam),
}


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

    @property
    def best(self) -> str | None:
        ranked = [m for m in self.methods if m.rank == 1]
        return ranked[0].title if ranked else None

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
    seconds: float
    created: str


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """``"occlusion,gradcam"`` or a list → validated method names, in the given order."""
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    names = [m for m in names if m]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise OptionError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose "
                          f"from {','.join(METHODS)}")
    return list(dict.fromkeys(names))


def resolve_models(model: object, device: str | None, methods: Sequence[str]) -> Models:
    """The default open_nsfw: black-box on the fastest backend, white-box on torch (loaded only
    when a white-box method is asked for). Any other model: the same one for both."""
    wants_white = any(METHODS[m].white_box for m in methods)
    if isinstance(model, str) and model in DEFAULT_MODELS:
        black = load("open-nsfw:auto", device)
        return Models(black, load("open-nsfw", device) if wants_white else None)
    clf = load(model, device)
    return Models(clf, clf if wants_white else None)


def shrink(picture: np.ndarray, side: int) -> np.ndarray:
    """An image or a map shrunk (area averaging) so that its longer side is at most ``side``."""
    h, w = picture.shape[:2]
    scale = side / max(h, w)
    if scale >= 1.0:
        return picture
    return cv2.resize(picture, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA)


def data_uri(rgb: np.ndarray, side: int = DISPLAY_SIDE) -> str:
    """An RGB uint8 picture shrunk to at most ``side`` pixels, as a JPEG data URI."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(shrink(rgb, side)), "RGB").save(buf, format="JPEG",
                                                                         quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


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
    values = shrink(heatmap.values.astype(np.float32), DISPLAY_SIDE)
    look = {"colormap": o.colormap, "normalize": o.normalize}
    result.overlay_uri = data_uri(overlay(small, values, alpha=o.alpha, **look))
    result.raw_uri = data_uri(overlay(small, values, alpha=1.0, **look))
    return result


def _rank(results: list[MethodResult]) -> None:
    """Rank 1 = highest insertion − deletion; a constant map has no pixel order and no rank."""
    scored = [m for m in results if m.faithfulness is not None
              and not m.faithfulness["constant"]]
    scored.sort(key=lambda m: -m.faithfulness["insertion_minus_deletion"])
    for i, m in enumerate(scored, 1):
        m.rank = i


def _image(index: int, path: Path, models: Models, names: list[str], o: Options,
           skipped: dict[str, str], tick: Callable[[str], None]) -> ImageResult:
    row = ImageResult(path=to_storable(path), anchor=f"img-{index}")
    try:
        image = load_image(path)
        probs = models.black.predict(to_tensor(image, models.black.device))[0].tolist()
    except ExplainError as exc:
        row.error = getattr(exc, "reason", None) or str(exc)
        for name in names:
            tick(f"{path.name}: {name}")
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
        tick(f"{path.name}: {name}")
    _rank(row.methods)
    return row


def _summary(images: list[ImageResult], names: list[str]) -> list[dict]:
    """Per method, over the images it scored: mean AUCs, mean rank, wins, mean time; best first."""
    rows = []
    for name in names:
        done = [m for img in images for m in img.methods if m.method == name and m.rank]
        if not done:
            continue
        f = [m.faithfulness for m in done]
        rows.append({
            "method": name, "title": METHODS[name].title, "images": len(done),
            "deletion_auc": float(np.mean([x["deletion_auc"] for x in f])),
            "insertion_auc": float(np.mean([x["insertion_auc"] for x in f])),
            "insertion_minus_deletion": float(np.mean([x["insertion_minus_deletion"]
                                                       for x in f])),
            "mean_rank": float(np.mean([m.rank for m in done])),
            "wins": sum(m.rank == 1 for m in done),
            "seconds": float(np.mean([m.seconds for m in done])),
            "faith_seconds": float(np.mean([m.faith_seconds for m in done])),
        })
    rows.sort(key=lambda r: (-r["insertion_minus_deletion"], r["mean_rank"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def build_report(paths: Sequence[str | os.PathLike], *, model: object = "open-nsfw",
                 methods: str | Sequence[str] = tuple(METHODS), device: str | None = None,
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
    return Report(
        model=getattr(models.black, "name", str(model)),
        white_model=None if models.white is None else getattr(models.white, "name", str(model)),
        target=target, methods=names, options=o, images=images, notes=notes,
        summary=_summary(images, names), seconds=time.perf_counter() - start,
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


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("explain", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["points"] = curve_points
    env.filters["y_range"] = curve_range
    return env


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    return _environment().get_template("report.html.j2").render(r=report)


def report_json(report: Report) -> dict:
    """The report's numbers (no pictures) as a JSON-able dict."""
    def method(m: MethodResult) -> dict:
        return {"method": m.method, "seconds": m.seconds, "faith_seconds": m.faith_seconds,
                "params": m.params, "rank": m.rank, "error": m.error, "skipped": m.skipped,
                "faithfulness": m.faithfulness}

    return {
        "model": report.model, "white_model": report.white_model, "target": report.target,
        "methods": report.methods, "created": report.created, "seconds": report.seconds,
        "options": asdict(report.options),
        "notes": report.notes, "summary": report.summary,
        "images": [{"path": img.path, "error": img.error,
                    "size": list(img.size) if img.size else None, "scores": img.scores,
                    "score": img.score, "best": next((m.method for m in img.methods
                                                      if m.rank == 1), None),
                    "methods": [method(m) for m in img.methods]} for img in report.images],
    }


def write_report(paths: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                 format: str = "html", **kwargs: object) -> Report:
    """:func:`build_report` and write it to ``output`` as ``html`` or ``json``."""
    if format not in FORMATS:
        raise OptionError(f"unknown format {format!r}; use html or json")
    report = build_report(paths, **kwargs)  # type: ignore[arg-type]
    text = render_html(report) if format == "html" else json.dumps(report_json(report), indent=2)
    write_text(output, text)
    return report
