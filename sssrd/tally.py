"""The daemon's tally: metrics, in-flight counts, and one access record per viewer request.

Connections report what happened (a request finished, a stream ended, a timer fired) and the
tally turns it into metrics and the access log, so a new metric edits this module alone. A
viewer request fills in its RequestRecord as it goes and hands it over once, when it ends.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from sssrd import logs
from sssrd.metrics import Metrics, RenderErrorSource, TimeoutKind
from sssrd.outcomes import Outcome, Rejected

VIEWER_ABORT_STATUS = 499  # nginx's "client closed request": no status was ever sent


@dataclass(slots=True)
class RequestRecord:
    """What the access log and the request metrics say about one viewer request."""

    started: float = field(default_factory=time.perf_counter)
    request_id: str = ""
    method: str | None = None  # None when the head was refused before it could be parsed
    path: str | None = None
    client: str = ""
    status: int = 0  # 0 until a response head is sent
    outcome: Outcome = Outcome.OK
    body_bytes: int = 0
    invoke_seconds: float | None = None
    callback_wait: float | None = None
    ttfb: float | None = None
    error: str = ""  # for the access log only
    error_type: str = ""  # the render's own error type (sanitised), for the access log only


class Tally:
    """Owns the metrics and the counts of requests and streams in flight."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.cycles_in_flight = 0
        self.streams_in_flight = 0
        self.idle = asyncio.Event()  # set while no viewer request is in flight (drain waits)
        self.idle.set()

    def cycle_started(self) -> None:
        self.cycles_in_flight += 1
        self.idle.clear()

    def request_finished(self, record: RequestRecord) -> None:
        self.cycles_in_flight -= 1
        if self.cycles_in_flight == 0:
            self.idle.set()
        metrics = self.metrics
        status = record.status or VIEWER_ABORT_STATUS
        metrics.request_done(status, record.outcome)
        if record.invoke_seconds is not None:
            metrics.invoke_duration.observe(record.invoke_seconds)
        if record.callback_wait is not None:
            metrics.callback_wait.observe(record.callback_wait)
        if record.ttfb is not None:
            metrics.time_to_first_byte.observe(record.ttfb)
        if record.outcome is Outcome.VIEWER_ABORT:
            metrics.aborts_by_side["viewer"].inc()
        logs.write_access(access_record(record, status, time.perf_counter()))

    def stream_started(self) -> None:
        self.streams_in_flight += 1

    def stream_ended(self, seconds: float, copied: int, spliced: int) -> None:
        self.streams_in_flight -= 1
        self.metrics.stream_duration.observe(seconds)
        self.metrics.body_bytes_copy.inc(copied)
        self.metrics.body_bytes_splice.inc(spliced)

    def timed_out(self, kind: TimeoutKind) -> None:
        self.metrics.timeouts_by_kind[kind].inc()

    def lambda_aborted(self, kind: Outcome) -> None:
        self.metrics.aborts_by_side["lambda"].inc()
        if kind is Outcome.IDLE:
            self.timed_out("idle")

    def render_failed(self, source: RenderErrorSource) -> None:
        self.metrics.render_errors_by_source[source].inc()

    def callback_rejected(self, reason: Rejected) -> None:
        self.metrics.callbacks_rejected_by_reason[reason].inc()


def access_record(record: RequestRecord, status: int, now: float) -> dict[str, object]:
    """The access log line of one finished request."""
    line: dict[str, object] = {
        "time": logs.utc_timestamp(time.time()),
        "type": "access",
        "request_id": record.request_id or None,
        "method": record.method,
        "path": record.path,
        "status": status,
        "outcome": record.outcome,
        "bytes": record.body_bytes,
        "client": record.client,
        "invoke_ms": milliseconds(record.invoke_seconds),
        "callback_wait_ms": milliseconds(record.callback_wait),
        "ttfb_ms": milliseconds(record.ttfb),
        "duration_ms": milliseconds(now - record.started),
    }
    if record.error:
        line["error"] = record.error
    if record.error_type:
        line["error_type"] = record.error_type
    return line


def milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
