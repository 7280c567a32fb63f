"""Clients that attack or misuse sssrd, over raw sockets against the real daemon.

Request framing is refused where RFC 9112 says it must be (nothing behind a refused head is ever
read as a request), every refusal on either listener is answered and then closed lingeringly,
every callback ends answered or closed whatever the viewer does, and a slow viewer is its own
timeout, not the Lambda's. Each abort storm ends by checking that the connections of all three
listeners and the daemon's fds are back where they started.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket

import pytest
from harness import WAIT, Viewer, daemon, exchange, header, reset, wait_for
from scenarios import pattern

pytestmark = pytest.mark.daemon

MiB = 1 << 20


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def one_response(answer: bytes) -> tuple[int, bytes]:
    """The status and body of the only response in `answer` (read up to the server's close)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert len(re.findall(rb"HTTP/1\.1 \d{3} ", answer)) == 1, answer
    assert b"connection: close" in head.lower()
    return status_of(answer), body


# -- request framing and head rules ---------------------------------------------------------------


def test_content_length_beside_chunked_is_refused_and_nothing_behind_it_is_parsed(sssrd, conductor):
    smuggled = b"GET /?scenario=echo&tag=smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = exchange(
        sssrd.viewer,
        b"POST /carrier?scenario=echo HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
    )
    assert one_response(answer)[0] == 400  # answered, then closed: the smuggled one never was
    assert sssrd.uninvoked("/carrier")["status"] == 400
    assert conductor.count("smuggled", "invoked") == 0


@pytest.mark.parametrize("host", [b"evil.test/x y", b"a@b", b"x\tz", b"[::1", b"h:80x"])
def test_a_host_that_is_not_host_and_port_gets_400(sssrd, conductor, host):
    answer = exchange(
        sssrd.viewer, b"GET /badhost?scenario=echo HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    )
    status, body = one_response(answer)
    assert status == 400 and b"Host" in body
    assert sssrd.uninvoked("/badhost")["status"] == 400


@pytest.mark.parametrize(
    ("host", "domain"),
    [("[::1]:8080", "[::1]"), ("example.com:80", "example.com"), ("10.0.0.1", "10.0.0.1")],
)
def test_valid_hosts_are_served(sssrd, host, domain):
    answer = exchange(
        sssrd.viewer,
        f"GET /?scenario=echo HTTP/1.1\r\nHost: {host}\r\nconnection: close\r\n\r\n".encode(),
    )
    assert status_of(answer) == 200
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["requestContext"]["domainName"] == domain


@pytest.mark.parametrize("extension", [b";a\x00b", b";\x01", b";x=\x7f"])
def test_control_bytes_in_a_viewer_chunk_extension_get_400(sssrd, conductor, extension):
    answer = exchange(
        sssrd.viewer,
        b"POST /ext?scenario=echo HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"1" + extension + b"\r\nx\r\n0\r\n\r\n",
    )
    assert one_response(answer)[0] == 400
    assert sssrd.uninvoked("/ext")["status"] == 400


def test_a_clean_chunked_viewer_body_with_extensions_and_trailers_is_served(sssrd):
    answer = exchange(
        sssrd.viewer,
        b"POST /?scenario=echo HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n"
        b"connection: close\r\n\r\n3;name=value\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n",
    )
    assert status_of(answer) == 200
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["body"] == "abc"


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n", 400),
    ],
)
def test_every_refused_head_is_answered_once_in_plain_words_and_closes(sssrd, request_head, status):
    follow_up = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # must never be answered
    got, body = one_response(exchange(sssrd.viewer, request_head + follow_up))
    assert got == status
    assert b"bytearray" not in body and b"b'" not in body  # no parser internals


def test_heads_refused_before_the_cycle_write_access_lines(conductor):
    with daemon(conductor, "--head-timeout=0.5") as sssrd:
        exchange(sssrd.viewer, b"GARBAGE\r\n\r\n")
        exchange(sssrd.viewer, b"GET /v2 HTTP/2.0\r\nHost: x\r\n\r\n")
        exchange(sssrd.viewer, b"GET / HTTP/1.1\r\nHost: x\r\nx-big: " + b"a" * 40_000)
        with socket.create_connection(sssrd.viewer, timeout=WAIT) as slow:
            slow.sendall(b"GET /slow HTTP/1.1\r\n")
            assert status_of(slow.recv(1024)) == 408
        lines = {line["status"]: line for line in wait_access_lines(sssrd, 4)}
        assert lines[400]["method"] is None and lines[400]["path"] is None
        assert lines[400]["outcome"] == "bad_request" and lines[400]["client"] == "127.0.0.1"
        assert lines[505]["method"] == "GET" and lines[505]["path"] == "/v2"
        assert lines[431]["outcome"] == "bad_request"
        assert lines[408]["outcome"] == "timeout"
        assert sssrd.metric("sssrd_requests_total", code="4xx", outcome="bad_request") == 2


def wait_access_lines(sssrd, count: int) -> list[dict]:
    sssrd.wait_line(lambda _line: len(access_lines(sssrd)) >= count)
    return access_lines(sssrd)


