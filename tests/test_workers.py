"""`workers = 2`: one daemon of several processes, as viewers, Lambdas, Prometheus and systemd
see it. Every test drives the real supervisor and its real workers over real sockets."""

from __future__ import annotations

import itertools
import json
import os
import platform
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import h11
import pytest
from harness import (
    WAIT,
    Conductor,
    Daemon,
    Viewer,
    daemon,
    http_get,
    parse_address,
    socket_activation,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from test_operations import notices_until, receive

from sssrd import __version__
from sssrd.testing import FakeIMDS

pytestmark = pytest.mark.daemon

WORKERS = ("--workers=2",)
MAX_TRIES = 40  # bounded: the kernel picks the worker that accepts, so we try until both did


def worker_pids(sssrd: Daemon) -> dict[int, int]:
    """Worker index → pid of its latest process, from the "worker listening" lines."""
    pids = {}
    for line in list(sssrd.lines):
        if line.get("message") == "worker listening":
            pids[line["worker"]] = line["pid"]
    return pids


@pytest.fixture
def workers2(conductor):
    with daemon(conductor, *WORKERS) as sssrd:
        yield sssrd


def spread_requests(sssrd: Daemon, conductor: Conductor, tag: str) -> dict[int, int]:
    """Concurrent requests on fresh connections until both workers have served; pid → count."""
    served: dict[int, int] = {}
    with ThreadPoolExecutor(4) as pool:
        for batch in range(MAX_TRIES // 4):
            tags = [f"{tag}{batch}-{n}" for n in range(4)]
            for head, body in pool.map(
                lambda tag: Viewer(sssrd.viewer).get(f"/?scenario=environment&tag={tag}"), tags
            ):
                assert (head.status_code, body) == (200, b"ok")
            for tag in tags:
                pid = conductor.report(tag, "environ")["pid"]
                served[pid] = served.get(pid, 0) + 1
            if len(served) == 2:
                break
    return served


def test_requests_spread_over_both_workers_and_metrics_sum_them(conductor, workers2):
    sssrd = workers2
    listening = sssrd.wait_line(lambda line: line.get("message") == "sssrd listening")
    assert listening["workers"] == 2 and len(set(listening["callback_urls"])) == 2
    served = spread_requests(sssrd, conductor, "spread1-")
    assert set(served) == set(worker_pids(sssrd).values())  # each answered through its own port
    requests = sum(served.values())
    wait_for(
        lambda: sum(line.get("type") == "access" for line in list(sssrd.lines)) == requests,
        what=f"{requests} access lines",
    )
    assert sssrd.metric("sssrd_requests_total", code="2xx", outcome="ok") == requests
    assert sssrd.metric("sssrd_pending_limit") == 2 * 10_000  # each worker's limit, summed
    build = {"version": __version__, "python": platform.python_version()}
    assert sssrd.metric("sssrd_build_info", **build) == 1  # the same in every process: not summed
    assert http_get(sssrd.admin, "/healthz")[::2] == (200, b"ok\n")


def test_a_callback_sent_to_the_other_workers_port_is_refused_and_the_stream_unharmed(
    conductor, workers2
):
    sssrd = workers2
    ports = ",".join(url.rsplit(":", 1)[1] for url in listening_of(sssrd)["callback_urls"])
    head, body = Viewer(sssrd.viewer).get(f"/?scenario=misdirected&tag=wrong&ports={ports}")
    report = conductor.report("wrong", "misdirected")
    assert report["status"] == 401  # the other worker's secret does not know this token
    assert (head.status_code, body) == (200, b"the real body")
    assert sssrd.metric("sssrd_callbacks_rejected_total", reason="bad_token") == 1


def listening_of(sssrd: Daemon) -> dict[str, Any]:
    return sssrd.wait_line(lambda line: line.get("message") == "sssrd listening")


def streams_in_both_workers(sssrd: Daemon, conductor: Conductor, tag: str) -> dict[int, Viewer]:
    """One held stream (first chunk read) in each worker: pid → its viewer."""
    held: dict[int, Viewer] = {}
    for attempt in range(MAX_TRIES):
        if len(held) == 2:
            break
        name = f"{tag}{attempt}"
        viewer = Viewer(sssrd.viewer)
        viewer.send("GET", f"/?scenario=stepped&tag={name}&steps=2")
        pid = conductor.report(name, "invoked")["pid"]
        conductor.release(f"{name}:step0")
        assert viewer.chunk_after_head() == b"chunk 0\n"
        if pid in held:
            conductor.release(f"{name}:step1")
            assert viewer.chunk() == b"chunk 1\n"
            viewer.close()
        else:
            held[pid] = viewer
            viewer.tag = name  # type: ignore[attr-defined]
    assert len(held) == 2, "the kernel never handed a connection to the second worker"
    return held


def test_a_killed_worker_is_replaced_and_the_other_workers_stream_continues(conductor, workers2):
    sssrd = workers2
    before = listening_of(sssrd)["callback_urls"]
    held = streams_in_both_workers(sssrd, conductor, "kill")
    victim, survivor = list(held)
    index = next(i for i, pid in worker_pids(sssrd).items() if pid == victim)
    os.kill(victim, signal.SIGKILL)
    with pytest.raises((h11.RemoteProtocolError, ConnectionResetError)):  # truncated
        held[victim].chunk()
    sssrd.wait_line(lambda line: line.get("message") == "worker exited; starting a replacement")
    conductor.release(f"{held[survivor].tag}:step1")  # type: ignore[attr-defined]
    assert held[survivor].chunk() == b"chunk 1\n"
    assert held[survivor].chunk() is None  # complete
    replaced = sssrd.wait_line(lambda line: line.get("message") == "worker replaced")
    assert replaced["worker"] == index and replaced["callback_url"] == before[index]
    assert worker_pids(sssrd)[index] == replaced["pid"] != victim
    served = spread_requests(sssrd, conductor, "spread2-")
    assert set(served) == {survivor, replaced["pid"]}


def test_sigterm_drains_every_worker(conductor, workers2):
    sssrd = workers2
    held = streams_in_both_workers(sssrd, conductor, "drain")
    sssrd.signal(signal.SIGTERM)
    sssrd.wait_line(lambda line: line.get("message") == "draining" and "in_flight" in line)
    assert http_get(sssrd.admin, "/healthz")[::2] == (503, b"draining\n")
    for viewer in held.values():
        conductor.release(f"{viewer.tag}:step1")  # type: ignore[attr-defined]
        assert viewer.chunk() == b"chunk 1\n"
        assert viewer.chunk() is None
    assert sssrd.wait_exit() == 0
    stops = [line for line in sssrd.lines if line.get("message") == "stopped"]
    assert [line.get("abandoned") for line in stops] == [0, 0, None]  # two workers, then all
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(sssrd.viewer, timeout=WAIT)


def test_systemd_hears_one_daemon_ready_reload_and_stop(conductor, tmp_path):
    config = tmp_path / "sssrd.toml"
    config.write_text("")
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(WAIT)
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"}
        with daemon(conductor, *WORKERS, f"--config={config}", **env) as sssrd:
            ready = receive(notify)  # nothing before READY: no worker speaks to systemd
            assert ready["READY"] == "1" and "2/2 workers" in ready["STATUS"]
            assert len(worker_pids(sssrd)) == 2
            assert notices_until(notify, "WATCHDOG")["WATCHDOG"] == "1"

            config.write_text("max_pending = 7\n")
            seen = len(sssrd.lines)
            sssrd.signal(signal.SIGHUP)
            assert notices_until(notify, "RELOADING")["RELOADING"] == "1"
            assert notices_until(notify, "READY")["READY"] == "1"
            # Each worker logs before it answers; its line may reach us after READY does.
            for index in (0, 1):
                sssrd.wait_line(
                    lambda line, index=index: (
                        line.get("message") == "reloaded"
                        and line.get("worker") == index
                        and sssrd.lines.index(line) >= seen
                    )
                )
            reloaded = [line for line in sssrd.lines[seen:] if line.get("message") == "reloaded"]
            assert sorted(line["worker"] for line in reloaded) == [0, 1]
            assert all(line["applied"] == ["max_pending"] for line in reloaded)
            assert sssrd.metric("sssrd_pending_limit") == 14

            pid = worker_pids(sssrd)[1]
            os.kill(pid, signal.SIGSTOP)  # wedged: alive, silent
            wedged = sssrd.wait_line(
                lambda line: line.get("message", "").startswith("worker wedged")
            )
            assert wedged["worker"] == 1 and wedged["pid"] == pid
            assert (
                sssrd.wait_line(lambda line: line.get("message") == "worker replaced")["worker"]
                == 1
            )
            assert notices_until(notify, "WATCHDOG")["WATCHDOG"] == "1"  # the daemon lives on

            sssrd.signal(signal.SIGTERM)
            assert notices_until(notify, "STOPPING")["STOPPING"] == "1"
            assert sssrd.wait_exit() == 0


def test_socket_activation_with_one_viewer_and_a_callback_socket_per_worker(conductor):
    with (
        socket_activation("viewer", "callback", "callback", "admin") as (ports, activation),
        daemon(conductor, *WORKERS, **activation) as sssrd,
    ):
        listening = listening_of(sssrd)
        assert [sssrd.viewer[1], sssrd.admin[1]] == [ports[0], ports[3]]
        assert listening["callback_urls"] == [f"http://127.0.0.1:{p}" for p in ports[1:3]]
        assert len(spread_requests(sssrd, conductor, "spread3-")) == 2
        head, body = Viewer(("127.0.0.1", ports[0])).get("/?scenario=echo&tag=activated")
        assert head.status_code == 200 and json.loads(body)["rawPath"] == "/"


def test_one_worker_is_the_single_process_of_before(conductor):
    with daemon(conductor, "--workers=1") as sssrd:
        head, body = Viewer(sssrd.viewer).get("/?scenario=environment&tag=single")
        assert (head.status_code, body) == (200, b"ok")
        assert conductor.report("single", "environ")["pid"] == sssrd.process.pid
        children = f"/proc/{sssrd.process.pid}/task/{sssrd.process.pid}/children"
        with open(children) as listed:
            assert listed.read().split() == []  # no supervisor, no workers
        assert not any(line.get("message") == "worker listening" for line in sssrd.lines)


# -- the supervisor gone, or stopped while it starts (no worker outlives it) ----------------


class SlowIMDS:
    """An instance metadata service that answers one byte at a time, forever: every worker
    asking it for `callback_url = "auto"` stays in start-up (each byte beats the client's read
    timeout) until the test is done. Counts the workers that have asked."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.asked = threading.Semaphore(0)
        self.done = threading.Event()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.asked.release()
            threading.Thread(target=self.trickle, args=(conn,), daemon=True).start()

    def trickle(self, conn: socket.socket) -> None:
        with conn:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 1000:
                if self.done.wait(0.2):  # the pace of a slow server, not a synchronisation
                    return
                try:
                    conn.send(bytes([byte]))
                except OSError:
                    return

    def wait_asked(self, times: int) -> None:
        for _ in range(times):
            assert self.asked.acquire(timeout=WAIT), "a worker never asked the metadata service"

    def close(self) -> None:
        self.done.set()
        self.listener.close()


@pytest.fixture
def slow_imds():
    imds = SlowIMDS()
    yield imds
    imds.close()


def starting(conductor: Conductor, imds_endpoint: str) -> Daemon:
    """A two-worker daemon whose workers are all inside start-up (asking the slow IMDS)."""
    return Daemon(
        conductor,
        *WORKERS,
        "--callback-url=auto",
        f"--imds-endpoint={imds_endpoint}",
        ready=False,
    )


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listed:
        return [int(child) for child in listed.read().split()]


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait for a reaper that never comes)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"]
)
def test_a_signal_while_the_workers_start_stops_them_all_and_exits_zero(
    conductor, slow_imds, signum
):
    sssrd = starting(conductor, slow_imds.endpoint)
    try:
        slow_imds.wait_asked(2)
        workers = children(sssrd.process.pid)
        assert len(workers) == 2
        sssrd.signal(signum)
        assert sssrd.wait_exit() == 0
        assert not [pid for pid in workers if running(pid)]
        assert not any(line.get("message") == "sssrd listening" for line in sssrd.lines)
    finally:
        sssrd.stop_now()


def test_a_supervisor_killed_while_its_workers_start_leaves_none_behind(conductor, slow_imds):
    sssrd = starting(conductor, slow_imds.endpoint)
    try:
        slow_imds.wait_asked(2)
        workers = children(sssrd.process.pid)
        sssrd.process.kill()
        # The metadata service still holds every worker in start-up: only the kernel's word
        # that the supervisor died can end them now.
        wait_for(lambda: not [pid for pid in workers if running(pid)], what="workers to exit")
    finally:
        sssrd.stop_now()


def test_a_supervisor_killed_mid_stream_leaves_workers_that_drain_and_free_the_ports(
    conductor, workers2
):
    sssrd = workers2
    ports = [sssrd.viewer, *(parse_address(url) for url in listening_of(sssrd)["callbacks"])]
    held = streams_in_both_workers(sssrd, conductor, "orphan")
    workers = list(worker_pids(sssrd).values())
    sssrd.process.kill()
    assert sssrd.wait_exit() == -signal.SIGKILL
    for viewer in held.values():  # each worker drains: its stream completes
        conductor.release(f"{viewer.tag}:step1")  # type: ignore[attr-defined]
        assert viewer.chunk() == b"chunk 1\n"
        assert viewer.chunk() is None
    wait_for(lambda: not [pid for pid in workers if running(pid)], what="workers to exit")
    for address in ports:  # the next start can listen where this daemon did
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen()


# -- counters across worker deaths ------------------------------------------------------------


def access_lines(sssrd: Daemon, count: int) -> None:
    wait_for(
        lambda: sum(line.get("type") == "access" for line in list(sssrd.lines)) == count,
        what=f"{count} access lines",
    )


def monotonic_samples(sssrd: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A fresh scrape's counter and histogram samples (not their _created timestamps)."""
    samples = {}
    for family in text_string_to_metric_families(http_get(sssrd.admin, "/metrics")[2].decode()):
        if family.type in ("counter", "histogram"):
            for sample in family.samples:
                if not sample.name.endswith("_created"):
                    samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def assert_none_decreased(before: dict, after: dict) -> None:
    fell = {
        key: (before[key], after.get(key)) for key in before if after.get(key, -1) < before[key]
    }
    assert fell == {}


def test_daemon_counters_never_go_backwards_when_workers_die_or_miss_a_scrape(conductor, workers2):
    sssrd = workers2
    scrapes = []
    requests = 0
    for round_ in range(2):  # each round kills the worker that served the most
        served = spread_requests(sssrd, conductor, f"mono{round_}-")
        requests += sum(served.values())
        access_lines(sssrd, requests)
        scrapes.append(monotonic_samples(sssrd))
        seen = replacements(sssrd)
        os.kill(max(served, key=served.__getitem__), signal.SIGKILL)
        scrapes.append(monotonic_samples(sssrd))  # dead, perhaps not yet noticed
        wait_for(lambda seen=seen: replacements(sssrd) > seen, what="the replacement")
        scrapes.append(monotonic_samples(sssrd))
        requests_ok = ("sssrd_requests_total", (("code", "2xx"), ("outcome", "ok")))
        assert scrapes[-1][requests_ok] == requests  # what the dead worker counted still counts
        assert sssrd.metric("sssrd_pending_limit") == 2 * 10_000  # gauges are not carried over
    silent = worker_pids(sssrd)[0]
    os.kill(silent, signal.SIGSTOP)  # alive but not answering: left out of this scrape
    try:
        scrapes.append(monotonic_samples(sssrd))
        assert sssrd.metric("sssrd_pending_limit") == 10_000
    finally:
        os.kill(silent, signal.SIGCONT)
    scrapes.append(monotonic_samples(sssrd))
    for before, after in itertools.pairwise(scrapes):
        assert_none_decreased(before, after)


# -- the settings a replacement runs, and one that cannot start ---------------------------------


def test_a_replacement_runs_the_settings_the_supervisor_validated_not_the_edited_file(
    conductor, tmp_path
):
    config = tmp_path / "sssrd.toml"
    config.write_text("max_pending = 50\n")
    with daemon(conductor, *WORKERS, f"--config={config}") as sssrd:
        config.write_text("max_pending = 70\n")  # valid, not reloaded
        replace_worker(sssrd, 1)
        assert sssrd.metric("sssrd_pending_limit") == 100  # 50 + 50, not 50 + 70
        config.write_text("max_pending = [\n")  # not TOML at all, not reloaded
        replace_worker(sssrd, 0)
        assert sssrd.metric("sssrd_pending_limit") == 100
        assert http_get(sssrd.admin, "/healthz")[::2] == (200, b"ok\n")
        sssrd.signal(signal.SIGHUP)  # the invalid file refused once, by the supervisor
        refused = sssrd.wait_line(lambda line: line.get("message", "").startswith("reload refused"))
        assert "worker" not in refused and "not valid TOML" in refused["error"]
        config.write_text("max_pending = 70\n")
        sssrd.signal(signal.SIGHUP)  # a reload is how new settings arrive, in every worker
        sssrd.wait_line(lambda line: line.get("message") == "every worker reloaded")
        assert sssrd.metric("sssrd_pending_limit") == 140
    assert not any(line.get("message") == "worker cannot start" for line in sssrd.lines)


def replacements(sssrd: Daemon) -> int:
    return sum(line.get("message") == "worker replaced" for line in list(sssrd.lines))


def replace_worker(sssrd: Daemon, index: int) -> None:
    seen = replacements(sssrd)
    os.kill(worker_pids(sssrd)[index], signal.SIGKILL)
    wait_for(lambda: replacements(sssrd) > seen, what=f"worker {index}'s replacement")


def test_a_worker_that_cannot_start_says_why_backs_off_and_degrades_health(conductor):
    with (
        FakeIMDS(local_ipv4="127.0.0.1") as imds,
        daemon(
            conductor, *WORKERS, "--callback-url=auto", f"--imds-endpoint={imds.endpoint}"
        ) as sssrd,
    ):
        imds.set_mode("error")
        os.kill(worker_pids(sssrd)[1], signal.SIGKILL)
        exits = [
            sssrd.wait_line(
                lambda line, n=n: (
                    line.get("message") == "worker exited; starting a replacement"
                    and line["failed_starts"] == n
                )
            )
            for n in (0, 1, 2)
        ]
        assert [line["pause"] for line in exits] == [1.0, 1.0, 2.0]  # doubling while it fails
        cannot = [line for line in sssrd.lines if line.get("message") == "worker cannot start"]
        assert cannot[0]["worker"] == 1 and "answered 500" in cannot[0]["error"]
        assert http_get(sssrd.admin, "/healthz")[::2] == (
            503,
            b"degraded: worker 1 failed to start 2 times in a row\n",
        )
        assert sssrd.metric("sssrd_worker_start_failures_total") == 2
        imds.set_mode("normal")
        assert sssrd.wait_line(lambda line: line.get("message") == "worker replaced")["worker"] == 1
        assert http_get(sssrd.admin, "/healthz")[::2] == (200, b"ok\n")
        stderr = sssrd.stop_now()
    assert "Traceback" not in stderr


def test_a_worker_that_cannot_start_fails_the_daemon_in_the_one_line_it_gave(conductor, slow_imds):
    """The supervisor is stopped while its workers fail, so it meets their exits and their
    reasons at once (the worst order): the reason still wins over "exited before it listened"."""
    sssrd = starting(conductor, slow_imds.endpoint)
    try:
        slow_imds.wait_asked(2)
        workers = children(sssrd.process.pid)
        sssrd.signal(signal.SIGSTOP)
        slow_imds.close()  # cut mid-answer: every worker's start fails
        wait_for(lambda: not [pid for pid in workers if running(pid)], what="workers to exit")
        sssrd.signal(signal.SIGCONT)
        assert sssrd.wait_exit() == 1
    finally:
        stderr = sssrd.stop_now()
    assert stderr.startswith("sssrd: cannot start: ") and "instance metadata" in stderr, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    assert sssrd.workers_left() == []
