"""The `explain` command line: thin typer commands over the library."""

from __future__ import annotations

import typer

from explain.cli import grid, score

app = typer.Typer(
    name="explain",
    help="Why does an image classifier score an image the way it does?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("score")(score.score)
app.command("models")(score.models)
app.command("grid")(grid.grid)


def main() -> None:
    app()
