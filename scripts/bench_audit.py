"""Throughput of `explain audit`: scoring alone, scoring with part detection, and the full
audit with occlusion heatmaps for the top-k false positives and negatives.

    python scripts/bench_audit.py [--images 200] [--top 10] [--side 512] [--model open-nsfw:auto]
    python scripts/bench_audit.py --engines [--images 200] [--batch-size 32]
    python scripts/bench_audit.py --manifest-rows 100000 [--engine ray|local] [--batch-size 256]

``--engines``: the scoring stage on the local engine and on the Ray engine with 1 and 2 actors, in
one local Ray instance started once and warmed up by one run (its start-up is not counted). Each
engine scores the first half of the images and then all of them in fresh folders; the difference
of the two times is the marginal cost of the second half, free of the one-off costs (actor start,
model load), and gives the marginal images/s and the per-batch overhead of Ray over local.
``--manifest-rows``: a Parquet manifest of that many rows (hard links to 100 tiny PNGs) scored
by a fake fast model (mean brightness, a `file.py:function` model), with the driver's peak RSS.

The dataset is written as JPEG files: random crops of scikit-image photos resized to SIDE pixels on
the long side, labelled sfw/nsfw in turn (so that the low threshold used here gives false
positives and negatives). Each configuration runs in a fresh output folder; the baseline is the
naive loop (load, score one image at a time) that `explain score` does.

``--device auto`` (the default) runs the model on CUDA when torch sees a GPU, naming the card;
without one it says "no GPU on this machine" and runs on the CPU (the fake fast model of
``--manifest-rows`` always runs on the CPU).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from skimage import data

from explain.audit import AuditOptions, audit
from explain.images import iter_image_files, load_image, to_tensor
from explain.models import load
from explain.models.base import default_device, device_label, gpu_line

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


def naive(folder: Path, model: str, device: str) -> float:
    clf = load(model, device)
    paths = list(iter_image_files([folder]))
    start = time.perf_counter()
    for p in paths:
        clf.predict(to_tensor(load_image(p)))
    return len(paths) / (time.perf_counter() - start)


FAST_MODEL = """
import numpy as np

def score(batch):
    s = batch.reshape(len(batch), -1).mean(axis=1) / 255.0
    return np.stack([1.0 - s, s], axis=1)

