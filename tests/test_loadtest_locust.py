"""The Locust user in a real distributed run: one master and two worker processes, headless,
for a few seconds against `sssrd dev`, one path streaming the demo page and one whose Lambda
dies mid-body. Locust's own counts must match what the daemon served, request for request."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ROOT, Daemon

pytestmark = pytest.mark.daemon  # sssrd dev and a Locust master with two workers

LOCUSTFILE = ROOT / "sssrd" / "loadtest" / "locustfile.py"
LOCUST = [str(Path(sys.executable).with_name("locust")), "-f", str(LOCUSTFILE)]
STREAM = "/?lines=3&delay_ms=20"
CUT = "/?scenario=abort_mid_body&tag=lt-locust"
RUN_SECONDS = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_master_and_two_workers_record_streams_and_truncations(conductor, tmp_path):
    conductor.release("lt-locust:close")  # the cutting scenario dies as soon as it is asked
    dev = Daemon(conductor, command="dev")
    workers: list[subprocess.Popen] = []
    try:
        port = free_port()
        for number in range(2):
            log = (tmp_path / f"worker-{number}.log").open("wb")
            workers.append(
                subprocess.Popen(
                    [*LOCUST, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=tmp_path,
                )
            )
        master = subprocess.run(
            [
                *LOCUST,
                *("--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)),
                *("--headless", "--expect-workers", "2", "--users", "4", "--spawn-rate", "4"),
                *("--run-time", f"{RUN_SECONDS}s", "--stop-timeout", "10s", "--json"),
                *(
                    "--host",
                    f"http://127.0.0.1:{dev.viewer[1]}",
                    "--stream-paths",
                    f"{STREAM} {CUT}",
                ),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert master.returncode in (0, 1), master.stderr  # 1: the run had failures
        for worker in workers:
            worker.wait(30)
        served_ok = dev.metric("sssrd_requests_total", code="2xx", outcome="ok")
        served_cut = dev.metric("sssrd_requests_total", code="2xx", outcome="lambda_abort")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        dev.stop_now()
    stats = {(entry["method"], entry["name"]): entry for entry in json.loads(master.stdout)}
    streamed, cut = stats["TTLB", STREAM], stats["TTLB", CUT]
    assert streamed["num_requests"] == served_ok > 0  # how many is bench's question
    assert streamed["num_failures"] == 0
    assert cut["num_requests"] == cut["num_failures"] == served_cut > 0  # truncation fails
    assert stats["TTFB", STREAM]["num_requests"] == streamed["num_requests"]
    assert stats["TTFB", CUT]["num_requests"] == cut["num_requests"]
    gaps = stats["GAP", STREAM]
    assert gaps["num_requests"] >= streamed["num_requests"]  # paced lines: gaps recorded
    assert gaps["num_failures"] == 0
