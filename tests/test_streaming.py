"""Callbacks stream into viewers as they arrive; every failure row of the design holds."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
from urllib.parse import urlsplit

import h11
import pytest
from harness import (
    WAIT,
    PlayedLambda,
    Viewer,
    daemon,
    header,
    http_get,
    lambda_dies_mid_body,
    leave_mid_stream,
    wait_for,
)
from system_tools import tool

pytestmark = pytest.mark.daemon


@pytest.mark.system_tools
def test_curl_shows_each_chunk_as_the_lambda_writes_it(sssrd, conductor):
    """The README's promise: `curl -N` prints each chunk when the Lambda writes it."""
    url = f"http://{sssrd.viewer[0]}:{sssrd.viewer[1]}/?scenario=stepped&tag=curl&steps=2"
    process = subprocess.Popen([tool("curl"), "-sN", url], stdout=subprocess.PIPE)
    assert process.stdout is not None
    conductor.release("curl:step0")
    assert process.stdout.read1(65536) == b"chunk 0\n"
    conductor.wait_waiting("curl:step1")  # chunk 1 does not exist yet; curl already has chunk 0
    conductor.release("curl:step1")
    assert process.stdout.read() == b"chunk 1\n"
    assert process.wait(WAIT) == 0


def test_demo_page_streams_through_the_daemon(sssrd):
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", "/?lines=3&delay_ms=0")
    assert viewer.head().status_code == 200
    first = viewer.chunk()
    assert first is not None and len(first) >= 4096 and b"<!doctype html>" in first.lower()
    page = first + viewer.body()  # with no delay, the lines may share the first chunk
    assert page.count(b'class="line"') == 3 and page.rstrip().endswith(b"</html>")


def test_each_chunk_reaches_the_viewer_before_the_next_is_written(sssrd, conductor):
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", "/?scenario=stepped&tag=steps&steps=3")
    conductor.release("steps:step0")
    head = viewer.head()
    assert header(head, b"transfer-encoding") == b"chunked"
    for step in range(3):
        if step:
            conductor.wait_waiting(f"steps:step{step}")  # the Lambda is blocked, not writing
            conductor.release(f"steps:step{step}")
        assert viewer.chunk() == f"chunk {step}\n".encode()
    assert viewer.chunk() is None
    done = conductor.report("steps", "done")
    assert done["summary"]["bytes"] == sum(len(f"chunk {i}\n") for i in range(3))
    access = sssrd.access(request_id=header(head, b"x-request-id").decode())
    assert access["outcome"] == "ok" and access["status"] == 200


def test_plain_callback_sets_status_and_content_type_with_content_length(sssrd, conductor):
    viewer = Viewer(sssrd.viewer)
    head, body = viewer.get("/?scenario=plain&tag=plain&s=201")
    assert head.status_code == 201
    assert header(head, b"content-type") == b"text/x-plain"
    assert header(head, b"content-length") == b"10"
    assert body == b"plain body"
    assert conductor.report("plain", "answered")["status"] == 200


def test_plain_chunked_callback_is_relayed_chunked(sssrd, conductor):
    head, body = Viewer(sssrd.viewer).get("/?scenario=plain_chunked&tag=pc")
    assert head.status_code == 200
    assert header(head, b"transfer-encoding") == b"chunked"
    assert body == b"one two three"
    assert conductor.report("pc", "answered")["status"] == 200


def test_prelude_with_content_length_gives_the_viewer_a_content_length(sssrd, conductor):
    head, body = Viewer(sssrd.viewer).get("/?scenario=prelude_length&tag=pl")
    assert header(head, b"content-length") == b"12"
    assert body == b"exactly this"
    assert conductor.report("pl", "answered")["status"] == 200


def test_expect_100_continue_is_honoured_on_the_callback(sssrd, conductor):
    _head, body = Viewer(sssrd.viewer).get("/?scenario=expect_continue&tag=ec")
    assert body == b"after continue"
    answered = conductor.report("ec", "answered")
    assert answered["interim"].startswith("HTTP/1.1 100 ")
    assert answered["final"].startswith("HTTP/1.1 200 ")


def test_framing_and_hop_by_hop_prelude_headers_are_dropped_cookies_kept(sssrd):
    viewer = Viewer(sssrd.viewer)
    head, body = viewer.get("/?scenario=framing_headers")
    headers = head.headers
    assert head.status_code == 202
    assert body == b"body with dropped headers"
    assert header(head, b"x-kept") == b"yes"
    assert header(head, b"keep-alive") is None
    assert header(head, b"transfer-encoding") == b"chunked"  # sssrd's framing, not the prelude's
    assert header(head, b"content-length") is None
    assert [v for n, v in headers if n == b"set-cookie"] == [b"a=1", b"b=2"]
    # The prelude's "connection: close" was not obeyed: the connection stays usable.
    viewer.next_cycle()
    assert viewer.get("/healthz")[0].status_code == 200


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_send_no_body(sssrd, status):
    head, body = Viewer(sssrd.viewer).get(f"/?scenario=status_only&s={status}")
    assert head.status_code == status
    assert body == b""


