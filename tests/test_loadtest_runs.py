"""`sssrd loadtest` against real servers: `sssrd dev`, servers that fail in each way a viewer
can see, and HAProxy terminating TLS with CloudFront's headers. Each test runs the real command
in a subprocess and reads its JSON report; counts are asserted exactly, timing only where the
schedule itself decides it (open loop), with a tolerance a busy machine cannot break."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from harness import Conductor, Daemon, wait_for
from loadtest_peers import ROOT, Edge, Misbehaving, loadtest_argv, run_loadtest

from sssrd.loadtest.response import ErrorKind

# The daemon, misbehaving servers, HAProxy as the TLS edge and Chromium for the HTML report.
pytestmark = [pytest.mark.daemon, pytest.mark.system_tools, pytest.mark.browser]

SCHEMA = ROOT / "docs" / "loadtest-report.schema.json"
STREAM = "/?lines=2&delay_ms=20"  # the demo page: a first screen, 2 paced lines, the end


@pytest.fixture(scope="module")
def dev(conductor: Conductor) -> Iterator[Daemon]:
    running = Daemon(conductor, command="dev")
    yield running
    running.stop_now()


@pytest.fixture(scope="module")
def edge(dev: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    running = Edge(tmp_path_factory.mktemp("edge"), dev.viewer[1])
    yield running
    running.close()


def url(daemon: Daemon, target: str) -> str:
    return f"http://127.0.0.1:{daemon.viewer[1]}{target}"


def ok_count(daemon: Daemon) -> float:
    return daemon.metric("sssrd_requests_total", code="2xx", outcome="ok")


def test_closed_loop_reuses_its_connections_and_matches_the_daemon(dev, tmp_path):
    before = ok_count(dev)
    report, done = run_loadtest(
        tmp_path, url(dev, STREAM), "--concurrency", "4", "--requests", "20"
    )
    assert report["requests"] == {"sent": 20, "completed": 20, "ok": 20, "failed": 0}
    assert report["connections"] == 4  # keep-alive: one connection per user
    assert ok_count(dev) - before == 20
    latency = report["latency_ms"]
    assert latency["ttfb"]["count"] == latency["first_body_byte"]["count"] == 20
    assert latency["chunk_gap"]["count"] >= 20  # paced lines arrive as pieces of their own
    assert latency["chunk_gap"]["p50"] >= 15  # ...20 ms apart
    assert latency["total"]["min"] >= 40
    assert report["status"] == {"2xx": 20}
    assert done.stderr == ""  # no terminal: no progress line
    assert "time to first byte" in done.stdout and "errors: none" in done.stdout


def run_on_a_terminal(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """The report, and what the command drew on its terminal (stderr is a pty)."""
    leader, follower = pty.openpty()
    seen = bytearray()

    def drain() -> None:
        with contextlib.suppress(OSError):  # EIO once the command's end of the pty closes
            while piece := os.read(leader, 4096):
                seen.extend(piece)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        report, _ = run_loadtest(tmp_path, *args, stderr=follower)
    finally:
        os.close(follower)
        reader.join(10)
        os.close(leader)
    return report, seen.decode(errors="replace")


def test_open_loop_keeps_its_schedule_while_responses_are_slow(dev, tmp_path):
    rate, seconds = 40, 2
    report, terminal = run_on_a_terminal(
        tmp_path, url(dev, "/?lines=2&delay_ms=150"), "--rate", str(rate), "--duration", "2"
    )
    # Arrival i is due at i / rate: exactly rate * duration arrivals, however busy the machine.
    assert report["requests"]["sent"] == report["requests"]["ok"] == rate * seconds
    assert sum(second["sent"] for second in report["timeline"]) == rate * seconds
    # A closed loop would have waited ~300 ms per response; the open loop ran them side by side.
    assert report["connections"] >= 4  # the rate it kept is bench/loadtest.py's to measure
    assert report["latency_ms"]["total"]["min"] >= 250
    assert "in flight" in terminal and "TTFB p50" in terminal


def test_posts_with_a_body_keep_their_framing_and_templates_vary_the_path(dev, tmp_path):
    # Three POSTs on one keep-alive connection: a body framed wrongly would garble the next.
    report, _ = run_loadtest(
        tmp_path,
        url(dev, "/tpl/{n}?lines=0&r={rand:7-7}"),
        *("-X", "POST", "--data", "hello", "-H", "X-Load: yes", "--requests", "3"),
    )
    assert (report["requests"]["ok"], report["connections"]) == (3, 1)
    for number in range(3):
        line = dev.access(path=f"/tpl/{number}")
        assert (line["method"], line["status"], line["outcome"]) == ("POST", 200, "ok")


def test_ctrl_c_stops_the_arrivals_lets_requests_finish_and_reports(dev, tmp_path):
    before = ok_count(dev)
    report_path = tmp_path / "interrupted.json"
    argv = loadtest_argv(url(dev, STREAM), "--rate", "20", "--duration", "60")
    command = subprocess.Popen(
        [*argv, "--json", str(report_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    wait_for(lambda: ok_count(dev) - before >= 3, what="the first responses")
    command.send_signal(signal.SIGINT)
    command.communicate(timeout=30)
    assert command.returncode == 0
    report = json.loads(report_path.read_text())
    served = ok_count(dev) - before
    assert report["requests"]["sent"] == report["requests"]["ok"] == served  # none cut off
    assert 3 <= served < 20 * 60


def test_a_chunked_body_cut_by_a_dying_lambda_is_truncated(dev, conductor, tmp_path):
    conductor.release("lt-abort:close")  # the scenario dies mid-body as soon as it is asked
    report, _ = run_loadtest(
        tmp_path, url(dev, "/?scenario=abort_mid_body&tag=lt-abort"), "--requests", "3"
    )
    assert report["requests"]["ok"] == 0
    assert report["errors"]["truncated"] == 3
    assert report["status"] == {"2xx": 3}  # the head said 200: only the framing tells
    assert {sample["kind"] for sample in report["error_samples"]} == {"truncated"}


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[Misbehaving]:
    server = Misbehaving()
    yield server
    server.close()


def test_failures_are_classified_by_kind(misbehaving, tmp_path):
    behaviours = ["chunked_cut", "short_length", "reset", "silent", "close", "garbage"]
    report, _ = run_loadtest(
        tmp_path,
        *(misbehaving.url(behaviour) for behaviour in behaviours),
        *("--requests", "18", "--concurrency", "6", "--timeout", "0.5"),
    )
    assert report["requests"] == {"sent": 18, "completed": 18, "ok": 0, "failed": 18}
    failed = {kind: count for kind, count in report["errors"].items() if count}
    # A cut chunked body and a short Content-Length are both truncated, never success.
    assert failed == {"truncated": 6, "reset": 3, "timeout": 3, "closed": 3, "protocol": 3}


def test_a_request_lost_to_a_stale_keep_alive_connection_is_sent_again(misbehaving, tmp_path):
    report, _ = run_loadtest(tmp_path, misbehaving.url("stale_keepalive"), "--requests", "4")
    assert report["requests"] == {"sent": 4, "completed": 4, "ok": 4, "failed": 0}
    assert report["connections"] == 4  # each second request on a connection went to a new one


def test_a_refused_connection_is_a_connect_error(tmp_path):
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        report, _ = run_loadtest(
            tmp_path, f"http://127.0.0.1:{bound.getsockname()[1]}/", "--requests", "2"
        )
    assert report["requests"]["sent"] == 0
    assert {k: n for k, n in report["errors"].items() if n} == {"connect": 2}


@pytest.fixture(scope="module")
def edge_run(edge: Edge, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """8 requests through the TLS edge: per POP, 2 hits, 1 miss and 1 edge 503 per cycle."""
    workdir = tmp_path_factory.mktemp("edge-run")
    urls = workdir / "urls.txt"
    urls.write_text(
        "# comments and blank lines are skipped\n\n"
        + "\n".join(
            edge.url(target)
            for target in (
                "/?lines=1&delay_ms=0&pop=LHR62-C1&cache=Hit",
                "/?lines=1&delay_ms=0&pop=FRA56-P4&cache=Miss",
                "/?lines=1&delay_ms=0&pop=LHR62-C1&cache=Hit",
                "/fail?pop=LHR62-C1&cache=Error",
            )
        )
    )
    html = workdir / "report.html"
    report, done = run_loadtest(
        workdir,
        *("--urls", str(urls), "--requests", "8", "--cacert", str(edge.cafile)),
        *("--connect-to", f"127.0.0.1:{edge.port}", "--html", str(html)),
    )
    assert "per CloudFront POP" in done.stdout
    return report, html


def test_tls_edge_results_are_aggregated_per_pop(edge_run):
    report, _ = edge_run
    assert report["target"]["tls"] and report["target"]["verify"]
    assert report["latency_ms"]["tls"]["count"] == report["connections"] >= 1
    pops = {pop["pop"]: pop for pop in report["pops"]}
    assert set(pops) == {"LHR62-C1", "FRA56-P4"}
    lhr, fra = pops["LHR62-C1"], pops["FRA56-P4"]
    assert (lhr["requests"], lhr["ok"], lhr["errors"]) == (6, 4, {"http_5xx": 2})
    assert lhr["cache"] == {"Hit from cloudfront": 4, "Error from cloudfront": 2}
    assert len(lhr["failed_cf_ids"]) == 2 and all(
        re.fullmatch(r"[0-9a-f-]{36}", i) for i in lhr["failed_cf_ids"]
    )
    assert (fra["requests"], fra["ok"], fra["errors"], fra["cache"]) == (
        2,
        2,
        {},
        {"Miss from cloudfront": 2},
    )
    assert lhr["ttfb_ms"]["count"] == 6 and fra["total_ms"]["count"] == 2
    assert report["errors"]["http_5xx"] == 2 and report["status"] == {"2xx": 6, "5xx": 2}


def test_json_report_follows_its_documented_schema(edge_run):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(edge_run[0], schema, cls=jsonschema.Draft202012Validator)
    assert schema["$defs"]["error_kind"]["enum"] == [kind.value for kind in ErrorKind]


def test_html_report_draws_its_charts_in_chromium_without_the_network(edge_run, tmp_path):
    _, html = edge_run
    markup = re.sub(r"<script[^>]*>.*?</script>", "", html.read_text(), flags=re.S)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup)  # nothing to fetch
    dom = subprocess.run(
        [
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # the page must need no network
            "--dump-dom",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for chart in ("ttfb-histogram", "chunk-gap-histogram", "latency-over-time"):
        drawn = re.search(rf'id="{chart}".*?class="main-svg".*?class="trace scatter', dom, re.S)
        assert drawn, f"{chart} not drawn"
    errors_marked = re.search(r'id="latency-over-time".*?error: http_5xx', dom, re.S)
    assert errors_marked
    pop_rows = re.findall(r"<tr><td>(LHR62-C1|FRA56-P4)</td>", dom)
    assert sorted(pop_rows) == ["FRA56-P4", "LHR62-C1"]


def test_certificates_are_verified_unless_insecure_is_asked(edge, tmp_path):
    common = ("--requests", "2", "--connect-to", f"127.0.0.1:{edge.port}")
    report, _ = run_loadtest(tmp_path, edge.url("/?lines=0"), *common)
    assert {k: n for k, n in report["errors"].items() if n} == {"tls": 2}
    report, _ = run_loadtest(tmp_path, edge.url("/?lines=0"), *common, "--insecure")
    assert report["requests"]["ok"] == 2 and not report["target"]["verify"]


def test_missing_libraries_name_the_extra_in_one_line():
    blocked = "import sys; sys.modules['plotly'] = None; from sssrd.cli import main; "
    done = subprocess.run(
        [sys.executable, "-c", blocked + "sys.exit(main(['loadtest', 'http://127.0.0.1:9/']))"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "sssrd loadtest: needs the loadtest extra (missing plotly): pip install 'sssrd[loadtest]'"
    ]


def test_bad_options_are_refused_before_anything_connects():
    done = subprocess.run(
        loadtest_argv("http://h/", "-H", "X-Split: a\r\nb: c"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "control characters" in done.stderr
