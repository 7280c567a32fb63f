"""One HTTP/1.1 response as the load generator sees it arrive: sans-I/O, bytes and times in.

`ResponseReader.feed(data, now)` hands each received piece to llhttp (through httptools, the C
parser uvicorn uses), notes the first response byte, the first body byte, the gap since the
previous body-carrying piece, and the CloudFront headers; `complete` turns true only when the
framing says the body ended (the last chunk of a chunked body, Content-Length bytes, or a
bodiless status). `end_of_stream()` tells what a close means at this point: a complete
close-delimited body, or a truncated response. The engine and the Locust user both drive it.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import httptools

CF_POP = b"x-amz-cf-pop"
CF_CACHE = b"x-cache"
CF_ID = b"x-amz-cf-id"
MAX_HEADER_VALUE = 256  # CloudFront values are short; never keep a hostile server's megabytes


class ErrorKind(StrEnum):
    """Why a request did not succeed; one vocabulary for counters, JSON, HTML and Locust."""

    CONNECT = "connect"  # TCP connect refused or unreachable
    TLS = "tls"  # handshake or certificate verification failed
    TIMEOUT = "timeout"  # the request did not finish within --timeout
    RESET = "reset"  # the peer reset the connection (RST) mid-exchange
    CLOSED = "closed"  # the connection closed before any response byte
    TRUNCATED = "truncated"  # closed mid-body: no final chunk, or short of Content-Length
    PROTOCOL = "protocol"  # not a valid HTTP/1.1 response
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"


def status_error(status: int) -> ErrorKind | None:
    """The error a complete response's status is, if any (1xx-3xx are successes)."""
    if status >= 500:
        return ErrorKind.HTTP_5XX
    if status >= 400:
        return ErrorKind.HTTP_4XX
    return None


class ResponseReader:
    """Parses one response; records when its bytes arrived. Create one per request."""

    __slots__ = (
        "_framed",
        "_head_only",
        "_parser",
        "body_bytes",
        "cache",
        "cf_id",
        "complete",
        "first_body",
        "first_byte",
        "headers_done",
        "keep_alive",
        "last_body",
        "on_gap",
        "pop",
        "status",
    )

    def __init__(self, on_gap: Callable[[float], None], head_only: bool = False) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self._framed = False
        self.on_gap = on_gap  # called with each gap (seconds) between body-carrying pieces
        self.first_byte = 0.0
        self.first_body = 0.0
        self.last_body = 0.0
        self.body_bytes = 0
        self.status = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = True
        self.pop = ""
        self.cache = ""
        self.cf_id = ""

    def feed(self, data: bytes, now: float) -> None:
        """Parse a received piece; raises httptools.HttpParserError on a malformed response."""
        if not self.first_byte:
            self.first_byte = now
        before = self.body_bytes
        self._parser.feed_data(data)
        if self.body_bytes != before:
            if self.first_body:
                self.on_gap(now - self.last_body)
            else:
                self.first_body = now
            self.last_body = now

    def end_of_stream(self) -> ErrorKind | None:
        """The connection closed now: None if that ended a close-delimited body, else why not."""
        if self.complete:
            return None
        if not self.first_byte:
            return ErrorKind.CLOSED
        if self.headers_done and not self._framed:
            self.complete = True  # no Content-Length, not chunked: the close is the end
            self.keep_alive = False
            return None
        return ErrorKind.TRUNCATED

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            self._framed = True
        elif name == CF_POP:
            self.pop = value[:MAX_HEADER_VALUE].decode("latin-1")
        elif name == CF_CACHE:
            self.cache = value[:MAX_HEADER_VALUE].decode("latin-1")
        elif name == CF_ID:
            self.cf_id = value[:MAX_HEADER_VALUE].decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        if self._head_only or self.status in (204, 304):
            self._framed = True
            if self._head_only:
                self.complete = True

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        self.complete = True
