"""Prometheus metrics for one sssrd daemon, and the body of its /metrics response.

Each Metrics object owns a CollectorRegistry, so several daemons can live in one process (tests)
without sharing values. Labelled metrics have a small fixed set of label values, created up front
so every series exists at 0 and hot paths hold pre-bound children instead of calling labels().
The daemon serves exposition() from its own event loop; no exporter thread is started.
"""

from __future__ import annotations

import gzip
import operator
import platform
from collections.abc import Callable, Iterable
from typing import Literal, TypeVar, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from sssrd import __version__
from sssrd.outcomes import REQUEST_OUTCOMES, Outcome, Rejected

__all__ = [
    "ABORT_SIDES",
    "BODY_PATHS",
    "CONTENT_TYPE",
    "LISTENERS",
    "OUTCOMES",
    "REJECT_REASONS",
    "RENDER_ERROR_SOURCES",
    "TIMEOUT_KINDS",
    "MergedCollector",
    "Metrics",
    "TimeoutKind",
    "carried",
]

# The text format every Prometheus server reads; generate_latest() writes exactly this.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

OUTCOMES = REQUEST_OUTCOMES
REJECT_REASONS = tuple(Rejected)
# Which timer fired: the viewer's request head (or body), the callback deadline, the Lambda
# idling mid-body, the viewer not taking bytes.
TimeoutKind = Literal["head", "deadline", "idle", "send"]
TIMEOUT_KINDS: tuple[TimeoutKind, ...] = get_args(TimeoutKind)
ABORT_SIDES = ("viewer", "lambda")
# Where sssrd learnt that a render failed: the render's own error callback (a helper caught the
# exception before its first write), or the answer of a RequestResponse invoke.
RenderErrorSource = Literal["callback", "invoke"]
RENDER_ERROR_SOURCES: tuple[RenderErrorSource, ...] = get_args(RenderErrorSource)
LISTENERS = ("viewer", "callback", "admin")
BODY_PATHS = ("splice", "copy")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")

MetricT = TypeVar("MetricT", Counter, Gauge)

# The (status class, outcome) pairs the daemon produces, created at start so that rate() and
# ratio alerts see a 0 series instead of no series. Other valid pairs appear on first use.
#  ok: whatever status the Lambda chose.   timeout: 504 before the head, 408 for a slow request
#  head, or the status already sent when the body idled out. Aborts after the head carry the
#  status that was sent; before it, 499 (viewer) or 502 (Lambda).
EXPECTED_REQUEST_SERIES = (
    *((Outcome.OK, status_class) for status_class in STATUS_CLASSES),
    (Outcome.TIMEOUT, "2xx"),
    (Outcome.TIMEOUT, "4xx"),
    (Outcome.TIMEOUT, "5xx"),
    (Outcome.INVOKE_THROTTLED, "5xx"),
    (Outcome.INVOKE_FAILED, "5xx"),
    (Outcome.SHED, "5xx"),
    (Outcome.VIEWER_ABORT, "2xx"),
    (Outcome.VIEWER_ABORT, "4xx"),
    (Outcome.LAMBDA_ABORT, "2xx"),
    (Outcome.LAMBDA_ABORT, "5xx"),
    (Outcome.BAD_CALLBACK, "5xx"),
    (Outcome.RENDER_ERROR, "5xx"),
    (Outcome.TOO_LARGE, "4xx"),
    (Outcome.BAD_REQUEST, "4xx"),
    (Outcome.HEALTH, "2xx"),
    (Outcome.HEALTH, "5xx"),
)

