"""Render handlers for the integration tests, run by the daemon's local invoker.

`handler` dispatches on the viewer's `?scenario=` and tags its reports with `?tag=` so each test
reads only its own. Well-behaved scenarios use sssrd.callback, as a Lambda author would;
misbehaving ones (aborts, forged tokens, bad preludes) speak HTTP by hand over raw sockets.
Reports and waits go to the test's Conductor over TCP (SCENARIO_CONDUCTOR).
"""

from __future__ import annotations

import contextlib
import http.client
import inspect
import json
import os
import re
import signal
import socket
from typing import Any
from urllib.parse import urlsplit

from sssrd import callback, demo

PRELUDE_TYPE = "application/vnd.awslambda.http-integration-response"


class Conductor:
    def __init__(self, tag: str) -> None:
        host, _, port = os.environ["SCENARIO_CONDUCTOR"].rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.lines = self.sock.makefile("rb")
        self.tag = tag

    def report(self, kind: str, **data: Any) -> None:
        self.sock.sendall(json.dumps({"tag": self.tag, "kind": kind, **data}).encode() + b"\n")

    def wait(self, key: str) -> None:
        self.sock.sendall(json.dumps({"wait": f"{self.tag}:{key}"}).encode() + b"\n")
        assert self.lines.readline() == b"go\n"

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def handler(event: dict, context: Any) -> None:
    if "sssrd" not in event:  # compat mode: the seed protocol's event
        seed_handler(event, context)
        return
    query = event.get("queryStringParameters") or {}
    scenario = query.get("scenario", "demo")
    if scenario == "demo":
        demo.handler(event, context)
        return
    conductor = Conductor(query.get("tag", scenario))
    try:
        request_id = event["requestContext"]["requestId"]
        conductor.report("invoked", request_id=request_id, pid=os.getpid())
        SCENARIOS[scenario](event, conductor, query)
    finally:
        conductor.close()  # the daemon's fd count is checked after abort storms


def echo(event: dict, conductor: Conductor, query: dict) -> None:
    """The response body is the event itself, for checking what the Lambda was sent."""
    callback.respond(event, json.dumps(event), headers={"content-type": "application/json"})


def stepped(event: dict, conductor: Conductor, query: dict) -> None:
    """Writes chunk i only after the test releases step i."""
    with callback.open_stream(event, headers={"content-type": "text/plain"}) as out:
        for step in range(int(query.get("steps", "2"))):
            conductor.wait(f"step{step}")
            out.write(f"chunk {step}\n")
    conductor.report("done", summary=out.summary)


def viewer_leaves(event: dict, conductor: Conductor, query: dict) -> None:
    """Keeps writing after the viewer left; reports how the helper said so."""
    with callback.open_stream(event) as out:
        out.write("first\n")
        conductor.wait("viewer_closed")
        try:
            for _ in range(1000):  # bounded: the first write after the close must fail
                out.write("more\n")
                conductor.report("write_succeeded")
        except callback.ViewerGone as exc:
            conductor.report("viewer_gone", message=str(exc))
            raise


def handover(event: dict, conductor: Conductor, query: dict) -> None:
    """Hands the callback URL and token to the test, which plays the Lambda itself
    (harness.PlayedLambda): it then holds the callback connection and reads sssrd's answer even
    after this process is gone."""
    conductor.report("callback", url=event["sssrd"]["callbackUrl"], token=event["sssrd"]["token"])


