"""`sssrd loadtest`'s own capacity and its TTFB overhead, measured against h2load in one run.

    .venv/bin/python -m bench.loadtest            # ~2 min: figures for bench/RESULTS.md
    .venv/bin/python -m bench.loadtest --quick    # ~30 s smoke run

The target is nginx (one worker, echo module) streaming a chunked page in four flushed chunks:
a server far faster than the client, so the client is what is measured. Rounds interleave
h2load (C, Debian's nghttp2-client) and `sssrd loadtest` on the same URL:
- capacity: closed loop at C connections, responses per second and client CPU per response
  (sssrd loadtest's start-up, a one-request run's CPU, subtracted);
- open loop: `--rate R` (5,000/s by default) held for the duration, all responses complete
  (goal: `open_loop_sent_of_rate` >= 0.9; tests/test_loadtest_runs.py checks only the schedule);
- overhead: one connection, sequential requests, so each client's time per request is the
  server's time plus its own: sssrd loadtest's TTFB mean minus h2load's mean request time
  (h2load has no per-request TTFB; for a 1.3 KiB response the two differ by the body's
  microseconds) is what the tool adds to every TTFB it reports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import (
    REPO,
    free_port,
    render_template,
    spawn,
    temp_workdir,
    wait_for_port,
    wait_until_quiet,
)
from bench.report import ForeignLoad, machine_details
from bench.scenarios import children_cpu, parse_h2load

SSSRD = REPO / ".venv" / "bin" / "sssrd"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
FIRST_SCREEN = "x" * 1200
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
H2LOAD_REQUEST_TIME = (
    r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)"
)


def parse_request_time(output: str) -> dict[str, float]:
    """h2load's per-request time (request written to response complete): min, max, mean, ms."""
    match = re.search(H2LOAD_REQUEST_TIME, output)
    if not match:
        return {"min_ms": float("nan"), "max_ms": float("nan"), "mean_ms": float("nan")}
    values = [float(match.group(i)) * UNITS[match.group(i + 1)] for i in (1, 3, 5)]
    return dict(zip(("min_ms", "max_ms", "mean_ms"), values, strict=True))


def h2load(url: str, connections: int, requests: int) -> dict[str, Any]:
    cpu = children_cpu()
    argv = ["h2load", "--h1", "-t", "1", "-c", str(connections), "-n", str(requests), url]
    output = subprocess.run(argv, capture_output=True, text=True, timeout=300).stdout
    parsed = parse_h2load(output)
    seconds = requests / parsed["req_per_s"] if parsed["req_per_s"] else float("nan")
    return {
        "client": "h2load",
        "connections": connections,
        "responses": int(parsed["done"]),
        "failed": requests - int(parsed["status_2xx"]),
        "per_s": parsed["req_per_s"],
        "client_cpu_us_per_response": (children_cpu() - cpu) / requests * 1e6,
        "seconds": seconds,
        **{f"request_{k}": v for k, v in parse_request_time(output).items()},
    }


def run_loadtest(url: str, workdir: Path, *options: str) -> tuple[dict[str, Any], float]:
    """The report of one `sssrd loadtest` run, and the CPU seconds the process used."""
    report_path = workdir / "loadtest.json"
    cpu = children_cpu()
    argv = [str(SSSRD), "loadtest", url, *options, "--json", str(report_path)]
    subprocess.run(argv, capture_output=True, check=True, timeout=600)
    return json.loads(report_path.read_text()), children_cpu() - cpu


def startup_cpu(url: str, workdir: Path) -> float:
    """CPU seconds of a one-request run: Python, imports and the report, paid once per run."""
    return min(run_loadtest(url, workdir, "--requests", "1")[1] for _ in range(3))


