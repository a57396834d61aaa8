"""The method registry: every explanation method, its options and how it runs, declared once in
:data:`METHODS`; the CLI's method options, the report's, and the service's form and its
validation are generated from it.

A :class:`Method` is its name (the key everywhere: ``--methods``, JSON, output files), its title
(what people read), whether it needs a white-box torch model, its options (:class:`Option`:
name, type, default, help, the check of a value), its ``compute`` function
``compute(models, image, target=…, batch_size=…, progress=…, **arguments) -> Heatmap`` (the
method's library function, imported when called), and whether a report runs it when no
methods are named (``by_default``; RISE is left out: it scores thousands of masked images,
minutes per image on a CPU). ``Method.run(models, image, o, progress=None)`` runs it with
:class:`RunOptions` ``o`` (the target, the batch size, its options' values by name; an absent
one takes its declared default): ``progress(done, total)`` after each batch of a
black-box method; a white-box method on one image is one batch, so it reports nothing; a caller
stops a run by raising from it, as the service's DELETE does.

An option's ``check(value, label, checked)`` turns a given value (a command-line or form text,
or a library value) into the value the library takes, or raises an :class:`OptionError` naming
``label`` (``--box`` on the command line, ``box`` in a form); ``checked`` holds the options
declared before it, already checked (the stride is refused when larger than the box, the
drill-down fraction follows ``fast``). Every check of a method option lives here.

The table is explicit (no registration by import side effects), and this module imports no
method: each check and compute function imports its implementation when it is called, so
reading the names, titles and options (the CLI's help and checks) loads neither torch, numpy,
captum nor jinja2.

Adding a method: its module (the library function and its maths), its options and one compute
function here, one line in :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol

from explain.choices import (
    DEFAULT_CELL,
    DEFAULT_FILL,
    DEFAULT_MASKS,
    DEFAULT_P,
    FAST_DRILL_DOWN,
    OCCLUSION_FILLS,
    check_occlusion_fill,
)
from explain.errors import OptionError

if TYPE_CHECKING:
    import numpy as np

    from explain.heatmap import Heatmap
    from explain.models import Classifier
    from explain.progress import Progress


@dataclass
class Models:
    """The classifiers a run uses: ``black`` for black-box methods (and scores), ``white`` (a torch
    model, or None when no white-box method runs) for white-box ones."""

    black: Classifier
    white: object | None


Check = Callable[[object, str, Mapping[str, object]], object]


@dataclass(frozen=True)
class Option:
    """One option of a method, declared once (see the module docstring). ``kind``: the type of
    its given value (str, int, float, bool; ``optional``: None is a value, "not given");
    ``flag``: its command-line name (default ``--name``), ``aliases`` its short ones;
    ``low``/``high``: the range a given number must lie in (typer's ``min``/``max``, the
    form's ``ge``/``le``); ``choices``: the
    values a text may take (typer lists them; the form refuses others); ``argument``: passed to
    the method's library function under ``name`` (False: folded into another option's value);
    ``report``/``service``: taken by ``explain report`` / the service's form."""

    name: str
    kind: type
    default: object
    help: str
    title: str
    check: Check | None = None
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    optional: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    show_default: bool = True
    argument: bool = True
    report: bool = True
    service: bool = True

    @property
    def cli_flag(self) -> str:
        return self.flag or f"--{self.name.replace('_', '-')}"

    def checked(self, value: object, label: str, checked: Mapping[str, object]) -> object:
        """``value`` as the library takes it (see the module docstring)."""
        return value if self.check is None else self.check(value, label, checked)


def _size(value: object, label: str, checked: Mapping[str, object]) -> object:
    """A box or stride: text (``"64"``, ``"25%"``, ``"64,25%"``) or a size, checked."""
    from explain.windows import as_pair, parse_size

    if isinstance(value, str):
        return parse_size(value, label)
    as_pair(value, label)  # type: ignore[arg-type]
    return value


