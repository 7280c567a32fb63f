"""The four scenarios of issue 4; each takes running processes and returns plain result rows.

rendezvous: h2load --h1 against sssrd (fake Lambda calling back 10 x 2 KiB) while a probe client
times single requests; held: RSS growth of a fresh sssrd per stream waiting on a callback that
never comes; bulk: one large body through every peer, interleaved by round; latency: timestamped
2 KiB chunks with 0-10 ms gaps, idle (one stream) and under load (many streams at once).
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import resource
import statistics
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import clients
from bench.procs import (
    Process,
    Sssrd,
    machine_busy_seconds,
    start_fake,
    start_poc,
    start_sssrd,
)
from bench.wire import Workload

Row = dict[str, Any]
NAN = float("nan")
SMALL_TARGET = "/small"
PROBE_LIMIT = 100_000
PROBE_SHARE = 100  # one probe connection per this many connections
H2LOAD_TIMEOUT = 300.0
BULK_FRAMINGS = ("chunked", "length")
QUIET_CHECKS = 100
QUIET_INTERVAL = 0.3  # seconds
QUIET_CPU = 0.01  # seconds of CPU per interval that count as idle (one clock tick)


@dataclass
class Peer:
    """Something a client can send requests to; `process` is whose CPU counts (none: direct)."""

    name: str
    address: clients.Address
    process: Process | None = None
    sssrd: Sssrd | None = None

    def cpu(self) -> float:
        return self.process.cpu() if self.process else 0.0

    def bytes_by_path(self) -> dict[str, float]:
        if self.sssrd is None:
            return {}
        samples = self.sssrd.metrics()
        return {
            path: samples.get(f'sssrd_body_bytes_total{{path="{path}"}}', 0.0)
            for path in ("splice", "copy")
        }


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


# -- rendezvous ---------------------------------------------------------------------------------

H2LOAD_PATTERNS = {
    "req_per_s": r"finished in [\d.]+\w+, ([\d.]+) req/s",
    "done": r"requests: \d+ total, \d+ started, (\d+) done",
    "errored": r"(\d+) errored",
    "timeout": r"(\d+) timeout",
    "status_2xx": r"status codes: (\d+) 2xx",
}


def parse_h2load(output: str) -> dict[str, float]:
    parsed = {}
    for key, pattern in H2LOAD_PATTERNS.items():
        match = re.search(pattern, output)
        parsed[key] = float(match.group(1)) if match else float("nan")
    return parsed


def run_h2load(address: clients.Address, connections: int, requests: int, timeout: float) -> str:
    url = f"http://{address[0]}:{address[1]}{SMALL_TARGET}"
    argv = ["h2load", "--h1", "-c", str(connections), "-n", str(requests), "-t", "1", url]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout).stdout
    except subprocess.TimeoutExpired as expired:
        return (expired.stdout or b"").decode(errors="replace") if expired.stdout else ""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rendezvous(peer: Peer, fake_process: Process, connections: int, requests: int) -> Row:
    """`connections` in all: h2load's, plus one probe per 100 timing each request's first byte.

    Probe connections keep requesting until h2load is done; their requests count in the CPU
    per request and in the failures, not in h2load's req/s.
    """
    assert peer.process is not None, f"{peer.name} has no process to measure"
    probes = max(1, connections // PROBE_SHARE)
    stop = threading.Event()
    timings: list[clients.Timing] = []
    threads = [
        threading.Thread(
            target=lambda: timings.extend(
                clients.probe_until(peer.address, SMALL_TARGET, stop, PROBE_LIMIT)
            )
        )
        for _ in range(probes)
    ]
    peer_cpu, fake_cpu, h2load_cpu = peer.cpu(), fake_process.cpu(), children_cpu()
    peer_system = peer.process.system_cpu()
    machine_busy = machine_busy_seconds()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    output = run_h2load(peer.address, connections - probes, requests, H2LOAD_TIMEOUT)
    stop.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    peer_cpu = peer.cpu() - peer_cpu
    peer_system = peer.process.system_cpu() - peer_system
    fake_cpu = fake_process.cpu() - fake_cpu
    h2load_cpu = children_cpu() - h2load_cpu
    machine_busy = machine_busy_seconds() - machine_busy
    parsed = parse_h2load(output)
    served = parsed["done"] + len(timings)
    ttfbs = [timing.ttfb * 1000 for timing in timings if timing.status == 200]
    probe_failed = sum(timing.status != 200 for timing in timings)
    row = {
        "peer": peer.name,
        "clients": connections,
        "requests": requests,
        **parsed,
        "failed": requests - parsed["status_2xx"] + probe_failed,
        "probe_requests": len(timings),
        "ttfb_p50_ms": percentile(ttfbs, 0.50),
        "ttfb_p99_ms": percentile(ttfbs, 0.99),
        "cpu_ms_per_request": peer_cpu / served * 1000 if served else NAN,
        "kernel_share": peer_system / peer_cpu if peer_cpu else NAN,
        "peer_cores": peer_cpu / wall,
        "fake_cores": fake_cpu / wall,
        "h2load_cores": h2load_cpu / wall,
        "machine_cores": machine_busy / wall,
    }
    row["bottleneck"] = bottleneck(row)
    return row


def bottleneck(row: Row) -> str:
    """Which process saturated: the peer (one event loop: one core), the fake (GIL: about one
    core), or the machine (its two cores, shared with the clients and anything else running)."""
    if row["peer_cores"] >= 0.9:
        return str(row["peer"])
    if row["fake_cores"] >= 0.9:
        return "fake lambda"
    if row["machine_cores"] >= 1.8:
        return "machine (2 cores)"
    return "none (latency-bound)"


def warm_up(peer: Peer, requests: int = 300) -> None:
    """Fill caches, pools and the invoke client's connections before anything is measured."""
    run_h2load(peer.address, 20, requests, timeout=60)


