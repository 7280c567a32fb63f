"""The request cycle's branches, in-process (tests/inprocess.py): what the viewer gets, what the
Lambda is answered, and the access line, for every way a request ends. No daemon, no subprocess;
the daemon suites keep a few end-to-end proofs of the same paths. Budget: a few seconds.
"""

import asyncio
import dataclasses
import json
import socket

import pytest
from inprocess import (
    Rig,
    StandInRender,
    answered_with,
    callback_head,
    chunked,
    run,
    run_cycle,
)

from sssrd.invokers import InvokeError
from sssrd.invokers.base import RenderEnded
from sssrd.outcomes import Outcome
from sssrd.prelude import PRELUDE_CONTENT_TYPE

GET = b"GET /page HTTP/1.1\r\nhost: example.test\r\n\r\n"
PRELUDE = PRELUDE_CONTENT_TYPE


def prelude(status: int = 200, **headers: str) -> bytes:
    return json.dumps({"statusCode": status, "headers": headers}).encode() + b"\0" * 8


def test_a_rendered_body_reaches_the_viewer_and_the_lambda_is_answered_delivered():
    cycle = run_cycle(GET, answered_with(b"hello"))
    assert cycle.response.status == 200 and cycle.response.body == b"hello"
    assert cycle.answer.status == 200 and json.loads(cycle.answer.body)["bytes"] == 5
    assert (cycle.record["status"], cycle.record["outcome"]) == (200, "ok")


def test_a_chunked_prelude_callback_sets_the_viewers_status_and_headers():
    def callback(event):
        return callback_head(event, PRELUDE) + chunked(prelude(201, **{"x-a": "1"}), b"body")

    cycle = run_cycle(GET, callback)
    assert cycle.response.status == 201 and cycle.response.headers[b"x-a"] == b"1"
    assert cycle.response.body == b"body" and cycle.response.complete


@pytest.mark.parametrize(
    ("status", "headers", "body"), [(204, b"", b""), (304, b"", b""), (200, b"", b"dropped")]
)
def test_a_response_without_a_body_drops_the_callbacks_body_and_answers_delivered(
    status, headers, body
):
    request = GET if status != 200 else b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n"
    method = b"GET" if status != 200 else b"HEAD"
    headers = b"x-status-code: %d\r\n" % status
    cycle = run_cycle(request, answered_with(body, headers=headers), method=method)
    assert cycle.response.status == status and cycle.response.body == b""
    assert cycle.answer.status == 200 and cycle.record["outcome"] == "ok"


def test_a_full_registry_sheds_the_request_with_503_and_retry_after():
    cycle = run_cycle(GET, answered_with(b"x"), max_pending=0)
    assert cycle.response.status == 503 and cycle.response.headers[b"retry-after"] == b"1"
    assert cycle.record["outcome"] == "shed" and cycle.answer is None


@pytest.mark.parametrize(
    ("failure", "status", "outcome", "retry"),
    [
        (
            InvokeError(429, Outcome.INVOKE_THROTTLED, "busy", retry_after=2),
            429,
            "invoke_throttled",
            b"2",
        ),
        (
            InvokeError(502, Outcome.INVOKE_FAILED, "failed", detail="KMS"),
            502,
            "invoke_failed",
            None,
        ),
    ],
)
def test_an_invoke_that_fails_answers_the_viewer_at_once(failure, status, outcome, retry):
    cycle = run_cycle(GET, failure=failure)
    assert cycle.response.status == status
    assert cycle.response.headers.get(b"retry-after") == retry
    assert cycle.record["outcome"] == outcome


def test_a_render_that_never_calls_back_is_a_504_at_the_callback_deadline():
    cycle = run_cycle(GET, settings={"callback_timeout": 0.05})
    assert cycle.response.status == 504 and cycle.record["outcome"] == "timeout"
    assert cycle.rig.sample("sssrd_timeouts_total", kind="deadline") == 1


