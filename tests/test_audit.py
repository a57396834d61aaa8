"""Dataset audit: a real labeled dataset (skimage photos + crafted bad files) on the real
open_nsfw and NudeNet, metrics against values counted by hand, concept attribution on a synthetic
case with a known answer, run keys, inputs, and the CLI."""

from __future__ import annotations

import csv
import itertools
import json
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
from markupsafe import escape
from PIL import Image
from skimage import data as skdata
from typer.testing import CliRunner

from explain.audit import AuditOptions, NudeNetDetector, Part, audit, open_dataset
from explain.audit import metrics as m
from explain.audit.concepts import heat_share
from explain.audit.options import CueOptions
from explain.cli import app
from explain.errors import OptionError
from explain.images import load_image, to_tensor
from explain.models import CallableClassifier

SIDE = 160


def _save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _small(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (SIDE, round(SIDE * h / w)), interpolation=cv2.INTER_AREA)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def detector():
    return NudeNetDetector()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """sfw/ and nsfw/ folders of real photos (one nested), plus one bad file of every kind.

    open_nsfw scores these photos far below 0.1 except the orange retina (about 0.2); astronaut
    and rocket are *labelled* nsfw, so that at a threshold of 0.1 there are two false negatives
    and one false positive."""
    root = tmp_path_factory.mktemp("ds")
    good = {
        "sfw/coffee.png": skdata.coffee(), "sfw/chelsea.png": skdata.chelsea(),
        "sfw/more/hubble.png": skdata.hubble_deep_field(),
        "sfw/ihc.jpg": skdata.immunohistochemistry(), "sfw/retina.png": skdata.retina(),
        "nsfw/astronaut.png": skdata.astronaut(), "nsfw/rocket.jpg": skdata.rocket(),
    }
    for rel, rgb in good.items():
        _save(root / rel, _small(rgb))
    (root / "sfw/empty.png").write_bytes(b"")
    (root / "sfw/notes.jpg").write_text("not a picture")
    jpeg = (root / "nsfw/rocket.jpg").read_bytes()
    (root / "nsfw/truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    _save(root / "nsfw/huge.png", np.zeros((300, 400, 3), np.uint8))
    return root, sorted(good)


def test_audit_real_dataset(dataset, nsfw_onnx, detector, tmp_path):
    root, good = dataset
    truth = {str(root / rel): rel.split("/")[0] for rel in good}
    scores = {p: float(nsfw_onnx.predict(to_tensor(load_image(p)))[0, 1]) for p in truth}
    threshold = 0.1
    out = tmp_path / "audit"
    o = AuditOptions(threshold=threshold, top=2, box=80, stride=80, max_pixels=100_000,
                     batch_size=4, mosaic=6)
    result = audit(root, out, model=nsfw_onnx, options=o, detector=detector)

    rows = {r["path"]: r for r in _read_csv(out / "scores.csv")}
    assert set(rows) == set(truth)
    for p, row in rows.items():
        assert row["label"] == truth[p]
        assert float(row["score"]) == pytest.approx(scores[p], abs=1e-5)

    # metrics counted by hand
    pos = [p for p in truth if truth[p] == "nsfw"]
    neg = [p for p in truth if truth[p] == "sfw"]
    tp = sum(scores[p] >= threshold for p in pos)
    fp = sum(scores[p] >= threshold for p in neg)
    fn, tn = len(pos) - tp, len(neg) - fp
    pairs = [(scores[a] > scores[b]) + 0.5 * (scores[a] == scores[b])
             for a, b in itertools.product(pos, neg)]
    mt = result.metrics
    assert (mt["tp"], mt["fp"], mt["fn"], mt["tn"]) == (tp, fp, fn, tn) == (0, 1, 2, 4)
    assert mt["auc"] == pytest.approx(sum(pairs) / len(pairs))
    assert mt["precision"] == pytest.approx(tp / (tp + fp))
    assert mt["recall"] == pytest.approx(tp / (tp + fn))
    assert mt["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert mt["confusion_labels"] == ["sfw", "nsfw"]
    assert mt["confusion"] == [[tn, fp], [fn, tp]]
    outcomes = {Path(p).name: r["outcome"] for p, r in rows.items()}
    assert outcomes["astronaut.png"] == outcomes["rocket.jpg"] == "FN"
    assert outcomes["retina.png"] == "FP"

    # bad files: listed with their reasons, the rest audited
    errors = {Path(r["path"]).name: r["reason"] for r in _read_csv(out / "errors.csv")}
    assert set(errors) == {"empty.png", "notes.jpg", "truncated.jpg", "huge.png"}
    assert "empty" in errors["empty.png"]
    assert "not an image" in errors["notes.jpg"]
    assert "truncated" in errors["truncated.jpg"]
    assert "120,000 pixels" in errors["huge.png"]
    assert (result.images, result.scored, result.failed) == (11, 7, 4)

    # heatmaps: the FP and both FNs (top 2 of each kind), files written
    assert result.heatmaps == 3
    pngs = sorted(f.name for f in (out / "heatmaps").glob("*.png"))
    assert [n[:3] for n in pngs] == ["fn_", "fn_", "fp_"]
    assert Image.open(out / "heatmaps" / pngs[0]).mode == "RGB"

    # concepts: NudeNet finds the astronaut's face; its drop and heat share are recorded
    parts = _read_csv(out / "parts.csv")
    face = [r for r in parts if r["concept"] == "FACE_FEMALE"
            and Path(r["path"]).name == "astronaut.png"]
    assert len(face) == 1 and face[0]["heat_share"] != ""
    assert 0.0 <= float(face[0]["heat_share"]) <= 1.0
    concepts = _read_csv(out / "concepts.csv")
    groups = {r["group"] for r in concepts}
    assert {"false negatives", "all nsfw"} <= groups
    fn_face = next(r for r in concepts if r["group"] == "false negatives"
                   and r["concept"] == "FACE_FEMALE")
    assert int(fn_face["images"]) == 1 and int(fn_face["group_images"]) == 2

    html = (out / "audit.html").read_text()
    for name in ("astronaut.png", "notes.jpg", "FACE_FEMALE", "False positives",
                 "Similarity mosaic", "data:image/png;base64,", "DPQ16 0.", "-NN preservation ×"):
        assert name in html
    assert "http://" not in html.replace("http://www.w3.org", "")
    assert (out / "histogram.png").is_file() and (out / "roc.png").is_file()
    assert (out / "grid.png").is_file() and json.loads((out / "grid.json").read_text())["images"]


# --- concept attribution with a known answer --------------------------------------------------

REGION = (16, 16, 32, 32)  # top, left, bottom, right: the only pixels the classifier sees;
# aligned with the 16-pixel window grid, so that the occlusion heat falls inside it exactly
ELSEWHERE = (40, 36, 60, 60)


def region_score(batch: np.ndarray) -> np.ndarray:
    """p(nsfw) = mean brightness of REGION (uint8 batch N×H×W×3)."""
    t, left, b, r = REGION
    s = batch[:, t:b, left:r].astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
    return np.stack([1.0 - s, s], axis=1)


class FakeDetector:
    """Reports NAVEL on REGION when it is bright, and always a FOOT somewhere irrelevant."""

    name = "fake-detector"

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, images):
        self.calls += 1
        out = []
        for img in images:
            t, left, b, r = REGION
            parts = [Part("FOOT", 0.9, ELSEWHERE)]
            if img[t:b, left:r].mean() > 127:
                parts.insert(0, Part("NAVEL", 0.8, REGION))
            out.append(parts)
        return out


def synthetic(root: Path, n_bright: int, n_dark: int) -> None:
    rng = np.random.default_rng(0)
    t, left, b, r = REGION
    for i in range(n_bright + n_dark):
        img = rng.integers(0, 100, size=(64, 64, 3), dtype=np.uint8)
        if i < n_bright:
            img[t:b, left:r] = 255
        _save(root / "sfw" / f"img{i:02d}.png", img)
    _save(root / "nsfw" / "real.png", np.full((64, 64, 3), 200, np.uint8))


def test_concept_attribution_known_answer(tmp_path):
    synthetic(tmp_path / "data", n_bright=3, n_dark=2)
    clf = CallableClassifier(region_score, class_names=["sfw", "nsfw"])
    fake = FakeDetector()
    o = AuditOptions(threshold=0.5, top=5, box=16, stride=16, mosaic=0)
    result = audit(tmp_path / "data", tmp_path / "out", model=clf, options=o, detector=fake)
    assert result.metrics["fp"] == 3 and result.heatmaps == 3

    gray = 128 / 255.0  # the 0.5 fill after the callable's uint8 rounding
    parts = _read_csv(tmp_path / "out" / "parts.csv")
    navel = [p for p in parts if p["concept"] == "NAVEL" and p["label"] == "sfw"]
    assert len(navel) == 3
    for p in navel:
        assert float(p["score_drop"]) == pytest.approx(1.0 - gray, abs=1e-6)
        assert float(p["heat_share"]) == pytest.approx(1.0)
        assert float(p["area_share"]) == pytest.approx(16 * 16 / 64 ** 2)
    for p in parts:
        if p["concept"] == "FOOT":
            assert float(p["score_drop"]) == pytest.approx(0.0, abs=1e-6)
            assert p["heat_share"] == "" or float(p["heat_share"]) == pytest.approx(0.0)

    table = {(r["group"], r["concept"]): r for r in _read_csv(tmp_path / "out" / "concepts.csv")}
    fp_navel, sfw_navel = table["false positives", "NAVEL"], table["all sfw", "NAVEL"]
    assert float(fp_navel["image_share"]) == 1.0
    assert float(sfw_navel["image_share"]) == pytest.approx(3 / 5)
    assert float(fp_navel["mean_score_drop"]) == pytest.approx(1.0 - gray)
    assert float(fp_navel["mean_heat_share"]) == pytest.approx(1.0)
    assert float(table["false positives", "FOOT"]["mean_score_drop"]) == pytest.approx(0.0)
    assert int(table["all sfw", "FOOT"]["images"]) == 5
    # the table is ordered by the false positives' mean drop: NAVEL first
    html = (tmp_path / "out" / "audit.html").read_text()
    concepts = html.index('<h2 id="concepts">')
    assert html.index("<td>NAVEL</td>", concepts) < html.index("<td>FOOT</td>", concepts)


def test_heat_share():
    values = np.zeros((10, 10), np.float32)
    values[2:4, 2:4] = 1.0
    values[8, 8] = 2.0
    values[0, 0] = -5.0  # negative mass does not count
    assert heat_share(values, (2, 2, 4, 4)) == pytest.approx(4 / 6)
    assert heat_share(values, (0, 0, 1, 1)) == 0.0
    assert heat_share(np.zeros((4, 4)), (0, 0, 2, 2)) is None


def test_nudenet_detector_records_its_provider(detector):
    """The detector's session is made by the shared provider choice (models.base.onnx_providers):
    on the CPU device here, the CPU provider, and it says which one it runs on."""
    assert detector.provider == "CPUExecutionProvider"


def test_nudenet_detector_matches_the_package(detector):
    from nudenet.nudenet import NudeDetector  # either install order (see concepts.py)

    rgb = skdata.astronaut()
    ours = detector.detect([rgb])[0]
    theirs = NudeDetector().detect(rgb)
    assert len(ours) == len(theirs) >= 1
    for part, ref in zip(ours, theirs, strict=True):
        x, y, w, h = ref["box"]
        assert part.concept == ref["class"]
        assert part.confidence == pytest.approx(ref["score"], abs=1e-5)
        assert part.box == (y, x, y + h, x + w)


# --- runs, resume in-process, inputs ----------------------------------------------------------

def _rows(out: Path) -> list[tuple]:
    db = sqlite3.connect(out / "audit.sqlite")
    rows = db.execute("SELECT run, path, score, scored_at FROM images ORDER BY run, id").fetchall()
    db.close()
    return rows


def test_same_key_resumes_changed_key_starts_a_new_run(tmp_path):
    synthetic(tmp_path / "data", n_bright=2, n_dark=2)
    clf = CallableClassifier(region_score, class_names=["sfw", "nsfw"])
    fake = FakeDetector()
    o = AuditOptions(threshold=0.5, top=1, box=32, stride=32, mosaic=0)
    first = audit(tmp_path / "data", tmp_path / "out", model=clf, options=o, detector=fake)
    before, calls = _rows(tmp_path / "out"), fake.calls
    again = audit(tmp_path / "data", tmp_path / "out", model=clf, options=o, detector=fake)
    assert (first.run, first.resumed, again.run, again.resumed) == (1, False, 1, True)
    assert _rows(tmp_path / "out") == before and fake.calls == calls  # nothing recomputed

    o2 = AuditOptions(threshold=0.5, top=1, box=16, stride=16, mosaic=0)
    other = audit(tmp_path / "data", tmp_path / "out", model=clf, options=o2, detector=fake)
    assert (other.run, other.resumed) == (2, False) and other.key != first.key
    rows = _rows(tmp_path / "out")
    assert rows[:len(before)] == before and len(rows) == 2 * len(before)
    html = (tmp_path / "out" / "audit.html").read_text()
    assert "box 16×16" in html and f"key {first.key}" in html  # the old run is listed


def test_unlabeled_folder_ranks_by_score(tmp_path):
    for i, level in enumerate((10, 250, 120)):
        _save(tmp_path / "data" / f"x{i}.png", np.full((32, 32, 3), level, np.uint8))
    clf = CallableClassifier(region_score, class_names=["sfw", "nsfw"])
    o = AuditOptions(top=2, box=16, stride=16, concepts=False, mosaic=0)
    result = audit(tmp_path / "data", tmp_path / "out", model=clf, options=o)
    assert result.metrics == {} and result.heatmaps == 2
    assert sorted(f.name[:4] for f in (tmp_path / "out" / "heatmaps").glob("*.png")) == \
        ["top_", "top_"]
    rows = _read_csv(tmp_path / "out" / "scores.csv")
    assert all(r["label"] == "" and r["outcome"] == "" for r in rows)
    assert not (tmp_path / "out" / "concepts.csv").exists()
    page = (tmp_path / "out" / "audit.html").read_text()
    assert "Highest scores" in page
    # issue 22: each card says what its colours mean, from its own map's JSON, and its
    # picture is drawn at the card's size so the page shows the legend at native size
    maps = sorted((tmp_path / "out" / "heatmaps").glob("*.json"))
    readings = [json.loads(f.read_text())["reading"] for f in maps]
    assert all(r.startswith("Colour = drop in p(nsfw): red where the region supports nsfw")
               for r in readings)
    assert all(str(escape(r)) in page for r in readings) and "red = hiding" not in page
    for png in (tmp_path / "out" / "heatmaps").glob("*.png"):
        assert Image.open(png).size[0] <= 256


def test_labels_csv(tmp_path):
    for name in ("a", "b", "c"):
        _save(tmp_path / "imgs" / f"{name}.png", np.zeros((8, 8, 3), np.uint8))
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\nimgs/a.png,NSFW\n{tmp_path / 'imgs/b.png'},sfw\nimgs/c.png,\n")
    ds = open_dataset(labels, ["sfw", "nsfw"])
    assert [(p.path.name, p.label) for p in ds] == [("a.png", "nsfw"), ("b.png", "sfw"),
                                                    ("c.png", None)]
    ds = open_dataset(tmp_path, ["sfw", "nsfw"], labels=labels)
    assert [p.path for p in ds][0] == tmp_path / "imgs" / "a.png"
    labels.write_text("imgs/a.png,porn\n")
    with pytest.raises(OptionError, match=r"labels.csv:1: label 'porn' is not a class"):
        list(open_dataset(labels, ["sfw", "nsfw"]))


# --- metrics ----------------------------------------------------------------------------------

def test_metrics_against_brute_force():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 8, size=60) / 8.0  # many ties
    positive = rng.random(60) < 0.4
    pos, neg = scores[positive], scores[~positive]
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert m.roc_auc(scores, positive) == pytest.approx(brute)
    fpr, tpr, _ = m.roc_curve(scores, positive)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(brute)
    assert m.roc_auc([0.1, 0.2], [True, True]) is None
    r = m.at_threshold([0.9, 0.8, 0.3, 0.6, 0.1], [True, False, True, False, False], 0.5)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (1, 2, 1, 1)
    assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((1 / 3, 1 / 2, 2 / 5))
    assert m.at_threshold([0.1], [False], 0.5)["precision"] is None
    cm = m.confusion_matrix(["a", "b", "b", "a"], ["a", "a", "b", "a"], ["a", "b"])
    assert cm.tolist() == [[2, 0], [1, 1]]


