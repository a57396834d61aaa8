"""``explain compare`` with known answers: two function models over the same images, run B's
copies renamed (matched by content), each model with a planted cue the other lacks. Every count,
rate, threshold and McNemar p below is worked out by hand from how the data is built."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from explain.audit import AuditOptions, audit
from explain.audit.comparison import compare, matched_threshold, mcnemar, weighted_auc
from explain.audit.metrics import roc_auc
from explain.cli import app
from explain.errors import OptionError
from explain.models import CallableClassifier

REGION = (16, 16, 32, 32)
SHIFT = 0.05  # model B's scores sit this much above A's (its cue aside)


def _region(batch: np.ndarray) -> np.ndarray:
    t, left, b, r = REGION
    return batch[:, t:b, left:r].astype(np.float64).mean(axis=(1, 2, 3)) / 255.0


def _red(batch: np.ndarray) -> np.ndarray:
    corner = batch[:, 0:8, 56:64].astype(np.float64).mean(axis=(1, 2))
    return (corner[:, 0] > 150) & (corner[:, 1] < 50)


def _green(batch: np.ndarray) -> np.ndarray:
    stripe = batch[:, 56:64, :].astype(np.float64).mean(axis=(1, 2))
    return (stripe[:, 1] > 150) & (stripe[:, 0] < 50)


def model_a(batch: np.ndarray) -> np.ndarray:
    """p(nsfw) = the REGION's brightness, 0.9 when a red corner is present (A's cue)."""
    s = np.where(_red(batch), 0.9, _region(batch))
    return np.stack([1.0 - s, s], axis=1)


def model_b(batch: np.ndarray) -> np.ndarray:
    """p(nsfw) = the REGION's brightness + SHIFT, 0.9 when a green stripe is present (B's cue);
    blind to the red corner."""
    s = np.where(_green(batch), 0.9, _region(batch) + SHIFT)
    return np.stack([1.0 - s, s], axis=1)


def build(root: Path) -> list[tuple[str, str, str]]:
    """64×64 noise images, REGION at a constant level: 10 plain sfw (dark), 10 plain nsfw
    (level 220), 2 hard nsfw (level 60: missed by both), 6 sfw with a red corner (A's false
    positives, B's true negatives) and 3 sfw with a green stripe (the reverse). Returns
    (name, label, source) rows; the files are under ``root``."""
    rng = np.random.default_rng(0)
    rows = []

    def image(name: str, level: int, label: str, source: str, red: bool = False,
              green: bool = False) -> None:
        a = rng.integers(0, 100, size=(64, 64, 3), dtype=np.uint8)
        t, left, b, r = REGION
        a[t:b, left:r] = level
        if red:
            a[0:8, 56:64] = (220, 0, 0)
        if green:
            a[56:64, :] = (0, 220, 0)
        root.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / f"{name}.png")
        rows.append((f"{name}.png", label, source))

    for i in range(2):
        image(f"hard_{i}", 60, "nsfw", "hard")
    for i in range(10):
        image(f"sfw_{i}", 20 + 2 * i, "sfw", "plain")
        image(f"nsfw_{i}", 220, "nsfw", "plain")
    for i in range(6):
        image(f"red_{i}", 30, "sfw", "red", red=True)
    for i in range(3):
        image(f"green_{i}", 30, "sfw", "green", green=True)
    return rows


def manifest(folder: Path, rows: list[tuple[str, str, str]], prefix: str = "") -> Path:
    path = folder / "labels.csv"
    path.write_text("path,label,source\n" + "".join(f"{prefix}{n},{lab},{s}\n"
                                                    for n, lab, s in rows))
    return path


OPTIONS = AuditOptions(threshold=0.5, top=20, box=16, stride=16, concepts=False, mosaic=0,
                       cues=False, label_issues=False, clusters=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A over the data; run B over renamed copies, one image dropped and one new added."""
    root = tmp_path_factory.mktemp("compare")
    rows = build(root / "data_a")
    (root / "data_b").mkdir()
    for name, _, _ in rows[:-1]:  # the last green image is not in B's data
        shutil.copy(root / "data_a" / name, root / "data_b" / f"b_{name}")
    extra = np.full((64, 64, 3), 90, np.uint8)
    Image.fromarray(extra).save(root / "data_b" / "b_extra.png")
    audit(manifest(root / "data_a", rows), root / "a",
          model=CallableClassifier(model_a, class_names=["sfw", "nsfw"]), options=OPTIONS)
    audit(manifest(root / "data_b", [*rows[:-1], ("extra.png", "sfw", "plain")], "b_"),
          root / "b", model=CallableClassifier(model_b, class_names=["sfw", "nsfw"]),
          options=OPTIONS)
    result = compare(root / "a", root / "b", root / "cmp", resamples=400, seed=3, shown=40)
    return root, result


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_runs_are_matched_by_content_and_the_intersection_is_said(runs):
    root, result = runs
    s = result.summary
    assert (s["matched"], s["only_a"], s["only_b"], s["labeled"]) == (30, 1, 1, 30)
    assert any("30 images both runs scored; 1 only in run A, 1 only in run B" in n
               for n in s["notes"])
    changes = _csv(result.files["image_changes"])
    assert list(changes[0]) == ["path", "label", "score_a", "score_b", "error_a", "error_b"]
    by_name = {Path(r["path"]).name: r for r in changes}
    assert len(by_name) == 30 and "green_2.png" not in by_name  # A's paths
    red, green, hard = by_name["red_0.png"], by_name["green_0.png"], by_name["hard_0.png"]
    assert (red["error_a"], red["error_b"]) == ("1", "0")
    assert (green["error_a"], green["error_b"]) == ("0", "1")
    assert (hard["error_a"], hard["error_b"]) == ("1", "1")
    assert float(red["score_a"]) == pytest.approx(0.9)
    assert float(red["score_b"]) == pytest.approx(30 / 255 + SHIFT, abs=1e-6)


@pytest.mark.slow
def test_metrics_at_own_thresholds_and_mcnemar_by_hand(runs):
    _, result = runs
    own = result.summary["own_thresholds"]
    # 12 positives, 18 negatives: A calls the 6 red sfw; B the 2 (of 3) green sfw left in B
    m = own["metrics"]
    assert (m["fpr"]["a"], m["fpr"]["b"]) == pytest.approx((6 / 18, 2 / 18))
    assert (m["recall"]["a"], m["recall"]["b"]) == pytest.approx((10 / 12, 10 / 12))
    assert (m["precision"]["a"], m["precision"]["b"]) == pytest.approx((10 / 16, 10 / 12))
    assert m["fpr"]["delta"] == pytest.approx(-4 / 18)
    # 6 fixed against 2 new is not beyond chance (McNemar p 0.29 below): the interval holds 0
    assert m["fpr"]["low"] < -4 / 18 < 0 < m["fpr"]["high"]
    assert m["recall"]["delta"] == 0.0
    # fixed 6 (red), new 2 (green): exact binomial 2·P(X ≤ 2), X ~ Bin(8, ½) = 2·37/256
    assert own["mcnemar"] == {"fixed": 6, "new": 2, "p": pytest.approx(74 / 256),
                              "test": "exact binomial"}


@pytest.mark.slow
def test_matched_fpr_point_reads_b_at_as_few_false_positives(runs):
    _, result = runs
    point = result.summary["matched_fpr"]
    # A's FPR 6/18; B's lowest score with at most 6 negatives at or above it: the sfw of level
    # 32 (B calls the 2 green and the 4 plain sfw of levels 32–38; level 30 would add 7 more)
    assert point["threshold_b"] == pytest.approx(32 / 255 + SHIFT, abs=1e-6)
    m = point["metrics"]
    assert (m["fpr"]["a"], m["fpr"]["b"]) == pytest.approx((6 / 18, 6 / 18))
    assert (m["recall"]["a"], m["recall"]["b"]) == pytest.approx((10 / 12, 1.0))
    # fixed: 6 red + 2 hard nsfw; new: 2 green + 4 plain sfw
    assert (point["mcnemar"]["fixed"], point["mcnemar"]["new"]) == (8, 6)


@pytest.mark.slow
def test_slices_show_where_the_errors_moved(runs):
    _, result = runs
    rows = {(r["slice"], r["value"]): r for r in _csv(result.files["slice_changes"])}
    red, green = rows[("source", "red")], rows[("source", "green")]
    assert (red["n"], red["errors_a"], red["errors_b"], red["fixed"], red["new"]) == \
        ("6", "6", "0", "6", "0")
    assert float(red["mcnemar_p"]) == pytest.approx(2 / 64)
    assert (green["n"], green["fixed"], green["new"]) == ("2", "0", "2")
    assert float(green["mcnemar_p"]) == pytest.approx(0.5)


@pytest.mark.slow
def test_page_lists_fixed_and_new_errors_with_both_maps_on_one_scale(runs):
    _, result = runs
    html = result.files["html"].read_text(encoding="utf-8")
    assert "Errors fixed (6)" in html and "New errors (2)" in html
    assert "run B drew no map of this image" in html  # a fixed red image: only A drew it
    assert "run A drew no map of this image" in html  # a new green image
    assert "both maps on one scale" in html  # the hard nsfw: an error in both runs
    data = json.loads(result.files["json"].read_text())
    assert data["changes"] == {"fixed": 6, "new": 2}


@pytest.mark.slow
def test_the_bootstrap_is_seeded(runs):
    root, result = runs
    again = compare(root / "a", root / "b", root / "cmp2", resamples=400, seed=3, shown=0)
    assert again.summary["own_thresholds"] == result.summary["own_thresholds"]
    assert again.summary["auc"] == result.summary["auc"]


@pytest.mark.slow
def test_disjoint_runs_and_a_folder_without_an_audit_are_refused(runs, tmp_path):
    root, _ = runs
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(other / "zero.png")
    (other / "labels.csv").write_text("path,label\nzero.png,sfw\n")
    audit(other / "labels.csv", tmp_path / "c",
          model=CallableClassifier(model_b, class_names=["sfw", "nsfw"]), options=OPTIONS)
    with pytest.raises(OptionError, match="share no image"):
        compare(root / "a", tmp_path / "c", tmp_path / "out")
    runner = CliRunner()
    bad = runner.invoke(app, ["compare", str(root / "a"), str(tmp_path), "-o",
                              str(tmp_path / "out")])
    assert bad.exit_code == 2 and "holds no audit" in bad.output
    assert "Traceback" not in bad.output
    good = runner.invoke(app, ["compare", str(root / "a"), str(root / "b"), "-o",
                               str(tmp_path / "cli"), "--resamples", "200"])
    assert good.exit_code == 0, good.output
    assert "30 images in both runs (1 only in A, 1 only in B)" in good.output
    assert (tmp_path / "cli" / "compare.html").is_file()


def test_matched_threshold_mcnemar_and_weighted_auc_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    positive = np.array([True, False, True, False, True, False])
    assert matched_threshold(scores, positive, 0.0) == 0.9
    assert matched_threshold(scores, positive, 1 / 3) == 0.7
    assert matched_threshold(scores, positive, 1.0) == 0.4
    assert matched_threshold(np.array([0.9, 0.1]), np.array([False, True]), 0.0) > 0.9
    assert mcnemar(0, 0)["p"] is None
    assert mcnemar(3, 4)["p"] == pytest.approx(1.0)  # 2·P(X ≤ 3), X ~ Bin(7, ½), capped at 1
    large = mcnemar(10, 20)  # 30 changed errors: χ² = (|10 − 20| − 1)² / 30 = 2.7, 1 df
    assert large["test"] == "chi-square, continuity corrected"
    assert large["p"] == pytest.approx(0.1003482, abs=1e-6)
    weights = np.array([[1, 1, 1, 1, 1, 1], [2, 0, 1, 1, 0, 3]], dtype=np.float64)
    auc = weighted_auc(weights, scores, positive)
    assert auc[0] == pytest.approx(roc_auc(scores, positive))
    repeated = np.repeat(np.arange(6), [2, 0, 1, 1, 0, 3])
    assert auc[1] == pytest.approx(roc_auc(scores[repeated], positive[repeated]))


@pytest.mark.slow
def test_compare_page_in_chromium_decodes_every_picture(runs, chromium, tmp_path):
    from test_report_browser import Browser

    _, result = runs
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open(result.files["html"].as_uri())
        assert browser.console_errors() == []
        images = browser.evaluate("Array.from(document.images, i => [i.alt, i.complete, "
                                  "i.naturalWidth, i.naturalHeight])")
    finally:
        browser.close()
    html = result.files["html"].read_text(encoding="utf-8")
    assert len(images) == html.count("<img ") > 0
    assert all(complete and w > 0 and h > 0 for _, complete, w, h in images), images
    alts = [alt for alt, *_ in images]
    # 6 fixed (A's map), 2 new (B's map), then the largest changes: each with its image
    assert alts.count("run A map") >= 6 and alts.count("run B map") >= 2


@pytest.mark.slow
def test_a_run_scored_before_hashes_were_kept_is_hashed_from_its_files(runs, tmp_path):
    import sqlite3

    from explain.files import file_sha256

    root, _ = runs
    with sqlite3.connect(root / "a" / "audit.sqlite") as db:
        stored = dict(db.execute("SELECT path, sha256 FROM images"))
    assert all(digest == file_sha256(path) for path, digest in stored.items())
    old = tmp_path / "old"
    shutil.copytree(root / "b", old)
    with sqlite3.connect(old / "audit.sqlite") as db:  # a database from before the column
        db.execute("ALTER TABLE images DROP COLUMN sha256")
    result = compare(root / "a", old, tmp_path / "out", resamples=100, shown=0)
    assert result.summary["matched"] == 30
    assert any("run B: 31 image(s) were scored before audits kept a content hash" in n
               for n in result.summary["notes"])
    with sqlite3.connect(old / "audit.sqlite") as db:  # opened read-only: not migrated
        assert "sha256" not in {r[1] for r in db.execute("PRAGMA table_info(images)")}


@pytest.mark.slow
def test_unlabeled_runs_get_score_changes_only(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "d").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            tmp_path / "d" / f"x{i}.png")
    for name, fn in (("a", model_a), ("b", model_b)):
        audit(tmp_path / "d", tmp_path / name,
              model=CallableClassifier(fn, class_names=["sfw", "nsfw"]), options=OPTIONS)
    result = compare(tmp_path / "a", tmp_path / "b", tmp_path / "out", resamples=100)
    s = result.summary
    assert (s["matched"], s["labeled"]) == (4, 0)
    assert "own_thresholds" not in s and "changes" not in s and "slice_changes" not in result.files
    rows = _csv(result.files["image_changes"])
    assert all(r["label"] == r["error_a"] == r["error_b"] == "" for r in rows)
    assert all(float(r["score_b"]) - float(r["score_a"]) == pytest.approx(SHIFT, abs=2e-6)
               for r in rows)
    html = result.files["html"].read_text(encoding="utf-8")
    assert "Largest score changes (4)" in html and "Errors fixed" not in html
