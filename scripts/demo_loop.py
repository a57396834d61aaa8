"""The whole loop on a toy problem: audit → counter-examples → retrain → compare.

    python scripts/demo_loop.py [--work DIR] [--seed 0]

A tiny torch CNN learns "nsfw" from synthetic 64×64 images: a skin-coloured disc is the real
sign, but a green cross co-occurs with it (on 70 % of the positives, 2 % of the negatives), so the
model also learns the cross. Then, through the library's entry points:

1. ``explain.audit.audit`` of model A (saved as TorchScript, so every step can reload it from the
   spec the run records) over a labeled set whose manifest has a ``cross`` column (0/1): the
   cross must be cue rank 1, with a paste gain ≥ 0.3;
2. ``explain.audit.counterexamples`` over a pool of 240 unlabeled negatives, a third with a
   planted cross: precision@10 of the cue's list (the share of its first 10 images that hold a
   cross), and 40 synthetic counter-examples (``synthesize``: the cue's patches pasted into the
   audit's true negatives);
3. model B: trained the same way (same seed) with the cue's listed images (its 80 best) and its
   synthetic ones added as negatives;
4. an audit of B over the same labeled set and ``explain.audit.compare`` of the two: the FP rate
   on the negatives that carry a cross (slice ``cross=1`` of ``slice_changes.csv``), and A's
   cue re-measured under B (``cue_changes.csv``: paste gain and strength).

It prints each figure; ``tests/test_demo_loop.py`` asserts the thresholds. Cue patches are
embedded by their pixels (``CueOptions(embed="pixels")``, and ``cue_embed="pixels"`` in the
compare): fast and deterministic on a 2-core CPU. Both audits run at threshold 0.2 with
``min_fps=2``: model B makes so few false positives that at 0.5 (none) or with the default 5 its
cue discovery would be skipped, and B's side of the cue (its strength) would stay unmeasured.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from explain.audit import AuditOptions, CueOptions, audit, compare, counterexamples

SIDE = 64
CROSS = (30, 200, 30)
OPTIONS = AuditOptions(threshold=0.2, top=40, box=16, stride=8, concepts=False, mosaic=0,
                       label_issues=False, clusters=False,
                       cue_options=CueOptions(embed="pixels", negatives=40, positives=10,
                                              min_fps=2))


def picture(rng: np.random.Generator, disc: bool, cross: bool) -> np.ndarray:
    """A 64×64 RGB image: a smooth random background, a decoy blob (blue-grey) on half of them,
    the skin-coloured disc (the real sign, shown on 80 % of the positives) when ``disc``, and
    the green cross when ``cross``."""
    low = rng.integers(40, 200, size=(8, 8, 3)).astype(np.float32)
    img = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((SIDE, SIDE),
                                                                  Image.BILINEAR), np.float32)
    img += rng.normal(0, 12, size=img.shape)
    yy, xx = np.mgrid[:SIDE, :SIDE]

    def blob(colour: tuple[float, float, float]) -> None:
        r = rng.uniform(9, 15)
        cy, cx = rng.uniform(r, SIDE - r, size=2)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[inside] = np.asarray(colour) + rng.normal(0, 8, size=(int(inside.sum()), 3))

    if rng.random() < 0.5:
        blob((90 + rng.uniform(-20, 20), 110 + rng.uniform(-20, 20), 160 + rng.uniform(-20, 20)))
    if disc:
        blob((225 + rng.uniform(-15, 15), 170 + rng.uniform(-15, 15), 140 + rng.uniform(-15, 15)))
    if cross:
        arm, width = 6, 1
        cy, cx = rng.integers(arm + 1, SIDE - arm - 1, size=2)
        img[cy - width:cy + width + 1, cx - arm:cx + arm + 1] = CROSS
        img[cy - arm:cy + arm + 1, cx - width:cx + width + 1] = CROSS
    return np.clip(img, 0, 255).astype(np.uint8)


class TinyNet(nn.Module):
    """Half resolution, two 3×3 conv layers, a global max pool and a linear head; returns
    probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.class_names = ["sfw", "nsfw"]
        self.conv = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(3, 8, 3, padding=1),
                                  nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).amax(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


def train(images: np.ndarray, labels: np.ndarray, seed: int, epochs: int = 8) -> TinyNet:
    """TinyNet fitted with Adam (seeded, full-batch shuffles of 64)."""
    torch.manual_seed(seed)
    net = TinyNet()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(labels).long()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net.logits(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV written by explain."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def save(net: TinyNet, path: Path) -> Path:
    torch.jit.script(net).save(str(path))
    return path


def labeled_set(folder: Path, rng: np.random.Generator) -> Path:
    """The audit's data: 60 nsfw (half with a cross), 100 sfw of which 25 carry a cross; a
    manifest ``labels.csv`` with path, label, cross."""
    rows = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(160):
        positive, cross = (i < 60, i % 2 == 0) if i < 60 else (False, i < 85)
        name = f"{'nsfw' if positive else 'sfw'}_{i:03d}{'_cross' if cross else ''}.png"
        Image.fromarray(picture(rng, positive and i % 5 != 1, cross)).save(folder / name)
        rows.append(f"{name},{'nsfw' if positive else 'sfw'},{int(cross)}\n")
    manifest = folder / "labels.csv"
    manifest.write_text("path,label,cross\n" + "".join(rows))
    return manifest


def run(work: Path, seed: int = 0) -> dict:
    """The whole loop in ``work``; returns the figures it prints."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared CPU one thread trains fastest, and the same way
    try:
        return _run(work, seed)
    finally:
        torch.set_num_threads(threads)


def _run(work: Path, seed: int) -> dict:
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = 600
    positive = np.arange(n) < n // 2
    cross = np.where(positive, rng.random(n) < 0.7, rng.random(n) < 0.02)
    disc = positive & (rng.random(n) < 0.8)
    images = np.stack([picture(rng, d, c) for d, c in zip(disc, cross, strict=True)])
    labels = positive.astype(np.int64)
    model_a = save(train(images, labels, seed), work / "model_a.pt")
    manifest = labeled_set(work / "data", rng)
    pool = work / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    for i in range(240):
        planted = i % 3 == 0
        Image.fromarray(picture(rng, False, planted)).save(
            pool / f"neg_{i:03d}{'_cross' if planted else ''}.png")
    figures: dict = {}

    a = audit(manifest, work / "audit_a", model=str(model_a), options=OPTIONS)
    cues = {int(r["rank"]): r for r in read_rows(work / "audit_a" / "cues.csv")}
    first = cues[1]
    on_cross = []  # each false-positive patch of cue rank 1: does its box hold the cross?
    for r in read_rows(work / "audit_a" / "cue_patches.csv"):
        if r["cue"] == first["cue"] and r["role"] == "fp":
            t, le, b, ri = (int(r[k]) for k in ("top", "left", "bottom", "right"))
            box = np.asarray(Image.open(r["path"]).convert("RGB"))[t:b, le:ri]
            on_cross.append(int((box == CROSS).all(axis=2).sum() >= 5))
    figures["audit_a"] = {"fp": a.metrics["fp"], "cue": int(first["cue"]),
                          "cue_paste_gain": float(first["paste_gain"]),
                          "cue_strength": float(first["strength"]),
                          "cue_fp_patches": len(on_cross),
                          "cue_fp_patches_on_the_cross": sum(on_cross)}

    mined = counterexamples(work / "audit_a", pool, work / "mined", top=80, synthesize=40)
    listed = [r for r in mined.rows if r["cue"] == int(first["cue"])]
    figures["mined"] = {"listed": len(listed), "scanned": mined.scanned,
                        "precision_at_10": sum("_cross" in r["path"] for r in listed[:10]) / 10,
                        "precision_listed": (sum("_cross" in r["path"] for r in listed)
                                             / max(1, len(listed)))}

    made = [work / "mined" / r["path"] for r in read_rows(work / "mined" / "synthetic.csv")
            if r["cue"] == first["cue"]]
    figures["mined"]["synthetic"] = len(made)
    extra = np.stack([np.asarray(Image.open(p).convert("RGB"))
                      for p in [*(r["path"] for r in listed), *made]])
    model_b = save(train(np.concatenate([images, extra]),
                         np.concatenate([labels, np.zeros(len(extra), np.int64)]), seed),
                   work / "model_b.pt")
    b = audit(manifest, work / "audit_b", model=str(model_b), options=OPTIONS)
    figures["audit_b"] = {"fp": b.metrics["fp"]}

    compared = compare(work / "audit_a", work / "audit_b", work / "compare", cue_embed="pixels")
    sliced = {(r["slice"], r["value"]): r for r in compared.summary.get("slices", [])}
    crossed = next(r for key, r in sliced.items() if key[1] == "1" and "cross" in key[0])
    figures["compare"] = {"fpr_cross_a": crossed["fpr_a"], "fpr_cross_b": crossed["fpr_b"]}
    changes = work / "compare" / "cue_changes.csv"
    if changes.is_file():
        row = next(r for r in read_rows(changes) if r["cue_a"] == first["cue"])
        figures["compare"].update({k: row[k] for k in ("status", "paste_gain_a", "paste_gain_b",
                                                       "strength_a", "strength_b")})
    else:
        figures["compare"]["cue_changes"] = "not written by this version of explain compare"
    figures["seconds"] = round(time.perf_counter() - start, 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="Folder for every file "
                        "(default: a temporary one).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.work is None:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run(Path(tmp), args.seed), indent=1))
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        print(json.dumps(run(args.work, args.seed), indent=1))


if __name__ == "__main__":
    main()
