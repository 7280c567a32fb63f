"""In-process request cycles: the request path's branches without a daemon or a subprocess.

A `Rig` builds a fresh ServerState on the running loop and serves one viewer socket pair with a
real ViewerConnection; its invoker, `StandInRender`, is the one stand-in (for the Lambda): on
invoke it fails as told, stays silent, or calls back over a second socket pair served by a real
CallbackConnection, with bytes the test builds from the event. Access lines are read from stdout
as the daemon writes them. `run_cycle(request, callback)` runs one whole request and returns the
viewer's response, the Lambda's answer and the access line.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from sssrd.callbacks import CallbackConnection
from sssrd.config import load_settings
from sssrd.connection import INCOMPLETE_EVENT_CEILING, Connection
from sssrd.invokers import InvokeError
from sssrd.invokers.base import RenderEnded
from sssrd.pending import PendingRegistry
from sssrd.pipe import PipePool
from sssrd.state import ServerState
from sssrd.tally import Tally
from sssrd.viewer import ViewerConnection

BOUND = 10.0  # no in-process case may take longer than this
CALLBACK_BASE = "http://127.0.0.1:9"  # only ever read by the stand-in render: nothing connects
Callback = Callable[[dict[str, Any]], bytes]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(BOUND):
            await scenario()

    asyncio.run(bounded())


def socket_pair(buffer: int | None = None) -> tuple[socket.socket, socket.socket]:
    """(peer end, daemon end), both non-blocking; `buffer` shrinks both kernel buffers."""
    peer, ours = socket.socketpair()
    for sock in (peer, ours):
        sock.setblocking(False)
        if buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    return peer, ours


def daemon_side(sock: socket.socket) -> Connection:
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=INCOMPLETE_EVENT_CEILING)
    return Connection(asyncio.get_running_loop(), sock, parser)


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


def callback_head(
    event: dict[str, Any],
    content_type: bytes = b"text/plain",
    *,
    length: int | None = None,
    headers: bytes = b"",
    method: bytes = b"POST",
    token: str | None = None,
) -> bytes:
    """A callback's request head for `event` (chunked unless `length`)."""
    callback = event["sssrd"]
    path = callback["callbackUrl"].split("/", 3)[3]
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    return b"%s /%s HTTP/1.1\r\nhost: sssrd\r\nauthorization: Bearer %s\r\n%s\r\n%s%s\r\n" % (
        method,
        path.encode(),
        (callback["token"] if token is None else token).encode(),
        b"content-type: " + content_type if content_type else b"x-no-type: 1",
        headers,
        framing + b"\r\n",
    )


def answered_with(
    body: bytes, content_type: bytes = b"text/plain", headers: bytes = b""
) -> Callback:
    """A render that calls back once with `body` (Content-Length framed)."""
    return lambda event: (
        callback_head(event, content_type, length=len(body), headers=headers) + body
    )


@dataclass
class Response:
    status: int | None  # None: no response head arrived
    headers: dict[bytes, bytes]
    body: bytes
    complete: bool  # False: cut off (closed before the end of the message)


async def read_response(sock: socket.socket, method: bytes = b"GET") -> Response:
    """One response from `sock`, parsed by h11 as the client of a `method` request."""
    loop = asyncio.get_running_loop()
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    status, headers, body = None, {}, bytearray()
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError:  # closed before the end of the body
            return Response(status, headers, bytes(body), False)
        if event is h11.NEED_DATA:
            try:
                data = await loop.sock_recv(sock, 65_536)
            except (ConnectionResetError, OSError):
                data = b""
            client.receive_data(data)
        elif isinstance(event, h11.Response):
            status, headers = event.status_code, dict(event.headers)
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Data):
            body += event.data
        else:
            return Response(status, headers, bytes(body), isinstance(event, h11.EndOfMessage))


