"""`explain report`: every method on every image in one HTML (or JSON) report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from explain.cli.common import (
    EXIT_BAD_INPUT,
    AlphaOpt,
    BatchOpt,
    BoxOpt,
    ClassesOpt,
    ColormapOpt,
    DeviceOpt,
    Images,
    InputSizeOpt,
    LogitsOpt,
    MeanOpt,
    ModelOpt,
    StdOpt,
    StrideOpt,
    TargetOpt,
    console,
    err_console,
    error_line,
    int_pair,
    load_model,
    user_errors,
)
from explain.images import iter_image_files
from explain.report import DEFAULT_MODELS, METHODS, Options, write_report

ALL_METHODS = ",".join(METHODS)
MethodsOpt = Annotated[str, typer.Option("--methods", help=f"Comma-separated: {ALL_METHODS}.")]
StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="Deletion/insertion steps.")]
DeletionFillOpt = Annotated[str, typer.Option("--fill", help="What deleted pixels become: gray, "
                                              "black, mean or blur (faithfulness).")]
NormalizeOpt = Annotated[str, typer.Option("--normalize", help="minmax or percentile, the same "
                                           "for every panel.")]
FormatOpt = Annotated[str, typer.Option("--format", help="html or json.")]
ReportOutOpt = Annotated[Path, typer.Option("--output", "-o", help="The report file.")]


@user_errors
def report(images: Images, methods: MethodsOpt = ALL_METHODS, box: BoxOpt = "64",
           stride: StrideOpt = "48", model: ModelOpt = "open-nsfw", device: DeviceOpt = None,
           target: TargetOpt = "nsfw", steps: StepsOpt = 20, fill: DeletionFillOpt = "blur",
           batch_size: BatchOpt = None, colormap: ColormapOpt = "jet", alpha: AlphaOpt = 0.5,
           normalize: NormalizeOpt = "minmax", fmt: FormatOpt = "html",
           output: ReportOutOpt = Path("report.html"), logits: LogitsOpt = False,
           classes: ClassesOpt = None, input_size: InputSizeOpt = None, mean: MeanOpt = None,
           std: StdOpt = None) -> None:
    """Run the explanation methods on every image, score each map's faithfulness (deletion and
    insertion AUC), rank them, and write one self-contained report."""
    paths = list(iter_image_files(images))
    spec: object = model
    if model not in DEFAULT_MODELS:
        spec = load_model(model, device, logits=logits, classes=classes, input_size=input_size,
                          mean=mean, std=std)
    options = Options(box=int_pair(box, "--box"), stride=int_pair(stride, "--stride"),
                      target=target, steps=steps, fill=fill, batch_size=batch_size,
                      colormap=colormap, alpha=alpha, normalize=normalize)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("report", total=None)

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label)

        result = write_report(paths, output, format=fmt, model=spec, methods=methods,
                              device=device, options=options, progress=progress)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    failed = [img for img in result.images if img.error]
    for img in failed:
        error_line(f"{img.path}: {img.error}")
    ok = len(result.images) - len(failed)
    table = Table(title=f"faithfulness over {ok} image{'' if ok == 1 else 's'} "
                        f"(target {escape(result.target)})")
    for name in ("rank", "method", "images", "deletion ↓", "insertion ↑", "ins − del ↑",
                 "s / image"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for s in result.summary:
        table.add_row(str(s["rank"]), s["title"], str(s["images"]), f"{s['deletion_auc']:.3f}",
                      f"{s['insertion_auc']:.3f}", f"{s['insertion_minus_deletion']:.3f}",
                      f"{s['seconds']:.2f}")
    console.print(table)
    console.print(f"wrote {escape(str(output))} ({output.stat().st_size / 1e6:.1f} MB) in "
                  f"{result.seconds:.1f} s", highlight=False)
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)
