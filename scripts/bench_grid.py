"""Benchmark the similarity grid's layouts: DPQ16, k-NN ratio, seconds and peak memory.

Data: square crops of skimage.data photos (crops of one photo should sit together) embedded
with open_nsfw's penultimate features (or raw 32×32 pixels where --cheap-from says so: the
16,384-image runs, whose embedding alone would take most of an hour on this CPU), and random
RGB colours (solid images, raw pixels). Each layout runs in its own process (so its peak
memory is its own: the resident peak of a Python process with numpy, torch and the features
loaded); the peer is the authors' FLAS (``vc-flas``) at its best settings on the same
features. The end-to-end row runs the command users run, ``explain grid`` in its own process,
on the crops written as PNG files in label folders: reading, embedding (scores only where the
embedder is the model, or with --scores), layout (auto), quality, the PNG (when it fits
8192 px) and grid.html with its tiles.

    python scripts/bench_grid.py                         # N = 1024, 4096, 16384
    python scripts/bench_grid.py --sizes 1024 --layouts auto flas
    python scripts/bench_grid.py --sizes 16384 --layouts --no-peer   # only end to end
    python scripts/bench_grid.py --sizes 4096 --layouts --no-peer --cheap-from 0  # pixels

``--device auto`` (the default) embeds and scores on CUDA when torch sees a GPU, naming the card,
end to end too (``explain grid --device``); without one it says "no GPU on this machine" and
runs on the CPU. The layouts run on the CPU either way.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "camera")
CROP_PX = 96
SIDE_RANGE = (0.15, 0.35)
LAYOUTS = ("tsne-jv", "tsne-jv+polish", "flas", "tsne-snap", "auto")
PEER = {"radius_decay": 0.995, "max_swap_positions": 25}  # the best vc-flas settings


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
        crops.append(cv2.resize(img[y:y + side, x:x + side], (CROP_PX, CROP_PX),
                                interpolation=cv2.INTER_AREA))
        labels.append(name)
    return crops, labels


def colours(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` solid 8×8 images of random RGB colours."""
    rgb = np.random.default_rng(seed).integers(0, 256, size=(n, 3), dtype=np.uint8)
    return [np.broadcast_to(c, (8, 8, 3)).copy() for c in rgb]


def peak_mib() -> float:
    """This process's resident peak (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_layout(path: str, layout: str, seed: int) -> dict:
    """In a child process: lay the saved features out, measure, return the row."""
    from explain.grid import arrange, grid_quality, grid_shape

    x = np.load(path)
    shape = grid_shape(len(x))
    wall, cpu = time.perf_counter(), time.process_time()
    if layout == "vc-flas":
        import vc_flas

        from explain.grid import dpq_scores, grid_cells
        grid = vc_flas.Grid.from_features(x.astype(np.float32), size=shape)
        sorting = vc_flas.flas(grid, seed=seed, **PEER).sorting.ravel()
        cells = np.empty((len(x), 2), dtype=np.int64)
        cells[sorting[sorting >= 0]] = grid_cells(shape)[sorting >= 0]
        seconds = time.perf_counter() - wall
        dpq, kept, note = dpq_scores(x, [cells])[0], "vc-flas", ""
    else:
        laid = arrange(x, shape, layout=layout, seed=seed)
        seconds = time.perf_counter() - wall
        cells, dpq, kept = laid.cells, laid.dpq, laid.layout
        note = " ".join(f"{k} {v:.1f}s" for k, v in laid.seconds.items())
    cpu = time.process_time() - cpu
    quality = grid_quality(x, cells, shape, dpq=dpq, seed=seed)
    return {"layout": layout, "kept": kept, "dpq": dpq, "ratio": quality.ratio,
            "seconds": seconds, "cpu": cpu, "peak_mib": peak_mib(), "steps": note}


def write_folder(n: int, seed: int, folder: Path) -> None:
    """The ``n`` crops as PNG files in label sub-folders (``folder/photo/00000.png``): the
    folder a user gives ``explain grid``."""
    from PIL import Image

    images, labels = photo_crops(n, seed)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / label / f"{i:05d}.png")


def end_to_end(n: int, embed: str, model: str, out: str, seed: int, scores: bool,
               device: str) -> dict:
    """``explain grid`` as users run it: the crops written as PNG files in label folders (not
    timed), then ``python -m explain grid`` in its own process (reading, embedding, layout
    auto, quality, the PNG when it fits 8,192 px, grid.html and its tiles). Wall seconds,
    CPU seconds and resident peak are that process's (``os.wait4``)."""
    folder, grid = Path(out) / "images", Path(out) / "grid.png"
    write_folder(n, seed, folder)
    command = [sys.executable, "-m", "explain", "grid", str(folder), "-o", str(grid),
               "--embed", embed, "--seed", str(seed), "--model", model,
               "--scores" if scores else "--no-scores", "--device", device]
    log = Path(out) / "log.txt"
    with log.open("w") as sink:
        wall = time.perf_counter()
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - wall
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"explain grid exited {proc.returncode}: "
                           + log.read_text().strip().splitlines()[-1])
    doc = json.loads(grid.with_suffix(".json").read_text())
    times = next(line for line in log.read_text().splitlines() if " images on " in line)
    return {"layout": "explain grid", "kept": doc["layout"], "dpq": doc["quality"]["dpq"],
            "ratio": doc["quality"]["ratio"], "seconds": seconds,
            "cpu": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024,
            "steps": times[times.index("(") + 1:times.index(")")]}


