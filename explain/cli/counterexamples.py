"""`explain counterexamples`: the pool images that carry an audit's cues, to label and add to the
negative training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from explain.cli.audit import stage_bars
from explain.cli.common import (
    BatchOpt,
    DeviceOpt,
    OutDirOpt,
    SynthesizeOpt,
    result_line,
    user_errors,
)
from explain.files import display

PoolOpt = Annotated[Path, typer.Option("--pool", help="Folder of images to search for the cues "
                                       "(searched recursively; the output folder is skipped).",
                                       show_default=False)]


@user_errors
def counterexamples(
    run: Annotated[Path, typer.Argument(help="An `explain audit` output folder with cues.",
                                        show_default=False)],
    pool: PoolOpt,
    output: OutDirOpt = Path("counterexamples"),
    model: Annotated[str | None, typer.Option("--model", "-m", help="The model (default: the "
                                              "spec the audit recorded).")] = None,
    device: DeviceOpt = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Images listed per cue.")] = 50,
    synthesize: SynthesizeOpt = 0,
    batch_size: BatchOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Rank the pool's images by how strongly they carry each cue of an audit (their most
    cue-like occlusion window: its similarity to the cue, and how much it raises the score).
    Re-running the same command scans only the images not yet scanned."""
    from explain.audit.mining import counterexamples as mine

    with stage_bars(not quiet) as progress:
        result = mine(run, pool, output, model=model, device=device, top=top,
                      synthesize=synthesize, batch_size=batch_size, progress=progress)
    per_cue: dict[int, int] = {}
    for row in result.rows:
        per_cue[row["cue"]] = per_cue.get(row["cue"], 0) + 1
    result_line(f"{result.scanned} pool images scanned ({result.failed} could not be read), "
                f"{result.calls} scored by the model now; "
                + (", ".join(f"cue {c}: {n} listed" for c, n in per_cue.items())
                   or "no image carries a cue"))
    if result.synthetic:
        result_line(f"{result.synthetic} synthetic counter-examples")
    for note in result.notes:
        result_line(f"note: {display(note)}")
    result_line("wrote " + ", ".join(display(path) for path in result.files.values()))
    result_line(f"report: {display(result.files['html'])}")
