"""The viewer listener speaks HTTP/1.x correctly and refuses bad requests clearly."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import subprocess

import h11
import pytest
from harness import WAIT, Viewer, daemon, header, http_get
from system_tools import tool

pytestmark = pytest.mark.daemon


def test_keep_alive_serves_several_renders_on_one_connection(sssrd):
    conn = http.client.HTTPConnection(*sssrd.viewer, timeout=WAIT)
    for number in range(3):
        conn.request("GET", f"/?scenario=echo&tag=keepalive{number}")
        response = conn.getresponse()
        event = json.loads(response.read())
        assert response.status == 200
        assert event["rawQueryString"] == f"scenario=echo&tag=keepalive{number}"
    conn.close()


def test_http10_response_is_close_delimited_and_not_chunked(sssrd):
    with socket.create_connection(sssrd.viewer, timeout=WAIT) as sock:
        sock.sendall(b"GET /?lines=1&delay_ms=0 HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body.rstrip().endswith(b"</html>")


def test_head_request_gets_the_rendered_head_and_no_body(sssrd):
    status, headers, body = http_get(sssrd.viewer, "/?lines=1&delay_ms=0", method="HEAD")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert body == b""


def test_post_body_and_method_reach_the_lambda(sssrd):
    conn = http.client.HTTPConnection(*sssrd.viewer, timeout=WAIT)
    conn.request("POST", "/form?scenario=echo", body=b"name=value", headers={"x-test": "1"})
    event = json.loads(conn.getresponse().read())
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["body"] == "name=value"
    assert event["isBase64Encoded"] is False
    assert event["headers"]["x-test"] == "1"


def test_event_is_payload_2_with_the_sssrd_callback_key(sssrd):
    viewer = Viewer(sssrd.viewer)
    head, body = viewer.get(
        "/a/b?scenario=echo&x=1&x=2",
        headers=[("cookie", "c1=v1; c2=v2"), ("connection", "keep-alive"), ("te", "trailers")],
    )
    event = json.loads(body)
    request_id = header(head, b"x-request-id").decode()
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == "/a/b"
    assert event["rawQueryString"] == "scenario=echo&x=1&x=2"
    assert event["queryStringParameters"]["x"] == "1,2"
    assert event["cookies"] == ["c1=v1", "c2=v2"]
    assert "cookie" not in event["headers"]
    assert "connection" not in event["headers"] and "te" not in event["headers"]
    assert event["requestContext"]["requestId"] == request_id
    assert event["requestContext"]["http"]["sourceIp"] == "127.0.0.1"
    sssrd_key = event["sssrd"]
    assert sssrd_key["version"] == 1
    assert sssrd_key["callbackUrl"] == f"{sssrd.callback_url}/v1/callback/{request_id}"
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    assert isinstance(sssrd_key["token"], str) and len(sssrd_key["token"]) >= 40
    assert sssrd_key["deadlineMs"] > event["requestContext"]["timeEpoch"]


def test_binary_body_is_base64_in_the_event(sssrd):
    payload = bytes(range(256))
    conn = http.client.HTTPConnection(*sssrd.viewer, timeout=WAIT)
    conn.request("POST", "/?scenario=echo", body=payload)
    event = json.loads(conn.getresponse().read())
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload


def test_healthz_answers_200(sssrd):
    assert http_get(sssrd.viewer, "/healthz")[0] == 200
    assert http_get(sssrd.admin, "/healthz")[0] == 200


def test_oversized_head_gets_431_and_daemon_survives(sssrd):
    with socket.create_connection(sssrd.viewer, timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nx-big: " + b"a" * 40_000 + b"\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 431 ")
    assert http_get(sssrd.viewer, "/healthz")[0] == 200


def test_malformed_head_gets_400(sssrd):
    with socket.create_connection(sssrd.viewer, timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400 ")


def test_declared_body_over_the_limit_gets_413_without_invoking(sssrd, conductor):
    conn = http.client.HTTPConnection(*sssrd.viewer, timeout=WAIT)
    conn.putrequest("POST", "/big?scenario=echo")
    conn.putheader("content-length", str(2_000_000))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert sssrd.uninvoked("/big")["status"] == 413


def test_chunked_body_over_the_limit_gets_413(conductor):
    with daemon(conductor, "--max-body-bytes=1000", "--max-event-bytes=100000") as sssrd:
        conn = http.client.HTTPConnection(*sssrd.viewer, timeout=WAIT)
        conn.putrequest("POST", "/?scenario=echo")
        conn.putheader("transfer-encoding", "chunked")
        conn.endheaders()
        conn.send(b"400\r\n" + b"x" * 1024 + b"\r\n")
        assert conn.getresponse().status == 413


def test_event_over_the_invoke_payload_limit_gets_413(conductor):
    # 900 binary bytes become 1200 base64 characters: the body fits, the event does not.
    with daemon(conductor, "--max-body-bytes=1000", "--max-event-bytes=1000") as sssrd:
        conn = http.client.HTTPConnection(*sssrd.viewer, timeout=WAIT)
        conn.request("POST", "/huge-event?scenario=echo", body=b"\xff" * 900)
        assert conn.getresponse().status == 413
        assert sssrd.uninvoked("/huge-event")["status"] == 413


def test_slow_head_gets_408(conductor):
    with daemon(conductor, "--head-timeout=0.3") as sssrd:
        with socket.create_connection(sssrd.viewer, timeout=WAIT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
            answer = b""
            while piece := sock.recv(1024):  # read to the end: the connection must close
                answer += piece
            assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer.lower()
        assert sssrd.metric("sssrd_timeouts_total", kind="head") == 1


def test_idle_keep_alive_connection_is_closed_after_its_timeout(conductor):
    with daemon(conductor, "--keepalive-timeout=0.3") as sssrd:
        viewer = Viewer(sssrd.viewer)
        head, _ = viewer.get("/healthz")
        assert head.status_code == 200
        assert viewer.sock.recv(1) == b""  # the server closed the idle connection


@pytest.mark.system_tools
def test_listeners_use_a_large_backlog(sssrd):
    listing = subprocess.run(
        [tool("ss"), "-ltnH", f"sport = :{sssrd.viewer[1]}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert int(listing[2]) >= 4096  # Send-Q of a listening socket is its backlog


def test_h11_rejects_request_smuggling_shapes(sssrd):
    """Both Content-Length and chunked, or two lengths: refused, never half-parsed."""
    for head in (
        b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n",
    ):
        with socket.create_connection(sssrd.viewer, timeout=WAIT) as sock:
            sock.sendall(head)
            answer = sock.recv(1024)
            assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 501 ")), answer


def test_viewer_client_sees_chunk_errors_as_protocol_errors():
    """The harness's own check: a body cut short is not mistaken for a complete one."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
    client.receive_data(b"")
    assert isinstance(client.next_event(), h11.Response)
    assert client.next_event().data == b"abc"
    try:
        client.next_event()
    except h11.RemoteProtocolError:
        return
    raise AssertionError("truncation not detected")


def test_health_checks_keep_the_connection_alive(sssrd):
    """The ALB reuses health-check connections: answering must not close them."""
    viewer = Viewer(sssrd.viewer)
    for _ in range(3):
        head, body = viewer.get("/healthz")
        assert head.status_code == 200 and body == b"ok\n"
        viewer.next_cycle()
