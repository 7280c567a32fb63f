"""What operators rely on: metrics that move, parseable logs, systemd notify, socket
activation and live reload, all against the real daemon."""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import socket
import time

import pytest
from harness import WAIT, Viewer, daemon, header, http_get, socket_activation, wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.daemon


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_metrics_move_with_real_traffic_including_failures(conductor):
    with daemon(conductor, "--callback-timeout=0.5", "--max-body-bytes=100") as sssrd:
        ok_head, ok_body = Viewer(sssrd.viewer).get("/?scenario=echo&tag=m-ok")
        assert Viewer(sssrd.viewer).get("/?scenario=never&tag=m-late")[0].status_code == 504
        bad = Viewer(sssrd.viewer).get("/?scenario=bad_prelude&kind=json&tag=m-bad")[0]
        assert bad.status_code == 502
        conn = http.client.HTTPConnection(*sssrd.viewer, timeout=WAIT)
        conn.request("POST", "/?scenario=echo", body=b"x" * 200)
        assert conn.getresponse().status == 413
        status, headers, body = http_get(
            sssrd.admin, "/metrics", headers={"accept-encoding": "gzip"}
        )
        assert status == 200 and headers["content-encoding"] == "gzip"
        found = samples(gzip.decompress(body).decode())

        assert value(found, "sssrd_requests_total", code="2xx", outcome="ok") == 1
        assert value(found, "sssrd_requests_total", code="5xx", outcome="timeout") == 1
        assert value(found, "sssrd_requests_total", code="5xx", outcome="bad_callback") == 1
        assert value(found, "sssrd_requests_total", code="4xx", outcome="too_large") == 1
        assert value(found, "sssrd_timeouts_total", kind="deadline") == 1
        assert value(found, "sssrd_invoke_duration_seconds_count") == 3
        assert value(found, "sssrd_callback_wait_seconds_count") == 2  # ok and bad prelude
        assert value(found, "sssrd_time_to_first_byte_seconds_count") == 4
        assert value(found, "sssrd_stream_duration_seconds_count") == 2
        assert value(found, "sssrd_body_bytes_total", path="copy") == len(ok_body)
        assert value(found, "sssrd_pending_callbacks") == 0
        assert value(found, "sssrd_streams_in_flight") == 0
        assert value(found, "sssrd_connections_total", listener="viewer") >= 4
        assert value(found, "sssrd_connections_total", listener="callback") >= 2
        assert value(found, "sssrd_pending_limit") == 10_000 * sssrd.processes  # summed
        assert ("sssrd_build_info", ()) not in found  # it has labels: version, python
        assert any(name == "sssrd_build_info" for name, _ in found)
        assert any(name == "process_resident_memory_bytes" for name, _ in found)
        assert ok_head.status_code == 200


def test_gauges_count_what_the_daemon_holds_now(conductor):
    with daemon(conductor, "--max-pending=7") as sssrd:
        waiting = Viewer(sssrd.viewer)
        waiting.send("GET", "/?scenario=late&tag=g-wait")
        conductor.report("g-wait", "invoked")
        streaming = Viewer(sssrd.viewer)
        streaming.send("GET", "/?scenario=stepped&tag=g-stream&steps=2")
        conductor.release("g-stream:step0")
        assert streaming.chunk_after_head() == b"chunk 0\n"
        found = samples(http_get(sssrd.admin, "/metrics")[2].decode())
        assert value(found, "sssrd_pending_callbacks") == 1
        assert value(found, "sssrd_streams_in_flight") == 1
        assert value(found, "sssrd_pending_limit") == 7 * sssrd.processes
        assert value(found, "sssrd_connections_open", listener="viewer") == 2
        assert value(found, "sssrd_connections_open", listener="callback") == 1
        conductor.release("g-wait:go")
        conductor.release("g-stream:step1")
        assert (waiting.head().status_code, waiting.body()) == (200, b"too late")
        assert streaming.chunk() == b"chunk 1\n" and streaming.chunk() is None
        waiting.close()
        streaming.close()
        wait_for(
            lambda: (
                [
                    sssrd.metric("sssrd_pending_callbacks"),
                    sssrd.metric("sssrd_streams_in_flight"),
                    sssrd.metric("sssrd_connections_open", listener="viewer"),
                    sssrd.metric("sssrd_connections_open", listener="callback"),
                ]
                == [0, 0, 0, 0]
            ),
            what="every gauge back to 0",
        )


