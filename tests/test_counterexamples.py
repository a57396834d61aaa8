"""``explain counterexamples`` with known answers: a function model whose planted cue (a red
corner) makes false positives of negative images; a pool of negatives with and without the corner.
Every window, score rise and count below follows from how the model and the images are built."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from explain.audit import AuditOptions, CueOptions, audit, counterexamples
from explain.audit.mining import COLUMNS, SYNTHETIC_COLUMNS, mine, read_run
from explain.cli import app
from explain.errors import OptionError
from explain.models import CallableClassifier

REGION = (16, 16, 32, 32)
CORNER = (0, 48, 16, 64)  # the one 16-px window (stride 16) that covers the red corner
MODEL = '''
import numpy as np


def model(batch):
    region = batch[:, 16:32, 16:32].astype(np.float64).mean(axis=(1, 2, 3)) / 255.0
    red = ((batch[..., 0] > 150) & (batch[..., 1] < 50)).sum(axis=(1, 2)) >= 32
    s = np.where(red, 0.9, region)
    return np.stack([1.0 - s, s], axis=1)


model.class_names = ["sfw", "nsfw"]
'''


class Model:
    """p(nsfw) = the REGION's brightness, 0.9 when the image holds a red patch (half the
    corner's pixels, anywhere: a pasted corner counts too); counts the images."""

    def __init__(self) -> None:
        space: dict = {}
        exec(MODEL, space)  # the same function the CLI test loads from a file
        self.fn = space["model"]
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += len(batch)
        return self.fn(batch)


