"""``explain compare``'s cue section with known answers: function models loaded back from the
specs their audits recorded. ``model_red`` has a planted cue (a red square anywhere raises
p(nsfw) to 0.9), ``model_plain`` has none, ``model_green`` has another (a green square): A's red
cue persists under a second audit of the same model, vanishes under the plain and the green
models, and the green model's cue is new."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from explain.audit import AuditOptions, audit
from explain.audit.comparison import compare
from explain.audit.cue_changes import CUE_COLUMNS, GAIN_FLOOR, new_status, status
from explain.audit.options import CueOptions
from explain.cli import app
from explain.models import CallableClassifier

CALLS = {"n": 0}
CELLS = [(0, 3), (3, 0), (3, 3), (0, 0), (0, 2), (2, 0)]


def _region(batch: np.ndarray) -> np.ndarray:
    return batch[:, 16:32, 16:32].astype(np.float64).mean(axis=(1, 2, 3)) / 255.0


def _square(batch: np.ndarray, channel: int) -> np.ndarray:
    """Whether at least 40 pixels are pure ``channel`` (red 0, green 1)."""
    b = batch.astype(np.int64)
    others = [c for c in range(3) if c != channel]
    pure = (b[..., channel] > 150) & (b[..., others[0]] < 60) & (b[..., others[1]] < 60)
    return pure.sum(axis=(1, 2)) >= 40


def _two(s: np.ndarray, batch: np.ndarray) -> np.ndarray:
    CALLS["n"] += len(batch)
    return np.stack([1.0 - s, s], axis=1)


def model_red(batch: np.ndarray) -> np.ndarray:
    """p(nsfw) = the centre region's brightness, 0.9 with a red square anywhere."""
    return _two(np.where(_square(batch, 0), 0.9, _region(batch)), batch)


def model_red_again(batch: np.ndarray) -> np.ndarray:
    """model_red under another name: a second version with the same cue."""
    return model_red(batch)


def model_plain(batch: np.ndarray) -> np.ndarray:
    """p(nsfw) = the centre region's brightness; no cue."""
    return _two(_region(batch), batch)


def model_green(batch: np.ndarray) -> np.ndarray:
    """p(nsfw) = the centre region's brightness, 0.9 with a green square anywhere."""
    return _two(np.where(_square(batch, 1), 0.9, _region(batch)), batch)


for _fn in (model_red, model_red_again, model_plain, model_green):
    _fn.class_names = ["sfw", "nsfw"]


def build(root: Path) -> Path:
    """64×64 images, background 30..50, the centre region (16..32) at a level: 8 plain sfw
    (dark), 8 nsfw (level 220), 6 sfw with a 12×12 red square and 6 with a green one, each
    inside one 16-pixel window cell away from the centre. Returns the manifest."""
    rng = np.random.default_rng(0)
    rows = []

    def image(name: str, level: int, label: str, colour: tuple | None = None,
              cell: tuple[int, int] = (0, 0)) -> None:
        a = rng.integers(30, 50, size=(64, 64, 3), dtype=np.uint8)
        a[16:32, 16:32] = level
        if colour is not None:
            top, left = 16 * cell[0] + 2, 16 * cell[1] + 2
            a[top:top + 12, left:left + 12] = colour
        Image.fromarray(a).save(root / f"{name}.png")
        rows.append(f"{name}.png,{label}\n")

    root.mkdir(parents=True, exist_ok=True)
    for i in range(8):
        image(f"sfw_{i}", 20 + 2 * i, "sfw")
        image(f"nsfw_{i}", 220, "nsfw")
    for i, cell in enumerate(CELLS):
        image(f"red_{i}", 30, "sfw", (220, 0, 0), cell)
        image(f"green_{i}", 30, "sfw", (0, 220, 0), cell)
    manifest = root / "labels.csv"
    manifest.write_text("path,label\n" + "".join(rows))
    return manifest


