"""Turning result rows into the printed table, the issue's targets (pass/miss) and JSON.

Targets and the seed's anchor figures are quoted from issues 4, 15 and 25; each is checked against
the row that answers it (sssrd with its default body path unless the target names another), and
the ratio targets against two rows of the same run. Machine details are collected here so every
JSON file says where its figures came from.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs

Row = dict[str, Any]
Results = dict[str, Any]


def first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not installed"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine_details() -> dict[str, str | int | None]:
    model = next(
        (
            line.partition(":")[2].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sssrd": first_line([str(Path(__file__).parents[1] / ".venv/bin/sssrd"), "version"]),
        "commit": first_line(
            ["git", "-C", str(Path(__file__).parents[1]), "describe", "--always", "--dirty"]
        ),
        "haproxy": first_line(["haproxy", "-v"]),
        "nginx": first_line(["nginx", "-v"]),
        "h2load": first_line(["h2load", "--version"]),
        "curl": first_line(["curl", "--version"]),
    }


class ForeignLoad:
    """CPU that processes outside this bench used while it ran (a shared machine's noise).

    Busy time of the whole machine from /proc/stat, minus this process's and its waited-for
    children's (every process the bench starts is reaped before `stop()`).
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.machine = procs.machine_busy_seconds()
        self.ours = own_cpu_seconds()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.started
        machine = procs.machine_busy_seconds() - self.machine
        ours = own_cpu_seconds() - self.ours
        return {
            "wall_seconds": wall,
            "bench_cores": ours / wall,
            "other_cores": max(0.0, machine - ours) / wall,
        }


def own_cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass(frozen=True)
class Target:
    """One goal from the issue: how to find the measured figure, and the bound it must meet."""

    goal: str
    anchor: str
    measure: Callable[[Results], float | None]
    passes: Callable[[float], bool]
    unit: str


def find(rows: Sequence[Row], **match: Any) -> Row | None:
    return next((row for row in rows if all(row.get(k) == v for k, v in match.items())), None)


def pick(results: Results, scenario: str, key: str, **match: Any) -> float | None:
    """The figure; None when it was not measured (the scenario, or the peer a ratio or
    difference is taken against, did not run), NaN when it ran and broke."""
    row = find(results.get(scenario, []), **match)
    if row is None:
        return None
    if row.get("ok") is False or row.get("broken_streams"):
        return float("nan")
    return None if row.get(key) is None else float(row[key])


def ratio(
    results: Results, scenario: str, key: str, of: str, to: str, **match: Any
) -> float | None:
    """pick() of peer `of` over pick() of peer `to` (same scenario, key and other match)."""
    mine = pick(results, scenario, key, peer=of, **match)
    theirs = pick(results, scenario, key, peer=to, **match)
    if mine is None or theirs is None:
        return None
    return mine / theirs if theirs else float("nan")


def over(mine: float | None, theirs: float | None) -> float | None:
    if mine is None or theirs is None:
        return None
    return mine / theirs if theirs else float("nan")


def cpu_vs_poc(peer: str, style: str) -> Callable[[Results], float | None]:
    """The median over rounds of a round's CPU per request over the proof of concept's."""
    return lambda r: pick(r, "rendezvous", "cpu_vs_poc", peer=peer, clients=200, callbacks=style)


def cpu_vs_w1(style: str) -> Callable[[Results], float | None]:
    return lambda r: pick(
        r, "rendezvous", "cpu_vs_w1", peer="sssrd-w2", clients=200, callbacks=style
    )


TARGETS = (
    Target(
        "CPU per request at C=200 <= 0.30 ms",
        "seed 0.64 ms",
        lambda r: pick(
            r, "rendezvous", "cpu_ms_per_request", peer="sssrd", clients=200, callbacks="kept"
        ),
        lambda v: v <= 0.30,
        "ms",
    ),
    Target(
        "CPU per request vs the proof of concept at C=200 <= 0.8x (goal 0.5x)",
        "1.32x (issue 15)",
        cpu_vs_poc("sssrd", "kept"),
        lambda v: v <= 0.8,
        "x poc",
    ),
    *(
        Target(
            f"CPU per request vs the proof of concept, one worker, {style} callbacks, C=200 "
            "<= 0.8x (goal 0.5x)",
            "0.87x bench, 1.02-1.10x independent (issue 25)",
            cpu_vs_poc("sssrd-w1", style),
            lambda v: v <= 0.8,
            "x poc",
        )
        for style in ("kept", "fresh")
    ),
    *(
        Target(
            f"CPU per request, workers 2 vs 1, {style} callbacks, C=200 <= 1.03x",
            "~1.10x (issue 25)",
            cpu_vs_w1(style),
            lambda v: v <= 1.03,
            "x w1",
        )
        for style in ("kept", "fresh")
    ),
    Target(
        "req/s vs the proof of concept at C=200 >= 1.5x",
        "0.76x (issue 15)",
        lambda r: over(
            pick(r, "rendezvous", "req_per_s", peer="sssrd", clients=200, callbacks="kept"),
            pick(r, "rendezvous", "req_per_s", peer="poc", clients=200),
        ),
        lambda v: v >= 1.5,
        "x poc",
    ),
    Target(
        "requests/s scaling, workers 2 vs 1 (same run) at C=200 >= 1.4x",
        "— (issue 15)",
        lambda r: ratio(
            r, "rendezvous", "req_per_s", "sssrd-w2", "sssrd-w1", clients=200, callbacks="kept"
        ),
        lambda v: v >= 1.4,
        "x w1",
    ),
    Target(
        "no failed requests at C=1000",
        "",
        lambda r: pick(r, "rendezvous", "failed", peer="sssrd", clients=1000, callbacks="kept"),
        lambda v: v == 0,
        "failed",
    ),
    Target(
        "RSS per held stream <= 6 KiB",
        "seed 17.9 KiB",
        lambda r: pick(r, "held", "kib_per_stream", peer="sssrd"),
        lambda v: v <= 6,
        "KiB",
    ),
    Target(
        "RSS per held stream vs the proof of concept <= 0.33x",
        "0.24x (issue 15)",
        lambda r: ratio(r, "held", "kib_per_stream", "sssrd", "poc"),
        lambda v: v <= 0.33,
        "x poc",
    ),
    Target(
        "bulk chunked >= 2x HAProxy",
        "HAProxy 2.6 ~0.32x direct",
        lambda r: pick(r, "bulk", "vs_haproxy", peer="sssrd", framing="chunked"),
        lambda v: v >= 2,
        "x HAProxy",
    ),
    Target(
        "bulk chunked MB/s vs HAProxy >= 1.0x",
        "0.94x (issue 25)",
        lambda r: pick(r, "bulk", "vs_haproxy", peer="sssrd", framing="chunked"),
        lambda v: v >= 1.0,
        "x HAProxy",
    ),
    Target(
        "bulk chunked CPU s/GB vs HAProxy <= 1.0x",
        "1.27x (issue 25)",
        lambda r: pick(r, "bulk", "cpu_vs_haproxy", peer="sssrd", framing="chunked"),
        lambda v: v <= 1.0,
        "x HAProxy",
    ),
    Target(
        "bulk chunked >= 0.6x direct",
        "",
        lambda r: pick(r, "bulk", "vs_direct", peer="sssrd", framing="chunked"),
        lambda v: v >= 0.6,
        "x direct",
    ),
    Target(
        "bulk chunked CPU <= 0.4 s/GB",
        "",
        lambda r: pick(r, "bulk", "cpu_s_per_gb", peer="sssrd", framing="chunked"),
        lambda v: v <= 0.4,
        "s/GB",
    ),
    Target(
        "chunk latency added p50 <= 60 us idle",
        "",
        lambda r: pick(r, "latency", "added_idle_p50_us", peer="sssrd"),
        lambda v: v <= 60,
        "us",
    ),
    Target(
        "chunk latency added p50 idle vs HAProxy <= 1.0x",
        "1.9-3.55x (issue 25)",
        lambda r: pick(r, "latency", "added_vs_haproxy", peer="sssrd"),
        lambda v: v <= 1.0,
        "x HAProxy",
    ),
)


def evaluate_targets(results: Results) -> list[Row]:
    rows = []
    for target in TARGETS:
        value = target.measure(results)
        measured = value is not None and not math.isnan(value)
        if value is None:
            verdict = "not run"
        elif not measured:
            verdict = "BROKEN"
        else:
            verdict = "pass" if target.passes(value) else "MISS"
        rows.append(
            {
                "target": target.goal,
                "measured": value if measured else None,
                "unit": target.unit,
                "anchor": target.anchor,
                "verdict": verdict,
            }
        )
    return rows


# -- printing -----------------------------------------------------------------------------------


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple | list):  # a spread: (lowest, highest)
        return "..".join(cell(item) for item in value)
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value)


