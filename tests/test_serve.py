"""`explain serve` for real: uvicorn in a subprocess on 127.0.0.1, the real open_nsfw (onnx),
real uploads. Maps equal the library's `occlusion_map`; a `kill -9` loses no job; tokens keep
tenants apart; every refusal has its status; the page works in a real headless Chromium.

Small images and large boxes keep the jobs short (a few masked copies each)."""

from __future__ import annotations

import importlib.util
import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from serve_client import Server, png
from test_report_browser import Browser
from typer.testing import CliRunner

from explain.cli import app
from explain.occlusion import occlusion_map
from explain.render import figure

if importlib.util.find_spec("fastapi") is None:  # under CI a missing extra fails, never skips
    if os.environ.get("CI", "").lower() == "true":
        raise RuntimeError("the serve extra is not installed: pip install -e '.[dev]'")
    pytest.skip("the serve extra is not installed (pip install -e '.[dev]')",
                allow_module_level=True)

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "astronaut.jpg"
ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server with two tenants, a 1 MB upload limit and 1,000,000 pixels at most."""
    root = tmp_path_factory.mktemp("serve")
    tokens = root / "tokens.txt"
    tokens.write_text(f"# two tenants\n{ALICE}\n\n{BOB}\n")
    s = Server(root / "data", "--tokens", str(tokens), "--max-upload-mb", "1",
               "--max-pixels", "1000000").start()
    yield s
    s.stop()


def small_images(photos: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
    """``n`` small RGB images of different sizes and content."""
    out = []
    for i in range(n):
        photo = list(photos.values())[i % len(photos)]
        h, w = 48 + 8 * (i % 5), 56 + 8 * (i % 3)
        out.append(np.ascontiguousarray(cv2.resize(photo[i * 7:, i * 5:], (w, h),
                                                   interpolation=cv2.INTER_AREA)))
    return out


def heatmap_of(server: Server, job: dict, token: str) -> np.ndarray:
    reply = server.call("GET", job["results"]["heatmap.npy"], token=token)
    assert reply.status == 200
    return np.load(io.BytesIO(reply.body))


def test_twenty_concurrent_jobs_equal_the_library(server, photos, nsfw_onnx, cli_picture,
                                                  tmp_path):
    images = small_images(photos, 20)
    fills = ["gray", "black", "mean", "blur"]
    boxes = [("50%", 0.5), ("100%,50%", (1.0, 0.5))]  # 4 windows, or 2 side by side
    asks = [{"box": boxes[i % 2][0], "stride": boxes[i % 2][0], "fill": fills[i % 4],
             "target": "nsfw"} for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda a: server.submit(png(a[0]), ALICE, **a[1]),
                                zip(images, asks, strict=True)))
    assert [r.status for r in replies] == [202] * 20
    ids = [r.json()["id"] for r in replies]
    assert len(set(ids)) == 20
    for i, (job_id, image, ask) in enumerate(zip(ids, images, asks, strict=True)):
        job = server.wait(job_id, ALICE)
        assert job["status"] == "done", job
        size = boxes[i % 2][1]
        expected = occlusion_map(nsfw_onnx, image, box=size, stride=size, fill=ask["fill"])
        assert job["score"] == pytest.approx(expected.score, abs=1e-6)
        assert job["progress"] == {"done": expected.windows + 2, "total": expected.windows + 2,
                                   "stage": None}
        np.testing.assert_allclose(heatmap_of(server, job, ALICE), expected.values, atol=1e-6)
    folder = server.data / "jobs" / job_id
    assert {p.name for p in folder.iterdir()} == {"input", "heatmap.npy", "heatmap.json"}
    overlay = server.call("GET", job["results"]["overlay.png"], token=ALICE)
    assert overlay.headers["content-type"] == "image/png"
    (tmp_path / "overlay.png").write_bytes(overlay.body)
    cli_picture(tmp_path / "overlay.png", figure, image, expected)
    # rendered on that first request and kept: the next one is the same file
    assert (folder / "overlay.png").read_bytes() == overlay.body
    assert server.call("GET", job["results"]["overlay.png"], token=ALICE).body == overlay.body
    for name in ("side.png", "original.png"):
        assert server.call("GET", job["results"][name], token=ALICE).status == 200
    meta = server.call("GET", job["results"]["heatmap.json"], token=ALICE).json()
    assert meta["method"] == "occlusion" and meta["params"]["fill"] == ask["fill"]


@pytest.mark.slow
def test_tokens_keep_tenants_apart(server, photos):
    reply = server.submit(png(small_images(photos, 1)[0]), ALICE, box="50%", stride="50%")
    job_id = reply.json()["id"]
    url = f"/v1/visualizations/{job_id}"
    assert server.call("GET", url).status == 401
    assert server.call("GET", url).headers["www-authenticate"] == "Bearer"
    assert server.call("GET", url, token="alice-token-0123456788").status == 401
    assert server.submit(b"whatever", None).status == 401
    assert server.call("GET", "/v1/models").status == 401
    other = server.call("GET", url, token=BOB)
    unknown = server.call("GET", "/v1/visualizations/00000000-0000-4000-8000-000000000000",
                          token=BOB)
    assert (other.status, other.body) == (unknown.status, unknown.body) == (404, other.body)
    assert server.call("DELETE", url, token=BOB).status == 404
    assert server.call("GET", f"{url}/overlay.png", token=BOB).status == 404
    assert job_id not in server.call("GET", "/v1/visualizations?limit=100", token=BOB).body.decode()
    assert job_id in server.call("GET", "/v1/visualizations?limit=100", token=ALICE).body.decode()
    assert server.wait(job_id, ALICE)["status"] == "done"
    pending = server.submit(png(small_images(photos, 1)[0]), ALICE).json()["id"]
    for gone in (job_id, pending):  # a done job, and one still queued or running
        assert server.call("DELETE", f"/v1/visualizations/{gone}", token=ALICE).status == 204
        assert server.call("GET", f"/v1/visualizations/{gone}", token=ALICE).status == 404
    for path in ("/", "/healthz", "/docs", "/openapi.json", "/static/app.js"):
        assert server.call("GET", path).status == 200, path
    assert "access-control-allow-origin" not in {k.lower() for k in
                                                 server.call("GET", "/healthz").headers}


def bomb_png(side: int) -> bytes:
    """A PNG header claiming ``side``×``side`` pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(
        b"\0" * 1024)) + chunk(b"IEND", b"")


