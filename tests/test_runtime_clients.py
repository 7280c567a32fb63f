"""The helpers and the adapters under the real Lambda runtime interface clients, through sssrd.

sssrd (lambda invoker) -> the fake Invoke API -> sssrd.testing.runtime_api -> a real runtime
client process (`python -m awslambdaric web_apps.handler`) -> the handler, which calls sssrd
back: as in Lambda, the handler runs in the runtime's own process and its main loop, and the
runtime is frozen (SIGSTOP) between invocations and thawed (SIGCONT) for the next one.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import h11
import pytest
import test_web_adapters
from harness import (
    ROOT,
    WAIT,
    Conductor,
    Daemon,
    Viewer,
    daemon,
    header,
    leave_mid_stream,
    stop_process,
)

from sssrd.testing.fake_lambda import FakeLambda
from sssrd.testing.runtime_api import RuntimeAPI

pytestmark = pytest.mark.daemon

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """The runtime process ends if the test process dies, whatever kills it."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class PythonRuntime:
    """`python -m awslambdaric web_apps.handler` against a RuntimeAPI, frozen between runs."""

    def __init__(self, conductor: Conductor) -> None:
        self.api = RuntimeAPI(freeze=self.freeze, thaw=self.thaw).__enter__()
        self.freezes = 0
        environ = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
            "SCENARIO_CONDUCTOR": conductor.address,
            **self.api.env("web_apps.handler"),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "awslambdaric", "web_apps.handler"],
            env=environ,
            cwd=ROOT / "tests",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )

    def freeze(self) -> None:
        self.freezes += 1
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
        stop_process(self.process)
        self.api.__exit__(None, None, None)


@pytest.fixture(scope="module")
def runtime(conductor: Conductor) -> Iterator[PythonRuntime]:
    running = PythonRuntime(conductor)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def web(conductor: Conductor, runtime: PythonRuntime) -> Iterator[Daemon]:
    with (
        FakeLambda(functions={"render": runtime.api.invoke}) as fake,
        daemon(conductor, "--invoker=lambda", "--function=render", **fake.env()) as running,
    ):
        yield running


def test_helper_streams_each_write_at_once_under_awslambdaric(web, conductor, runtime):
    viewer = Viewer(web.viewer)
    viewer.send("GET", "/?scenario=stepped&tag=ric-steps&steps=2")
    conductor.release("ric-steps:step0")
    assert viewer.head().status_code == 200
    assert viewer.chunk() == b"chunk 0\n"
    conductor.wait_waiting("ric-steps:step1")  # the handler is blocked, the chunk already out
    conductor.release("ric-steps:step1")
    assert viewer.chunk() == b"chunk 1\n" and viewer.chunk() is None
    assert conductor.report("ric-steps", "done")["summary"]["bytes"] == 16
    invoked = conductor.report("ric-steps", "invoked")
    assert invoked["pid"] == runtime.process.pid  # ran inside the runtime client's process


def test_helper_sees_the_viewer_leave_under_awslambdaric(web, conductor):
    leave_mid_stream(web, conductor, "ric-leaves")
    assert "410" in conductor.report("ric-leaves", "viewer_gone")["message"]


def test_a_thawed_runtime_reuses_its_kept_callback_connection(web, conductor, runtime):
    for number in range(2):
        assert runtime.api.idle.wait(WAIT)  # frozen in /next, its callback connection kept
        if number == 0:
            before = web.metric("sssrd_connections_total", listener="callback")
        frozen = runtime.freezes
        tag = f"ric-warm-{number}"
        conductor.release(f"{tag}:step0")
        head, body = Viewer(web.viewer).get(f"/?scenario=stepped&tag={tag}&steps=1")
        assert (head.status_code, body) == (200, b"chunk 0\n")
        conductor.report(tag, "done")
        assert runtime.freezes == frozen  # frozen before the render, thawed for it
    # The second render's callback came over the connection the first one left open.
    assert web.metric("sssrd_connections_total", listener="callback") <= before + 1


@pytest.mark.parametrize("app", test_web_adapters.APPS)
def test_web_apps_stream_progressively_under_awslambdaric(web, conductor, app):
    test_web_adapters.test_first_section_reaches_the_viewer_before_the_next_is_loaded(
        web, conductor, f"{app}", tag_prefix="ric-"
    )


@pytest.mark.parametrize("app", test_web_adapters.APPS)
def test_web_apps_stop_when_the_viewer_leaves_under_awslambdaric(web, conductor, app):
    test_web_adapters.test_viewer_leaving_stops_the_apps_generator(
        web, conductor, app, tag_prefix="ric-"
    )


@pytest.mark.parametrize("app", ["asgi-fails", "wsgi-fails"])
def test_app_error_before_its_first_byte_is_502_and_the_runtimes_error(
    web, conductor, runtime, app
):
    tag = f"ric-{app}"
    head, _ = Viewer(web.viewer).get(f"/?app={app}&tag={tag}")
    assert head.status_code == 502
    access = web.access(request_id=header(head, b"x-request-id").decode())
    assert (access["outcome"], access["error_type"]) == ("render_error", "LookupError")
    conductor.report(tag, "raised")
    assert runtime.api.idle.wait(WAIT)  # back in /next: the runtime posted the outcome first
    errors = [done.error for done in runtime.api.answered if done.error is not None]
    assert errors and errors[-1].error_type.endswith("LookupError")  # awslambdaric's /error


@pytest.mark.parametrize("app", ["asgi-fails", "wsgi-fails"])
def test_app_error_after_its_first_byte_cuts_the_stream_under_awslambdaric(web, conductor, app):
    tag = f"ric-{app}-after"
    viewer = Viewer(web.viewer)
    viewer.send("GET", f"/?app={app}&tag={tag}&after=1")
    assert viewer.head().status_code == 200
    assert viewer.chunk() == b"partial"
    conductor.release(f"{tag}:fail")
    with pytest.raises(h11.RemoteProtocolError):
        viewer.chunk()
