"""The helpers and the adapters under the real Lambda runtime interface clients, through sssrd.

sssrd (lambda invoker) -> the fake Invoke API -> sssrd.testing.runtime_api -> a real runtime
client process (`python -m awslambdaric web_apps.handler`; aws-lambda-ric on Node 20 with
node/test/ric/handler.js, or with examples/react-ssr's built zip) -> the handler, which calls
sssrd back. As in Lambda, the handler runs in the runtime's own process and main loop, and the
runtime is frozen (SIGSTOP) while it waits for an event and thawed (SIGCONT) when the next one
arrives.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
from node_lambda import HELD_FEATURED, HeldData
from test_web_adapters import assert_cut_after_first_piece as cut_after_first_piece

from sssrd.testing.fake_lambda import FakeLambda
from sssrd.testing.runtime_api import RuntimeAPI

pytestmark = pytest.mark.daemon

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """The runtime process ends if the test process dies, whatever kills it."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class PythonRuntime:
    """`python -m awslambdaric <handler>` against a RuntimeAPI, frozen between runs; the API
    fails its invokes with Runtime.ExitError once the process exits."""

    def __init__(
        self, conductor: Conductor, handler: str = "web_apps.handler", timeout_s: float = 30.0
    ) -> None:
        environ = {
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
            "SCENARIO_CONDUCTOR": conductor.address,
        }
        command = [sys.executable, "-m", "awslambdaric", handler]
        self.start(command, ROOT / "tests", handler, timeout_s, environ)

    def start(
        self, command: list[str], cwd: Path, handler: str, timeout_s: float, env: dict[str, str]
    ) -> None:
        self.api = RuntimeAPI(timeout_s=timeout_s, freeze=self.freeze, thaw=self.thaw).__enter__()
        self.freezes = 0
        self.process = subprocess.Popen(
            command,
            env={"PATH": os.environ["PATH"], **self.api.env(handler), **env},
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        self.api.watch(self.process)

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
        assert runtime.api.idle.wait(WAIT)  # back in /next after the render...
        assert runtime.freezes == frozen + 1  # ...and frozen once: thawed for it, frozen after
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
    target = f"/?app={app}&tag={tag}&after=1"
    cut_after_first_piece(web, conductor, target, (200, b"partial"), f"{tag}:fail")


# -- Node: the helper and the shim under aws-lambda-ric ------------------------------------------

RIC_SOURCE = ROOT / "tests" / "aws-lambda-ric"  # package.json + package-lock.json pinning it
RIC_CACHE = Path("/var/cache/sssrd-test")
RIC_HANDLERS = ROOT / "node" / "test" / "ric"


def built_node_ric() -> Path:
    """aws-lambda-ric's entry script, built once per lock file under /var/cache/sssrd-test
    (its native part takes minutes to compile; `npm ci` from the cache dir's copy)."""
    lock = (RIC_SOURCE / "package-lock.json").read_bytes()
    cached = RIC_CACHE / f"aws-lambda-ric-{hashlib.sha256(lock).hexdigest()[:16]}"
    entry = cached / "node_modules" / "aws-lambda-ric" / "bin" / "index.mjs"
    if not entry.exists():
        RIC_CACHE.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix="aws-lambda-ric-", dir=RIC_CACHE))
        try:
            for name in ("package.json", "package-lock.json"):
                shutil.copy(RIC_SOURCE / name, building / name)
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=building,
                check=True,
                capture_output=True,
            )
            building.rename(cached)  # atomic: a build killed halfway is never taken for done
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return entry


class NodeRuntime(PythonRuntime):
    """aws-lambda-ric on Node 20 running a handler of `task_root` (as a deployed zip's
    contents: node/test/ric/ by default), frozen between runs."""

    def __init__(
        self,
        conductor: Conductor,
        handler: str,
        task_root: Path = RIC_HANDLERS,
        timeout_s: float = 30.0,
        **env: str,
    ) -> None:
        environ = {
            "SCENARIO_CONDUCTOR": conductor.address,
            "LAMBDA_TASK_ROOT": str(task_root),
            **env,
        }
        command = ["node", str(built_node_ric()), handler]
        self.start(command, task_root, handler, timeout_s, environ)


@contextlib.contextmanager
def serving(conductor: Conductor, runtime: PythonRuntime, *options: str) -> Iterator[Daemon]:
    """sssrd (with `options`) invoking `runtime` through the fake Invoke API, whose function
    timeout is the runtime's; the runtime is stopped after."""
    try:
        with (
            FakeLambda(
                functions={"render": runtime.api.invoke}, timeout_s=runtime.api.timeout_s
            ) as fake,
            daemon(
                conductor, "--invoker=lambda", "--function=render", *options, **fake.env()
            ) as running,
        ):
            yield running
    finally:
        runtime.close()


@contextlib.contextmanager
def node_daemon(
    conductor: Conductor, handler: str, task_root: Path = RIC_HANDLERS, **env: str
) -> Iterator[tuple[Daemon, NodeRuntime]]:
    runtime = NodeRuntime(conductor, handler, task_root, **env)
    with serving(conductor, runtime) as running:
        yield running, runtime


@pytest.fixture(scope="module")
def node_helper(conductor: Conductor) -> Iterator[tuple[Daemon, NodeRuntime]]:
    with node_daemon(conductor, "handler.handler") as running:
        yield running


@pytest.fixture(scope="module")
def node_shim(conductor: Conductor) -> Iterator[tuple[Daemon, NodeRuntime]]:
    with node_daemon(conductor, "handler.shimmed") as running:
        yield running