def test_every_refusal_has_its_status(server, photos):
    image = png(small_images(photos, 1)[0])
    large = png(np.zeros((200, 200, 3), np.uint8))  # 40,000 windows of 1 px

    def detail(reply) -> str:
        return reply.body.decode()

    big = server.submit(bomb_png(30000), ALICE)
    assert big.status == 413 and ("bomb" in detail(big) or "pixels" in detail(big))
    over = server.submit(png(np.zeros((1200, 1000, 3), np.uint8)), ALICE)
    assert over.status == 413 and "1,000,000" in detail(over)
    text = server.submit(b"just some text, not an image", ALICE)
    assert text.status == 415 and "not an image" in detail(text)
    assert server.submit(b"", ALICE).status == 415
    for fields, name in (({"method": "lime"}, "method"), ({"box": "abc"}, "box"),
                         ({"box": "8", "stride": "16"}, "stride"), ({"target": "cat"}, "target"),
                         ({"fill": "pink"}, "fill"), ({"method": "gradcam"}, "method"),
                         ({"box": "1", "stride": "1"}, "box"), ({"masks": "0"}, "masks")):
        reply = server.submit(large if name == "box" and "stride" in fields else image, ALICE,
                              **fields)
        assert reply.status == 422, (fields, reply)
        assert [d["loc"][-1] for d in reply.json()["detail"]] == [name], reply.json()
    assert "torch module" in detail(server.submit(image, ALICE, method="gradcam"))
    # over the upload limit: refused from the declared length, and when the body itself is longer
    head = (f"POST /v1/visualizations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n")
    assert server.raw_status(f"{head}Content-Length: 5000000\r\n\r\n".encode(),
                             b"-" * 100_000) == 413
    part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x"\r\n\r\n'
    body = part + b"\0" * 1_300_000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                      for i in range(0, len(body), 65536))
    assert server.raw_status(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode(), chunks) == 413
    padded = server.submit(image + b"\0" * 1_010_000, ALICE)
    assert padded.status == 413