# -- held streams -------------------------------------------------------------------------------


def wait_for_metric(sssrd: Sssrd, name: str, at_least: float, timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        samples = sssrd.metrics()
        if samples.get(name, 0.0) >= at_least:
            return samples
        if time.monotonic() > deadline:
            raise RuntimeError(f"{sssrd.name}: {name} = {samples.get(name)} < {at_least}")
        time.sleep(0.1)


def held_streams(
    workdir: Path, count: int, baseline: int = 50, poc_source: Path | None = None
) -> Row:
    """RSS growth per viewer waiting on a callback that never comes, in a fresh sssrd (or, given
    `poc_source`, a fresh proof of concept).

    `baseline` streams are held first, so one-time costs (first connection, lazy imports)
    land before the first RSS reading, not in the per-stream figure. The proof of concept
    answers 500 after 30 s, so its streams must all be held and measured well within that.
    """
    with contextlib.ExitStack() as stack:
        fake = start_fake(stack, workdir, behaviour="never")
        if poc_source is None:
            sssrd = start_sssrd(
                stack,
                workdir,
                "sssrd-held",
                fake,
                callback_timeout="600",
                max_pending=str(count + baseline + 1000),
            )
            process, address = sssrd.process, sssrd.viewer
            settled = functools.partial(settle, sssrd)
        else:
            process = start_poc(stack, workdir, fake, poc_source)
            address = ("127.0.0.1", process.port)
            settled = functools.partial(wait_until_idle, process)
        held = clients.hold_requests(address, baseline)
        stack.callback(clients.release, held)
        settled(baseline)
        rss_before = process.rss()
        started = time.perf_counter()
        held += clients.hold_requests(address, count)
        settled(baseline + count)
        admitted = time.perf_counter() - started
        rss_after = process.rss()
    return {
        "peer": process.name if poc_source else "sssrd",
        "streams": count,
        "rss_before_mib": rss_before / 2**20,
        "rss_after_mib": rss_after / 2**20,
        "kib_per_stream": (rss_after - rss_before) / count / 1024,
        "seconds_to_hold": admitted,
    }


def settle(sssrd: Sssrd, pending: int) -> None:
    """Wait until sssrd holds `pending` requests and has gone quiet (invokes all answered)."""
    wait_for_metric(sssrd, "sssrd_pending_callbacks", pending, timeout=120)
    wait_until_idle(sssrd.process, pending)


def wait_until_idle(process: Process, pending: int) -> None:
    """Wait until `process` has gone quiet (every invoke for its `pending` requests sent)."""
    for _ in range(QUIET_CHECKS):
        before = process.cpu()
        time.sleep(QUIET_INTERVAL)
        if process.cpu() - before <= QUIET_CPU:
            return
    raise RuntimeError(f"{process.name} still busy holding {pending} idle requests")


# -- bulk ---------------------------------------------------------------------------------------


def rotated(peers: Sequence[Peer], by: int) -> list[Peer]:
    by %= len(peers)
    return [*peers[by:], *peers[:by]]


def bulk_once(peer: Peer, framing: str, size: int) -> Row:
    target = Workload("bulk", framing, size).target()
    paths_before, cpu_before = peer.bytes_by_path(), peer.cpu()
    transfer = clients.curl_transfer(peer.address, target)
    cpu = peer.cpu() - cpu_before
    paths_after = peer.bytes_by_path()
    moved = {path: paths_after[path] - paths_before[path] for path in paths_after}
    ok = transfer.status == 200 and transfer.bytes == size and transfer.curl_exit == 0
    failure = f"status {transfer.status}, {transfer.bytes} of {size} bytes"
    return {
        "ok": ok,
        "failure": None if ok else f"{failure}, curl exit {transfer.curl_exit}",
        "mb_per_s": transfer.bytes / transfer.seconds / 1e6 if ok else NAN,
        "cpu_s_per_gb": cpu / (size / 1e9) if ok and peer.process else NAN,
        "splice_share": moved["splice"] / sum(moved.values()) if sum(moved.values()) else None,
    }


def bulk(peers: Sequence[Peer], size: int, rounds: int) -> list[Row]:
    """Every peer moves a `size` body per framing each round; peers rotate so drift is shared.

    Figures are medians over the rounds that delivered the whole body; a failed transfer is
    reported (`ok`, `failure`), never averaged in.
    """
    samples: dict[tuple[str, str], list[Row]] = {}
    for round_ in range(rounds):
        for peer in rotated(peers, round_):
            for framing in BULK_FRAMINGS:
                samples.setdefault((peer.name, framing), []).append(bulk_once(peer, framing, size))
    rows = [bulk_row(name, framing, size, runs) for (name, framing), runs in samples.items()]
    add_ratios(rows, "mb_per_s", by=("framing",))
    return sorted(rows, key=lambda row: (row["framing"], -nan_to_zero(row["mb_per_s"])))


def bulk_row(name: str, framing: str, size: int, runs: list[Row]) -> Row:
    delivered = [run for run in runs if run["ok"]]
    shares = [run["splice_share"] for run in runs if run["splice_share"] is not None]
    return {
        "peer": name,
        "framing": framing,
        "bytes": size,
        "rounds": len(runs),
        "ok": len(delivered) == len(runs),
        "failure": next((run["failure"] for run in runs if not run["ok"]), None),
        "mb_per_s": median_or_nan(run["mb_per_s"] for run in delivered),
        "cpu_s_per_gb": median_or_nan(run["cpu_s_per_gb"] for run in delivered),
        "splice_share": statistics.median(shares) if shares else None,
    }


def median_or_nan(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else NAN


def nan_to_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def add_ratios(rows: list[Row], key: str, by: tuple[str, ...]) -> None:
    """Each row's `key` divided by direct's and HAProxy's in the same group."""
    for row in rows:
        group = [other for other in rows if all(other[k] == row[k] for k in by)]
        for reference in ("direct", "haproxy"):
            base = next((other[key] for other in group if other["peer"] == reference), None)
            if base is None:  # the reference did not run: no ratio, and no verdict on it
                row[f"vs_{reference}"] = None
            else:  # it ran: a broken reference gives a broken ratio, never a missing one
                row[f"vs_{reference}"] = row[key] / base if base and not math.isnan(base) else NAN


# -- chunk latency ------------------------------------------------------------------------------


def latency_target(seed: int) -> str:
    return Workload.from_target("/latency", f"chunks=20&seed={seed}&max_gap_ms=10").target()


def chunk_latency(
    peers: Sequence[Peer], idle_streams: int, load_streams: int, load_waves: int
) -> list[Row]:
    """Per-chunk latency (send stamp to arrival) idle and under load, added over direct.

    A malformed or cut stream is counted under `broken` (with its first error) and its chunks
    are left out; it does not stop the run.
    """
    idle: dict[str, list[int]] = {peer.name: [] for peer in peers}
    loaded: dict[str, list[int]] = {peer.name: [] for peer in peers}
    broken: dict[str, list[str]] = {peer.name: [] for peer in peers}
    for stream in range(idle_streams):
        for peer in rotated(peers, stream):
            try:
                idle[peer.name] += clients.chunk_latencies(peer.address, latency_target(stream))
            except clients.BrokenStream as error:
                broken[peer.name].append(str(error))
    for wave in range(load_waves):
        targets = [latency_target(10_000 * (wave + 1) + i) for i in range(load_streams)]
        for peer in rotated(peers, wave):
            for stream in clients.concurrent_chunk_latencies(peer.address, targets):
                if isinstance(stream, clients.BrokenStream):
                    broken[peer.name].append(str(stream))
                else:
                    loaded[peer.name] += stream
    rows = [
        latency_row(peer.name, idle[peer.name], loaded[peer.name], broken[peer.name])
        for peer in peers
    ]
    direct = next((row for row in rows if row["peer"] == "direct"), None)
    for row in rows:
        for key in ("idle_p50_us", "idle_p99_us", "load_p50_us", "load_p99_us"):
            row[f"added_{key}"] = row[key] - direct[key] if direct else None
    return rows


def micros(nanoseconds: list[int], fraction: float) -> float:
    return percentile(nanoseconds, fraction) / 1000


def latency_row(name: str, idle: list[int], loaded: list[int], broken: list[str]) -> Row:
    return {
        "peer": name,
        "broken_streams": len(broken),
        "first_break": broken[0] if broken else None,
        "idle_chunks": len(idle),
        "idle_p50_us": micros(idle, 0.50),
        "idle_p99_us": micros(idle, 0.99),
        "load_chunks": len(loaded),
        "load_p50_us": micros(loaded, 0.50),
        "load_p99_us": micros(loaded, 0.99),
    }
