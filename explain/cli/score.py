"""`explain score` and `explain models`."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from explain.choices import BLACK_BOX_MODEL, BUNDLED, SPEC_FORMS
from explain.cli.common import (
    EXIT_BAD_INPUT,
    Images,
    ModelOptions,
    TargetOpt,
    console,
    error_line,
    gather_images,
    user_errors,
    with_model_options,
)
from explain.errors import ExplainError
from explain.files import display, to_storable


@user_errors
@with_model_options(BLACK_BOX_MODEL)
def score(images: Images, models: ModelOptions, target: TargetOpt = None,
          as_json: bool = typer.Option(False, "--json", help="JSON output."),
          jpeg_reencode: bool = typer.Option(False, "--jpeg-reencode",
                                             help="open-nsfw: reference JPEG round trip.")
          ) -> None:
    """Print each image's class probabilities (a table on a terminal; tab-separated lines,
    header first, when piped; JSON with --json)."""
    from explain.images import load_image, to_tensor
    from explain.models import resolve_target

    clf = models.load(jpeg_reencode=jpeg_reencode)
    names = list(clf.class_names)
    title = str(getattr(clf, "name", models.model))
    if target is not None:
        title += f" — target {names[resolve_target(clf, target)]}"
    paths, failed = gather_images(images)
    rows = []
    for path in paths:
        try:
            probs = clf.predict(to_tensor(load_image(path), clf.device))[0].tolist()
        except ExplainError as exc:
            error_line(str(exc))
            rows.append({"path": to_storable(path), "error": str(exc)})
            failed += 1
            continue
        rows.append({"path": to_storable(path), "shown": display(path),
                     "scores": dict(zip(names, probs, strict=True))})
    scored = [row for row in rows if "scores" in row]
    if as_json:
        typer.echo(json.dumps([{k: v for k, v in row.items() if k != "shown"} for row in rows],
                              indent=2))
    elif scored and console.is_terminal:
        table = Table(title=escape(title))
        table.add_column("image", overflow="fold")
        for name in names:
            table.add_column(escape(name), justify="right", no_wrap=True)
        for row in scored:
            table.add_row(escape(row["shown"]), *(f"{row['scores'][n]:.4f}" for n in names))
        console.print(table)
    elif scored:
        typer.echo(f"# {display(title)}")
        typer.echo("\t".join(["image", *map(display, names)]))
        for row in scored:
            typer.echo("\t".join([row["shown"], *(f"{row['scores'][n]:.4f}" for n in names)]))
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


def models() -> None:
    """List the bundled models and the model spec forms accepted by --model."""
    for title, rows in (("bundled models", BUNDLED), ("--model accepts", SPEC_FORMS)):
        table = Table(title=title)
        table.add_column("spec")
        table.add_column("what")
        for spec, what in rows.items():
            table.add_row(escape(spec), escape(what))
        console.print(table)