def access_lines(sssrd) -> list[dict]:
    return [line for line in sssrd.lines if line.get("type") == "access"]


# -- the callback listener answers every head it refuses ------------------------------------------


CALLBACK_ID = b"a" * 32


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (
            b"POST /v1/callback/x HTTP/1.1\r\nHost: x\r\ncontent-length: 1\r\n"
            b"content-length: 2\r\n\r\n",
            400,
        ),
        (b"HEAD /v1/callback/" + CALLBACK_ID + b" HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET /v1/callback/" + CALLBACK_ID + b" HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"POST /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"POST /v1/callback/x HTTP/1.1\r\nHost: x\r\nx-big: " + b"a" * 40_000 + b"\r\n\r\n", 431),
        (
            b"POST /v1/callback/" + CALLBACK_ID + b" HTTP/1.1\r\nHost: x\r\n"
            b"authorization: Bearer \xff\xfe\xfd\r\ncontent-length: 0\r\n\r\n",
            401,
        ),
    ],
)
def test_the_callback_listener_answers_every_head_it_refuses(sssrd, request_head, status):
    got, body = one_response(exchange(sssrd.callback, request_head))
    assert got == status
    if not request_head.startswith(b"HEAD"):
        assert "error" in json.loads(body)
    assert not any("connection failed" in line.get("message", "") for line in sssrd.lines)


def test_a_slow_callback_head_gets_408_and_counts_as_malformed(conductor):
    with daemon(conductor, "--head-timeout=0.3") as sssrd, sssrd.back_to_baseline():
        with socket.create_connection(sssrd.callback, timeout=WAIT) as sock:
            sock.sendall(b"POST /v1/callback/x HTTP/1.1\r\n")
            answer = sock.recv(1024)
        assert status_of(answer) == 408
        assert sssrd.metric("sssrd_callbacks_rejected_total", reason="malformed") == 1


def test_a_callback_with_content_length_beside_chunked_gets_400_and_its_viewer_502(
    sssrd, conductor
):
    with sssrd.back_to_baseline():
        head, body = Viewer(sssrd.viewer).get("/?scenario=conflicting_framing&tag=cl-te")
        assert head.status_code == 502 and b"hello" not in body
        answered = conductor.report("cl-te", "answered")
        assert answered["status"] == 400 and "Transfer-Encoding" in answered["body"]


# -- lingering close ------------------------------------------------------------------------------


