"""`explain occlude`, `explain slide` and `explain rise`: black-box heatmaps for any classifier.

Per image NAME in the output folder: ``NAME.occlusion.png`` (``NAME.sliding.png``,
``NAME.rise.png``), the overlay at the input's size with the legend strip below it
(:func:`explain.render.figure`; ``--no-legend``: the bare overlay); with ``--side-by-side`` also
``NAME.METHOD.side.png``; with ``--save-npy`` also ``NAME.METHOD.npy`` + ``.json``. NAME is the
file's stem, made unique within the call by :func:`explain.files.output_names` (see the README,
"Output files"). A map without signal (below the noise floor) and a box too small at the model's
input are said on the image's line. The three commands share one runner, :func:`_explain_images`.

A clip (animated GIF/WebP/PNG, video; :mod:`explain.frames`) is scored on every sampled frame
and its top frames (or all) explained, reusing the previous frame's work (``--reuse``), by
:func:`_explain_clip`: ``NAME.METHOD.gif``, ``NAME.METHOD.timeline.png`` and
``NAME.METHOD.frameINDEX.png`` (:func:`explain.clips.write_clip`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from explain.choices import (
    BLACK_BOX_MODEL,
    DEFAULT_MAX_FRAMES,
    DEFAULT_REUSE_THRESHOLD,
    DEFAULT_TOP_FRAMES,
    REUSE_MODES,
)
from explain.cli.common import (
    EXIT_BAD_INPUT,
    AllFramesOpt,
    AlphaOpt,
    BatchOpt,
    ColormapOpt,
    FramesOpt,
    ImageOutDirOpt,
    Images,
    MaxFramesOpt,
    ModelOptions,
    NoLegendOpt,
    NormalizeOpt,
    SaveNpyOpt,
    SideBySideOpt,
    TargetOpt,
    TopFramesOpt,
    VmaxOpt,
    VminOpt,
    choice,
    console,
    error_line,
    file_error,
    gather_images,
    note_line,
    output_stems,
    plain,
    result_line,
    user_errors,
    with_method_options,
    with_model_options,
)
from explain.errors import ExplainError, OptionError
from explain.files import display
from explain.methods import METHODS

if TYPE_CHECKING:
    from explain.heatmap import Heatmap


Reuse = choice("Reuse", REUSE_MODES)
ReuseOpt = Annotated[Reuse, typer.Option(
    "--reuse", help="Clips, between consecutive explained frames: identical = an unchanged frame "
    "takes the previous map (exact); region = also windows away from the changed region keep "
    "their value (exact for slide; an approximation for occlude, see the README).",
    callback=plain)]
ReuseBelowOpt = Annotated[int, typer.Option(
    "--reuse-below", min=0, max=255, help="Clips: a pixel differing from the previous "
    "frame's by at most this many levels (0..255) counts as unchanged; 0 = exact.")]


@dataclass(frozen=True)
class ClipChoice:
    """The clip options of a command: sampling (``--frames``), ``--max-frames``,
    ``--top-frames``, ``--all-frames``, and for occlusion the maps of a frame sequence with
    reuse (``sequence``, :func:`explain.frame_reuse.occlusion_maps` with the method's settings
    bound; None: each frame's map, identical frames reused)."""

    frames: str
    max_frames: int
    top_frames: int
    all_frames: bool
    sequence: Callable[..., list[Heatmap]] | None = None


def _explain_images(method: str, make_map: Callable[..., Heatmap], images: list[Path], *,
                    target: str, models: ModelOptions, batch_size: int | None, look: dict,
                    output: Path, save_npy: bool, side: bool, clips: ClipChoice,
                    unit: str = "windows") -> None:
    """Run ``make_map(clf, image, target=…, batch_size=…, progress=…)`` (the method's own
    settings already bound) over every image with a progress bar counting ``unit`` (the map's
    ``params[unit]``, else its ``windows``; after drill-down, evaluated/all); a clip goes to
    :func:`_explain_clip`. Report bad images and go on. ``look``: the drawing options of
    :func:`explain.render.figure`."""
    from explain.clips import LONGEST_ENDING
    from explain.frames import is_clip, parse_sampling
    from explain.images import load_image
    from explain.models import resolve_target
    from explain.outputs import record, write_map
    from explain.render import check_look, figure, side_by_side
    from explain.windows import small_box_note

    check_look(look["colormap"], look["normalize"], look["vmin"], look["vmax"])
    if models.others:
        _compare_models(method, make_map, images, target=target, models=models,
                        batch_size=batch_size, look=look, output=output,
                        refused={"--save-npy": save_npy, "--side-by-side": side})
        return
    drawing = {k: look[k] for k in ("colormap", "normalize", "vmin", "vmax")}
    parse_sampling(clips.frames)
    paths, failed = gather_images(images, clips=True)
    suffixes = [".png", *([".side.png"] if side else []), *([".npy", ".json"] if save_npy else [])]
    stems = output_stems(paths, output, method, suffixes, clip_endings=[LONGEST_ENDING])
    clf = models.load()
    resolve_target(clf, target)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        for path, stem in zip(paths, stems, strict=True):
            task = bar.add_task(escape(display(path.name)), total=None)
            try:
                if is_clip(path):
                    result_line(_explain_clip(
                        path, stem, clf, make_map, clips, target=target, batch_size=batch_size,
                        look=look, inputs=paths, progress=lambda done, total, t=task: bar.update(
                            t, completed=done, total=total)))
                    continue
                img = load_image(path)
                hm = make_map(clf, img, target=target, batch_size=batch_size,
                              progress=lambda done, total, t=task: bar.update(
                                  t, completed=done, total=total))
                pictures = {".png": figure(img, hm, **look)}
                if side:
                    pictures[".side.png"] = side_by_side(img, hm, **look)
                written = write_map(stem, hm, pictures=pictures, values=save_npy, json=save_npy,
                                    extra=record(hm, drawing) if save_npy else None)
            except ExplainError as exc:
                error_line(file_error(path, exc))
                failed += 1
                continue
            finally:
                bar.remove_task(task)
            small = hm.box and small_box_note(hm.box, hm.shape, clf.input_size)
            notes = [n for n in (*hm.notes(), small) if n]
            count = hm.params.get(unit, hm.windows)
            if hm.params.get("drill_down"):  # the windows scored of the fine map's
                count = f"{hm.params['windows_evaluated']}/{count}"
            result_line(f"{display(path)}  {hm.target} {hm.score:.4f}  {count} {unit}  "
                        f"{hm.seconds:.2f} s  → {', '.join(map(display, written))}"
                        + "".join(f"  ({n})" for n in notes))
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


def _compare_models(method: str, make_map: Callable[..., Heatmap], images: list[Path], *,
                    target: str, models: ModelOptions, batch_size: int | None, look: dict,
                    output: Path, refused: dict[str, bool]) -> None:
    """Several --model: each still image explained by every model, written as one picture
    (:func:`explain.render.model_rows`: a row per model, its score, one colour scale)."""
    from explain.frames import is_clip
    from explain.images import load_image
    from explain.models import resolve_target
    from explain.outputs import write_map
    from explain.render import model_rows

    given = [flag for flag, on in refused.items() if on] + [
        flag for flag, key in (("--normalize", "normalize"), ("--vmin", "vmin"),
                               ("--vmax", "vmax")) if look[key] is not None]
    if given or not look["legend"]:
        raise OptionError(f"{', '.join(given) or '--no-legend'}: one --model only; with "
                          "several, the rows share one scale and each row shows its legend")
    paths, failed = gather_images(images)
    stems = output_stems(paths, output, method, [".png"])
    specs = models.each()
    classifiers = [m.load() for m in specs]
    for clf in classifiers:
        resolve_target(clf, target)
    for path, stem in zip(paths, stems, strict=True):
        try:
            if is_clip(path):
                raise OptionError("several --model explain still images; give one --model "
                                  "for a clip")
            img = load_image(path)
            rows = [(m.describe(), make_map(clf, img, target=target, batch_size=batch_size))
                    for m, clf in zip(specs, classifiers, strict=True)]
            written, = write_map(stem, pictures={".png": model_rows(
                img, rows, colormap=look["colormap"], alpha=look["alpha"])})
        except ExplainError as exc:
            error_line(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
            failed += 1
            continue
        scores = ", ".join(f"{name} {hm.score:.4f}" for name, hm in rows)
        result_line(f"{display(path)}  {rows[0][1].target}: {scores}  → {display(written)}")
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


def _explain_clip(path: Path, stem: Path, clf: object, make_map: Callable[..., Heatmap],
                  c: ClipChoice, *, target: str, batch_size: int | None, look: dict,
                  inputs: list[Path], progress: Callable[[int, int], None]) -> str:
    """Score every sampled frame of the clip at ``path``, explain the chosen frames, write the
    animated overlay, the timeline and the frames' pictures (:func:`explain.clips.write_clip`);
    return the result line. Notes (frames skipped) go to stderr."""
    from collections import Counter

    from explain.clips import (
        explain_clip,
        frame_maps,
        output_names,
        pick_frames,
        score_clip,
        write_clip,
    )
    from explain.files import check_outputs
    from explain.frames import read_clip

    clip = read_clip(path, c.frames, max_frames=c.max_frames)
    for note in clip.notes:
        note_line(f"{display(path)}: {note}")
    scores = score_clip(clf, clip, target, progress=progress)
    pictures = c.top_frames if c.all_frames else None
    positions = pick_frames(scores, c.top_frames, c.all_frames)
    check_outputs(output_names(stem, clip, scores, positions, pictures), inputs)

    def maps(frames: list, done: Callable[[int, int], None] | None) -> list[Heatmap]:
        if c.sequence is not None:
            return c.sequence(clf, frames, target=target, batch_size=batch_size, progress=done)
        return frame_maps(lambda f: make_map(clf, f, target=target, batch_size=batch_size),
                          frames, progress=done)

    explained = explain_clip(scores, clip, maps, top_frames=c.top_frames,
                             all_frames=c.all_frames, progress=progress)
    written = write_clip(clip, explained, stem, frame_pictures=pictures, **look)
    reuse = Counter(hm.params.get("reuse", "none") for hm in explained.maps)
    paths = ", ".join(f"{n} {k}" for k, n in sorted(reuse.items()))
    top = scores.summary()
    seconds = sum(hm.seconds or 0.0 for hm in explained.maps)
    return (f"{display(path)}  {top['target']} max {top['max']:.4f} at frame {top['max_frame']} "
            f"({top['max_time']:.2f} s), mean {top['mean']:.4f} over {clip.scored_text()}"
            f"  {len(explained.maps)} explained (reuse: {paths})  {seconds:.2f} s"
            f"  → {', '.join(map(display, written[:2]))}"
            + (f" + {len(written) - 2} frame pictures" if len(written) > 2 else ""))


def _look(colormap: str | None, alpha: float, normalize: str | None, vmin: float | None,
          vmax: float | None, no_legend: bool) -> dict:
    """The drawing options as :func:`explain.render.figure` takes them."""
    return dict(colormap=colormap, alpha=alpha, normalize=normalize, vmin=vmin, vmax=vmax,
                legend=not no_legend)


@user_errors
@with_model_options(BLACK_BOX_MODEL, several=True)
@with_method_options(METHODS["occlusion"].options)
def occlude(images: Images, models: ModelOptions, settings: dict | None = None,
            target: TargetOpt = "nsfw",
            batch_size: BatchOpt = None, colormap: ColormapOpt = None, alpha: AlphaOpt = 0.5,
            output: ImageOutDirOpt = Path("."), save_npy: SaveNpyOpt = False,
            side_by_side: SideBySideOpt = False, normalize: NormalizeOpt = None,
            vmin: VminOpt = None, vmax: VmaxOpt = None, no_legend: NoLegendOpt = False,
            frames: FramesOpt = "auto", max_frames: MaxFramesOpt = DEFAULT_MAX_FRAMES,
            top_frames: TopFramesOpt = DEFAULT_TOP_FRAMES, all_frames: AllFramesOpt = False,
            reuse: ReuseOpt = Reuse.identical, reuse_below: ReuseBelowOpt = DEFAULT_REUSE_THRESHOLD
            ) -> None:
    """Occlusion sensitivity: how much the target's score drops when each window is hidden.

    Writes NAME.occlusion.png: red = hiding this region lowers the score, blue = raises it,
    white = no effect (the colour bar below gives the drop in probability). A clip (animated
    image, video) writes NAME.occlusion.gif (the animated overlay), NAME.occlusion.timeline.png
    and NAME.occlusion.frameINDEX.png for its explained frames. --fast / --drill-down score the
    fine windows of a still image, or of each clip frame scored, only where the map needs them
    (the line says how many ran; not with --reuse region).
    Several --model: NAME.occlusion.png has a row per model, on one colour scale.
    """
    from explain.frame_reuse import occlusion_maps
    from explain.occlusion import occlusion_map
    from explain.windows import WindowPlan

    o = METHODS["occlusion"].arguments(settings)
    o["windows"] = WindowPlan(o.pop("box"), o.pop("stride"))  # once, for every image
    sequence = partial(occlusion_maps, windows=o["windows"], fill=o["fill"],
                       drill_down=o["drill_down"], reuse=reuse, threshold=reuse_below)
    _explain_images("occlusion", partial(occlusion_map, **o), images, target=target,
                    models=models, batch_size=batch_size, output=output,
                    save_npy=save_npy, side=side_by_side,
                    look=_look(colormap, alpha, normalize, vmin, vmax, no_legend),
                    clips=ClipChoice(frames, max_frames, top_frames, all_frames, sequence))


@user_errors
@with_model_options(BLACK_BOX_MODEL, several=True)
@with_method_options(METHODS["sliding"].options)
def slide(images: Images, models: ModelOptions, settings: dict | None = None,
          target: TargetOpt = "nsfw", batch_size: BatchOpt = None, colormap: ColormapOpt = None,
          alpha: AlphaOpt = 0.5, output: ImageOutDirOpt = Path("."),
          save_npy: SaveNpyOpt = False, side_by_side: SideBySideOpt = False,
          normalize: NormalizeOpt = None, vmin: VminOpt = None, vmax: VmaxOpt = None,
          no_legend: NoLegendOpt = False, frames: FramesOpt = "auto",
          max_frames: MaxFramesOpt = DEFAULT_MAX_FRAMES,
          top_frames: TopFramesOpt = DEFAULT_TOP_FRAMES, all_frames: AllFramesOpt = False,
          reuse: ReuseOpt = Reuse.region, reuse_below: ReuseBelowOpt = DEFAULT_REUSE_THRESHOLD
          ) -> None:
    """Sliding window: each window cropped and scored alone; per pixel the mean crop score.

    Writes NAME.sliding.png: the crops' probability on a fixed 0..1 scale (red = crops here
    score high on their own). Several --model: a row per model.
    """
    from explain.frame_reuse import sliding_maps
    from explain.sliding import sliding_window_map
    from explain.windows import WindowPlan

    o = METHODS["sliding"].arguments(settings)
    windows = WindowPlan(o["box"], o["stride"])  # once, for every image
    sequence = partial(sliding_maps, reuse=reuse, threshold=reuse_below, windows=windows)
    _explain_images("sliding", partial(sliding_window_map, windows=windows), images,
                    target=target, models=models, batch_size=batch_size, output=output,
                    save_npy=save_npy, side=side_by_side,
                    look=_look(colormap, alpha, normalize, vmin, vmax, no_legend),
                    clips=ClipChoice(frames, max_frames, top_frames, all_frames, sequence))


@user_errors
@with_model_options(BLACK_BOX_MODEL)
@with_method_options(METHODS["rise"].options)
def rise(images: Images, models: ModelOptions, settings: dict | None = None,
         target: TargetOpt = "nsfw", batch_size: BatchOpt = None, colormap: ColormapOpt = None,
         alpha: AlphaOpt = 0.5, output: ImageOutDirOpt = Path("."),
         save_npy: SaveNpyOpt = False, side_by_side: SideBySideOpt = False,
         normalize: NormalizeOpt = None, vmin: VminOpt = None, vmax: VmaxOpt = None,
         no_legend: NoLegendOpt = False, frames: FramesOpt = "auto",
         max_frames: MaxFramesOpt = DEFAULT_MAX_FRAMES,
         top_frames: TopFramesOpt = DEFAULT_TOP_FRAMES, all_frames: AllFramesOpt = False) -> None:
    """RISE: the score of thousands of randomly masked copies, averaged per pixel over the
    masks that keep it.

    Writes NAME.rise.png: per pixel the expected p(target) when that pixel is kept, on a fixed
    0..1 scale (red = the score stays high when this region is shown).
    """
    from explain.rise import rise_map

    _explain_images("rise", partial(rise_map, **METHODS["rise"].arguments(settings)), images,
                    target=target, models=models, batch_size=batch_size, output=output,
                    save_npy=save_npy, side=side_by_side, unit="masks",
                    look=_look(colormap, alpha, normalize, vmin, vmax, no_legend),
                    clips=ClipChoice(frames, max_frames, top_frames, all_frames))
