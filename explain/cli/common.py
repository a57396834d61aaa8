"""What every command shares: option aliases declared once, model loading, error reporting."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from explain.errors import ExplainError, OptionError

console = Console()
err_console = Console(stderr=True)

EXIT_BAD_INPUT = 2

F = TypeVar("F", bound=Callable[..., object])

Images = Annotated[list[Path], typer.Argument(help="Image files (several allowed).",
                                              show_default=False)]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model spec; see `explain models`.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N (default "
                                                                "auto: cuda when available).")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Target class, name or index.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", "-b", min=1,
                                              help="Images per model call.")]
OutDirOpt = Annotated[Path, typer.Option("--output", "-o", help="Output folder.")]
LogitsOpt = Annotated[bool, typer.Option("--logits", help="The model returns logits: apply a "
                                                           "softmax.")]
ClassesOpt = Annotated[str | None, typer.Option("--classes", help="Class names, comma-separated "
                                                                  "(sfw,nsfw).")]
InputSizeOpt = Annotated[int | None, typer.Option("--input-size", help="Torch/ONNX file models: "
                                                  "square input size to resize to.")]
MeanOpt = Annotated[str | None, typer.Option("--mean", help="Torch/ONNX file models: per-channel "
                                             "mean on [0,1] scale, e.g. 0.485,0.456,0.406.")]
StdOpt = Annotated[str | None, typer.Option("--std", help="Torch/ONNX file models: per-channel "
                                            "std, e.g. 0.229,0.224,0.225.")]
ColormapOpt = Annotated[str | None, typer.Option(
    "--colormap", help="bwr, jet, viridis, … (OpenCV or matplotlib name); default bwr (diverging, "
    "white = 0) for signed maps, jet otherwise.", show_default=False)]
AlphaOpt = Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Heatmap opacity.")]
BoxOpt = Annotated[str, typer.Option("--box", help="Window side: N pixels or P% of the image's "
                                     "shorter side; N or H,W.")]
StrideOpt = Annotated[str, typer.Option("--stride", help="Window step: N pixels or P% of the "
                                        "image's shorter side; N or H,W (at most the box).")]
FillOpt = Annotated[str, typer.Option("--fill", help="Occluder: gray, black, mean or blur.")]
SaveNpyOpt = Annotated[bool, typer.Option("--save-npy", help="Also write the raw map as "
                                          "NAME.METHOD.npy + .json.")]
SideBySideOpt = Annotated[bool, typer.Option("--side-by-side", help="Also write "
                                             "NAME.METHOD.side.png: original | heatmap | overlay "
                                             "with a colour bar.")]


def int_pair(text: str, option: str) -> int | float | tuple[int | float, int | float]:
    """--box / --stride text: ``"64"`` → 64, ``"25%"`` → 0.25, ``"64,25%"`` → (64, 0.25); see
    :func:`explain.windows.parse_size`."""
    from explain.windows import parse_size

    return parse_size(text, option)


def error_line(message: str) -> None:
    """One red line on stderr."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


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


def load_model(model: str, device: str | None = None, *, logits: bool = False,
               classes: str | None = None, input_size: int | None = None,
               mean: str | None = None, std: str | None = None,
               jpeg_reencode: bool = False):  # noqa: ANN201
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
                jpeg_reencode=jpeg_reencode)


# Drawing: every command that writes a picture takes these (explain.render); the defaults come
# from the map (0..1 for a probability, ±max|value| on bwr for a signed map, else min..max).
NormalizeOpt = Annotated[str | None, typer.Option(
    "--normalize", help="minmax, percentile or fixed (with --vmin and --vmax); default: the "
    "map's own scale.", show_default=False)]
VminOpt = Annotated[float | None, typer.Option(
    "--vmin", help="Value at the low end of the colours (several images on one scale).")]
VmaxOpt = Annotated[float | None, typer.Option(
    "--vmax", help="Value at the high end of the colours.")]
NoLegendOpt = Annotated[bool, typer.Option(
    "--no-legend", help="Pictures without the legend strip (colour bar, unit, score) below.")]