def test_node_helper_streams_each_write_at_once_under_aws_lambda_ric(node_helper, conductor):
    sssrd, runtime = node_helper
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", "/?scenario=stepped&tag=node-steps")
    conductor.release("node-steps:step0")
    assert viewer.head().status_code == 200
    assert viewer.chunk() == b"chunk 0\n"
    conductor.wait_waiting("node-steps:step1")
    conductor.release("node-steps:step1")
    assert viewer.chunk() == b"chunk 1\n" and viewer.chunk() is None
    invoked = conductor.report("node-steps", "invoked")
    assert invoked["pid"] == runtime.process.pid
    assert invoked["runtimeKept"] is True  # the shim augmented the runtime's own awslambda


def test_node_helper_hears_the_viewer_leave_under_aws_lambda_ric(node_helper, conductor):
    sssrd, _ = node_helper
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", "/?scenario=leaves&tag=node-leaves")
    assert viewer.head().status_code == 200
    assert viewer.chunk() == b"first\n"
    viewer.close()
    assert conductor.report("node-leaves", "viewer_gone")["name"] == "ViewerGone"


def test_node_render_failing_early_is_502_and_late_is_a_cut(node_helper, conductor):
    sssrd, runtime = node_helper
    head, _ = Viewer(sssrd.viewer).get("/?scenario=fails_early&tag=node-early")
    assert head.status_code == 502
    access = sssrd.access(request_id=header(head, b"x-request-id").decode())
    assert (access["outcome"], access["error_type"]) == ("render_error", "TypeError")
    target = "/?scenario=fails_late&tag=node-late"
    cut_after_first_piece(sssrd, conductor, target, (200, b"partial"), "node-late:fail")
    assert runtime.api.idle.wait(WAIT)
    assert [done.error.error_type for done in runtime.api.answered[-2:] if done.error] == [
        "TypeError",
        "TypeError",
    ]


def test_function_url_handler_streams_through_the_shim_under_aws_lambda_ric(node_shim, conductor):
    sssrd, _ = node_shim
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", "/?tag=shim-ok")
    head = viewer.head()
    assert (head.status_code, header(head, b"content-type")) == (201, b"text/html")
    assert viewer.chunk() == b"<p>one</p>"
    conductor.wait_waiting("shim-ok:second")
    conductor.release("shim-ok:second")
    assert viewer.chunk() == b"<p>two</p>" and viewer.chunk() is None
    head, _ = Viewer(sssrd.viewer).get("/?tag=shim-early&fail=early")
    assert head.status_code == 502
    target = "/?tag=shim-late&fail=late"
    cut_after_first_piece(sssrd, conductor, target, (201, b"<p>one</p>"), "shim-late:second")


def test_shim_preloaded_with_node_options_survives_the_runtimes_own_awslambda(conductor):
    preload = {"NODE_OPTIONS": f"--require {ROOT / 'node' / 'awslambda.js'}"}
    with node_daemon(conductor, "preloaded.handler", **preload) as (sssrd, runtime):
        head, body = Viewer(sssrd.viewer).get("/")
        assert (head.status_code, body) == (200, b"preloaded shim")
        assert not any(done.streamed for done in runtime.api.answered)  # not via the runtime


# -- Node: the React streaming SSR example (examples/react-ssr's zip) under aws-lambda-ric ------


@pytest.fixture(scope="module")
def node_react(
    conductor: Conductor, react_zip: Path, held: HeldData
) -> Iterator[tuple[Daemon, NodeRuntime]]:
    """The built zip's index.handler, its Suspense data fetched from the held data server."""
    with node_daemon(
        conductor, "index.handler", task_root=react_zip.parent, DATA_URL=held.url
    ) as running:
        yield running


def react_shell(viewer: Viewer) -> bytes:
    """The response's first bytes, up to the end of the shell React sends before any data."""
    head = viewer.head()
    assert (head.status_code, header(head, b"content-type")) == (200, b"text/html; charset=utf-8")
    shell = b""
    while b"</footer>" not in shell:  # the shell's last element; </body></html> come at the end
        piece = viewer.chunk()
        assert piece is not None, shell
        shell += piece
    return shell


def test_react_shell_streams_before_the_suspended_data_under_aws_lambda_ric(node_react, held):
    sssrd, runtime = node_react
    before = held.requested
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", "/")
    held.wait_requested(before + 1)  # the render waits on its data: nothing later exists yet
    shell = react_shell(viewer)
    assert b'id="skeleton"' in shell and b'id="featured"' not in shell  # the Suspense fallback

    held.release()
    rest = viewer.body()
    assert b'id="featured"' in rest and HELD_FEATURED["text"].encode() in rest
    assert rest.endswith(b"</body></html>")
    assert held.outcome(before + 1) == "answered"
    access = sssrd.access(path="/")
    assert (access["status"], access["outcome"]) == (200, "ok")
    assert runtime.api.idle.wait(WAIT)  # the runtime posted the handler's result, then /next
    answered = json.loads(runtime.api.answered[-1].result)
    assert answered == {"viewerGone": False, "bytes": len(shell + rest)}


def test_viewer_leaving_aborts_the_react_render_and_its_data_under_aws_lambda_ric(node_react, held):
    sssrd, runtime = node_react
    before = held.requested
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", "/?leaving")
    held.wait_requested(before + 1)
    assert b'id="skeleton"' in react_shell(viewer)
    viewer.close()  # the viewer leaves while React still waits for the data
    assert held.outcome(before + 1) == "cancelled"  # abort() reached the render's data request
    access = sssrd.wait_line(
        lambda line: line.get("type") == "access" and line.get("outcome") == "viewer_abort"
    )
    assert access["path"] == "/"
    assert runtime.api.idle.wait(WAIT)
    assert json.loads(runtime.api.answered[-1].result) == {"viewerGone": True}
