"""`explain score` and `explain models`."""

from __future__ import annotations

import json

import typer
from rich.markup import escape
from rich.table import Table

from explain.choices import BLACK_BOX_MODEL, DEFAULT_MAX_FRAMES
from explain.cli.common import (
    EXIT_BAD_INPUT,
    FramesOpt,
    Images,
    MaxFramesOpt,
    ModelOptions,
    TargetOpt,
    console,
    error_line,
    file_error,
    gather_images,
    note_line,
    user_errors,
    with_model_options,
)
from explain.errors import ExplainError
from explain.files import display, to_storable
from explain.models.specs import BUILTIN_MODELS, BUNDLED, SPEC_FORMS


@user_errors
@with_model_options(BLACK_BOX_MODEL)
def score(images: Images, models: ModelOptions, target: TargetOpt = None,
          as_json: bool = typer.Option(False, "--json", help="JSON output."),
          jpeg_reencode: bool = typer.Option(False, "--jpeg-reencode",
                                             help="open-nsfw: reference JPEG round trip."),
          frames: FramesOpt = "auto", max_frames: MaxFramesOpt = DEFAULT_MAX_FRAMES) -> None:
    """Print each image's class probabilities (a table on a terminal; tab-separated lines,
    header first, when piped; JSON with --json).

    A clip (animated GIF/WebP/PNG, video) is scored on every sampled frame (--frames) and
    answers with its MAX frame for the target (default nsfw, else the last class): the class
    probabilities of that frame, and in the "clip" column the frame's index and time and the
    mean over frames; --json adds every sampled frame's scores.
    """
    from explain.frames import is_clip, parse_sampling
    from explain.images import load_image, to_tensor
    from explain.models import resolve_target
    from explain.models.base import model_name
    from explain.perturbation import probabilities

    sampling = parse_sampling(frames)
    clf = models.load(jpeg_reencode=jpeg_reencode)
    names = list(clf.class_names)
    title = model_name(clf, str(models.model))
    if target is not None:
        title += f" — target {names[resolve_target(clf, target)]}"
    clip_target = target if target is not None else (
        "nsfw" if "nsfw" in names else len(names) - 1)
    paths, failed = gather_images(images, clips=True)
    rows = []
    for path in paths:
        try:
            if is_clip(path):
                rows.append(_score_clip(clf, path, clip_target, sampling, max_frames))
                continue
            probs = probabilities(clf, to_tensor(load_image(path), clf.device))[0].tolist()
        except ExplainError as exc:
            error_line(file_error(path, exc))
            rows.append({"path": to_storable(path), "error": str(exc)})
            failed += 1
            continue
        rows.append({"path": to_storable(path), "shown": display(path),
                     "scores": dict(zip(names, probs, strict=True))})
    scored = [row for row in rows if "scores" in row]
    clips = any("clip" in row for row in scored)
    if as_json:
        typer.echo(json.dumps([{k: v for k, v in row.items() if k != "shown"} for row in rows],
                              indent=2))
    elif scored and console.is_terminal:
        table = Table(title=escape(title))
        table.add_column("image", overflow="fold")
        for name in names:
            table.add_column(escape(name), justify="right", no_wrap=True)
        if clips:
            table.add_column("clip: max frame, mean")
        for row in scored:
            table.add_row(escape(row["shown"]), *(f"{row['scores'][n]:.4f}" for n in names),
                          *([escape(_clip_cell(row))] if clips else []))
        console.print(table)
    elif scored:
        typer.echo(f"# {display(title)}")
        typer.echo("\t".join(["image", *map(display, names), *(["clip"] if clips else [])]))
        for row in scored:
            typer.echo("\t".join([row["shown"], *(f"{row['scores'][n]:.4f}" for n in names),
                                  *([_clip_cell(row)] if clips else [])]))
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


def _score_clip(clf, path, target, sampling, max_frames: int) -> dict:  # noqa: ANN001
    """A clip's row: its max frame's class probabilities, the clip summary, every frame."""
    from explain.clips import score_clip
    from explain.frames import read_clip

    clip = read_clip(path, sampling, max_frames=max_frames)
    for note in clip.notes:
        note_line(f"{path}: {note}")
    result = score_clip(clf, clip, target)
    summary = result.summary()
    return {"path": to_storable(path), "shown": display(path), "scores": summary.pop("scores"),
            "clip": {**summary, "sampling": clip.sampling, "source_frames": clip.source_frames,
                     "seconds": round(clip.seconds, 6), "notes": clip.notes},
            "frames": result.frames()}


def _clip_cell(row: dict) -> str:
    """The clip column: where the max is and the mean (empty for a still image)."""
    c = row.get("clip")
    if c is None:
        return ""
    return (f"max {c['target']} at frame {c['max_frame']} ({c['max_time']:.2f} s), mean "
            f"{c['mean']:.4f}, {c['frames_scored']} of {c['source_frames']} frames scored")


def models() -> None:
    """List the built-in models (whether their weights' package is installed, the licence, the
    install command) and the model spec forms accepted by --model."""
    import importlib.metadata

    table = Table(title="built-in models")
    for column in ("spec", "what", "state", "licence", "install"):
        table.add_column(column, overflow="fold")
    for spec, what in BUNDLED.items():
        built_in = BUILTIN_MODELS[spec.partition(":")[0]]
        try:
            state = (f"installed ({built_in.package} "
                     f"{importlib.metadata.version(built_in.package)})")
        except importlib.metadata.PackageNotFoundError:
            state = "not installed"
        table.add_row(*(escape(text) for text in (spec, what, state, built_in.licence,
                                                  built_in.install)))
    console.print(table)
    table = Table(title="--model accepts")
    table.add_column("spec")
    table.add_column("what")
    for spec, what in SPEC_FORMS.items():
        table.add_row(escape(spec), escape(what))
    console.print(table)
