"""Run an unmodified ASGI 3 app (FastAPI, Starlette, Django's ASGI handler) as a render Lambda.

    from sssrd.callback import asgi
    from myapp import app

    handler = asgi.handler(app)

Each invocation is one `http` scope built from the payload-2.0 event. `receive()` gives the
request body, then waits and returns `http.disconnect` the moment sssrd ends the callback (the
viewer left), so Starlette's StreamingResponse cancels its generator at once. `send()` turns
`http.response.start` into the prelude and each `http.response.body` into one chunk, sent at
once. An app that fails before its first body byte makes the viewer get 502 at once (the
helper's error callback); after it, the stream is cut.

One event loop per runtime, on its own thread, reused by every invocation whatever thread the
runtime calls the handler from; the lifespan protocol's startup runs once, on the first
invocation (a cold start), and its shutdown when the process exits normally.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from enum import Enum
from typing import Any

from sssrd import callback
from sssrd.callback._request import Request, request_from_event, response_head

__all__ = ["ClientDisconnected", "handler"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# 2.3, not 2.4: from 2.4 on Starlette stops listening for http.disconnect and learns that the
# viewer left only at its next send, after the next slow section has been computed.
SPEC_VERSION = "2.3"
SHUTDOWN_TIMEOUT = 5.0


class ClientDisconnected(callback.ViewerGone, OSError):
    """send() after the viewer left: an OSError, as ASGI asks servers to raise."""


class ResponseState(Enum):
    """An exchange's response: not started, head given, body flowing, complete, abandoned."""

    NOT_STARTED = "not started"
    HEAD = "head"
    BODY = "body"
    COMPLETE = "complete"
    GONE = "gone"


_SENDING = (ResponseState.HEAD, ResponseState.BODY)


def handler(app: ASGIApp) -> Callable[[Mapping[str, Any], Any], None]:
    """A Lambda handler running `app` for each sssrd invocation."""
    runtime = _Runtime(app)

    def handle(event: Mapping[str, Any], context: Any) -> None:
        runtime.run(event)

    return handle


