"""The report as pages: one self-contained HTML file (:func:`render_html`), the same numbers as
JSON for machines (:func:`report_json`), and both written atomically (:func:`write_report`).

The HTML has every picture inlined as a base64 data URI (no network resource; it opens from
disk) and is rendered by the project's one jinja2 environment (:func:`explain.html.environment`,
autoescaping, since file and class names are untrusted text), every shown text passed through
:func:`explain.files.display`. This is the only module of the report that loads jinja2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict

from markupsafe import Markup

from explain.choices import FORMATS
from explain.errors import OptionError
from explain.faithfulness import FLAT_TOLERANCE, SATURATION_MARGIN
from explain.files import display, to_storable, write_text
from explain.html import environment
from explain.methods import METHODS
from explain.report.build import Report, build_report, build_reports
from explain.report.ranking import TIE_TOLERANCE
from explain.report.results import ImageResult, MethodResult


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
    """jinja2's ``finalize``: a printed text as :func:`display` shows it, any other value (a
    macro's HTML, :class:`markupsafe.Markup`, included) as is."""
    return display(value) if isinstance(value, str) and not isinstance(value, Markup) else value


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
                "skipped": m.skipped, "faithfulness": m.faithfulness, "sanity": m.sanity}

    def image(img: ImageResult) -> dict:
        return {"path": to_storable(img.path), **_shown({
            "error": img.error, "left_out": img.left_out,
            "size": list(img.size) if img.size else None, "scores": img.scores,
            "score": img.score, "clip": img.clip, "best": [m.method for m in img.best],
            "methods": [method(m) for m in img.methods]})}

    return {**_shown({
        "model": report.model, "white_model": report.white_model, "target": report.target,
        "methods": report.methods, "created": report.created, "seconds": report.seconds,
        "options": asdict(report.options), "notes": report.notes,
        "ranking": {"verdict": report.ranking, "not_ranked": report.not_ranked,
                    "tie_tolerance": TIE_TOLERANCE, "saturation_margin": SATURATION_MARGIN,
                    "flat_tolerance": FLAT_TOLERANCE},
        "summary": report.summary}), "images": [image(img) for img in report.images]}


def render_models_html(reports: Sequence[Report]) -> str:
    """Several models' reports on the same images as one self-contained HTML page: a column per
    model (its ranking, and on each image its scores, method table and panels), under a header
    naming the model."""
    titles = {name: m.title for name, m in METHODS.items()}
    env = environment(finalize=_text, filters={"points": curve_points, "y_range": curve_range})
    return env.get_template("report_models.html.j2").render(
        reports=list(reports), r=reports[0], titles=titles, tie=TIE_TOLERANCE,
        margin=SATURATION_MARGIN, flat=FLAT_TOLERANCE)


def models_json(reports: Sequence[Report]) -> dict:
    """Several models' reports as JSON: ``models`` holds each model's :func:`report_json`, in
    the order the models were given."""
    return {"models": [report_json(r) for r in reports]}


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise OptionError(f"unknown format {format!r}; use html or json")


def write_report(paths: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                 format: str = "html", **kwargs: object) -> Report:
    """:func:`build_report` over ``paths`` (``kwargs`` are its keyword arguments) and write it to
    ``output`` as ``html`` (:func:`render_html`) or ``json`` (:func:`report_json`), atomically
    (:func:`explain.files.write_text`: a crash never leaves a partial file). Returns the
    :class:`~explain.report.build.Report`; an unknown ``format`` is an ``OptionError``."""
    _check_format(format)
    report = build_report(paths, **kwargs)  # type: ignore[arg-type]
    text = render_html(report) if format == "html" else json.dumps(report_json(report), indent=2)
    write_text(output, text)
    return report


def write_reports(paths: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                  models: Sequence[object], format: str = "html", **kwargs: object
                  ) -> list[Report]:
    """:func:`build_reports` over ``paths`` (one report per model of ``models``; ``kwargs``
    are its other keyword arguments) written to ``output`` as one page with a column per model
    (``format`` ``html``: :func:`render_models_html`) or as JSON (``json``:
    :func:`models_json`), atomically. Returns the reports, in the order of ``models``."""
    _check_format(format)
    reports = build_reports(paths, models=models, **kwargs)  # type: ignore[arg-type]
    text = (render_models_html(reports) if format == "html"
            else json.dumps(models_json(reports), indent=2))
    write_text(output, text)
    return reports
