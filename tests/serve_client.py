"""A real `explain serve` in a subprocess on a free 127.0.0.1 port, and a small stdlib HTTP client
for it (multipart uploads, bearer tokens, raw sockets for cut-short bodies)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

START_TIMEOUT = 120.0
JOB_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class Client:
    """A stdlib HTTP client of a service on 127.0.0.1:``port``."""

    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, *, token: str | None = None,
             fields: dict[str, str] | None = None, file: bytes | None = None,
             json_body: dict | None = None) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        if fields is not None or file is not None:
            data, kind = multipart(fields or {}, file)
            headers["Content-Type"] = kind
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return Reply(answer.status, dict(answer.headers), answer.read())
        except urllib.error.HTTPError as err:
            return Reply(err.code, dict(err.headers), err.read())

    def add_images(self, collection: str, files: list[tuple[str, bytes]],
                   labels: list[str] | None = None, token: str | None = None) -> Reply:
        """POST ``files`` (name, bytes) to a collection, with one label each when given."""
        data, kind = multipart_files(files, labels)
        request = urllib.request.Request(f"{self.base}/v1/collections/{collection}/images",
                                         data=data, method="POST", headers={
                                             "Content-Type": kind,
                                             **({"Authorization": f"Bearer {token}"}
                                                if token else {})})
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return Reply(answer.status, dict(answer.headers), answer.read())
        except urllib.error.HTTPError as err:
            return Reply(err.code, dict(err.headers), err.read())

    def submit(self, image: bytes, token: str | None = None, **fields: str) -> Reply:
        return self.call("POST", "/v1/visualizations", token=token, fields=fields, file=image)

    def wait(self, job_id: str, token: str | None = None, until: tuple = ("done", "failed"),
             timeout: float = JOB_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.call("GET", f"/v1/visualizations/{job_id}", token=token).json()
            if job["status"] in until or time.monotonic() > deadline:
                return job
            time.sleep(0.1)

    def raw_status(self, head: bytes, body: bytes) -> int:
        """Send ``head`` and as much of ``body`` as the server takes, then read the status."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as s:
            s.sendall(head)
            try:
                s.sendall(body)
            except OSError:
                pass  # the server answered and closed before taking it all
            answer = b""
            while b"\r\n" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return int(answer.split(b" ", 2)[1])


class Server(Client):
    """``python -m explain serve --model MODEL --data DATA --port P *extra``; its output goes to
    ``DATA.log``. :meth:`start` waits for /healthz."""

    def __init__(self, data: Path, *extra: str, model: str = "open-nsfw:onnx") -> None:
        self.data, self.extra, self.model = data, extra, model
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        self.log = open(f"{self.data}.log", "ab")  # noqa: SIM115 — closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "explain", "serve", "--model", self.model, "--data",
             str(self.data), "--port", str(self.port), *self.extra],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}): "
                                   + Path(f"{self.data}.log").read_text(errors="replace"))
            try:
                if self.call("GET", "/healthz").status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("the server did not answer /healthz in time")

    def kill(self) -> None:
        """``kill -9``: no clean-up of any kind."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self.log.close()


class InProcess(Client):
    """uvicorn serving ``app`` in a thread of this process on a free 127.0.0.1 port (a real
    server whose library functions a test can monkeypatch); a context manager."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcess:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def multipart(fields: dict[str, str], file: bytes | None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if file is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                     'filename="upload.png"\r\nContent-Type: application/octet-stream\r\n\r\n'
                     .encode() + file + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def multipart_files(files: list[tuple[str, bytes]], labels: list[str] | None = None
                    ) -> tuple[bytes, str]:
    """A multipart body with the field ``image`` repeated (each file under its name) and, when
    given, the field ``label`` repeated in the same order."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
             f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
             + body + b"\r\n" for name, body in files]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="label"\r\n\r\n'
              f'{label}\r\n'.encode() for label in labels or []]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