def table(title: str, rows: Sequence[Row], columns: Sequence[tuple[str, str]]) -> str:
    """A fixed-width table of `columns` (key, heading) from `rows`; text left, numbers right."""
    cells = [[heading for _, heading in columns]]
    cells += [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    textual = [any(isinstance(row.get(key), str) for row in rows) for key, _ in columns]
    lines = [f"## {title}"]
    for number, line in enumerate(cells):
        justified = [
            text.ljust(width) if left else text.rjust(width)
            for text, width, left in zip(line, widths, textual, strict=True)
        ]
        lines.append("  ".join(justified).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


RENDEZVOUS_COLUMNS = (
    ("clients", "C"),
    ("callbacks", "callbacks"),
    ("peer", "peer"),
    ("rounds", "rounds"),
    ("requests", "requests"),
    ("req_per_s", "req/s"),
    ("failed", "failed"),
    ("ttfb_p50_ms", "TTFB p50 ms"),
    ("ttfb_p99_ms", "TTFB p99 ms"),
    ("probe_requests", "probed"),
    ("cpu_ms_per_request", "CPU ms/req"),
    ("cpu_ms_per_request_spread", "spread"),
    ("cpu_vs_poc", "CPU /poc"),
    ("cpu_vs_poc_spread", "spread"),
    ("cpu_vs_w1", "CPU /w1"),
    ("cpu_vs_w1_spread", "spread"),
    ("kernel_share", "kernel share"),
    ("peer_cores", "peer cores"),
    ("fake_cores", "fake cores"),
    ("h2load_cores", "h2load cores"),
    ("machine_cores", "machine cores"),
    ("bottleneck", "bottleneck"),
)
HELD_COLUMNS = (
    ("peer", "peer"),
    ("streams", "held streams"),
    ("rss_before_mib", "RSS before MiB"),
    ("rss_after_mib", "RSS after MiB"),
    ("kib_per_stream", "KiB/stream"),
    ("seconds_to_hold", "s to admit"),
    ("idle_cpu_ms_per_s", "idle CPU ms/s"),
)
BULK_COLUMNS = (
    ("framing", "framing"),
    ("peer", "peer"),
    ("mb_per_s", "MB/s"),
    ("mb_per_s_spread", "spread"),
    ("vs_direct", "/direct"),
    ("vs_haproxy", "/HAProxy"),
    ("vs_haproxy_spread", "spread"),
    ("cpu_s_per_gb", "CPU s/GB"),
    ("cpu_vs_haproxy", "CPU /HAProxy"),
    ("splice_share", "spliced"),
    ("rounds", "rounds"),
    ("ok", "ok"),
)
LATENCY_COLUMNS = (
    ("peer", "peer"),
    ("idle_p50_us", "idle p50 us"),
    ("idle_p99_us", "idle p99 us"),
    ("added_idle_p50_us", "added p50"),
    ("added_idle_p50_us_spread", "spread"),
    ("added_vs_haproxy", "/HAProxy"),
    ("added_vs_haproxy_spread", "spread"),
    ("added_idle_p99_us", "added p99"),
    ("load_p50_us", "load p50 us"),
    ("load_p99_us", "load p99 us"),
    ("added_load_p50_us", "added p50"),
    ("added_load_p99_us", "added p99"),
    ("idle_chunks", "chunks idle"),
    ("load_chunks", "chunks load"),
    ("broken_streams", "broken"),
    ("rounds", "rounds"),
)
TARGET_COLUMNS = (
    ("target", "target"),
    ("measured", "measured"),
    ("unit", "unit"),
    ("anchor", "anchor"),
    ("verdict", "verdict"),
)


def render(results: Results) -> str:
    machine = results["machine"]
    parts = [
        f"# sssrd bench ({results['mode']}) {results['started']}",
        f"{machine['nproc']} x {machine['cpu']}, kernel {machine['kernel']}, "
        f"Python {machine['python']}, sssrd {machine['commit']}",
    ]
    load = results.get("foreign_load")
    if load:
        busy = (
            " -- the machine was busy: figures are not reliable"
            if load["other_cores"] > 0.2
            else ""
        )
        parts[-1] += (
            f"\nother processes used {load['other_cores']:.2f} of {machine['nproc']} cores "
            f"during the {load['wall_seconds']:.0f} s run{busy}"
        )
    if results.get("rendezvous"):
        parts.append(
            table("rendezvous (h2load --h1, 10 x 2 KiB)", results["rendezvous"], RENDEZVOUS_COLUMNS)
        )
    if results.get("held"):
        parts.append(table("held streams (a fresh process each)", results["held"], HELD_COLUMNS))
    if results.get("bulk"):
        parts.append(table("bulk (MB = 10^6 bytes)", results["bulk"], BULK_COLUMNS))
    if results.get("latency"):
        parts.append(
            table("chunk latency (20 x 2 KiB, 0-10 ms gaps)", results["latency"], LATENCY_COLUMNS)
        )
    parts += [
        f"! {row['peer']}: {row['broken_streams']} broken streams, first: {row['first_break']}"
        for row in results.get("latency", [])
        if row["broken_streams"]
    ]
    parts += [
        f"! {row['peer']} {row['framing']}: a transfer failed: {row['failure']}"
        for row in results.get("bulk", [])
        if not row["ok"]
    ]
    parts.append(table("targets (issues 4, 15 and 25)", results["targets"], TARGET_COLUMNS))
    return "\n\n".join(parts)


def without_nan(value: Any) -> Any:
    """JSON has no NaN: a figure that could not be measured becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(item) for item in value]
    return value


def write_json(results: Results, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{results['started'].replace(':', '')}.json"
    text = json.dumps(without_nan(results), indent=2, allow_nan=False, default=str)
    path.write_text(text)
    (directory / "latest.json").write_text(text)
    return path
