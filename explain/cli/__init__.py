"""The `explain` command line: thin typer commands over the library."""

from __future__ import annotations

import os
from typing import Annotated

import typer

# OpenCV and the FFmpeg inside it print their own lines ("[mpeg4 @ 0x…] Error at MB", "[ WARN:0]
# global cap.cpp …") beside ours for every damaged video; the CLI reports each file's failure in
# one line of its own, so they stay quiet unless the user sets these variables. Set before any
# command imports cv2: OpenCV reads them when its logging and its FFmpeg backend start.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

from explain.cli import (
    audit,
    blackbox,
    compare,
    counterexamples,
    grid,
    report,
    score,
    serve,
    whitebox,
)

app = typer.Typer(
    name="explain",
    help="Why does an image classifier score an image the way it does?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("score")(score.score)
app.command("models")(score.models)
app.command("occlude")(blackbox.occlude)
app.command("slide")(blackbox.slide)
app.command("rise")(blackbox.rise)
app.command("deconv")(whitebox.deconv)
app.command("guided")(whitebox.guided)
app.command("gradcam")(whitebox.gradcam)
app.command("layers")(whitebox.layers_command)
app.command("grid")(grid.grid)
app.command("report")(report.report)
app.command("audit")(audit.audit)
app.command("compare")(compare.compare)
app.command("counterexamples")(counterexamples.counterexamples)
app.command("serve")(serve.serve)


def _print_version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import version as installed_version

        typer.echo(f"explain {installed_version('explain')}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", help="Print the installed version and exit.", is_eager=True,
        callback=_print_version)] = False) -> None:
    """The options of `explain` itself, before the command."""


def main() -> None:
    app()
