"""explain: why does an image classifier score an image the way it does?

The public API is this flat list of names (``explain.occlusion_map``, ``explain.overlay``, …).
They are imported on first use, so ``import explain`` (and the CLI's start-up) does not pay for
captum, openTSNE or jinja2 until a method that needs them is called. The dataset audit lives in
its own package: ``from explain.audit import audit``.
"""

from __future__ import annotations

from importlib import import_module

# a function named like its module must be bound here, before anything imports that module and
# the import system sets the package attribute to the module itself
from explain.faithfulness import faithfulness as faithfulness

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
    "similarity_grid": "explain.grid",
    "SimilarityGrid": "explain.grid",
    "GridQuality": "explain.grid",
    "draw_mosaic": "explain.grid",
    "read_grid_json": "explain.grid",
    "ExplainError": "explain.errors",
    "load_image": "explain.images",
}

__all__ = sorted([*_EXPORTS, "faithfulness"])


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'explain' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