class _Runtime:
    """The app, its event loop thread (started on first use) and its lifespan state."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, event: Mapping[str, Any]) -> None:
        try:
            loop = self._start()
        except Exception as error:
            _report(event, error)
            raise
        asyncio.run_coroutine_threadsafe(self._serve(event), loop).result()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="sssrd-asgi", daemon=True).start()
                lifespan = _Lifespan(self.app, self.state)
                try:
                    asyncio.run_coroutine_threadsafe(lifespan.startup(), loop).result()
                except BaseException:
                    loop.call_soon_threadsafe(loop.stop)  # the next invocation starts afresh
                    raise
                atexit.register(self._shutdown, loop, lifespan)
                self._loop = loop
            return self._loop

    @staticmethod
    def _shutdown(loop: asyncio.AbstractEventLoop, lifespan: _Lifespan) -> None:
        future = asyncio.run_coroutine_threadsafe(lifespan.shutdown(), loop)
        try:
            future.result(SHUTDOWN_TIMEOUT)
        except (TimeoutError, concurrent.futures.TimeoutError):
            future.cancel()
        loop.call_soon_threadsafe(loop.stop)

    async def _serve(self, event: Mapping[str, Any]) -> None:
        request = request_from_event(event)
        exchange = _Exchange(event, request.body)
        try:
            await self.app(_http_scope(request, self.state), exchange.receive, exchange.send)
        except BaseException as error:
            if not exchange.end_after_failure(error):
                raise
        else:
            exchange.end()


class _Lifespan:
    """The lifespan protocol: startup once, shutdown at exit; apps without it are fine."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.task: asyncio.Task[None] | None = None
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.replies: asyncio.Queue[Message] = asyncio.Queue()

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": _asgi_versions(), "state": self.state}
        self.task = asyncio.get_running_loop().create_task(self._run(scope))
        reply = await self._exchange("lifespan.startup")
        if reply is not None and reply["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"ASGI lifespan startup failed: {reply.get('message', '')}")

    async def shutdown(self) -> None:
        if self.task is not None and not self.task.done():
            await self._exchange("lifespan.shutdown")

    async def _run(self, scope: Scope) -> None:
        # An app that does not speak lifespan raises here: ASGI lets servers carry on without it.
        with contextlib.suppress(Exception):
            await self.app(scope, self.inbox.get, self.replies.put)

    async def _exchange(self, message_type: str) -> Message | None:
        """Send one lifespan event; the app's reply, or None if it ended without one."""
        assert self.task is not None
        self.inbox.put_nowait({"type": message_type})
        reply = asyncio.ensure_future(self.replies.get())
        await asyncio.wait({reply, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            return reply.result()
        reply.cancel()
        return None


class _Exchange:
    """One request/response: receive() and send() for the app, over one callback stream.

    The callback socket is watched by the event loop only between writes (each write runs on a
    worker thread, so a slow viewer never blocks the loop); the helper closes it only inside a
    write, so the loop never watches a closed descriptor."""

    def __init__(self, event: Mapping[str, Any], body: bytes) -> None:
        self.event = event
        self.body = body
        self.stream: callback.CallbackStream | None = None
        self.state = ResponseState.NOT_STARTED
        self.body_sent = False
        self.gone = asyncio.Event()
        self.watched = -1

    async def receive(self) -> Message:
        if not self.body_sent:
            self.body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.state is ResponseState.GONE:
            raise ClientDisconnected("the viewer left: sssrd ended the callback stream")
        kind = message["type"]
        if kind == "http.response.start" and self.state is ResponseState.NOT_STARTED:
            self._start(message)
        elif kind == "http.response.body" and self.state in (
            ResponseState.HEAD,
            ResponseState.BODY,
        ):
            await self._body(bytes(message.get("body", b"")), bool(message.get("more_body")))
        else:
            raise RuntimeError(f"ASGI message {kind!r} not expected in state {self.state.value}")

    def _start(self, message: Message) -> None:
        pairs = [
            (bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
            for name, value in message.get("headers", [])
        ]
        headers, cookies = response_head(pairs)
        self.stream = callback.open_stream(
            self.event, status=int(message["status"]), headers=headers, cookies=cookies
        )
        self.state = ResponseState.HEAD

    async def _body(self, body: bytes, more_body: bool) -> None:
        stream = self.stream
        assert stream is not None
        self._unwatch()
        self.state = ResponseState.BODY
        try:
            if body:
                await asyncio.to_thread(stream.write, body)
            if not more_body:
                await asyncio.to_thread(stream.close)
                self.state = ResponseState.COMPLETE
                self.gone.set()  # the response is over: a later receive() says so
                return
        except callback.ViewerGone as gone:
            self._viewer_left()
            raise ClientDisconnected(str(gone)) from gone
        self._watch(stream.fileno())

    def _watch(self, fd: int) -> None:
        if fd >= 0:
            asyncio.get_running_loop().add_reader(fd, self._viewer_left)
            self.watched = fd

    def _unwatch(self) -> None:
        if self.watched >= 0:
            asyncio.get_running_loop().remove_reader(self.watched)
            self.watched = -1

    def _viewer_left(self) -> None:
        """sssrd sent something or hung up mid-body: it is ending the stream."""
        self._unwatch()
        self.state = ResponseState.GONE
        self.gone.set()

    def end(self) -> None:
        """The app returned: a response it did not finish is cut, a missing one reported."""
        self._unwatch()
        if self.state is ResponseState.NOT_STARTED:
            _report(self.event, RuntimeError("the ASGI app returned without a response"))
        elif self.state in (ResponseState.HEAD, ResponseState.BODY):
            assert self.stream is not None
            self.stream.fail(RuntimeError("the ASGI app returned before its response ended"))
        self.gone.set()

    def end_after_failure(self, error: BaseException) -> bool:
        """The app raised: report or cut. True when that was only the viewer leaving."""
        self._unwatch()
        self.gone.set()
        if self.state is ResponseState.GONE:
            return True
        if self.stream is not None:
            self.stream.fail(error)
        else:
            _report(self.event, error)
        return False


def _asgi_versions() -> dict[str, str]:
    return {"version": "3.0", "spec_version": SPEC_VERSION}


def _report(event: Mapping[str, Any], error: BaseException) -> None:
    """Nothing was sent: report the error (502 at once); if sssrd refuses, nothing more to do."""
    with contextlib.suppress(callback.CallbackError):
        callback.report_error(event, error)


def _http_scope(request: Request, state: dict[str, Any]) -> Scope:
    return {
        "type": "http",
        "asgi": _asgi_versions(),
        "http_version": request.http_version,
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": request.raw_path.encode("latin-1"),
        "query_string": request.query_string.encode("latin-1"),
        "root_path": "",
        "headers": [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in request.headers
        ],
        "client": request.client,
        "server": request.server,
        "state": dict(state),
        "extensions": {},
    }
