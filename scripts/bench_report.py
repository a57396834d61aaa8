"""Time a full `explain report` (all methods, default options) and measure the HTML it writes.

    python scripts/bench_report.py [--images 10] [--methods occlusion,sliding,deconv,guided,gradcam]
                                   [--keep report.html]

Uses ten real photos from scikit-image (written as JPEG files), the default open-nsfw model
(black-box methods on the fastest backend, white-box on torch) and prints, per method, the mean
seconds to make a map and to score its faithfulness, then the total time and the report's size.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

from explain.methods import DEFAULT_METHODS
from explain.report import write_report


def photos() -> list[np.ndarray]:
    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
             "immunohistochemistry", "retina", "colorwheel", "logo")
    images = [getattr(data, n)()[:, :, :3] for n in names]
    return [*images, data.astronaut()[:, ::-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--keep", type=Path, help="Also copy the HTML report here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = []
        for i in range(args.images):
            path = folder / f"photo{i:03d}.jpg"
            Image.fromarray(np.ascontiguousarray(photos()[i % 10])).save(path, quality=90)
            paths.append(path)
        start = time.perf_counter()
        report = write_report(paths, folder / "report.html", methods=args.methods)
        seconds = time.perf_counter() - start
        html = (folder / "report.html").stat().st_size
        if args.keep:
            shutil.copyfile(folder / "report.html", args.keep)
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"explain report: {args.images} images, methods {args.methods}, default options, "
          f"model {report.model} + {report.white_model}, {device}")
    print(f"{'method':<18}{'map s/img':>10}{'faith s/img':>12}{'del AUC':>9}{'ins AUC':>9}"
          f"{'rank':>6}")
    for s in sorted(report.summary, key=lambda s: report.methods.index(s["method"])):
        print(f"{s['title']:<18}{s['seconds']:>10.2f}{s['faith_seconds']:>12.2f}"
              f"{s['deletion_auc']:>9.3f}{s['insertion_auc']:>9.3f}{s['rank']:>6}")
    print(f"total {seconds:.1f} s ({seconds / args.images:.1f} s per image); "
          f"HTML {html / 1e6:.2f} MB ({html / args.images / 1e3:.0f} kB per image)")


if __name__ == "__main__":
    main()
