"""invocation_type = "RequestResponse" under the real runtime interface clients: each way a
render fails reaches the viewer through the runtime's own report, as in Lambda.

sssrd (lean invoker, RequestResponse) -> the fake Invoke API -> sssrd.testing.runtime_api -> a
real runtime client (`python -m awslambdaric scenarios.handler`; aws-lambda-ric on Node 20 with
node/test/ric/handler.js). The runtime's POST /error, /init/error, the function's timeout and
the runtime process's exit become the synchronous invoke's answer, exactly as Lambda gives it.
The failing handlers here are raw: they neither send the helpers' error report nor close their
callback, so only that answer can tell sssrd. The callback deadline is 20 s, so an answer that
came from it would fail these tests' bounded waits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import h11
import pytest
from harness import Conductor, Daemon, Viewer, header, wait_for
from test_request_response import SYNCHRONOUS
from test_runtime_clients import NodeRuntime, PythonRuntime, serving

pytestmark = pytest.mark.daemon

FUNCTION_TIMEOUT_S = 2.0
CALLBACK_TIMEOUT_S = 20.0  # SYNCHRONOUS's --callback-timeout
LONG_BEFORE_THE_CALLBACK_TIMEOUT_S = CALLBACK_TIMEOUT_S / 4


@pytest.fixture(scope="module")
def python_runtime(conductor: Conductor) -> Iterator[tuple[Daemon, PythonRuntime]]:
    runtime = PythonRuntime(conductor, "scenarios.handler", FUNCTION_TIMEOUT_S)
    with serving(conductor, runtime, *SYNCHRONOUS) as running:
        yield running, runtime


@pytest.fixture(scope="module")
def node_runtime(conductor: Conductor) -> Iterator[tuple[Daemon, NodeRuntime]]:
    runtime = NodeRuntime(conductor, "handler.handler", timeout_s=FUNCTION_TIMEOUT_S)
    with serving(conductor, runtime, *SYNCHRONOUS) as running:
        yield running, runtime


def assert_failed(sssrd: Daemon, head: h11.Response, body: bytes, outcome: str, kind: str) -> None:
    """The access line names the runtime's error type; the viewer's body never does, nor the
    handler's message."""
    access = sssrd.access(header(head, b"x-request-id").decode())
    assert (access["outcome"], access["error_type"]) == (outcome, kind)
    assert kind.encode() not in body and b"secret" not in body and b"hunter2" not in body


def assert_raised_before_calling_back(sssrd: Daemon, runtime: PythonRuntime, target: str) -> str:
    """502 long before the callback deadline, counted from the runtime's POST /error; returns
    the access line's error type."""
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", target)
    head = viewer.head()
    answered = time.monotonic()
    assert head.status_code == 502
    reported = runtime.api.answered[-1]
    assert reported.error is not None  # the runtime's /error, not a response
    assert 0 <= answered - reported.settled_at < LONG_BEFORE_THE_CALLBACK_TIMEOUT_S
    access = sssrd.access(header(head, b"x-request-id").decode())
    assert access["outcome"] == "render_error"
    assert b"secret" not in viewer.body()
    return str(access["error_type"])


def assert_raised_mid_stream(
    sssrd: Daemon, conductor: Conductor, target: str, tag: str, kind: str
) -> None:
    """The first chunk arrives; once the handler raises (its callback left open) the viewer's
    response is closed without its final chunk, and sssrd closes the callback."""
    before = sssrd.connections_open()["callback"]
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", target)
    head = viewer.head()
    assert head.status_code == 200 and viewer.chunk() == b"first\n"
    conductor.release(f"{tag}:raise")
    with pytest.raises(h11.RemoteProtocolError):  # closed without the final chunk
        viewer.chunk()
    access = sssrd.access(header(head, b"x-request-id").decode())
    assert (access["outcome"], access["error_type"]) == ("lambda_abort", kind)  # the invoke's
    wait_for(lambda: sssrd.connections_open()["callback"] <= before, what="the callback closed")


# -- Python: awslambdaric -------------------------------------------------------------------------


