"""Run an unmodified WSGI app (Flask, Django's WSGI handler) as a render Lambda.

    from sssrd.callback import wsgi
    from myapp import app

    handler = wsgi.handler(app)

The payload-2.0 event becomes the WSGI environ; each non-empty item the response iterable
yields is one chunk, sent at once. When sssrd ends the stream (the viewer left) the next item's
write fails and the iterable's close() is called, as PEP 3333 asks, so a generator behind it
gets GeneratorExit and its `finally` blocks run. An app that fails before its first body byte
makes the viewer get 502 at once (the helper's error callback); after it, the stream is cut.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import unquote_to_bytes

from sssrd import callback
from sssrd.callback._request import Request, request_from_event, response_head

__all__ = ["handler"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def handler(app: WSGIApp) -> Callable[[Mapping[str, Any], Any], None]:
    """A Lambda handler running `app` for each sssrd invocation."""

    def handle(event: Mapping[str, Any], context: Any) -> None:
        _Exchange(event).run(app)

    return handle


class _Exchange:
    """One request/response: start_response() keeps the head; the first body byte opens the
    stream with it."""

    def __init__(self, event: Mapping[str, Any]) -> None:
        self.event = event
        self.request = request_from_event(event)
        self.head: tuple[int, list[tuple[str, str]]] | None = None
        self.stream: callback.CallbackStream | None = None

    def run(self, app: WSGIApp) -> None:
        result: Iterable[bytes] | None = None
        try:
            result = app(_environ(self.request), self.start_response)
            for item in result:
                self.write(item)
            self._out().close()
        except callback.ViewerGone:
            return  # the viewer left: routine; close() below stops the app's generator
        except BaseException as error:
            self._fail(error)
            raise
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self.stream is not None and self.stream.started:
            raise exc_info[1].with_traceback(exc_info[2])  # PEP 3333: too late to change
        self.head = (int(status.split(" ", 1)[0]), list(headers))
        return self.write

    def write(self, data: bytes) -> None:
        if data:
            self._out().write(data)

    def _out(self) -> callback.CallbackStream:
        if self.stream is None:
            if self.head is None:
                raise RuntimeError("the WSGI app sent a body before calling start_response()")
            status, pairs = self.head
            headers, cookies = response_head(pairs)
            self.stream = callback.open_stream(
                self.event, status=status, headers=headers, cookies=cookies
            )
        return self.stream

    def _fail(self, error: BaseException) -> None:
        if self.stream is not None:
            self.stream.fail(error)
            return
        with contextlib.suppress(callback.CallbackError):
            callback.report_error(self.event, error)


def _environ(request: Request) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(request.raw_path).decode("latin-1"),  # PEP 3333's way
        "QUERY_STRING": request.query_string,
        "SERVER_NAME": request.server[0],
        "SERVER_PORT": str(request.server[1]),
        "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
        "REMOTE_ADDR": request.client[0] if request.client else "",
        "CONTENT_LENGTH": str(len(request.body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": request.scheme,
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        else:
            environ[f"HTTP_{key}"] = value
    return environ
