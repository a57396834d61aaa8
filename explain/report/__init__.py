"""Heatmap reports: every method on every image, timed, scored for faithfulness, ranked.

- :mod:`explain.report.build`: :func:`build_report` runs the methods on the images and collects
  numbers and pictures into a :class:`Report`; :func:`build_reports` does it once per model.
- :mod:`explain.report.results`: a report's rows, :class:`ImageResult` and :class:`MethodResult`.
- :mod:`explain.report.ranking`: the ranking rules (:func:`rank`, :func:`tie_ranks`): which
  methods are compared on which images, by ``insertion_auc − deletion_auc``, and how ties count.
- :mod:`explain.report.html`: the report as one self-contained HTML page (:func:`render_html`),
  as JSON (:func:`report_json`), or written to a file (:func:`write_report`); several models'
  reports as one page with a column per model (:func:`render_models_html`, :func:`models_json`,
  :func:`write_reports`). The only part that
  loads jinja2, and only when one of its names is first used.

Every name is re-exported here, as are the registry's ``METHODS``, ``Method``, ``Models``,
``parse_methods`` and ``resolve_models``, the model table's ``DEFAULT_MODELS`` and the renderer's
``shrink``, ``data_uri`` and ``DISPLAY_SIDE``, under the names ``explain.report`` has always had.
"""

from __future__ import annotations

from importlib import import_module

from explain.methods import (
    DEFAULT_METHODS,
    METHODS,
    Method,
    Models,
    parse_methods,
    resolve_models,
)
from explain.models.specs import DEFAULT_MODELS
from explain.render import DISPLAY_SIDE, data_uri, shrink
from explain.report.build import (
    THUMB_SIDE,
    Options,
    Progress,
    Report,
    build_report,
    build_reports,
)
from explain.report.ranking import TIE_TOLERANCE, rank, tie_ranks
from explain.report.results import ImageResult, MethodResult

_PAGES = ("curve_points", "curve_range", "models_json", "render_html", "render_models_html",
          "report_json", "write_report", "write_reports")

__all__ = [
    "DEFAULT_METHODS", "DEFAULT_MODELS", "DISPLAY_SIDE", "METHODS", "THUMB_SIDE", "TIE_TOLERANCE",
    "ImageResult", "Method", "MethodResult", "Models", "Options", "Progress", "Report",
    "build_report", "build_reports", "data_uri", "parse_methods", "rank", "resolve_models",
    "shrink", "tie_ranks",
    *_PAGES,
]


def __getattr__(name: str) -> object:
    """The page names of :mod:`explain.report.html`, imported (with jinja2) on first use."""
    if name not in _PAGES:
        raise AttributeError(f"module 'explain.report' has no attribute {name!r}")
    value = getattr(import_module("explain.report.html"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
