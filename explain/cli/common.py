"""What every command shares: option aliases declared once, model loading, error reporting.

The command modules import every library module that loads torch, numpy, OpenCV, PIL, captum,
jinja2 or openTSNE inside their commands, never at module level, so that `explain --help` and
`explain models` answer at once; the choices the options list come from the import-free
:mod:`explain.choices`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import Annotated, NamedTuple, TypeVar, get_type_hints

import typer
from rich.console import Console
from rich.markup import escape

from explain.choices import CHANNEL_ORDERS, DEFAULT_PRECISION, FILLS, NORMALIZE_MODES, PRECISIONS
from explain.errors import ExplainError, OptionError
from explain.files import check_output_dir, check_outputs, display, output_names
from explain.methods import Option, check_options

console = Console()
err_console = Console(stderr=True)

EXIT_BAD_INPUT = 2

F = TypeVar("F", bound=Callable[..., object])


def choice(name: str, values: Sequence[str]) -> type[Enum]:
    """An Enum of the library's ``values`` for an option: typer lists them in ``--help`` and
    refuses any other value with its own message (exit code 2). Declare the option with
    ``callback=plain``."""
    return Enum(name, {value: value for value in values}, type=str)


def plain(chosen: Enum | None) -> str | None:
    """Option callback: the command receives the chosen value as the plain string the library
    takes (None stays None)."""
    return None if chosen is None else chosen.value


Fill = choice("Fill", FILLS)
Normalize = choice("Normalize", NORMALIZE_MODES)
Channels = choice("Channels", CHANNEL_ORDERS)
Precision = choice("Precision", PRECISIONS)

Images = Annotated[list[Path], typer.Argument(help="Image files (several allowed).",
                                              show_default=False)]
# a list even where one model is taken, so that a repeated --model is refused, not the last kept
ModelOpt = Annotated[list[str], typer.Option("--model", "-m", metavar="<str>",
                                             help="Model spec; see `explain models`.")]
ModelsOpt = Annotated[list[str], typer.Option(
    "--model", "-m", help="Model spec; see `explain models`. Repeat it to explain each image "
    "with several models (occlude, slide: one picture, a row per model, on one colour scale; "
    "report: a column per model).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N (default "
                                                                "auto: cuda when available).")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Target class, name or index.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", "-b", min=1,
                                              help="Images per model call.")]
OutDirOpt = Annotated[Path, typer.Option("--output", "-o", help="Output folder.")]
SynthesizeOpt = Annotated[int, typer.Option("--synthesize", min=0, help="Also write this many "
                                            "synthetic counter-examples per cue: its patches "
                                            "pasted into the run's true negatives.")]
ImageOutDirOpt = Annotated[Path, typer.Option(
    "--output", "-o", help="Output folder. Files are NAME.METHOD…, NAME the image's stem; inputs "
    "sharing a stem get their file name (photo.jpg), then their path below their common folder "
    "(sfw__photo.jpg), then ~2, ~3.")]
LogitsOpt = Annotated[bool, typer.Option("--logits", help="The model returns logits of "
                                         "exclusive classes: a softmax (one column: a sigmoid, "
                                         "read as two classes).")]
SigmoidOpt = Annotated[bool, typer.Option("--sigmoid", help="The model returns independent "
                                          "(multi-label) logits: a sigmoid per column, no "
                                          "softmax.")]
ClassesOpt = Annotated[str | None, typer.Option("--classes", help="Class names, comma-separated "
                                                "(sfw,nsfw); a one-column model: NEG,POS, or POS "
                                                "alone for not-POS,POS.")]
InputSizeOpt = Annotated[int | None, typer.Option("--input-size", help="Square input size the "
                                                  "model resizes every image to (any model).")]
MeanOpt = Annotated[str | None, typer.Option("--mean", help="Torch/ONNX file models: per-channel "
                                             "mean on the --scale, in the --channels order, "
                                             "e.g. 0.485,0.456,0.406.")]
ChannelsOpt = Annotated[Channels | None, typer.Option(
    "--channels", help="Torch/ONNX file models: the channel order the model was trained on "
    "(default rgb).", callback=plain, show_default=False)]
ScaleOpt = Annotated[float | None, typer.Option(
    "--scale", help="Torch/ONNX file models: pixel values on 0..SCALE (255 for models trained "
    "on 0-255 input; default 1).", show_default=False)]
PrecisionOpt = Annotated[Precision, typer.Option(
    "--precision", help="Torch models: run every forward pass in bf16 or fp16 (torch.autocast); "
    "each map records the largest |change| of the image's probabilities against fp32 "
    "(precision_delta). Other models take fp32 only.", callback=plain)]
StdOpt = Annotated[str | None, typer.Option("--std", help="Torch/ONNX file models: per-channel "
                                            "std, e.g. 0.229,0.224,0.225.")]
ColormapOpt = Annotated[str | None, typer.Option(
    "--colormap", help="bwr, jet, viridis, … (OpenCV or matplotlib name); default bwr (diverging, "
    "white = 0) for signed maps, jet otherwise.", show_default=False)]
AlphaOpt = Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Heatmap opacity.")]
SaveNpyOpt = Annotated[bool, typer.Option("--save-npy", help="Also write the raw map as "
                                          "NAME.METHOD.npy + .json.")]
SideBySideOpt = Annotated[bool, typer.Option("--side-by-side", help="Also write "
                                             "NAME.METHOD.side.png: original | heatmap | overlay "
                                             "with a colour bar.")]


def error_line(message: str) -> None:
    """One red line on stderr (any file name in it shown safely: no control character reaches
    the terminal)."""
    err_console.print(f"[bold red]error:[/] {escape(display(message))}", highlight=False,
                      soft_wrap=True)


def file_error(path: Path, exc: Exception) -> str:
    """The message of a per-file error, led by the file's path unless it already names it."""
    return str(exc) if str(path) in str(exc) else f"{path}: {exc}"


