"""invocation_type = "RequestResponse": the invoke's answer (the render's end) reaches sssrd, so a
render that raises, times out or returns without calling back is answered at once, one that
raises mid-stream is cut at once, and a good one streams exactly as with Event invokes.

The daemon runs with the lean invoker against a FakeLambda in this process (real HTTP, SigV4),
which runs the scenario handlers and answers as Lambda does; the callback deadline is long
(20 s), so an answer that came from it would fail these tests' bounded waits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import h11
import pytest
from harness import Viewer, daemon, header
from scenarios import pattern

from sssrd.testing.fake_lambda import FakeLambda

pytestmark = pytest.mark.daemon

SYNCHRONOUS = ("--invocation-type=RequestResponse", "--callback-timeout=20", "--idle-timeout=20")


@pytest.fixture(scope="module")
def fake(conductor) -> Iterator[FakeLambda]:
    os.environ["SCENARIO_CONDUCTOR"] = conductor.address  # the handlers run in this process
    with FakeLambda(functions={"render": "scenarios:handler"}, timeout_s=1.0) as running:
        yield running
    del os.environ["SCENARIO_CONDUCTOR"]


@pytest.fixture(scope="module")
def sssrd(conductor, fake):
    # A 4 MiB body fits max_event_bytes "auto" only as it follows RequestResponse (6 MB).
    options = ("--invoker=lambda", "--function=render", "--max-body-bytes=4194304", *SYNCHRONOUS)
    with daemon(conductor, *options, **fake.env()) as running:
        yield running


def test_a_render_that_raises_before_calling_back_gets_502_at_once(sssrd, fake, conductor):
    head, body = Viewer(sssrd.viewer).get("/?scenario=raises_early&tag=sync-raises")
    assert head.status_code == 502
    assert b"RenderFailed" not in body and b"hunter2" not in body
    access = sssrd.access(header(head, b"x-request-id").decode())
    assert access["outcome"] == "render_error" and access["error_type"] == "RenderFailed"
    assert "hunter2" not in str(sssrd.lines)
    assert fake.invocations[-1].invocation_type == "RequestResponse"
    assert sssrd.metric("sssrd_render_errors_total", source="invoke") >= 1


def test_a_render_that_returns_without_calling_back_gets_502_at_once(sssrd):
    head, _ = Viewer(sssrd.viewer).get("/?scenario=returns_early&tag=sync-returns")
    assert head.status_code == 502
    access = sssrd.access(header(head, b"x-request-id").decode())
    assert access["outcome"] == "render_error"
    assert access["error"] == "the render returned without calling back"


def test_a_render_that_times_out_gets_504_at_once(sssrd, conductor):
    """The fake's function timeout is 1 s; the callback deadline 20 s."""
    tag = "sync-timeout"
    head, _ = Viewer(sssrd.viewer).get(f"/?scenario=late&tag={tag}")
    assert head.status_code == 504
    access = sssrd.access(header(head, b"x-request-id").decode())
    assert access["outcome"] == "timeout" and access["error_type"] == "Sandbox.Timedout"
    conductor.release(f"{tag}:go")  # the timed-out handler's late callback is refused
    assert "410" in conductor.report(tag, "rejected")["message"]


def test_a_render_that_raises_mid_stream_is_cut_at_once(sssrd, conductor):
    tag = "sync-mid-stream"
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", f"/?scenario=raises_mid_stream&tag={tag}")
    head = viewer.head()
    assert head.status_code == 200
    assert viewer.chunk() == b"first\n"
    conductor.release(f"{tag}:raise")
    with pytest.raises(h11.RemoteProtocolError):  # closed without the final chunk
        viewer.chunk()
    access = sssrd.access(header(head, b"x-request-id").decode())
    assert access["outcome"] == "lambda_abort" and access["error_type"] == "RenderFailed"


@pytest.mark.parametrize("final", [True, False], ids=["whole", "unterminated"])
def test_a_render_that_returns_right_after_sending_loses_none_of_its_bytes(sssrd, fake, final):
    """A client that returns after its last chunk without reading sssrd's answer: its render's
    end can reach sssrd while much of the body is still in the callback socket and the relay
    waits for the viewer (which here reads only once the render has returned). All of it
    reaches the viewer: whole when the final chunk was sent, else cut after the last byte.
    (Whether the end lands before the viewer reads is up to the threads: five tries.)"""
    size = 512 * 1024  # fits the sockets' buffers: the render returns without the viewer
    target = f"/?scenario=returns_after_sending&size={size}&chunk=65536"
    for attempt in range(5):
        viewer = Viewer(sssrd.viewer)
        runs = fake.handler_runs
        tag = f"sync-sent-{final}-{attempt}"
        viewer.send("GET", f"{target}&tag={tag}&final={'yes' if final else 'no'}")
        fake.wait_for_handler_runs(runs + 1)
        head = viewer.head()
        assert head.status_code == 200
        pieces = []
        try:
            while (piece := viewer.chunk()) is not None:
                pieces.append(piece)
        except h11.RemoteProtocolError:  # closed without the final chunk
            assert not final, "a whole body was cut"
        else:
            assert final, "an unterminated body was delivered as whole"
        viewer.close()
        assert b"".join(pieces) == pattern(size)
        access = sssrd.access(header(head, b"x-request-id").decode())
        assert access["outcome"] == ("ok" if final else "lambda_abort")