# Bucket choices (seconds). Each spans the fast path this workload sees when healthy up to the
# configured limits, with extra resolution where the SLO-relevant knee sits.
# An asynchronous invoke is one HTTPS round trip inside the region: 5-50 ms when healthy; the
# upper buckets catch botocore retries and connect/read timeouts.
INVOKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# From invoke to callback arrival: a warm Lambda answers in tens of milliseconds, a cold start
# takes 0.2-10 s, and the callback deadline is tens of seconds.
CALLBACK_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# From the viewer's request head to the first response byte: invoke + callback wait + the
# render's first flush; the same range, with one more low bucket for errors answered locally.
TTFB_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# From the response head to the last body byte: a page renders in well under a second, long
# streams (progressive reports, feeds) run for minutes.
STREAM_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """Every metric of one daemon, registered on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._define_requests()
        self._define_gauges()
        self._define_latencies()
        self._define_events()
        self._define_connections()
        self._define_build_info()

    def _define_requests(self) -> None:
        self.requests = Counter(
            "sssrd_requests",
            "Viewer requests answered, by status class and how they ended.",
            ["code", "outcome"],
            registry=self.registry,
        )
        # Keyed by (code // 100, outcome): one dict lookup per request, no string formatting.
        self._request_children: dict[tuple[int, Outcome], Counter] = {}
        for outcome, status_class in EXPECTED_REQUEST_SERIES:
            self.requests.labels(code=status_class, outcome=outcome)

    def _define_gauges(self) -> None:
        self.streams_in_flight = Gauge(
            "sssrd_streams_in_flight",
            "Viewer responses whose body is being streamed from a callback.",
            registry=self.registry,
        )
        self.pending_callbacks = Gauge(
            "sssrd_pending_callbacks",
            "Requests invoked (or being invoked) and waiting for their callback.",
            registry=self.registry,
        )
        self.pending_limit = Gauge(
            "sssrd_pending_limit",
            "Configured maximum of pending callbacks; beyond it requests are shed with 503.",
            registry=self.registry,
        )

    def _define_latencies(self) -> None:
        self.invoke_duration = self._histogram(
            "sssrd_invoke_duration_seconds",
            "Time for the asynchronous Lambda Invoke call to return.",
            INVOKE_BUCKETS,
        )
        self.callback_wait = self._histogram(
            "sssrd_callback_wait_seconds",
            "Time from the invoke to the callback's arrival.",
            CALLBACK_WAIT_BUCKETS,
        )
        self.time_to_first_byte = self._histogram(
            "sssrd_time_to_first_byte_seconds",
            "Time from the viewer's complete request head to the first response byte sent.",
            TTFB_BUCKETS,
        )
        self.stream_duration = self._histogram(
            "sssrd_stream_duration_seconds",
            "Time from the response head to the end of the streamed body (or its abort).",
            STREAM_BUCKETS,
        )

    def _histogram(self, name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, documentation, buckets=buckets, registry=self.registry)

    def _define_events(self) -> None:
        self.body_bytes = self._labelled_counter(
            "sssrd_body_bytes", "Response body bytes moved to viewers, by mechanism.", "path"
        )
        self.body_bytes_splice = self.body_bytes.labels(path="splice")
        self.body_bytes_copy = self.body_bytes.labels(path="copy")
        self.callbacks_rejected = self._labelled_counter(
            "sssrd_callbacks_rejected", "Callbacks refused, by reason.", "reason"
        )
        self.callbacks_rejected_by_reason = _children(
            self.callbacks_rejected, "reason", REJECT_REASONS
        )
        self.timeouts = self._labelled_counter(
            "sssrd_timeouts",
            "Timers that fired: request head, callback deadline, idle body, viewer not reading.",
            "kind",
        )
        self.timeouts_by_kind = _children(self.timeouts, "kind", TIMEOUT_KINDS)
        self.aborts = self._labelled_counter(
            "sssrd_aborts", "Streams cut short because one side went away.", "side"
        )
        self.aborts_by_side = _children(self.aborts, "side", ABORT_SIDES)
        # No error-type label: error types are the render's words, unbounded (the access line
        # carries each request's).
        self.render_errors = self._labelled_counter(
            "sssrd_render_errors",
            "Renders that failed before their response head, by where sssrd learnt of it.",
            "source",
        )
        self.render_errors_by_source = _children(self.render_errors, "source", RENDER_ERROR_SOURCES)

    def _labelled_counter(self, name: str, documentation: str, label: str) -> Counter:
        return Counter(name, documentation, [label], registry=self.registry)

    def _define_connections(self) -> None:
        self.connections_open = Gauge(
            "sssrd_connections_open",
            "Connections currently open, by listener.",
            ["listener"],
            registry=self.registry,
        )
        self.connections_open_by_listener = _children(self.connections_open, "listener", LISTENERS)
        self.connections = self._labelled_counter(
            "sssrd_connections", "Connections accepted, by listener.", "listener"
        )
        self.connections_by_listener = _children(self.connections, "listener", LISTENERS)

    def _define_build_info(self) -> None:
        self.build_info = Gauge(
            "sssrd_build_info",
            "Always 1; labels carry the sssrd and Python versions.",
            ["version", "python"],
            registry=self.registry,
        )
        self.build_info.labels(version=__version__, python=platform.python_version()).set(1)

    def request_done(self, code: int, outcome: Outcome) -> None:
        """Count one finished viewer request by its status code and outcome."""
        key = (code // 100, outcome)
        try:
            child = self._request_children[key]
        except KeyError:
            child = self._request_children[key] = self._request_child(code, outcome)
        child.inc()

    def _request_child(self, code: int, outcome: Outcome) -> Counter:
        if outcome not in OUTCOMES:
            expected = ", ".join(OUTCOMES)
            raise ValueError(f"unknown request outcome {outcome!r}; expected one of {expected}")
        if not 200 <= code <= 599:
            raise ValueError(f"status code {code!r} is not a final HTTP status (200-599)")
        return self.requests.labels(code=f"{code // 100}xx", outcome=outcome)

    def exposition(self, accept_encoding: str | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The /metrics response body and its content headers, gzipped if the client allows."""
        return exposition_response(self.text(), accept_encoding)

    def text(self) -> bytes:
        """This registry in the text format (what a worker sends its supervisor)."""
        return generate_latest(self.registry)