def _stride(value: object, label: str, checked: Mapping[str, object]) -> object:
    """A stride, checked, and refused when larger than the (checked) box."""
    from explain.windows import check_windows

    stride = _size(value, label, checked)
    check_windows(checked["box"], stride)  # type: ignore[arg-type]
    return stride


def _fill(value: object, label: str, checked: Mapping[str, object]) -> str:
    return check_occlusion_fill(value)  # type: ignore[arg-type]


def _drill_down(value: object, label: str, checked: Mapping[str, object]) -> float | None:
    """The drill-down fraction: ``value`` when given, else :data:`FAST_DRILL_DOWN` with
    ``fast``, else None (the exact map); checked."""
    from explain.drill_down import check_drill_down

    return check_drill_down(value if value is not None  # type: ignore[arg-type]
                            else FAST_DRILL_DOWN if checked.get("fast") else None)


def _rise(name: str) -> Check:
    """The check of RISE's option ``name`` (:func:`explain.rise.check_rise` on that value)."""
    def check(value: object, label: str, checked: Mapping[str, object]) -> object:
        from explain.rise import check_rise

        given = {"masks": DEFAULT_MASKS, "cell": DEFAULT_CELL, "p": DEFAULT_P, "seed": 0}
        check_rise(**{**given, name: value})  # type: ignore[arg-type]
        return value
    return check


BOX = Option("box", str, "25%", "Window side: N pixels or P% of the image's shorter side; N or "
             "H,W.", "Box", _size)
STRIDE = Option("stride", str, "18.75%", "Window step: N pixels or P% of the image's shorter "
                "side; N or H,W (at most the box).", "Stride", _stride)
FILL = Option("fill", str, DEFAULT_FILL, "Occluder; auto = of the others, the one the model "
              "scores lowest for the target on the whole image (the map records its choice and "
              "every fill's score).", "Fill", _fill, choices=OCCLUSION_FILLS, report=False)
FAST = Option("fast", bool, False, "Occlusion: adaptive drill-down with the tuned fraction "
              f"{FAST_DRILL_DOWN:g} (see --drill-down).", "Fast", argument=False)
DRILL_DOWN = Option(
    "drill_down", float, None, "Occlusion: a coarse pass, then fine windows only in the "
    "fraction R (0 < R ≤ 1) of cells where the map varies or matters most, level by level; the "
    "rest interpolated, exact where refined; 1 = the exact map. Overrides --fast.", "Drill-down",
    _drill_down, metavar="R", optional=True, show_default=False, service=False)
MASKS = Option("masks", int, DEFAULT_MASKS, "RISE: random masks scored per image (more: less "
               "sampling noise, proportionally slower).", "Masks", _rise("masks"), low=1)
CELL = Option("cell", int, DEFAULT_CELL, "RISE: each mask is a CELL×CELL grid of random cells, "
              "smoothly up-sampled to the image.", "Cell", _rise("cell"), low=1, report=False,
              service=False)
KEEP = Option("p", float, DEFAULT_P, "RISE: probability that a cell is kept (the rest of the "
              "image goes black).", "Keep", _rise("p"), low=0.0, high=1.0, report=False,
              service=False)
def _neuron(value: object, label: str, checked: Mapping[str, object]) -> object:
    from explain.backprop import parse_neuron

    parse_neuron(value)  # type: ignore[arg-type]
    return value


LAYER = Option("layer", str, None, "Reconstruct one activation of this layer (names: `explain "
               "layers`) instead of the target class.", "Layer", aliases=("-l",), optional=True,
               report=False, service=False)
NEURON = Option("neuron", str, "max", "With --layer: 'max' (each image's strongest activation) "
                "or C,Y,X.", "Neuron", _neuron, report=False, service=False)
CAM_LAYER = Option("layer", str, None, "Convolutional layer (default: the model's "
                   "default_cam_layer, stages.3 for open-nsfw, else the last top-level module "
                   "holding a Conv2d; names: `explain layers`).", "Layer", aliases=("-l",),
                   optional=True, report=False, service=False)