def loadtest(url: str, workdir: Path, startup: float, *options: str) -> dict[str, Any]:
    report, cpu = run_loadtest(url, workdir, *options)
    latency = report["latency_ms"]
    completed = report["requests"]["completed"]
    return {
        "client": "sssrd loadtest",
        "options": " ".join(options),
        "connections": report["connections"],
        "responses": report["requests"]["ok"],
        "failed": report["requests"]["failed"],
        "per_s": report["rate"]["completed_per_s"],
        "sent_per_s": report["rate"]["sent_per_s"],
        "client_cpu_us_per_response": (cpu - startup) / max(completed, 1) * 1e6,
        "seconds": report["elapsed_s"],
        "ttfb_mean_ms": latency["ttfb"]["mean"],
        "ttfb_p50_ms": latency["ttfb"]["p50"],
        "ttfb_p99_ms": latency["ttfb"]["p99"],
        "total_mean_ms": latency["total"]["mean"],
        "send_lag_p99_ms": latency["send_lag"]["p99"],
        "chunk_gaps": latency["chunk_gap"]["count"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine_details(), "rounds": args.rounds}
    foreign = ForeignLoad()
    rows: list[dict[str, Any]] = []
    with temp_workdir() as workdir, contextlib.ExitStack() as stack:
        port = free_port()
        config = render_template(
            "nginx-stream.conf", workdir, "nginx-stream.conf", port=port, first_screen=FIRST_SCREEN
        )
        log = workdir / "nginx-stream.log"
        nginx = spawn(stack, "nginx", ["nginx", "-c", str(config), "-e", str(log)], log)
        wait_for_port(port, nginx.popen, "nginx", workdir / "nginx-stream-error.log")
        url = f"http://127.0.0.1:{port}/stream"
        startup = startup_cpu(url, workdir)
        results["startup_cpu_s"] = startup
        for round_number in range(args.rounds):
            print(f"round {round_number + 1}/{args.rounds}", file=sys.stderr, flush=True)
            closed = ("--concurrency", str(args.connections), "--requests", str(args.requests))
            open_loop = ("--rate", str(args.rate), "--duration", str(args.duration))
            sequential = ("--concurrency", "1", "--requests", str(args.sequential))
            scenario_rows = [
                ("capacity", h2load(url, args.connections, args.requests)),
                ("capacity", loadtest(url, workdir, startup, *closed)),
                ("open loop", loadtest(url, workdir, startup, *open_loop)),
                ("overhead", h2load(url, 1, args.sequential)),
                ("overhead", loadtest(url, workdir, startup, *sequential)),
            ]
            rows += [
                {"scenario": name, "round": round_number, **row} for name, row in scenario_rows
            ]
    results["rows"] = rows
    results["foreign_load"] = foreign.stop()
    results["summary"] = summarise(rows)
    # The goal the tests leave to the bench (a floor needs a quiet machine): the open loop
    # sends at least 90 % of its --rate.
    results["summary"]["open_loop_sent_of_rate"] = (
        results["summary"]["open_loop_sent_per_s"] / args.rate
    )
    return results


def median_of(rows: list[dict[str, Any]], scenario: str, client: str, key: str) -> float:
    values = [r[key] for r in rows if r["scenario"] == scenario and r["client"] == client]
    return statistics.median(values) if values else float("nan")


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    ours, theirs = "sssrd loadtest", "h2load"
    return {
        "capacity_per_s": median_of(rows, "capacity", ours, "per_s"),
        "h2load_capacity_per_s": median_of(rows, "capacity", theirs, "per_s"),
        "cpu_us_per_response": median_of(rows, "capacity", ours, "client_cpu_us_per_response"),
        "h2load_cpu_us_per_response": median_of(
            rows, "capacity", theirs, "client_cpu_us_per_response"
        ),
        "open_loop_sent_per_s": median_of(rows, "open loop", ours, "sent_per_s"),
        "open_loop_completed_per_s": median_of(rows, "open loop", ours, "per_s"),
        "open_loop_failed": median_of(rows, "open loop", ours, "failed"),
        "sequential_ttfb_mean_ms": median_of(rows, "overhead", ours, "ttfb_mean_ms"),
        "sequential_h2load_request_mean_ms": median_of(rows, "overhead", theirs, "request_mean_ms"),
        "ttfb_overhead_us": 1000
        * (
            median_of(rows, "overhead", ours, "ttfb_mean_ms")
            - median_of(rows, "overhead", theirs, "request_mean_ms")
        ),
    }


def render(results: dict[str, Any]) -> str:
    lines = [
        "| scenario | client | options | responses | failed | per s | client CPU µs/response "
        "| TTFB mean ms (h2load: request mean) | TTFB p99 ms |",
        "|---" * 9 + "|",
    ]
    for row in results["rows"]:
        options = row.get("options", f"-c {row['connections']}")
        ttfb = row.get("ttfb_mean_ms", row.get("request_mean_ms"))
        p99 = row.get("ttfb_p99_ms", float("nan"))
        cells = [row["scenario"], row["client"], options, f"{row['responses']:,}"]
        cells += [f"{row['failed']:,}", f"{row['per_s']:,.0f}"]
        cells += [f"{row['client_cpu_us_per_response']:.1f}", f"{ttfb:.3f}", f"{p99:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {key}: {value:,.3f}" for key, value in results["summary"].items()]
    lines.append(f"- startup CPU (subtracted): {results['startup_cpu_s']:.3f} s")
    lines.append(f"- foreign load: {results['foreign_load']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--wait-quiet", type=float, default=30.0)
    args = parser.parse_args(argv)
    args.rounds = 1 if args.quick else 3
    args.requests = 20_000 if args.quick else 100_000
    args.duration = 3 if args.quick else 10
    args.sequential = 2000 if args.quick else 10_000
    missing = [tool for tool in ("h2load", "nginx") if shutil.which(tool) is None]
    if missing or not SSSRD.exists():
        print(
            f"needs {missing or ''} (apt-get install nghttp2-client nginx-light) and make venv",
            file=sys.stderr,
        )
        return 2
    if args.wait_quiet > 0:
        print(
            f"machine busy before the run: {wait_until_quiet(args.wait_quiet):.2f} cores",
            file=sys.stderr,
        )
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results = run(args)
    print(render(results))
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"loadtest-{started}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"JSON in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
