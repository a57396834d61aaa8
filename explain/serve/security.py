"""What the service checks before it trusts a request: the bind address, bearer tokens, the body
size.

- :func:`check_bind`: a loopback address (127.0.0.1, the default) is always allowed; any other
  address only with tokens, else an :class:`~explain.errors.OptionError`.
- :func:`load_tokens`: the tokens file (UTF-8, a byte-order mark ignored), one token per line,
  blank lines and lines starting with ``#`` ignored. A token is what a client sends in an HTTP
  header, so a line with anything but printable ASCII without spaces (a non-ASCII character,
  a space, an inline ``# comment``) is refused at start with its line number, never loaded as
  a token no client can present. Each token is a tenant; the tenant's id (stored with its
  jobs) is a hash of the token, never the token itself. :meth:`Tokens.tenant` compares a
  presented token with EVERY known token in constant time (:func:`hmac.compare_digest`), so
  neither the answer nor its time says which token or how much of one matched.
- :class:`BodyLimit`: an ASGI middleware that answers 413 to a request body over the limit
  (a larger one for a batch of a collection's images, each file then held to the limit),
  from its ``Content-Length`` before reading it, or as soon as a streamed body passes it: an
  upload is never read past the limit; and 408 to a body not received in full within its
  timeout (a client dripping bytes cannot hold a connection forever).
- :class:`RateLimitedLog`: a logging filter that lets through a few lines per period and
  counts the rest, so hostile clients cannot flood the server's log with tracebacks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from explain.errors import OptionError
from explain.files import display

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this
    machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, tokens: Tokens | None) -> None:
    """Refuse to listen on a non-loopback ``host`` without tokens (an OptionError saying so)."""
    if tokens is None and not is_loopback(host):
        raise OptionError(f"refusing to listen on {host} without --tokens: anyone who can reach "
                          "it could upload images and read every result; give --tokens FILE "
                          "(one token per line) or bind 127.0.0.1")


class Tokens:
    """The known bearer tokens; :meth:`tenant` is the tenant of a presented token."""

    def __init__(self, tokens: list[str]) -> None:
        if not tokens:
            raise OptionError("the tokens file has no token (one per line; blank lines and "
                              "# comments are ignored)")
        self._tokens = [(t.encode("utf-8"), tenant_id(t)) for t in tokens]

    def tenant(self, presented: str) -> str | None:
        """The tenant id of ``presented``, or None when it is no known token. Every known token
        is compared, each in constant time."""
        given = presented.encode("utf-8", errors="surrogateescape")
        found = None
        for token, tenant in self._tokens:
            if hmac.compare_digest(given, token):
                found = tenant
        return found


def tenant_id(token: str) -> str:
    """The id a token's jobs are stored under: a hash of the token (the table never holds one)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]


def load_tokens(path: str | Path) -> Tokens:
    """The tokens in file ``path`` (see the module docstring); an OptionError when it cannot be
    read or holds none."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"cannot read the tokens file {display(path)}: {exc}") from None
    tokens = []
    for number, line in enumerate(text.split("\n"), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not all("!" <= c <= "~" for c in token):
            raise OptionError(f"line {number} of the tokens file {display(path)}: a token is "
                              "sent in an HTTP header, so it must be printable ASCII without "
                              "spaces; put a comment on a line of its own, starting with #")
        tokens.append(token)
    return Tokens(tokens)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413, one not received
    in full within ``timeout`` seconds 408 (see the module docstring); the app then sees the
    client gone and its own answer is dropped."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float = 60.0,
                 batch: int | None = None) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout
        self.batch = limit if batch is None else max(limit, batch)

    def limit_for(self, path: str) -> int:
        """The limit of a request to ``path``: ``batch`` for a batch of a collection's images
        (``/v1/collections/{id}/images``, each file then checked against ``limit`` by the
        app), ``limit`` for any other."""
        parts = path.split("/")
        if len(parts) == 5 and parts[1:3] == ["v1", "collections"] and parts[4] == "images":
            return self.batch
        return self.limit

    @staticmethod
    async def _refuse(send: Send, status: int, detail: str) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})

    async def _too_large(self, send: Send, limit: int) -> None:
        await self._refuse(send, 413, f"the upload is over the limit of {limit:,} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(send, limit)
            return
        received = 0
        answered = gone = False
        deadline = asyncio.get_running_loop().time() + self.timeout

        complete = started = False  # the whole body arrived; the app began its answer

        async def limited() -> Message:
            nonlocal received, answered, gone, complete
            if answered:
                return {"type": "http.disconnect"}
            if complete or started:  # the timeout is the upload's, not the answer's
                return await receive()
            try:
                left = deadline - asyncio.get_running_loop().time()
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except TimeoutError:
                answered = True
                await self._refuse(send, 408, f"the upload was not received within "
                                   f"{self.timeout:g} s")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > limit:
                    answered = True
                    await self._too_large(send, limit)
                    return {"type": "http.disconnect"}
            gone = gone or message["type"] == "http.disconnect"
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if not answered:
                started = True
                await send(message)

        try:
            await self.app(scope, limited, guarded)
        except Exception:
            if not (answered or gone):
                raise  # a fault of the app's own: the server logs it
            # the app failed reading a body refused here or cut short by the client: no traceback


class RateLimitedLog(logging.Filter):
    """Let at most ``lines`` records through per ``period`` seconds; the next one let through
    says how many were dropped (a flood of tracebacks from hostile clients stays a few lines)."""

    def __init__(self, lines: int = 20, period: float = 60.0) -> None:
        super().__init__()
        self.lines, self.period = lines, period
        self._start, self._passed, self._dropped = 0.0, 0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._start >= self.period:
            self._start, self._passed = now, 0
        if self._passed >= self.lines:
            self._dropped += 1
            return False
        self._passed += 1
        if self._dropped:
            record.msg = f"({self._dropped} log lines dropped: over {self.lines} per " \
                         f"{self.period:g} s) {record.getMessage()}"
            record.args = None
            self._dropped = 0
        return True