GUIDED = Option("guided", bool, False, "Guided Grad-CAM: times guided backprop.", "Guided",
                report=False, service=False)
SEED = Option("seed", int, 0, "RISE: random seed; the same seed gives the same masks and map.",
              "Seed", _rise("seed"), low=0, report=False, service=False)


class RunOptions(Protocol):
    """What every method is run with: the target, the batch size, and its options' values by
    name in ``settings`` (an absent one takes its default; other keys are ignored). The report's
    :class:`explain.report.Options` is one, :class:`Run` another."""

    target: str | int
    batch_size: int | None

    @property
    def settings(self) -> Mapping[str, object]: ...


@dataclass(frozen=True)
class Run:
    """:class:`RunOptions` as plain values (the service runs its jobs with one)."""

    target: str | int
    batch_size: int | None = None
    settings: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """One explanation method, as the registry declares it (see the module docstring): its
    name, title, white-box flag and ``run(models, image, o, progress)``, as ever; a registry
    method gives ``compute`` (its library function) and its ``options``, and ``run`` is then
    :func:`run` over them unless given."""

    name: str
    title: str
    white_box: bool
    run: Callable[..., Heatmap] = field(default=None, repr=False,  # type: ignore[assignment]
                                        compare=False)
    compute: Callable[..., Heatmap] | None = None
    options: tuple[Option, ...] = ()
    by_default: bool = True
    own_run: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.run is None and self.compute is None:
            raise TypeError(f"method {self.name}: give its run or its compute function")
        object.__setattr__(self, "own_run", self.run is not None)
        if self.run is None:
            object.__setattr__(self, "run", partial(run, self))

    def prepared(self, o: RunOptions) -> Runner:
        """The method ready for every image of a job (a report) run with ``o``:
        :func:`prepare` (options checked and window plan made once) for a registry method,
        ``run`` with ``o`` for a method given its own."""
        if self.own_run:  # as it was always called: progress only when there is one
            return lambda models, image, progress=None: (
                self.run(models, image, o) if progress is None
                else self.run(models, image, o, progress))
        return prepare(self, o)

    def check(self, given: Mapping[str, object], labels: Callable[[Option], str] | None = None
              ) -> dict[str, object]:
        """Every option of the method, checked in declaration order: its value in ``given``,
        else its default; ``labels`` names an option in a message (default: its name)."""
        return check_options(self.options, given, labels)

    def arguments(self, checked: Mapping[str, object]) -> dict[str, object]:
        """The keyword arguments of the method's library function, from checked options."""
        return {o.name: checked[o.name] for o in self.options if o.argument}


class Runner(Protocol):
    """``runner(models, image, progress=None)``: one method's map of one image, with the run
    options it was prepared with (:meth:`Method.prepared`)."""

    def __call__(self, models: Models, image: np.ndarray, progress: Progress | None = None
                 ) -> Heatmap: ...


@dataclass(frozen=True)
class Prepared:
    """A registry method with its options checked once (``arguments``: its library function's
    keyword arguments, a box and stride turned into their window plan, ``windows``): what a
    job runs on each of its images, so that nothing is checked or planned again per image."""

    method: Method
    target: str | int
    batch_size: int | None
    arguments: Mapping[str, object]

    def __call__(self, models: Models, image: np.ndarray, progress: Progress | None = None
                 ) -> Heatmap:
        assert self.method.compute is not None  # prepare: a registry method
        return self.method.compute(models, image, target=self.target,
                                   batch_size=self.batch_size, progress=progress,
                                   **self.arguments)


def prepare(method: Method, o: RunOptions) -> Prepared:
    """``method`` (a registry one: it has ``compute``) with the run options ``o``: its own
    options checked, and a box and stride made into ONE
    :class:`~explain.windows.WindowPlan` passed to its library function as ``windows``."""
    given = {opt.name: o.settings[opt.name] for opt in method.options
             if opt.name in o.settings}
    arguments = method.arguments(method.check(given))
    if "box" in arguments and "stride" in arguments:
        from explain.windows import WindowPlan

        arguments["windows"] = WindowPlan(arguments.pop("box"), arguments.pop("stride"))
    return Prepared(method, o.target, o.batch_size, arguments)


