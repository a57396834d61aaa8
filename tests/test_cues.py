"""Cue discovery with a known answer: real photos (scikit-image + samples/astronaut.jpg), all
labelled sfw, a red disc planted in some, and a real Python-function model loaded by its
``file.py:function`` spec whose p(nsfw) rises with saturated red pixels (and a little with bright
ones, so that ordinary content has heat too). The discovered top cue must be the disc."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from typer.testing import CliRunner

from explain.audit import AuditOptions, CueOptions, audit, discover_cues
from explain.audit.cues import top_windows
from explain.cli import app
from explain.images import load_image
from explain.models import load

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "astronaut.jpg"
SIDE = 112
RADIUS = 8
PHOTOS = ("chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "coins",
          "moon", "clock", "brick", "gravel", "coffee")

MODEL = '''
import numpy as np


def red_disc(batch):
    """p(nsfw) = 0.05 + 0.3 * bright share + 0.65 * min(1, saturated red share / 1.5 %)."""
    x = batch.astype(np.int16)
    red = ((x[..., 0] > 200) & (x[..., 1] < 50) & (x[..., 2] < 50)).mean(axis=(1, 2))
    bright = (x.mean(-1) > 190).mean(axis=(1, 2))
    p = 0.05 + 0.3 * bright + 0.65 * np.minimum(1.0, red / 0.015)
    return np.stack([1 - p, p], axis=1)


red_disc.class_names = ["sfw", "nsfw"]
'''


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _covered(box: tuple[int, ...], disc: tuple[int, ...]) -> float:
    """Share of the disc's box inside ``box``."""
    h = max(0, min(box[2], disc[2]) - max(box[0], disc[0]))
    w = max(0, min(box[3], disc[3]) - max(box[1], disc[1]))
    return h * w / ((disc[2] - disc[0]) * (disc[3] - disc[1]))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """24 small images (two crops of each photo), a red disc at a seeded place in 10 of them;
    returns (data folder, model spec, {path: disc box})."""
    root = tmp_path_factory.mktemp("cues")
    (root / "model.py").write_text(MODEL)
    photos = {name: getattr(skdata, name)() for name in PHOTOS}
    photos["astronaut"] = np.asarray(Image.open(SAMPLE).convert("RGB"))
    crops = []
    for name, rgb in photos.items():
        rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb
        w = rgb.shape[1]
        for k, part in enumerate((rgb[:, :w * 2 // 3], rgb[:, w // 3:])):
            h, pw = part.shape[:2]
            s = SIDE / max(h, pw)
            crops.append((f"{name}_{k}", cv2.resize(np.ascontiguousarray(part),
                                                    (round(pw * s), round(h * s)),
                                                    interpolation=cv2.INTER_AREA)))
    rng = np.random.default_rng(7)
    chosen = set(rng.choice(len(crops), 10, replace=False).tolist())
    discs = {}
    for i, (stem, rgb) in enumerate(crops):
        path = root / "data" / "sfw" / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i in chosen:
            rgb = rgb.copy()
            h, w = rgb.shape[:2]
            cy = int(rng.integers(RADIUS + 2, h - RADIUS - 2))
            cx = int(rng.integers(RADIUS + 2, w - RADIUS - 2))
            cv2.circle(rgb, (cx, cy), RADIUS, (235, 20, 25), -1)
            discs[str(path)] = (cy - RADIUS, cx - RADIUS, cy + RADIUS + 1, cx + RADIUS + 1)
        Image.fromarray(rgb).save(path)
    return root / "data", f"{root / 'model.py'}:red_disc", discs


ARGS = ["--threshold", "0.5", "--top", "20", "--box", "25%", "--stride", "12.5%", "--no-concepts",
        "--mosaic", "0", "-q"]


def test_top_windows_finds_blobs_best_first_without_overlap():
    values = np.zeros((60, 80))
    values[10:20, 50:60] = 1.0
    values[40:50, 5:15] = 0.5
    values[0:2, 0:2] = 0.01
    found = top_windows(values, (10, 10), 3, 90.0)
    assert [b for b, _ in found] == [(10, 50, 20, 60), (40, 5, 50, 15)]
    assert found[0][1] == pytest.approx(1.0) and found[1][1] == pytest.approx(0.5)
    assert top_windows(np.zeros((8, 8)), (4, 4), 3, 90.0) == []


@pytest.mark.slow
def test_known_answer_planted_disc_is_the_top_cue(planted, tmp_path):
    root, spec, discs = planted
    out = tmp_path / "audit"
    result = CliRunner().invoke(app, ["audit", str(root), "-o", str(out), "--model", spec,
                                      *ARGS])
    assert result.exit_code == 0, result.output
    cues = _read_csv(out / "cues.csv")
    patches = _read_csv(out / "cue_patches.csv")
    scores = _read_csv(out / "scores.csv")
    assert {r["path"] for r in scores if r["outcome"] == "FP"} == set(discs)

    top = next(c for c in cues if c["rank"] == "1")
    mine = [p for p in patches if p["cue"] == top["cue"]]
    boxes = [(p["path"], tuple(int(p[k]) for k in ("top", "left", "bottom", "right")))
             for p in mine]
    found = {path for path, box in boxes if path in discs and _covered(box, discs[path]) >= 0.5}
    assert len(found) / len(discs) >= 0.8  # recall over the planted images
    on_disc = sum(path in discs and _covered(box, discs[path]) >= 0.5 for path, box in boxes)
    assert on_disc / len(boxes) >= 0.8  # and its patches are the disc
    assert float(top["paste_gain"]) >= 0.3
    assert float(top["fp_share"]) >= 0.8 and float(top["tn_share"]) == 0.0

    ordinary = [c for c in cues if c["cue"] != top["cue"] and not any(
        p["path"] in discs and _covered(tuple(int(p[k]) for k in ("top", "left", "bottom",
                                                                   "right")),
                                        discs[p["path"]]) > 0
        for p in patches if p["cue"] == c["cue"])]
    assert ordinary, "no cluster of ordinary content"
    for c in ordinary:
        assert int(c["rank"]) > 1
        assert float(c["strength"]) < float(top["strength"])
        assert float(c["paste_gain"]) < 0.1
    page = (out / "audit.html").read_text(encoding="utf-8")
    assert "Discovered cues" in page and (out / "cues" / f"cue_{int(top['cue']):02d}.png").is_file()

    # same seed, another folder: the same cues; the same call again: resumed, no model calls
    again = tmp_path / "again"
    assert CliRunner().invoke(app, ["audit", str(root), "-o", str(again), "--model", spec,
                                    *ARGS]).exit_code == 0
    for name in ("cues.csv", "cue_patches.csv"):
        assert (again / name).read_text() == (out / name).read_text()
    o = AuditOptions(threshold=0.5, top=20, box=0.25, stride=0.125, concepts=False, mosaic=0)
    resumed = audit(root, out, model=spec, options=o)
    assert resumed.resumed and resumed.cues is not None
    assert resumed.cues.new_calls == 0 and resumed.cues.calls > 0
    assert (out / "cues.csv").read_text() == (again / "cues.csv").read_text()

    # --no-cues: no stage, no cue files
    off = CliRunner().invoke(app, ["audit", str(root), "-o", str(out), "--model", spec, *ARGS,
                                   "--no-cues"])
    assert off.exit_code == 0, off.output
    assert not (out / "cues.csv").exists() and not (out / "cue_patches.csv").exists()


def test_cues_skipped_with_a_reason_when_too_few_false_positives(planted, tmp_path):
    root, spec, _ = planted
    o = AuditOptions(threshold=0.5, top=3, box=32, stride=16, concepts=False, mosaic=0)
    result = audit(root, tmp_path / "few", model=spec, options=o)
    assert result.cues is None and not (tmp_path / "few" / "cues.csv").exists()
    page = (tmp_path / "few" / "audit.html").read_text(encoding="utf-8")
    assert "cue discovery skipped: 3 false positive(s) with a heatmap, it needs 5" in page


@pytest.mark.slow
def test_discover_cues_library_on_arrays_pixels_embedding(planted):
    root, spec, discs = planted
    clf = load(spec)
    fps = [load_image(p) for p in sorted(discs)]
    tns = [load_image(p) for p in sorted(str(p) for p in root.rglob("*.png"))
           if p not in discs][:8]
    o = CueOptions(embed="pixels", paste_pairs=8)
    first = discover_cues(clf, fps, tns, box=32, stride=16, options=o)
    assert first.embedding.startswith("raw pixels")
    top = first.cues[0]
    assert top.rank == 1 and top.fp_share >= 0.8 and top.paste_gain >= 0.3
    assert sum(_covered(p.box, discs[sorted(discs)[p.image]]) >= 0.5 for p in top.patches
               if p.role == "fp") >= 0.8 * len(discs)
    assert first.calls == first.new_calls > 0 and first.embed_calls == 0
    again = discover_cues(clf, fps, tns, box=32, stride=16, options=o)
    assert [(c.cue, c.rank, [(p.image, p.box) for p in c.patches], c.paste_gain)
            for c in again.cues] == [(c.cue, c.rank, [(p.image, p.box) for p in c.patches],
                                      c.paste_gain) for c in first.cues]
