"""A classifier behind an HTTP endpoint.

Request (``POST``, ``Content-Type: application/json``)::

    {"images": ["<base64 PNG>", ...]}          # RGB images, original size, one per batch item

Response (``200``, JSON)::

    {"scores": [[p_0, ..., p_C-1], ...],        # one row per image, same order
     "class_names": ["sfw", "nsfw"]}            # optional; used when the client was given none

A request with an empty ``images`` list must answer ``{"scores": [], "class_names": [...]}``;
the client sends one to learn the class names when it was given none.

Failures: connection errors, timeouts and 5xx answers are retried (``retries`` times, exponential
back-off); a 4xx answer, a malformed reply or a reply longer than ``max_reply_bytes`` is an error
at once. ``timeout`` bounds each socket operation; ``deadline`` bounds one whole request — every
attempt, the back-off pauses between them, sending the images and reading the whole reply — so a
server that drips a byte now and then cannot hold the client: when the deadline passes, the
request fails. (Name resolution is not covered: the system resolver cannot be interrupted.)
The reply is read in pieces and refused as soon as it is longer than the cap, never held whole.
"""

from __future__ import annotations

import base64
import functools
import http.client
import io
import ipaddress
import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from explain.errors import ModelError
from explain.models.base import BaseClassifier, to_uint8_images

DEADLINE = 120.0
MAX_REPLY_BYTES = 64 * 2**20
READ_CHUNK = 2**16
URL_FORM = "http(s)://host[:port]/path"
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(spec: str) -> bool:
    """``scheme://…``: a model spec meant as a network address (any scheme; only HTTP(S) work)."""
    return SCHEME.match(spec) is not None


def check_url(url: str) -> str:
    """``url`` when it is a usable ``http(s)://host[:port]/path`` address, else a ModelError."""
    def bad(reason: str) -> ModelError:
        return ModelError(f"invalid endpoint URL {url!r}: {reason}; expected {URL_FORM}")

    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise bad("it contains a space or a control character")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(str(exc)) from None
    if parts.scheme not in ("http", "https"):
        raise bad(f"the scheme {parts.scheme!r} is not supported, only http and https")
    host = parts.hostname
    if not host:
        raise bad("it names no host")
    if not all(ch.isalnum() or ch in "-._" for ch in host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise bad(f"{host!r} is not a host name") from None
    if port == 0:
        raise bad("port 0 is not a port")
    return url


def encode_png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class _DeadlineReader(io.RawIOBase):
    """A socket's reading end that re-arms the socket's timeout before every receive."""

    def __init__(self, raw: io.RawIOBase, arm: Callable[[], None]) -> None:
        self._raw, self._arm = raw, arm

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int | None:  # type: ignore[override]
        self._arm()
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """A connected socket whose every send and receive waits at most ``timeout`` seconds and
    never past ``deadline`` (``time.monotonic()`` seconds): the socket's timeout is set to the
    smaller of the two before each one.

    http.client sends with ``sendall`` and reads through ``makefile("rb")``; everything else is
    passed through to the socket.
    """

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        self._sock, self._deadline, self._timeout = sock, deadline, timeout

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request deadline passed")
        self._sock.settimeout(min(left, self._timeout))

    def sendall(self, data: bytes) -> None:
        self._arm()
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock.makefile(mode, buffering=0),
                                                 self._arm))

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


class _Deadline:
    """Mixin for http.client connections: once connected, the socket stops at ``deadline``."""

    def __init__(self, *args: object, deadline: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.sock = _DeadlineSocket(self.sock, self._deadline, self.timeout)  # type: ignore


class _DeadlineHTTP(_Deadline, http.client.HTTPConnection):
    pass


class _DeadlineHTTPS(_Deadline, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_DeadlineHTTP, deadline=self.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_DeadlineHTTPS, deadline=self.deadline), req,
                            context=self._context)


def opener(deadline: float) -> urllib.request.OpenerDirector:
    """urllib's opener (proxies from the environment, redirects) whose connections all stop at
    ``deadline`` (``time.monotonic()`` seconds)."""
    return urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline))


