"""The four scenarios of issue 4; each takes running processes and returns plain result rows.

rendezvous: h2load --h1 against sssrd (fake Lambda calling back 10 x 2 KiB, on a kept-alive
connection or a fresh one per request) while a probe client times single requests; held: RSS
growth of a fresh sssrd per stream waiting on a callback that never comes, and the CPU it spends
per second holding them; bulk: one large body through every peer; latency: timestamped 2 KiB
chunks with 0-10 ms gaps, idle (one stream) and under load (many streams at once).

Every scenario runs in rounds, the peers taking turns within each so drift on a shared machine
lands on all of them alike; a row is the median over its rounds, with the spread (lowest,
highest) of its main figures, and ratios are taken within a round before their median.
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
# How the bench Lambda calls sssrd back: one kept-alive connection per worker thread (a warm
# helper's way), or a fresh connection per request. The proof of concept's protocol always
# takes a fresh one (its proxy fails when they are reused), so its rows are "fresh".
CALLBACK_STYLES = ("kept", "fresh")
SEED_PEERS = ("poc", "sssrd-compat")
IDLE_SECONDS = 5.0  # how long held streams sit idle while their holder's CPU is read
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
        """To the nanosecond: a quick bulk round is a few clock ticks of CPU (10 ms each)."""
        return self.process.run_time() if self.process else 0.0

    def bytes_by_path(self) -> dict[str, float]:
        if self.sssrd is None:
            return {}
        samples = self.sssrd.metrics()
        return {
            path: samples.get(f'sssrd_body_bytes_total{{path="{path}"}}', 0.0)
            for path in ("splice", "copy")
        }


def small_target(style: str) -> str:
    return SMALL_TARGET if style == "kept" else f"{SMALL_TARGET}?callbacks={style}"


def spread(values: Iterable[float]) -> tuple[float, float] | None:
    """(lowest, highest) of the measured values; None when none was."""
    measured = [value for value in values if not math.isnan(value)]
    return (min(measured), max(measured)) if measured else None


def combine(runs: Sequence[Row], spreads: Sequence[str], sums: Sequence[str] = ()) -> Row:
    """One row for several rounds of the same measurement: every number the median of its
    rounds (`sums` added up instead), `<key>_spread` for each of `spreads`, and `rounds`."""
    row = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values = [run[key] for run in runs if isinstance(run.get(key), int | float)]
            if key in sums:
                row[key] = sum(values)
            else:
                row[key] = median_or_nan(float(value) for value in values)
    for key in spreads:
        row[f"{key}_spread"] = spread(
            float(run[key]) for run in runs if isinstance(run.get(key), int | float)
        )
    row["rounds"] = len(runs)
    return row


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


def run_h2load(
    address: clients.Address,
    connections: int,
    requests: int,
    timeout: float,
    target: str = SMALL_TARGET,
) -> str:
    url = f"http://{address[0]}:{address[1]}{target}"
    argv = ["h2load", "--h1", "-c", str(connections), "-n", str(requests), "-t", "1", url]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout).stdout
    except subprocess.TimeoutExpired as expired:
        return (expired.stdout or b"").decode(errors="replace") if expired.stdout else ""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rendezvous(
    peer: Peer, fake_process: Process, connections: int, requests: int, style: str = "kept"
) -> Row:
    """`connections` in all: h2load's, plus one probe per 100 timing each request's first byte;
    the Lambda calls back in `style` (CALLBACK_STYLES).

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
                clients.probe_until(peer.address, small_target(style), stop, PROBE_LIMIT)
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
    output = run_h2load(
        peer.address, connections - probes, requests, H2LOAD_TIMEOUT, small_target(style)
    )
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
        "callbacks": style,
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


def rendezvous_rounds(
    peers: Sequence[Peer],
    fake_process: Process,
    sizes: Sequence[tuple[int, int]],
    rounds: int,
    styles: Sequence[str] = CALLBACK_STYLES,
) -> list[Row]:
    """Every peer, size and callback style, `rounds` times, the peers rotating within a round.
    The seed protocol's peers run once per size and round (their callbacks are always fresh).
    Per round, each sssrd row's CPU per request is divided by the proof of concept's
    (`cpu_vs_poc`) and a sssrd-w2 row's by sssrd-w1's (`cpu_vs_w1`), both of the same round."""
    samples: dict[tuple[str, int, str], list[Row]] = {}
    for round_ in range(rounds):
        for clients_, requests in sizes:
            done: list[Row] = []
            for style in styles:
                for peer in rotated(peers, round_):
                    if peer.name in SEED_PEERS and style != "fresh" and "fresh" in styles:
                        continue
                    row_style = "fresh" if peer.name in SEED_PEERS else style
                    row = rendezvous(peer, fake_process, clients_, requests, row_style)
                    done.append(row)
                    samples.setdefault((peer.name, clients_, row_style), []).append(row)
            add_round_ratios(done)
    rows = [
        combine(runs, ("cpu_ms_per_request", "req_per_s", "cpu_vs_poc", "cpu_vs_w1"), ("failed",))
        for runs in samples.values()
    ]
    return sorted(rows, key=lambda row: (row["clients"], row["callbacks"], row["peer"]))


def add_round_ratios(rows: list[Row]) -> None:
    """CPU per request against the proof of concept and against one worker, within a round."""
    poc = next((row for row in rows if row["peer"] == "poc"), None)
    for row in rows:
        if poc is not None and row["peer"] != "poc":
            row["cpu_vs_poc"] = row["cpu_ms_per_request"] / poc["cpu_ms_per_request"]
        one = find_row(rows, peer="sssrd-w1", callbacks=row["callbacks"])
        if one is not None and row["peer"] == "sssrd-w2":
            row["cpu_vs_w1"] = row["cpu_ms_per_request"] / one["cpu_ms_per_request"]


