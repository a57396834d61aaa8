"""Benchmark occlusion_map on open_nsfw against its limit (raw predict) and captum's Occlusion.

For a 512×512 photo, box 64, strides 48 and 16, on the torch and onnxruntime backends, prints:
windows; seconds for ``occlusion_map``; seconds for the network alone on the same number of
inputs (the windows plus the unoccluded image) at the same batch size, on model-ready batches
built before the clock starts (the limit of full re-inference; incremental inference, which
``occlusion_map`` uses on the CPU for torch models where it pays, can beat it); and seconds
for captum ``Occlusion`` on the torch backend at its best ``perturbations_per_eval`` (chosen at
stride 48 among --ppe, default 8, 16, 32 and 64; 1 is slower than all and takes minutes on 2
cores). At stride 48, ``--repeats`` rounds interleave captum (every ppe) and ours (both
backends), so load hits both alike; each figure is the fastest round. captum has no flush last
window, so at stride 48 it evaluates 100 windows where we evaluate 121: the captum ratio is per
window. Runs on CUDA when torch sees one (``--device auto``, the default), naming the card;
without one it says "no GPU on this machine" and runs on the CPU.

    python scripts/bench_occlusion.py [--no-captum-16] [--ppe 8,16,32,64] [--repeats 3]
        [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from captum.attr import Occlusion

from explain import occlusion_map
from explain.images import load_image, to_tensor
from explain.models import load
from explain.models.base import default_device, device_label, gpu_line
from explain.windows import default_batch_size

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "astronaut.jpg"
BOX = 64


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(clf) -> None:
    """One batch before each clock: the first call after captum's large batches pays the
    allocator's page faults, which is not what either side is measuring."""
    batch = default_batch_size(clf.device, clf.input_size)
    clf.predict(torch.rand(batch, 3, *clf.input_size, device=clf.device))
    sync(clf.device)


def time_ours(clf, img: np.ndarray, stride: int) -> tuple[float, int, int]:
    warm_up(clf)
    start = time.perf_counter()
    hm = occlusion_map(clf, img, box=BOX, stride=stride)
    sync(clf.device)
    return time.perf_counter() - start, hm.windows, hm.params["batch_size"]


def time_raw(clf, inputs: int, batch_size: int) -> float:
    """Seconds for the network alone on ``inputs`` inputs in batches of ``batch_size``: batches
    built before the clock starts, already in the model's input form where the adapter takes
    one (``predict_input``: no preprocessing timed), else RGB batches through ``predict``."""
    size = clf.input_size
    full = torch.rand(batch_size, 3, *size, device=clf.device)
    run = clf.predict
    if hasattr(clf, "predict_input"):
        full, run = clf.model_input(full).contiguous(), clf.predict_input
    last = full[: inputs - (math.ceil(inputs / batch_size) - 1) * batch_size]
    batches = [full] * (math.ceil(inputs / batch_size) - 1) + [last]
    warm_up(clf)
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    sync(clf.device)
    return time.perf_counter() - start


def time_captum(clf, img: np.ndarray, stride: int, ppe: int) -> tuple[float, int]:
    x = to_tensor(img, clf.device)
    per_axis = [(side - BOX) // stride + 1 for side in img.shape[:2]]
    sync(clf.device)
    start = time.perf_counter()
    Occlusion(clf.predict).attribute(x, sliding_window_shapes=(3, BOX, BOX),
                                     strides=(3, stride, stride), baselines=0.5, target=1,
                                     perturbations_per_eval=ppe)
    sync(clf.device)
    return time.perf_counter() - start, per_axis[0] * per_axis[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-captum-16", action="store_true",
                        help="run captum at stride 48 only (stride 16 takes the longest)")
    parser.add_argument("--ppe", default="8,16,32,64",
                        help="captum perturbations_per_eval values to try at stride 48")
    parser.add_argument("--repeats", type=int, default=1,
                        help="interleaved rounds at stride 48 (captum at each ppe, then ours on "
                             "each backend); each figure is its fastest round")
    parser.add_argument("--device", default="auto",
                        help="auto (default: cuda when torch sees one), cpu, cuda, cuda:N")
    args = parser.parse_args()
    print(gpu_line(), flush=True)
    device = default_device(args.device)
    img = load_image(SAMPLE)
    if img.shape[:2] != (512, 512):
        img = cv2.resize(img, (512, 512), interpolation=cv2.INTER_AREA)
    backends = {"torch": load("open-nsfw", device), "onnx": load("open-nsfw:onnx", device)}
    for clf in backends.values():
        warm_up(clf)
    print(f"device {device_label(device)}, torch threads {torch.get_num_threads()}, image "
          f"512x512, box {BOX}, load average {os.getloadavg()[0]:.2f}", flush=True)
    torch_clf = backends["torch"]
    ppes = [int(v) for v in args.ppe.split(",")]
    ppe_times: dict[int, tuple[float, int]] = {}
    ours_48: dict[str, tuple[float, int, int]] = {}
    for _ in range(args.repeats):
        for ppe in ppes:
            seconds, windows = time_captum(torch_clf, img, 48, ppe)
            ppe_times[ppe] = min(ppe_times.get(ppe, (seconds, windows)), (seconds, windows))
        for name, clf in backends.items():
            run = time_ours(clf, img, 48)
            ours_48[name] = min(ours_48.get(name, run), run)
    best = min(ppe_times, key=lambda p: ppe_times[p][0])
    print("captum Occlusion (torch backend) at stride 48 by perturbations_per_eval: "
          + ", ".join(f"{p}: {s:.2f} s" for p, (s, _) in ppe_times.items()) + f" -> best {best}"
          + f" (load average {os.getloadavg()[0]:.2f})")
    header = (f"{'backend':8}{'stride':>7}{'windows':>8}{'batch':>6}{'ours s':>9}{'raw s':>8}"
              f"{'raw/ours':>9}{'captum s':>10}{'c.windows':>10}{'captum/ours':>12}{'load':>6}")
    print(header)
    print("-" * len(header), flush=True)
    for stride in (48, 16):
        captum = None
        if stride == 48:
            captum = ppe_times[best]
        elif not args.no_captum_16:
            captum = time_captum(torch_clf, img, stride, best)
        for name, clf in backends.items():
            seconds, windows, batch_size = ours_48[name] if stride == 48 \
                else time_ours(clf, img, stride)
            raw = time_raw(clf, windows + 1, batch_size)
            line = (f"{name:8}{stride:>7}{windows:>8}{batch_size:>6}{seconds:>9.2f}{raw:>8.2f}"
                    f"{raw / seconds:>9.2f}")
            if captum is None:
                line += f"{'skipped':>10}{'':>22}"
            else:
                c_seconds, c_windows = captum
                ratio = (c_seconds / c_windows) / (seconds / windows)
                line += f"{c_seconds:>10.2f}{c_windows:>10}{ratio:>12.2f}"
            print(line + f"{os.getloadavg()[0]:>6.2f}", flush=True)
    print("raw/ours: the share of the limit we reach (1.00 = no overhead beyond predict); "
          "captum/ours: captum's seconds per window over ours (captum always on torch, at its "
          "best ppe); at stride 48 each figure is the fastest of --repeats interleaved rounds.")


if __name__ == "__main__":
    main()