class HttpClassifier(BaseClassifier):
    """Scores images by POSTing them to ``url`` in chunks of at most ``max_batch``.

    ``deadline`` (seconds) bounds each request with all its retries; ``timeout`` each socket
    operation; ``max_reply_bytes`` the length of a reply (see the module docstring).
    """

    def __init__(self, url: str, *, class_names: Sequence[str] | None = None,
                 timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 max_batch: int = 16, logits: bool = False,
                 input_size: tuple[int, int] | None = None, deadline: float = DEADLINE,
                 max_reply_bytes: int = MAX_REPLY_BYTES, sigmoid: bool = False) -> None:
        self.url = check_url(url)
        if not deadline > 0 or max_reply_bytes < 1:
            raise ModelError("the deadline and the reply cap of an endpoint must be positive")
        self.name = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_batch = max_batch
        self.logits = logits
        self.sigmoid = sigmoid
        self.input_size = input_size
        self.deadline = deadline
        self.max_reply_bytes = max_reply_bytes
        self.device = torch.device("cpu")
        if class_names is None:
            class_names = self._post([]).get("class_names")
            if not isinstance(class_names, list) or not class_names:
                raise ModelError(
                    f"endpoint {url} did not say its class names (an empty request must answer "
                    "\"class_names\"); give them with --classes sfw,nsfw"
                )
        self.class_names = [str(c) for c in class_names]

    def _read(self, response: http.client.HTTPResponse) -> bytes:
        """The whole reply body, refused as soon as it is longer than ``max_reply_bytes``."""
        cap = self.max_reply_bytes
        too_long = ModelError(f"endpoint {self.url} sent a reply longer than the "
                              f"{cap:,}-byte cap on replies")
        length = response.headers.get("Content-Length", "")
        if length.strip().isdigit() and int(length) > cap:
            raise too_long
        chunks, size = [], 0
        while chunk := response.read(READ_CHUNK):
            size += len(chunk)
            if size > cap:
                raise too_long
            chunks.append(chunk)
        return b"".join(chunks)

    def _post(self, images: list[str]) -> dict:
        body = json.dumps({"images": images}).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + self.deadline
        client = opener(deadline)
        last, attempts = "", 0
        while True:
            attempts += 1
            try:
                left = deadline - time.monotonic()
                with client.open(request, timeout=min(self.timeout, left)) as response:
                    raw = self._read(response)
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read(200).decode(errors="replace")
                if exc.code < 500:
                    raise ModelError(f"endpoint {self.url} answered {exc.code} {exc.reason}: "
                                     f"{detail}") from exc
                last = f"{exc.code} {exc.reason}: {detail}"
            except (OSError, http.client.HTTPException) as exc:
                last = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
            pause = self.backoff * 2 ** (attempts - 1)
            out_of_time = time.monotonic() >= deadline
            if not out_of_time and attempts > self.retries:
                raise ModelError(f"endpoint {self.url} failed {attempts} times; last error: "
                                 f"{last}")
            if out_of_time or time.monotonic() + pause >= deadline:
                raise ModelError(f"endpoint {self.url} gave no answer within the "
                                 f"{self.deadline:g} s deadline of a request ({attempts} "
                                 f"attempt(s)); last error: {last}")
            time.sleep(pause)
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise ModelError(f"endpoint {self.url} answered with invalid JSON: "
                             f"{raw[:100]!r}") from exc
        if not isinstance(reply, dict) or "scores" not in reply:
            raise ModelError(f"endpoint {self.url} answered without a \"scores\" field: "
                             f"{str(reply)[:100]}")
        return reply

    def _scores(self, batch: torch.Tensor) -> np.ndarray:
        arr = to_uint8_images(self.at_input_size(batch))
        rows: list = []
        for start in range(0, len(arr), self.max_batch):
            chunk = [encode_png(a) for a in arr[start:start + self.max_batch]]
            scores = self._post(chunk)["scores"]
            if not isinstance(scores, list) or len(scores) != len(chunk):
                got = len(scores) if isinstance(scores, list) else "no"
                raise ModelError(f"endpoint {self.url} returned {got} score rows for "
                                 f"{len(chunk)} images")
            rows.extend(scores)
        try:
            return np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"endpoint {self.url} returned scores that are not numbers") from exc