def test_access_lines_are_json_with_the_request_facts_and_no_secrets(conductor):
    with daemon(conductor, "--trusted-proxies=127.0.0.0/8") as sssrd:
        viewer = Viewer(sssrd.viewer)
        head, body = viewer.get(
            "/logged?scenario=echo", headers=[("x-forwarded-for", "6.6.6.6, 203.0.113.9")]
        )
        event = json.loads(body)
        request_id = header(head, b"x-request-id").decode()
        line = sssrd.access(request_id=request_id)
        assert line["method"] == "GET" and line["path"] == "/logged"
        assert line["status"] == 200 and line["outcome"] == "ok"
        assert line["bytes"] == len(body)
        assert line["client"] == "203.0.113.9"
        assert event["requestContext"]["http"]["sourceIp"] == "203.0.113.9"
        for key in ("invoke_ms", "callback_wait_ms", "ttfb_ms", "duration_ms"):
            assert isinstance(line[key], float) and line[key] >= 0
        assert line["time"].endswith("Z")
        token = event["sssrd"]["token"]
        sssrd.stop_now()
        assert all(token not in json.dumps(logged) for logged in sssrd.lines)


def test_untrusted_peer_cannot_forge_its_address(sssrd):
    viewer = Viewer(sssrd.viewer)
    head, body = viewer.get("/?scenario=echo", headers=[("x-forwarded-for", "203.0.113.9")])
    assert json.loads(body)["requestContext"]["http"]["sourceIp"] == "127.0.0.1"
    assert sssrd.access(request_id=header(head, b"x-request-id").decode())["client"] == "127.0.0.1"


def receive(sock: socket.socket) -> dict[str, str]:
    message = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in message.splitlines())


def test_systemd_hears_ready_watchdog_and_stopping_in_order(conductor, tmp_path):
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(WAIT)
        with daemon(conductor, NOTIFY_SOCKET=address, WATCHDOG_USEC="200000") as sssrd:
            ready = receive(notify)
            assert ready["READY"] == "1" and "serving" in ready["STATUS"]
            following = [receive(notify) for _ in range(3)]
            assert all("WATCHDOG" in m or "STATUS" in m for m in following)
            assert sum(m.get("WATCHDOG") == "1" for m in following) >= 2
            Viewer(sssrd.viewer).get("/?scenario=environment&tag=env")
            assert conductor.report("env", "environ")["notify"] is None  # not inherited
            sssrd.signal(signal.SIGTERM)
            message = receive(notify)
            while "STOPPING" not in message:
                message = receive(notify)
            assert message["STOPPING"] == "1"
            extend = receive(notify)
            while "EXTEND_TIMEOUT_USEC" not in extend:
                extend = receive(notify)
            assert int(extend["EXTEND_TIMEOUT_USEC"]) >= 30_000_000
            assert sssrd.wait_exit() == 0


def test_socket_activation_serves_on_the_sockets_it_is_given(conductor, workers):
    """One callback socket per worker, as sssrd-callback.socket asks (with fewer, the rest
    are bound at port + i, which an unrelated process may hold: test_worker_sockets.py)."""
    names = ("viewer", *("callback",) * workers, "admin")
    with (
        socket_activation(*names) as (ports, activation),
        daemon(conductor, **activation) as sssrd,
    ):
        assert [sssrd.viewer[1], sssrd.callback[1], sssrd.admin[1]] == [*ports[:2], ports[-1]]
        assert sssrd.callback_url == f"http://127.0.0.1:{ports[1]}"
        head, body = Viewer(("127.0.0.1", ports[0])).get("/?scenario=echo&tag=activated")
        assert head.status_code == 200 and json.loads(body)["rawPath"] == "/"
        assert http_get(("127.0.0.1", ports[-1]), "/healthz")[0] == 200


def every_worker_logged(sssrd, match) -> dict:
    """The first line that `match`es, once every process serving viewers has logged one."""
    sssrd.wait_line(
        lambda _line: sum(1 for line in list(sssrd.lines) if match(line)) >= sssrd.processes
    )
    return next(line for line in sssrd.lines if match(line))


