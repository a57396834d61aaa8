"""Throughput of open-nsfw (img/s) on both backends at several batch sizes.

Each run calls ``Classifier.predict`` — the call every black-box method makes — on a batch of
the bundled sample photo at the model's input size (256×256; predict then centre-crops to 224,
converts to BGR and subtracts the mean, as the engine's calls do). One warm-up call, then
``--repeats`` timed calls; the table shows the median, min and max over those.

    python scripts/bench_models.py                       # torch and onnx, batch 1, 16, 64, CPU
    python scripts/bench_models.py --threads 1           # one thread each (a loaded machine)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import onnxruntime as ort
import torch

from explain.images import load_image, to_tensor
from explain.models import OnnxClassifier, load, open_nsfw
from explain.models.base import resize

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "astronaut.jpg"


def onnx_session(session: ort.InferenceSession, threads: int) -> ort.InferenceSession:
    """The same open-nsfw graph (with its feature output) limited to ``threads`` threads."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(open_nsfw.onnx_model_bytes(), sess_options=options,
                                providers=session.get_providers())


def time_predict(clf, batch: torch.Tensor, repeats: int) -> list[float]:
    """Seconds per ``predict(batch)`` call, ``repeats`` times, after one warm-up call."""
    sync = torch.cuda.synchronize if batch.device.type == "cuda" else (lambda: None)
    clf.predict(batch)
    sync()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        clf.predict(batch)
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["open-nsfw", "open-nsfw:onnx"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of both torch and onnxruntime (default: each "
                        "library's own choice, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"{os.cpu_count()} CPU cores; threads: torch {torch.get_num_threads()}, onnxruntime "
          f"{args.threads or 'default'}; load average before: "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"input: {SAMPLE.name} resized to 256x256, repeated to the batch size; one warm-up "
          f"call, then the median (min-max) of {args.repeats} timed predict() calls\n")
    header = f"{'model':<16} {'device':<6} {'batch':>5} {'img/s':>8} {'ms/batch':>9} " \
             f"{'min-max ms/batch':>17}"
    print(header)
    print("-" * len(header))
    image = to_tensor(load_image(SAMPLE))
    for spec in args.backends:
        clf = load(spec, args.device)
        if args.threads and isinstance(clf, OnnxClassifier):
            clf.session = onnx_session(clf.session, args.threads)
        frame = resize(image.to(clf.device), clf.input_size or (256, 256))
        for n in args.batches:
            batch = frame.expand(n, -1, -1, -1).contiguous()
            seconds = time_predict(clf, batch, args.repeats)
            median = statistics.median(seconds)
            spread = f"{min(seconds) * 1e3:.0f}-{max(seconds) * 1e3:.0f}"
            print(f"{getattr(clf, 'name', spec):<16} {clf.device.type:<6} {n:>5} "
                  f"{n / median:>8.1f} {median * 1e3:>9.1f} {spread:>17}", flush=True)
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
