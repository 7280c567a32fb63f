"""Lambda-side helper: stream a render back to sssrd over its callback URL (stdlib only).

Each stream is one POST with chunked framing in AWS's prelude format (JSON prelude, 8 NUL bytes,
body). The POST starts with the first body write (prelude and first chunk together): a render that
fails before it reports the error in a short POST of its own instead, so the viewer gets 502 at
once rather than an empty 200 or a wait for the deadline. sssrd sends nothing before the body
ends unless it is ending the stream, so every later write first polls the socket: anything
readable means the viewer left or the callback was refused.
In a Lambda runtime, a callback that sssrd accepted leaves its connection open: it waits in a
small per-host pool for the next render of this warm Lambda (no connect, no handshake); one that
sssrd closed meanwhile is seen by the same poll and dropped before use. Elsewhere (sssrd's local
invoker runs handlers inside the daemon itself) every callback closes its connection.

    from sssrd import callback

    def handler(event, context):
        headers = {"content-type": "text/html; charset=utf-8"}
        try:
            with callback.open_stream(event, headers=headers) as out:
                out.write("<!doctype html><title>Hi</title><p>first screen")
                for row in slow_rows():
                    out.write(f"<p>{row}</p>")     # reaches the browser at once
        except callback.ViewerGone:
            print("viewer left; render stopped")
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import select
import socket
import ssl
import threading
from collections.abc import Mapping, Sequence
from enum import Enum
from types import TracebackType
from typing import Any, NoReturn, cast
from urllib.parse import SplitResult, urlsplit

__all__ = [
    "CallbackError",
    "CallbackRejected",
    "CallbackStream",
    "ViewerGone",
    "open_stream",
    "report_error",
    "respond",
]

PRELUDE_CONTENT_TYPE = "application/vnd.awslambda.http-integration-response"
PRELUDE_SEPARATOR = b"\0" * 8
RENDER_ERROR_CONTENT_TYPE = "application/vnd.sssrd.render-error+json"
MAX_ERROR_TYPE = 128
DEFAULT_TIMEOUT = 30.0
_LAST_CHUNK = b"0\r\n\r\n"
_ANSWER_EXCERPT = 200
_PROBE_SIZE = 65536
# Idle connections kept per (scheme, host, port): a Lambda environment renders one request at a
# time, so one is enough there; a few cover a process that runs handlers on threads.
POOL_SIZE = 2
# Set by every Lambda runtime. Without it there is no warm environment to keep connections for:
# a handler run by sssrd's local invoker would pool connections from the daemon to itself.
_IN_LAMBDA_RUNTIME = "AWS_LAMBDA_RUNTIME_API"


class CallbackError(Exception):
    """The callback to sssrd failed."""


class ViewerGone(CallbackError):
    """sssrd ended the stream (the viewer left, or the request is already over): stop rendering."""


class CallbackRejected(CallbackError):
    """sssrd answered the callback with an error status (401 bad token, 409 taken, ...)."""

    def __init__(self, message: str, status: int, body: bytes) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class StreamState(Enum):
    """Where a stream is: nothing sent yet (an error can still be reported), body flowing, over."""

    PENDING = "pending"
    OPEN = "open"
    FINISHED = "finished"


class _Target:
    """Where and how to call back: the URL, the token, the socket options."""

    def __init__(
        self, event: Mapping[str, Any], timeout: float, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.url, self.token = _callback_target(event)
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.where = _describe(self.url)

    def start(
        self, content_type: str, framing: Mapping[str, str], first: bytes
    ) -> http.client.HTTPConnection:
        """Connect (or reuse a kept connection) and send the request head with `first`."""
        connection = _connect(self.url, self.timeout, self.ssl_context)
        try:
            connection.putrequest("POST", _request_target(self.url), skip_accept_encoding=True)
            _put_headers(connection, self.token, content_type, framing)
            connection.endheaders(first)
        except (BrokenPipeError, ConnectionResetError):
            pass  # sssrd refused early and hung up: its answer, if any, is read next
        except OSError as exc:
            connection.close()
            message = f"sending the callback to sssrd at {self.where} failed: {exc}"
            raise CallbackError(message) from exc
        return connection

    def post(self, content_type: str, payload: bytes) -> dict[str, Any]:
        """One Content-Length callback; sssrd's JSON summary, or the error its answer means."""
        connection = self.start(content_type, {"Content-Length": str(len(payload))}, payload)
        reusable = False
        try:
            answer = _read_answer(connection, b"", self.where)
            reusable = answer is not None and answer[0] < 400 and answer[2]
        finally:
            _release(connection, reusable)
        if answer is None or answer[0] >= 400:
            raise _error_for(answer, self.where)
        return _parse_summary(answer[1])


