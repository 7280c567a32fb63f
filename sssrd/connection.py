"""One HTTP/1.1 connection: a raw non-blocking socket plus its h11 state machine.

uvloop refuses add_reader/add_writer on sockets owned by transports, and the zero-copy path needs
the real socket, so every connection is a plain non-blocking socket. Waiting is a future resolved
by loop.add_reader/add_writer and unregistered on every exit path. Timeouts are the owner's:
`deadline`, enforced by each wait, spans whole operations such as reading a request head. This
module knows sockets and h11, nothing about sssrd's requests.

Refusing is shared too: a head that breaks RFC 9112's rules is refused (BadHead) on every
listener, and a connection that ends while its peer may still be sending ends in a lingering
close (shut down writing, read and discard for a bounded time and byte count, then close), so the
peer reads why instead of losing the answer to the reset that unread input would provoke.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Protocol, cast

import h11

from sssrd.headers import is_host

RECV_SIZE = 65_536
# h11's own bound on any incomplete event (a head, a chunk-size line): only a backstop. The
# configured max_head_bytes is enforced by next_request per request, so a reload reaches heads on
# connections that are already open.
INCOMPLETE_EVENT_CEILING = 1 << 20
# Lingering close (nginx's lingering_close; RFC 9112 section 9.6): how long and how much of a
# refused peer's input is read and dropped before closing.
LINGER_SECONDS = 5.0
LINGER_BYTES = 4 << 20
# Where h11 ends a head (it accepts a bare LF), and the head RFC 9112 allows (sections 2.2, 5.2):
# every line ends in CRLF, no field line starts with whitespace (obs-fold, which h11 unfolds into
# the previous line), no control byte but HTAB anywhere. A recipient MAY refuse all three; sssrd
# does, since a front end that reads them differently frames the message differently.
HEAD_END = re.compile(rb"\n\r?\n")
STRICT_HEAD = re.compile(
    rb"[^\x00-\x1f\x7f]*\r\n(?:[^\x00-\x20\x7f][^\x00-\x08\n-\x1f\x7f]*\r\n)*\r\n"
)
# What reading a message yields: an event, or PAUSED once the peer's message has ended and the
# next cycle has not started.
Incoming = h11.Event | type[h11.PAUSED]
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


def canned_response(
    status: int,
    body: bytes,
    content_type: bytes,
    head_request: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A complete closing response written without h11 (h11 cannot answer a head it never
    parsed, nor one whose parse it refused)."""
    headers = b"".join(b"%s: %s\r\n" % header for header in extra)
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n%s"
        % (
            status,
            REASONS.get(status, b""),
            content_type,
            len(body),
            headers,
            b"" if head_request else body,
        )
    )


def complete_response(
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    head_request: bool = False,
    close: bool = False,
) -> list[h11.Event]:
    """A whole short response as h11 events: framing added, no body bytes for HEAD."""
    headers = [*headers, (b"content-length", b"%d" % len(body))]
    if close:
        headers.append((b"connection", b"close"))
    events: list[h11.Event] = [response(status, headers)]
    if body and not head_request:
        events.append(h11.Data(data=body))
    events.append(h11.EndOfMessage())
    return events


class HeadLimits(Protocol):
    """The settings reading a request head obeys (sssrd's Settings has them)."""

    @property
    def keepalive_timeout(self) -> float: ...
    @property
    def head_timeout(self) -> float: ...
    @property
    def max_head_bytes(self) -> int: ...
    @property
    def send_timeout(self) -> float: ...


class PeerGone(Exception):
    """The peer closed or reset the connection."""


class PeerStalled(PeerGone):
    """The peer took none of our bytes for send_timeout: treated as gone."""


