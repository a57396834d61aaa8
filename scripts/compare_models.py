"""The three built-in models on the same photos: scores, speed, and one occlusion map each.

Through the library entry points the commands run: ``load_image`` + ``to_tensor`` +
``predict`` per image (what ``explain score`` does), ``occlusion_map`` (``explain occlude``) and,
for the torch models, ``gradcam`` (``explain gradcam``). Each timing is the median of
``--repeats`` runs after one warm-up. Writes the maps as one picture with a row per model on one
colour scale (``render.model_rows``) when ``--picture`` is given.

    python scripts/compare_models.py [--repeats 3] [--picture docs/models.png]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from explain.grad_cam import gradcam
from explain.images import to_tensor
from explain.models import load
from explain.occlusion import occlusion_map
from explain.render import model_rows, save_png

MODELS = ("open-nsfw:onnx", "nudenet-classifier", "nudity-mobilenet")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "moon", "cell")


def photo(name: str) -> np.ndarray:
    image = getattr(data, name)()
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image


def median_seconds(fn, repeats: int) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--picture", type=Path)
    args = parser.parse_args()
    images = {name: photo(name) for name in PHOTOS}
    astronaut = np.asarray(Image.fromarray(images["astronaut"]).resize((256, 256)))
    print("model | " + " | ".join(PHOTOS) + " | images/s | occlusion maps/s | Grad-CAM maps/s")
    rows = []
    for spec in MODELS:
        clf = load(spec, "cpu")
        nsfw = clf.class_names.index("nsfw")
        scores = [float(clf.predict(to_tensor(images[n], clf.device))[0, nsfw]) for n in PHOTOS]
        per_image = median_seconds(
            lambda clf=clf: [clf.predict(to_tensor(images[n], clf.device)) for n in PHOTOS],
            args.repeats) / len(PHOTOS)
        occlude = median_seconds(lambda clf=clf: occlusion_map(clf, astronaut, box=64, stride=32),
                                 args.repeats)
        cam = "—"
        if spec == "nudity-mobilenet":
            cam = f"{1 / median_seconds(lambda clf=clf: gradcam(clf, astronaut), args.repeats):.1f}"
        print(f"{spec} | " + " | ".join(f"{s:.3f}" for s in scores)
              + f" | {1 / per_image:.2f} | {1 / occlude:.3f} | {cam}", flush=True)
        rows.append((spec, occlusion_map(clf, astronaut, box=64, stride=32)))
    if args.picture:
        save_png(model_rows(astronaut, rows), args.picture)
        print(f"wrote {args.picture}")


if __name__ == "__main__":
    main()