class StandInRender:
    """The invoker: records each event, then fails with `failure`, stays silent (no
    `callback`), or calls back with `callback(event)`; with RequestResponse its invoke ends
    with `ended` (once `release` is set, when given), or never if `ended` is None."""

    def __init__(
        self,
        callback: Callback | None = None,
        failure: InvokeError | None = None,
        ended: RenderEnded | None = None,
    ) -> None:
        self.callback = callback
        self.failure = failure
        self.ended = ended
        self.release = asyncio.Event()
        self.release.set()
        self.state: ServerState | None = None
        self.events: list[dict[str, Any]] = []
        self.lambda_socks: list[socket.socket] = []
        self.answers: list[asyncio.Task[Response]] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.invoked = asyncio.Event()

    async def invoke(self, payload: bytes) -> None:
        event = json.loads(payload)
        self.events.append(event)
        self.invoked.set()
        if self.failure is not None:
            raise self.failure
        if self.callback is not None:
            await self.call_back(self.callback(event))

    async def call_back(self, request: bytes) -> socket.socket:
        """Open a callback connection (served by a real CallbackConnection) and send `request`."""
        assert self.state is not None
        lambda_sock, daemon_sock = socket_pair()
        served = CallbackConnection(self.state, daemon_side(daemon_sock))
        self.tasks.append(asyncio.create_task(served.run()))
        self.lambda_socks.append(lambda_sock)
        await asyncio.get_running_loop().sock_sendall(lambda_sock, request)
        self.answers.append(asyncio.create_task(read_response(lambda_sock, b"POST")))
        return lambda_sock

    def start(self, payload: bytes) -> asyncio.Task[RenderEnded]:
        async def call() -> RenderEnded:
            await self.invoke(payload)
            await self.release.wait()
            if self.ended is None:
                await asyncio.Event().wait()  # a render that never returns
            assert self.ended is not None
            return self.ended

        task = asyncio.create_task(call())
        self.tasks.append(task)
        return task

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for sock in self.lambda_socks:
            sock.close()


@dataclass
class Rig:
    """One viewer connection served in-process by a fresh state; `access` is its log."""

    render: StandInRender
    settings: dict[str, Any] = field(default_factory=dict)
    max_pending: int | None = None
    viewer_buffer: int | None = None
    access: list[dict[str, Any]] = field(default_factory=list)

    async def __aenter__(self) -> Rig:
        defaults = {"callback_url": CALLBACK_BASE, "invoker": "lambda", "function": "render"}
        settings = load_settings(None, environ={}, defaults=defaults | self.settings)
        self.state = ServerState(
            settings=settings,
            loop=asyncio.get_running_loop(),
            pending=PendingRegistry(
                settings.max_pending if self.max_pending is None else self.max_pending
            ),
            invoker=self.render,
            pipes=PipePool(4),
            tally=Tally(),
            callback_base=CALLBACK_BASE,
        )
        self.render.state = self.state
        self.viewer, daemon_sock = socket_pair(self.viewer_buffer)
        self.stdout = io.StringIO()
        self.capture = contextlib.redirect_stdout(self.stdout)
        self.capture.__enter__()
        self.serving = asyncio.create_task(
            ViewerConnection(self.state, daemon_side(daemon_sock)).run()
        )
        return self

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.viewer, data)

    async def response(self, method: bytes = b"GET") -> Response:
        return await read_response(self.viewer, method)

    async def cycles_done(self) -> None:
        """Until no request cycle is in flight (its access line is written)."""
        await self.state.tally.idle.wait()

    async def answer(self, index: int = 0) -> Response:
        """The Lambda's answer to its `index`th callback."""
        while len(self.render.answers) <= index:
            await asyncio.sleep(0.001)
        return await self.render.answers[index]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.state.tally.metrics.registry.get_sample_value(name, labels)

    async def __aexit__(self, *exc_info: object) -> None:
        self.viewer.close()
        try:
            async with asyncio.timeout(BOUND / 2):
                await self.serving
        finally:
            self.render.close()
            self.capture.__exit__(None, None, None)
            self.access = [json.loads(line) for line in self.stdout.getvalue().splitlines()]


@dataclass
class Cycle:
    """What one whole request came to."""

    response: Response
    answer: Response | None  # the Lambda's answer to its callback, if it called back
    record: dict[str, Any]  # the access line
    rig: Rig


def run_cycle(
    request: bytes,
    callback: Callback | None = None,
    *,
    failure: InvokeError | None = None,
    ended: RenderEnded | None = None,
    settings: dict[str, Any] | None = None,
    max_pending: int | None = None,
    method: bytes = b"GET",
) -> Cycle:
    """Run one request through a fresh in-process daemon; the stand-in render calls back with
    `callback(event)` (or fails with `failure`, or ends with `ended` under RequestResponse)."""
    result: list[Cycle] = []

    async def scenario() -> None:
        render = StandInRender(callback, failure, ended)
        async with Rig(render, settings or {}, max_pending) as rig:
            await rig.send(request)
            response = await rig.response(method)
            await rig.cycles_done()
            answer = await rig.answer() if render.answers else None
        [record] = rig.access
        result.append(Cycle(response, answer, record, rig))

    run(scenario)
    return result[0]
