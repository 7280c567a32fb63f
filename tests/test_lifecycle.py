"""Start, configure, drain and stop: the daemon as an operator drives it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import h11
import pytest
from harness import ROOT, WAIT, PlayedLambda, Viewer, daemon, header, http_get

pytestmark = pytest.mark.daemon


def sssrd_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SSSRD_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sssrd.cli", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=ROOT,
        timeout=WAIT,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_in_flight_streams_then_exits_zero(conductor, signum):
    tag = f"drain{signum}"
    with daemon(conductor) as sssrd:
        viewer = Viewer(sssrd.viewer)
        viewer.send("GET", f"/?scenario=stepped&tag={tag}&steps=2")
        conductor.release(f"{tag}:step0")
        assert viewer.head().status_code == 200
        assert viewer.chunk() == b"chunk 0\n"
        sssrd.signal(signum)
        sssrd.wait_draining()
        assert http_get(sssrd.admin, "/healthz")[0] == 503
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(sssrd.viewer, timeout=WAIT)
        conductor.release(f"{tag}:step1")
        assert viewer.chunk() == b"chunk 1\n"
        assert viewer.chunk() is None
        assert sssrd.wait_exit() == 0
        assert sssrd.abandoned() == 0


def test_drain_timeout_cuts_streams_that_do_not_finish(conductor):
    with daemon(conductor, "--drain-timeout=0.3") as sssrd:
        viewer = Viewer(sssrd.viewer)
        viewer.send("GET", "/?scenario=stepped&tag=cut&steps=2")
        conductor.release("cut:step0")
        assert viewer.chunk_after_head() == b"chunk 0\n"
        sssrd.signal(signal.SIGTERM)
        assert sssrd.wait_exit() == 0
        assert sssrd.abandoned() == 1
        with pytest.raises(h11.RemoteProtocolError):  # the viewer sees it cut: no final chunk
            viewer.chunk()


MAX_TRIES = 40  # bounded: the kernel picks the worker that accepts, so we try until each did


def in_every_worker(sssrd, conductor, tag: str, scenario: str) -> list[tuple[Viewer, str]]:
    """Viewers sent `scenario` on fresh connections until every worker process holds one; the
    kept ones (one per process) and their tags. The others are closed."""
    kept: dict[int, tuple[Viewer, str]] = {}
    for attempt in range(MAX_TRIES):
        if len(kept) == sssrd.processes:
            break
        viewer, each = Viewer(sssrd.viewer), f"{tag}{attempt}"
        viewer.send("GET", f"/?scenario={scenario}&tag={each}")
        pid = conductor.report(each, "invoked")["pid"]
        if pid in kept:  # that worker holds one already: let this one finish
            conductor.release(f"{each}:step0")  # (what a stepped render waits for)
            assert viewer.head().status_code == 200 and viewer.body()
            viewer.close()
        else:
            kept[pid] = (viewer, each)
    assert len(kept) == sssrd.processes, f"{len(kept)} of {sssrd.processes} workers reached"
    return list(kept.values())


def test_during_a_drain_every_worker_answers_kept_alive_viewers_and_closes_them(conductor):
    """Each worker with a stream in flight keeps serving its open keep-alive connections while
    it drains: /healthz says 503, a render request is served, and both say Connection: close."""
    with daemon(conductor) as sssrd:
        holders = in_every_worker(sssrd, conductor, "hold", "stepped&steps=1")
        probes = in_every_worker(sssrd, conductor, "probe", "environment")
        renders = in_every_worker(sssrd, conductor, "render", "environment")
        for viewer, _tag in probes + renders:
            assert viewer.head().status_code == 200 and viewer.body() == b"ok"
            viewer.next_cycle()
        sssrd.signal(signal.SIGTERM)
        sssrd.wait_draining()
        for probe, _tag in probes:
            head, body = probe.get("/healthz")
            assert (head.status_code, body) == (503, b"draining\n")
            assert header(head, b"connection") == b"close"
        for viewer, tag in renders:
            head, body = viewer.get(f"/?scenario=environment&tag={tag}-again")
            assert (head.status_code, body) == (200, b"ok")
            assert header(head, b"connection") == b"close"
        for holder, tag in holders:
            conductor.release(f"{tag}:step0")
            assert holder.chunk_after_head() == b"chunk 0\n"
        assert sssrd.wait_exit() == 0
        assert sssrd.abandoned() == 0


def test_a_callback_first_arriving_during_a_drain_is_served(conductor):
    with daemon(conductor) as sssrd:
        viewer = Viewer(sssrd.viewer)
        viewer.send("GET", "/?scenario=handover&tag=drain-late")
        conductor.report("drain-late", "callback")
        sssrd.signal(signal.SIGTERM)
        sssrd.wait_draining()
        render = PlayedLambda(conductor, "drain-late")  # the callback arrives only now
        render.write(b"rendered while draining")
        render.finish()
        head = viewer.head()
        assert (head.status_code, viewer.body()) == (200, b"rendered while draining")
        assert render.answer() == 200
        assert sssrd.wait_exit() == 0
        assert sssrd.abandoned() == 0


def test_invalid_config_names_the_key_and_exits_2(tmp_path):
    result = sssrd_command("check-config", "--head-timeout=-1")
    assert result.returncode == 2
    assert result.stderr.startswith("sssrd: config error: head_timeout:")
    assert result.stderr.count("\n") == 1

    config = tmp_path / "sssrd.toml"
    config.write_text('listen = "nowhere"\n')
    result = sssrd_command("serve", "--config", str(config))
    assert result.returncode == 2 and "listen:" in result.stderr and str(config) in result.stderr

    config.write_text("no_such_key = 1\n")
    result = sssrd_command("check-config", "--config", str(config))
    assert result.returncode == 2 and "no_such_key: unknown setting" in result.stderr

    result = sssrd_command("check-config", env={"SSSRD_MAX_PENDING": "many"})
    assert result.returncode == 2 and "SSSRD_MAX_PENDING" in result.stderr


def test_a_kubernetes_service_named_sssrd_and_a_typo_are_warnings_and_the_daemon_serves():
    links = {"SSSRD_PORT": "tcp://10.96.0.7:8080", "SSSRD_SERVICE_HOST": "10.96.0.7"}
    with daemon(None, **links, SSSRD_MAX_PENDNG="5") as sssrd:
        warnings = [
            line["warning"]
            for line in sssrd.lines
            if line.get("message") == "environment variable ignored"
        ]
        assert warnings == [
            "SSSRD_MAX_PENDNG: not a setting, ignored; did you mean SSSRD_MAX_PENDING? "
            "(environment variable)",
            "SSSRD_PORT: not a setting, ignored; a Kubernetes service link? (environment variable)",
            "SSSRD_SERVICE_HOST: not a setting, ignored; a Kubernetes service link? "
            "(environment variable)",
        ]
        assert http_get(sssrd.admin, "/healthz")[::2] == (200, b"ok\n")


def test_wildcard_callback_listener_needs_an_advertised_url():
    result = sssrd_command("check-config", "--callback-listen=0.0.0.0:8081")
    assert result.returncode == 2 and result.stderr.startswith("sssrd: config error: callback_url:")


def test_flags_beat_env_beat_file_beat_defaults(tmp_path):
    config = tmp_path / "sssrd.toml"
    config.write_text(
        'callback_url = "http://10.0.0.1:8081"\nhead_timeout = 3\n'
        "idle_timeout = 4\nmax_pending = 5\n"
    )
    result = sssrd_command(
        "check-config",
        "--config",
        str(config),
        "--idle-timeout=7",
        "--function=render",
        env={"SSSRD_HEAD_TIMEOUT": "6", "SSSRD_IDLE_TIMEOUT": "8"},
    )
    assert result.returncode == 0, result.stderr
    settings = dict(
        line.split(" = ", 1) for line in result.stdout.splitlines() if not line.startswith("#")
    )
    assert settings["head_timeout"] == "6.0"  # env over file
    assert settings["idle_timeout"] == "7.0"  # flag over env
    assert settings["max_pending"] == "5"  # file over default
    assert settings["drain_timeout"] == "30.0"  # default
    assert settings["callback_url"] == '"http://10.0.0.1:8081"'


def test_check_config_output_is_a_valid_config(tmp_path):
    first = sssrd_command(
        "check-config", "--callback-url=http://10.1.2.3:8081", "--function=arn:aws:lambda:x"
    )
    assert first.returncode == 0, first.stderr
    config = tmp_path / "effective.toml"
    config.write_text(first.stdout)
    second = sssrd_command("check-config", "--config", str(config))
    assert second.returncode == 0 and second.stdout == first.stdout


def test_lambda_invoker_needs_a_function():
    result = sssrd_command("check-config", "--callback-url=http://10.1.2.3:8081")
    assert result.returncode == 2 and result.stderr.startswith("sssrd: config error: function:")


def test_version_prints_the_package_version():
    from sssrd import __version__

    assert sssrd_command("version").stdout == f"sssrd {__version__}\n"


def test_bad_handler_fails_startup_with_a_clear_message():
    result = sssrd_command(
        "serve",
        "--listen=127.0.0.1:0",
        "--callback-listen=127.0.0.1:0",
        "--admin-listen=off",
        "--invoker=local",
        "--handler=no_such_module:handler",
    )
    assert result.returncode == 1
    assert "no_such_module" in result.stderr


def test_port_in_use_fails_startup_naming_the_listener():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = sssrd_command(
            "serve",
            f"--listen=127.0.0.1:{port}",
            "--callback-listen=127.0.0.1:0",
            "--invoker=local",
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port} (viewer)" in result.stderr


@pytest.mark.parametrize(
    ("content", "args", "env", "message"),
    [
        (b'listen = "\xff"\n', (), {}, "not UTF-8 text (byte 0xff at offset 10)"),
        (b"max_pending = 1.5\n", (), {}, "max_pending: expected a positive whole number, got 1.5"),
        (b"backlog = 2.9\n", (), {}, "backlog: expected a positive whole number, got 2.9"),
        (
            b"",
            ("--max-pending=lots",),
            {},
            'max_pending: expected a positive whole number, got "lots"',
        ),
    ],
    ids=["not-utf8", "fraction", "backlog-fraction", "not-a-number"],
)
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_config_errors_are_one_line_and_exit_2(tmp_path, command, content, args, env, message):
    config = tmp_path / "sssrd.toml"
    config.write_bytes(content + b'callback_url = "http://127.0.0.1:1"\ninvoker = "local"\n')
    result = sssrd_command(command, f"--config={config}", "--listen=127.0.0.1:0", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("sssrd: config error: "), result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--admin-listen=off"], {}), ([], {"SSSRD_ADMIN_LISTEN": "off"})],
    ids=["flag", "env"],
)
def test_dev_runs_without_an_admin_listener(args, env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SSSRD_")} | env
    ports = ["--listen=127.0.0.1:0", "--callback-listen=127.0.0.1:0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "sssrd.cli", "dev", *ports, *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=environ,
        cwd=ROOT,
    )
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        assert banner.startswith("sssrd dev: open http://127.0.0.1:"), banner
        assert "metrics" not in banner
        host, port = banner.split("http://")[1].split("/")[0].rsplit(":", 1)
        status, _, body = http_get((host, int(port)), "/?lines=0&delay_ms=0")
        assert status == 200 and body.endswith(b"</html>\n")
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
