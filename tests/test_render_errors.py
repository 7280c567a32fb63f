"""Error reports: a render that fails before its first write says so, and its viewer gets 502 at
once instead of waiting for the callback deadline; the report is a capability like any callback
(token, size, shape, claim once)."""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

import h11
import pytest
from harness import WAIT, Viewer

pytestmark = pytest.mark.daemon

REPORT_TYPE = b"application/vnd.sssrd.render-error+json"


def call_back(url: str, head: list[tuple[bytes, bytes]], body: bytes = b"") -> tuple[int, Any]:
    """One callback over a raw socket, its head and body exactly as given; sssrd's status and
    JSON answer."""
    target = urlsplit(url)
    lines = [b"POST %s HTTP/1.1" % target.path.encode(), b"host: sssrd.test"]
    lines += [name + b": " + value for name, value in head]
    client = h11.Connection(h11.CLIENT)
    with socket.create_connection((target.hostname, target.port), timeout=WAIT) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        status, pieces = 0, []
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                pieces.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return status, json.loads(b"".join(pieces))


def report_head(token: str, length: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"authorization", b"Bearer " + token.encode()),
        (b"content-type", REPORT_TYPE),
        (b"content-length", b"%d" % length),
    ]


def waiting_viewer(sssrd, conductor, tag: str) -> tuple[Viewer, dict[str, str]]:
    """A viewer whose render (hands_over) is waiting for the test to call back."""
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", f"/?scenario=hands_over&tag={tag}")
    return viewer, conductor.report(tag, "callback")


def test_an_error_report_gets_the_viewer_502_at_once_and_the_lambda_200(sssrd, conductor):
    tag = "reported"
    head, body = Viewer(sssrd.viewer).get(f"/?scenario=render_error&tag={tag}")
    assert head.status_code == 502
    assert b"ValueError" not in body and b"hunter2" not in body
    answered = conductor.report(tag, "answered")
    request_id = conductor.report(tag, "invoked")["request_id"]
    assert answered["status"] == 200
    assert answered["answer"] == {"requestId": request_id, "reported": True}
    assert answered["connection"] is None  # kept alive, as asked
    access = sssrd.access(request_id)
    assert access["outcome"] == "render_error" and access["status"] == 502
    assert access["error_type"] == "ValueError"
    assert "hunter2" not in json.dumps(sssrd.lines)
    assert sssrd.metric("sssrd_render_errors_total", source="callback") >= 1
    assert sssrd.metric("sssrd_requests_total", code="5xx", outcome="render_error") >= 1


def test_an_error_type_is_logged_as_printable_ascii_only(sssrd, conductor):
    tag = "unprintable"
    viewer, callback = waiting_viewer(sssrd, conductor, tag)
    report = json.dumps({"errorType": "Bad\x1b[31mType\u00e9"}).encode()
    assert call_back(callback["url"], report_head(callback["token"], len(report)), report)[0] == 200
    assert viewer.head().status_code == 502
    request_id = conductor.report(tag, "invoked")["request_id"]
    assert sssrd.access(request_id)["error_type"] == "Bad?[31mType?"
    conductor.release(f"{tag}:done")


def test_an_error_report_with_a_bad_token_is_refused_and_changes_nothing(sssrd, conductor):
    tag = "report-forged"
    viewer, callback = waiting_viewer(sssrd, conductor, tag)
    # The token is checked before the body is read: a forged report is never parsed.
    forged = call_back(callback["url"], report_head("forged", 5), b"{oops")
    assert forged[0] == 401
    report = b'{"errorType": "ValueError"}'
    # The request still waits for its own render, which then reports for real.
    assert call_back(callback["url"], report_head(callback["token"], len(report)), report)[0] == 200
    assert viewer.head().status_code == 502
    conductor.release(f"{tag}:done")


@pytest.mark.parametrize(
    ("kind", "body", "declared", "status"),
    [
        ("oversize", b"", 4097, 413),  # refused on its Content-Length, before any body is read
        ("oversize-chunked", b"", None, 413),
        ("not-json", b"ValueError", None, 400),
        ("not-an-object", b'["ValueError"]', None, 400),
        ("no-type", b'{"errorMessage": "x"}', None, 400),
        ("long-type", json.dumps({"errorType": "E" * 129}).encode(), None, 400),
    ],
)
def test_a_malformed_error_report_is_refused_and_its_viewer_gets_502(
    sssrd, conductor, kind, body, declared, status
):
    tag = f"report-{kind}"
    viewer, callback = waiting_viewer(sssrd, conductor, tag)
    head = report_head(callback["token"], len(body) if declared is None else declared)
    if kind == "oversize-chunked":
        head = [*head[:2], (b"transfer-encoding", b"chunked")]
        body = b"".join(b"400\r\n" + b" " * 1024 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    answered = call_back(callback["url"], head, body)
    assert answered[0] == status
    assert viewer.head().status_code == 502
    request_id = conductor.report(tag, "invoked")["request_id"]
    assert sssrd.access(request_id)["outcome"] == "bad_callback"
    conductor.release(f"{tag}:done")


def test_an_error_report_after_the_entry_was_claimed_is_refused(sssrd, conductor):
    tag = "report-claimed"
    viewer, callback = waiting_viewer(sssrd, conductor, tag)
    stream_head = [
        (b"authorization", b"Bearer " + callback["token"].encode()),
        (b"content-type", b"text/plain"),
        (b"transfer-encoding", b"chunked"),
    ]
    target = urlsplit(callback["url"])
    with socket.create_connection((target.hostname, target.port), timeout=WAIT) as streaming:
        lines = [b"POST %s HTTP/1.1" % target.path.encode(), b"host: sssrd.test"]
        lines += [name + b": " + value for name, value in stream_head]
        streaming.sendall(b"\r\n".join(lines) + b"\r\n\r\n5\r\nfirst\r\n")
        assert viewer.chunk_after_head() == b"first"
        report = b'{"errorType": "ValueError"}'
        head = report_head(callback["token"], len(report))
        assert call_back(callback["url"], head, report)[0] == 409
        streaming.sendall(b"0\r\n\r\n")
        assert viewer.body() == b""  # the stream it could not claim ends complete
        # Once answered, the entry is gone: a report now is told so.
        assert call_back(callback["url"], head, report)[0] == 410
    conductor.release(f"{tag}:done")
