"""Everything a run measured, kept as HDR histograms and counters, and turned into the report.

Each timed phase (connect, TLS, TTFB, first body byte, chunk gap, total, send lag) has an
HdrHistogram (HdrHistogram_py: microsecond values, 3 significant digits, 1 µs to 1 h), so
percentiles cost the same after ten requests or ten million and nothing keeps a list of every
sample. Counters hold statuses and errors by kind; `PopStats` repeats the viewer-facing ones
per CloudFront POP; once a second `tick()` closes an interval for the latency-over-time plot.
`report()` is the JSON document described by report.schema.json.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from sssrd.loadtest.response import ErrorKind, ResponseReader, status_error

HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3
INTERVAL_DIGITS = 2  # the timeline's per-second percentiles: 1 % is plenty, and 20x cheaper
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}
PHASES = ("connect", "tls", "ttfb", "first_body_byte", "chunk_gap", "total", "send_lag")
NO_POP = "(none)"
MAX_ERROR_SAMPLES = 2000
MAX_FAILED_IDS_PER_POP = 20
HISTOGRAM_FIRST_BUCKET_US = 10
HISTOGRAM_LOG_BASE = 2**0.25  # four bars per doubling: fine enough to see two modes


def histogram(digits: int = SIGNIFICANT_DIGITS) -> HdrHistogram:
    return HdrHistogram(1, HIGHEST_US, digits)


def record_seconds(target: HdrHistogram, seconds: float) -> None:
    target.record_value(min(max(int(seconds * 1e6), 1), HIGHEST_US))


def summary(source: HdrHistogram) -> dict[str, float | int]:
    """count, min, mean, percentiles and max in milliseconds (zeros when nothing was recorded)."""
    count = source.get_total_count()
    if not count:
        return {"count": 0, "min": 0.0, "mean": 0.0, **dict.fromkeys(PERCENTILES, 0.0), "max": 0.0}
    values = source.get_percentile_to_value_dict(list(PERCENTILES.values()))
    return {
        "count": count,
        "min": source.get_min_value() / 1000,
        "mean": round(source.get_mean_value() / 1000, 3),
        **{name: values[p] / 1000 for name, p in PERCENTILES.items()},
        "max": source.get_max_value() / 1000,
    }


def buckets(source: HdrHistogram) -> list[list[float]]:
    """[upper bound ms, count] on a log scale, from the first to the last non-empty bucket."""
    if not source.get_total_count():
        return []
    rows = [
        [round(step.value_iterated_to / 1000, 4), step.count_added_in_this_iter_step]
        for step in source.get_log_iterator(HISTOGRAM_FIRST_BUCKET_US, HISTOGRAM_LOG_BASE)
    ]
    first = next(i for i, row in enumerate(rows) if row[1])
    last = max(i for i, row in enumerate(rows) if row[1])
    return rows[first : last + 1]


@dataclass
class PopStats:
    """The viewer-facing aggregates of one CloudFront POP (or of responses without one)."""

    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    cache: Counter[str] = field(default_factory=Counter)
    ttfb: HdrHistogram = field(default_factory=histogram)
    total: HdrHistogram = field(default_factory=histogram)
    failed_ids: list[str] = field(default_factory=list)

    def report(self, pop: str) -> dict[str, Any]:
        return {
            "pop": pop,
            "requests": self.requests,
            "ok": self.ok,
            "errors": dict(self.errors),
            "cache": dict(self.cache),
            "ttfb_ms": summary(self.ttfb),
            "total_ms": summary(self.total),
            "failed_cf_ids": self.failed_ids,
        }


class Stats:
    """Accumulates finished requests; times are perf_counter seconds, `origin` is t = 0."""

    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.phases = {name: histogram() for name in PHASES}
        self.sent = 0
        self.sent_in_window = 0  # sent before arrivals stopped: late sends do not make the rate
        self.completed = 0
        self.ok = 0
        self.body_bytes = 0
        self.connections = 0
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.pops: dict[str, PopStats] = {}
        self.error_samples: list[dict[str, Any]] = []
        self.timeline: list[dict[str, Any]] = []
        self._interval_ttfb = histogram(INTERVAL_DIGITS)
        self._interval_total = histogram(INTERVAL_DIGITS)
        self._interval_completed = 0
        self._interval_errors = 0
        self._interval_sent_at_start = 0
        self.record_gap = self._gap_recorder()

    def _gap_recorder(self) -> Any:
        gaps = self.phases["chunk_gap"]
        return lambda seconds: record_seconds(gaps, seconds)

    def connected(self, connect: float, tls: float | None) -> None:
        self.connections += 1
        record_seconds(self.phases["connect"], connect)
        if tls is not None:
            record_seconds(self.phases["tls"], tls)

    def finished(
        self,
        start: float,
        sent: float,
        end: float,
        reader: ResponseReader | None,
        error: ErrorKind | None,
        detail: str = "",
    ) -> None:
        """One request ended: successfully when `error` is None and the status is not 4xx/5xx."""
        phases = self.phases
        self.completed += 1
        self._interval_completed += 1
        if sent:
            record_seconds(phases["send_lag"], sent - start)
        pop = NO_POP
        if reader is not None:
            pop = reader.pop or NO_POP
            if reader.status:
                self.statuses[f"{reader.status // 100}xx"] += 1
            if error is None:
                error = status_error(reader.status)
            self.body_bytes += reader.body_bytes
        per_pop = self.pops.get(pop)
        if per_pop is None:
            per_pop = self.pops[pop] = PopStats()
        per_pop.requests += 1
        if reader is not None and reader.first_byte:
            record_seconds(phases["ttfb"], reader.first_byte - start)
            record_seconds(per_pop.ttfb, reader.first_byte - start)
            record_seconds(self._interval_ttfb, reader.first_byte - start)
            if reader.first_body:
                record_seconds(phases["first_body_byte"], reader.first_body - start)
            if reader.cache:
                per_pop.cache[reader.cache] += 1
        if error is None:
            self.ok += 1
            per_pop.ok += 1
            record_seconds(phases["total"], end - start)
            record_seconds(per_pop.total, end - start)
            record_seconds(self._interval_total, end - start)
            return
        self.errors[error] += 1
        per_pop.errors[error] += 1
        self._interval_errors += 1
        cf_id = reader.cf_id if reader is not None else ""
        if cf_id and len(per_pop.failed_ids) < MAX_FAILED_IDS_PER_POP:
            per_pop.failed_ids.append(cf_id)
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(
                {
                    "t": round(end - self.origin, 4),
                    "kind": str(error),
                    "status": reader.status if reader is not None else 0,
                    "elapsed_ms": round((end - start) * 1000, 3),
                    "pop": pop,
                    "cf_id": cf_id,
                    "detail": detail[:200],
                }
            )

    def tick(self, now: float) -> None:
        """Close the current one-second interval of the timeline."""
        ttfb = self._interval_ttfb
        total = self._interval_total
        ttfb_values = ttfb.get_percentile_to_value_dict([50.0, 99.0]) if ttfb.total_count else {}
        total_p99 = total.get_value_at_percentile(99.0) if total.total_count else 0
        self.timeline.append(
            {
                "t": round(now - self.origin, 3),
                "sent": self.sent - self._interval_sent_at_start,
                "completed": self._interval_completed,
                "errors": self._interval_errors,
                "ttfb_p50_ms": ttfb_values.get(50.0, 0) / 1000,
                "ttfb_p99_ms": ttfb_values.get(99.0, 0) / 1000,
                "total_p99_ms": total_p99 / 1000,
            }
        )
        for interval in (ttfb, total):
            if interval.total_count:
                interval.reset()
        self._interval_completed = self._interval_errors = 0
        self._interval_sent_at_start = self.sent

    def ttfb_percentiles(self) -> tuple[float, float]:
        """p50 and p99 TTFB so far, ms, for the progress line."""
        ttfb = self.phases["ttfb"]
        if not ttfb.total_count:
            return 0.0, 0.0
        values = ttfb.get_percentile_to_value_dict([50.0, 99.0])
        return values[50.0] / 1000, values[99.0] / 1000

    def report(self, elapsed: float, sending: float) -> dict[str, Any]:
        """The measured part of the JSON report (the caller adds the run's settings)."""
        return {
            "elapsed_s": round(elapsed, 4),
            "requests": {
                "sent": self.sent,
                "completed": self.completed,
                "ok": self.ok,
                "failed": self.completed - self.ok,
            },
            "rate": {
                "sent_per_s": round(self.sent_in_window / sending, 2) if sending else 0.0,
                "completed_per_s": round(self.completed / elapsed, 2) if elapsed else 0.0,
            },
            "connections": self.connections,
            "body_bytes": self.body_bytes,
            "status": dict(sorted(self.statuses.items())),
            "errors": {kind.value: self.errors.get(kind, 0) for kind in ErrorKind},
            "latency_ms": {name: summary(values) for name, values in self.phases.items()},
            "histograms_ms": {
                "ttfb": buckets(self.phases["ttfb"]),
                "chunk_gap": buckets(self.phases["chunk_gap"]),
            },
            "pops": [stats.report(pop) for pop, stats in sorted(self.pops.items())],
            "timeline": self.timeline,
            "error_samples": self.error_samples,
        }
