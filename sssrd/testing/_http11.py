"""A small HTTP/1.1 server for the test fakes: an asyncio (uvloop) loop running in a daemon thread.

`RequestParser` is pure (bytes in, requests out): request head plus Content-Length body, keep-alive
and pipelining. Each connection answers its requests in order by awaiting the application's
`respond(request)`, which returns a Response, or None to close the connection unanswered. A hand
parser instead of http.server because a benchmark drives thousands of requests a second through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Final, cast

try:
    import uvloop

    new_event_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
except ImportError:  # uvloop is a dependency of sssrd, but the fakes also run without it
    new_event_loop = asyncio.new_event_loop

MAX_HEAD_BYTES: Final = 64 * 1024
REASONS: Final = {status.value: status.phrase for status in http.HTTPStatus}
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
LISTEN_BACKLOG: Final = 4096  # a backlog of 511 overflowed at 1,000 connections (NOTES.md)


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, list[str]]  # lower-case names; values in arrival order
    body: bytes
    keep_alive: bool

    def header(self, name: str, default: str = "") -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else default


@dataclass(frozen=True)
class Response:
    status: int
    headers: Iterable[tuple[str, str]] = ()
    body: bytes = b""

    def encode(self, keep_alive: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}",
            f"Date: {http_date()}",
            f"Content-Length: {len(self.body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


class BadRequest(Exception):
    """The bytes on a connection are not an HTTP/1.1 request we accept; answer then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


@dataclass
class _PendingHead:
    method: str
    target: str
    headers: dict[str, list[str]]
    keep_alive: bool
    body_length: int


@dataclass
class RequestParser:
    """Turns received bytes into Requests; `wants_continue` is set once per `Expect` request."""

    max_body: int
    buffer: bytearray = field(default_factory=bytearray)
    head: _PendingHead | None = None
    wants_continue: bool = False

    def feed(self, data: bytes) -> list[Request]:
        self.buffer += data
        requests = []
        while (request := self._next()) is not None:
            requests.append(request)
        return requests

    def _next(self) -> Request | None:
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    raise BadRequest(431, "request head too large")
                return None
            self.head = parse_head(bytes(self.buffer[:end]), self.max_body)
            del self.buffer[: end + 4]
            self.wants_continue = "100-continue" in self.head.headers.get("expect", [])
        if len(self.buffer) < self.head.body_length:
            return None
        head, self.head = self.head, None
        self.wants_continue = False
        body = bytes(self.buffer[: head.body_length])
        del self.buffer[: head.body_length]
        return Request(head.method, head.target, head.headers, body, head.keep_alive)


def parse_head(head: bytes, max_body: int) -> _PendingHead:
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(400, f"bad request line {request_line[:100]!r}")
    method, target, version = parts
    headers: dict[str, list[str]] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or line[0] in " \t":
            raise BadRequest(400, f"bad header line {line[:100]!r}")
        headers.setdefault(name.lower(), []).append(value.strip())
    if "transfer-encoding" in headers:
        raise BadRequest(501, "chunked request bodies are not supported")
    connection = ",".join(headers.get("connection", [])).lower()
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    return _PendingHead(method, target, headers, keep_alive, body_length(headers, max_body))


def body_length(headers: dict[str, list[str]], max_body: int) -> int:
    values = set(headers.get("content-length", ["0"]))
    if len(values) != 1 or not (value := values.pop()).isdigit():
        raise BadRequest(400, "bad Content-Length")
    if int(value) > max_body:
        raise BadRequest(413, f"request body over {max_body} bytes")
    return int(value)


Respond = Callable[[Request], Awaitable[Response | None]]


class _Connection(asyncio.Protocol):
    """One client connection: parsed requests are answered strictly in arrival order."""

    def __init__(self, server: LoopbackServer) -> None:
        self._server = server
        self._parser = RequestParser(server.max_body)
        self._queue: asyncio.Queue[Request | BadRequest] = asyncio.Queue()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio subclass
        with contextlib.suppress(OSError):  # Nagle would add delay to every small answer
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connections.add(self)
        self._task = asyncio.get_running_loop().create_task(self._answer_in_order())

    def data_received(self, data: bytes) -> None:
        try:
            for request in self._parser.feed(data):
                self._queue.put_nowait(request)
        except BadRequest as error:
            self._queue.put_nowait(error)
            assert self._transport is not None
            self._transport.pause_reading()
            return
        if self._parser.wants_continue and self._transport is not None:
            self._parser.wants_continue = False
            self._transport.write(CONTINUE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._task is not None:
            self._task.cancel()

    def abort(self) -> asyncio.Task[None] | None:
        """Drop the connection unanswered; returns the cancelled answering task to await."""
        if self._transport is not None:
            self._transport.abort()
        if self._task is not None:
            self._task.cancel()
        return self._task

    async def _answer_in_order(self) -> None:
        assert self._transport is not None
        while True:
            item = await self._queue.get()
            if isinstance(item, BadRequest):
                body = f"{item}\n".encode()
                self._transport.write(Response(item.status, body=body).encode(keep_alive=False))
                self._transport.close()
                return
            response = await self._server.respond(item)
            if response is None:
                self._transport.close()
                return
            self._transport.write(response.encode(item.keep_alive))
            if not item.keep_alive:
                self._transport.close()
                return


class LoopbackServer:
    """Serves `respond` on host:port from an event loop in a daemon thread.

    `close_listener()` makes new connections fail with "connection refused" (and drops open
    ones); `reopen_listener()` listens again on the same port.
    """

    def __init__(
        self, respond: Respond, *, host: str = "127.0.0.1", port: int = 0, max_body: int
    ) -> None:
        self.respond = respond
        self.max_body = max_body
        self.connections: set[_Connection] = set()
        self._address = (host, port)
        self._loop = new_event_loop()
        self._listener: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def start(self) -> None:
        self._thread.start()
        self.call(self._listen)

    def stop(self) -> None:
        """Close the listener and every connection, then end the loop and its thread."""
        if not self._thread.is_alive():
            return
        self.call(self._close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close_listener(self) -> None:
        self.call(self._close)

    def reopen_listener(self) -> None:
        self.call(self._listen)

    def call(self, coroutine_function: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a coroutine on the server's loop from another thread and wait for it."""
        asyncio.run_coroutine_threadsafe(coroutine_function(), self._loop).result()

    async def _listen(self) -> None:
        if self._listener is not None:
            return
        host, port = self._address
        self._listener = await self._loop.create_server(
            lambda: _Connection(self), host, port, backlog=LISTEN_BACKLOG, reuse_address=True
        )
        self._address = self._listener.sockets[0].getsockname()[:2]

    async def _close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        tasks = [task for connection in list(self.connections) if (task := connection.abort())]
        await asyncio.gather(*tasks, return_exceptions=True)
