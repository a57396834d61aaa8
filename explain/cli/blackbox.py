"""`explain occlude` and `explain slide`: black-box heatmaps for any classifier.

Per image NAME in the output folder: ``NAME.occlusion.png`` (or ``NAME.sliding.png``), the
overlay at the input's size with the legend strip below it (:func:`explain.render.figure`;
``--no-legend``: the bare overlay); with ``--side-by-side`` also ``NAME.METHOD.side.png``; with
``--save-npy`` also ``NAME.METHOD.npy`` + ``.json``. NAME is the file's stem, made unique within
the call by :func:`explain.files.output_names` (see the README, "Output files"). A map without
signal (below the noise floor) and a box too small at the model's input are said on the image's
line.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from explain.cli.common import (
    EXIT_BAD_INPUT,
    AlphaOpt,
    BatchOpt,
    BoxOpt,
    ColormapOpt,
    Fill,
    FillOpt,
    ImageOutDirOpt,
    Images,
    ModelOptions,
    NoLegendOpt,
    NormalizeOpt,
    SaveNpyOpt,
    SideBySideOpt,
    StrideOpt,
    TargetOpt,
    VmaxOpt,
    VminOpt,
    console,
    error_line,
    gather_images,
    int_pair,
    output_stems,
    result_line,
    user_errors,
    with_model_options,
)
from explain.errors import ExplainError
from explain.files import display

if TYPE_CHECKING:
    from explain.heatmap import Heatmap

DEFAULT_MODEL = "open-nsfw:auto"


def _explain_images(method: str, make_map: Callable[..., Heatmap], images: list[Path], *,
                    box: str, stride: str, target: str, models: ModelOptions,
                    batch_size: int | None, look: dict, output: Path, save_npy: bool,
                    side: bool) -> None:
    """Run ``make_map`` over every image with a progress bar; report bad images and go on.
    ``look``: the drawing options of :func:`explain.render.figure`."""
    from explain.images import load_image
    from explain.models import resolve_target
    from explain.render import check_look, figure, save_png, side_by_side
    from explain.windows import check_windows, small_box_note

    box_px, stride_px = int_pair(box, "--box"), int_pair(stride, "--stride")
    check_windows(box_px, stride_px)
    check_look(look["colormap"], look["normalize"], look["vmin"], look["vmax"])
    paths, failed = gather_images(images)
    suffixes = [".png", *([".side.png"] if side else []), *([".npy", ".json"] if save_npy else [])]
    stems = output_stems(paths, output, method, suffixes)
    clf = models.load()
    resolve_target(clf, target)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("windows"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        for path, stem in zip(paths, stems, strict=True):
            task = bar.add_task(escape(display(path.name)), total=None)
            try:
                img = load_image(path)
                hm = make_map(clf, img, box=box_px, stride=stride_px, target=target,
                              batch_size=batch_size,
                              progress=lambda done, total, t=task: bar.update(
                                  t, completed=done, total=total))
                written = [save_png(f"{stem}.png", figure(img, hm, **look))]
                if side:
                    written.append(save_png(f"{stem}.side.png", side_by_side(img, hm, **look)))
                if save_npy:
                    written.extend(hm.save(stem))
            except ExplainError as exc:
                error_line(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
                failed += 1
                continue
            finally:
                bar.remove_task(task)
            notes = [n for n in (hm.no_signal(), small_box_note(hm.box, hm.shape, clf.input_size))
                     if n]
            result_line(f"{display(path)}  {hm.target} {hm.score:.4f}  {hm.windows} windows  "
                        f"{hm.seconds:.2f} s  → {', '.join(map(display, written))}"
                        + "".join(f"  ({n})" for n in notes))
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


@user_errors
@with_model_options(DEFAULT_MODEL)
def occlude(images: Images, models: ModelOptions, box: BoxOpt = "25%",
            stride: StrideOpt = "18.75%", fill: FillOpt = Fill.gray, target: TargetOpt = "nsfw",
            batch_size: BatchOpt = None, colormap: ColormapOpt = None, alpha: AlphaOpt = 0.5,
            output: ImageOutDirOpt = Path("."), save_npy: SaveNpyOpt = False,
            side_by_side: SideBySideOpt = False, normalize: NormalizeOpt = None,
            vmin: VminOpt = None, vmax: VmaxOpt = None, no_legend: NoLegendOpt = False) -> None:
    """Occlusion sensitivity: how much the target's score drops when each window is hidden.

    Writes NAME.occlusion.png: red = hiding this region lowers the score, blue = raises it,
    white = no effect (the colour bar below gives the drop in probability).
    """
    from explain.occlusion import occlusion_map

    _explain_images("occlusion", partial(occlusion_map, fill=fill), images, box=box,
                    stride=stride, target=target, models=models, batch_size=batch_size,
                    output=output, save_npy=save_npy, side=side_by_side,
                    look=dict(colormap=colormap, alpha=alpha, normalize=normalize, vmin=vmin,
                              vmax=vmax, legend=not no_legend))


@user_errors
@with_model_options(DEFAULT_MODEL)
def slide(images: Images, models: ModelOptions, box: BoxOpt = "25%", stride: StrideOpt = "18.75%",
          target: TargetOpt = "nsfw", batch_size: BatchOpt = None, colormap: ColormapOpt = None,
          alpha: AlphaOpt = 0.5, output: ImageOutDirOpt = Path("."),
          save_npy: SaveNpyOpt = False, side_by_side: SideBySideOpt = False,
          normalize: NormalizeOpt = None, vmin: VminOpt = None, vmax: VmaxOpt = None,
          no_legend: NoLegendOpt = False) -> None:
    """Sliding window: each window cropped and scored alone; per pixel the mean crop score.

    Writes NAME.sliding.png: the crops' probability on a fixed 0..1 scale (red = crops here
    score high on their own).
    """
    from explain.sliding import sliding_window_map

    _explain_images("sliding", sliding_window_map, images, box=box, stride=stride,
                    target=target, models=models, batch_size=batch_size, output=output,
                    save_npy=save_npy, side=side_by_side,
                    look=dict(colormap=colormap, alpha=alpha, normalize=normalize, vmin=vmin,
                              vmax=vmax, legend=not no_legend))
