"""What a person at the terminal sees: a live progress line while it runs, tables at the end.

Both use rich. The progress line lives on stderr and only when stderr is a terminal (a log file
or a pipe stays quiet); it is redrawn by the engine's sweeper, never by a thread of rich's own.
The summary goes to stdout: percentiles per phase, the achieved against the asked rate, errors
by kind and, when responses named CloudFront POPs, one row per POP.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from sssrd.loadtest.engine import Engine

PHASE_LABELS = {
    "connect": "connect",
    "tls": "TLS handshake",
    "ttfb": "time to first byte",
    "first_body_byte": "first body byte",
    "chunk_gap": "gap between chunks",
    "total": "total (ok responses)",
    "send_lag": "send lag (due → written)",
}
COLUMNS = ("p50", "p90", "p99", "p99_9", "max")
PLAIN_WIDTH = 110
LATE_WARNING_MS = 100.0


class Progress:
    """The live line: elapsed, rate sent, in flight, errors, TTFB p50/p99 so far."""

    def __init__(self, console: Console, asked_rate: float | None) -> None:
        self.asked = f" of {asked_rate:g}/s" if asked_rate else ""
        self.live = Live(console=console, auto_refresh=False, transient=True)
        self.live.start()
        self.last_sent = 0
        self.last_time = 0.0

    @classmethod
    def for_stderr(cls, asked_rate: float | None) -> Progress | None:
        if not sys.stderr.isatty():
            return None
        return cls(Console(stderr=True), asked_rate)

    def update(self, engine: Engine, now: float) -> None:
        stats = engine.stats
        elapsed = now - stats.origin
        interval = now - (self.last_time or stats.origin)
        rate = (stats.sent - self.last_sent) / interval if interval > 0 else 0.0
        self.last_sent, self.last_time = stats.sent, now
        p50, p99 = stats.ttfb_percentiles()
        failed = stats.completed - stats.ok
        line = Text.assemble(
            (f"{elapsed:6.1f} s ", "bold"),
            f" sent {stats.sent:,} ({rate:,.0f}/s{self.asked})",
            f"  in flight {len(engine.busy) + engine.connecting + len(engine.backlog):,}",
            ("  errors ", ""),
            (f"{failed:,}", "bold red" if failed else "green"),
            f"  TTFB p50 {p50:,.1f} ms  p99 {p99:,.1f} ms",
        )
        self.live.update(line, refresh=True)

    def close(self) -> None:
        self.live.stop()


def users(count: int) -> str:
    return f"{count} user" if count == 1 else f"{count} users"


def stdout_console() -> Console:
    return Console(width=None if sys.stdout.isatty() else PLAIN_WIDTH)


def print_summary(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or stdout_console()
    requests, mode, rate = report["requests"], report["mode"], report["rate"]
    asked = f"{mode['rate']:g}/s asked, " if mode["rate"] else f"{users(mode['concurrency'])}, "
    console.print(
        f"[bold]{report['target']['urls'][0]}[/bold]  {mode['loop']} loop: {asked}"
        f"{rate['sent_per_s']:,.1f}/s sent; {requests['sent']:,} sent, {requests['ok']:,} ok, "
        f"{requests['failed']:,} failed in {report['elapsed_s']:.1f} s "
        f"({report['connections']:,} connections)"
    )
    console.print(phase_table(report["latency_ms"]))
    lag = report["latency_ms"]["send_lag"]["p99"]
    if mode["rate"] and lag > LATE_WARNING_MS:
        console.print(
            f"[yellow]warning: requests went out up to {lag:,.0f} ms late (send lag p99): this "
            "machine could not keep the rate, and latencies include that wait; "
            "add generators[/yellow]"
        )
    errors = {kind: count for kind, count in report["errors"].items() if count}
    statuses = ", ".join(f"{name} {count:,}" for name, count in report["status"].items())
    console.print(f"status: {statuses or 'none'}")
    failures = ", ".join(f"{kind} {count:,}" for kind, count in errors.items())
    console.print(f"errors: [red]{failures}[/red]" if errors else "errors: none")
    if any(pop["pop"] != "(none)" for pop in report["pops"]):
        console.print(pop_table(report["pops"]))


def phase_table(latency: dict[str, dict[str, float]]) -> Table:
    table = Table(title="latency, ms (from each request's due time)", title_justify="left")
    table.add_column("phase")
    table.add_column("count", justify="right")
    for column in COLUMNS:
        table.add_column(column.replace("_", "."), justify="right")
    for name, label in PHASE_LABELS.items():
        values = latency[name]
        if values["count"]:
            table.add_row(label, f"{values['count']:,}", *(f"{values[c]:,.2f}" for c in COLUMNS))
    return table


def pop_table(pops: list[dict[str, Any]]) -> Table:
    table = Table(title="per CloudFront POP", title_justify="left")
    for column in ("POP", "requests", "ok", "errors", "cache", "TTFB p50", "TTFB p99"):
        table.add_column(column, justify="left" if column in ("POP", "cache") else "right")
    for pop in pops:
        cache = ", ".join(f"{name} {count:,}" for name, count in pop["cache"].items())
        table.add_row(
            pop["pop"],
            f"{pop['requests']:,}",
            f"{pop['ok']:,}",
            f"{sum(pop['errors'].values()):,}",
            cache,
            f"{pop['ttfb_ms']['p50']:,.2f}",
            f"{pop['ttfb_ms']['p99']:,.2f}",
        )
    return table