def note_line(message: str) -> None:
    """One yellow note on stderr: something the user should know about a result (frames
    skipped), not an error."""
    err_console.print(f"[yellow]note:[/] {escape(display(message))}", highlight=False,
                      soft_wrap=True)


def user_errors(fn: F) -> F:
    """Turn library errors into one red line and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except ExplainError as exc:
            error_line(str(exc))
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper  # type: ignore[return-value]


def _floats(text: str | None, what: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise OptionError(f"{what} must be three comma-separated numbers, got {text!r}") from None
    if len(values) != 3:
        raise OptionError(f"{what} must have three values (one per channel), got {text!r}")
    return values  # type: ignore[return-value]


# --- inputs and outputs: gather the images, name and check the outputs before any work ---

class Inputs(NamedTuple):
    paths: list[Path]
    failed: int


def gather_images(items: Sequence[Path], *, clips: bool = False) -> Inputs:
    """The image files of the command line: files as given (a missing or unreadable one is then
    a per-file error), folders searched recursively (with ``clips``, for videos too). A folder
    without images is one red line and counts as a failure; nothing to do at all is an error."""
    from explain.frames import CLIP_SUFFIXES
    from explain.images import IMAGE_SUFFIXES, iter_image_files

    suffixes = CLIP_SUFFIXES if clips else IMAGE_SUFFIXES
    found = [list(iter_image_files([item], suffixes=suffixes)) for item in items]
    if not any(found):
        raise OptionError(f"no image files in {', '.join(display(i) for i in items)}")
    empty = [item for item, files in zip(items, found, strict=True) if not files]
    for item in empty:
        error_line(f"{item}: no image files in this folder")
    return Inputs([p for files in found for p in files], len(empty))


def output_stems(paths: Sequence[Path], folder: Path, method: str, suffixes: Sequence[str],
                 clip_endings: Sequence[str] = ()) -> list[Path]:
    """``folder/NAME.METHOD`` per input (NAME: :func:`explain.files.output_names`), after
    checking, before any work, that ``folder`` is writable and that no ``stem + suffix`` file
    would replace an input or another output. A NAME that would make a file name longer than
    the folder's file system takes (with the longest of ``suffixes``, and of ``clip_endings``
    for an input that may be a clip) is shortened, and a note says so."""
    from explain.files import name_bytes, name_max
    from explain.frames import ANIMATED_SUFFIXES, VIDEO_SUFFIXES

    check_output_dir(folder)
    still = max(name_bytes(f".{method}{suffix}") for suffix in suffixes)
    clip = max([still, *(name_bytes(f".{method}{ending}") for ending in clip_endings)])
    room = [clip if p.suffix.lower() in ANIMATED_SUFFIXES | VIDEO_SUFFIXES else still
            for p in paths]
    limit = name_max(folder)
    names = output_names(paths, room=room, limit=limit)
    for path, name, full in zip(paths, names, output_names(paths), strict=True):
        if name != full and _readable_name(path):  # an unreadable one gets its error later
            note_line(f"{path}: output name shortened to {name}.{method}… (the full name would "
                      f"pass the {limit} bytes this file system takes for one name)")
    stems = [folder / f"{name}.{method}" for name in names]
    check_outputs([f"{stem}{suffix}" for stem in stems for suffix in suffixes], paths)
    return stems


def _readable_name(path: Path) -> bool:
    """Whether the system takes ``path`` as a name (it exists; not too long)."""
    try:
        return path.exists()
    except OSError:
        return False


def result_line(text: str) -> None:
    """One result line on stdout, never wrapped (a pipe gets whole lines); ``text`` holds no
    markup and its file names went through :func:`explain.files.display`."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


