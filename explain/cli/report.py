"""`explain report`: every method on every image in one HTML (or JSON) report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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

from explain.choices import FORMATS, SANITY_LAYERS, SANITY_THRESHOLD, WHITE_BOX_MODEL
from explain.cli.common import (
    EXIT_BAD_INPUT,
    AlphaOpt,
    BatchOpt,
    ColormapOpt,
    Fill,
    Images,
    ModelOptions,
    NormalizeOpt,
    TargetOpt,
    VmaxOpt,
    VminOpt,
    choice,
    console,
    err_console,
    error_line,
    gather_images,
    plain,
    result_line,
    user_errors,
    with_method_options,
    with_model_options,
)
from explain.errors import OptionError
from explain.files import check_output_file, display
from explain.methods import DEFAULT_METHODS, METHODS, REPORT_OPTIONS, parse_methods

if TYPE_CHECKING:
    from explain.report import Report

Format = choice("Format", FORMATS)


def method_names(text: str | None) -> list[str]:
    """Option callback: ``--methods`` as the validated list of method names (the registry's
    default methods when not given); an unknown name is typer's usage error, listing the valid
    ones."""
    try:
        return parse_methods(DEFAULT_METHODS if text is None else text)
    except OptionError as exc:
        raise typer.BadParameter(str(exc)) from None


MethodsOpt = Annotated[str | None, typer.Option(
    "--methods", help=f"Comma-separated, from: {','.join(METHODS)} (default: "
    f"{','.join(DEFAULT_METHODS)}).",
    show_default=False, callback=method_names)]
StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="Deletion/insertion steps.")]
DeletionFillOpt = Annotated[Fill, typer.Option("--fill", help="What deleted pixels become "
                                               "(faithfulness).", callback=plain)]
FormatOpt = Annotated[Format, typer.Option("--format", help="The report file's format.",
                                           callback=plain)]
ReportOutOpt = Annotated[Path, typer.Option("--output", "-o", help="The report file.")]
SanityOpt = Annotated[bool, typer.Option(
    "--sanity", help="Sanity check (Adebayo et al. 2018): re-initialise the model's top layers "
    "in cascade (torch models) and flag every method whose map keeps Spearman rank correlation "
    f"≥ {SANITY_THRESHOLD} with the original.")]
SanityLayersOpt = Annotated[int, typer.Option(
    "--sanity-layers", min=1, help="--sanity: how many top layers to re-initialise, one more "
    "per step.")]


@user_errors
@with_model_options(WHITE_BOX_MODEL, several=True)
@with_method_options(REPORT_OPTIONS)
def report(images: Images, models: ModelOptions, methods: MethodsOpt = None,
           settings: dict | None = None, target: TargetOpt = "nsfw",
           steps: StepsOpt = 20, fill: DeletionFillOpt = Fill.blur, batch_size: BatchOpt = None,
           colormap: ColormapOpt = None, alpha: AlphaOpt = 0.5,
           normalize: NormalizeOpt = None, vmin: VminOpt = None, vmax: VmaxOpt = None,
           fmt: FormatOpt = Format.html,
           output: ReportOutOpt = Path("report.html"), sanity: SanityOpt = False,
           sanity_layers: SanityLayersOpt = SANITY_LAYERS) -> None:
    """Run the explanation methods on every image, score each map's faithfulness (deletion and
    insertion AUC), rank them, and write one self-contained report. With --sanity, flag every
    method whose map survives randomising the model's top layers (Adebayo et al. 2018).
    Several --model: the report has a column per model (JSON: a "models" list)."""
    from explain.models.specs import DEFAULT_MODELS
    from explain.report import Options, write_report, write_reports

    given = {o.name: settings[o.name] for o in REPORT_OPTIONS if o.argument}
    options = Options(**given, target=target, steps=steps, fill=fill, batch_size=batch_size,
                      colormap=colormap, alpha=alpha, normalize=normalize, vmin=vmin,
                      vmax=vmax, sanity=sanity, sanity_layers=sanity_layers)
    options.check()
    paths, failed_inputs = gather_images(images, clips=True)
    check_output_file(output, inputs=paths)
    specs = [m.model if m.model in DEFAULT_MODELS and m.plain else m.load()
             for m in models.each()]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True,
                  disable=not err_console.is_terminal) as bar:
        task = bar.add_task("report", total=None)

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=escape(display(label)))

        kwargs = dict(format=fmt, methods=methods, device=models.device, options=options,
                      progress=progress)
        results = (write_reports(paths, output, models=specs, **kwargs) if len(specs) > 1
                   else [write_report(paths, output, model=specs[0], **kwargs)])
    several = len(results) > 1
    bad = False
    shown: set[tuple[str, str]] = set()  # a bad file fails alike for every model: one line
    for result in results:
        who = f"{display(result.model)}: " if several else ""
        for note in result.notes:
            err_console.print(f"[yellow]note:[/] {escape(who + display(note))}", highlight=False,
                              soft_wrap=True)
        failed = [img for img in result.images if img.error]
        for img in failed:
            if (img.path, img.error) not in shown:
                shown.add((img.path, img.error))
                error_line(f"{display(img.path)}: {img.error}")
        method_failures = [(img, m) for img in result.images for m in img.methods if m.error]
        for img, m in method_failures:
            error_line(f"{who}{display(img.path)}: {m.title} failed: {m.error}")
        ok = len(result.images) - len(failed)
        if result.summary:
            console.print(_summary_table(result, ok, who))
        result_line(f"{who}ranking (target {display(result.target)}): "
                    f"{display(result.ranking)}")
        for name, why in result.not_ranked.items():
            result_line(f"{who}not ranked: {name}: {display(why)}")
        bad = bad or bool(failed or method_failures)
    result_line(f"wrote {display(output)} ({output.stat().st_size / 1e6:.1f} MB) in "
                f"{sum(r.seconds for r in results):.1f} s")
    if bad or failed_inputs:
        raise typer.Exit(EXIT_BAD_INPUT)


def _summary_table(result: Report, ok: int, who: str = "") -> Table:
    """The methods ranked by faithfulness, best first (``who``: the model, when several)."""
    table = Table(title=f"{escape(who)}faithfulness over {ok} image{'' if ok == 1 else 's'} "
                        f"(target {escape(display(result.target))})")
    for name in ("rank", "method", "images", "deletion ↓", "insertion ↑", "ins − del ↑",
                 "s / image"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for s in result.summary:
        table.add_row(str(s["rank"]), s["title"], str(s["images"]), f"{s['deletion_auc']:.3f}",
                      f"{s['insertion_auc']:.3f}", f"{s['insertion_minus_deletion']:.3f}",
                      f"{s['seconds']:.2f}")
    return table
