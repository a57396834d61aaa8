"""A classifier behind an HTTP endpoint.

Request (``POST``, ``Content-Type: application/json``)::

    {"images": ["<base64 PNG>", ...]}          # RGB images, original size, one per batch item

Response (``200``, JSON)::

    {"scores": [[p_0, ..., p_C-1], ...],        # one row per image, same order
     "class_names": ["sfw", "nsfw"]}            # optional; used when the client was given none

A request with an empty ``images`` list must answer ``{"scores": [], "class_names": [...]}``;
the client sends one to learn the class names when it was given none. Connection errors,
timeouts and 5xx answers are retried (``retries`` times, exponential back-off); a 4xx answer or a
malformed reply is an error at once.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from io import BytesIO

import numpy as np
import torch
from PIL import Image

from explain.errors import ModelError
from explain.models.base import BaseClassifier, to_uint8_images


def encode_png(image: np.ndarray) -> str:
    buf = BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class HttpClassifier(BaseClassifier):
    """Scores images by POSTing them to ``url`` in chunks of at most ``max_batch``."""

    def __init__(self, url: str, *, class_names: Sequence[str] | None = None,
                 timeout: float = 30.0, retries: int = 3, backoff: float = 0.5,
                 max_batch: int = 16, logits: bool = False,
                 input_size: tuple[int, int] | None = None) -> None:
        self.url = url
        self.name = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_batch = max_batch
        self.logits = logits
        self.input_size = input_size
        self.device = torch.device("cpu")
        if class_names is None:
            class_names = self._post([]).get("class_names")
            if not isinstance(class_names, list) or not class_names:
                raise ModelError(
                    f"endpoint {url} did not say its class names (an empty request must answer "
                    "\"class_names\"); give them with --classes sfw,nsfw"
                )
        self.class_names = [str(c) for c in class_names]

    def _post(self, images: list[str]) -> dict:
        body = json.dumps({"images": images}).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:200].decode(errors="replace")
                if exc.code < 500:
                    raise ModelError(f"endpoint {self.url} answered {exc.code} {exc.reason}: "
                                     f"{detail}") from exc
                last = f"{exc.code} {exc.reason}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError,
                    http.client.HTTPException) as exc:
                last = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
        else:
            raise ModelError(f"endpoint {self.url} failed {self.retries + 1} times; last error: "
                             f"{last}")
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
        arr = to_uint8_images(batch)
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