def test_sighup_applies_a_new_timeout_live_and_reports_what_needs_a_restart(conductor, tmp_path):
    config = tmp_path / "sssrd.toml"
    config.write_text("callback_timeout = 60.0\n")
    with daemon(conductor, f"--config={config}") as sssrd:
        config.write_text('callback_timeout = 0.3\nhandler = "sssrd.demo:handler"\n')
        sssrd.signal(signal.SIGHUP)
        reloaded = every_worker_logged(sssrd, lambda line: line.get("message") == "reloaded")
        assert reloaded["applied"] == ["callback_timeout"]
        assert reloaded["needs_restart"] == []  # the --handler flag still wins over the file
        assert Viewer(sssrd.viewer).get("/?scenario=never&tag=hup")[0].status_code == 504

        config.write_text("callback_timeout = 0.3\nbacklog = 100\n")
        sssrd.signal(signal.SIGHUP)
        restart = sssrd.wait_line(
            lambda line: line.get("message") == "some changed settings apply only after a restart"
        )
        assert restart["settings"] == ["backlog"]

        config.write_text("callback_timeout = -1\n")
        sssrd.signal(signal.SIGHUP)
        refused = sssrd.wait_line(lambda line: line.get("message", "").startswith("reload refused"))
        assert "callback_timeout" in refused["error"]
        assert Viewer(sssrd.viewer).get("/?scenario=never&tag=hup2")[0].status_code == 504
        assert sssrd.alive()


def notices_until(sock: socket.socket, key: str) -> dict[str, str]:
    """Notify messages in order until one carries `key` (STATUS pings may come between)."""
    deadline = time.monotonic() + WAIT
    message = receive(sock)
    while key not in message:
        assert time.monotonic() < deadline, f"no {key} from the daemon"
        message = receive(sock)
    return message


def test_every_reload_ends_with_a_log_line_and_ready(conductor, tmp_path):
    """systemd waits in "reloading" until READY=1 follows RELOADING=1, refused or applied."""
    config = tmp_path / "sssrd.toml"
    config.write_text("")
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(WAIT)
        with daemon(conductor, f"--config={config}", NOTIFY_SOCKET=address) as sssrd:
            notices_until(notify, "READY")
            for content, message in [
                (b'log_level = "\xff"\n', "reload refused: invalid configuration"),
                (b"max_pending = 1.5\n", "reload refused: invalid configuration"),
                (b"max_pending = 7\n", "reloaded"),
            ]:
                config.write_bytes(content)
                seen = len(sssrd.lines)
                sssrd.signal(signal.SIGHUP)
                assert notices_until(notify, "RELOADING")["RELOADING"] == "1"
                assert notices_until(notify, "READY")["READY"] == "1"
                line = sssrd.wait_line(
                    lambda line, seen=seen, message=message: (
                        line.get("message") == message and sssrd.lines.index(line) >= seen
                    )
                )
            assert "not UTF-8" in sssrd.wait_line(lambda line: "error" in line)["error"]
            assert line["applied"] == ["max_pending"]
            assert sssrd.metric("sssrd_pending_limit") == 7 * sssrd.processes
            assert sssrd.alive()


def test_lifecycle_and_access_lines_are_compact_json_one_per_line(conductor, tmp_path):
    config = tmp_path / "sssrd.toml"
    config.write_text("max_pending = 5\n")
    with daemon(conductor, f"--config={config}") as sssrd:
        Viewer(sssrd.viewer).get("/?scenario=echo&tag=compact")
        sssrd.access(path="/")
        config.write_text("max_pending = 6\n")
        sssrd.signal(signal.SIGHUP)
        sssrd.wait_line(lambda line: line.get("message") == "reloaded")
        sssrd.signal(signal.SIGTERM)
        assert sssrd.wait_exit() == 0
        sssrd.wait_line(lambda line: line.get("message") == "<eof>")
    kinds = set()
    for raw in sssrd.raw_lines:
        record = json.loads(raw)
        assert raw == json.dumps(record, separators=(",", ":")).encode() + b"\n", raw
        kinds.add(record.get("type") or record["message"])
    assert {"access", "sssrd listening", "reloaded", "draining", "stopped"} <= kinds
