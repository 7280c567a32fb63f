"""A small pooled keep-alive HTTP/1.1 client on the event loop, for the Lambda Invoke API.

One Pool per origin holds up to `max_connections` connections; a request takes an idle one (or
opens one, or waits for one), runs one exchange, and gives it back if both sides may keep it
alive. Each connection is an asyncio Protocol feeding an h11 client state machine: this leg
never splices, so a transport (and uvloop's TLS) is the cheap, simple choice. Timeouts cover
the whole exchange; a connection that timed out or failed is closed, never reused.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import h11

from sssrd.headers import first_header


class RequestFailed(Exception):
    """No response: the connection could not be opened, broke, or timed out."""


class ConnectFailed(RequestFailed):
    """The connection could not be opened: nothing was sent."""


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return first_header(self.headers, name)


class ClientConnection(asyncio.Protocol):
    """One connection: writes a request, collects the h11 events of its response."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.h11 = h11.Connection(h11.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.timed_out = False
        self.wakeup: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.h11.receive_data(b"")
        self.wake()

    def wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def expire(self) -> None:
        """The exchange took too long: end it (the connection is not reused)."""
        self.timed_out = True
        self.close()
        self.wake()

    @property
    def reusable(self) -> bool:
        return (
            not self.closed and self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE
        )

    async def exchange(self, request: h11.Request, body: bytes) -> Reply:
        assert self.transport is not None
        self.transport.write(
            self.h11.send(request)
            + self.h11.send(h11.Data(data=body))
            + self.h11.send(h11.EndOfMessage())
        )
        reply = Reply(0, [], b"")
        pieces = []
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise RequestFailed(f"bad response: {exc}") from None
            if event is h11.NEED_DATA:
                self.wakeup = self.loop.create_future()
                await self.wakeup
                self.wakeup = None
                if self.timed_out:
                    raise TimeoutError
            elif isinstance(event, h11.Response):
                reply.status = event.status_code
                reply.headers = list(event.headers)
            elif isinstance(event, h11.Data):
                pieces.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                reply.body = b"".join(pieces)
                return reply
            elif isinstance(event, h11.ConnectionClosed):
                raise RequestFailed("the server closed the connection")

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to one origin (scheme://host:port)."""

    def __init__(self, url: str, max_connections: int, timeout: float) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = self.port == (443 if self.tls else 80)
        self.authority = self.host if default_port else f"{self.host}:{self.port}"
        self.ssl_context = ssl.create_default_context() if self.tls else None
        self.max_connections = max_connections
        self.timeout = timeout
        self.idle: list[ClientConnection] = []
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout: float | None = None,
    ) -> Reply:
        """One exchange; RequestFailed when no complete response arrived within `timeout` (by
        default the pool's). A slow exchange holds only its own connection: others go on."""
        timeout = timeout or self.timeout
        request = h11.Request(method=method, target=target, headers=headers)
        connection = await self.acquire()
        # A timer, not asyncio.timeout(): that costs a getpid() syscall per use on Python 3.11.
        timer = connection.loop.call_later(timeout, connection.expire)
        try:
            reply = await connection.exchange(request, body)
        except TimeoutError:
            raise RequestFailed(f"no response within {timeout:g} s") from None
        except (OSError, h11.LocalProtocolError) as exc:
            raise RequestFailed(str(exc) or type(exc).__name__) from None
        finally:
            timer.cancel()
            self.release(connection)
        return reply

    async def acquire(self) -> ClientConnection:
        while True:
            while self.idle:
                connection = self.idle.pop()
                if not connection.closed:  # the server may have closed it while idle
                    return connection
                self.open -= 1
            if self.open < self.max_connections:
                self.open += 1
                try:
                    return await self.connect()
                except BaseException:
                    self.open -= 1
                    self.wake_one()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            await waiter

    async def connect(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                _, connection = await loop.create_connection(
                    lambda: ClientConnection(loop),
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.tls else None,
                )
        except TimeoutError:
            raise ConnectFailed(f"cannot connect to {self.authority} in time") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self.authority}: {exc}") from None
        return connection

    def release(self, connection: ClientConnection) -> None:
        if connection.reusable:
            connection.h11.start_next_cycle()
            self.idle.append(connection)
        else:
            connection.close()
            self.open -= 1
        self.wake_one()

    def wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()