class BadHead(Exception):
    """A request head that cannot be served; `status` is the answer (400, 408, 431, 505), the
    message says why in plain words, and `request` is the parsed head when there is one."""

    def __init__(self, status: int, message: str, request: h11.Request | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.request = request


def check_head(request: h11.Request) -> None:
    """Refuse what h11 lets through but RFC 9112 does not: another HTTP major version, a Host
    that is not host[:port], and Content-Length beside Transfer-Encoding (section 6.1: request
    smuggling territory; such a connection must close, so it is refused before any body)."""
    if not request.http_version.startswith(b"1."):
        raise BadHead(505, "only HTTP/1.0 and HTTP/1.1 are served", request)
    length = coding = False
    for name, value in request.headers:
        if name == b"host" and not is_host(value):
            raise BadHead(400, "bad request: the Host header is not a valid host[:port]", request)
        length = length or name == b"content-length"
        coding = coding or name == b"transfer-encoding"
    if length and coding:
        raise BadHead(
            400, "bad request: both Content-Length and Transfer-Encoding were sent", request
        )


def check_raw_head(received: bytes, request: h11.Request) -> None:
    """Refuse a head that h11 parsed leniently: `received` starts with its bytes, as read."""
    end = HEAD_END.search(received)
    if end is not None and STRICT_HEAD.fullmatch(received, 0, end.end()) is None:
        raise BadHead(
            400, "bad request: a folded line, a bare LF or a control byte in the head", request
        )


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class Connection:
    """Drives one socket and its h11.Connection; the owner decides when to close it."""

    __slots__ = (
        "body_read_elsewhere",
        "closed",
        "deadline",
        "fd",
        "fresh",
        "h11",
        "loop",
        "peer",
        "send_timeout",
        "sock",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, h11_conn: h11.Connection
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.h11 = h11_conn
        self.closed = False
        self.fresh = True  # no request read yet: its bytes are probably already here
        # loop.time() by which the current wait must end (TimeoutError), or None. A timer on
        # the wait's own future, not asyncio.timeout(): on Python 3.11 that costs a getpid()
        # syscall per use, and this is the per-request path.
        self.deadline: float | None = None
        self.send_timeout: float | None = None  # longest send_all waits for the peer to take bytes
        # Set by body_ended_elsewhere: what was read past a body h11 never saw.
        self.body_read_elsewhere: bytes | None = None
        try:
            self.peer: str = sock.getpeername()[0]
        except (OSError, IndexError, TypeError):
            self.peer = ""

    def wait_readable(self, future: asyncio.Future[None] | None = None) -> Awaitable[None]:
        """Wait until the socket is readable, or until someone else resolves `future`."""
        return self._wait(self.loop.add_reader, self.loop.remove_reader, future)

    def wait_writable(
        self, future: asyncio.Future[None] | None = None, deadline: float | None = None
    ) -> Awaitable[None]:
        """Wait until the socket is writable, or until someone else resolves `future`."""
        return self._wait(self.loop.add_writer, self.loop.remove_writer, future, deadline)

    async def _wait(
        self,
        register: Callable[..., None],
        unregister: Callable[[int], object],
        future: asyncio.Future[None] | None,
        deadline: float | None = None,
    ) -> None:
        future = future or self.loop.create_future()
        register(self.fd, _wake, future)
        deadline = deadline or self.deadline
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

    async def next_request(self, current: Callable[[], HeadLimits]) -> h11.Request | None:
        """The next request head; None if the peer closes, or idles past keepalive_timeout
        between requests.

        `current()` gives the settings in force (keepalive_timeout, head_timeout,
        max_head_bytes, send_timeout), asked again once the head starts arriving, so that a
        reload during the keep-alive wait applies to it. A connection's first head must arrive
        whole within head_timeout of this call, a later one within head_timeout of its first
        byte. Raises BadHead when the head is too slow (408; also a new connection that sends
        nothing: slowloris), too large (431), malformed (400) or refused by check_head.
        """
        first = self.fresh
        if first:  # saves registering a reader (epoll_ctl) when the head is here already
            self.fresh = False
            self.try_receive()
        loop = self.loop
        received = self.h11.trailing_data[0]
        limits = current()
        started = loop.time()
        if not received:
            self.deadline = started + (limits.head_timeout if first else limits.keepalive_timeout)
            try:
                await self.wait_readable()
            except TimeoutError:
                if first:
                    raise BadHead(408, "request head not received in time") from None
                return None
            finally:
                self.deadline = None
            if not first:
                limits, started = current(), loop.time()
        self.send_timeout = limits.send_timeout
        try:
            self.deadline = started + limits.head_timeout
            event, received = await self._read_head(received, limits.max_head_bytes)
        except TimeoutError:
            raise BadHead(408, "request head not received in time") from None
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise BadHead(431, "request head too large") from None
            # h11's message quotes the raw line (a header may hold a secret): plain words only.
            raise BadHead(exc.error_status_hint, "bad request: malformed request head") from None
        finally:
            self.deadline = None
        if not isinstance(event, h11.Request):
            return None
        if head_size(event) > limits.max_head_bytes:
            raise BadHead(431, "request head too large", event)
        check_raw_head(received, event)
        check_head(event)
        return event

    async def _read_head(self, received: bytes, limit: int) -> tuple[Incoming, bytes]:
        """The next h11 event, reading as needed, and every byte h11 was given for it (starting
        with `received`, which it already holds); 431 once an unfinished head exceeds `limit`."""
        pieces = [received]
        buffered = len(received)
        while (event := self.h11.next_event()) is h11.NEED_DATA:
            if buffered > limit:
                raise BadHead(431, "request head too large")
            data = await self.receive()
            buffered += len(data)
            pieces.append(data)
            self.h11.receive_data(data)
        # not NEED_DATA: mypy cannot narrow h11's sentinels
        return cast(Incoming, event), pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def body_ended_elsewhere(self, unused: bytes) -> None:
        """The request's body was read to its end by another decoder (h11 never saw it), which
        read `unused` past it: the next cycle, if our answer allows one, starts from there."""
        self.body_read_elsewhere = unused

    def next_cycle(self) -> bool:
        """Start the next request/response cycle if both sides finished this one cleanly."""
        if self.closed or self.h11.our_state is not h11.DONE:
            return False
        unused, self.body_read_elsewhere = self.body_read_elsewhere, None
        if unused is not None:
            # h11 still waits for the body it never saw and keeps its place private: a fresh
            # parser takes over at the byte after the body, with the same limits.
            self.h11 = h11.Connection(
                h11.SERVER, max_incomplete_event_size=INCOMPLETE_EVENT_CEILING
            )
            if unused:  # b"" would tell h11 that the peer closed
                self.h11.receive_data(unused)
            return True
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
        """Write everything, waiting while the peer's window is full (backpressure); a peer that
        takes nothing for send_timeout raises PeerStalled."""
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                timeout = self.send_timeout
                try:
                    await self.wait_writable(None, timeout and self.loop.time() + timeout)
                except TimeoutError:
                    raise PeerStalled(f"the peer took no bytes for {timeout} s") from None
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise PeerGone(str(exc)) from None
            view = view[sent:]

    async def send_quietly(self, data: bytes) -> None:
        """Send an answer to a peer that may already have gone (then there is no one to tell)."""
        if not self.closed:
            with contextlib.suppress(PeerGone):
                await self.send_all(data)

    async def next_event(self, screen: Callable[[bytes], None] | None = None) -> Incoming:
        """The next h11 event, reading as needed (NEED_DATA is never returned). `screen`, if
        given, sees every byte read before h11 does (and may raise to refuse it)."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return cast(Incoming, event)  # mypy cannot narrow h11's sentinels by identity
            data = await self.receive()
            if screen is not None:
                screen(data)
            self.h11.receive_data(data)

    async def send(self, *events: h11.Event) -> None:
        """Send h11 events in one write."""
        data = b"".join(self.h11.send(event) or b"" for event in events)
        if data:
            await self.send_all(data)

    def peer_may_be_sending(self) -> bool:
        """True unless the peer's last message was read whole and nothing more is buffered."""
        if self.body_read_elsewhere is not None:
            return bool(self.body_read_elsewhere)  # the body was read whole: only what followed
        state = self.h11.their_state
        if state not in (h11.IDLE, h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
            return True  # a body we did not read, or a message h11 refused halfway
        return bool(self.h11.trailing_data[0])  # an unfinished or pipelined head

    async def end(self) -> None:
        """Close after our last answer: lingering if the peer may still be sending, since closing
        with unread input makes the kernel send a reset that can destroy the answer."""
        if self.closed:
            return
        if self.peer_may_be_sending():
            await self.linger_close()
        else:
            self.close()

    async def linger_close(self) -> None:
        """Shut down writing, read and drop the peer's input until it closes, LINGER_SECONDS
        pass or LINGER_BYTES arrive, then close."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.deadline = self.loop.time() + LINGER_SECONDS
            dropped = 0
            while dropped < LINGER_BYTES and (data := await self.receive()):
                dropped += len(data)
        except (OSError, TimeoutError):
            pass
        finally:
            self.deadline = None
            self.close()

    def close(self) -> None:
        """Unregister and close the socket. Only its owner closes it, never under a pending
        wait of another task (unregistering wakes no one)."""
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.sock.close()