def test_a_malformed_prelude_is_a_502_and_the_lambda_is_told_400():
    cycle = run_cycle(GET, answered_with(b"{not json" + b"\0" * 8, PRELUDE))
    assert cycle.response.status == 502 and cycle.record["outcome"] == "bad_callback"
    assert cycle.answer.status == 400


def test_a_prelude_that_never_ends_is_a_502():
    cycle = run_cycle(GET, answered_with(b'{"statusCode": 200}', PRELUDE))
    assert cycle.response.status == 502 and cycle.answer.status == 400


def test_a_misframed_callback_body_before_any_viewer_byte_is_a_502():
    cycle = run_cycle(GET, lambda event: callback_head(event) + b"zz\r\nhello\r\n0\r\n\r\n")
    assert cycle.response.status == 502 and cycle.record["outcome"] == "bad_callback"


def test_a_refused_callback_head_gives_its_viewer_502_and_the_lambda_its_status():
    def callback(event):
        head = callback_head(event, length=1)
        return (
            head.replace(
                b"content-length: 1\r\n", b"content-length: 1\r\ntransfer-encoding: chunked\r\n"
            )
            + b"x"
        )

    cycle = run_cycle(GET, callback)
    assert cycle.response.status == 502 and cycle.answer.status == 400
    # No body was relayed: no stream was started, so none is measured.
    assert cycle.rig.sample("sssrd_stream_duration_seconds_count") == 0


def test_an_error_report_is_a_502_for_the_viewer_and_reported_to_the_lambda():
    report = json.dumps({"errorType": "ValueError", "errorMessage": "secret"}).encode()
    cycle = run_cycle(GET, answered_with(report, b"application/vnd.sssrd.render-error+json"))
    assert cycle.response.status == 502 and b"ValueError" not in cycle.response.body
    assert json.loads(cycle.answer.body)["reported"] is True
    assert (cycle.record["outcome"], cycle.record["error_type"]) == ("render_error", "ValueError")


def test_a_malformed_error_report_still_gives_the_viewer_502():
    cycle = run_cycle(GET, answered_with(b"[]", b"application/vnd.sssrd.render-error+json"))
    assert cycle.response.status == 502 and cycle.answer.status == 400
    assert cycle.rig.sample("sssrd_stream_duration_seconds_count") == 0


@pytest.mark.parametrize(
    ("request_bytes", "status", "outcome"),
    [
        (b"CONNECT x:443 HTTP/1.1\r\nhost: x\r\n\r\n", 405, "bad_request"),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999\r\n\r\n", 413, "too_large"),
        (
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            400,
            "bad_request",
        ),
        (b"GET / HTTP/1.1\r\nhost: x\r\nx: \x01\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/2.0\r\nhost: x\r\n\r\n", 505, "bad_request"),
        (b"GET * HTTP/1.1\r\nhost: x\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", 200, "health"),
    ],
    ids=[
        "connect",
        "body-too-large",
        "bad-chunked-body",
        "control-byte",
        "http2",
        "bad-target",
        "health",
    ],
)
def test_requests_sssrd_answers_itself(request_bytes, status, outcome):
    cycle = run_cycle(request_bytes, answered_with(b"never"))
    assert cycle.response.status == status and cycle.record["outcome"] == outcome
    assert cycle.answer is None


def test_a_body_larger_than_max_body_bytes_is_a_413_as_it_arrives():
    body = chunked(b"x" * 2048)
    request = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" + body
    cycle = run_cycle(request, answered_with(b"never"), settings={"max_body_bytes": 1024})
    assert cycle.response.status == 413 and cycle.record["outcome"] == "too_large"


def test_a_request_body_is_read_and_handed_to_the_render():
    request = b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\nabcd"
    cycle = run_cycle(request, answered_with(b"ok"))
    assert cycle.response.status == 200
    assert cycle.rig.render.events[0]["body"] in ("abcd", "YWJjZA==")


