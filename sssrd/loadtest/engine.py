"""The load loop: arrivals, a bounded pool of keep-alive connections, and per-request timing.

Every request starts with an *arrival* at a time `start`: scheduled at `rate` per second
regardless of responses (open loop), or the moment a previous request of one of `concurrency`
users ended (closed loop). An arrival takes an idle connection, opens one if fewer than
`connections` exist, or waits in a backlog; all of its times are measured from `start`, so a
slow server shows up as latency, never as fewer requests (no coordinated omission). Connections
are asyncio protocols (uvloop); bytes go straight to a ResponseReader, so the hot path is one
callback per received piece. A sweeper every 100 ms expires requests past `timeout`, closes
the one-second timeline interval and drives the progress line.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools

from sssrd.loadtest.response import ErrorKind, ResponseReader
from sssrd.loadtest.stats import Stats
from sssrd.loadtest.targets import Requests

SWEEP_SECONDS = 0.1
TIMELINE_SECONDS = 1.0
PROGRESS_SECONDS = 0.5
Address = tuple[str, int]


@dataclass(frozen=True)
class Plan:
    """A validated run: what to send, how fast, for how long, and how to connect."""

    requests: Requests
    rate: float | None  # open loop when set
    concurrency: int  # closed loop users (ignored in open loop)
    connections: int  # most connections open at once
    duration: float | None
    max_requests: int | None
    timeout: float
    tls: ssl.SSLContext | None
    server_hostname: str | None
    connect_to: Address | None = None


class Exchange:
    """One request in flight: when it was due, when its bytes were written, its reader."""

    __slots__ = ("reader", "sent", "start")

    def __init__(self, start: float, reader: ResponseReader) -> None:
        self.start = start
        self.sent = 0.0
        self.reader = reader


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one exchange at a time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.lost = False
        self.holds_slot = True  # counted in Engine.open until forgotten
        self.sent = 0  # requests written on this connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection and start_tls hand a protocol a stream transport, never a datagram one.
        self.transport = cast(asyncio.Transport, transport)

    def write(self, data: bytes) -> None:
        assert self.transport is not None, "written before connection_made"
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        exchange = self.exchange
        if exchange is None:  # bytes nobody asked for: this connection cannot be trusted
            self.close()
            return
        try:
            exchange.reader.feed(data, now)
        except httptools.HttpParserError as error:
            self.engine.finish(self, exchange, now, ErrorKind.PROTOCOL, str(error))
            return
        if exchange.reader.complete:
            self.engine.finish(self, exchange, now)

    def eof_received(self) -> bool:
        return False  # close; connection_lost tells the exchange what the close meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        exchange = self.exchange
        if exchange is not None:
            if isinstance(exc, ConnectionResetError | BrokenPipeError):
                kind: ErrorKind | None = ErrorKind.RESET
            else:
                kind = exchange.reader.end_of_stream()
            if kind is ErrorKind.CLOSED and self.sent > 1:
                # The server closed an idle keep-alive connection as the request went out:
                # a browser resends it on a new connection, and so do we (its clock runs on).
                self.engine.resend(self, exchange)
            else:
                detail = repr(exc) if exc else ""
                self.engine.finish(self, exchange, time.perf_counter(), kind, detail)
        self.engine.closed(self)

    def close(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.close()


class Engine:
    """Runs one Plan to its end and fills a Stats."""

    def __init__(
        self,
        plan: Plan,
        stats: Stats,
        progress: Callable[[Engine, float], None] | None = None,
    ) -> None:
        self.plan = plan
        self.stats = stats
        self.progress = progress
        self.loop = asyncio.get_running_loop()
        self.idle: list[Connection] = []
        self.busy: set[Connection] = set()
        self.backlog: deque[float] = deque()
        self.open = 0  # connections established or being opened
        self.connecting = 0  # arrivals waiting for their new connection
        self.opening: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak refs
        self.next_number = 0
        self.arrivals = 0
        self.issuing = True
        self.ended = asyncio.Event()
        self.addresses: list[Address] = []
        self.origin = stats.origin
        self.deadline = math.inf
        self.stopped_at = 0.0

    # arrivals
    def may_issue(self, start: float) -> bool:
        if not self.issuing:
            return False
        budget = self.plan.max_requests
        if start >= self.deadline or (budget is not None and self.arrivals >= budget):
            self.stop_issuing()
            return False
        return True

    def arrive(self, start: float) -> None:
        self.arrivals += 1
        self.dispatch(start)

    def dispatch(self, start: float) -> None:
        """Send the request due at `start` on an idle connection, a new one, or later."""
        if self.idle:
            self.send(self.idle.pop(), start)
        elif self.open < self.plan.connections:
            self.open_for(start)
        else:
            self.backlog.append(start)

    def stop_issuing(self) -> None:
        if self.issuing:
            self.issuing = False
            self.stopped_at = time.perf_counter()
            self.stats.sent_in_window = self.stats.sent
        self.check_ended()

    def check_ended(self) -> None:
        if not self.issuing and not self.busy and not self.backlog and not self.connecting:
            self.ended.set()

    # connections
    def open_for(self, start: float) -> None:
        self.open += 1
        self.connecting += 1
        task = self.loop.create_task(self.connect_and_send(start))
        self.opening.add(task)
        task.add_done_callback(self.opening.discard)

    async def connect_and_send(self, start: float) -> None:
        address = self.addresses[self.stats.connections % len(self.addresses)]
        began = time.perf_counter()
        remaining = max(start + self.plan.timeout - began, 0.001)
        phase = ErrorKind.CONNECT
        connection: Connection | None = None
        try:
            async with asyncio.timeout(remaining):
                transport, connection = await self.loop.create_connection(
                    lambda: Connection(self), *address
                )
                connected = time.perf_counter()
                handshake = None
                if self.plan.tls is not None:
                    phase = ErrorKind.TLS
                    secured = await self.loop.start_tls(
                        transport,
                        connection,
                        self.plan.tls,
                        server_hostname=self.plan.server_hostname,
                    )
                    if secured is None:  # the loop closed the transport during the handshake
                        raise ssl.SSLError("the TLS handshake did not complete")
                    transport = secured
                    connection.transport = secured
                    handshake = time.perf_counter() - connected
        except (OSError, ssl.SSLError, TimeoutError) as error:
            self.connecting -= 1
            if connection is None:
                self.open -= 1
            else:
                connection.close()
                self.forget(connection)
            kind = ErrorKind.TIMEOUT if isinstance(error, TimeoutError) else phase
            self.stats.finished(start, 0.0, time.perf_counter(), None, kind, repr(error))
            self.after_request()
            return
        self.connecting -= 1
        self.stats.connected(connected - began, handshake)
        if connection.lost:
            self.stats.finished(start, 0.0, time.perf_counter(), None, ErrorKind.CLOSED)
            self.after_request()
        else:
            self.send(connection, start)

    def closed(self, connection: Connection) -> None:
        """A connection is gone (either side closed it)."""
        self.forget(connection)

    def forget(self, connection: Connection) -> None:
        """Give the connection's slot back (once), and use it for a waiting arrival."""
        if not connection.holds_slot:
            return
        connection.holds_slot = False
        self.open -= 1
        if connection in self.idle:
            self.idle.remove(connection)
        if self.backlog and self.open < self.plan.connections:
            self.open_for(self.backlog.popleft())

    # exchanges
    def send(self, connection: Connection, start: float) -> None:
        plan = self.plan
        number = self.next_number
        self.next_number = number + 1
        exchange = Exchange(start, ResponseReader(self.stats.record_gap, plan.requests.head_only))
        connection.exchange = exchange
        connection.sent += 1
        self.busy.add(connection)
        self.stats.sent += 1
        exchange.sent = time.perf_counter()
        connection.write(plan.requests.encode(number))

    def finish(
        self,
        connection: Connection,
        exchange: Exchange,
        now: float,
        error: ErrorKind | None = None,
        detail: str = "",
    ) -> None:
        connection.exchange = None
        self.busy.discard(connection)
        reader = exchange.reader
        self.stats.finished(exchange.start, exchange.sent, now, reader, error, detail)
        if error is None and reader.keep_alive and not connection.lost:
            if self.backlog:
                self.send(connection, self.backlog.popleft())
            else:
                self.idle.append(connection)
        else:
            connection.close()
        self.after_request()

    def resend(self, connection: Connection, exchange: Exchange) -> None:
        """Send a request again that a stale keep-alive connection lost unanswered."""
        connection.exchange = None
        self.busy.discard(connection)
        self.stats.sent -= 1
        self.dispatch(exchange.start)

    def after_request(self) -> None:
        if self.plan.rate is None:
            now = time.perf_counter()
            if self.may_issue(now):
                self.arrive(now)
        self.check_ended()

    # loops
    async def schedule_open_loop(self, rate: float) -> None:
        """Arrival i is due at origin + i / rate; late wake-ups issue every arrival now due."""
        number = 0
        while True:
            due = math.floor((time.perf_counter() - self.origin) * rate) + 1
            while number < due:
                start = self.origin + number / rate
                if not self.may_issue(start):
                    return
                self.arrive(start)
                number += 1
            await asyncio.sleep(max(self.origin + number / rate - time.perf_counter(), 0))

    def sweep(self, now: float) -> None:
        timeout = self.plan.timeout
        late = [
            (c, c.exchange) for c in self.busy if c.exchange and now - c.exchange.start > timeout
        ]
        for connection, exchange in late:
            self.finish(connection, exchange, now, ErrorKind.TIMEOUT, "response incomplete")
        while self.backlog and now - self.backlog[0] > timeout:
            start = self.backlog.popleft()
            self.stats.finished(start, 0.0, now, None, ErrorKind.TIMEOUT, "no free connection")
            self.after_request()
        if now >= self.deadline:
            self.stop_issuing()

    async def sweeper(self) -> None:
        next_tick = self.origin + TIMELINE_SECONDS
        next_progress = self.origin + PROGRESS_SECONDS
        while not self.ended.is_set():
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.perf_counter()
            self.sweep(now)
            if now >= next_tick:
                self.stats.tick(now)
                next_tick += TIMELINE_SECONDS
            if self.progress is not None and now >= next_progress:
                self.progress(self, now)
                next_progress = now + PROGRESS_SECONDS

    async def resolve(self) -> None:
        plan = self.plan
        host, port = plan.connect_to or (plan.requests.origin.host, plan.requests.origin.port)
        found = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        found.sort(key=lambda info: info[0] != socket.AF_INET)  # IPv4 first, like curl
        self.addresses = [(str(info[4][0]), int(info[4][1])) for info in found]

    async def run(self) -> float:
        """Run the plan; returns the seconds during which arrivals were issued."""
        await self.resolve()
        self.origin = self.stats.origin = time.perf_counter()
        if self.plan.duration is not None:
            self.deadline = self.origin + self.plan.duration
        self.loop.add_signal_handler(signal.SIGINT, self.stop_issuing)
        sweeper = self.loop.create_task(self.sweeper())
        try:
            if self.plan.rate is not None:
                await self.schedule_open_loop(self.plan.rate)
            else:
                for _ in range(self.plan.concurrency):
                    if self.may_issue(self.origin):
                        self.arrive(self.origin)
            self.check_ended()
            await self.ended.wait()
            self.stats.tick(time.perf_counter())  # the last, partial second
        finally:
            self.loop.remove_signal_handler(signal.SIGINT)
            sweeper.cancel()
            for connection in [*self.idle, *self.busy]:
                connection.close()
        return self.stopped_at - self.origin