def child(*args: str) -> dict:
    """Run this script with ``args`` in a fresh process; its JSON answer."""
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        return {"layout": args[1] if len(args) > 1 else args[0], "error":
                done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def features(images: list[np.ndarray], embed: str, model: str, device: str
             ) -> tuple[np.ndarray, float]:
    """The embeddings of ``images`` and the embedding's throughput (images/s)."""
    from explain.grid import Embedder
    from explain.grid.embed import resize
    from explain.models import load

    embedder = Embedder(embed, load(model, device) if embed == "features" else None)
    start, parts = time.perf_counter(), []
    for lo in range(0, len(images), 64):
        parts.append(embedder([resize(img, embedder.size) for img in images[lo:lo + 64]]))
    return np.concatenate(parts), len(images) / (time.perf_counter() - start)


def raw_throughput(model: str, device: str) -> float:
    """open_nsfw's own predict on ready 64-image float batches at its input size (images/s)."""
    import torch

    from explain.models import load
    clf = load(model, device)
    batch = torch.rand(64, 3, *clf.input_size, device=clf.device)
    clf.predict(batch)
    if clf.device.type == "cuda":
        torch.cuda.synchronize(clf.device)
    start = time.perf_counter()
    for _ in range(3):
        clf.predict(batch)
    if clf.device.type == "cuda":
        torch.cuda.synchronize(clf.device)
    return 3 * 64 / (time.perf_counter() - start)


def row(dataset: str, n: int, r: dict, peer: dict | None) -> str:
    if "error" in r:
        return f"{dataset:<16} {n:>6} {r['layout']:<15} failed: {r['error']}"
    vs = ""
    if peer and "error" not in peer and r["layout"] != "vc-flas":
        vs = f"{r['dpq'] / peer['dpq']:>6.3f} {r['seconds'] / peer['seconds']:>7.1f}"
    return (f"{dataset:<16} {n:>6} {r['layout']:<15} {r['kept']:<15} {r['dpq']:>6.3f} "
            f"{r['ratio']:>6.1f} {r['seconds']:>8.1f} {r['cpu']:>7.1f} {r['peak_mib']:>7.0f} "
            f"{vs:<14} {r['steps']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--layouts", nargs="*", default=list(LAYOUTS),
                        help="layouts run alone (none: only the end-to-end row)")
    parser.add_argument("--no-peer", action="store_true", help="skip vc-flas")
    parser.add_argument("--model", default="open-nsfw:onnx")
    parser.add_argument("--cheap-from", type=int, default=8192,
                        help="from this N on, embed with raw pixels instead of the model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scores", action="store_true",
                        help="end to end: score the tiles also when embedding by pixels")
    parser.add_argument("--device", default="auto",
                        help="auto (default: cuda when torch sees one), cpu, cuda, cuda:N")
    args = parser.parse_args()
    from explain.models.base import default_device, device_label, gpu_line

    print(gpu_line(), flush=True)
    device = str(default_device(args.device))
    on = "" if device == "cpu" else f" on {device_label(device)}"

    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the start "
          "(other work on the machine slows every wall-clock figure; cpu = this process's CPU "
          "seconds)")
    print(f"model {args.model}{on}: raw predict {raw_throughput(args.model, device):.1f} "
          "images/s on ready "
          f"batches of 64; peer: vc-flas {PEER}\n")
    header = (f"{'data':<16} {'N':>6} {'layout':<15} {'kept':<15} {'DPQ16':>6} {'kNN x':>6} "
              f"{'wall s':>8} {'cpu s':>7} {'peak MiB':>7} {'vs peer: DPQ, time':<19} steps")
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            embed = "pixels" if n >= args.cheap_from else "features"
            images, _ = photo_crops(n, args.seed)
            sets = []
            if args.layouts or not args.no_peer:
                sets.append((f"crops/{embed}", *features(images, embed, args.model, device)))
            if n <= 4096 and (args.layouts or not args.no_peer):
                sets.append(("colours/pixels", *features(colours(n, args.seed), "pixels",
                                                          args.model, device)))
            for name, x, speed in sets:
                path = str(Path(tmp) / f"{name.replace('/', '-')}-{n}.npy")
                np.save(path, x)
                print(f"  {name} N={n}: embedded at {speed:.1f} images/s", flush=True)
                peer = None
                if not args.no_peer:
                    peer = child("--one", "vc-flas", path, str(args.seed))
                    lines.append(row(name, n, peer, None))
                for layout in args.layouts:
                    if layout.startswith("tsne-jv") and n > 4096:
                        continue
                    result = child("--one", layout, path, str(args.seed))
                    lines.append(row(name, n, result, peer))
                    print("  " + lines[-1], flush=True)
            out = Path(tmp) / f"e2e-{n}"
            out.mkdir()
            scores = "--scores" if embed == "features" or args.scores else "--no-scores"
            lines.append(row(f"crops/{embed}", n, child("--e2e", str(n), embed, args.model,
                                                         str(out), str(args.seed), scores,
                                                         device), None))
            print("  " + lines[-1], flush=True)
    print()
    print(header)
    print("\n".join(lines))
    print(f"\nload average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(one_layout(sys.argv[3], sys.argv[2], int(sys.argv[4]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--e2e":
        print(json.dumps(end_to_end(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5],
                                    int(sys.argv[6]), sys.argv[7] == "--scores", sys.argv[8])))
    else:
        main()
