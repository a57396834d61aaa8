"""HttpClassifier against a real HTTP server on 127.0.0.1 that serves the real open_nsfw.

The server implements the schema documented in explain.models.http; a per-test script makes it
misbehave (5xx, 4xx, garbage, wrong row count, slow answers) request by request.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image

from explain.errors import ModelError
from explain.images import to_tensor
from explain.models import HttpClassifier, load
from explain.models.base import resize


class ScoringServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, classifier) -> None:
        super().__init__(("127.0.0.1", 0), ScoringHandler)
        self.classifier = classifier
        self.class_names: list[str] | None = list(classifier.class_names)
        self.script: list[str] = []
        self.slow_seconds = 0.5
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/v1/score"

    def handle_error(self, request, client_address) -> None:
        """A client that gave up on a slow answer is expected here; stay quiet."""


class ScoringHandler(BaseHTTPRequestHandler):
    server: ScoringServer

    def log_message(self, format: str, *args: object) -> None:
        """No access log on the test output."""

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _scores(self, images: list[str]) -> list[list[float]]:
        if not images:
            return []
        arrays = [np.array(Image.open(BytesIO(base64.b64decode(b))).convert("RGB"))
                  for b in images]
        batch = torch.cat([to_tensor(a) for a in arrays])
        return self.server.classifier.predict(batch).tolist()

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(request)
        action = self.server.script.pop(0) if self.server.script else "ok"
        if action == "slow":
            time.sleep(self.server.slow_seconds)
        if action == "500":
            self._reply(500, b"overloaded, try later", "text/plain")
        elif action == "400":
            self._reply(400, b'{"error": "images must be PNG"}')
        elif action == "garbage":
            self._reply(200, b"<html>not json</html>", "text/html")
        elif action == "no-scores":
            self._reply(200, b'{"result": "fine"}')
        elif action == "bad-status":
            self.wfile.write(b"NONSENSE\r\n\r\n")
        else:
            scores = self._scores(request["images"])
            if action == "short":
                scores = scores[:-1]
            elif action == "strings":
                scores = [["high", "low"] for _ in scores]
            reply = {"scores": scores}
            if self.server.class_names is not None:
                reply["class_names"] = self.server.class_names
            self._reply(200, json.dumps(reply).encode())


@pytest.fixture
def server(nsfw_onnx) -> Iterator[ScoringServer]:
    httpd = ScoringServer(nsfw_onnx)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def photo_batch(photos) -> torch.Tensor:
    """The three photos at 256×256, quantised to 8 bits so the PNG round trip is lossless."""
    batch = torch.cat([resize(to_tensor(p), (256, 256)) for p in photos.values()])
    return (batch * 255).round() / 255


def _client(server: ScoringServer, **kwargs) -> HttpClassifier:
    options = {"class_names": ["sfw", "nsfw"], "timeout": 5.0, "retries": 2, "backoff": 0.01}
    options.update(kwargs)
    return HttpClassifier(server.url, **options)


def test_scores_equal_the_local_model(server, nsfw_onnx, photo_batch):
    clf = load(server.url)
    assert isinstance(clf, HttpClassifier)
    assert clf.class_names == ["sfw", "nsfw"]  # learnt from the server
    assert server.requests[0] == {"images": []}
    probs = clf.predict(photo_batch)
    torch.testing.assert_close(probs, nsfw_onnx.predict(photo_batch), atol=1e-6, rtol=0)
    sent = server.requests[1]["images"]
    assert len(sent) == 3
    decoded = np.array(Image.open(BytesIO(base64.b64decode(sent[0]))))
    assert decoded.shape == (256, 256, 3) and decoded.dtype == np.uint8


def test_batches_are_split_into_chunks(server, nsfw_onnx, photo_batch):
    clf = _client(server, max_batch=2)
    probs = clf.predict(photo_batch)
    assert [len(r["images"]) for r in server.requests] == [2, 1]
    torch.testing.assert_close(probs, nsfw_onnx.predict(photo_batch), atol=1e-6, rtol=0)


def test_class_names_probe_without_an_answer(server):
    server.class_names = None
    with pytest.raises(ModelError, match="--classes"):
        HttpClassifier(server.url)


def test_5xx_then_success_is_retried(server, nsfw_onnx, photo_batch):
    clf = _client(server)
    server.script = ["500", "500", "ok"]
    probs = clf.predict(photo_batch[:1])
    assert len(server.requests) == 3
    torch.testing.assert_close(probs, nsfw_onnx.predict(photo_batch[:1]), atol=1e-6, rtol=0)


def test_5xx_every_time_gives_up(server, photo_batch):
    clf = _client(server, retries=2)
    server.script = ["500"] * 5
    with pytest.raises(ModelError, match="failed 3 times; last error: 500.*overloaded"):
        clf.predict(photo_batch[:1])
    assert len(server.requests) == 3


def test_4xx_fails_at_once_with_the_message(server, photo_batch):
    clf = _client(server)
    server.script = ["400"]
    with pytest.raises(ModelError, match="answered 400.*images must be PNG"):
        clf.predict(photo_batch[:1])
    assert len(server.requests) == 1


@pytest.mark.parametrize("action, message", [
    ("garbage", "invalid JSON"),
    ("no-scores", "without a \"scores\" field"),
    ("short", "returned 1 score rows for 2 images"),
    ("strings", "not numbers"),
])
def test_malformed_replies(server, photo_batch, action, message):
    clf = _client(server)
    server.script = [action]
    with pytest.raises(ModelError, match=message) as info:
        clf.predict(photo_batch[:2])
    assert server.url in str(info.value)


def test_garbled_http_is_a_model_error(server, photo_batch):
    clf = _client(server, retries=1)
    server.script = ["bad-status", "bad-status"]
    with pytest.raises(ModelError, match="failed 2 times"):
        clf.predict(photo_batch[:1])


def test_timeout_is_retried_then_fails(server, photo_batch):
    clf = _client(server, timeout=0.1, retries=1)
    server.script = ["slow", "slow"]
    with pytest.raises(ModelError, match="failed 2 times; last error: .*timed out"):
        clf.predict(photo_batch[:1])
    assert len(server.requests) == 2


def test_timeout_then_success(server, nsfw_onnx, photo_batch):
    """Wide margins (answer in well under 1 s, slow one 3 s) keep this true on a loaded machine."""
    clf = _client(server, timeout=1.0, retries=1)
    clf.predict(photo_batch[:1])  # warm the server's model up
    server.slow_seconds = 3.0
    server.script = ["slow"]
    probs = clf.predict(photo_batch[:1])
    assert len(server.requests) == 3
    torch.testing.assert_close(probs, nsfw_onnx.predict(photo_batch[:1]), atol=1e-6, rtol=0)


def test_nobody_listening(nsfw_onnx):
    closed = ScoringServer(nsfw_onnx)
    url = closed.url
    closed.server_close()
    with pytest.raises(ModelError, match="failed 2 times"):
        HttpClassifier(url, class_names=["a", "b"], retries=1,
                       backoff=0.01).predict(torch.zeros(1, 3, 4, 4))