def exposition_response(
    body: bytes, accept_encoding: str | None
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A /metrics body and its content headers, gzipped if the client allows."""
    headers = [(b"Content-Type", CONTENT_TYPE.encode())]
    if accepts_gzip(accept_encoding):
        # Level 6: most of level 9's saving at a fraction of its CPU on the event loop.
        body = gzip.compress(body, compresslevel=6, mtime=0)
        headers.append((b"Content-Encoding", b"gzip"))
    headers.append((b"Vary", b"Accept-Encoding"))
    return body, headers


# How samples of several processes combine into the daemon's: everything adds up (counters,
# histograms, in-flight gauges, fds, memory, CPU, and the limits, so that ratios such as
# open/max fds or pending/limit stay the daemon-wide share), except what is a fact about the
# build (max: it is 1 in every process) and the moments things started (min: the oldest).
SAME_IN_EVERY_PROCESS = frozenset({"sssrd_build_info", "python_info"})
EARLIEST = frozenset({"process_start_time_seconds"})


class MergedCollector(Collector):
    """Several processes' expositions as one: samples with the same name and labels combined."""

    def __init__(self, expositions: Iterable[str]) -> None:
        self.families = merge_families(expositions)

    def collect(self) -> Iterable[Metric]:
        return self.families

    def value(self, sample_name: str, **labels: str) -> float:
        """One merged sample (0 if absent): the supervisor's STATUS= totals."""
        for family in self.families:
            for sample in family.samples:
                if sample.name == sample_name and sample.labels == labels:
                    return sample.value
        return 0.0

    def text(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry)


# What a process that has exited (or not answered) still contributes to the daemon's sums: what
# it counted stays counted, or the daemon's counters would drop and read as a reset. Its gauges
# (open connections, memory, limits) described a present it is no longer part of.
CARRIED_TYPES = frozenset({"counter", "histogram", "summary"})


def carried(exposition: str) -> str:
    """The counters and histograms of `exposition`, in the text format."""
    merged = MergedCollector([exposition])
    merged.families = [family for family in merged.families if family.type in CARRIED_TYPES]
    return merged.text().decode()


def merge_families(expositions: Iterable[str]) -> list[Metric]:
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for exposition in expositions:
        for family in text_string_to_metric_families(exposition):
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            into = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key in into:
                    combine = _combiner(family.name, sample.name)
                    into[key] = combine(into[key], sample.value)
                else:
                    into[key] = sample.value
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


def _combiner(family_name: str, sample_name: str) -> Callable[[float, float], float]:
    if family_name in SAME_IN_EVERY_PROCESS:
        return max
    if family_name in EARLIEST or sample_name.endswith("_created"):
        return min
    return operator.add


def _children(metric: MetricT, label: str, values: tuple[str, ...]) -> dict[str, MetricT]:
    return {value: metric.labels(**{label: value}) for value in values}


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header value allows gzip (RFC 9110 12.5.3, q=0 refuses)."""
    if not accept_encoding:
        return False
    wildcard_quality = None
    for element in accept_encoding.split(","):
        coding, _, parameters = element.partition(";")
        coding = coding.strip().lower()
        quality = _quality(parameters)
        if coding in ("gzip", "x-gzip"):
            return quality > 0
        if coding == "*":
            wildcard_quality = quality
    return wildcard_quality is not None and wildcard_quality > 0


def _quality(parameters: str) -> float:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 0.0  # an unreadable weight is safest read as "not acceptable"
    return 1.0