def test_an_event_larger_than_max_event_bytes_is_a_413():
    request = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2000\r\n\r\n" + b"x" * 2000
    limits = {"max_event_bytes": 2048, "max_body_bytes": 2048}
    cycle = run_cycle(request, answered_with(b"never"), settings=limits)
    assert cycle.response.status == 413 and cycle.record["outcome"] == "too_large"


def test_a_slow_body_is_a_408_and_a_slow_head_too():
    request = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc"
    cycle = run_cycle(request, answered_with(b"never"), settings={"head_timeout": 0.05})
    assert cycle.response.status == 408 and cycle.record["outcome"] == "timeout"
    cycle = run_cycle(b"GET / HTTP/1.1\r\n", settings={"head_timeout": 0.05})
    assert cycle.response.status == 408 and cycle.record["method"] is None


def test_a_draining_daemons_health_is_503():
    async def scenario():
        async with Rig(StandInRender()) as rig:
            rig.state.draining = True
            await rig.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            response = await rig.response()
        assert response.status == 503 and response.headers[b"connection"] == b"close"

    run(scenario)


def test_compat_mode_sends_the_seed_event_and_no_request_id():
    def callback(event):
        body = b"compat"
        return b"POST / HTTP/1.1\r\nhost: x\r\nx-request-id: %s\r\ncontent-length: 6\r\n\r\n%s" % (
            event["requestId"].encode(),
            body,
        )

    request = (
        b"GET http://example.test/p?q=1 HTTP/1.1\r\nhost: other\r\nx-forwarded-proto: https\r\n\r\n"
    )
    cycle = run_cycle(request, callback, settings={"compat": "lambda-streaming"})
    assert cycle.response.status == 200 and cycle.response.body == b"compat"
    assert cycle.rig.render.events[0]["url"] == "https://example.test/p?q=1"
    assert b"x-request-id" not in cycle.response.headers


# -- ends in the middle: the viewer leaves, the Lambda breaks off ---------------------------


def test_a_viewer_gone_mid_stream_gets_the_lambda_a_410_and_a_close():
    async def scenario():
        sent = asyncio.Event()

        def callback(event):
            sent.set()
            return callback_head(event) + b"5\r\nhello\r\n"

        async with Rig(StandInRender(callback)) as rig:
            await rig.send(GET)
            await sent.wait()
            received = await asyncio.get_running_loop().sock_recv(rig.viewer, 65_536)
            assert received.startswith(b"HTTP/1.1 200 ")
            rig.viewer.close()
            answer = await rig.answer()
            await rig.cycles_done()
        assert answer.status == 410 and not answer.headers.get(b"keep-alive")
        assert [line["outcome"] for line in rig.access] == ["viewer_abort"]
        assert rig.sample("sssrd_aborts_total", side="viewer") == 1

    run(scenario)


def test_a_lambda_breaking_off_mid_body_cuts_the_viewers_response():
    async def scenario():
        render = StandInRender(lambda event: callback_head(event) + b"5\r\nhello\r\n")
        async with Rig(render) as rig:
            await rig.send(GET)
            received = await asyncio.get_running_loop().sock_recv(rig.viewer, 65_536)
            render.lambda_socks[0].shutdown(socket.SHUT_WR)
            rest = b""
            while data := await asyncio.get_running_loop().sock_recv(rig.viewer, 65_536):
                rest += data
            await rig.cycles_done()
        assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"5\r\nhello\r\n")
        assert rest == b""  # closed without the final chunk: known incomplete
        assert [line["outcome"] for line in rig.access] == ["lambda_abort"]
        assert rig.sample("sssrd_aborts_total", side="lambda") == 1

    run(scenario)


def test_a_lambda_breaking_off_before_any_viewer_byte_is_a_502():
    async def scenario():
        render = StandInRender(lambda event: callback_head(event, PRELUDE) + b"5\r\n{")
        async with Rig(render) as rig:
            await rig.send(GET)
            while not render.lambda_socks:
                await asyncio.sleep(0.001)
            render.lambda_socks[0].shutdown(socket.SHUT_WR)
            response = await rig.response()
            await rig.cycles_done()
        assert response.status == 502
        assert [line["outcome"] for line in rig.access] == ["lambda_abort"]

    run(scenario)


