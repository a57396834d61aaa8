"""The raw magnitude (``Heatmap.signal``) of open_nsfw's white-box maps of real photos, against
``explain.heatmap.WHITE_BOX_FLOOR``: how far real maps sit above the "no signal" floor.

    python scripts/whitebox_signal.py [--device cpu|cuda]

Photos: eight scikit-image photos, whole (gray ones as RGB); both classes. Prints one row per
photo and class (Grad-CAM's signal is before its ReLU; its largest value after it beside it) and
the smallest of each column.
"""

from __future__ import annotations

import argparse

import numpy as np
from skimage import data

from explain import deconvnet, gradcam, guided_backprop
from explain.heatmap import WHITE_BOX_FLOOR
from explain.models import load

PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "hubble_deep_field",
          "immunohistochemistry", "coins")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    clf = load("open-nsfw", args.device)
    smallest = {"gradcam": np.inf, "guided": np.inf, "deconv": np.inf}
    print(f"floor {WHITE_BOX_FLOOR:g}")
    print(f"{'photo':22s} {'class':5s} {'gradcam':>9s} {'(relu)':>9s} {'guided':>9s} "
          f"{'deconv':>9s}")
    for name in PHOTOS:
        img = getattr(data, name)()
        img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
        for target in ("nsfw", "sfw"):
            cam = gradcam(clf, img, target=target)
            row = {"gradcam": cam.signal,
                   "guided": guided_backprop(clf, img, target=target).magnitude.signal,
                   "deconv": deconvnet(clf, img, target=target).magnitude.signal}
            for key, value in row.items():
                smallest[key] = min(smallest[key], value)
            print(f"{name:22s} {target:5s} {row['gradcam']:9.3g} {cam.values.max():9.3g} "
                  f"{row['guided']:9.3g} {row['deconv']:9.3g}", flush=True)
    print("smallest: " + ", ".join(f"{k} {v:.3g} ({v / WHITE_BOX_FLOOR:.0f}x the floor)"
                                   for k, v in smallest.items()))


if __name__ == "__main__":
    main()