def test_lambda_dying_mid_body_truncates_the_viewer_response(sssrd, conductor):
    head = lambda_dies_mid_body(sssrd, conductor, "amb")
    access = sssrd.access(request_id=header(head, b"x-request-id").decode())
    assert access["outcome"] == "lambda_abort"


def test_lambda_dying_mid_body_to_an_http10_viewer_is_logged_and_counted_as_a_cut(sssrd, conductor):
    """An HTTP/1.0 response is close-delimited: the viewer cannot tell the cut from the end, so
    the access line (its bytes short of a whole body) and the abort counter must."""
    aborts = sssrd.metric("sssrd_aborts_total", side="lambda")
    with socket.create_connection(sssrd.viewer, timeout=WAIT) as sock:
        sock.sendall(b"GET /http10?scenario=abort_mid_body&tag=amb10 HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"part two"):
            data += sock.recv(65536)
        conductor.release("amb10:close")
        while piece := sock.recv(65536):
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"part onepart two"
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    access = sssrd.access(path="/http10")
    assert (access["outcome"], access["bytes"]) == ("lambda_abort", len(body))
    assert sssrd.metric("sssrd_aborts_total", side="lambda") == aborts + 1


def test_a_render_whose_body_and_hang_up_arrive_together_still_reaches_its_viewer(sssrd, conductor):
    """The prelude, both chunks and the hang-up can all be read before a byte has left: the
    viewer must still get those bytes and a cut, never a 502 that throws them away. Whether
    they arrive together is up to the kernel, so the test asks thirty times (one in six did)."""
    conductor.release("together:close")  # the render hangs up as soon as it has written
    for _ in range(30):
        with socket.create_connection(sssrd.viewer, timeout=WAIT) as sock:
            sock.sendall(
                b"GET /together?scenario=abort_mid_body&tag=together HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            data = b""
            while piece := sock.recv(65536):
                data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert body == b"8\r\npart one\r\n8\r\npart two\r\n"  # no final chunk


@pytest.mark.parametrize(
    ("wire", "salvaged"),
    [(b"a\r\nhalf", b"half"), (b"5\r\nhello\r\nzz\r\n", b"hello")],
    ids=["mid-chunk", "misframed-after-a-chunk"],  # the second in one read: only salvage sends it
)
def test_a_render_dying_mid_chunk_or_misframing_leaves_the_viewer_its_valid_bytes_unterminated(
    sssrd, conductor, wire, salvaged
):
    tag = f"salvage-{len(wire)}"
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", f"/{tag}?scenario=handover&tag={tag}")
    render = PlayedLambda(conductor, tag)
    render.write(b"whole\n")
    assert viewer.chunk_after_head() == b"whole\n"
    render.break_off(wire)
    received = b""
    with pytest.raises(h11.RemoteProtocolError):  # closed without the final chunk
        while (piece := viewer.chunk()) is not None:
            received += piece
    assert received == salvaged
    access = sssrd.access(path=f"/{tag}")
    assert (access["outcome"], access["bytes"]) == ("lambda_abort", len(b"whole\n" + salvaged))


def test_viewer_leaving_closes_the_callback_and_frees_the_entry(sssrd, conductor):
    assert leave_mid_stream(sssrd, conductor, "vl")["outcome"] == "viewer_abort"
    gone = conductor.report("vl", "viewer_gone")
    assert conductor.count("vl", "write_succeeded") == 0
    assert "ended the callback stream: 410 " in gone["message"]  # told, not merely cut
    wait_for(lambda: sssrd.metric("sssrd_streams_in_flight") == 0, what="stream released")
    assert sssrd.metric("sssrd_pending_callbacks") == 0
    assert sssrd.metric("sssrd_aborts_total", side="viewer") >= 1


def test_viewer_leaving_before_the_callback_makes_the_callback_410(sssrd, conductor):
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", "/?scenario=late&tag=early-leave")
    invoked = conductor.report("early-leave", "invoked")
    viewer.close()
    sssrd.access(request_id=invoked["request_id"])
    conductor.release("early-leave:go")
    rejected = conductor.report("early-leave", "rejected")
    assert rejected["error"] == "ViewerGone"
    assert "410" in rejected["message"] and "viewer disconnected" in rejected["message"]


def test_duplicate_forged_and_unknown_callbacks_are_rejected_and_stream_survives(sssrd, conductor):
    viewer = Viewer(sssrd.viewer)
    body = viewer.get("/?scenario=intruders&tag=intr")[1]
    assert body == b"chunk one\nchunk two\n"
    statuses = conductor.report("intr", "statuses")
    assert statuses["duplicate"] == 409
    assert statuses["forged"] == 401
    assert statuses["no_token"] == 401
    assert statuses["unknown"] == 401  # a token is only valid for its own id
    assert statuses["malformed_id"] == 404
    assert statuses["wrong_path"] == 404
    assert conductor.report("intr", "done")["summary"]["bytes"] == len(body)
    assert sssrd.metric("sssrd_callbacks_rejected_total", reason="bad_token") >= 3
    assert sssrd.metric("sssrd_callbacks_rejected_total", reason="duplicate") >= 1


def test_second_callback_after_delivery_gets_410(sssrd, conductor):
    head, _ = Viewer(sssrd.viewer).get("/?scenario=echo&tag=again")
    request_id = header(head, b"x-request-id").decode()
    event = json.loads(_)
    token = event["sssrd"]["token"]
    url = urlsplit(event["sssrd"]["callbackUrl"])  # the port of the worker that holds it
    assert url.path == f"/v1/callback/{request_id}"
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=WAIT)
    conn.request("POST", url.path, b"again", {"authorization": f"Bearer {token}"})
    response = conn.getresponse()
    assert response.status == 410
    assert "already" in json.loads(response.read())["error"]


@pytest.mark.parametrize("kind", ["crlf", "status", "json"])
def test_malformed_prelude_gets_502_for_the_viewer_and_400_for_the_lambda(sssrd, conductor, kind):
    tag = f"bad-{kind}"
    head, _body = Viewer(sssrd.viewer).get(f"/?scenario=bad_prelude&kind={kind}&tag={tag}")
    assert head.status_code == 502
    assert header(head, b"set-cookie") is None
    assert conductor.report(tag, "answered")["status"] == 400


def test_deadline_gives_504_and_a_late_callback_gets_410(conductor):
    with daemon(conductor, "--callback-timeout=0.3") as sssrd:
        head, _ = Viewer(sssrd.viewer).get("/?scenario=late&tag=deadline")
        assert head.status_code == 504
        conductor.release("deadline:go")
        rejected = conductor.report("deadline", "rejected")
        assert "410" in rejected["message"] and "deadline" in rejected["message"]
        assert sssrd.metric("sssrd_timeouts_total", kind="deadline") == 1
        assert sssrd.metric("sssrd_callbacks_rejected_total", reason="late") == 1
        assert sssrd.metric("sssrd_pending_callbacks") == 0


def test_idle_callback_truncates_the_viewer_and_closes_the_callback(conductor):
    with daemon(conductor, "--idle-timeout=0.3") as sssrd:
        viewer = Viewer(sssrd.viewer)
        viewer.send("GET", "/?scenario=stall&tag=idle")
        assert viewer.head().status_code == 200
        assert viewer.chunk() == b"before the stall\n"
        with pytest.raises(h11.RemoteProtocolError):
            viewer.chunk()
        conductor.release("idle:resume")
        assert conductor.report("idle", "write_failed")["error"] == "ViewerGone"
        assert sssrd.metric("sssrd_timeouts_total", kind="idle") == 1


def test_pending_limit_sheds_with_503_without_invoking(conductor):
    with daemon(conductor, "--max-pending=1") as sssrd:
        # The limit is each worker's: hold requests until the worker that accepts one is full.
        holders: list[Viewer] = []
        for attempt in range(40):
            viewer, path, held = Viewer(sssrd.viewer), f"/hold{attempt}", len(holders)
            viewer.send("GET", f"{path}?scenario=late&tag=holder")
            wait_for(
                lambda path=path, held=held: (
                    conductor.count("holder", "invoked") > held
                    or any(line.get("path") == path for line in list(sssrd.lines))
                ),
                what=f"{path} invoked or shed",
            )
            if conductor.count("holder", "invoked") == len(holders):
                break  # shed: its access line is out
            holders.append(viewer)
        assert 1 <= len(holders) <= sssrd.processes
        head = viewer.head()
        assert head.status_code == 503 and header(head, b"retry-after") == b"1"
        assert sssrd.uninvoked(path)["outcome"] == "shed"
        conductor.release("holder:go")
        for holder in holders:
            assert holder.head().status_code == 200


def test_garbage_on_both_listeners_never_disturbs_a_live_stream(sssrd, conductor):
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", "/?scenario=stepped&tag=garbage&steps=2")
    conductor.release("garbage:step0")
    assert viewer.head().status_code == 200
    assert viewer.chunk() == b"chunk 0\n"
    hostile = [
        b"\x00\xff" * 1000,
        b"GET / HTTP/1.1\r\n\r\n",
        b"POST /v1/callback/" + b"a" * 32 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/callback/x HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"GARBAGE\r\n\r\n",
        b"",
    ]
    threads = []
    for address in (sssrd.viewer, sssrd.callback, sssrd.admin):
        for payload in hostile:
            threads.append(threading.Thread(target=throw, args=(address, payload)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    conductor.release("garbage:step1")
    assert viewer.chunk() == b"chunk 1\n"
    assert viewer.chunk() is None
    assert sssrd.alive()
    assert http_get(sssrd.viewer, "/healthz")[0] == 200


def throw(address: tuple[str, int], payload: bytes) -> None:
    with socket.create_connection(address, timeout=WAIT) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
