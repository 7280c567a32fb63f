"""HTTP edges both listeners must hold to on their own (with or without a strict front end).

Heads are refused where h11 is lenient and RFC 9112 lets a recipient refuse (obs-fold, bare LF,
control bytes); a method no render can answer is refused before any invoke; an absolute-form
target names the host; the viewer's request (head, then body) is on the viewer's clock and named
as such; a callback that breaks before any byte reached the viewer is a 502 for the viewer and a
400 for the Lambda; a render whose viewer needs no body is still answered as delivered; and a
new connection that sends nothing gets 408 at head_timeout on both listeners.
"""

from __future__ import annotations

import json
import socket

import pytest
from harness import WAIT, Viewer, daemon, exchange, header
from test_hostile_clients import CALLBACK_ID, one_response, status_of

pytestmark = pytest.mark.daemon

# Each breaks RFC 9112 in a way h11 lets through (it unfolds, splits on LF, keeps the byte).
LENIENT_LINES = {
    "obs-fold": b"x-note: a\r\n folded\r\n",
    "obs-fold-tab": b"x-note: a\r\n\tfolded\r\n",
    "bare-lf": b"x-note: a\n",
    "control-byte": b"x-note: a\x01b\r\n",
    "delete": b"x-note: a\x7fb\r\n",
}


# -- methods ---------------------------------------------------------------------------------------