def find_row(rows: Sequence[Row], **match: Any) -> Row | None:
    return next((row for row in rows if all(row.get(k) == v for k, v in match.items())), None)


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
    workdir: Path,
    count: int,
    baseline: int = 50,
    poc_source: Path | None = None,
    idle_seconds: float = IDLE_SECONDS,
) -> Row:
    """RSS growth per viewer waiting on a callback that never comes, in a fresh sssrd (or, given
    `poc_source`, a fresh proof of concept), then the CPU per second it spends holding them all
    idle for `idle_seconds`.

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
        cpu_before = process.run_time()
        time.sleep(idle_seconds)  # the quiet instance's own work: timers, watchdog, scrapes
        idle_cpu = process.run_time() - cpu_before
    return {
        "peer": process.name if poc_source else "sssrd",
        "streams": count,
        "rss_before_mib": rss_before / 2**20,
        "rss_after_mib": rss_after / 2**20,
        "kib_per_stream": (rss_after - rss_before) / count / 1024,
        "seconds_to_hold": admitted,
        "idle_cpu_ms_per_s": idle_cpu / idle_seconds * 1000,
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
        done: list[Row] = []
        for peer in rotated(peers, round_):
            for framing in BULK_FRAMINGS:
                run = {"peer": peer.name, "framing": framing, **bulk_once(peer, framing, size)}
                done.append(run)
                samples.setdefault((peer.name, framing), []).append(run)
        add_ratios(done, "mb_per_s", by=("framing",))
        add_ratios(done, "cpu_s_per_gb", by=("framing",), prefix="cpu_")
    rows = [bulk_row(name, framing, size, runs) for (name, framing), runs in samples.items()]
    return sorted(rows, key=lambda row: (row["framing"], -nan_to_zero(row["mb_per_s"])))


def bulk_row(name: str, framing: str, size: int, runs: list[Row]) -> Row:
    """The median of the delivered rounds; each ratio is the median of the rounds' ratios."""
    delivered = [run for run in runs if run["ok"]]
    shares = [run["splice_share"] for run in runs if run["splice_share"] is not None]
    ratios = {
        key: median_or_nan(run[key] for run in delivered) if runs[0][key] is not None else None
        for key in ("vs_direct", "vs_haproxy", "cpu_vs_haproxy")
    }
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
        **ratios,
        "mb_per_s_spread": spread(run["mb_per_s"] for run in delivered),
        "vs_haproxy_spread": spread(
            run["vs_haproxy"] for run in delivered if run["vs_haproxy"] is not None
        ),
    }


def median_or_nan(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else NAN


def nan_to_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def add_ratios(rows: list[Row], key: str, by: tuple[str, ...], prefix: str = "") -> None:
    """Each row's `key` divided by direct's and HAProxy's in the same group (`<prefix>vs_...`)."""
    for row in rows:
        group = [other for other in rows if all(other[k] == row[k] for k in by)]
        for reference in ("direct", "haproxy"):
            base = next((other[key] for other in group if other["peer"] == reference), None)
            name = f"{prefix}vs_{reference}"
            if base is None:  # the reference did not run: no ratio, and no verdict on it
                row[name] = None
            else:  # it ran: a broken reference gives a broken ratio, never a missing one
                row[name] = row[key] / base if base and not math.isnan(base) else NAN


# -- chunk latency ------------------------------------------------------------------------------


def latency_target(seed: int) -> str:
    return Workload.from_target("/latency", f"chunks=20&seed={seed}&max_gap_ms=10").target()


def chunk_latency(
    peers: Sequence[Peer], idle_streams: int, load_streams: int, load_waves: int, rounds: int = 1
) -> list[Row]:
    """Per-chunk latency (send stamp to arrival) idle and under load, added over direct, in
    `rounds` rounds: percentiles are a round's, a row holds their medians, the spread of the
    idle p50 added and the median of its per-round ratio to HAProxy's (`added_vs_haproxy`).

    A malformed or cut stream is counted under `broken` (with its first error) and its chunks
    are left out; it does not stop the run.
    """
    samples: dict[str, list[Row]] = {peer.name: [] for peer in peers}
    for round_ in range(rounds):
        rows = latency_round(rotated(peers, round_), idle_streams, load_streams, load_waves, round_)
        haproxy = find_row(rows, peer="haproxy")
        for row in rows:
            if haproxy is not None:
                base = haproxy["added_idle_p50_us"]
                row["added_vs_haproxy"] = row["added_idle_p50_us"] / base if base else NAN
            samples[row["peer"]].append(row)
    sums = ("broken_streams", "idle_chunks", "load_chunks")
    return [
        combine(samples[peer.name], ("added_idle_p50_us", "added_vs_haproxy"), sums)
        for peer in peers
    ]


def latency_round(
    peers: Sequence[Peer], idle_streams: int, load_streams: int, load_waves: int, round_: int
) -> list[Row]:
    idle: dict[str, list[int]] = {peer.name: [] for peer in peers}
    loaded: dict[str, list[int]] = {peer.name: [] for peer in peers}
    broken: dict[str, list[str]] = {peer.name: [] for peer in peers}
    for stream in range(idle_streams):
        seed = 1000 * round_ + stream
        for peer in rotated(peers, stream):
            try:
                idle[peer.name] += clients.chunk_latencies(peer.address, latency_target(seed))
            except clients.BrokenStream as error:
                broken[peer.name].append(str(error))
    for wave in range(load_waves):
        first = 10_000 * (wave + 1) + 1_000_000 * round_
        targets = [latency_target(first + i) for i in range(load_streams)]
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