class CallbackStream:
    """One streamed callback: write() sends a chunk at once; close() ends it; abort() truncates.

    Leaving it as a context manager by an exception before anything was written reports the
    error to sssrd (the viewer gets 502 at once); after the first write it cuts the stream."""

    def __init__(self, target: _Target, prelude: bytes) -> None:
        self._target = target
        self._prelude = prelude
        self._connection: http.client.HTTPConnection | None = None
        self._reusable = False  # set once sssrd accepted the stream and kept the connection
        self._failure: CallbackError | None = None
        self.state = StreamState.PENDING
        self.summary: dict[str, Any] | None = None

    @property
    def _where(self) -> str:
        return self._target.where

    def __repr__(self) -> str:
        return f"<CallbackStream {self._where} {self.state.value}>"

    def __enter__(self) -> CallbackStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.fail(exc)

    @property
    def started(self) -> bool:
        """Whether any of the response has been sent (the error can no longer be reported)."""
        return self.state is not StreamState.PENDING

    def write(self, data: str | bytes) -> None:
        """Send data as one HTTP chunk now; raises ViewerGone once sssrd has ended the stream."""
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if not payload:
            return  # an empty chunk would end the body
        self._send_frames(_chunk(payload))

    def close(self) -> dict[str, Any]:
        """Send the final chunk and return sssrd's JSON summary ({"requestId", "bytes"})."""
        if self.summary is not None:
            return self.summary
        self._send_frames(_LAST_CHUNK)
        assert self._connection is not None  # _send_frames started the stream or raised
        try:
            answer = _read_answer(self._connection, b"", self._where)
            self._reusable = answer is not None and answer[0] < 400 and answer[2]
        finally:
            self._end()
        if answer is None or answer[0] >= 400:
            raise _error_for(answer, self._where)
        self.summary = _parse_summary(answer[1])
        return self.summary

    def fail(self, error: BaseException) -> None:
        """The render failed: report it if nothing was sent yet (502 at once), else cut the
        stream. Never raises: the render's own error is the one worth propagating."""
        if self.state is StreamState.PENDING:
            self.state = StreamState.FINISHED
            # sssrd refused or is gone: nothing better to tell it.
            with contextlib.suppress(CallbackError):
                self._target.post(RENDER_ERROR_CONTENT_TYPE, _error_report(error))
        else:
            self.abort()

    def abort(self) -> None:
        """Close without the final chunk, so the viewer sees a truncated response; before the
        first write, report an error instead (there is no response to truncate)."""
        if self.state is StreamState.PENDING:
            self.fail(RuntimeError("stream aborted before its first write"))
        else:
            self._end()

    def fileno(self) -> int:
        """The callback socket, once the stream has started (-1 before and after): readable
        the moment sssrd ends the stream, for callers that wait on it in an event loop."""
        if self._connection is None or self._connection.sock is None:
            return -1
        return self._connection.sock.fileno()

    def _send_frames(self, frames: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        if self.state is StreamState.FINISHED:
            raise CallbackError(f"callback stream to {self._where} is already closed")
        if self.state is StreamState.PENDING:
            self.state = StreamState.OPEN
            try:
                self._connection = self._target.start(
                    PRELUDE_CONTENT_TYPE,
                    {"Transfer-Encoding": "chunked"},
                    _chunk(self._prelude) + frames,
                )
            except CallbackError as error:
                self._fail_with(error)
            return
        already_read = _probe_for_end(self._socket())
        if already_read is not None:
            self._fail_with_answer(already_read)
        self._send(frames)

    def _socket(self) -> socket.socket:
        assert self._connection is not None and self._connection.sock is not None
        return cast(socket.socket, self._connection.sock)

    def _send(self, frame: bytes) -> None:
        try:
            self._socket().sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            self._fail_with_answer(b"")
        except TimeoutError:
            self._fail_with(CallbackError(f"timed out sending to sssrd at {self._where}"))
        except OSError as exc:
            self._fail_with(CallbackError(f"sending to sssrd at {self._where} failed: {exc}"))

    def _fail_with_answer(self, already_read: bytes) -> NoReturn:
        """sssrd ended the stream: read why, then fail this and every later call with it."""
        assert self._connection is not None
        try:
            error = _error_for(
                _read_answer(self._connection, already_read, self._where), self._where
            )
        except CallbackError as timed_out:
            error = timed_out
        self._fail_with(error)

    def _fail_with(self, error: CallbackError) -> NoReturn:
        self._failure = error
        self._end()
        raise error

    def _end(self) -> None:
        self.state = StreamState.FINISHED
        if self._connection is not None:
            _release(self._connection, self._reusable)


def open_stream(
    event: Mapping[str, Any],
    status: int = 200,
    headers: Mapping[str, str | Sequence[str]] | None = None,
    cookies: Sequence[str] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> CallbackStream:
    """A stream whose prelude (status, headers) goes out with its first write or its close."""
    return CallbackStream(_Target(event, timeout, ssl_context), _prelude(status, headers, cookies))


def respond(
    event: Mapping[str, Any],
    body: str | bytes,
    status: int = 200,
    headers: Mapping[str, str | Sequence[str]] | None = None,
    cookies: Sequence[str] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """Send a whole response in one request (Content-Length) and return sssrd's JSON summary."""
    payload = _prelude(status, headers, cookies) + (
        body.encode("utf-8") if isinstance(body, str) else bytes(body)
    )
    return _Target(event, timeout, ssl_context).post(PRELUDE_CONTENT_TYPE, payload)


def report_error(
    event: Mapping[str, Any],
    error: BaseException,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """Tell sssrd the render failed before it sent anything, so the viewer gets 502 at once.

    Only the error's class name is sent, never its message (it may hold secrets). Returns sssrd's
    answer ({"requestId", "reported": true}); raises CallbackRejected (409/410) when the request
    is already being answered or is over."""
    return _Target(event, timeout, ssl_context).post(
        RENDER_ERROR_CONTENT_TYPE, _error_report(error)
    )


def _error_report(error: BaseException) -> bytes:
    return json.dumps({"errorType": type(error).__name__[:MAX_ERROR_TYPE]}).encode("utf-8")


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n" % len(payload) + payload + b"\r\n"


def _callback_target(event: Mapping[str, Any]) -> tuple[SplitResult, str]:
    try:
        meta = event["sssrd"]
        url, token = urlsplit(meta["callbackUrl"]), meta["token"]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CallbackError(
            "event has no usable sssrd.callbackUrl and sssrd.token: was this invoked by sssrd?"
        ) from None
    if url.scheme not in ("http", "https") or not url.hostname or not isinstance(token, str):
        raise CallbackError(f"sssrd.callbackUrl is not an http(s) URL: {url.scheme}://{url.netloc}")
    if not _TOKEN.fullmatch(token):
        # Never quote it: the token is the secret.
        raise CallbackError("sssrd.token in the event is not a valid header value")
    return url, token


_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what sssrd issues, and a safe header value


_idle: dict[tuple[str, str, int | None], list[http.client.HTTPConnection]] = {}
_idle_lock = threading.Lock()


def _pool_key(connection: http.client.HTTPConnection) -> tuple[str, str, int | None]:
    scheme = "https" if isinstance(connection, http.client.HTTPSConnection) else "http"
    return scheme, connection.host, connection.port


def _release(connection: http.client.HTTPConnection, reusable: bool) -> None:
    """Keep a connection sssrd left open for the next callback, or close it."""
    if reusable and connection.sock is not None and _IN_LAMBDA_RUNTIME in os.environ:
        with _idle_lock:
            idle = _idle.setdefault(_pool_key(connection), [])
            if len(idle) < POOL_SIZE:
                idle.append(connection)
                return
    connection.close()


def _reuse(
    url: SplitResult, timeout: float, ssl_context: ssl.SSLContext | None
) -> http.client.HTTPConnection | None:
    """An idle connection to this sssrd that is still open, or None. A TLS one is reused only
    when no other context was asked for (its context cannot be compared)."""
    if ssl_context is not None:
        return None
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    while True:
        with _idle_lock:
            idle = _idle.get((url.scheme, host, port))
            if not idle:
                return None
            connection = idle.pop()
        if connection.sock is not None and _probe_for_end(connection.sock) is None:
            connection.sock.settimeout(timeout)
            return connection
        connection.close()  # sssrd closed it while it was idle (keepalive_timeout, a reload)


def _connect(
    url: SplitResult, timeout: float, ssl_context: ssl.SSLContext | None
) -> http.client.HTTPConnection:
    reused = _reuse(url, timeout, ssl_context)
    if reused is not None:
        return reused
    connection: http.client.HTTPConnection
    host = url.hostname or ""  # never empty: _callback_target refused such a URL
    if url.scheme == "https":
        connection = http.client.HTTPSConnection(
            host, url.port, timeout=timeout, context=ssl_context
        )
    else:
        connection = http.client.HTTPConnection(host, url.port, timeout=timeout)
    try:
        connection.connect()
        # Each write must leave at once, not wait for Nagle to batch it with the next one.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        connection.close()
        raise CallbackError(f"cannot reach sssrd at {_describe(url)}: {exc}") from exc
    return connection


def _put_headers(
    connection: http.client.HTTPConnection,
    token: str,
    content_type: str,
    framing: Mapping[str, str],
) -> None:
    connection.putheader("Authorization", f"Bearer {token}")  # _callback_target checked it
    connection.putheader("Content-Type", content_type)
    connection.putheader("User-Agent", "sssrd-callback/1")
    connection.putheader("Connection", "keep-alive")  # sssrd keeps it only when asked
    for name, value in framing.items():
        connection.putheader(name, value)


def _prelude(
    status: int,
    headers: Mapping[str, str | Sequence[str]] | None,
    cookies: Sequence[str] | None,
) -> bytes:
    prelude = {"statusCode": int(status), "headers": dict(headers or {})}
    if cookies:
        prelude["cookies"] = list(cookies)
    return json.dumps(prelude, separators=(",", ":")).encode("utf-8") + PRELUDE_SEPARATOR


def _probe_for_end(sock: socket.socket) -> bytes | None:
    """None while sssrd is silent; else the bytes it sent (b"" for EOF or reset)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return None
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return sock.recv(_PROBE_SIZE)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return None  # TLS records without application data (e.g. session tickets)
    except OSError:
        return b""
    finally:
        sock.settimeout(timeout)


class _Replay(io.RawIOBase):
    """A socket stand-in for HTTPResponse: bytes already read first, then the socket."""

    def __init__(self, already_read: bytes, sock: socket.socket) -> None:
        super().__init__()
        self._pending = already_read
        self._sock = sock

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # a writable buffer (collections.abc.Buffer is 3.12)
        if not self._pending:
            return self._sock.recv_into(buffer)
        view = memoryview(buffer)
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _read_answer(
    connection: http.client.HTTPConnection, already_read: bytes, where: str
) -> tuple[int, bytes, bool] | None:
    """sssrd's answer as (status, body, whether the connection stays open), or None if it hung
    up without a readable one. Without bytes already read, http.client reads it, so that the
    connection knows its request is over and can carry the next one."""
    if connection.sock is None:
        return None
    response: http.client.HTTPResponse | None = None
    try:
        if already_read:
            # HTTPResponse only calls makefile() on what it is given.
            replay = cast(socket.socket, _Replay(already_read, connection.sock))
            response = http.client.HTTPResponse(replay, method="POST")
            response.begin()
        else:
            response = connection.getresponse()
        body = response.read()
        return response.status, body, not already_read and not response.will_close
    except TimeoutError:
        raise CallbackError(f"timed out waiting for the answer of sssrd at {where}") from None
    except (http.client.HTTPException, OSError):
        return None
    finally:
        if response is not None:
            response.close()


def _error_for(answer: tuple[int, bytes, bool] | None, where: str) -> CallbackError:
    if answer is None:
        return ViewerGone(f"sssrd at {where} closed the callback stream (the viewer left)")
    status, body, _open = answer
    excerpt = body[:_ANSWER_EXCERPT].decode("utf-8", "replace")
    if status == 410:
        return ViewerGone(f"sssrd at {where} ended the callback stream: 410 {excerpt}")
    return CallbackRejected(
        f"sssrd at {where} refused the callback: {status} {excerpt}", status, body
    )


def _parse_summary(body: bytes) -> dict[str, Any]:
    try:
        summary = json.loads(body)
    except ValueError:
        return {}
    return summary if isinstance(summary, dict) else {}


def _request_target(url: SplitResult) -> str:
    return (url.path or "/") + (f"?{url.query}" if url.query else "")


def _describe(url: SplitResult) -> str:
    """Host and path for messages: the id may be logged, the token never is."""
    return f"{url.netloc.rpartition('@')[2]}{url.path}"
