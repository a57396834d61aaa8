"""The `explain` command line: thin typer commands over the library."""

from __future__ import annotations

from typing import Annotated

import typer

from explain.cli import audit, blackbox, grid, report, score, serve, whitebox

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
