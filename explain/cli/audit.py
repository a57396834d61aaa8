"""`explain audit`: score a (labeled) image collection, rank its errors, explain them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from explain.choices import BLACK_BOX_MODEL, DEFAULT_MAX_FRAMES, DEFAULT_MAX_PIXELS, ENGINES
from explain.cli.common import (
    EXIT_BAD_INPUT,
    AlphaOpt,
    BatchOpt,
    ColormapOpt,
    FramesOpt,
    MaxFramesOpt,
    ModelOptions,
    NormalizeOpt,
    OutDirOpt,
    SynthesizeOpt,
    TargetOpt,
    VmaxOpt,
    VminOpt,
    choice,
    console,
    error_line,
    plain,
    result_line,
    user_errors,
    with_method_options,
    with_model_options,
)
from explain.files import check_output_dir, display
from explain.methods import METHODS

Engine = choice("Engine", ENGINES)


@contextmanager
def stage_bars(enabled: bool) -> Iterator[Callable[[int, int, str], None] | None]:
    """Rich bars with images/s for the audit's stages, driven by the library's
    ``progress(done, total, stage)`` callback; None when off or not on a terminal."""
    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task: object) -> Text:
            elapsed = task.elapsed or 0.0  # type: ignore[attr-defined]
            done = task.completed  # type: ignore[attr-defined]
            return Text(f"{done / elapsed if elapsed else 0.0:.1f} images/s", style="cyan")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Speed(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        tasks: dict[str, object] = {}

        def progress(done: int, total: int, stage: str) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)  # type: ignore[arg-type]

        yield progress


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _bounds(metrics: dict, name: str) -> str:
    low, high = metrics.get(f"{name}_low"), metrics.get(f"{name}_high")
    return "" if low is None else f"[{low:.4f}, {high:.4f}]"


@user_errors
@with_model_options(BLACK_BOX_MODEL)
@with_method_options(METHODS["occlusion"].options)
def audit(
    data: Annotated[Path, typer.Argument(help="Folder of images (sub-folders named after classes "
                                              "give the true labels) or a path,label CSV.",
                                         show_default=False)],
    models: ModelOptions,
    output: OutDirOpt = Path("audit"),
    labels: Annotated[Path | None, typer.Option("--labels", help="CSV of path,label rows "
                                                "(relative paths start at DATA).")] = None,
    target: TargetOpt = "nsfw",
    threshold: Annotated[float | None, typer.Option("--threshold", min=0.0, max=1.0,
                                                    help="Score at or above which an image "
                                                         "counts as the target (default 0.5; "
                                                         "not part of the run: a new value "
                                                         "re-scores nothing).")] = None,
    target_precision: Annotated[float | None, typer.Option("--target-precision", min=0.0, max=1.0, help="Pick the threshold: the lowest with at least this precision on the labeled images.")] = None,  # noqa: E501
    target_recall: Annotated[float | None, typer.Option("--target-recall", min=0.0, max=1.0, help="Pick the threshold: the highest with at least this recall on the labeled images.")] = None,  # noqa: E501
    top: Annotated[int, typer.Option("--top", min=0, help="Heatmaps for this many false "
                                     "positives and as many false negatives.")] = 50,
    settings: dict | None = None,
    concepts: Annotated[bool, typer.Option("--concepts/--no-concepts", help="Run the NudeNet "
                                           "part detector and measure each part's effect.")
                        ] = True,
    cues: Annotated[bool, typer.Option("--cues/--no-cues", help="Discover the cues the model reacts to in its false positives (needs 5 with a heatmap).")] = True,  # noqa: E501
    label_issues: Annotated[bool, typer.Option("--label-issues/--no-label-issues", help="Find images whose label the data contradicts (cleanlab; embeds every labeled image once).")] = True,  # noqa: E501
    clusters: Annotated[bool, typer.Option("--clusters/--no-clusters", help="Cluster the false positives and negatives in the model's feature space.")] = True,  # noqa: E501
    pool: Annotated[Path | None, typer.Option("--pool", help="After cue discovery, rank this folder's images by how strongly they carry each cue (counterexamples.csv).")] = None,  # noqa: E501
    synthesize: SynthesizeOpt = 0,
    batch_size: BatchOpt = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Threads decoding images "
                                         "ahead of the model.")] = 4,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="Larger images are "
                                            "reported as errors.")] = DEFAULT_MAX_PIXELS,
    frames: FramesOpt = "auto",
    max_frames: MaxFramesOpt = DEFAULT_MAX_FRAMES,
    mosaic: Annotated[int, typer.Option("--mosaic", min=0, help="Images in the similarity "
                                        "mosaic (0: none).")] = 256,
    colormap: ColormapOpt = None,
    alpha: AlphaOpt = 0.5,
    normalize: NormalizeOpt = None,
    vmin: VminOpt = None,
    vmax: VmaxOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    engine: Annotated[Engine, typer.Option("--engine", callback=plain, help="Where scoring and heatmaps run: local (this process) or ray (a Ray cluster; pip install 'explain\\[ray]').")] = Engine.local,  # noqa: E501
    address: Annotated[str | None, typer.Option("--address", help="Ray: auto (the cluster of this node) or ray://HOST:PORT (default: a local Ray instance).")] = None,  # noqa: E501
    actors: Annotated[int, typer.Option("--actors", min=1, help="Ray: model actors (the model is loaded once per actor).")] = 1,  # noqa: E501
    gpus_per_actor: Annotated[float | None, typer.Option("--gpus-per-actor", min=0.0, help="Ray: GPUs per actor (default: 1 when the cluster has GPUs, else 0).")] = None,  # noqa: E501
) -> None:
    """Audit a dataset: metrics, false positives/negatives with heatmaps, and which detected body
    parts drive the score. Re-running the same command resumes an interrupted audit. A clip
    (animated GIF/WebP/PNG, video) is audited as its max frame among those --frames samples."""
    from explain.audit import audit as run_audit
    from explain.audit.options import AuditOptions, RayOptions
    from explain.errors import OptionError

    if threshold is not None and (target_precision is not None or target_recall is not None):
        raise OptionError("give --threshold or a --target-precision / --target-recall, not both")
    options = AuditOptions(threshold=0.5 if threshold is None else threshold,
                           target_precision=target_precision, target_recall=target_recall,
                           label_issues=label_issues, clusters=clusters, top=top,
                           **METHODS["occlusion"].arguments(settings), target=target,
                           concepts=concepts, cues=cues, max_pixels=max_pixels,
                           frames=frames, max_frames=max_frames,
                           batch_size=batch_size, workers=workers, colormap=colormap,
                           alpha=alpha, normalize=normalize, vmin=vmin, vmax=vmax, mosaic=mosaic,
                           pool=None if pool is None else str(pool), synthesize=synthesize)
    options.check()
    if engine != "ray" and (address is not None or actors != 1 or gpus_per_actor is not None):
        raise OptionError("--address, --actors and --gpus-per-actor need --engine ray")
    ray = RayOptions(address=address, actors=actors, gpus_per_actor=gpus_per_actor,
                     loader=models.load)
    check_output_dir(output)
    clf = models.load()
    with stage_bars(not quiet) as progress:
        result = run_audit(data, output, labels=labels, model=clf, device=models.device,
                           options=options, progress=progress, model_spec=models.describe(),
                           engine=engine, ray=ray)
    state = "resumed" if result.resumed else "new"
    result_line(f"run {result.run} ({state}, key {result.key}): {result.images} images, "
                f"{result.scored} scored, {result.failed} failed, {result.heatmaps} heatmaps")
    mt = result.metrics
    if mt:
        result_line(f"threshold {result.threshold:.4g} ({mt['rule']}): precision "
                    f"{_fmt(mt['precision'])} {_bounds(mt, 'precision')} · recall "
                    f"{_fmt(mt['recall'])} {_bounds(mt, 'recall')} · F1 {_fmt(mt['f1'])} · "
                    f"FP {mt['fp']} · FN {mt['fn']} · ROC AUC {_fmt(mt['auc'])} · ECE "
                    f"{_fmt(mt['ece'])} · Brier {_fmt(mt['brier'])}")
        flagged = mt["slices_flagged"]
        if flagged:
            result_line(f"{len(flagged)} slice(s) flagged: " + ", ".join(
                f"{display(r['slice'])}={display(r['value'])} ({r['flagged']})"
                for r in flagged[:5]) + (" …" if len(flagged) > 5 else ""))
        if mt.get("label_issues"):
            result_line(f"{mt['label_issues']} likely label errors: see "
                        f"{display(result.files['label_issues'])}")
    if result.failed:
        result_line(f"{result.failed} files could not be read: see "
                    f"{display(result.files['errors'])}")
    result_line("wrote " + ", ".join(display(path) for path in result.files.values()))
    result_line(f"report: {display(result.files['html'])}")
    nothing = result.measured_nothing()  # a report of nothing must not pass for a run
    if nothing:
        error_line(nothing)
        raise typer.Exit(EXIT_BAD_INPUT)
