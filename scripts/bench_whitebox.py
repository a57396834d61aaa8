"""Time per image of each white-box method on open_nsfw, at batch 1 and batch 16.

    python scripts/bench_whitebox.py [--device cpu|cuda] [--images 16] [--repeats 2] [--threads N]

Images: 288×288 crops of the scikit-image photos (one size, so a batch is one tensor). Each
(method, batch) is run once to warm up, then ``repeats`` times over ``images`` images; the table
shows the best run's seconds per image (the machine may be shared), end to end: preprocessing,
forward, backward, copy back to numpy.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from skimage import data

from explain import deconvnet, gradcam, guided_backprop
from explain.models import load

METHODS = {
    "deconvnet": lambda clf, imgs, b: deconvnet(clf, imgs, batch_size=b),
    "guided_backprop": lambda clf, imgs, b: guided_backprop(clf, imgs, batch_size=b),
    "deconvnet stages.3 max": lambda clf, imgs, b: deconvnet(clf, imgs, layer="stages.3",
                                                             batch_size=b),
    "guided stages.3 max": lambda clf, imgs, b: guided_backprop(clf, imgs, layer="stages.3",
                                                               batch_size=b),
    "gradcam": lambda clf, imgs, b: gradcam(clf, imgs, batch_size=b),
    "guided gradcam": lambda clf, imgs, b: gradcam(clf, imgs, guided=True, batch_size=b),
}


def crops(n: int, side: int = 288) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        y = int(rng.integers(0, photo.shape[0] - side + 1))
        x = int(rng.integers(0, photo.shape[1] - side + 1))
        out.append(np.ascontiguousarray(photo[y:y + side, x:x + side]))
    return out


def seconds_per_image(fn, clf, images: list[np.ndarray], batch: int, repeats: int,
                      device: torch.device) -> float:
    fn(clf, images[:batch], batch)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(clf, images, batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / len(images))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clf = load("open-nsfw", args.device)
    images = crops(args.images)
    device_name = torch.cuda.get_device_name() if clf.device.type == "cuda" else \
        platform.processor() or platform.machine()
    print(f"open-nsfw (torch) on {clf.device} ({device_name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          f"{len(images)} images of 288x288, best of {args.repeats}")
    print(f"{'method':<24} {'batch 1 (ms/img)':>17} {'batch 16 (ms/img)':>18}")
    for name, fn in METHODS.items():
        times = [seconds_per_image(fn, clf, images, b, args.repeats, clf.device) * 1000
                 for b in (1, 16)]
        print(f"{name:<24} {times[0]:>17.1f} {times[1]:>18.1f}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
