"""The method registry: every explanation method the report (and any other caller that runs
"all methods") knows, declared once in :data:`METHODS`.

A :class:`Method` is its name (the key everywhere: ``--methods``, JSON, output files), its title
(what people read), whether it needs a white-box torch model, its run function
``run(models, image, options, progress=None) -> Heatmap``, which adapts the shared run options to
the method's own library function (``progress(done, total)`` after each batch of a black-box
method; a white-box method on one image is one batch, so it reports nothing; a caller stops a
run by raising from it, as the service's DELETE does), and whether a report runs it when no
methods are named (``by_default``; RISE is left out: it scores thousands of masked images,
minutes per image on a CPU).

The table is explicit (no registration by import side effects), and this module imports no
method: each run function imports its implementation when it is called, so reading the names
and titles (the CLI's ``--methods`` help and check) loads neither torch, numpy, captum nor
jinja2.

Adding a method: its module (the library function and its maths), one run function here, one
line in :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from explain.errors import OptionError

if TYPE_CHECKING:
    import numpy as np

    from explain.heatmap import Heatmap
    from explain.models import Classifier
    from explain.progress import Progress
    from explain.windows import Size


@dataclass
class Models:
    """The classifiers a run uses: ``black`` for black-box methods (and scores), ``white`` (a torch
    model, or None when no white-box method runs) for white-box ones."""

    black: Classifier
    white: object | None


class RunOptions(Protocol):
    """What every method is run with (the report's :class:`explain.report.Options` is one)."""

    box: Size
    stride: Size
    target: str | int
    batch_size: int | None
    masks: int
    drill_down: float | None


@dataclass(frozen=True)
class Method:
    """One explanation method, as the registry declares it (see the module docstring)."""

    name: str
    title: str
    white_box: bool
    run: Callable[..., Heatmap]
    by_default: bool = True


def _occlusion(models: Models, image: np.ndarray, o: RunOptions,
               progress: Progress | None = None) -> Heatmap:
    from explain.occlusion import occlusion_map

    return occlusion_map(models.black, image, box=o.box, stride=o.stride, target=o.target,
                         batch_size=o.batch_size, drill_down=o.drill_down, progress=progress)


def _sliding(models: Models, image: np.ndarray, o: RunOptions,
             progress: Progress | None = None) -> Heatmap:
    from explain.sliding import sliding_window_map

    return sliding_window_map(models.black, image, box=o.box, stride=o.stride, target=o.target,
                              batch_size=o.batch_size, progress=progress)


def _rise(models: Models, image: np.ndarray, o: RunOptions,
          progress: Progress | None = None) -> Heatmap:
    from explain.rise import rise_map

    return rise_map(models.black, image, masks=o.masks, target=o.target,
                    batch_size=o.batch_size, progress=progress)


def _deconv(models: Models, image: np.ndarray, o: RunOptions,
            progress: Progress | None = None) -> Heatmap:
    from explain.backprop import deconvnet

    return deconvnet(models.white, image, target=o.target).magnitude


def _guided(models: Models, image: np.ndarray, o: RunOptions,
            progress: Progress | None = None) -> Heatmap:
    from explain.backprop import guided_backprop

    return guided_backprop(models.white, image, target=o.target).magnitude


def _gradcam(models: Models, image: np.ndarray, o: RunOptions,
             progress: Progress | None = None) -> Heatmap:
    from explain.grad_cam import gradcam

    return gradcam(models.white, image, target=o.target)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("occlusion", "Occlusion", False, _occlusion),
    Method("sliding", "Sliding window", False, _sliding),
    Method("rise", "RISE", False, _rise, by_default=False),
    Method("deconv", "Deconvnet", True, _deconv),
    Method("guided", "Guided backprop", True, _guided),
    Method("gradcam", "Grad-CAM", True, _gradcam),
)}
DEFAULT_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.by_default)


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
    """The classifiers that ``methods`` run on (:func:`explain.models.load_pair`): the default
    open_nsfw on its fastest backend for black-box methods and on torch for white-box ones (loaded
    only when one of ``methods`` is white-box); any other model, the same one for both."""
    from explain.models import load_pair

    black, white = load_pair(model, device, white=any(METHODS[m].white_box for m in methods))
    return Models(black, white)
