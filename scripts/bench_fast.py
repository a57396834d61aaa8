"""Fine occlusion maps fast: drill-down and incremental inference against the exact map, on
real-signal photos.

open_nsfw scores every whole scikit-image photo below 0.2, where the map is mostly noise; square
crops of them (a seeded random search) that it scores ≥ 0.5 once resized to 256×256 carry a real
signal. Per image, window setting (box/stride in pixels) and backend, prints: windows evaluated
and in all, wall time of each variant and of the exact map, the ratio, and the variant's map
against the exact one: SSIM, Spearman, overlap of the top-10 % pixels, max |error| where the
variant claims to be exact (drill-down: pixels whose covering windows were all scored;
incremental inference: every pixel). Variants: exact (full re-inference), incr (exact
incremental inference, torch only), drill R (drill-down), both R (drill-down through
incremental inference, torch only). Then the means over images. All variants of a row group
run back to back in one process, exact first.

    python scripts/bench_fast.py [--crops 1] [--photos astronaut] [--settings 64/48,32/8,16/4]
        [--backends onnx,torch] [--r 0.05,0.1] [--device cuda --batch-size 64]

``--device auto`` (the default) runs on CUDA when torch sees a GPU, naming the card; without one
it says "no GPU on this machine" and runs on the CPU.
"""

from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np
import torch

import explain.occlusion as occlusion
from explain.choices import FAST_DRILL_DOWN
from explain.drill_down import exact_pixels
from explain.images import to_tensor
from explain.models import load
from explain.models.base import default_device, device_label, gpu_line
from explain.occlusion import occlusion_map
from explain.windows import window_grid

PHOTOS = ("astronaut", "chelsea", "retina", "coffee", "rocket")
SIDE = 256