def test_raw_python_handler_raising_before_calling_back_is_502_at_its_runtimes_error(
    python_runtime,
):
    sssrd, runtime = python_runtime
    target = "/?scenario=raises_early&tag=rr-py-raises"
    assert assert_raised_before_calling_back(sssrd, runtime, target) == "RenderFailed"


def test_raw_python_handler_raising_mid_stream_is_cut_under_awslambdaric(python_runtime, conductor):
    sssrd, _ = python_runtime
    tag = "rr-py-mid"
    target = f"/?scenario=raises_mid_stream&tag={tag}"
    assert_raised_mid_stream(sssrd, conductor, target, tag, "RenderFailed")


def test_python_handler_over_the_function_timeout_is_504_under_awslambdaric(
    python_runtime, conductor
):
    sssrd, _ = python_runtime
    tag = "rr-py-timeout"
    started = time.monotonic()
    head, body = Viewer(sssrd.viewer).get(f"/?scenario=late&tag={tag}")
    waited = time.monotonic() - started
    assert head.status_code == 504
    assert FUNCTION_TIMEOUT_S <= waited < LONG_BEFORE_THE_CALLBACK_TIMEOUT_S
    assert_failed(sssrd, head, body, "timeout", "Sandbox.Timedout")
    conductor.release(f"{tag}:go")  # the timed-out handler's late callback is refused
    assert "410" in conductor.report(tag, "rejected")["message"]


def test_good_python_render_streams_as_with_event_invokes_under_awslambdaric(
    python_runtime, conductor
):
    sssrd, runtime = python_runtime
    tag = "rr-py-good"
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", f"/?scenario=stepped&tag={tag}&steps=2")
    conductor.release(f"{tag}:step0")
    head = viewer.head()
    assert head.status_code == 200 and viewer.chunk() == b"chunk 0\n"
    conductor.wait_waiting(f"{tag}:step1")  # the handler is blocked, the chunk already out
    conductor.release(f"{tag}:step1")
    assert viewer.chunk() == b"chunk 1\n" and viewer.chunk() is None
    assert sssrd.access(header(head, b"x-request-id").decode())["outcome"] == "ok"
    assert conductor.report(tag, "done")["summary"]["bytes"] == 16
    assert runtime.api.idle.wait(FUNCTION_TIMEOUT_S)  # the runtime's /response was answered


def test_python_handler_module_failing_to_import_is_502_under_awslambdaric(conductor):
    runtime = PythonRuntime(conductor, "no_such_render_module.handler", FUNCTION_TIMEOUT_S)
    with serving(conductor, runtime, *SYNCHRONOUS) as sssrd:
        head, body = Viewer(sssrd.viewer).get("/?scenario=echo&tag=rr-py-init")
        assert head.status_code == 502
        assert_failed(sssrd, head, body, "render_error", "Runtime.ImportModuleError")


def test_python_runtime_killed_mid_invoke_is_502_under_awslambdaric(conductor):
    runtime = PythonRuntime(conductor, "scenarios.handler", FUNCTION_TIMEOUT_S)
    with serving(conductor, runtime, *SYNCHRONOUS) as sssrd:
        head, body = Viewer(sssrd.viewer).get("/?scenario=killed&tag=rr-py-killed")
        assert head.status_code == 502
        assert_failed(sssrd, head, body, "render_error", "Runtime.ExitError")


# -- Node: aws-lambda-ric -------------------------------------------------------------------------


def test_raw_node_handler_raising_before_calling_back_is_502_at_its_runtimes_error(node_runtime):
    sssrd, runtime = node_runtime
    target = "/?scenario=raw_raises_early&tag=rr-node-raises"
    assert assert_raised_before_calling_back(sssrd, runtime, target) == "TypeError"


def test_raw_node_handler_raising_mid_stream_is_cut_under_aws_lambda_ric(node_runtime, conductor):
    sssrd, _ = node_runtime
    tag = "rr-node-mid"
    target = f"/?scenario=raw_raises_mid_stream&tag={tag}"
    assert_raised_mid_stream(sssrd, conductor, target, tag, "TypeError")