def test_a_good_render_streams_as_with_event_invokes(sssrd, conductor):
    tag = "sync-good"
    viewer = Viewer(sssrd.viewer)
    for step in range(2):
        conductor.release(f"{tag}:step{step}")
    viewer.send("GET", f"/?scenario=stepped&tag={tag}&steps=2")
    assert viewer.head().status_code == 200
    assert viewer.body() == b"chunk 0\nchunk 1\n"
    assert conductor.report(tag, "done")["summary"]["bytes"] == len(b"chunk 0\nchunk 1\n")
    # The render returned after its stream was delivered: nothing changes for the viewer, and
    # the next request on the connection is served as usual.
    viewer.next_cycle()
    head, body = viewer.get(f"/?scenario=echo&tag={tag}-again")
    assert head.status_code == 200 and b"rawPath" in body


def test_a_throttled_invoke_gets_503_with_retry_after(sssrd, fake):
    fake.set_behaviour("throttle", times=1)
    head, _ = Viewer(sssrd.viewer).get("/?scenario=echo&tag=sync-throttled")
    assert head.status_code == 503 and header(head, b"retry-after") == b"1"
    assert sssrd.access(header(head, b"x-request-id").decode())["outcome"] == "invoke_throttled"


def test_event_payloads_over_one_megabyte_reach_the_render(sssrd):
    body = b"x" * (3 * 1024 * 1024)
    head, echoed = Viewer(sssrd.viewer).get(
        "/?scenario=echo&tag=sync-large", headers=[("content-type", "text/plain")], body=body
    )
    assert head.status_code == 200 and len(echoed) > len(body)


def test_an_unanswered_invoke_is_given_up_after_the_function_timeout_and_never_retried(
    conductor, fake
):
    """The render may be running: a second invoke would run it twice (Event retries it)."""
    fake.set_behaviour("hang")
    options = ("--invoker=lambda", "--function=render", "--invoke-retries=1", *SYNCHRONOUS)
    timeouts = ("--function-timeout=0.5", "--invoke-timeout=0.5")
    try:
        with daemon(conductor, *options, *timeouts, **fake.env()) as hanging:
            before = fake.invocation_count
            head, _ = Viewer(hanging.viewer).get("/?scenario=echo&tag=sync-hang")
            assert head.status_code == 502
            access = hanging.access(header(head, b"x-request-id").decode())
            assert access["outcome"] == "invoke_failed" and "1 s" in access["error"]
            assert fake.invocation_count == before + 1
    finally:
        fake.reset_behaviour()


def test_a_request_that_ends_undelivered_frees_its_invoke_connection(conductor, fake):
    """The pool holds max_pending connections: a render whose request ended without its stream
    (here a 504 at the callback deadline) must give its connection back at once, not hold it
    for the function's timeout while later requests wait behind it."""
    options = ("--invoker=lambda", "--function=render", *SYNCHRONOUS, "--max-pending=1")
    deadlines = ("--callback-timeout=0.5", "--function-timeout=60")
    fake.set_behaviour("hang")
    try:
        with daemon(conductor, *options, *deadlines, **fake.env()) as one_slot:
            head, _ = Viewer(one_slot.viewer).get("/?scenario=echo&tag=sync-slot-a")
            assert head.status_code == 504
            fake.reset_behaviour()
            head, body = Viewer(one_slot.viewer).get("/?scenario=echo&tag=sync-slot-b")
            assert head.status_code == 200 and b"rawPath" in body
    finally:
        fake.reset_behaviour()


def test_the_local_invoker_answers_a_raising_render_at_once(conductor):
    """`sssrd dev` and the tests' local invoker speak RequestResponse too."""
    with daemon(conductor, *SYNCHRONOUS) as local:
        head, _ = Viewer(local.viewer).get("/?scenario=raises_early&tag=local-raises")
        assert head.status_code == 502
        access = local.access(header(head, b"x-request-id").decode())
        assert access["outcome"] == "render_error" and access["error_type"] == "RenderFailed"