score.class_names = ["sfw", "nsfw"]
"""


def engines(args: argparse.Namespace) -> None:
    """Scoring images/s of the local engine and of Ray with 1 and 2 actors (see the docstring)."""
    import ray

    from explain.audit.options import RayOptions

    load_avg = os.getloadavg()[0]
    ray.init(num_cpus=max(os.cpu_count() or 1, 3), include_dashboard=False, log_to_driver=False)
    half = args.images // 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root / "all", args.images, args.side)
        paths = sorted(p for p in (root / "all").rglob("*.jpg"))
        for p in paths[:half]:
            target = root / "half" / p.relative_to(root / "all")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(p, target)
        clf = load(args.model, args.device)
        raw = raw_throughput(clf, args.batch_size)
        o = AuditOptions(threshold=args.threshold, top=0, concepts=False, cues=False, mosaic=0,
                         batch_size=args.batch_size)
        # warm-up: Ray's worker processes started and the library imported in them, once
        audit(root / "half", root / "out-warm-up", model=args.model, device=args.device,
              options=o, engine="ray", ray=RayOptions(actors=2))
        for name, engine, actors in (("local", "local", 1), ("ray, 1 actor", "ray", 1),
                                     ("ray, 2 actors", "ray", 2)):
            times = []
            for part in ("half", "all"):
                result = audit(root / part, root / f"out-{engine}{actors}-{part}",
                               model=args.model, device=args.device, options=o, engine=engine,
                               ray=RayOptions(actors=actors))
                times.append(result.seconds["score"])
            marginal = (args.images - half) / (times[1] - times[0])
            rows.append((name, args.images / times[1], marginal))
    ray.shutdown()
    batches = (args.images - half) / args.batch_size
    local_batch = (args.images - half) / rows[0][2] / batches
    on = "" if args.device == "cpu" else f" on {device_label(args.device)}"
    print(f"\n{args.images} JPEGs, long side {args.side}px, model {args.model}{on}, batch "
          f"{args.batch_size}, scoring only, {os.cpu_count()} CPU cores, load average "
          f"{load_avg:.1f} at start; raw predict() {raw:.1f} img/s\n")
    print(f"{'engine':16} {'stage img/s':>12} {'marginal img/s':>15} {'s/batch':>8} "
          f"{'vs local':>9} {'vs raw predict':>15}")
    for name, overall, marginal in rows:
        per_batch = (args.images - half) / marginal / batches
        print(f"{name:16} {overall:12.1f} {marginal:15.1f} {per_batch:8.3f} "
              f"{(per_batch / local_batch - 1) * 100:+8.0f}% {marginal / raw:14.2f}x")


def raw_throughput(clf: object, batch: int) -> float:
    """Images/s of predict() alone on batches of ``batch`` 256×256 images (median of 3)."""
    x = torch.rand(batch, 3, 256, 256, device=clf.device)
    clf.predict(x)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        clf.predict(x)
        times.append(time.perf_counter() - start)
    return batch / sorted(times)[1]


def manifest(args: argparse.Namespace) -> None:
    """A Parquet manifest of ``args.manifest_rows`` tiny images through a fast fake model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from explain.audit.options import RayOptions

    load_avg = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "fast.py").write_text(FAST_MODEL)
        sources = []
        for i in range(100):
            sources.append(root / f"src{i}.png")
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(sources[-1])
        paths = []
        for i in range(args.manifest_rows):
            path = root / "imgs" / f"{i // 1000:03d}" / f"{i:06d}.png"
            if i % 1000 == 0:
                path.parent.mkdir(parents=True)
            os.link(sources[i % 100], path)
            paths.append(str(path))
        pq.write_table(pa.table({"path": paths, "label": [["sfw", "nsfw"][i % 2]
                                                          for i in range(len(paths))]}),
                       root / "manifest.parquet")
        del paths
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        result = audit(root / "manifest.parquet", root / "out", model=f"{root / 'fast.py'}:score",
                       options=AuditOptions(top=0, concepts=False, cues=False, mosaic=0,
                                            batch_size=args.batch_size),
                       engine=args.engine, ray=RayOptions(actors=1))
        total = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = result.seconds
    print(f"\n{args.manifest_rows} rows (Parquet manifest, 16x16 PNGs), fake fast model, engine "
          f"{args.engine}, batch {args.batch_size}, {os.cpu_count()} CPU cores, load average "
          f"{load_avg:.1f} at start")
    print(f"scored {result.scored}, failed {result.failed}; list {s['list']:.1f} s, score "
          f"{s['score']:.1f} s ({result.scored / s['score']:.0f} img/s), outputs "
          f"{s['outputs']:.1f} s, total {total:.1f} s")
    print(f"driver peak RSS {peak:.0f} MiB ({before:.0f} MiB before the audit)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--model", default="open-nsfw:auto")
    parser.add_argument("--threshold", type=float, default=0.02)
    parser.add_argument("--engines", action="store_true",
                        help="local vs Ray with 1 and 2 actors, scoring only")
    parser.add_argument("--manifest-rows", type=int, default=0,
                        help="a Parquet manifest of this many tiny images, fake fast model")
    parser.add_argument("--engine", default="ray", choices=("local", "ray"))
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="auto",
                        help="auto (default: cuda when torch sees one), cpu, cuda, cuda:N")
    args = parser.parse_args()
    print(gpu_line(), flush=True)
    args.device = str(default_device(args.device))
    if args.manifest_rows:
        args.batch_size = args.batch_size or 256
        return manifest(args)
    if args.engines:
        args.batch_size = args.batch_size or 32
        return engines(args)
    load_avg = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root / "data", args.images, args.side)
        rows = [("naive loop (load + predict one by one)",
                 naive(root / "data", args.model, args.device), None, "")]
        configs = (
            ("audit: scoring only", dict(concepts=False, top=0)),
            ("audit: scoring + NudeNet parts + part drops", dict(concepts=True, top=0)),
            (f"audit: full, heatmaps for top {args.top} FP + FN", dict(concepts=True,
                                                                     top=args.top)),
        )
        for i, (name, kw) in enumerate(configs):
            o = AuditOptions(threshold=args.threshold, box=64, stride=48, mosaic=0, **kw)
            start = time.perf_counter()
            result = audit(root / "data", root / f"out{i}", model=args.model,
                           device=args.device, options=o)
            total = time.perf_counter() - start
            s = result.seconds
            detail = (f"score stage {s['score']:.1f} s, heatmaps {result.heatmaps} in "
                      f"{s['heatmaps']:.1f} s, outputs {s['outputs']:.1f} s")
            rows.append((name, args.images / s["score"], args.images / total, detail))
    on = "CPU" if args.device == "cpu" else device_label(args.device)
    print(f"\n{args.images} JPEGs, long side {args.side}px, model {args.model} on {on} "
          f"({os.cpu_count()} cores, load average {load_avg:.1f} at start)\n")
    print(f"{'configuration':48} {'scoring img/s':>14} {'end-to-end img/s':>17}  details")
    for name, scoring, overall, detail in rows:
        overall_text = f"{overall:17.1f}" if overall is not None else f"{'':17}"
        print(f"{name:48} {scoring:14.1f} {overall_text}  {detail}")


if __name__ == "__main__":
    main()
