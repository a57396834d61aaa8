"""Throughput of `explain audit` on CPU: scoring alone, scoring with part detection, and the full
audit with occlusion heatmaps for the top-k false positives and negatives.

    python scripts/bench_audit.py [--images 200] [--top 10] [--side 512] [--model open-nsfw:auto]

The dataset is written as JPEG files: random crops of scikit-image photos resized to SIDE pixels on
the long side, labelled sfw/nsfw in turn (so that the low threshold used here gives false
positives and negatives). Each configuration runs in a fresh output folder; the baseline is the
naive loop (load, score one image at a time) that `explain score` does.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

from explain.audit import AuditOptions, audit
from explain.images import iter_image_files, load_image, to_tensor
from explain.models import load

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "colorwheel", "cat", "motorcycle_left")


def write_dataset(folder: Path, n: int, side: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    photos = [getattr(data, name)()[:, :, :3] for name in PHOTOS if hasattr(data, name)]
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = img[y:y + ch, x:x + cw]
        scale = side / max(ch, cw)
        crop = cv2.resize(crop, (round(cw * scale), round(ch * scale)),
                          interpolation=cv2.INTER_AREA)
        label = "nsfw" if i % 2 else "sfw"
        path = folder / label / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(path, quality=90)


def naive(folder: Path, model: str) -> float:
    clf = load(model, "cpu")
    paths = list(iter_image_files([folder]))
    start = time.perf_counter()
    for p in paths:
        clf.predict(to_tensor(load_image(p)))
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--model", default="open-nsfw:auto")
    parser.add_argument("--threshold", type=float, default=0.02)
    args = parser.parse_args()
    load_avg = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root / "data", args.images, args.side)
        rows = [("naive loop (load + predict one by one)", naive(root / "data", args.model),
                 None, "")]
        configs = (
            ("audit: scoring only", dict(concepts=False, top=0)),
            ("audit: scoring + NudeNet parts + part drops", dict(concepts=True, top=0)),
            (f"audit: full, heatmaps for top {args.top} FP + FN", dict(concepts=True,
                                                                     top=args.top)),
        )
        for i, (name, kw) in enumerate(configs):
            o = AuditOptions(threshold=args.threshold, box=64, stride=48, mosaic=0, **kw)
            start = time.perf_counter()
            result = audit(root / "data", root / f"out{i}", model=args.model, device="cpu",
                           options=o)
            total = time.perf_counter() - start
            s = result.seconds
            detail = (f"score stage {s['score']:.1f} s, heatmaps {result.heatmaps} in "
                      f"{s['heatmaps']:.1f} s, outputs {s['outputs']:.1f} s")
            rows.append((name, args.images / s["score"], args.images / total, detail))
    print(f"\n{args.images} JPEGs, long side {args.side}px, model {args.model} on CPU "
          f"({os.cpu_count()} cores, load average {load_avg:.1f} at start)\n")
    print(f"{'configuration':48} {'scoring img/s':>14} {'end-to-end img/s':>17}  details")
    for name, scoring, overall, detail in rows:
        overall_text = f"{overall:17.1f}" if overall is not None else f"{'':17}"
        print(f"{name:48} {scoring:14.1f} {overall_text}  {detail}")


if __name__ == "__main__":
    main()