# --- method options: generated from their declarations in the registry (explain.methods) ---

def option_parameter(option: Option) -> tuple[object, object]:
    """The typer annotation and default of a method :class:`~explain.methods.Option` (a choice
    is an Enum typer lists, handed to the command as its plain string)."""
    kind: object = option.kind
    default = option.default
    extra: dict[str, object] = {}
    if option.choices:
        kind = choice(option.title.replace(" ", "").replace("-", ""), option.choices)
        default, extra["callback"] = kind(default), plain  # type: ignore[operator]
    if option.optional:
        kind = kind | None  # type: ignore[operator]
    typed = typer.Option(option.cli_flag, *option.aliases, help=option.help, metavar=option.metavar,
                         show_default=option.show_default, min=option.low, max=option.high,
                         **extra)  # type: ignore[arg-type]
    return Annotated[kind, typed], default


def with_method_options(options: Sequence[Option]) -> Callable[[F], F]:
    """Give a command the method ``options`` (their declarations in :mod:`explain.methods`: flag,
    type, default, help, range), in place of its parameter ``settings``, which receives them
    checked (:func:`explain.methods.check_options`, messages naming the flag) as one dict."""

    def decorate(fn: F) -> F:
        hints = get_type_hints(fn, include_extras=True)
        params: list[inspect.Parameter] = []
        for p in inspect.signature(fn).parameters.values():
            if p.name != "settings":
                params.append(p.replace(annotation=hints.get(p.name, p.annotation)))
                continue
            for option in options:
                annotation, default = option_parameter(option)
                params.append(inspect.Parameter(option.name, p.kind, default=default,
                                                annotation=annotation))

        @functools.wraps(fn)
        def command(*args: object, **kwargs: object) -> object:
            given = {o.name: kwargs.pop(o.name) for o in options}
            settings = check_options(options, given, lambda o: o.cli_flag)
            return fn(*args, settings=settings, **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return decorate


# --- model options: declared once, given to every command that loads a model ---

@dataclass(frozen=True)
class ModelOptions:
    """The model options of every command, as :func:`with_model_options` collects them."""

    model: str
    device: str | None = None
    logits: bool = False
    sigmoid: bool = False
    classes: str | None = None
    input_size: int | None = None
    mean: str | None = None
    std: str | None = None
    channels: str | None = None
    scale: float | None = None
    precision: str = DEFAULT_PRECISION
    others: tuple[str, ...] = ()  # further --model specs, for the commands that compare models

    def each(self) -> list[ModelOptions]:
        """One :class:`ModelOptions` per --model given, the other options shared."""
        return [replace(self, model=spec, others=()) for spec in (self.model, *self.others)]

    @property
    def plain(self) -> bool:
        """No option beyond the spec and the device: a bundled spec can be passed on as is."""
        return not (self.logits or self.sigmoid or self.classes or self.input_size or self.mean
                    or self.std or self.channels is not None or self.scale is not None
                    or self.precision != DEFAULT_PRECISION)

    def load(self, *, jpeg_reencode: bool = False):  # noqa: ANN201
        """The classifier (``explain.models.load`` with these options)."""
        return load_model(self.model, self.device, logits=self.logits, sigmoid=self.sigmoid,
                          classes=self.classes, input_size=self.input_size, mean=self.mean,
                          std=self.std, channels=self.channels, scale=self.scale,
                          jpeg_reencode=jpeg_reencode, precision=self.precision)

    def describe(self) -> str:
        """The spec and the options that change the model's answers, as command-line text (the
        audit's run key and the name the service shows)."""
        flags = {"--logits": self.logits, "--sigmoid": self.sigmoid}
        given = {"--classes": self.classes, "--input-size": self.input_size,
                 "--mean": self.mean, "--std": self.std, "--channels": self.channels,
                 "--scale": None if self.scale is None else f"{self.scale:g}",
                 "--precision": None if self.precision == DEFAULT_PRECISION else self.precision}
        return " ".join([self.model, *(flag for flag, on in flags.items() if on),
                         *(f"{flag} {value}" for flag, value in given.items()
                           if value is not None)])


SEVERAL_MODELS: list[str] = []  # the commands that take several --model, as they are declared


def with_model_options(default: str, *, several: bool = False) -> Callable[[F], F]:
    """Give a command the shared model options (``--model`` with ``default``, ``--device``,
    ``--logits``, ``--sigmoid``, ``--classes``, ``--input-size``, ``--mean``, ``--std``,
    ``--channels``, ``--scale``, ``--precision``); the command receives them as one
    :class:`ModelOptions` argument named ``models``. ``several``: ``--model`` may be repeated
    (the first is ``models.model``, the rest ``models.others``); otherwise a repeated
    ``--model`` is an :class:`OptionError` naming the commands that take several."""
    annotations = {"model": ModelsOpt if several else ModelOpt, "device": DeviceOpt,
                   "logits": LogitsOpt, "sigmoid": SigmoidOpt, "classes": ClassesOpt,
                   "input_size": InputSizeOpt, "mean": MeanOpt, "std": StdOpt,
                   "channels": ChannelsOpt, "scale": ScaleOpt, "precision": PrecisionOpt}

    def decorate(fn: F) -> F:
        hints = get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(fn).parameters.values() if p.name != "models"]
        if several:
            SEVERAL_MODELS.append(fn.__name__)
        added = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                   default=[default] if f.name == "model"
                                   else Precision(f.default) if f.name == "precision"
                                   else f.default,
                                   annotation=annotations[f.name])
                 for f in fields(ModelOptions) if f.name in annotations]

        @functools.wraps(fn)
        def command(*args: object, **kwargs: object) -> object:
            chosen = {name: kwargs.pop(name) for name in annotations}
            specs = list(chosen.pop("model") or [default])
            if len(specs) > 1 and not several:
                raise OptionError(
                    f"--model given {len(specs)} times; this command takes one model (the ones "
                    f"that take several: {', '.join(f'explain {n}' for n in SEVERAL_MODELS)})")
            chosen.update(model=specs[0], others=tuple(specs[1:]))
            return fn(*args, models=ModelOptions(**chosen), **kwargs)  # type: ignore[arg-type]

        params = own + added
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return decorate


