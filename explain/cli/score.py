"""`explain score` and `explain models`."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from explain.cli.common import (
    EXIT_BAD_INPUT,
    ClassesOpt,
    DeviceOpt,
    Images,
    InputSizeOpt,
    LogitsOpt,
    MeanOpt,
    ModelOpt,
    StdOpt,
    TargetOpt,
    console,
    error_line,
    load_model,
    user_errors,
)
from explain.errors import ExplainError
from explain.images import load_image, to_tensor
from explain.models import BUNDLED, SPEC_FORMS, resolve_target


@user_errors
def score(images: Images, model: ModelOpt = "open-nsfw:auto", device: DeviceOpt = None,
          target: TargetOpt = None, as_json: bool = typer.Option(False, "--json",
                                                                   help="JSON output."),
          jpeg_reencode: bool = typer.Option(False, "--jpeg-reencode",
                                             help="open-nsfw: reference JPEG round trip."),
          logits: LogitsOpt = False, classes: ClassesOpt = None,
          input_size: InputSizeOpt = None, mean: MeanOpt = None, std: StdOpt = None) -> None:
    """Print each image's class probabilities."""
    clf = load_model(model, device, logits=logits, classes=classes, input_size=input_size,
                     mean=mean, std=std, jpeg_reencode=jpeg_reencode)
    names = list(clf.class_names)
    title = str(getattr(clf, "name", model))
    if target is not None:
        title += f" — target {names[resolve_target(clf, target)]}"
    rows, failed = [], 0
    for path in images:
        try:
            probs = clf.predict(to_tensor(load_image(path), clf.device))[0].tolist()
        except ExplainError as exc:
            error_line(str(exc))
            rows.append({"path": str(path), "error": str(exc)})
            failed += 1
            continue
        rows.append({"path": str(path), "scores": dict(zip(names, probs, strict=True))})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        table = Table(title=escape(title))
        table.add_column("image")
        for name in names:
            table.add_column(escape(name), justify="right")
        for row in rows:
            if "scores" in row:
                table.add_row(escape(row["path"]), *(f"{row['scores'][n]:.4f}" for n in names))
        console.print(table)
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
