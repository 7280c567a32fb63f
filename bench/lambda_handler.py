"""The bench's Lambda: a lean raw-socket handler the fake Invoke API runs on its worker threads.

It reads the workload from the viewer's request target (rawPath + rawQueryString), opens one
connection to the event's callback URL and POSTs the body in AWS's prelude format, written by
bench.wire exactly as the origin writes it for HAProxy and nginx. Raw sockets rather than
sssrd.callback keep the fake's CPU per request small, so the fake is less likely the bottleneck.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Final
from urllib.parse import urlsplit

from bench.wire import Workload, framing_header, read_answer, write_body

PRELUDE_CONTENT_TYPE: Final = b"application/vnd.awslambda.http-integration-response"
PRELUDE: Final = (
    json.dumps({"statusCode": 200, "headers": {"content-type": "text/html"}}).encode() + b"\0" * 8
)


def handler(event: dict[str, Any], context: object) -> None:
    workload = Workload.from_target(event.get("rawPath", "/"), event.get("rawQueryString", ""))
    callback = event["sssrd"]
    url = urlsplit(callback["callbackUrl"])
    head = b"".join(
        [
            b"POST %s HTTP/1.1\r\n" % url.path.encode(),
            b"Host: %s\r\n" % url.netloc.encode(),
            b"Authorization: Bearer %s\r\n" % callback["token"].encode(),
            b"Content-Type: %s\r\n" % PRELUDE_CONTENT_TYPE,
            framing_header(workload, len(PRELUDE)),
            b"\r\n",
        ]
    )
    try:
        with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(head)
            write_body(sock, workload, PRELUDE)
            read_answer(sock)
    except OSError:
        return  # the viewer left and sssrd closed the callback: stop, as a render would