def load_model(model: str, device: str | None = None, *, logits: bool = False,
               sigmoid: bool = False, classes: str | None = None, input_size: int | None = None,
               mean: str | None = None, std: str | None = None, channels: str | None = None,
               scale: float | None = None, jpeg_reencode: bool = False,
               precision: str = DEFAULT_PRECISION):  # noqa: ANN201
    """``explain.models.load`` with the CLI's options."""
    from explain.models import Preprocess, load

    preprocess = None
    if input_size is not None or mean is not None or std is not None:
        preprocess = Preprocess(
            input_size=(input_size, input_size) if input_size else None,
            mean=_floats(mean, "--mean") or (0.0, 0.0, 0.0),
            std=_floats(std, "--std") or (1.0, 1.0, 1.0),
        )
    names = [c.strip() for c in classes.split(",")] if classes else None
    return load(model, device, preprocess=preprocess, class_names=names, logits=logits,
                sigmoid=sigmoid, channels=channels, scale=scale, jpeg_reencode=jpeg_reencode,
                precision=precision)


# Drawing: every command that writes a picture takes these (explain.render); the defaults come
# from the map (0..1 for a probability, ±max|value| on bwr for a signed map, else min..max).
NormalizeOpt = Annotated[Normalize | None, typer.Option(
    "--normalize", help="Colour scale (fixed: from --vmin to --vmax); default: the map's own "
    "scale.", show_default=False, callback=plain)]
VminOpt = Annotated[float | None, typer.Option(
    "--vmin", help="Value at the low end of the colours (several images on one scale).")]
VmaxOpt = Annotated[float | None, typer.Option(
    "--vmax", help="Value at the high end of the colours.")]
NoLegendOpt = Annotated[bool, typer.Option(
    "--no-legend", help="Pictures without the legend strip (colour bar, unit, score) below.")]

# Clips (animated images, videos): how their frames are sampled and which are explained
FramesOpt = Annotated[str, typer.Option(
    "--frames", help="Clips (animated GIF/WebP/PNG, MP4/WebM/MOV/MKV): all, N (evenly spaced) "
    "or fps:R; auto = every frame, and past --max-frames a difference pass that keeps the "
    "frames most unlike those before them (a one-frame flash) and spreads the rest.")]
MaxFramesOpt = Annotated[int, typer.Option(
    "--max-frames", min=1, help="Clips: at most this many frames are scored (fewer when the "
    "memory budget holds fewer; a note says how they were picked).")]
TopFramesOpt = Annotated[int, typer.Option(
    "--top-frames", min=1, help="Clips: explain the K frames with the highest p(target).")]
AllFramesOpt = Annotated[bool, typer.Option(
    "--all-frames", help="Clips: explain every sampled frame (reusing the previous frame's "
    "work where it did not change).")]
