"""Hostile models and endpoints (issue #10, items 2 and 9): a server that drips its answer or
sends an endless one, bad endpoint URLs, Python-function models that exit or answer nonsense.

The servers are real (threaded http.server on 127.0.0.1, a free port); a huge reply is streamed
lazily by the server and never held whole by either side.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from explain.cli import app
from explain.errors import ModelError
from explain.models import HttpClassifier, check_scores, load

REPLY = json.dumps({"scores": [[0.25, 0.75]], "class_names": ["sfw", "nsfw"]}).encode()
CHUNK = b" " * 2**16


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behaviour: str) -> None:
        super().__init__(("127.0.0.1", 0), HostileHandler)
        self.behaviour = behaviour
        self.requests = 0
        self.sent = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/score"

    def handle_error(self, request, client_address) -> None:
        """The client hanging up on a drip or an endless reply is the point; stay quiet."""


class HostileHandler(BaseHTTPRequestHandler):
    server: HostileServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:
        """No access log on the test output."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests += 1
        if self.server.behaviour == "drip":
            # A complete, valid answer, one byte every 50 ms (about 6 s in all): every single
            # receive is quick, so only a deadline on the whole request stops the client early.
            answer = (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + REPLY)
            for byte in answer:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.server.behaviour == "huge-length":
            self.send_header("Content-Length", str(500 * 2**20))
        self.end_headers()
        limit = 500 * 2**20 if self.server.behaviour == "huge-length" else 16 * 2**20
        while self.server.sent < limit:  # streamed lazily; ends only at the limit or a hang-up
            self.wfile.write(CHUNK)
            self.server.sent += len(CHUNK)


@pytest.fixture
def hostile(request) -> Iterator[HostileServer]:
    httpd = HostileServer(request.param)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("hostile", ["drip"], indirect=True)
def test_a_dripping_server_is_stopped_by_the_request_deadline(hostile):
    """Each byte comes well within the 2 s socket timeout; the 1 s deadline ends the request
    (the whole answer would take about 6 s), and no retry starts after it."""
    with pytest.raises(ModelError, match=r"no answer within the 1 s deadline.*1 attempt"):
        HttpClassifier(hostile.url, timeout=2.0, retries=3, backoff=0.01, deadline=1.0)
    assert hostile.requests == 1


@pytest.mark.parametrize("hostile", ["huge-length"], indirect=True)
def test_a_reply_announcing_500_mb_is_refused_before_reading_it(hostile):
    with pytest.raises(ModelError, match=r"longer than the 67,108,864-byte cap"):
        HttpClassifier(hostile.url, retries=0)
    assert hostile.requests == 1  # a reply over the cap is not retried


@pytest.mark.parametrize("hostile", ["endless"], indirect=True)
def test_an_endless_reply_is_cut_at_the_cap(hostile):
    with pytest.raises(ModelError, match=r"longer than the 1,048,576-byte cap"):
        HttpClassifier(hostile.url, class_names=["a", "b"], max_reply_bytes=2**20
                       ).predict(torch.zeros(1, 3, 4, 4))
    assert hostile.requests == 1


@pytest.mark.parametrize("url, reason", [
    ("http://", "names no host"),
    ("https:///score", "names no host"),
    ("http://exa mple.com/score", "space"),
    ("http://example.com:port/score", "Port could not be cast"),
    ("http://example.com:99999/score", "Port out of range"),
    ("http://example.com:0/score", "port 0"),
    ("http://exa<mple/score", "not a host name"),
    ("ftp://example.com/score", "scheme 'ftp' is not supported"),
    ("gopher://x", "scheme 'gopher' is not supported"),
])
def test_an_invalid_url_is_refused_at_load_time(url, reason):
    with pytest.raises(ModelError, match=f"invalid endpoint URL.*{reason}.*http\\(s\\)://host"):
        load(url, class_names=["a", "b"])


def test_valid_urls_pass_the_check():
    for url in ("http://127.0.0.1:1/x", "https://[::1]:8443/v1/score", "HTTP://Example.COM",
                "http://bücher.example/score"):
        assert HttpClassifier(url, class_names=["a", "b"]).url == url