# --- CLI --------------------------------------------------------------------------------------

def test_cli_audit(tmp_path, monkeypatch):
    synthetic(tmp_path / "data", n_bright=2, n_dark=1)
    (tmp_path / "data" / "sfw" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 20)
    (tmp_path / "model.py").write_text(
        "import numpy as np\n"
        "def score(batch):\n    s = batch[:, 16:32, 16:32].mean(axis=(1, 2, 3)) / 255.0\n"
        "    return np.stack([1 - s, s], axis=1)\n")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["audit", "data", "-o", "out", "--model", "model.py:score", "--classes", "sfw,nsfw",
            "--top", "1", "--box", "32", "--stride", "32", "--no-concepts", "--mosaic", "0",
            "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "run 1 (new" in result.output and "FP 2" in result.output
    assert "1 files could not be read" in result.output
    assert (tmp_path / "out" / "audit.html").is_file()
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "run 1 (resumed" in result.output
    bad = runner.invoke(app, [*args[:-1], "--stride", "48"])
    assert bad.exit_code == 2 and "larger than box" in bad.output


def test_cli_audit_of_nothing_readable_fails(tmp_path, monkeypatch):
    """An audit whose every image failed writes its report (errors.csv says why) but exits 2
    with a red line, and so does one that found no image: a run that measured nothing must not
    pass for one in a pipeline."""
    for name in ("a.png", "b.png"):
        (tmp_path / "data" / "sfw").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "sfw" / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 20)
    (tmp_path / "model.py").write_text(
        "import numpy as np\n"
        "def score(batch):\n    s = batch.mean(axis=(1, 2, 3)) / 255.0\n"
        "    return np.stack([1 - s, s], axis=1)\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["audit", "data", "-o", "out", "--model", "model.py:score",
                                      "--classes", "sfw,nsfw", "--no-concepts", "--mosaic", "0",
                                      "--quiet"])
    assert result.exit_code == 2, result.output
    assert "0 scored, 2 failed" in result.output
    assert "none of the 2 images could be read and scored" in result.output
    assert len(_read_csv(tmp_path / "out" / "errors.csv")) == 2
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["audit", "empty", "-o", "out2", "--model",
                                      "model.py:score", "--classes", "sfw,nsfw", "--no-concepts",
                                      "--mosaic", "0", "--quiet"])
    assert result.exit_code == 2 and "found no image" in result.output, result.output


