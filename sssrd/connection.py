"""One HTTP/1.1 connection: a raw non-blocking socket plus its h11 state machine.

uvloop refuses add_reader/add_writer on sockets owned by transports, and the zero-copy path needs
the real socket, so every connection is a plain non-blocking socket. Waiting is a future resolved
by loop.add_reader/add_writer and unregistered on every exit path. Timeouts are the owner's:
`deadline`, enforced by each wait, spans whole operations such as reading a request head. This
module knows sockets and h11, nothing about sssrd's requests.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import h11

RECV_SIZE = 65_536
# Built once: h11 sends no reason phrase unless given one.
REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


def head_size(request: h11.Request) -> int:
    """Bytes of a parsed request head, give or take a few (h11 only bounds incomplete heads:
    a large head that arrives in one read is parsed whole, so the limit is checked again here).
    """
    size = len(request.method) + len(request.target) + 12
    for name, value in request.headers:
        size += len(name) + len(value) + 4
    return size


def response(status: int, headers: list[tuple[bytes, bytes]]) -> h11.Response:
    return h11.Response(status_code=status, headers=headers, reason=REASONS.get(status, b""))


def complete_response(
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    head_request: bool = False,
    close: bool = False,
) -> list[Any]:
    """A whole short response as h11 events: framing added, no body bytes for HEAD."""
    headers = [*headers, (b"content-length", b"%d" % len(body))]
    if close:
        headers.append((b"connection", b"close"))
    events: list[Any] = [response(status, headers)]
    if body and not head_request:
        events.append(h11.Data(data=body))
    events.append(h11.EndOfMessage())
    return events


class PeerGone(Exception):
    """The peer closed or reset the connection."""


class BadHead(Exception):
    """A request head that cannot be served; `status` is the answer (400, 408 or 431)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Served:
    """What each listener's per-connection handler holds: the server it reports to and its
    connection; `run()` serves the connection until it should close."""

    def __init__(self, server: Any, conn: Connection) -> None:
        self.server = server
        self.conn = conn


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class Connection:
    """Drives one socket and its h11.Connection; the owner decides when to close it."""

    __slots__ = ("closed", "deadline", "fd", "fresh", "h11", "loop", "peer", "sock")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, h11_conn: Any) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.h11: h11.Connection = h11_conn
        self.closed = False
        self.fresh = True  # no request read yet: its bytes are probably already here
        # loop.time() by which the current wait must end (TimeoutError), or None. A timer on
        # the wait's own future, not asyncio.timeout(): on Python 3.11 that costs a getpid()
        # syscall per use, and this is the per-request path.
        self.deadline: float | None = None
        try:
            self.peer: str = sock.getpeername()[0]
        except (OSError, IndexError, TypeError):
            self.peer = ""

    def wait_readable(self, future: asyncio.Future[None] | None = None) -> Awaitable[None]:
        """Wait until the socket is readable, or until someone else resolves `future`."""
        return self._wait(self.loop.add_reader, self.loop.remove_reader, future)

    def wait_writable(self, future: asyncio.Future[None] | None = None) -> Awaitable[None]:
        """Wait until the socket is writable, or until someone else resolves `future`."""
        return self._wait(self.loop.add_writer, self.loop.remove_writer, future)

    async def _wait(
        self,
        register: Callable[..., None],
        unregister: Callable[[int], object],
        future: asyncio.Future[None] | None,
    ) -> None:
        future = future or self.loop.create_future()
        register(self.fd, _wake, future)
        deadline = self.deadline
        timer = None if deadline is None else self.loop.call_at(deadline, _expire, future)
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()
            if not self.closed:
                unregister(self.fd)

    def _recv_now(self) -> bytes | None:
        """Bytes already here (b"" at EOF or reset), or None when none have arrived yet."""
        try:
            return self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def try_receive(self) -> None:
        """Hand h11 whatever has already arrived, without waiting."""
        data = self._recv_now()
        if data is not None:
            self.h11.receive_data(data)

    async def next_request(self, limits: Any) -> h11.Request | None:
        """The next request head; None if the peer closes or idles past keepalive_timeout.

        `limits` carries keepalive_timeout, head_timeout and max_head_bytes (the settings).
        Raises BadHead when the head is too slow (408: the whole head within head_timeout,
        slowloris), too large (431) or malformed (400).
        """
        if self.fresh:  # saves registering a reader (epoll_ctl) when the head is here already
            self.fresh = False
            self.try_receive()
        loop = self.loop
        try:
            if not any(self.h11.trailing_data):
                self.deadline = loop.time() + limits.keepalive_timeout
                await self.wait_readable()
        except TimeoutError:
            return None
        finally:
            self.deadline = None
        try:
            self.deadline = loop.time() + limits.head_timeout
            event = await self.next_event()
        except TimeoutError:
            raise BadHead(408, "request head not received in time") from None
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise BadHead(431, "request head too large") from None
            raise BadHead(exc.error_status_hint, f"bad request: {exc}") from None
        finally:
            self.deadline = None
        if not isinstance(event, h11.Request):
            return None
        if head_size(event) > limits.max_head_bytes:
            raise BadHead(431, "request head too large")
        return event

    def next_cycle(self) -> bool:
        """Start the next request/response cycle if both sides finished this one cleanly."""
        if self.closed or self.h11.our_state is not h11.DONE:
            return False
        if self.h11.their_state is not h11.DONE:
            return False
        self.h11.start_next_cycle()
        return True

    async def receive(self) -> bytes:
        """Some bytes from the peer; b"" once it has closed its side."""
        while (data := self._recv_now()) is None:
            await self.wait_readable()
        return data

    async def send_all(self, data: bytes | memoryview) -> None:
        """Write everything, waiting while the peer's window is full (backpressure)."""
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                await self.wait_writable()
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise PeerGone(str(exc)) from None
            view = view[sent:]

    async def next_event(self) -> Any:
        """The next h11 event, reading as needed (NEED_DATA is never returned)."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.receive())

    async def send(self, *events: Any) -> None:
        """Send h11 events in one write."""
        data = b"".join(self.h11.send(event) or b"" for event in events)
        if data:
            await self.send_all(data)

    def close(self) -> None:
        """Unregister and close the socket. Only its owner closes it, never under a pending
        wait of another task (unregistering wakes no one)."""
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.sock.close()
