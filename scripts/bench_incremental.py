"""Exact incremental inference against full re-inference: open_nsfw (torch), same windows and
batch size, on two scikit-image photos at box/stride 64/48, 32/8 and 16/4 (original pixels).

Prints per photo and setting: windows, full and incremental wall time, their ratio, the max
|difference| of the maps, and the peak RSS of each path (each measured in a child process so
that peaks do not mix); then the approximate path (``tau``) with its speed-up and SSIM against
the exact map. Usage: ``python scripts/bench_incremental.py [--quick] [--tau 0.5 0.7]``.
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


def child(photo: str, box: int, stride: int, incremental: bool, tau: float | None) -> None:
    """One map in this process; prints JSON with seconds, peak RSS and the map."""
    import torch
    from skimage import data

    from explain import occlusion_map
    from explain.models import load

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    clf = load("open-nsfw:torch", "cpu")
    image = getattr(data, photo)()
    occlusion_map(clf, image[:64, :64], box=32, stride=32, incremental=incremental)  # warm-up
    start = time.perf_counter()
    hm = occlusion_map(clf, image, box=box, stride=stride, incremental=incremental, tau=tau)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(f"/tmp/bench_incremental_{os.getpid()}.npy", hm.values)
    print(json.dumps({"seconds": seconds, "rss_mb": rss, "windows": hm.windows,
                      "ran": hm.params["incremental"],
                      "map": f"/tmp/bench_incremental_{os.getpid()}.npy"}))


def run(photo: str, box: int, stride: int, incremental: bool, tau: float | None = None) -> dict:
    args = [sys.executable, __file__, "--child", photo, str(box), str(stride),
            str(int(incremental)), str(tau)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    path = result.pop("map")
    result["values"] = np.load(path)
    os.unlink(path)
    return result


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    return float(structural_similarity(a, b, data_range=float(hi - lo) or 1.0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="64/48 and 32/8 on one photo")
    parser.add_argument("--tau", type=float, nargs="*", default=[0.5, 0.7])
    ns = parser.parse_args()
    photos = PHOTOS[:1] if ns.quick else PHOTOS
    settings = SETTINGS[:2] if ns.quick else SETTINGS
    print(f"load average {os.getloadavg()}; CPU; open-nsfw:torch; batch = the default")
    print(f"{'photo':10} {'box/stride':>10} {'windows':>7} {'full s':>8} {'incr s':>8} "
          f"{'ratio':>6} {'max|err|':>9} {'RSS full':>9} {'RSS incr':>9}")
    for photo in photos:
        for box, stride in settings:
            full = run(photo, box, stride, False)
            inc = run(photo, box, stride, True)
            err = float(np.abs(full["values"] - inc["values"]).max())
            print(f"{photo:10} {box:>5}/{stride:<4} {full['windows']:>7} {full['seconds']:8.2f} "
                  f"{inc['seconds']:8.2f} {full['seconds'] / inc['seconds']:6.2f} {err:9.2e} "
                  f"{full['rss_mb']:8.0f}M {inc['rss_mb']:8.0f}M")
            for tau in ns.tau:
                approx = run(photo, box, stride, True, tau)
                print(f"{'':10} {'tau ' + str(tau):>10} {'':7} {'':8} {approx['seconds']:8.2f} "
                      f"{full['seconds'] / approx['seconds']:6.2f} SSIM vs exact "
                      f"{ssim(inc['values'], approx['values']):.3f}")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, photo, box, stride, inc, tau = sys.argv
        child(photo, int(box), int(stride), inc == "1", None if tau == "None" else float(tau))
    else:
        main()