def test_model_failures(tmp_path):
    """An image the model rejects fails alone; a model that rejects everything stops the run
    without recording the images as bad files (so a resume retries them)."""
    from explain.errors import ModelError

    for i, level in enumerate((10, 99, 200, 30)):
        _save(tmp_path / "data" / "sfw" / f"x{i}.png", np.full((32, 32, 3), level, np.uint8))

    def picky(batch):
        if (batch[:, 0, 0, 0] == 99).any():
            raise ValueError("cannot score this one")
        return region_score(batch)

    clf = CallableClassifier(picky, class_names=["sfw", "nsfw"])
    o = AuditOptions(top=0, concepts=False, mosaic=0, batch_size=4)
    result = audit(tmp_path / "data", tmp_path / "out", model=clf, options=o)
    errors = _read_csv(tmp_path / "out" / "errors.csv")
    assert (result.scored, result.failed) == (3, 1)
    assert errors[0]["path"].endswith("x1.png") and "cannot score this one" in errors[0]["reason"]

    def broken(batch):
        raise ConnectionError("server down")

    clf = CallableClassifier(broken, class_names=["sfw", "nsfw"])
    with pytest.raises(ModelError, match="server down"):
        audit(tmp_path / "data", tmp_path / "out2", model=clf, options=o)
    assert _rows(tmp_path / "out2") and all(r[3] is None for r in _rows(tmp_path / "out2"))


def test_one_window_plan_per_audit(tmp_path, window_plans):
    # box and stride become a WindowPlan once per run and every image's map and cue harvest
    # gets it passed down; the options' own check (the registry's) makes the other
    synthetic(tmp_path / "data", n_bright=4, n_dark=3)
    clf = CallableClassifier(region_score, class_names=["sfw", "nsfw"])
    cues = CueOptions(min_fps=1, negatives=3, positives=1, embed="pixels", paste_pairs=2)
    o = AuditOptions(threshold=0.5, top=3, box=16, stride=(8, 0.125), mosaic=0, concepts=False,
                     label_issues=False, clusters=False, cue_options=cues)
    result = audit(tmp_path / "data", tmp_path / "out", model=clf, options=o)
    assert result.heatmaps == 3 and result.cues is not None and result.cues.calls > 3
    assert window_plans == [(16, (8, 0.125))] * 2