def raw_callback(event: dict, headers: dict[str, str]) -> http.client.HTTPConnection:
    url = urlsplit(event["sssrd"]["callbackUrl"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", url.path, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    return conn


def bearer(event: dict) -> dict[str, str]:
    return {"authorization": f"Bearer {event['sssrd']['token']}"}


def post(event: dict, body: bytes, headers: dict[str, str], url: str | None = None) -> int:
    """One Content-Length callback; returns sssrd's status."""
    target = urlsplit(url or event["sssrd"]["callbackUrl"])
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    try:
        conn.request("POST", target.path, body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def environment(event: dict, conductor: Conductor, query: dict) -> None:
    """Reports what the render inherited from the daemon's environment."""
    conductor.report("environ", notify=os.environ.get("NOTIFY_SOCKET"), pid=os.getpid())
    callback.respond(event, "ok")


def plain(event: dict, conductor: Conductor, query: dict) -> None:
    """No prelude: status from X-Status-Code, Content-Type passed through, Content-Length."""
    status = post(
        event,
        b"plain body",
        {**bearer(event), "content-type": "text/x-plain", "x-status-code": query.get("s", "201")},
    )
    conductor.report("answered", status=status)


def plain_chunked(event: dict, conductor: Conductor, query: dict) -> None:
    conn = raw_callback(event, {**bearer(event), "transfer-encoding": "chunked"})
    for piece in (b"one ", b"two ", b"three"):
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    conn.send(b"0\r\n\r\n")
    conductor.report("answered", status=conn.getresponse().status)


def prelude_length(event: dict, conductor: Conductor, query: dict) -> None:
    """Prelude format with Content-Length: the viewer learns the body length."""
    prelude = json.dumps({"statusCode": 200, "headers": {"content-type": "text/plain"}})
    body = prelude.encode() + b"\0" * 8 + b"exactly this"
    status = post(event, body, {**bearer(event), "content-type": PRELUDE_TYPE})
    conductor.report("answered", status=status)


def expect_continue(event: dict, conductor: Conductor, query: dict) -> None:
    """Sends the body only after sssrd's 100 Continue."""
    url = urlsplit(event["sssrd"]["callbackUrl"])
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        body = b"after continue"
        sock.sendall(
            b"POST %s HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n"
            b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n"
            % (url.path.encode(), event["sssrd"]["token"].encode(), len(body))
        )
        interim = sock.recv(1024)
        sock.sendall(body)
        final = b""
        while b"\r\n\r\n" not in final:
            final += sock.recv(1024)
    conductor.report("answered", interim=interim.decode(), final=final.decode())


def conflicting_framing(event: dict, conductor: Conductor, query: dict) -> None:
    """A callback with a valid token and both Content-Length and chunked framing."""
    headers = {**bearer(event), "content-length": "5", "transfer-encoding": "chunked"}
    conn = raw_callback(event, headers)
    conn.send(b"5\r\nhello\r\n0\r\n\r\n")
    response = conn.getresponse()
    conductor.report("answered", status=response.status, body=response.read().decode())


def abort_mid_body(event: dict, conductor: Conductor, query: dict) -> None:
    """Two chunks, then the Lambda dies: no final chunk."""
    conn = raw_callback(
        event, {**bearer(event), "content-type": PRELUDE_TYPE, "transfer-encoding": "chunked"}
    )
    for piece in (b'{"statusCode":200}' + b"\0" * 8, b"part one", b"part two"):
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    conductor.wait("close")
    conn.sock.close()


def stall(event: dict, conductor: Conductor, query: dict) -> None:
    """One chunk, then silence until the test lets go."""
    with callback.open_stream(event) as out:
        out.write("before the stall\n")
        conductor.wait("resume")
        try:
            out.write("after the stall\n")
        except callback.CallbackError as exc:
            conductor.report("write_failed", error=type(exc).__name__)
            raise


def never(event: dict, conductor: Conductor, query: dict) -> None:
    """Accepts the invoke and never calls back."""


def late(event: dict, conductor: Conductor, query: dict) -> None:
    """Calls back only when the test says so (after the deadline)."""
    conductor.wait("go")
    try:
        callback.respond(event, "too late")
    except callback.CallbackError as exc:
        conductor.report("rejected", error=type(exc).__name__, message=str(exc))
    else:
        conductor.report("accepted")


def intruders(event: dict, conductor: Conductor, query: dict) -> None:
    """While streaming, a duplicate, a forged and an unknown callback try their luck."""
    with callback.open_stream(event, headers={"content-type": "text/plain"}) as out:
        out.write("chunk one\n")
        url = event["sssrd"]["callbackUrl"]
        base = url.rsplit("/", 1)[0]
        plain_headers = {"content-type": "text/plain"}
        statuses = {
            "duplicate": post(event, b"dup", {**bearer(event), **plain_headers}),
            "forged": post(event, b"x", {"authorization": "Bearer forged", **plain_headers}),
            "no_token": post(event, b"x", plain_headers),
            "unknown": post(event, b"x", {**bearer(event)}, url=f"{base}/{'0' * 32}"),
            "malformed_id": post(event, b"x", {**bearer(event)}, url=f"{base}/../admin"),
            "wrong_path": post(event, b"x", {**bearer(event)}, url=base.rsplit("/", 2)[0] + "/"),
        }
        conductor.report("statuses", **statuses)
        out.write("chunk two\n")
    conductor.report("done", summary=out.summary)


def reused_callback(event: dict, conductor: Conductor, query: dict) -> None:
    """Delivers its body, then sends a forged callback on the same kept-alive connection (after
    reading the answer, or `pipelined` in the same write); reports every status and whether
    sssrd then closed the connection."""
    url = urlsplit(event["sssrd"]["callbackUrl"])
    body = b"delivered"
    head = (
        b"POST %s HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\ncontent-type: text/plain\r\n"
        % (url.path.encode())
    )
    first = head + b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s" % (
        event["sssrd"]["token"].encode(),
        len(body),
        body,
    )
    forged = head + b"authorization: Bearer forged\r\ncontent-length: 1\r\n\r\nx"
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        if query.get("pipelined") == "1":
            sock.sendall(first + forged)
        else:
            sock.sendall(first)
            answer = sock.recv(65536)  # one short answer, sent in one write
            sock.sendall(forged)
        received = b"" if query.get("pipelined") == "1" else answer
        while piece := sock.recv(65536):  # ends only if sssrd closes
            received += piece
    statuses = [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3})", received)]
    conductor.report("answered", statuses=statuses, closed=True)


def kept_alive_answer(event: dict, conductor: Conductor, query: dict) -> None:
    """A chunked callback asking for keep-alive (status `s`, default 200), ended when the test
    says; reports the answer."""
    headers = {"transfer-encoding": "chunked", "connection": "keep-alive"}
    if "s" in query:
        headers["x-status-code"] = query["s"]
    conn = raw_callback(event, {**bearer(event), **headers, "content-type": "text/plain"})
    conn.send(b"5\r\nfirst\r\n")
    conductor.wait("finish")
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    response.read()
    conn.close()
    conductor.report(
        "answered", status=response.status, connection=response.getheader("connection")
    )


def misdirected(event: dict, conductor: Conductor, query: dict) -> None:
    """With several workers: the right token sent to another worker's callback port first."""
    url = urlsplit(event["sssrd"]["callbackUrl"])
    other = next(port for port in map(int, query["ports"].split(",")) if port != url.port)
    wrong = url._replace(netloc=f"{url.hostname}:{other}").geturl()
    status = post(event, b"stolen", {**bearer(event), "content-type": "text/plain"}, url=wrong)
    conductor.report("misdirected", status=status, own=url.port, other=other)
    callback.respond(event, "the real body")


def render_error(event: dict, conductor: Conductor, query: dict) -> None:
    """Fails before its first write and says so in an error report, asking for keep-alive as
    the helpers do; reports sssrd's answer and whether the connection stayed open."""
    url = urlsplit(event["sssrd"]["callbackUrl"])
    report = {"errorType": query.get("type", "ValueError"), "errorMessage": "password hunter2"}
    headers = {
        **bearer(event),
        "content-type": "application/vnd.sssrd.render-error+json",
        "connection": "keep-alive",
    }
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("POST", url.path, body=json.dumps(report).encode(), headers=headers)
    response = conn.getresponse()
    answer = json.loads(response.read())
    connection = response.getheader("connection")
    conductor.report("answered", status=response.status, answer=answer, connection=connection)
    conn.close()


class RenderFailed(Exception):
    """What the failing scenarios raise; its message must never reach a viewer."""


def raises_early(event: dict, conductor: Conductor, query: dict) -> None:
    """Raises before any callback, as a render with a bug in its first line would."""
    raise RenderFailed("password hunter2")


def returns_early(event: dict, conductor: Conductor, query: dict) -> None:
    """Returns without ever calling back."""


# Callback connections a failing render leaves open, as a Lambda sandbox's would stay open.
LEFT_OPEN: list[http.client.HTTPConnection] = []


def raises_mid_stream(event: dict, conductor: Conductor, query: dict) -> None:
    """Sends one chunk, then raises with its callback still open (never closed by it)."""
    headers = {**bearer(event), "transfer-encoding": "chunked", "content-type": "text/plain"}
    conn = raw_callback(event, headers)
    conn.send(b"6\r\nfirst\n\r\n")
    LEFT_OPEN.append(conn)
    conductor.wait("raise")
    raise RenderFailed("password hunter2")


def returns_after_sending(event: dict, conductor: Conductor, query: dict) -> None:
    """A raw or compat client: sends its whole chunked body (`size` bytes in `chunk`-byte
    chunks; the final chunk unless `final=no`) and returns at once, never reading sssrd's
    answer, its callback left open (much of the body may still be in flight)."""
    size, chunk = int(query["size"]), int(query["chunk"])
    body = pattern(size)
    conn = raw_callback(event, {**bearer(event), "transfer-encoding": "chunked"})
    for start in range(0, size, chunk):
        piece = body[start : start + chunk]
        conn.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    if query.get("final") != "no":
        conn.sock.sendall(b"0\r\n\r\n")
    LEFT_OPEN.append(conn)


def killed(event: dict, conductor: Conductor, query: dict) -> None:
    """Ends its own process at once, before any callback, as the kernel's OOM killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


def hands_over(event: dict, conductor: Conductor, query: dict) -> None:
    """Tells the test its callback URL and token, and waits: the test calls back by hand."""
    conductor.report("callback", url=event["sssrd"]["callbackUrl"], token=event["sssrd"]["token"])
    conductor.wait("done")


def bad_prelude(event: dict, conductor: Conductor, query: dict) -> None:
    kinds = {
        "crlf": {"statusCode": 200, "headers": {"x-evil": "a\r\nset-cookie: stolen=1"}},
        "status": {"statusCode": 99},
        "json": None,
    }
    prelude = kinds[query["kind"]]
    raw = b"{not json" if prelude is None else json.dumps(prelude).encode()
    status = post(event, raw + b"\0" * 8 + b"body", {**bearer(event), "content-type": PRELUDE_TYPE})
    conductor.report("answered", status=status)


# Callbacks with a valid URL and token whose head or body breaks RFC 9112 (`kind`).
MALFORMED_CALLBACKS = {
    "fold": (b"x-note: a\r\n folded\r\ncontent-length: 5\r\n", b"hello"),
    "bare_lf": (b"x-note: a\ncontent-length: 5\r\n", b"hello"),
    "control": (b"x-note: a\x01b\r\ncontent-length: 5\r\n", b"hello"),
    "misframed": (b"transfer-encoding: chunked\r\n", b"5\nhello\r\n0\r\n\r\n"),
    "misframed_prelude": (
        b"transfer-encoding: chunked\r\ncontent-type: " + PRELUDE_TYPE.encode() + b"\r\n",
        b"5\nhello\r\n0\r\n\r\n",
    ),
}


def malformed_callback(event: dict, conductor: Conductor, query: dict) -> None:
    """Sends one MALFORMED_CALLBACKS entry over a raw socket, head and body in one write (so
    the body is already there when sssrd reads the head); reports sssrd's status (0 if the
    connection closed unanswered)."""
    url = urlsplit(event["sssrd"]["callbackUrl"])
    headers, body = MALFORMED_CALLBACKS[query["kind"]]
    head = b"POST %s HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n%s\r\n" % (
        url.path.encode(),
        event["sssrd"]["token"].encode(),
        headers,
    )
    received = b""
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(head + body)
        with contextlib.suppress(ConnectionResetError):  # closed with our body unread
            while piece := sock.recv(65536):
                received += piece
    status = re.match(rb"HTTP/1\.1 (\d{3})", received)
    conductor.report("answered", status=int(status[1]) if status else 0)


def framing_headers(event: dict, conductor: Conductor, query: dict) -> None:
    """Hop-by-hop and framing headers in the prelude are dropped, the rest kept."""
    headers = {
        "connection": "close",
        "transfer-encoding": "gzip",
        "content-length": "5",
        "keep-alive": "timeout=1",
        "x-kept": "yes",
        "content-type": "text/plain",
    }
    with callback.open_stream(event, status=202, headers=headers, cookies=["a=1", "b=2"]) as out:
        out.write("body with dropped headers")


def status_only(event: dict, conductor: Conductor, query: dict) -> None:
    """A 204/304 render: whatever body the Lambda sends, the viewer gets none."""
    with callback.open_stream(event, status=int(query["s"])) as out:
        out.write("ignored")


def seed_handler(event: dict, context: Any) -> None:
    """The seed proof of concept's Lambda: chunked POST to the origin's root, no token."""
    conductor = Conductor("seed")
    origin = urlsplit(event["origin"])
    conn = http.client.HTTPConnection(origin.hostname, origin.port, timeout=30)
    conn.putrequest("POST", "/", skip_accept_encoding=True)
    conn.putheader("x-request-id", event["requestId"])
    conn.putheader("x-status-code", "203")
    conn.putheader("content-type", "text/html")
    conn.putheader("transfer-encoding", "chunked")
    conn.endheaders()
    for piece in (b"seed one ", b"seed two "):
        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    conn.send(b"0\r\n\r\n")
    conductor.report("event", event=event, status=conn.getresponse().status)


def pattern(size: int) -> bytes:
    """Deterministic bytes the test can rebuild to check integrity."""
    block = bytes(range(256)) * 256
    return (block * (size // len(block) + 1))[:size]


def bulk(event: dict, conductor: Conductor, query: dict) -> None:
    """A large body, chunked in `chunk`-byte chunks or with Content-Length (`framing=length`)."""
    size, chunk = int(query["size"]), int(query.get("chunk", "65536"))
    body = pattern(size)
    prelude = b'{"statusCode":200,"headers":{"content-type":"application/octet-stream"}}'
    head = prelude + b"\0" * 8
    headers = {**bearer(event), "content-type": PRELUDE_TYPE}
    if query.get("framing") == "length":
        headers["content-length"] = str(len(head) + size)
    else:
        headers["transfer-encoding"] = "chunked"
    conn = raw_callback(event, headers)
    conn.sock.settimeout(float(query.get("block_after", "30")))
    sent = 0
    try:
        if "content-length" in headers:
            conn.send(head)
            for start in range(0, size, chunk):
                conn.sock.sendall(body[start : start + chunk])
                sent += len(body[start : start + chunk])
        else:
            conn.send(b"%x\r\n%s\r\n" % (len(head), head))
            for start in range(0, size, chunk):
                piece = body[start : start + chunk]
                conn.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
                if query.get("break_at") and sent >= int(query["break_at"]):
                    conn.sock.sendall(b"zz\r\n")  # invalid framing mid-stream
                    conductor.wait("closed")
                    return
            conn.send(b"0\r\n\r\n")
    except TimeoutError:
        conductor.report("blocked", sent=sent)
        conductor.wait("resume")
        conn.sock.settimeout(30)
        for start in range(sent, size, chunk):
            piece = body[start : start + chunk]
            framed = piece if "content-length" in headers else b"%x\r\n%s\r\n" % (len(piece), piece)
            conn.sock.sendall(framed)
        if "content-length" not in headers:
            conn.send(b"0\r\n\r\n")
    except OSError as exc:
        conductor.report("send_failed", error=type(exc).__name__, sent=sent)
        return
    conductor.report("answered", status=conn.getresponse().status)


SCENARIOS = {
    name: function
    for name, function in globals().items()
    if inspect.isfunction(function)
    and function.__module__ == __name__
    and function.__code__.co_varnames[:3] == ("event", "conductor", "query")
}