def find_crops(clf, count: int, seed: int = 0, threshold: float = 0.5,
               sides: tuple[int, int] = (64, 192), batch: int = 32) -> list[tuple[str, tuple, float,
                                                                                  np.ndarray]]:
    """``count`` real-signal images: square crops (side in ``sides``) of :data:`PHOTOS` that
    ``clf`` scores ≥ ``threshold`` at SIDE×SIDE, no two of one photo overlapping by more than half;
    a seeded search, so the same seed gives the same crops. Each: (photo, (top, left, side),
    score, the crop resized to SIDE×SIDE uint8)."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = {name: getattr(skimage.data, name)()[..., :3] for name in PHOTOS}
    found: list[tuple[str, tuple, float, np.ndarray]] = []
    while len(found) < count:
        name = PHOTOS[int(rng.integers(len(PHOTOS)))]
        img = photos[name]
        h, w = img.shape[:2]
        boxes = []
        for _ in range(batch):
            side = int(rng.integers(sides[0], min(sides[1], h, w) + 1))
            boxes.append((int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1)), side))
        crops = [cv2.resize(img[t:t + s, le:le + s], (SIDE, SIDE), interpolation=cv2.INTER_AREA
                            if s > SIDE else cv2.INTER_CUBIC) for t, le, s in boxes]
        with torch.no_grad():
            p = clf.predict(torch.cat([to_tensor(c) for c in crops]))[:, 1].numpy()
        for k in np.argsort(-p):
            if p[k] < threshold or len(found) == count:
                break
            if not any(n == name and _overlap(b, boxes[k]) > 0.5 for n, b, _, _ in found):
                found.append((name, boxes[k], float(p[k]), crops[k]))
    return found


def _overlap(a: tuple, b: tuple) -> float:
    """Intersection over the smaller of two square boxes (top, left, side)."""
    dy = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dx = min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1])
    return max(dy, 0) * max(dx, 0) / min(a[2], b[2]) ** 2


def variants(fractions: list[float], backend: str) -> dict[str, dict]:
    """name → extra ``occlusion_map`` arguments; "exact" (full re-inference of every window) is
    the reference. On the torch backend also exact incremental inference ("incr") and
    drill-down through it ("both"); onnxruntime cannot reuse activations."""
    out: dict[str, dict] = {"exact": {"incremental": False}}
    if backend == "torch":
        out["incr"] = {"incremental": True}
    for r in fractions:
        out[f"drill {r:g}"] = {"drill_down": r, "incremental": False}
        if backend == "torch":
            out[f"both {r:g}"] = {"drill_down": r, "incremental": True}
    return out


def compare(exact: np.ndarray, other: np.ndarray, exact_here: np.ndarray) -> dict[str, float]:
    """``other`` against ``exact``: SSIM (data range = the exact map's), Spearman over pixels, the
    share of the exact top-10 % pixels also in other's top 10 %, max |error| where ``other``
    claims to be exact (``exact_here``; nan when nowhere)."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    span = float(exact.max() - exact.min()) or 1.0
    k = max(1, exact.size // 10)
    top_e = set(np.argsort(-exact.ravel(), kind="stable")[:k].tolist())
    top_o = set(np.argsort(-other.ravel(), kind="stable")[:k].tolist())
    err = np.abs(other - exact)[exact_here]
    return {"ssim": float(structural_similarity(exact, other, data_range=span)),
            "spearman": float(spearmanr(exact.ravel(), other.ravel())[0]),
            "top10": len(top_e & top_o) / k,
            "max_err": float(err.max()) if err.size else float("nan")}


def timed_map(clf, img: np.ndarray, box: int, stride: int, batch_size: int | None,
              kwargs: dict) -> tuple[object, float, np.ndarray | None]:
    """(the map, its wall seconds, the windows drill-down scored or None): the mask is taken from
    the library's own call (:func:`explain.drill_down.drilled_drops`), not recomputed."""
    kept: dict[str, np.ndarray] = {}
    real = occlusion.drill_down

    def keep(*args):
        est, known = real(*args)
        kept["known"] = known
        return est, known

    occlusion.drill_down = keep
    try:
        start = time.perf_counter()
        hm = occlusion_map(clf, img, box=box, stride=stride, batch_size=batch_size, **kwargs)
        seconds = time.perf_counter() - start
    finally:
        occlusion.drill_down = real
    return hm, seconds, kept.get("known")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=1, help="real-signal crops (default 1)")
    parser.add_argument("--photos", default="", help="whole scikit-image photos too, e.g. "
                        "astronaut,coffee (their scores are < 0.2: mostly noise)")
    parser.add_argument("--settings", default="64/48,32/8",
                        help="box/stride pairs in pixels (default 64/48,32/8; add 16/4)")
    parser.add_argument("--backends", default="onnx,torch")
    parser.add_argument("--r", default=str(FAST_DRILL_DOWN),
                        help=f"drill-down fractions (default {FAST_DRILL_DOWN}, --fast's)")
    parser.add_argument("--seed", type=int, default=0, help="the crop search's seed")
    parser.add_argument("--device", default="auto",
                        help="auto (default: cuda when torch sees one), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    print(gpu_line(), flush=True)
    device = default_device(args.device)
    clfs = {b: load("open-nsfw" if b == "torch" else f"open-nsfw:{b}", device)
            for b in args.backends.split(",")}
    search = clfs.get("onnx") or next(iter(clfs.values()))
    images = [(f"{name}@{t},{le},{s} p={p:.2f}", img)
              for name, (t, le, s), p, img in find_crops(search, args.crops, args.seed)]
    if args.photos:
        import skimage.data

        images += [(name, getattr(skimage.data, name)()[..., :3])
                   for name in args.photos.split(",")]
    settings = [tuple(int(v) for v in s.split("/")) for s in args.settings.split(",")]
    fractions = [float(r) for r in args.r.split(",")]
    print(f"device {device_label(device)}, torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.2f}; variants "
          f"{', '.join(dict.fromkeys(v for b in clfs for v in variants(fractions, b)))}",
          flush=True)
    head = (f"{'image':28}{'backend':>8}{'box/s':>7}{'variant':>12}{'windows':>12}{'sec':>8}"
            f"{'speed-up':>9}{'SSIM':>7}{'Spearman':>9}{'top10':>7}{'max|err|':>10}{'load':>6}")
    print(head + "\n" + "-" * len(head), flush=True)
    summary: dict[tuple, list] = {}
    for label, img in images:
        for box, stride in settings:
            for backend, clf in clfs.items():
                clf.predict(torch.rand(4, 3, 64, 64, device=device))  # warm
                exact = None
                for name, kwargs in variants(fractions, backend).items():
                    hm, seconds, known = timed_map(clf, img, box, stride, args.batch_size,
                                                   kwargs)
                    p = hm.params
                    line = (f"{label[:28]:28}{backend:>8}{f'{box}/{stride}':>7}{name:>12}"
                            f"{p['windows_evaluated']:>6}/{p['windows_total']:<5}{seconds:>8.2f}")
                    if exact is None:
                        exact = (hm, seconds)
                        print(line + f"{'1.00':>9}{'':>33}{os.getloadavg()[0]:>6.2f}", flush=True)
                        continue
                    windows = window_grid(img.shape[:2], box, stride)
                    here = (np.ones(img.shape[:2], bool) if known is None
                            else exact_pixels(img.shape[:2], windows, known))
                    m = compare(exact[0].values, hm.values, here)
                    speed = exact[1] / seconds
                    summary.setdefault((backend, f"{box}/{stride}", name), []).append(
                        (speed, m["ssim"], m["spearman"], m["top10"]))
                    print(line + f"{speed:>9.2f}{m['ssim']:>7.3f}{m['spearman']:>9.3f}"
                          f"{m['top10']:>7.3f}{m['max_err']:>10.1e}{os.getloadavg()[0]:>6.2f}",
                          flush=True)
    print("\nmeans over images (speed-up = exact wall time / variant wall time, same run):")
    for (backend, setting, name), rows in summary.items():
        s, ssim, sp, top = np.mean(rows, axis=0)
        print(f"  {backend:6} {setting:6} {name:12} speed-up {s:.2f}  SSIM {ssim:.3f}  "
              f"Spearman {sp:.3f}  top-10% {top:.3f}  ({len(rows)} images)")
    print("max|err|: largest |variant − exact| over the pixels whose covering windows were all "
          "scored (drill-down) — 0 up to float rounding.")


if __name__ == "__main__":
    main()
