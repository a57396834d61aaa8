"""The audit's operating point with known answers: free thresholds (a counting model proves that a
new threshold makes no model call), a target precision, Wilson intervals and a flagged slice checked
by hand, calibration, label issues (flipped labels on top) and error clusters, on synthetic data
whose every answer is known."""

from __future__ import annotations

import csv
import json
from math import comb
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from explain.audit import AuditOptions, CueOptions, audit
from explain.audit import metrics as m
from explain.audit.slices import benjamini_hochberg, image_properties, properties_of
from explain.errors import OptionError
from explain.models import CallableClassifier

Z = 1.959963984540054
REGION = (16, 16, 32, 32)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class Counting:
    """p(nsfw) = mean brightness of REGION; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        t, left, b, r = REGION
        s = batch[:, t:b, left:r].astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
        return np.stack([1.0 - s, s], axis=1)


def build(root: Path) -> dict[str, list[str]]:
    """A manifest (path,label,source) of 64×64 noise images whose REGION brightness is their
    score: 30 sfw and 30 nsfw ``camera`` images scored right; 12 sfw ``web`` images (a green
    stripe on top) scored 0.67–0.78, every one a false positive at 0.5; 4 sfw images scored above
    0.92 and 2 nsfw images scored below 0.12, whose labels are flipped (they look like the other
    class's camera images)."""
    rng = np.random.default_rng(0)
    rows, names = [], {"web": [], "flipped": []}
    t, left, b, r = REGION

    def image(name: str, level: int, source: str, label: str, stripe: bool = False) -> None:
        a = rng.integers(0, 100, size=(64, 64, 3), dtype=np.uint8)
        a[t:b, left:r] = level
        if stripe:
            a[0:6, :] = (0, 200, 0)
        path = root / "imgs" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(path)
        rows.append(f"imgs/{name}.png,{label},{source}")

    for i in range(30):
        image(f"cam_sfw_{i:02d}", int(rng.integers(10, 60)), "camera", "sfw")
        image(f"cam_nsfw_{i:02d}", int(rng.integers(190, 250)), "camera", "nsfw")
    for i in range(12):
        image(f"web_sfw_{i:02d}", int(rng.integers(170, 200)), "web", "sfw", stripe=True)
        names["web"].append(f"web_sfw_{i:02d}.png")
    for i in range(4):
        image(f"flip_sfw_{i}", int(rng.integers(235, 250)), "camera", "sfw")
        names["flipped"].append(f"flip_sfw_{i}.png")
    for i in range(2):
        image(f"flip_nsfw_{i}", int(rng.integers(10, 30)), "camera", "nsfw")
        names["flipped"].append(f"flip_nsfw_{i}.png")
    (root / "labels.csv").write_text("path,label,source\n" + "\n".join(rows) + "\n")
    return names


def options(**more: object) -> AuditOptions:
    base = {"top": 20, "box": 16, "stride": 16, "concepts": False, "mosaic": 0, "cues": False,
            "cue_options": CueOptions(embed="pixels")}
    return AuditOptions(**{**base, **more})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """The audit at threshold 0.5 (every error gets a heatmap), its counting model and names."""
    root = tmp_path_factory.mktemp("operating")
    names = build(root / "data")
    model = Counting()
    clf = CallableClassifier(model, class_names=["sfw", "nsfw"])
    result = audit(root / "data" / "labels.csv", root / "out", model=clf,
                   options=options(threshold=0.5))
    return root, names, model, clf, result


@pytest.mark.slow
def test_a_source_of_false_positives_is_flagged_with_bounds_by_hand(audited):
    root, names, _, _, result = audited
    rows = _read_csv(root / "out" / "slices.csv")
    web = next(r for r in rows if (r["slice"], r["value"]) == ("source", "web"))
    # 12 negatives, all called nsfw at 0.5; outside: 34 negatives of which the 4 flipped sfw
    assert (int(web["n"]), int(web["fp"]), int(web["tn"]), int(web["positives"])) == (12, 12, 0, 0)
    assert float(web["fpr"]) == 1.0
    # Wilson at k = n: (n + z²/2 − z·z/2) / (n + z²) = n / (n + z²), and the upper bound is 1
    assert float(web["fpr_low"]) == pytest.approx(12 / (12 + Z * Z), abs=1e-6)
    assert float(web["fpr_high"]) == 1.0
    # one-sided Fisher: P(all 12 of the slice among the 16 false positives of 46 negatives)
    assert float(web["fpr_p"]) == pytest.approx(comb(16, 12) / comb(46, 12), rel=1e-5)
    assert web["flagged"] == "fpr" and web["fnr"] == "" and rows[0] is web or \
        rows[0]["flagged"]  # flagged slices come first
    assert [r["flagged"] for r in rows] == sorted((r["flagged"] for r in rows),
                                                 key=lambda f: f == "")
    camera = next(r for r in rows if (r["slice"], r["value"]) == ("source", "camera"))
    assert camera["flagged"] == ""
    flagged = json.loads((root / "out" / "metrics.json").read_text())["slices_flagged"]
    assert [(f["slice"], f["value"]) for f in flagged] == [("source", "web")]
    summary = (root / "out" / "summary.md").read_text()
    assert "source = web (12 images): false positive rate 100.0 %" in summary


@pytest.mark.slow
def test_flipped_labels_top_the_label_issues(audited):
    root, names, _, _, _ = audited
    rows = _read_csv(root / "out" / "label_issues.csv")
    top = {Path(r["path"]).name for r in rows[:len(names["flipped"])]}
    assert top == set(names["flipped"])
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    # the web images are the model's errors, not label errors: their look goes with their label
    assert not {Path(r["path"]).name for r in rows} & set(names["web"])
    assert rows[0]["probabilities"].startswith("out-of-sample: 5-fold")
    html = (root / "out" / "audit.html").read_text()
    assert "Likely label errors (" in html
    assert html.count("Likely label error (#") == 6  # every flipped error's card says so


@pytest.mark.slow
def test_error_clusters_separate_the_source(audited):
    root, names, _, _, _ = audited
    rows = [r for r in _read_csv(root / "out" / "error_clusters.csv") if r["kind"] == "fp"]
    exemplars = [{Path(r[f"exemplar_{k}"]).name for k in range(1, 5) if r[f"exemplar_{k}"]}
                 for r in rows]
    web = [r for r, ex in zip(rows, exemplars, strict=True) if ex <= set(names["web"])]
    assert len(web) == 1 and int(web[0]["errors"]) == 12
    assert float(web[0]["error_rate"]) == 1.0


@pytest.mark.slow
def test_a_new_threshold_makes_no_model_call(audited):
    root, _, model, clf, first = audited
    before = model.calls
    scores = {r["path"]: r["score"] for r in _read_csv(root / "out" / "scores.csv")}
    # at 0.7 some web images drop below: fewer false positives, all of them mapped already
    again = audit(root / "data" / "labels.csv", root / "out", model=clf,
                  options=options(threshold=0.7))
    assert model.calls == before
    assert (again.run, again.resumed, again.key) == (first.run, True, first.key)
    assert again.metrics["threshold"] == 0.7 and again.metrics["fp"] < first.metrics["fp"]
    assert {r["path"]: r["score"] for r in _read_csv(root / "out" / "scores.csv")} == scores
    assert json.loads((root / "out" / "metrics.json").read_text())["threshold"] == 0.7
    audit(root / "data" / "labels.csv", root / "out", model=clf, options=options(threshold=0.5))


@pytest.mark.slow
def test_target_precision_is_met_on_the_data(audited):
    root, _, model, clf, first = audited
    before = model.calls
    result = audit(root / "data" / "labels.csv", root / "out", model=clf,
                   options=options(target_precision=0.9, top=0))
    assert model.calls == before and result.run == first.run
    rows = [r for r in _read_csv(root / "out" / "scores.csv")]
    scores = np.array([float(r["score"]) for r in rows])
    positive = np.array([r["label"] == "nsfw" for r in rows])

    def precision(t: float) -> float:
        called = scores >= t - 1e-6  # scores.csv has 6 decimals
        return (called & positive).sum() / called.sum()

    t = result.threshold
    assert precision(t) >= 0.9
    assert all(precision(s) < 0.9 for s in np.unique(scores) if s < t - 1e-6)  # the lowest
    mt = result.metrics
    assert mt["precision"] >= 0.9
    assert mt["precision_low"] < mt["precision"] <= mt["precision_high"]
    assert mt["rule"].startswith("the lowest threshold with precision ≥ 0.9")
    result = audit(root / "data" / "labels.csv", root / "out", model=clf,
                   options=options(target_recall=1.0, top=0))
    assert result.threshold == pytest.approx(scores[positive].min(), abs=1e-6)
    assert result.metrics["recall"] == 1.0 and model.calls == before
    audit(root / "data" / "labels.csv", root / "out", model=clf, options=options(threshold=0.5))


@pytest.mark.slow
def test_metrics_json_and_the_page(audited):
    root, _, _, _, _ = audited
    mt = json.loads((root / "out" / "metrics.json").read_text())
    for key in ("threshold", "precision", "precision_low", "precision_high", "recall",
                "recall_low", "recall_high", "ece", "brier", "calibration_bins", "summary",
                "slices_flagged", "label_issues", "error_clusters"):
        assert key in mt
    assert len(mt["calibration_bins"]) == 10
    assert sum(b["n"] for b in mt["calibration_bins"]) == mt["labeled"] == 78
    assert mt["summary"]["model_sha256"] is None  # a Python function has no file
    html = (root / "out" / "audit.html").read_text()
    section = html.index('<h2 id="slices"')
    assert html.index("source = web", section) < html.index('class="slices"', section)
    for text in ("Summary for a transparency report", "reliability diagram", "Error clusters"):
        assert text in html


def test_wilson_by_hand():
    assert m.wilson(10, 10)[0] == pytest.approx(10 / (10 + Z * Z))
    assert m.wilson(0, 5) == (0.0, pytest.approx(Z * Z / (5 + Z * Z)))
    low, high = m.wilson(3, 10)
    centre = (3 + Z * Z / 2) / (10 + Z * Z)
    half = Z * np.sqrt(3 * 7 / 10 + Z * Z / 4) / (10 + Z * Z)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert (low, high) == pytest.approx((0.1078, 0.6032), abs=1e-4)  # the textbook value
    assert m.wilson(0, 0) == (None, None)


def test_calibration_known_answers():
    centres = np.arange(10) / 10 + 0.05
    scores = np.repeat(centres, 100)
    positive = np.concatenate([np.arange(100) < round(100 * c) for c in centres])
    perfect = m.calibration(scores, positive)
    assert perfect["ece"] == pytest.approx(0.0, abs=1e-12)
    assert perfect["brier"] == pytest.approx(np.mean(centres * (1 - centres)))
    assert [b["n"] for b in perfect["bins"]] == [100] * 10
    rng = np.random.default_rng(0)
    s = rng.random(20000)
    assert m.calibration(s, rng.random(20000) < s)["ece"] < 0.02  # calibrated, by sampling
    over = m.calibration(np.full(10, 0.9), np.arange(10) < 5)
    assert (over["ece"], over["brier"]) == pytest.approx((0.4, 0.41))


def test_operating_threshold_rules():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    positive = [True, True, False, True, False, False]
    # precision at 0.9, 0.8, 0.7, 0.6: 1, 1, 2/3, 3/4 → the lowest with ≥ 0.75 is 0.6
    assert m.operating_threshold(scores, positive, precision=0.75) == 0.6
    assert m.operating_threshold(scores, positive, precision=1.0) == 0.8
    assert m.operating_threshold(scores, positive, recall=2 / 3) == 0.8
    assert m.operating_threshold(scores, positive, recall=1.0) == 0.6
    with pytest.raises(OptionError, match=r"highest is 0.5000, at 0.1\)"):
        m.operating_threshold([0.9, 0.1], [False, True], precision=0.6)


def test_benjamini_hochberg_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.2 → ×4/rank 0.04, 0.06, 0.0533, 0.2 → running min from the top
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.2]) == pytest.approx(
        [0.04, 0.16 / 3, 0.16 / 3, 0.2])


