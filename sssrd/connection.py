"""One HTTP/1.1 connection: a raw non-blocking socket plus its h11 state machine.

uvloop refuses add_reader/add_writer on sockets owned by transports, and the zero-copy path needs
the real socket, so every connection is a plain non-blocking socket. Waiting is a future resolved
by loop.add_reader/add_writer and unregistered on every exit path; timeouts belong to the caller
(asyncio.timeout around whole operations, e.g. a whole request head). This module knows sockets
and h11, nothing about sssrd's requests.
"""

from __future__ import annotations

import asyncio
import socket
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


class PeerGone(Exception):
    """The peer closed or reset the connection."""


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Connection:
    """Drives one socket and its h11.Connection; the owner decides when to close it."""

    __slots__ = ("closed", "fd", "h11", "loop", "peer", "sock")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, h11_conn: Any) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.h11: h11.Connection = h11_conn
        self.closed = False
        try:
            self.peer: str = sock.getpeername()[0]
        except (OSError, IndexError, TypeError):
            self.peer = ""

    async def wait_readable(self, future: asyncio.Future[None] | None = None) -> None:
        """Wait until the socket is readable, or until someone else resolves `future`."""
        future = future or self.loop.create_future()
        self.loop.add_reader(self.fd, _wake, future)
        try:
            await future
        finally:
            if not self.closed:
                self.loop.remove_reader(self.fd)

    async def wait_writable(self, future: asyncio.Future[None] | None = None) -> None:
        future = future or self.loop.create_future()
        self.loop.add_writer(self.fd, _wake, future)
        try:
            await future
        finally:
            if not self.closed:
                self.loop.remove_writer(self.fd)

    async def wait_for_data(self) -> None:
        """Return once bytes are buffered in h11 or readable on the socket."""
        if not any(self.h11.trailing_data):
            await self.wait_readable()

    async def receive(self) -> bytes:
        """Some bytes from the peer; b"" once it has closed its side."""
        while True:
            try:
                return self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                await self.wait_readable()
            except (ConnectionResetError, TimeoutError):
                return b""

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

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            await self.send_all(data)

    def close(self) -> None:
        """Close the socket; pending waits are woken by the loop unregistering the fd first."""
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.sock.close()
