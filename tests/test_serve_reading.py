"""Issue 22, item 1, on the service: each job has its own page, ``/jobs/{id}``, and the page's
words about the colours come from the map (its ``unit``, sign and drawn scale), never from one
sentence written for occlusion. A real server (the default open-nsfw: onnx for the black box,
the torch port for Grad-CAM) and a real headless Chromium."""

from __future__ import annotations

import cv2
import pytest
from serve_client import Server, png
from test_report_browser import Browser
from test_serve import wait_js

from explain.render import reading, scale

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve-reading") / "data", model="open-nsfw").start()
    yield s
    s.stop()


def done(server: Server, image: bytes, **fields: str) -> dict:
    reply = server.submit(image, **fields)
    assert reply.status == 202, reply.body
    job = server.wait(reply.json()["id"])
    assert job["status"] == "done", job
    return job


def page_text(browser: Browser, url: str) -> tuple[str, str]:
    """The reading and the score line of the page at ``url`` once its pictures are shown."""
    browser.open(url)
    wait_js(browser, "document.getElementById('overlay').naturalWidth")
    return tuple(browser.evaluate("[document.getElementById('reading').textContent, "
                                  "document.body.innerText]"))


@pytest.mark.slow
def test_each_job_page_states_its_own_map_unit(server, chromium, photos, tmp_path):
    image = png(cv2.resize(photos["astronaut"], (160, 160), interpolation=cv2.INTER_AREA))
    cam = done(server, image, method="gradcam")
    occ = done(server, image, method="occlusion", box="50%", stride="50%")
    metas = {job["id"]: server.call("GET", job["results"]["heatmap.json"]).json()
             for job in (cam, occ)}
    assert metas[cam["id"]]["unit"] == "Grad-CAM of logit(nsfw) (>= 0)"
    assert metas[occ["id"]]["unit"] == "drop in p(nsfw)"
    page = server.call("GET", f"/jobs/{cam['id']}")
    assert page.status == 200 and b'<base href="../">' in page.body
    assert "base-uri 'self'" in page.headers["content-security-policy"]
    assert server.call("GET", "/jobs/not-a-job").status == 404
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.deadline += 120
        shown = {}
        for job in (cam, occ):
            shown[job["id"]] = page_text(browser, f"{server.base}/jobs/{job['id']}")
            words, _ = shown[job["id"]]
            assert metas[job["id"]]["unit"] in words
            assert words == metas[job["id"]]["reading"]
            assert browser.evaluate("document.getElementById('job-title').textContent"
                                    ).endswith(job["id"])
            assert browser.console_errors() == []
        cam_words, cam_page = shown[cam["id"]]
        assert "against" not in cam_page
        assert "supports" not in cam_words and "no sign" in cam_words
        occ_words, _ = shown[occ["id"]]
        assert "works against nsfw" in occ_words and "supports nsfw" in occ_words
        # the share link of a job opened from / leads to its own page
        link = browser.evaluate("document.querySelector('#share a').href")
        assert link == f"{server.base}/jobs/{occ['id']}"
    finally:
        browser.close()


def test_the_reading_follows_the_map_not_the_method(photos):
    """Unit-level: the sentence is built from signed/unit/the drawn scale."""
    import numpy as np

    from explain.heatmap import NOISE_FLOOR, WHITE_BOX_FLOOR, Heatmap

    occ = Heatmap(np.array([[-0.02, 0.1]], np.float32), "occlusion", "nsfw", signed=True,
                  unit="drop in p(nsfw)", noise_floor=NOISE_FLOOR)
    assert reading(occ, scale(occ)) == (
        "Colour = drop in p(nsfw): red where the region supports nsfw (above 0), blue where it "
        "works against nsfw (below 0), the middle colour at 0; the bar runs from -0.1 to 0.1.")
    cam = Heatmap(np.zeros((2, 2), np.float32), "gradcam", "nsfw",
                  unit="Grad-CAM of logit(nsfw) (>= 0)", noise_floor=WHITE_BOX_FLOOR)
    words = reading(cam, scale(cam))
    assert words.startswith("Colour = Grad-CAM of logit(nsfw) (>= 0), from 0 (dark blue) to "
                            "1e-06 (dark red). The map has no sign")
    assert words.endswith("No signal: largest |Grad-CAM of logit(nsfw) (>= 0)| 0 < 1e-06.")
    assert "supports" not in words
    jet_occ = reading(occ, scale(occ, colormap="jet"))
    assert "red where" not in jet_occ and "(dark red)" in jet_occ