HOSTILE_FUNCTIONS = '''
import sys
import numpy as np

def quits(batch):
    sys.exit(0)

def quits_with_code(batch):
    sys.exit(3)

def no_classes(batch):
    return np.zeros((len(batch), 0))

def one_row_short(batch):
    return np.full((len(batch) - 1, 2), 0.5)

def words(batch):
    return [["high", "low"]] * len(batch)

def nothing(batch):
    return None

def yes_no(batch):
    return np.ones((len(batch), 2), dtype=bool)

def complex_scores(batch):
    return np.full((len(batch), 2), 0.5 + 1j)
'''


@pytest.fixture
def functions(tmp_path):
    path = tmp_path / "hostile_fns.py"
    path.write_text(HOSTILE_FUNCTIONS)
    return path


@pytest.mark.parametrize("fn, message", [
    ("quits", r"model .*quits called sys.exit\(0\)"),
    ("quits_with_code", r"model .*quits_with_code called sys.exit\(3\)"),
    ("no_classes", r"no class scores \(shape \(1, 0\)"),
    ("one_row_short", r"shape \(0, 2\) for a batch of 1"),
    ("words", "list that is not an N×C array of numbers"),
    ("nothing", "NoneType that is not an N×C array of numbers"),
    ("yes_no", "torch.bool values; scores must be real numbers"),
    ("complex_scores", "torch.complex128 values"),
])
def test_a_python_function_model_that_misbehaves_is_a_model_error(functions, fn, message):
    """Learning the class names is the first call (one probe image): it fails there, naming
    the function, instead of ending the program (sys.exit) or giving an empty class list."""
    with pytest.raises(ModelError, match=message):
        load(f"{functions}:{fn}").class_names  # noqa: B018


def test_a_module_that_exits_on_import_is_a_model_error(tmp_path):
    path = tmp_path / "exits_on_import.py"
    path.write_text("import sys\nsys.exit('no GPU here')\n")
    with pytest.raises(ModelError, match=r"cannot import .*called sys.exit\('no GPU here'\)"):
        load(f"{path}:fn")


def test_keyboard_interrupt_still_interrupts(tmp_path):
    path = tmp_path / "interrupted.py"
    path.write_text("def fn(batch):\n    raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        load(f"{path}:fn", class_names=["a", "b"]).predict(torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("fn", ["quits", "no_classes"])
def test_the_cli_reports_a_misbehaving_function_and_exits_2(functions, tmp_path, photos, fn):
    """Before the fix: exit 0 with an empty score table."""
    image = tmp_path / "coffee.png"
    Image.fromarray(photos["coffee"]).save(image)
    result = CliRunner().invoke(app, ["score", str(image), "--model", f"{functions}:{fn}"])
    assert result.exit_code == 2, result.output
    assert "hostile_fns.py:" + fn in result.output.replace("\n", "")


def test_check_scores_still_takes_integer_and_float16_scores():
    out = check_scores(np.array([[0, 1]], dtype=np.int64), 1, 2, logits=False, name="f")
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0]]))
    out = check_scores(np.array([[0.25, 0.75]], dtype=np.float16), 1, None, logits=False,
                       name="f")
    torch.testing.assert_close(out, torch.tensor([[0.25, 0.75]]))


def test_function_model_with_an_input_size_scores_the_same_however_it_is_fed(tmp_path):
    """--input-size on a function model is honoured (not silently ignored): a direct predict at
    full size equals the engine's resize-once path, and normalisation options are refused."""
    from explain.models import Preprocess, load
    from explain.models.base import resize

    module = tmp_path / "corner.py"
    module.write_text("import numpy as np\n\n"
                      "def probs(batch):\n"
                      "    assert batch.shape[1:3] == (16, 16), batch.shape\n"
                      "    p = batch[:, :8, :8].reshape(len(batch), -1).mean(1) / 255.0\n"
                      "    return np.stack([1 - p, p], axis=1)\n")
    clf = load(f"{module}:probs", preprocess=Preprocess(input_size=(16, 16)),
               class_names=["a", "b"])
    assert clf.input_size == (16, 16)
    x = torch.rand(2, 3, 40, 56)
    assert torch.allclose(clf.predict(x), clf.predict(resize(x, (16, 16))), atol=1e-6)
    with pytest.raises(ModelError, match="--mean/--std"):
        load(f"{module}:probs", preprocess=Preprocess(input_size=(16, 16), mean=(0.5, 0.5, 0.5)))
