"""Benchmark the similarity grid on crops of skimage.data photos: time per stage and quality.

Crops of the same photo should end up together, so besides the k-NN preservation of the layout
(vs random placement) the table shows how often grid neighbours come from the same photo (vs
random). Each N runs with open_nsfw's penultimate features and, for comparison, raw pixels.

    python scripts/bench_grid.py              # N = 1024 and 4096
    python scripts/bench_grid.py --sizes 256  # a quick run
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

from explain.grid import draw_mosaic, similarity_grid
from explain.models import load

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "camera")
CROP_PX = 96
SIDE_RANGE = (0.15, 0.35)


def photo_crops(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """``n`` square crops, photos in turn; side 15–35 % of the photo's short side, resized to
    CROP_PX × CROP_PX (small, like a dataset of thumbnails)."""
    rng = np.random.default_rng(seed)
    photos = {}
    for name in PHOTOS:
        img = getattr(data, name)()
        photos[name] = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
    crops, labels = [], []
    for i in range(n):
        name = PHOTOS[i % len(PHOTOS)]
        img = photos[name]
        side = int(min(img.shape[:2]) * rng.uniform(*SIDE_RANGE))
        y, x = (int(rng.integers(0, d - side + 1)) for d in img.shape[:2])
        crop = cv2.resize(img[y:y + side, x:x + side], (CROP_PX, CROP_PX),
                          interpolation=cv2.INTER_AREA)
        crops.append(crop)
        labels.append(name)
    return crops, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--model", default="open-nsfw:auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    clf = load(args.model)
    print(f"model {getattr(clf, 'name', args.model)} on {clf.device}, loaded in "
          f"{time.perf_counter() - start:.1f} s; {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f} (other work on the machine slows every stage)")
    print(f"data: {len(PHOTOS)} skimage.data photos ({', '.join(PHOTOS)}), crops taken in turn, "
          f"side {SIDE_RANGE[0]:.0%}-{SIDE_RANGE[1]:.0%} of the photo's short side, resized to "
          f"{CROP_PX}x{CROP_PX}; features: the model's preprocessing upscales them to "
          f"{clf.input_size} (open_nsfw: 256x256, centre crop 224); pixels: 32x32 RGB")
    print("grid: the smallest square holding N; t-SNE perplexity 30, one thread; cost squared "
          "distance; quality k = 8, grid radius 1, random = mean of 10 seeded placements\n")
    header = (f"{'N':>5} {'embedding':<9} {'grid':>5} {'embed s':>8} {'t-SNE s':>8} "
              f"{'assign s':>8} {'draw s':>7} {'kNN kept':>8} {'random':>7} {'ratio':>6} "
              f"{'same photo':>10} {'random':>7} {'ratio':>6}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            images, labels = photo_crops(n, args.seed)
            for embed in ("features", "pixels"):
                g = similarity_grid(images, clf if embed == "features" else None, embed=embed,
                                    labels=labels, seed=args.seed)
                t = time.perf_counter()
                Image.fromarray(draw_mosaic(g, color_by="label")).save(Path(tmp) / "grid.png")
                draw_s = time.perf_counter() - t
                q, s = g.quality, g.seconds
                rows.append(f"{n:>5} {embed:<9} {g.shape[0]:>2}x{g.shape[1]:<2} "
                            f"{s['embed']:>8.1f} {s['tsne']:>8.1f} {s['assign']:>8.2f} "
                            f"{draw_s:>7.2f} {q.layout:>8.3f} {q.random:>7.3f} {q.ratio:>6.1f} "
                            f"{q.label_layout:>10.3f} {q.label_random:>7.3f} "
                            f"{q.label_ratio:>6.1f}")
                print(f"  done N={n} {embed}: {g.embed}; {n / s['embed']:.0f} img/s embedding",
                      flush=True)
    print()
    print(header)
    print("\n".join(rows))
    print(f"\ntotal {time.perf_counter() - start:.0f} s, load average now "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