def test_a_lambda_silent_past_idle_timeout_is_cut_after_its_head():
    settings = {"idle_timeout": 0.05}
    cycle = run_cycle(GET, lambda event: callback_head(event, length=10), settings=settings)
    assert cycle.response.status == 200 and not cycle.response.complete
    assert cycle.record["outcome"] == "lambda_abort"
    assert cycle.rig.sample("sssrd_timeouts_total", kind="idle") == 1


def test_a_second_callback_for_a_claimed_request_is_refused():
    async def scenario():
        render = StandInRender(answered_with(b"once"))
        async with Rig(render) as rig:
            await rig.send(GET)
            response = await rig.response()
            await rig.cycles_done()
            event = render.events[0]
            await render.call_back(callback_head(event, length=1) + b"x")
            again = await rig.answer(1)
            await render.call_back(callback_head(event, length=1, token="0" * 64) + b"x")
            forged = await rig.answer(2)
            await render.call_back(callback_head(event, length=1, method=b"GET") + b"x")
            wrong_method = await rig.answer(3)
        assert response.body == b"once"
        assert again.status in (409, 410) and forged.status == 401 and wrong_method.status == 405

    run(scenario)


# -- RequestResponse: the invoke's answer is the render's end -------------------------------


@pytest.mark.parametrize(
    ("ended", "status", "outcome"),
    [
        (RenderEnded(error_type="TypeError"), 502, "render_error"),
        (RenderEnded(), 502, "render_error"),
        (RenderEnded(timed_out=True), 504, "timeout"),
    ],
)
def test_a_render_that_ends_before_calling_back_is_answered_at_once(ended, status, outcome):
    settings = {"invocation_type": "RequestResponse"}
    cycle = run_cycle(GET, ended=ended, settings=settings)
    assert cycle.response.status == status and cycle.record["outcome"] == outcome


def test_a_render_that_ends_with_its_callback_open_cuts_the_stream():
    async def scenario():
        render = StandInRender(
            lambda event: callback_head(event) + b"5\r\nhello\r\n", ended=RenderEnded()
        )
        render.release.clear()
        async with Rig(render, {"invocation_type": "RequestResponse"}) as rig:
            await rig.send(GET)
            while not render.lambda_socks:
                await asyncio.sleep(0.001)
            received = await asyncio.get_running_loop().sock_recv(rig.viewer, 65_536)
            render.release.set()
            await rig.cycles_done()
        assert received.startswith(b"HTTP/1.1 200 ")
        assert [line["outcome"] for line in rig.access] == ["lambda_abort"]

    run(scenario)


def test_a_reload_mid_request_leaves_the_request_its_settings():
    async def scenario():
        def callback(event):
            # SIGHUP while the render runs: a far smaller prelude limit (the floor).
            rig.state.settings = dataclasses.replace(rig.state.settings, max_prelude_bytes=1024)
            return callback_head(event, PRELUDE) + chunked(prelude(200, x="y" * 2000), b"body")

        async with Rig(StandInRender(callback)) as rig:
            await rig.send(GET)
            response = await rig.response()
            await rig.cycles_done()
        assert response.status == 200 and response.body == b"body"

    run(scenario)


def test_a_lambda_idling_after_a_whole_head_response_is_its_abort_not_the_viewers():
    request = b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n"
    settings = {"idle_timeout": 0.05}
    cycle = run_cycle(
        request,
        lambda event: callback_head(event, length=10) + b"abc",
        settings=settings,
        method=b"HEAD",
    )
    assert cycle.response.status == 200 and cycle.response.complete
    assert cycle.record["outcome"] == "ok"
    assert cycle.rig.sample("sssrd_aborts_total", side="lambda") == 1
    assert cycle.rig.sample("sssrd_timeouts_total", kind="idle") == 1