def send_then_read(address: tuple[str, int], head: bytes, body_size: int) -> bytes:
    """Send a whole request (head, then its body) before reading: a client that only reads
    its answer after sending loses it to a reset if the server closed with unread input."""
    with socket.create_connection(address, timeout=WAIT) as sock:
        sock.sendall(head)
        block = b"x" * 65536
        for _ in range(body_size // len(block)):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while piece := sock.recv(65536):
            received += piece
        return received


def test_a_refused_callback_still_sending_its_body_reads_the_refusal(sssrd):
    head = (
        b"POST /v1/callback/" + CALLBACK_ID + b" HTTP/1.1\r\nHost: x\r\n"
        b"authorization: Bearer forged\r\ncontent-length: %d\r\n\r\n" % (2 * MiB)
    )
    with sssrd.back_to_baseline():
        for _ in range(3):
            assert status_of(send_then_read(sssrd.callback, head, 2 * MiB)) == 401


def test_a_viewer_refused_413_while_sending_its_body_reads_the_refusal(sssrd):
    head = b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: %d\r\n\r\n" % (2 * MiB)
    with sssrd.back_to_baseline():
        for _ in range(3):
            assert status_of(send_then_read(sssrd.viewer, head, 2 * MiB)) == 413


# -- every callback ends answered or closed -------------------------------------------------------


PIPELINED = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def waiting_viewer(sssrd, conductor, tag: str) -> tuple[socket.socket, str]:
    """A viewer whose request (scenario `late`) is waiting for its callback, and its id."""
    sock = socket.create_connection(sssrd.viewer, timeout=WAIT)
    sock.sendall(f"GET /?scenario=late&tag={tag} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock, conductor.report(tag, "invoked")["request_id"]


def test_viewers_resetting_after_pipelining_get_their_callbacks_refused(sssrd, conductor):
    tags = [f"pipe-early{number}" for number in range(10)]
    with sssrd.back_to_baseline():
        # One at a time: the local invoker may queue a burst behind idle workers.
        viewers, ids = zip(*(waiting_viewer(sssrd, conductor, tag) for tag in tags), strict=True)
        for viewer in viewers:
            viewer.sendall(PIPELINED)  # arrives while the viewer is being watched
            reset(viewer)
        for request_id in ids:
            assert sssrd.access(request_id=request_id)["outcome"] == "viewer_abort"
        for tag in tags:
            conductor.release(f"{tag}:go")
        for tag in tags:
            assert "410" in conductor.report(tag, "rejected")["message"]


def test_viewers_resetting_mid_stream_after_pipelining_close_their_quiet_callbacks(
    sssrd, conductor
):
    tags = [f"pipe-mid{number}" for number in range(10)]
    with sssrd.back_to_baseline():
        viewers = []
        for tag in tags:
            viewer = Viewer(sssrd.viewer)
            viewer.send("GET", f"/?scenario=viewer_leaves&tag={tag}")
            assert viewer.head().status_code == 200
            assert viewer.chunk() == b"first\n"
            viewers.append(viewer)
        for viewer in viewers:
            viewer.sock.sendall(PIPELINED)
            reset(viewer.sock)
        # The Lambdas are quiet (waiting for the test): only the viewer watch can notice.
        wait_for(
            lambda: sssrd.metric("sssrd_connections_open", listener="callback") == 0,
            what="callbacks closed while their Lambdas are quiet",
        )
        for tag in tags:
            conductor.release(f"{tag}:viewer_closed")
        for tag in tags:
            conductor.report(tag, "viewer_gone")
            assert conductor.count(tag, "write_succeeded") == 0


def test_a_viewer_reset_unnoticed_until_its_head_is_sent_still_gets_its_callback_answered(
    sssrd, conductor
):
    """A viewer that pipelines more than the watch holds is not watched; when it resets, the
    first sign is sending the response head (PeerGone): the callback must still be answered."""
    tags = [f"head-reset{number}" for number in range(5)]
    pipelined = b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-pad: " + b"a" * 20_000 + b"\r\n\r\n"
    with sssrd.back_to_baseline():
        for tag in tags:
            viewer, _request_id = waiting_viewer(sssrd, conductor, tag)
            viewer.sendall(pipelined)
            reset(viewer)
            conductor.release(f"{tag}:go")
            assert "410" in conductor.report(tag, "rejected")["message"]


# -- backpressure is not a Lambda fault -----------------------------------------------------------


def test_a_viewer_pausing_longer_than_idle_timeout_is_not_blamed_on_the_lambda(conductor):
    size = 64 * MiB
    with daemon(conductor, "--idle-timeout=0.5") as sssrd:
        viewer = Viewer(sssrd.viewer)
        viewer.send("GET", f"/?scenario=bulk&tag=pause&size={size}&block_after=1")
        head = viewer.head()
        assert head.status_code == 200
        conductor.report("pause", "blocked")  # the viewer took nothing for over 1 s
        conductor.release("pause:resume")
        digest = hashlib.sha256()
        while (piece := viewer.chunk()) is not None:
            digest.update(piece)
        assert digest.digest() == hashlib.sha256(pattern(size)).digest()
        assert conductor.report("pause", "answered")["status"] == 200
        access = sssrd.access(request_id=header(head, b"x-request-id").decode())
        assert access["outcome"] == "ok"
        assert sssrd.metric("sssrd_timeouts_total", kind="idle") == 0


def test_a_viewer_taking_nothing_for_send_timeout_is_cut_and_the_lambda_told(conductor):
    with daemon(conductor, "--send-timeout=0.5") as sssrd, sssrd.back_to_baseline():
        viewer = Viewer(sssrd.viewer)
        viewer.send("GET", f"/?scenario=bulk&tag=stalled&size={256 * MiB}")
        head = viewer.head()
        access = sssrd.access(request_id=header(head, b"x-request-id").decode())
        assert access["outcome"] == "viewer_abort" and access["status"] == 200
        assert conductor.report("stalled", "send_failed")["sent"] < 256 * MiB
        assert sssrd.metric("sssrd_timeouts_total", kind="send") == 1
        assert sssrd.metric("sssrd_aborts_total", side="lambda") == 0
        viewer.close()


# -- reloaded limits reach the next request -------------------------------------------------------


def reload(sssrd, config, text: str) -> None:
    reloads = len(sssrd.serving_lines("reloaded"))
    config.write_text(text)
    sssrd.signal(signal.SIGHUP)
    sssrd.wait_line(  # every worker has reloaded
        lambda _line: len(sssrd.serving_lines("reloaded")) >= reloads + sssrd.processes
    )


def test_a_reloaded_max_head_bytes_applies_to_heads_arriving_in_pieces(conductor, tmp_path):
    config = tmp_path / "sssrd.toml"
    config.write_text("max_head_bytes = 2048\n")
    unfinished = b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-pad: "
    with daemon(conductor, f"--config={config}") as sssrd:
        kept = Viewer(sssrd.viewer)  # open across both reloads: its next request counts
        assert kept.get("/healthz")[0].status_code == 200
        kept.next_cycle()

        reload(sssrd, config, "max_head_bytes = 8192\n")
        kept.sock.sendall(unfinished + b"a" * 4000)  # over the old limit, under the new
        kept.sock.sendall(b"\r\n\r\n")
        assert kept.head().status_code == 200
        assert kept.body() == b"ok\n"

        reload(sssrd, config, "max_head_bytes = 1024\n")
        for sock in (kept.sock, socket.create_connection(sssrd.viewer, timeout=WAIT)):
            sock.sendall(unfinished + b"a" * 2000)  # never finished: refused at once, not 408
            assert status_of(sock.recv(1024)) == 431
            sock.close()