def test_a_truncated_image_fails_its_job_with_the_reason(server, photos):
    whole = png(small_images(photos, 1)[0])
    reply = server.submit(whole[:len(whole) // 2], ALICE, box="50%", stride="50%")
    assert reply.status == 202
    job = server.wait(reply.json()["id"], ALICE)
    assert job["status"] == "failed" and "truncated" in job["error"], job
    assert "/" not in job["error"].split("(")[0]  # the reason, not the server's own path
    assert job["results"] == {}


def test_kill_9_mid_job_loses_nothing_and_a_full_queue_is_429(tmp_path, photos, nsfw_onnx):
    image = cv2.resize(photos["astronaut"], (256, 256), interpolation=cv2.INTER_AREA)
    server = Server(tmp_path / "data", "--max-queue", "1", "--batch-size", "4").start()
    try:
        job_id = server.submit(png(image), box="64", stride="64").json()["id"]
        full = server.submit(png(image), box="64", stride="64")
        assert full.status == 429 and int(full.headers["retry-after"]) > 0
        job = server.wait(job_id, until=("done", "failed"), timeout=0)
        while job["status"] == "queued" or (job["status"] == "running"
                                            and job["progress"]["done"] < 4):
            job = server.wait(job_id, timeout=0)
        assert job["status"] == "running", job  # 4 of its 17 masked copies scored
        server.kill()
        server = Server(tmp_path / "data", "--max-queue", "1").start()
        job = server.wait(job_id)
        assert job["status"] == "done", job
        values = heatmap_of(server, job, None)
    finally:
        server.stop()
    np.testing.assert_allclose(values, occlusion_map(nsfw_onnx, image, box=64, stride=64).values,
                               atol=1e-6)


def wait_js(browser: Browser, condition: str) -> object:
    """Poll ``condition`` (a JS expression) in the page until it is truthy; its value."""
    answer = browser.page("Runtime.evaluate", awaitPromise=True, returnByValue=True,
                          expression="new Promise(r => { const t = setInterval(() => { const v = "
                          f"({condition}); if (v) {{ clearInterval(t); r(v); }} }}, 50); }})")
    return answer["result"]["value"]


def test_the_page_explains_an_uploaded_image_in_chromium(server, chromium, tmp_path):
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open(server.base + "/")
        browser.deadline += 90
        wait_js(browser, "!document.getElementById('token-box').hidden")
        browser.evaluate(f"document.getElementById('token').value = '{ALICE}'; "
                         "document.getElementById('token-form').requestSubmit(); true")
        wait_js(browser, "!document.getElementById('go').disabled")
        document = browser.page("DOM.getDocument")["root"]["nodeId"]
        node = browser.page("DOM.querySelector", nodeId=document, selector="#file")["nodeId"]
        browser.page("DOM.setFileInputFiles", nodeId=node, files=[str(SAMPLE)])
        browser.evaluate("document.getElementById('box').value = '50%'; "
                         "document.getElementById('stride').value = '50%'; "
                         "document.getElementById('go').click(); true")
        assert wait_js(browser, "document.getElementById('overlay').naturalWidth") >= 512
        wait_js(browser, "document.getElementById('side').naturalWidth")
        wait_js(browser, "document.getElementById('original').naturalWidth")  # each loads alone
        shown = browser.evaluate("[document.getElementById('score').textContent, "
                                 "document.getElementById('side').naturalWidth, "
                                 "document.getElementById('original').naturalWidth, "
                                 "document.getElementById('jobs').rows.length]")
        assert shown[0].startswith("p(nsfw) of the image: ") and shown[1] > shown[2] == 512
        assert shown[3] >= 1
        assert browser.console_errors() == []
    finally:
        browser.close()


def test_serve_refuses_an_open_address_without_tokens_and_names_a_missing_extra(monkeypatch):
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "without --tokens" in result.output
    monkeypatch.setattr("explain.cli.serve.SERVE_PACKAGES", ("no_such_package_for_serve",))
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2 and "pip install 'explain[serve]'" in result.output

