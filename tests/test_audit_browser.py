"""``audit.html`` of a small real audit (real photos, the real open_nsfw) in a real headless
Chromium: it loads with no console error and every picture on it is decoded."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from test_report_browser import Browser

from explain.audit import AuditOptions, audit

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "astronaut.jpg"


def _save(path: Path, rgb: np.ndarray, side: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = rgb.shape[:2]
    size = (side, side) if side == 256 else (side, round(side * h / w))
    Image.fromarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)).save(path)


@pytest.fixture(scope="module")
def opened(chromium, tmp_path_factory, nsfw_onnx):
    """A labeled folder of five photos (the sample at open_nsfw's 256×256 input size, so that
    an exact-size image is in the mix) and one broken file, audited and opened from disk."""
    root = tmp_path_factory.mktemp("audit-browser")
    _save(root / "data/nsfw/astronaut.png", np.asarray(Image.open(SAMPLE).convert("RGB")), 256)
    for name, photo in (("coffee", skdata.coffee()), ("chelsea", skdata.chelsea()),
                        ("rocket", skdata.rocket()), ("ihc", skdata.immunohistochemistry())):
        _save(root / f"data/sfw/{name}.png", photo, 120)
    (root / "data/sfw/broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    options = AuditOptions(threshold=0.01, top=2, box=64, stride=64, concepts=False, mosaic=5)
    result = audit(root / "data", root / "out", model=nsfw_onnx, options=options)
    browser = Browser(chromium, root / "profile")
    try:
        browser.open(result.files["html"].as_uri())
        yield browser, result
    finally:
        browser.close()


def test_audit_page_has_no_console_errors(opened):
    browser, result = opened
    assert (result.scored, result.failed) == (5, 1)
    assert browser.console_errors() == []


def test_every_audit_picture_is_decoded(opened):
    browser, result = opened
    images = browser.evaluate("Array.from(document.images, i => [i.alt, i.complete, "
                              "i.naturalWidth, i.naturalHeight])")
    html = result.files["html"].read_text(encoding="utf-8")
    assert len(images) == html.count("<img ")
    alts = [alt for alt, *_ in images]
    # the three plots, the mosaic, and a photo and a heatmap for each card of the galleries
    assert {"score histograms per label", "ROC curve", "similarity mosaic",
            "reliability diagram"} <= set(alts)
    assert sum(alt.startswith("occlusion map") for alt in alts) == result.heatmaps > 0
    assert all(complete and w > 0 and h > 0 for _, complete, w, h in images), images