def test_image_properties():
    def props(rgb: np.ndarray) -> list[str]:
        return properties_of(image_properties(rgb), *rgb.shape[:2])

    photo = skdata.astronaut()
    assert props(photo) == []
    gray = np.repeat(skdata.camera()[..., None], 3, axis=2)
    assert props(gray) == ["grayscale"]
    assert props(np.full((300, 300, 3), 10, np.uint8)) == ["grayscale", "dark"]
    assert "bright" in props(np.full((300, 300, 3), 240, np.uint8))
    assert props(photo[:100]) == ["small", "extreme aspect"]
    collage = np.concatenate([photo[:400, :300], skdata.coffee()[:, :300]], axis=1)  # two photos
    assert props(collage) == ["collage"]


@pytest.mark.slow
def test_cli_target_precision(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from explain.cli import app

    build(tmp_path / "data")
    (tmp_path / "model.py").write_text(
        "import numpy as np\n"
        "def score(batch):\n    s = batch[:, 16:32, 16:32].mean(axis=(1, 2, 3)) / 255.0\n"
        "    return np.stack([1 - s, s], axis=1)\n")
    monkeypatch.chdir(tmp_path)
    args = ["audit", "data/labels.csv", "-o", "out", "--model", "model.py:score", "--classes",
            "sfw,nsfw", "--top", "0", "--no-concepts", "--no-cues", "--mosaic", "0", "--quiet"]
    runner = CliRunner()
    both = runner.invoke(app, [*args, "--threshold", "0.5", "--target-precision", "0.9"])
    assert both.exit_code == 2 and "not both" in both.output
    done = runner.invoke(app, [*args, "--threshold", "0.5"])
    assert done.exit_code == 0, done.output
    assert "1 slice(s) flagged: source=web (fpr)" in done.output
    assert "6 likely label errors" in done.output
    again = runner.invoke(app, [*args, "--target-precision", "0.9"])
    assert again.exit_code == 0 and "run 1 (resumed" in again.output
    assert "(the lowest threshold with precision ≥ 0.9" in again.output
    threshold = json.loads((tmp_path / "out" / "metrics.json").read_text())["threshold"]
    assert f"threshold {threshold:.4g} (" in again.output


@pytest.mark.slow
def test_a_new_look_redraws_the_heatmaps_with_no_model_call(audited):
    """The heatmap pictures are drawn again from their saved maps on every run: the same look
    gives the same bytes, another colormap other bytes, and neither calls the model."""
    root, _, model, clf, _ = audited
    pngs = sorted((root / "out" / "heatmaps").glob("*.png"))
    before, calls = {p: p.read_bytes() for p in pngs}, model.calls
    audit(root / "data" / "labels.csv", root / "out", model=clf, options=options(threshold=0.5))
    assert {p: p.read_bytes() for p in pngs} == before
    audit(root / "data" / "labels.csv", root / "out", model=clf,
          options=options(threshold=0.5, colormap="viridis"))
    assert all(p.read_bytes() != before[p] for p in pngs)
    assert model.calls == calls
    audit(root / "data" / "labels.csv", root / "out", model=clf, options=options(threshold=0.5))
    assert {p: p.read_bytes() for p in pngs} == before
