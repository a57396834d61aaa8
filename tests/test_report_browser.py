"""The HTML report in a real headless Chromium: no console error, every picture decoded, a
non-empty screenshot, and a hostile file name shown as text, not run.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages
separated by NUL bytes on file descriptors 3 and 4), so no websocket package is needed. Without
chromium these tests are a listed skip, and a failure under CI (the ``chromium`` fixture).
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report import FAST, HOSTILE, tiny_model, write_images

from explain import write_report

TIMEOUT = 30.0


class Browser:
    """Headless Chromium and one page, spoken to with DevTools messages over a pipe pair."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_chrome, self._out = os.pipe()
        self._in, from_chrome = os.pipe()

        def wire() -> None:  # in the child: its fd 3 reads our messages, its fd 4 answers
            a, b = os.dup(to_chrome), os.dup(from_chrome)  # neither can be 4 and 3 at once
            for source, fd in ((a, 3), (b, 4)):
                os.dup2(source, fd)
                os.set_inheritable(fd, True)

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "--window-size=1400,2000", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=wire,
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer, self._id, self.events = b"", 0, []
        self.deadline = time.monotonic() + TIMEOUT
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]

    def _message(self) -> dict:
        while b"\0" not in self._buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the pipe")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message = json.loads(raw)
        if message.get("method") == "Page.javascriptDialogOpening":
            raise AssertionError(f"the page opened a dialog: {message['params']}")
        return message

    def call(self, method: str, session: str | None = None, **params: object) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._message()
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def open(self, uri: str) -> None:
        """Load ``uri`` with page, runtime and log events on, and wait for its load event."""
        for domain in ("Page", "Runtime", "Log"):
            self.page(f"{domain}.enable")
        self.page("Page.navigate", url=uri)
        self.wait_for("Page.loadEventFired")

    def page(self, method: str, **params: object) -> dict:
        return self.call(method, self.session, **params)

    def wait_for(self, event: str) -> dict:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._message())
        return next(e for e in self.events if e.get("method") == event)

    def evaluate(self, expression: str) -> object:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"]["value"]

    def console_errors(self) -> list[dict]:
        return [e["params"] for e in self.events if
                e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Runtime.consoleAPICalled"
                    and e["params"]["type"] in ("error", "assert"))
                or (e.get("method") == "Log.entryAdded"
                    and e["params"]["entry"]["level"] == "error")]

    def close(self) -> None:
        try:
            self.call("Browser.close")
            self.proc.wait(timeout=10)
        except (OSError, RuntimeError, TimeoutError, EOFError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._in)
            os.close(self._out)


@pytest.fixture(scope="module")
def opened(chromium, tmp_path_factory, photos):
    """The report of two real photos (one under a hostile path) and a broken file, opened from
    disk in Chromium after its load event."""
    folder = tmp_path_factory.mktemp("browser")
    paths = write_images(folder / "imgs", photos, hostile=True)
    html = folder / "report.html"
    report = write_report(paths, html, model=tiny_model(), options=FAST)
    browser = Browser(chromium, folder / "profile")
    try:
        browser.open(html.as_uri())
        yield browser, report
    finally:
        browser.close()


def test_no_console_errors(opened):
    browser, _ = opened
    assert browser.console_errors() == []


def test_every_picture_is_decoded(opened):
    browser, report = opened
    images = browser.evaluate("Array.from(document.images, i => [i.complete, i.naturalWidth])")
    good = [img for img in report.images if not img.error]
    assert len(images) == sum(2 + 2 * len(img.methods) for img in good)
    assert all(complete and width > 0 for complete, width in images), images


def test_hostile_file_name_is_text_not_code(opened):
    browser, _ = opened
    assert browser.evaluate("document.scripts.length") == 0
    assert browser.evaluate(f"document.body.innerText.includes({json.dumps(HOSTILE)})")
    assert browser.evaluate("document.title").startswith("explain report: 3 images")


def test_anchors_lead_to_each_image(opened):
    browser, report = opened
    ids = browser.evaluate("Array.from(document.querySelectorAll('section.image'), s => s.id)")
    assert ids == [img.anchor for img in report.images]
    links = browser.evaluate("Array.from(document.querySelectorAll('table.images a'),"
                             " a => a.getAttribute('href'))")
    assert {f"#{img.anchor}" for img in report.images} <= set(links)


def test_screenshot_is_a_real_picture(opened, tmp_path):
    browser, _ = opened
    shot = browser.page("Page.captureScreenshot", format="png")["data"]
    png = base64.b64decode(shot)
    (tmp_path / "report.png").write_bytes(png)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert picture.shape[0] > 500 and picture.shape[1] > 500
    assert picture.std() > 20  # text, tables and heatmaps, not a blank page