def run(method: Method, models: Models, image: np.ndarray, o: RunOptions,
        progress: Progress | None = None) -> Heatmap:
    """``method``'s map of ``image`` with the run options ``o`` (its own options checked):
    :func:`prepare` for one image."""
    return prepare(method, o)(models, image, progress)


def check_options(options: Iterable[Option], given: Mapping[str, object],
                  labels: Callable[[Option], str] | None = None) -> dict[str, object]:
    """``options`` checked in order (see :meth:`Method.check`)."""
    checked: dict[str, object] = {}
    for option in options:
        value = given.get(option.name, option.default)
        checked[option.name] = option.checked(value, labels(option) if labels else option.name,
                                              checked)
    return checked


def union(options: Iterable[Option]) -> list[Option]:
    """``options`` without repeats (the same option of several methods), in order."""
    return list({o.name: o for o in options}.values())


def _occlusion(models: Models, image: np.ndarray, **kwargs: object) -> Heatmap:
    from explain.occlusion import occlusion_map

    return occlusion_map(models.black, image, **kwargs)  # type: ignore[arg-type]


def _sliding(models: Models, image: np.ndarray, **kwargs: object) -> Heatmap:
    from explain.sliding import sliding_window_map

    return sliding_window_map(models.black, image, **kwargs)  # type: ignore[arg-type]


def _rise_map(models: Models, image: np.ndarray, **kwargs: object) -> Heatmap:
    from explain.rise import rise_map

    return rise_map(models.black, image, **kwargs)  # type: ignore[arg-type]


def _deconv(models: Models, image: np.ndarray, *, target: str | int, layer: str | None = None,
            neuron: object = "max", **_: object) -> Heatmap:
    from explain.backprop import deconvnet

    return deconvnet(models.white, image, target=target, layer=layer,
                     neuron=neuron).magnitude  # type: ignore[arg-type, union-attr]


def _guided(models: Models, image: np.ndarray, *, target: str | int, layer: str | None = None,
            neuron: object = "max", **_: object) -> Heatmap:
    from explain.backprop import guided_backprop

    return guided_backprop(models.white, image, target=target, layer=layer,
                           neuron=neuron).magnitude  # type: ignore[arg-type, union-attr]


def _gradcam(models: Models, image: np.ndarray, *, target: str | int, layer: str | None = None,
             guided: bool = False, **_: object) -> Heatmap:
    from explain.grad_cam import gradcam

    return gradcam(models.white, image, target=target, layer=layer,
                   guided=guided)  # type: ignore[return-value]


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("occlusion", "Occlusion", False, compute=_occlusion,
           options=(BOX, STRIDE, FILL, FAST, DRILL_DOWN)),
    Method("sliding", "Sliding window", False, compute=_sliding, options=(BOX, STRIDE)),
    Method("rise", "RISE", False, compute=_rise_map, options=(MASKS, CELL, KEEP, SEED),
           by_default=False),
    Method("deconv", "Deconvnet", True, compute=_deconv, options=(LAYER, NEURON)),
    Method("guided", "Guided backprop", True, compute=_guided, options=(LAYER, NEURON)),
    Method("gradcam", "Grad-CAM", True, compute=_gradcam, options=(CAM_LAYER, GUIDED)),
)}
DEFAULT_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.by_default)
REPORT_OPTIONS: tuple[Option, ...] = tuple(union(
    o for m in METHODS.values() for o in m.options if o.report))
"""The method options ``explain report`` takes (the same for every method it runs)."""
SERVICE_OPTIONS: tuple[Option, ...] = tuple(union(
    o for m in METHODS.values() for o in m.options if o.service))
"""The method options of the service's form (``POST /v1/visualizations``)."""


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