OPTIONS = AuditOptions(threshold=0.5, top=20, box=16, stride=16, concepts=False, mosaic=0,
                       cue_options=CueOptions(embed="pixels"), label_issues=False,
                       clusters=False)


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    root = tmp_path_factory.mktemp("cues")
    manifest = build(root / "data")
    for name in ("red", "red_again", "plain", "green"):
        audit(manifest, root / name, model=f"test_compare_cues:model_{name}", options=OPTIONS)
    audit(manifest, root / "object", model=CallableClassifier(model_plain), options=OPTIONS)
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _red_row(rows: list[dict]) -> dict:
    """The row of A's cue whose patches are the red squares (rank 1)."""
    return next(r for r in rows if r["cue_a"] and r["status"] != "new"
                and float(r["fp_share_a"]) == 1.0)


@pytest.mark.slow
def test_the_same_cue_persists_under_a_second_version(audits):
    result = compare(audits / "red", audits / "red_again", audits / "same", resamples=100,
                     cue_embed="pixels")
    rows = _rows(result.files["cue_changes"])
    assert tuple(rows[0]) == CUE_COLUMNS
    red = _red_row(rows)
    assert red["status"] == "persists" and red["cue_b"] == red["cue_a"]
    assert float(red["fp_share_b"]) == 1.0
    assert float(red["strength_b"]) == pytest.approx(float(red["strength_a"]), rel=0.2)
    # every paste of a red patch lifts a true negative (score 20/255 … 34/255) to 0.9
    assert 0.9 - 34 / 255 <= float(red["paste_gain_b"]) <= 0.9 - 20 / 255
    assert not any(r["status"] == "new" for r in rows)


@pytest.mark.slow
def test_the_cue_vanishes_under_a_model_without_it_and_a_resume_calls_no_model(audits):
    before = CALLS["n"]
    result = compare(audits / "red", audits / "plain", audits / "gone", resamples=100,
                     cue_embed="pixels")
    first = CALLS["n"] - before
    red = _red_row(_rows(result.files["cue_changes"]))
    assert red["status"] == "vanished" and red["cue_b"] == ""
    assert abs(float(red["paste_gain_b"])) <= GAIN_FLOOR
    assert red["fp_share_b"] == "" and red["strength_b"] == ""  # the plain run found no cues
    assert first == result.summary["cues"]["model_calls"] > 0
    assert any("run B published no cues" in n for n in result.summary["notes"])
    again = compare(audits / "red", audits / "plain", audits / "gone", resamples=100,
                    cue_embed="pixels")
    assert CALLS["n"] - before == first  # nothing called again
    assert again.summary["cues"]["model_calls"] == 0
    assert again.summary["cues"]["rows"] == result.summary["cues"]["rows"]


@pytest.mark.slow
def test_a_cue_only_b_has_is_new_and_a_s_cue_vanishes(audits):
    result = compare(audits / "red", audits / "green", audits / "other", resamples=100,
                     cue_embed="pixels")
    rows = _rows(result.files["cue_changes"])
    red = _red_row(rows)
    assert red["status"] == "vanished" and float(red["fp_share_b"]) == 0.0
    new = [r for r in rows if r["status"] == "new"]
    assert len(new) == 1 and new[0]["cue_a"] == ""
    assert float(new[0]["fp_share_b"]) == 1.0 and float(new[0]["fp_share_a"]) == 0.0
    assert float(new[0]["paste_gain_b"]) > 0.5 and new[0]["paste_gain_a"] == ""
    saved = json.loads(result.files["json"].read_text())["cues"]
    assert saved["embedding"].startswith("raw pixels")
    assert [r["status"] for r in saved["rows"]] == [r["status"] for r in rows]
    html = result.files["html"].read_text(encoding="utf-8")
    assert 'id="cues"' in html and html.count('alt="run B patch"') >= 6


@pytest.mark.slow
def test_a_model_that_cannot_be_reloaded_leaves_the_rest_written(audits):
    result = compare(audits / "red", audits / "object", audits / "object_cmp", resamples=100,
                     cue_embed="pixels")
    reason = result.summary["cues"]["reason"]
    assert "cannot be run again" in reason and "CallableClassifier" in reason
    assert "cue_changes" not in result.files
    assert not (audits / "object_cmp" / "cue_changes.csv").exists()
    assert result.files["image_changes"].is_file() and result.files["html"].is_file()
    assert "No cue was re-measured" in result.files["html"].read_text(encoding="utf-8")
    # the same comparison with the model given is measured
    given = compare(audits / "red", audits / "object", audits / "object_cmp", resamples=100,
                    cue_embed="pixels", model_b="test_compare_cues:model_plain")
    assert _red_row(_rows(given.files["cue_changes"]))["status"] == "vanished"


