"""Exact incremental inference against full re-inference, open_nsfw (torch) on CPU.

For two scikit-image photos (resized to 256², the model's work size, so box/stride are work
pixels and the window counts are the issue's: 25 at 64/48, 841 at 32/8, 3,721 at 16/4), each
setting scores the same windows — the whole grid, or ``--sample`` of them drawn uniformly with a
fixed seed — with the same batch size (the default, 16) through both paths: full re-inference
(``occlusion.occluded_scores`` without a network, what ``occlusion_map(incremental=False)``
runs) and ``incremental.window_scores``. Each path runs in its own child process (peak RSS apart).
Prints windows, seconds per path, their ratio, the model's raw time on as many unmasked inputs
and the incremental path's ratio to it, the ratio of CPU times (steadier than wall time on a
shared machine), max |p difference|; then, on whole maps at 64/48 and 32/8, the approximate
path (``tau``): speed-up (wall and CPU time) over the exact incremental map and the SSIM of its
map against the exact one.

Usage: ``python scripts/bench_incremental.py [--sample 96] [--threads 1] [--tau 0.5 0.7]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

SETTINGS = ((64, 48), (32, 8), (16, 4))
PHOTOS = ("astronaut", "coffee")


def photo(name: str) -> np.ndarray:
    import cv2
    from skimage import data

    return cv2.resize(getattr(data, name)(), (256, 256), interpolation=cv2.INTER_AREA)


def child(name: str, box: int, stride: int, path: str, sample: int, threads: int) -> None:
    """Scores the windows through one path; prints seconds, peak RSS (MB), the scores."""
    import torch

    from explain.images import to_tensor
    from explain.incremental import network_for, window_scores
    from explain.models import load
    from explain.occlusion import occluded_scores
    from explain.perturb import fill_values
    from explain.windows import default_batch_size, window_grid

    torch.set_num_threads(threads)
    clf = load("open-nsfw:torch", "cpu")
    x = to_tensor(photo(name), torch.device("cpu"))
    windows = window_grid((256, 256), box, stride)
    if sample and sample < len(windows):
        windows = windows[np.sort(np.random.default_rng(0).choice(len(windows), sample, False))]
    bounds = torch.from_numpy(windows)
    fill = fill_values(x, "gray", (box, box))
    step = default_batch_size(torch.device("cpu"), (256, 256))

    clf.predict(x)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    if path == "full":
        p = occluded_scores(clf, x, fill, bounds, 1, step, None)
    else:
        p = window_scores(clf, network_for(clf, True), x, fill, bounds, 1, step)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    raw = 0.0
    if path == "full":  # the model's own throughput on as many unmasked inputs
        start = time.perf_counter()
        for lo in range(0, len(bounds), step):
            clf.predict(x.expand(min(step, len(bounds) - lo), -1, -1, -1))
        raw = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "cpu": cpu, "raw": raw, "windows": len(bounds),
                      "batch": step,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "p": p.tolist()}))


def child_map(name: str, box: int, stride: int, tau: float | None, threads: int) -> None:
    """A whole incremental map (exact or with ``tau``); prints seconds and the map."""
    import torch

    from explain import occlusion_map
    from explain.models import load

    torch.set_num_threads(threads)
    clf = load("open-nsfw:torch", "cpu")
    clf.predict(torch.rand(1, 3, 256, 256))
    cpu = time.process_time()
    hm = occlusion_map(clf, photo(name), box=box, stride=stride, incremental=True, tau=tau)
    print(json.dumps({"seconds": hm.seconds, "cpu": time.process_time() - cpu,
                      "values": hm.values.tolist()}))


def spawn(*args: object) -> dict:
    out = subprocess.run([sys.executable, __file__, *map(str, args)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    return float(structural_similarity(a, b, data_range=float(hi - lo) or 1.0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", type=int, default=96,
                        help="windows scored per setting (0: the whole grid)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tau", type=float, nargs="*", default=[0.5, 0.7])
    ns = parser.parse_args()
    print(f"load average {os.getloadavg()}; CPU, {ns.threads} torch thread(s); "
          "open-nsfw:torch; fill gray; batch 16 on both paths")
    print(f"{'photo':10} {'box/stride':>10} {'windows':>8} {'full s':>8} {'incr s':>8} "
          f"{'ratio':>6} {'raw s':>7} {'vs raw':>6} {'CPU ratio':>9} {'max|dp|':>9} "
          f"{'RSS full':>9} {'RSS incr':>9}")
    for name in PHOTOS:
        for box, stride in SETTINGS:
            full = spawn("--child", name, box, stride, "full", ns.sample, ns.threads)
            inc = spawn("--child", name, box, stride, "incremental", ns.sample, ns.threads)
            err = float(np.abs(np.array(full["p"]) - np.array(inc["p"])).max())
            print(f"{name:10} {box:>5}/{stride:<4} {full['windows']:>8} {full['seconds']:8.2f} "
                  f"{inc['seconds']:8.2f} {full['seconds'] / inc['seconds']:6.2f} "
                  f"{full['raw']:7.2f} {full['raw'] / inc['seconds']:6.2f} "
                  f"{full['cpu'] / inc['cpu']:9.2f} {err:9.2e} "
                  f"{full['rss_mb']:8.0f}M {inc['rss_mb']:8.0f}M")
    print(f"load average {os.getloadavg()}")
    print("\napproximate (tau), whole maps: time (wall, CPU) and SSIM against the exact "
          "incremental map")
    for name in PHOTOS:
        for box, stride in SETTINGS[:2]:
            exact = spawn("--map", name, box, stride, None, ns.threads)
            line = (f"{name:10} {box:>5}/{stride:<4} exact {exact['seconds']:6.1f}s "
                    f"(CPU {exact['cpu']:6.1f}s)")
            for tau in ns.tau:
                approx = spawn("--map", name, box, stride, tau, ns.threads)
                line += (f" | tau {tau}: {approx['seconds']:6.1f}s "
                         f"×{exact['seconds'] / approx['seconds']:.2f} "
                         f"(CPU ×{exact['cpu'] / approx['cpu']:.2f}) SSIM "
                         f"{ssim(np.array(exact['values']), np.array(approx['values'])):.3f}")
            print(line)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, n, b, s, how, k, t = sys.argv
        child(n, int(b), int(s), how, int(k), int(t))
    elif len(sys.argv) > 1 and sys.argv[1] == "--map":
        _, _, n, b, s, tau_arg, t = sys.argv
        child_map(n, int(b), int(s), None if tau_arg == "None" else float(tau_arg), int(t))
    else:
        main()
