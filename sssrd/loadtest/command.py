"""The `sssrd loadtest` command line: options in, a Plan built, the run, then the reports.

Options are checked before anything connects (one line naming the bad one, exit 2). The run
happens on uvloop; the terminal summary goes to stdout, the live progress line to stderr when
stderr is a terminal, and `--json` / `--html` write the report files.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import resource
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from sssrd import __version__
from sssrd.loadtest import htmlreport, terminal
from sssrd.loadtest.engine import Engine, Plan
from sssrd.loadtest.stats import Stats
from sssrd.loadtest.targets import Requests, TargetError, parse_header

DEFAULT_DURATION = 10.0
DEFAULT_OPEN_LOOP_CONNECTIONS = 1000
FILES_BESIDES_CONNECTIONS = 64
EXIT_USAGE = 2
EXIT_FAILED = 1
SCHEMA_ID = "https://sssrd.invalid/schemas/loadtest-report-1.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sssrd loadtest",
        description="Load-test a URL the way a viewer of a streamed page experiences it.",
        epilog="Latencies are measured from each request's due time (open loop: its scheduled "
        "arrival), so a slow server shows as latency, not as fewer requests.",
    )
    parser.add_argument("url", nargs="*", help="URL or template ({n}, {rand:LO-HI}); repeatable")
    parser.add_argument("--urls", type=Path, help="file of URLs, one a line (cycled)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=float, help="open loop: requests per second")
    mode.add_argument("--concurrency", type=int, help="closed loop: users (default 1)")
    parser.add_argument("--duration", type=float, help=f"seconds (default {DEFAULT_DURATION:g})")
    parser.add_argument("--requests", type=int, help="stop after this many requests")
    parser.add_argument(
        "--connections",
        type=int,
        help="most open connections (default: concurrency, or "
        f"{DEFAULT_OPEN_LOOP_CONNECTIONS} in open loop)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per request (default 30)")
    parser.add_argument("-X", "--method", default="GET")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--data", help="request body")
    body.add_argument("--data-file", type=Path, help="request body from a file")
    parser.add_argument("--cacert", type=Path, help="CA bundle (PEM) to verify the server with")
    parser.add_argument(
        "--insecure", action="store_true", help="do NOT verify the server's certificate"
    )
    parser.add_argument(
        "--connect-to", metavar="HOST:PORT", help="connect here instead (Host and SNI unchanged)"
    )
    parser.add_argument("--json", type=Path, help="write the report as JSON here")
    parser.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    parser.add_argument("--seed", type=int, help="seed for {rand:...} templates")
    return parser


def positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise TargetError(f"--{name} must be positive")


def tls_context(arguments: argparse.Namespace) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(arguments.cacert) if arguments.cacert else None)
    if arguments.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


def read_urls(arguments: argparse.Namespace) -> list[str]:
    urls = list(arguments.url)
    if arguments.urls:
        for line in arguments.urls.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                urls.append(line)
    return urls


def build_plan(arguments: argparse.Namespace) -> Plan:
    """The run the options describe; TargetError (or OSError for files) names what is wrong."""
    for name in ("rate", "concurrency", "duration", "requests", "connections", "timeout"):
        positive(name, getattr(arguments, name))
    body = arguments.data.encode() if arguments.data is not None else b""
    if arguments.data_file:
        body = arguments.data_file.read_bytes()
    headers = [parse_header(text) for text in arguments.header]
    requests = Requests(read_urls(arguments), arguments.method, headers, body, arguments.seed)
    concurrency = arguments.concurrency or 1
    duration = arguments.duration
    if duration is None and arguments.requests is None:
        duration = DEFAULT_DURATION
    connections = arguments.connections or (
        DEFAULT_OPEN_LOOP_CONNECTIONS if arguments.rate else concurrency
    )
    connect_to = None
    if arguments.connect_to:
        host, _, port = arguments.connect_to.rpartition(":")
        if not host or not port.isdigit():
            raise TargetError(f"--connect-to wants HOST:PORT, not {arguments.connect_to!r}")
        connect_to = (host.strip("[]"), int(port))
    if (arguments.cacert or arguments.insecure) and not requests.origin.tls:
        raise TargetError("--cacert and --insecure are for https:// URLs")
    return Plan(
        requests=requests,
        rate=arguments.rate,
        concurrency=concurrency,
        connections=connections,
        duration=duration,
        max_requests=arguments.requests,
        timeout=arguments.timeout,
        tls=tls_context(arguments) if requests.origin.tls else None,
        server_hostname=requests.origin.host if requests.origin.tls else None,
        connect_to=connect_to,
    )


def settings_report(plan: Plan, urls: list[str], started: str) -> dict[str, Any]:
    return {
        "$schema": SCHEMA_ID,
        "tool": f"sssrd loadtest {__version__}",
        "started": started,
        "target": {
            "urls": urls[:100],
            "url_count": len(urls),
            "method": plan.requests.method,
            "tls": plan.tls is not None,
            "verify": plan.tls is not None and plan.tls.verify_mode != ssl.CERT_NONE,
        },
        "mode": {
            "loop": "open" if plan.rate is not None else "closed",
            "rate": plan.rate,
            "concurrency": None if plan.rate is not None else plan.concurrency,
            "connections": plan.connections,
            "duration_s": plan.duration,
            "requests": plan.max_requests,
            "timeout_s": plan.timeout,
        },
    }


async def execute(plan: Plan, progress: terminal.Progress | None) -> tuple[Stats, float, float]:
    stats = Stats(time.perf_counter())
    engine = Engine(plan, stats, progress.update if progress else None)
    sending = await engine.run()
    return stats, time.perf_counter() - stats.origin, sending


def allow_connections(connections: int) -> None:
    """Raise the soft open-file limit (often 1,024) to fit the connections, up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + FILES_BESIDES_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def run_command(argv: Sequence[str]) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        plan = build_plan(arguments)
    except (TargetError, OSError) as error:
        print(f"sssrd loadtest: {error}", file=sys.stderr)
        return EXIT_USAGE
    allow_connections(plan.connections)
    urls = read_urls(arguments)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    progress = terminal.Progress.for_stderr(plan.rate)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            stats, elapsed, sending = runner.run(execute(plan, progress))
    except OSError as error:  # e.g. the host name does not resolve
        print(f"sssrd loadtest: cannot start: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if progress is not None:
            progress.close()
    report = {**settings_report(plan, urls, started), **stats.report(elapsed, sending)}
    terminal.print_summary(report)
    if arguments.json:
        arguments.json.write_text(json.dumps(report, indent=1) + "\n")
    if arguments.html:
        arguments.html.write_text(htmlreport.render(report))
    return 0
