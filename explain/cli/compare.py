"""`explain compare`: two audits of the same images, side by side (no model call)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from explain.choices import CUE_EMBEDS
from explain.cli.common import OutDirOpt, choice, plain, result_line, user_errors
from explain.files import display

CueEmbed = choice("CueEmbed", CUE_EMBEDS)
DEFAULT_CUE_EMBED = CueEmbed("open-nsfw")

RunArg = Annotated[Path, typer.Argument(help="An `explain audit` output folder.",
                                        show_default=False)]


def _delta(m: dict) -> str:
    if m["delta"] is None:
        return "—"
    bounds = "" if m["low"] is None else f" [{m['low']:+.4f}, {m['high']:+.4f}]"
    return f"{m['a']:.4f} → {m['b']:.4f} ({m['delta']:+.4f}{bounds})"


@user_errors
def compare(
    run_a: RunArg,
    run_b: RunArg,
    output: OutDirOpt = Path("compare"),
    resamples: Annotated[int, typer.Option("--resamples", min=100, help="Bootstrap resamples "
                                           "for the 95 % intervals.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    shown: Annotated[int, typer.Option("--shown", min=0, help="Images per list on the page.")
                     ] = 12,
    cue_embed: Annotated[CueEmbed, typer.Option(  # type: ignore[valid-type]
        "--cue-embed", callback=plain,
        help="The one embedder both runs' cue patches are matched in.")
    ] = DEFAULT_CUE_EMBED,
) -> None:
    """Compare two audits of the same images (two models, or two versions of one): metrics with
    paired intervals, McNemar's test, slices, errors fixed and new, both models' maps, and each
    cue of run A tested under model B (reloaded from run B's recorded spec)."""
    from explain.audit.comparison import compare as run_compare

    result = run_compare(run_a, run_b, output, resamples=resamples, seed=seed, shown=shown,
                         cue_embed=cue_embed)
    s = result.summary
    result_line(f"{s['matched']} images in both runs ({s['only_a']} only in A, {s['only_b']} "
                f"only in B), {s['labeled']} labeled alike")
    if "own_thresholds" in s:
        for key, title in (("own_thresholds", "own thresholds"), ("matched_fpr", "matched FPR")):
            point = s[key]
            mc = point["mcnemar"]
            p = "—" if mc["p"] is None else f"{mc['p']:.3g}"
            result_line(f"{title} (A {point['threshold_a']:.4g}, B {point['threshold_b']:.4g}): "
                        f"precision {_delta(point['metrics']['precision'])} · recall "
                        f"{_delta(point['metrics']['recall'])} · FPR "
                        f"{_delta(point['metrics']['fpr'])} · {mc['fixed']} fixed, {mc['new']} "
                        f"new (McNemar p {p})")
        result_line(f"ROC AUC {_delta(s['auc'])}")
    cues = s["cues"]
    if cues["reason"]:
        result_line(f"cues: not re-measured: {display(cues['reason'])}")
    else:
        counts = {k: sum(1 for r in cues["rows"] if r["status"] == k)
                  for k in ("persists", "weakened", "vanished", "new", "unproven", "unmeasured")}
        counts = {k: n for k, n in counts.items() if n or k in ("persists", "weakened",
                                                                "vanished", "new")}
        result_line("cues: " + ", ".join(f"{n} {k}" for k, n in counts.items()) +
                    f" ({cues['model_calls']} images scored by model B)")
    for note in s["notes"]:
        result_line(f"note: {display(note)}")
    result_line("wrote " + ", ".join(display(path) for path in result.files.values()))
    result_line(f"report: {display(result.files['html'])}")
