"""explain: why does an image classifier score an image the way it does?

The public API is this flat list of names (``explain.occlusion_map``, ``explain.overlay``, …).
They are imported on first use, so ``import explain`` (and the CLI's start-up) loads none of
torch, captum, openTSNE or jinja2 until a name that needs them is used. The dataset audit lives in
its own package: ``from explain.audit import audit``.
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType

_EXPORTS = {
    "Heatmap": "explain.heatmap",
    "overlay": "explain.render",
    "occlusion_map": "explain.occlusion",
    "sliding_window_map": "explain.sliding",
    "rise_map": "explain.rise",
    "deconvnet": "explain.backprop",
    "guided_backprop": "explain.backprop",
    "layers": "explain.backprop",
    "Reconstruction": "explain.reconstruction",
    "gradcam": "explain.grad_cam",
    "build_report": "explain.report",
    "render_html": "explain.report",
    "report_json": "explain.report",
    "write_report": "explain.report",
    "build_reports": "explain.report",
    "write_reports": "explain.report",
    "similarity_grid": "explain.grid",
    "SimilarityGrid": "explain.grid",
    "GridQuality": "explain.grid",
    "draw_mosaic": "explain.grid",
    "read_grid_json": "explain.grid",
    "ExplainError": "explain.errors",
    "load_image": "explain.images",
    "faithfulness": "explain.faithfulness",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'explain' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(ModuleType):
    """Importing a submodule binds it to the package's attribute of its name; a function named
    like its module (``faithfulness``) keeps that name instead of being shadowed by it."""

    def __setattr__(self, name: str, value: object) -> None:
        if not (name in _EXPORTS and isinstance(value, ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
