"""The bench's Lambda: a lean raw-socket handler the fake Invoke API runs on its worker threads.

It reads the workload from the viewer's request target (rawPath + rawQueryString), opens one
connection to the event's callback URL and POSTs the body in AWS's prelude format, written by
bench.wire exactly as the origin writes it for HAProxy and nginx. An event of the
lambda-streaming proof of concept ({"origin", "url", "requestId"}: the proof of concept itself,
and sssrd with `compat = "lambda-streaming"`) gets that protocol's callback instead: a POST to
the origin's root with `x-request-id` and `x-status-code`. Raw sockets rather than
sssrd.callback keep the fake's CPU per request small, so the fake is less likely the bottleneck.
Like a warm Lambda with sssrd.callback (or the Node helper's keep-alive agent), each worker
thread keeps its sssrd callback connection open for its next render when the answer allows it,
unless the viewer's query says `callbacks=fresh` (a cold helper's way: one connection each).
The seed protocol's callbacks (the proof of concept, sssrd-compat) keep one connection each:
the proof of concept's proxy failed every request at C=200 when its callback connections were
reused (bench run of 2026-12-01, 23:18Z).
"""

from __future__ import annotations

import json
import select
import socket
import threading
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

from bench.wire import Workload, framing_header, read_answer, write_body

PRELUDE_CONTENT_TYPE: Final = b"application/vnd.awslambda.http-integration-response"
PRELUDE: Final = (
    json.dumps({"statusCode": 200, "headers": {"content-type": "text/html"}}).encode() + b"\0" * 8
)


@dataclass(frozen=True)
class Callback:
    """One callback POST: where to, its head (without Host), the body and what precedes it."""

    url: SplitResult
    head: list[bytes]
    workload: Workload
    prelude: bytes = b""
    keep_alive: bool = False


def handler(event: dict[str, Any], context: object) -> None:
    post(sssrd_callback(event) if "sssrd" in event else seed_callback(event))


def sssrd_callback(event: dict[str, Any]) -> Callback:
    workload = Workload.from_target(event.get("rawPath", "/"), event.get("rawQueryString", ""))
    callback = event["sssrd"]
    url = urlsplit(callback["callbackUrl"])
    head = [
        b"POST %s HTTP/1.1\r\n" % url.path.encode(),
        b"Authorization: Bearer %s\r\n" % callback["token"].encode(),
        b"Content-Type: %s\r\n" % PRELUDE_CONTENT_TYPE,
        framing_header(workload, len(PRELUDE)),
    ]
    fresh = "callbacks=fresh" in event.get("rawQueryString", "").split("&")
    return Callback(url, head, workload, PRELUDE, keep_alive=not fresh)


def seed_callback(event: dict[str, Any]) -> Callback:
    """The proof of concept's protocol: POST to the origin's root, the id in a header."""
    target = urlsplit(event["url"])
    workload = Workload.from_target(target.path, target.query)
    head = [
        b"POST / HTTP/1.1\r\n",
        b"x-request-id: %s\r\n" % event["requestId"].encode(),
        b"x-status-code: 200\r\nContent-Type: text/html\r\n",
        framing_header(workload),
    ]
    return Callback(urlsplit(event["origin"]), head, workload)


# Per worker thread: (host, port) -> the connection its last callback left open.
_kept = threading.local()


def post(callback: Callback) -> None:
    url = callback.url
    head = b"".join(
        [
            callback.head[0],
            b"Host: %s\r\n" % url.netloc.encode(),
            b"Connection: keep-alive\r\n" if callback.keep_alive else b"",
            *callback.head[1:],
        ]
    )
    address = (url.hostname or "", url.port or 80)
    sock = kept_connection(address)
    try:
        sock.sendall(head + b"\r\n")
        write_body(sock, callback.workload, callback.prelude)
        answer = read_answer(sock)
    except OSError:
        sock.close()  # the viewer left and the peer closed the callback: stop, as a render would
        return
    answer_head = answer.partition(b"\r\n\r\n")[0].lower()
    if callback.keep_alive and answer_head and b"connection: close" not in answer_head:
        connections(address).append(sock)
    else:
        sock.close()


def connections(address: tuple[str, int]) -> list[socket.socket]:
    kept: dict[tuple[str, int], list[socket.socket]] = _kept.__dict__.setdefault("by_address", {})
    return kept.setdefault(address, [])


def readable_now(sock: socket.socket) -> bool:
    """poll(), not select(): the fake runs hundreds of handlers, so fds pass select's 1,024."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def kept_connection(address: tuple[str, int]) -> socket.socket:
    """The connection kept open to `address` if the peer has not closed it since, else a new one."""
    idle = connections(address)
    while idle:
        sock = idle.pop()
        if not readable_now(sock):  # readable while idle: closed by the peer
            return sock
        sock.close()
    sock = socket.create_connection(address, timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
