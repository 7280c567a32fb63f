"""Smoke test of the benchmark suite's building blocks, so CI notices when bench/ breaks.

Starts the real processes the bench measures (fake Lambda, sssrd with the Lambda invoker, the
origin) and runs every scenario except h2load's for a second or two with tiny counts, checking
that every transfer and stream completes, through sssrd's expected body path, and the report
renders. No figure's size is asserted: timing goals live in bench/, not in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package

from bench import clients, invocation_types, report, scenarios
from bench.procs import start_fake
from bench.run import start_peers

pytestmark = pytest.mark.daemon

SMALL_BODY_BYTES = 10 * 2048


def test_bench_scenarios_complete_every_transfer_and_stream(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        fake = start_fake(stack, tmp_path, workers=8)
        peers = start_peers(stack, tmp_path, fake, ["sssrd", "direct"])
        sssrd = peers[0].sssrd
        assert sssrd is not None
        timings = clients.probe_until(sssrd.viewer, "/small", threading.Event(), limit=5)
        bulk = scenarios.bulk(peers, size=4 * 2**20, rounds=1)
        latency = scenarios.chunk_latency(peers, idle_streams=1, load_streams=3, load_waves=1)
    held = scenarios.held_streams(tmp_path, count=20, baseline=5, idle_seconds=0.2)

    assert [(t.status, t.body_bytes) for t in timings] == [(200, SMALL_BODY_BYTES)] * 5
    assert {(row["peer"], row["framing"]) for row in bulk} == {
        (peer, framing) for peer in ("sssrd", "direct") for framing in ("chunked", "length")
    }
    for row in bulk:  # every transfer whole, through either peer, with its figures
        assert (row["ok"], row["failure"], row["rounds"], row["bytes"]) == (True, None, 1, 4 << 20)
        assert row["mb_per_s"] > 0 and row["vs_direct"] > 0, row
        assert row["mb_per_s_spread"] == (row["mb_per_s"], row["mb_per_s"]), row
    spliced = {row["framing"]: row["splice_share"] for row in bulk if row["peer"] == "sssrd"}
    assert spliced["chunked"] == 0  # 64 KiB chunks are under SPLICE_MIN: copied
    assert spliced["length"] > 0.5, spliced  # a long Content-Length run is spliced
    assert all(math.isfinite(row["cpu_s_per_gb"]) for row in bulk if row["peer"] == "sssrd")
    by_peer = {row["peer"]: row for row in latency}
    for row in by_peer.values():
        assert (row["idle_chunks"], row["load_chunks"], row["broken_streams"]) == (20, 60, 0), row
    assert by_peer["direct"]["added_idle_p50_us"] == 0
    assert math.isfinite(by_peer["sssrd"]["added_idle_p50_us"])
    assert held["streams"] == 20 and math.isfinite(held["kib_per_stream"])
    assert held["idle_cpu_ms_per_s"] >= 0

    results = {
        "mode": "smoke",
        "started": "now",
        "machine": report.machine_details(),
        "bulk": bulk,
        "latency": latency,
        "held": [held],
    }
    results["targets"] = report.evaluate_targets(results)
    assert "## bulk" in report.render(results)
    verdicts = {row["verdict"] for row in results["targets"]}
    assert verdicts <= {"pass", "MISS", "not run"}  # no BROKEN: every stream above was whole


def test_bench_runs_the_proof_of_concept_and_sssrd_compat_against_one_fake(tmp_path: Path) -> None:
    """Both speak the seed protocol through the bench Lambda: each request gets its 10 chunks."""
    with contextlib.ExitStack() as stack:
        fake = start_fake(stack, tmp_path, workers=8)
        peers = start_peers(stack, tmp_path, fake, ["sssrd-compat", "poc"])
        answers = {
            peer.name: [
                (t.status, t.body_bytes)
                for t in clients.probe_until(peer.address, "/small", threading.Event(), limit=3)
            ]
            for peer in peers
        }
    assert answers == {name: [(200, SMALL_BODY_BYTES)] * 3 for name in ("sssrd-compat", "poc")}


def test_rounds_combine_into_medians_spreads_and_sums() -> None:
    runs = [
        {"peer": "sssrd", "cpu": 3.0, "failed": 1, "ok": True},
        {"peer": "sssrd", "cpu": 1.0, "failed": 0, "ok": True},
        {"peer": "sssrd", "cpu": 1.5, "failed": 2, "ok": True},
    ]
    row = scenarios.combine(runs, spreads=("cpu",), sums=("failed",))
    assert row == {
        "peer": "sssrd",
        "cpu": 1.5,  # the median, not the mean
        "cpu_spread": (1.0, 3.0),
        "failed": 3,
        "ok": True,
        "rounds": 3,
    }
    assert report.cell(row["cpu_spread"]) == "1.00..3.00"


def test_the_invocation_types_bench_measures_both_modes(tmp_path: Path) -> None:
    """bench/invocation_types.py at tiny counts: every row of both modes is measured, with the
    statuses each mode must give (Event's raising render waits for the 2 s deadline)."""
    arguments = argparse.Namespace(requests=10, concurrency=2, errors=1, held=2, hold_s=1.0)
    results = invocation_types.measure(arguments, tmp_path)
    event, synchronous = results["Event"], results["RequestResponse"]
    assert event["error_raise"]["status"] == 504
    assert event["error_report"]["status"] == synchronous["error_raise"]["status"] == 502
    assert event["throttled"]["status"] == synchronous["throttled"]["status"] == 503
    for figures in (event, synchronous):
        assert math.isfinite(figures["cpu"]["cpu_ms_per_request"])
        assert math.isfinite(figures["held"]["kib_per_held_render"])
    invocation_types.report(results, {"cpus": 2})