def image(path: Path, level: int, seed: int, red: bool = False) -> None:
    a = np.random.default_rng(seed).integers(0, 100, size=(64, 64, 3), dtype=np.uint8)
    t, le, b, r = REGION
    a[t:b, le:r] = level
    if red:
        a[0:8, 56:64] = (220, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


OPTIONS = AuditOptions(threshold=0.5, top=20, box=16, stride=16, concepts=False, mosaic=0,
                       label_issues=False, clusters=False,
                       cue_options=CueOptions(embed="pixels", negatives=10, positives=5))


def build(root: Path) -> None:
    """The audit's data (8 red-cornered sfw: its false positives; 10 dark sfw; 10 bright nsfw)
    and the pool: 5 red-cornered negatives (levels 10..50), 6 plain dark ones, a broken file."""
    for i in range(8):
        image(root / "data" / "sfw" / f"red_{i}.png", 30, i, red=True)
    for i in range(10):
        image(root / "data" / "sfw" / f"dark_{i}.png", 20 + 2 * i, 100 + i)
        image(root / "data" / "nsfw" / f"bright_{i}.png", 220, 200 + i)
    for i in range(5):
        image(root / "pool" / f"carrier_{i}.png", 10 + 10 * i, 300 + i, red=True)
    for i in range(6):
        image(root / "pool" / "plain" / f"plain_{i}.png", 25 + i, 400 + i)
    (root / "pool" / "broken.png").write_bytes(b"not a png")


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    root = tmp_path_factory.mktemp("mine")
    build(root)
    model = Model()
    clf = CallableClassifier(model, class_names=["sfw", "nsfw"])
    result = audit(root / "data", root / "run", model=clf, options=OPTIONS)
    assert result.cues is not None and result.cues.cues
    before = model.calls
    found = counterexamples(root / "run", root / "pool", root / "out", model=clf, synthesize=3)
    return root, model, clf, found, model.calls - before


def test_the_carriers_are_found_with_their_window_and_score_rise(mined):
    root, _, _, found, _ = mined
    rows = _csv(root / "out" / "counterexamples.csv")
    assert tuple(rows[0]) == COLUMNS
    cue = _csv(root / "run" / "cues.csv")[0]["cue"]  # rank 1: the red corner
    top = [r for r in rows if r["cue"] == cue]
    assert sorted(Path(r["path"]).name for r in top) == [f"carrier_{i}.png" for i in range(5)]
    for r in top:
        assert tuple(int(r[k]) for k in ("top", "left", "bottom", "right")) == CORNER
        level = 10 + 10 * int(Path(r["path"]).stem[-1])
        # filling the corner gray removes the red: the score falls from 0.9 to the REGION's level
        assert float(r["score"]) == pytest.approx(0.9 - level / 255, abs=1e-6)
        assert float(r["p_target"]) == pytest.approx(0.9, abs=1e-6)  # the image's own score
        assert float(r["similarity"]) > 0.5
    # ranked by similarity × score: the darkest carrier (largest rise) first
    assert [int(r["rank"]) for r in top] == [1, 2, 3, 4, 5]
    keys = [float(r["similarity"]) * float(r["score"]) for r in top]
    assert keys == sorted(keys, reverse=True)
    assert not any("plain" in r["path"] for r in rows)  # no positive heat: no window


def test_a_broken_pool_image_is_listed_and_the_scan_goes_on(mined):
    root, _, _, found, _ = mined
    assert found.scanned == 12 and found.failed == 1
    failed = _csv(root / "out" / "pool_failed.csv")
    assert [Path(r["path"]).name for r in failed] == ["broken.png"]
    assert failed[0]["reason"]


def test_a_rerun_makes_no_model_call(mined):
    root, model, clf, found, calls = mined
    assert calls > 0 and found.calls == calls
    before = (root / "out" / "counterexamples.csv").read_bytes()
    again = counterexamples(root / "run", root / "pool", root / "out", model=clf)
    assert again.calls == 0 and model.calls == model.calls  # nothing scored
    assert (root / "out" / "counterexamples.csv").read_bytes() == before


def test_synthetic_counter_examples_paste_the_cue_into_true_negatives(mined):
    root, _, _, found, _ = mined
    rows = _csv(root / "out" / "synthetic.csv")
    assert tuple(rows[0]) == SYNTHETIC_COLUMNS
    published = _csv(root / "run" / "cues.csv")
    red = published[0]["cue"]
    assert float(published[0]["paste_gain"]) > 0.5  # the pasted corner makes a false positive
    assert {r["cue"] for r in rows} == {red} and len(rows) == 3  # only the proven cue
    for c in published[1:]:  # the others: a note each, no pastes
        assert any(n.startswith(f"cue {c['cue']}: no synthetic counter-examples")
                   for n in found.notes)
    for r in rows:
        assert r["label"] == "sfw" and "dark_" in r["source"]
        picture = np.asarray(Image.open(root / "out" / r["path"]).convert("RGB"))
        t, le, b, ri = (int(r[k]) for k in ("top", "left", "bottom", "right"))
        source = np.asarray(Image.open(r["source"]).convert("RGB"))
        outside = np.ones(picture.shape[:2], bool)
        outside[t:b, le:ri] = False
        assert (picture[outside] == source[outside]).all()  # only the box changed
        if r["cue"] == red:
            assert "red_" in r["patch"]  # a false positive's patch
            assert (b - t, ri - le) == (16, 16)  # same image size: the patch keeps its size


@pytest.mark.slow
def test_the_audit_mines_its_pool_after_cue_discovery(mined, tmp_path):
    root, _, clf, _, _ = mined
    options = AuditOptions(**{**OPTIONS.__dict__, "pool": str(root / "pool")})
    result = audit(root / "data", tmp_path / "run", model=clf, options=options)
    assert result.files["pool_counterexamples"] == tmp_path / "run" / "counterexamples.csv"
    assert (_csv(tmp_path / "run" / "counterexamples.csv")
            == _csv(root / "out" / "counterexamples.csv"))
    assert (tmp_path / "run" / "counterexamples.html").is_file()


def test_pools_that_are_the_run_or_the_output_are_refused(mined):
    root, _, clf, _, _ = mined
    with pytest.raises(OptionError, match="audit's own folder"):
        counterexamples(root / "run", root / "run", root / "elsewhere", model=clf)
    with pytest.raises(OptionError, match="output folder"):
        counterexamples(root / "run", root / "pool", root / "pool", model=clf)
    with pytest.raises(OptionError, match="output folder"):
        counterexamples(root / "run", root / "out" / "synthetic", root / "out", model=clf)
    with pytest.raises(OptionError, match="not a folder"):
        counterexamples(root / "run", root / "pool" / "broken.png", root / "x", model=clf)
    with pytest.raises(OptionError, match="--pool"):
        AuditOptions(pool=str(root / "nowhere")).check()


def test_synthetic_files_are_never_written_over_the_run_s_images(mined, tmp_path):
    root, model, clf, _, _ = mined
    mining, _ = read_run(root / "run")
    negative = tmp_path / "out" / "synthetic" / "dark.png"
    image(negative, 20, 1)
    mining.negatives = [(str(negative), "sfw")]
    before = model.calls
    with pytest.raises(OptionError, match="holds the input"):
        mine(clf, mining, root / "pool", tmp_path / "out", synthesize=1)
    assert model.calls == before  # refused before any work


@pytest.mark.slow
def test_the_cli_loads_the_model_or_says_how(mined, tmp_path):
    root, _, _, _, _ = mined
    runner = CliRunner()
    refused = runner.invoke(app, ["counterexamples", str(root / "run"), "--pool",
                                  str(root / "pool"), "-o", str(tmp_path / "a")])
    assert refused.exit_code != 0 and "--model" in refused.output
    assert "Traceback" not in refused.output
    (tmp_path / "model.py").write_text(MODEL)
    done = runner.invoke(app, ["counterexamples", str(root / "run"), "--pool",
                               str(root / "pool"), "-o", str(tmp_path / "b"), "-m",
                               f"{tmp_path / 'model.py'}:model"])
    assert done.exit_code == 0, done.output
    assert "cue 1: 5 listed" in done.output
    assert (_csv(tmp_path / "b" / "counterexamples.csv")
            == _csv(root / "out" / "counterexamples.csv"))


@pytest.mark.slow
def test_the_page_in_chromium_shows_each_listed_image_with_its_window(mined, chromium,
                                                                       tmp_path):
    from test_report_browser import Browser

    root, _, _, found, _ = mined
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open(found.files["html"].as_uri())
        assert browser.console_errors() == []
        shown = browser.evaluate("Array.from(document.querySelectorAll('figure img'), "
                                 "i => [i.alt, i.complete, i.naturalWidth])")
        headings = browser.evaluate("Array.from(document.querySelectorAll('h2'), "
                                    "h => h.textContent)")
    finally:
        browser.close()
    assert sorted(Path(alt).name for alt, *_ in shown) == [f"carrier_{i}.png" for i in range(5)]
    assert all(done and width == 192 for _, done, width in shown)  # 64 px enlarged 3×
    assert headings[0].startswith("Cue 1 (rank 1 in the audit, strength 1.570, paste gain +0.")
    assert "not proven" not in headings[0] and "no strength" not in headings[0]
    assert "strength 0.000, paste gain +0.103: no strength: not a cue of the audit's errors" in \
        headings[1]  # the bright nsfw region: pasting it raises p, but it is no error cue
    assert "5 pool image(s) listed" in headings[0]
    assert headings[-1] == "Pool images that could not be read"
