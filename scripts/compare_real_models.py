"""The three built-in models audited on one folder of real photos and compared, through the CLI.

    python scripts/compare_real_models.py [--images 36] [--fps 8] [--side 256] [--out DIR]

The data are random crops of the scikit-image photos and samples/astronaut.jpg
(``bench_cues.write_dataset``), all labelled sfw: none is nude, and no nude photo can be
fetched here, so only false positives exist (no recall, no ROC AUC). Each model is audited
twice in its own folder with ``explain audit`` (no parts, label issues, clusters or mosaic,
windows of about a third of the image):

1. at the default threshold 0.5 without cues; the three pairs are compared there with
   ``explain compare`` (no cue section: nothing to re-measure), so the false positive rates
   at 0.5 and their paired intervals are read;
2. again at the threshold that makes its ``--fps`` highest-scoring photos its false positives
   (the stored scores are reused), with cue discovery and ``--top FPS`` heatmaps; the three
   pairs are compared again, each cue of A tested under B (``--cue-embed open-nsfw``).

Prints each step's time, the FPR deltas at 0.5 and every row of each ``cue_changes.csv``; the
folders are kept in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_cues import write_dataset

MODELS = {"open-nsfw": "open-nsfw:onnx", "nudenet": "nudenet-classifier",
          "mobilenet": "nudity-mobilenet"}
PAIRS = (("open-nsfw", "nudenet"), ("open-nsfw", "mobilenet"), ("nudenet", "mobilenet"))
COMMON = ["--no-concepts", "--no-label-issues", "--no-clusters", "--mosaic", "0",
          "--box", "35%", "--stride", "32.5%", "--quiet"]


def explain(*args: str) -> float:
    """Run ``python -m explain ARGS``; its seconds (the output is shown on failure)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "explain", *args], capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"explain {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - start


def threshold_for(audit: Path, fps: int) -> float:
    """The midpoint between the ``fps``-th and the next highest score of ``scores.csv``."""
    with open(audit / "scores.csv", newline="", encoding="utf-8") as f:
        scores = sorted((float(r["score"]) for r in csv.DictReader(f)), reverse=True)
    return (scores[fps - 1] + scores[fps]) / 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=36)
    ap.add_argument("--fps", type=int, default=8)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("real_models"))
    args = ap.parse_args()
    data = args.out / "data"
    if not data.exists():
        write_dataset(data, args.images, args.side)
    for name, spec in MODELS.items():
        seconds = explain("audit", str(data), "-o", str(args.out / name), "--model", spec,
                          "--threshold", "0.5", "--top", "0", "--no-cues", *COMMON)
        print(f"audit {name} ({spec}) at 0.5, no cues: {seconds:.0f} s")
    for a, b in PAIRS:
        out = args.out / f"{a}_vs_{b}_at_0.5"
        explain("compare", str(args.out / a), str(args.out / b), "-o", str(out))
        s = json.loads((out / "compare.json").read_text())
        m = s["own_thresholds"]["metrics"]["fpr"]
        print(f"{a} vs {b} at 0.5: FPR {m['a']:.3f} -> {m['b']:.3f}, delta {m['delta']:+.3f} "
              f"[{m['low']:+.3f}, {m['high']:+.3f}], McNemar p "
              f"{s['own_thresholds']['mcnemar']['p']}")
    for name, spec in MODELS.items():
        t = threshold_for(args.out / name, args.fps)
        seconds = explain("audit", str(data), "-o", str(args.out / name), "--model", spec,
                          "--threshold", f"{t:.9f}", "--top", str(args.fps), *COMMON)
        cues = list(csv.DictReader(open(args.out / name / "cues.csv", encoding="utf-8"))) \
            if (args.out / name / "cues.csv").exists() else []
        print(f"audit {name} at {t:.6f} ({args.fps} false positives) with cues: {seconds:.0f} s, "
              f"{len(cues)} cues")
        for c in cues:
            print(f"  cue {c['cue']} rank {c['rank']}: strength {c['strength']}, fp_share "
                  f"{c['fp_share']}, tn_share {c['tn_share']}, drop {c['mean_drop']}, paste "
                  f"gain {c['paste_gain']}")
    for a, b in PAIRS:
        out = args.out / f"{a}_vs_{b}"
        seconds = explain("compare", str(args.out / a), str(args.out / b), "-o", str(out))
        s = json.loads((out / "compare.json").read_text())
        print(f"compare {a} (A) vs {b} (B): {seconds:.0f} s, {s['cues']['model_calls']} images "
              f"scored by B; {s['cues']['reason'] or ''}")
        path = out / "cue_changes.csv"
        if path.exists():
            print("  " + path.read_text().replace("\n", "\n  ").rstrip())


if __name__ == "__main__":
    main()
