"""`explain grid`: a folder of images on a visual-similarity grid (mosaic PNG, grid.json, and
grid.html over a tiled pyramid)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from explain.choices import (
    BLACK_BOX_MODEL,
    COLOR_BY,
    COSTS,
    EMBED_MODES,
    GRID_PERPLEXITY,
    LAYOUTS,
)
from explain.cli.common import (
    EXIT_BAD_INPUT,
    BatchOpt,
    ModelOptions,
    TargetOpt,
    choice,
    err_console,
    error_line,
    plain,
    result_line,
    user_errors,
    with_model_options,
)
from explain.errors import OptionError
from explain.files import check_output_file, check_outputs, display

ColorBy = choice("ColorBy", COLOR_BY)
Cost = choice("Cost", COSTS)
Layout = choice("Layout", LAYOUTS)

Folder = Annotated[Path, typer.Argument(help="Folder of images; sub-folders are labels "
                                        "(DIR/label/img.jpg).", metavar="DIR",
                                        show_default=False)]


@user_errors
@with_model_options(BLACK_BOX_MODEL)
def grid(
    folder: Folder,
    models: ModelOptions,
    output: Annotated[Path, typer.Option("--output", "-o", help="Mosaic PNG (written when it "
                                         "fits 8192 px a side); grid.json, grid.html and the "
                                         "tiles folder grid_tiles/ are written next to it.")
                      ] = Path("grid.png"),
    size: Annotated[int | None, typer.Option("--size", "-s", min=1, help="Fix a SIZE x SIZE "
                    "grid (images beyond SIZE² are sampled). Default: the smallest near-square "
                    "grid holding all images.")] = None,
    embed: Annotated[str, typer.Option("--embed", help=f"{', '.join(EMBED_MODES)} or "
                     "package.module:fn (uint8 NxHxWx3 -> NxD); features: the model's "
                     "penultimate layer (its probabilities for a black box).")] = "features",
    scores: Annotated[bool | None, typer.Option("--scores/--no-scores", help="Score every "
                      "image for --target (colours, grid.json). Default: on when the embedder "
                      "is the model (--embed features: the same forward pass), off for pixels "
                      "or a function (the model is then not loaded).",
                      show_default=False)] = None,
    color_by: Annotated[ColorBy | None, typer.Option("--color-by", help="Thumbnail border: "
                        "score (needs scores), label (sub-folder) or none. Default: score with "
                        "scores, else label with sub-folders, else none.", show_default=False,
                        callback=plain)] = None,
    layout: Annotated[Layout, typer.Option("--layout", help="auto: the layouts that fit the "
                      "size, keeping the best by DPQ16; tsne-jv: t-SNE + dense assignment "
                      "(<= 4096 images); tsne-jv+polish: then improved locally; flas: Fast "
                      "Linear Assignment Sorting; tsne-snap: t-SNE + windowed assignment (any N).",
                      callback=plain)] = Layout.auto,
    perplexity: Annotated[float, typer.Option("--perplexity", min=0.1, help="t-SNE perplexity "
                          "(clipped to (N-1)/3 for small N).")] = GRID_PERPLEXITY,
    seed: Annotated[int, typer.Option("--seed", help="Seed of t-SNE, sampling and the random "
                    "baseline.")] = 0,
    cost: Annotated[Cost, typer.Option("--cost", help="Assignment cost: squared or plain "
                    "distance point to cell.", callback=plain)] = Cost.sqeuclidean,
    k: Annotated[int, typer.Option("--k", min=1, help="Neighbours per image in the quality "
                 "metric.")] = 8,
    cell_px: Annotated[int, typer.Option("--cell-px", min=8, help="Thumbnail side in "
                       "pixels.")] = 64,
    target: TargetOpt = "nsfw",
    batch_size: BatchOpt = None,
) -> None:
    """Lay a folder of images out on a grid so that similar images sit together."""
    from explain.grid import (
        check_grid_memory,
        fits_png,
        folder_labels,
        similarity_grid,
        tiles_folder,
        write_grid,
    )
    from explain.images import iter_image_files

    if not folder.is_dir():
        raise OptionError(f"{display(folder)} is not a folder; give a folder of images")
    paths = list(iter_image_files([folder]))
    if not paths:
        raise OptionError(f"no image files in {display(folder)}")
    labels = folder_labels(folder, paths)
    if scores is None:
        scores = embed == "features"
    if color_by is None:
        color_by = "score" if scores else "label" if labels is not None else "none"
    if color_by == "score" and not scores:
        raise OptionError("--color-by score needs scores: add --scores (one more model pass "
                          f"per image with --embed {embed}), or colour by label or none")
    if color_by == "label" and labels is None:
        raise OptionError(f"--color-by label needs sub-folders: {display(folder)}/LABEL/image.jpg")
    json_path, page = output.with_suffix(".json"), output.with_suffix(".html")
    tiles = tiles_folder(page)
    check_output_file(output, inputs=paths)
    check_outputs([output, json_path, page], paths, folders=[tiles])
    check_grid_memory(len(paths), size, cell_px, layout)  # before the model loads
    clf = models.load() if embed == "features" or scores else None
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err_console) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(done: int, total: int, stage: str) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        result = similarity_grid(
            paths, clf, embed=embed, labels=labels,
            target=target if scores else None, size=size, layout=layout,
            perplexity=perplexity,
            seed=seed, cost=cost, k=k, thumb_px=cell_px, batch_size=batch_size or 32,
            progress=progress)
    for path, reason in result.skipped:
        error_line(f"{path}: {reason} (skipped)")
    written = write_grid(result, output, color_by=color_by)
    times = ", ".join(f"{stage} {s:.1f} s" for stage, s in result.seconds.items())
    lines = [f"embedding: {display(result.embed)}",
             *(f"note: {display(note)}" for note in result.notes),
             f"layout: {result.layout}",
             f"quality: {result.quality.summary()}",
             f"{len(result.names)} images on {result.shape[0]}x{result.shape[1]} ({times}); "
             f"wrote {', '.join(display(p) for p in written)} (+ {display(tiles.name)}/)"]
    if not fits_png(result, cell_px):
        lines.append(f"no PNG: {result.shape[1] * cell_px}x{result.shape[0] * cell_px} px is "
                     f"over 8192 px a side; open {display(page)}")
    if result.skipped:
        lines.append(f"{len(result.skipped)} unreadable image(s) skipped")
    for line in lines:
        result_line(line)
    if result.skipped:
        raise typer.Exit(EXIT_BAD_INPUT)
