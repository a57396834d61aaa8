"""What cue discovery finds, and what it costs, on an audit of real photos with open_nsfw.

    python scripts/bench_cues.py [--images 300] [--fps 100] [--side 256] [--model open-nsfw:auto]

The dataset is random crops of the scikit-image photos and samples/astronaut.jpg (JPEG, SIDE
pixels on the long side), all labelled sfw. The threshold is set just under the FPS-th highest
score, so that exactly FPS images are false positives, and ``--top FPS`` gives each a heatmap.
The audit runs once with ``--no-cues`` and once more with cues in the same folder (the heatmaps
are then already done), so the second call's time is the cue stage alone; a third call shows the
resume. It prints the cues (rank, numbers, where their patches come from) and the cost: model
evaluations and seconds, per 100 false positives.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

from explain.audit import AuditOptions, audit
from explain.images import load_image, to_tensor
from explain.models import load

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "colorwheel", "camera", "coins", "moon", "clock",
          "brick", "gravel", "grass", "page", "text", "cell")
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "astronaut.jpg"


def write_dataset(folder: Path, n: int, side: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    photos = {name: getattr(data, name)() for name in PHOTOS}
    photos["sample_astronaut"] = np.asarray(Image.open(SAMPLE).convert("RGB"))
    names = sorted(photos)
    for i in range(n):
        name = names[i % len(names)]
        img = photos[name]
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        h, w = img.shape[:2]
        ch, cw = int(rng.integers(h // 3, h + 1)), int(rng.integers(w // 3, w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = img[y:y + ch, x:x + cw]
        scale = side / max(ch, cw)
        crop = cv2.resize(np.ascontiguousarray(crop), (round(cw * scale), round(ch * scale)),
                          interpolation=cv2.INTER_AREA)
        path = folder / "sfw" / f"{name}_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(path, quality=90)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--fps", type=int, default=100)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--model", default="open-nsfw:auto")
    ap.add_argument("--keep", type=Path, default=None, help="write the audit here and keep it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_dataset(root, args.images, args.side)
        clf = load(args.model, None)
        scores = sorted((float(clf.predict(to_tensor(load_image(p)))[0, 1]) for p in
                         root.rglob("*.jpg")), reverse=True)
        threshold = (scores[args.fps - 1] + scores[args.fps]) / 2
        out = args.keep or Path(tmp) / "audit"
        print(f"{args.images} crops ({args.side} px), {args.model} on {clf.device}; threshold "
              f"{threshold:.4f} gives {args.fps} false positives (scores {scores[0]:.3f} .. "
              f"{scores[-1]:.4f})")
        base = dict(threshold=threshold, top=args.fps, concepts=False, mosaic=0)
        start = time.perf_counter()
        audit(root, out, model=clf, model_spec=args.model,
              options=AuditOptions(cues=False, **base))
        print(f"audit without cues (score + {args.fps} heatmaps): "
              f"{time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        result = audit(root, out, model=clf, model_spec=args.model,
                       options=AuditOptions(**base))
        seconds = time.perf_counter() - start
        cues = result.cues
        assert cues is not None
        per = 100 / cues.fp_images
        print(f"cue stage: {seconds:.1f} s (stage timer {result.seconds['cues']:.1f} s), "
              f"{cues.calls} model evaluations + {cues.embed_calls} embedder evaluations for "
              f"{cues.fp_images} FPs, {cues.tn_images} TNs, {cues.tp_images} TPs; per 100 FPs: "
              f"{cues.calls * per:.0f} + {cues.embed_calls * per:.0f} evaluations, "
              f"{result.seconds['cues'] * per:.1f} s")
        print(f"embedding: {cues.embedding}; k = {cues.k}, silhouette {cues.silhouette:.3f}")
        start = time.perf_counter()
        again = audit(root, out, model=clf, model_spec=args.model, options=AuditOptions(**base))
        print(f"resumed call: {time.perf_counter() - start:.1f} s, "
              f"{again.cues.new_calls if again.cues else '?'} new model evaluations")
        with open(out / "cue_patches.csv", newline="", encoding="utf-8") as f:
            patches = list(csv.DictReader(f))
        for c in cues.cues:
            sources = Counter(Path(p["path"]).stem.rsplit("_", 1)[0] for p in patches
                              if p["cue"] == str(c.cue) and p["role"] == "fp")
            print(f"#{c.rank} cue {c.cue}: strength {c.strength:.3f}, {len(c.patches)} patches, "
                  f"FP {c.fp_share:.0%} TN {c.tn_share or 0:.0%}, drop "
                  f"{c.mean_drop or 0:+.3f}, paste gain {c.paste_gain or 0:+.3f}; FP patches "
                  f"from {dict(sources.most_common(4))}")


if __name__ == "__main__":
    main()
