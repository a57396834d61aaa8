"""The model a service serves: the classifiers the registry's methods run on, and whether the
white-box methods can run at all.

The default ``open-nsfw`` is served as the report serves it
(:func:`explain.methods.resolve_models`): black-box methods on the fastest backend
(``open-nsfw:auto``), white-box ones on the torch port. Any other model serves every method it
can; when it is no torch module (ONNX, a function, an endpoint) the white-box methods are
refused with the reason (:func:`explain.whitebox.white_box`), a 422 when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from explain.errors import WhiteBoxError
from explain.methods import METHODS, Models, resolve_models
from explain.whitebox import white_box


@dataclass(frozen=True)
class Served:
    """``name``: the model as the user gave it; ``models``: the classifiers; ``white_error``:
    why white-box methods cannot run (None when they can)."""

    name: str
    models: Models
    white_error: str | None = None


def serve_models(model: object, name: str, device: str | None = None) -> Served:
    """Load ``model`` (a spec or a loaded classifier, see :func:`explain.models.load`) for every
    registered method; ``name`` is how the API names it."""
    models = resolve_models(model, device, list(METHODS))
    try:
        white_box(models.white)
    except WhiteBoxError as exc:
        return Served(name, Models(models.black, None), str(exc))
    return Served(name, models)
