"""A Locust user that measures streamed responses the way `sssrd loadtest` does.

For runs past one machine, Locust's master/worker mode spreads `StreamingUser`s over many
processes and hosts. Each user keeps one keep-alive connection (gevent sockets, as Locust
patches them) and reads the response with sssrd.loadtest's ResponseReader, then reports three
kinds of Locust request event per response, named by path (and POP when CloudFront names one):
`TTFB` (time to first byte), `TTLB` (time to last byte; a failure with the error kind when the
response was truncated, reset, timed out or had a 4xx/5xx) and `GAP` (each gap between body
pieces). Options: --stream-paths (space-separated paths or templates, cycled), --stream-timeout,
--stream-cacert, --stream-insecure. Commands: README, "Load testing".
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import httptools
from locust import User, constant, events, task

from sssrd.loadtest.response import ErrorKind, ResponseReader, status_error
from sssrd.loadtest.targets import Requests

RECV_BYTES = 65536


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]  # locust
def add_options(parser: Any) -> None:
    parser.add_argument(
        "--stream-paths", default="/", help="space-separated paths or templates, cycled"
    )
    parser.add_argument("--stream-timeout", type=float, default=30.0, help="per request, s")
    parser.add_argument("--stream-cacert", default="", help="CA bundle to verify https with")
    parser.add_argument(
        "--stream-insecure", action="store_true", help="do NOT verify the certificate"
    )


class StreamFailure(Exception):
    """A response that did not arrive whole; its message is the ErrorKind."""


class StreamingUser(User):
    """One viewer after another on one keep-alive connection, measured per chunk."""

    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        base = (self.host or "").rstrip("/")
        self.paths = options.stream_paths.split()
        self.requests = Requests([base + path for path in self.paths])
        self.timeout = options.stream_timeout
        self.tls: ssl.SSLContext | None = None
        if self.requests.origin.tls:
            self.tls = ssl.create_default_context(cafile=options.stream_cacert or None)
            if options.stream_insecure:
                self.tls.check_hostname = False
                self.tls.verify_mode = ssl.CERT_NONE
        self.sock: socket.socket | None = None
        self.number = 0

    def on_stop(self) -> None:
        self.disconnect()

    def disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def connect(self, deadline: float) -> socket.socket:
        origin = self.requests.origin
        try:
            sock = socket.create_connection((origin.host, origin.port), timeout=self.timeout)
        except TimeoutError as error:
            raise StreamFailure(ErrorKind.TIMEOUT) from error
        except OSError as error:
            raise StreamFailure(ErrorKind.CONNECT) from error
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock.settimeout(max(deadline - time.perf_counter(), 0.001))
                sock = self.tls.wrap_socket(sock, server_hostname=origin.host)
            except OSError as error:  # ssl.SSLError is an OSError
                sock.close()
                raise StreamFailure(ErrorKind.TLS) from error
        return sock

    def exchange(self, reader: ResponseReader, number: int, deadline: float) -> None:
        """Send request `number` and read its response into `reader`; raises StreamFailure."""
        if self.sock is None:
            self.sock = self.connect(deadline)
        sock = self.sock
        try:
            sock.sendall(self.requests.encode(number))
            while not reader.complete:
                sock.settimeout(max(deadline - time.perf_counter(), 0.001))
                data = sock.recv(RECV_BYTES)
                if not data:
                    kind = reader.end_of_stream()
                    if kind is not None:
                        raise StreamFailure(kind)
                    break
                reader.feed(data, time.perf_counter())
        except TimeoutError as error:
            raise StreamFailure(ErrorKind.TIMEOUT) from error
        except (ConnectionResetError, BrokenPipeError) as error:
            raise StreamFailure(ErrorKind.RESET) from error
        except httptools.HttpParserError as error:
            raise StreamFailure(ErrorKind.PROTOCOL) from error

    @task
    def stream(self) -> None:
        number = self.number
        self.number += 1
        gaps: list[float] = []
        reader = ResponseReader(gaps.append, self.requests.head_only)
        start = time.perf_counter()
        failure: StreamFailure | None = None
        try:
            self.exchange(reader, number, start + self.timeout)
        except StreamFailure as error:
            failure = error
        end = time.perf_counter()
        if failure is None and (kind := status_error(reader.status)) is not None:
            failure = StreamFailure(kind)
        if failure is not None or not reader.keep_alive:
            self.disconnect()
        self.report(number, start, end, reader, gaps, failure)

    def report(
        self,
        number: int,
        start: float,
        end: float,
        reader: ResponseReader,
        gaps: list[float],
        failure: StreamFailure | None,
    ) -> None:
        name = self.paths[number % len(self.paths)]
        if reader.pop:
            name = f"{name} [{reader.pop}]"
        fire = self.environment.events.request.fire
        common = {"name": name, "context": {"cf_id": reader.cf_id, "cache": reader.cache}}
        if reader.first_byte:
            fire(
                request_type="TTFB",
                response_time=(reader.first_byte - start) * 1000,
                response_length=0,
                exception=None,
                **common,
            )
        for gap in gaps:
            fire(
                request_type="GAP",
                response_time=gap * 1000,
                response_length=0,
                exception=None,
                **common,
            )
        fire(
            request_type="TTLB",
            response_time=(end - start) * 1000,
            response_length=reader.body_bytes,
            exception=failure,
            **common,
        )