def test_connect_is_refused_405_before_any_invoke(sssrd, conductor):
    answer = exchange(
        sssrd.viewer, b"CONNECT /connect?scenario=echo&tag=connect HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    status, body = one_response(answer)
    assert status == 405 and b"CONNECT" in body
    assert b"\r\nallow: GET, HEAD, POST" in answer
    access = sssrd.access(path="/connect")
    assert access["status"] == 405 and access["outcome"] == "bad_request"
    assert conductor.count("connect", "invoked") == 0


# -- strict heads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LENIENT_LINES)
def test_a_lenient_viewer_head_gets_400_and_nothing_behind_it_is_read(sssrd, conductor, kind):
    tag = f"lenient-{kind}"
    follow_up = b"GET /?scenario=echo&tag=behind-" + tag.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = exchange(
        sssrd.viewer,
        b"GET /?scenario=echo&tag="
        + tag.encode()
        + b" HTTP/1.1\r\nHost: x\r\n"
        + LENIENT_LINES[kind]
        + b"\r\n"
        + follow_up,
    )
    status, body = one_response(answer)
    assert status == 400 and b"bare LF" in body
    assert conductor.count(tag, "invoked") == 0
    assert conductor.count(f"behind-{tag}", "invoked") == 0


def test_a_folded_transfer_encoding_smuggles_nothing(sssrd, conductor):
    """The issue's reproducer: a front end that reads the folded line as its own header frames
    the body as chunked; h11 unfolds it and frames by Content-Length, so the chunk's payload
    would be served as a second request. The folded head is refused, its connection closed."""
    smuggled = b"GET /?scenario=echo&tag=smuggled-get HTTP/1.1\r\nHost: x\r\n\r\n"
    size_line = b"%x\r\n" % len(smuggled)
    answer = exchange(
        sssrd.viewer,
        b"POST /?scenario=echo&tag=fold-carrier HTTP/1.1\r\nHost: x\r\nX: a\r\n"
        b" Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n"
        % len(size_line)
        + size_line
        + smuggled
        + b"\r\n0\r\n\r\n",
    )
    assert one_response(answer)[0] == 400  # one answer, then the close
    assert conductor.count("smuggled-get", "invoked") == 0
    assert conductor.count("fold-carrier", "invoked") == 0


@pytest.mark.parametrize("kind", LENIENT_LINES)
def test_a_lenient_callback_head_gets_400(sssrd, kind):
    answer = exchange(
        sssrd.callback,
        b"POST /v1/callback/"
        + CALLBACK_ID
        + b" HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n"
        + LENIENT_LINES[kind]
        + b"\r\n",
    )
    status, body = one_response(answer)
    assert status == 400 and "bare LF" in json.loads(body)["error"]


@pytest.mark.parametrize("kind", ["fold", "bare_lf", "control"])
def test_a_lenient_callback_head_with_a_valid_token_is_400_and_its_viewer_502(
    sssrd, conductor, kind
):
    tag = f"cb-{kind}"
    head, body = Viewer(sssrd.viewer).get(f"/?scenario=malformed_callback&kind={kind}&tag={tag}")
    assert head.status_code == 502 and b"hello" not in body
    assert conductor.report(tag, "answered")["status"] == 400


# -- absolute-form targets -------------------------------------------------------------------------


def test_an_absolute_form_target_names_the_host_of_the_event(sssrd):
    answer = exchange(
        sssrd.viewer,
        b"GET http://a.example:8080/x/y?scenario=echo HTTP/1.1\r\nHost: b.example\r\n"
        b"connection: close\r\n\r\n",
    )
    assert status_of(answer) == 200
    event = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert event["headers"]["host"] == "a.example:8080"
    assert event["requestContext"]["domainName"] == "a.example"
    assert event["rawPath"] == "/x/y" and event["rawQueryString"] == "scenario=echo"


def test_an_absolute_form_target_names_the_host_of_the_seed_protocols_url(conductor):
    with daemon(conductor, "--compat=lambda-streaming") as sssrd:
        answer = exchange(
            sssrd.viewer,
            b"GET http://a.example/seed?x=1 HTTP/1.1\r\nHost: b.example\r\n"
            b"connection: close\r\n\r\n",
        )
        assert status_of(answer) == 203
        assert conductor.report("seed", "event")["event"]["url"] == "http://a.example/seed?x=1"


def test_an_absolute_form_target_without_a_host_gets_400(sssrd, conductor):
    answer = exchange(
        sssrd.viewer, b"GET http:///?scenario=echo&tag=no-authority HTTP/1.1\r\nHost: b\r\n\r\n"
    )
    assert one_response(answer)[0] == 400
    assert conductor.count("no-authority", "invoked") == 0


# -- the viewer's request is the viewer's ----------------------------------------------------------


@pytest.mark.parametrize(
    ("framing", "partial"),
    [(b"content-length: 100", b"only ten b"), (b"transfer-encoding: chunked", b"64\r\nonly ten b")],
)
def test_a_viewer_leaving_mid_body_is_a_viewer_abort(sssrd, conductor, framing, partial):
    path = f"/cut-{framing[:4].decode()}"
    with socket.create_connection(sssrd.viewer, timeout=WAIT) as sock:
        sock.sendall(
            f"POST {path}?scenario=echo&tag=cut HTTP/1.1\r\nHost: x\r\n".encode()
            + framing
            + b"\r\n\r\n"
            + partial
        )
    access = sssrd.access(path=path)
    assert access["outcome"] == "viewer_abort" and access["status"] == 499
    assert conductor.count("cut", "invoked") == 0


def test_a_slow_viewer_body_gets_408_within_head_timeout_as_a_slow_head_does(conductor):
    """The body must arrive whole within head_timeout of its head: a trickle that never pauses
    for head_timeout (so the Lambda's idle_timeout, or any per-gap rule, would never fire) is
    refused, and named as a slow head is."""
    with daemon(conductor, "--head-timeout=1", "--idle-timeout=60") as sssrd:
        with socket.create_connection(sssrd.viewer, timeout=WAIT) as sock:
            sock.sendall(b"POST /trickle HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n\r\n")
            sock.settimeout(0.4)  # one byte per 0.4 s, until sssrd answers
            answer = b""
            for _ in range(25):
                try:
                    answer = sock.recv(1024)
                    break
                except TimeoutError:
                    sock.sendall(b"x")
        assert status_of(answer) == 408
        access = sssrd.access(path="/trickle")
        assert access["outcome"] == "timeout" and access["status"] == 408
        assert sssrd.metric("sssrd_timeouts_total", kind="head") == 1
        assert sssrd.metric("sssrd_requests_total", code="4xx", outcome="timeout") == 1


# -- callbacks broken before the viewer's response began -------------------------------------------


@pytest.mark.parametrize("kind", ["misframed", "misframed_prelude"])
def test_a_callback_misframed_before_its_first_byte_is_400_and_its_viewer_502(
    sssrd, conductor, kind
):
    viewer = Viewer(sssrd.viewer)
    head, body = viewer.get(f"/?scenario=malformed_callback&kind={kind}&tag={kind}")
    assert head.status_code == 502 and b"hello" not in body
    assert conductor.report(kind, "answered")["status"] == 400
    access = sssrd.access(request_id=header(head, b"x-request-id").decode())
    assert access["outcome"] == "bad_callback" and access["status"] == 502


# -- viewers that need no body ---------------------------------------------------------------------


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)])
def test_a_render_whose_viewer_needs_no_body_is_answered_as_delivered(
    sssrd, conductor, method, status
):
    tag = f"nobody-{method}-{status}"
    viewer = Viewer(sssrd.viewer)
    viewer.send(method, f"/?scenario=kept_alive_answer&tag={tag}&s={status}")
    head = viewer.head()
    assert head.status_code == status and viewer.body() == b""
    conductor.release(f"{tag}:finish")
    answered = conductor.report(tag, "answered")
    assert answered["status"] == 200 and answered["connection"] is None  # delivered, kept
    access = sssrd.access(request_id=header(head, b"x-request-id").decode())
    assert access["outcome"] == "ok"
    viewer.next_cycle()  # and the viewer's connection serves its next request
    assert viewer.get("/healthz")[0].status_code == 200


# -- new connections that send nothing -------------------------------------------------------------


def test_a_new_connection_that_sends_nothing_gets_408_at_head_timeout_on_both_listeners(
    conductor,
):
    with daemon(conductor, "--head-timeout=0.3") as sssrd, sssrd.back_to_baseline():
        for listener, address in (("viewer", sssrd.viewer), ("callback", sssrd.callback)):
            with socket.create_connection(address, timeout=WAIT) as sock:
                answer = b""
                while piece := sock.recv(1024):  # the answer, then sssrd's end of writing
                    answer += piece
                # A lingering close: still reading (and dropping) what a late request sends.
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sssrd.metric("sssrd_connections_open", listener=listener) == 1
            assert status_of(answer) == 408 and b"connection: close" in answer
        assert sssrd.metric("sssrd_timeouts_total", kind="head") == 1
        assert sssrd.metric("sssrd_callbacks_rejected_total", reason="malformed") == 1