@pytest.mark.slow
def test_compare_cli_writes_the_cue_changes(audits):
    out = audits / "cli"
    res = CliRunner().invoke(app, ["compare", str(audits / "red"), str(audits / "green"), "-o",
                                   str(out), "--cue-embed", "pixels", "--resamples", "100"])
    assert res.exit_code == 0, res.output
    assert "cues: 0 persists, 0 weakened, 1 vanished, 1 new, 1 unproven (" in res.output
    assert _red_row(_rows(out / "cue_changes.csv"))["status"] == "vanished"


def test_status_thresholds():
    assert status(1.0, 0.6, 0.8, 0.7) == "persists"
    assert status(1.0, 0.5, 0.8, 0.7) == "weakened"  # strength fell by half
    assert status(1.0, 0.9, 0.8, 0.3) == "weakened"  # paste gain fell by more than half
    assert status(1.0, 0.1, 0.8, GAIN_FLOOR) == "vanished"
    assert status(1.0, 0.2, 0.8, GAIN_FLOOR) == "weakened"  # still ranks as a cue of errors
    assert status(1.0, None, 0.8, 0.0) == "vanished"  # B's errors not harvested: gain decides
    assert status(1.0, None, 0.8, None) == "unmeasured"  # nothing under B: never "persists"
    assert status(1.0, 0.0, 0.8, 0.4) == "weakened"  # B still reacts, makes no error with it
    assert status(0.0, 0.0, 0.01, 0.01) == "unproven"  # never a cue of A's errors
    assert status(0.0, 0.06, 0.0, 0.004) == "unproven"  # ... whatever B does
    assert status(None, 0.06, 0.8, 0.004) == "unproven"
    assert status(None, None, 0.8, None) == "unproven"  # A gave it no strength either
    assert status(0.0, 0.05, 0.01, -0.2) == "unproven"  # no strength under A: no comparison
    assert status(0.024, 0.058, -0.0003, 0.0027) == "unproven"  # A's paste test gave no lift
    assert status(1.0, 0.05, 0.8, 0.0, 0.9) == "weakened"  # B still leans on it: not vanished
    assert status(1.0, 0.05, 0.8, 0.0, 0.01) == "vanished"
    assert new_status(0.08, 0.076) == "new"  # B's own audit proved it
    assert new_status(0.05, -0.17) == new_status(0.0, 0.5) == new_status(None, None) == "unproven"


@pytest.mark.slow
def test_the_cue_section_in_chromium_decodes_every_patch(audits, chromium, tmp_path):
    from test_report_browser import Browser

    result = compare(audits / "red", audits / "green", audits / "seen", resamples=100,
                     cue_embed="pixels")
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open(result.files["html"].as_uri())
        assert browser.console_errors() == []
        patches = browser.evaluate("Array.from(document.querySelectorAll('img[alt$=patch]'), "
                                   "i => [i.alt, i.complete, i.naturalWidth])")
        statuses = browser.evaluate("Array.from(document.querySelectorAll('#cues ~ .cards h4 "
                                    "span'), s => s.textContent)")
    finally:
        browser.close()
    assert statuses == ["vanished", "unproven", "new"]
    # A's red cue (6 patches), A's region cue and B's (6 each), B's green cue (6)
    assert [alt for alt, *_ in patches].count("run A patch") == 12
    assert [alt for alt, *_ in patches].count("run B patch") == 12
    assert all(done and width == 96 for _, done, width in patches)


def test_the_recorded_spec_is_read_back_with_its_model_options():
    from explain.audit.cue_changes import reload_model
    from explain.errors import ModelError

    clf = reload_model("test_compare_cues:model_plain --classes safe,nude --input-size 32")
    assert clf.class_names == ["safe", "nude"] and tuple(clf.input_size) == (32, 32)
    with pytest.raises(ModelError, match="--bogus"):
        reload_model("test_compare_cues:model_plain --bogus 1")
    with pytest.raises(ModelError):
        reload_model("CallableClassifier:model_plain")  # what an audit of an object records
