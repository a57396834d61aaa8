"""Which occlusion fill gives the more faithful map: each fixed fill against ``fill="auto"``, on
real-signal images, by the report's measure.

Images: square crops of the scikit-image photos that open_nsfw scores >= 0.5 at 256x256 (the
seeded search of ``scripts/bench_fast.py``). Per image: the occlusion map (default windows,
64/48 px on 256x256) with each fill, and the fill ``auto`` chooses (its map is that fill's, so
it is not computed again); each map's deletion/insertion curves by
:func:`explain.faithfulness.faithfulness` with the report's defaults (20 steps, deletion fill
``blur``) and its ``insertion_auc - deletion_auc`` (higher is better: the report's ranking
measure). Prints one row per image (its score, every fill's own score, auto's choice, each
map's measure) and a summary: the mean measure per fill, and auto against each fixed fill
counted as the report counts it (within ``TIE_TOLERANCE`` = 0.01: a tie).

    python scripts/bench_fill.py [--crops 8] [--seed 0] [--model open-nsfw:onnx]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from explain.choices import FILLS
from explain.faithfulness import faithfulness
from explain.models import load
from explain.occlusion import occlusion_map, plan_occlusion
from explain.report.ranking import TIE_TOLERANCE

sys.path.insert(0, str(Path(__file__).parent))
from bench_fast import find_crops  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="open-nsfw:onnx")
    args = parser.parse_args()
    clf = load(args.model, "cpu")
    crops = find_crops(clf, args.crops, seed=args.seed)
    fills = ("auto", *FILLS)
    gaps: dict[str, list[float]] = {f: [] for f in fills}
    chosen: list[str] = []
    start = time.perf_counter()
    print("image                      p      " + "  ".join(f"own:{f:<5}" for f in FILLS)
          + "  auto   " + "  ".join(f"{f:>6}" for f in fills))
    for name, (top, left, side), score, img in crops:
        row = {}
        for fill in FILLS:
            hm = occlusion_map(clf, img, fill=fill)
            row[fill] = faithfulness(clf, img, hm)["insertion_minus_deletion"]
        # auto's map is the chosen fill's map (tests/test_baseline_view.py): not computed twice
        auto = plan_occlusion(clf, img, fill="auto")
        own = auto.fill_scores
        chosen.append(auto.fill)
        row["auto"] = row[auto.fill]
        for fill in fills:
            gaps[fill].append(row[fill])
        print(f"{name:>9} {top:>3},{left:>3} s{side:<3}  {score:.3f}  "
              + "  ".join(f"{own[f]:9.3f}" for f in FILLS) + f"  {chosen[-1]:<5}  "
              + "  ".join(f"{row[f]:+6.3f}" for f in fills), flush=True)
    print(f"\n{len(crops)} crops, {time.perf_counter() - start:.0f} s; auto chose "
          + ", ".join(f"{f} {chosen.count(f)}" for f in FILLS if chosen.count(f)))
    print("mean insertion - deletion: "
          + ", ".join(f"{f} {np.mean(gaps[f]):+.4f}" for f in fills))
    auto = np.array(gaps["auto"])
    for fill in FILLS:
        diff = auto - np.array(gaps[fill])
        wins, losses = int((diff > TIE_TOLERANCE).sum()), int((diff < -TIE_TOLERANCE).sum())
        print(f"auto vs {fill:<5}: mean difference {diff.mean():+.4f} (median "
              f"{np.median(diff):+.4f}); better on {wins}, tied on {len(diff) - wins - losses},"
              f" worse on {losses}")


if __name__ == "__main__":
    main()
