"""Every request metric and label is derived from the ends a request's record collected."""

import pytest

from sssrd.outcomes import ENDS, REQUEST_OUTCOMES, Outcome
from sssrd.tally import RequestRecord, Tally


def finish(*ends: Outcome, status: int = 200, render_error=None) -> Tally:
    tally = Tally()
    record = RequestRecord(status=status, render_error=render_error)
    for end in ends:
        record.ended(end)
    tally.cycle_started()
    tally.request_finished(record)
    return tally


def value(tally: Tally, name: str, **labels: str) -> float:
    return tally.metrics.registry.get_sample_value(name, labels) or 0.0


def test_every_end_counts_as_a_label_operators_know():
    assert {traits.label for traits in ENDS.values()} <= set(REQUEST_OUTCOMES)


@pytest.mark.parametrize(
    ("ends", "status", "label", "timers", "sides"),
    [
        ((), 200, "ok", [], []),
        ((Outcome.SLOW_REQUEST,), 408, "timeout", ["head"], []),
        ((Outcome.NO_CALLBACK,), 504, "timeout", ["deadline"], []),
        ((Outcome.RENDER_TIMED_OUT,), 504, "timeout", [], []),
        ((Outcome.IDLE,), 200, "lambda_abort", ["idle"], ["lambda"]),
        # A HEAD's response was whole when the Lambda went idle: ok, and still its abort.
        ((Outcome.IDLE, Outcome.DELIVERED), 200, "ok", ["idle"], ["lambda"]),
        (
            (Outcome.NO_CALLBACK, Outcome.VIEWER_STALLED),
            504,
            "viewer_abort",
            ["deadline", "send"],
            ["viewer"],
        ),
        ((Outcome.VIEWER_ABORT, Outcome.VIEWER_ABORT), 0, "viewer_abort", [], ["viewer"]),
    ],
)
def test_labels_timeouts_and_aborts_follow_the_ends(ends, status, label, timers, sides):
    tally = finish(*ends, status=status)
    code = f"{status // 100}xx" if status else "4xx"  # 499: no status was ever sent
    assert value(tally, "sssrd_requests_total", code=code, outcome=label) == 1
    for kind in ("head", "deadline", "idle", "send"):
        assert value(tally, "sssrd_timeouts_total", kind=kind) == timers.count(kind)
    for side in ("viewer", "lambda"):
        assert value(tally, "sssrd_aborts_total", side=side) == sides.count(side)


def test_a_render_error_is_counted_by_where_it_was_learnt():
    tally = finish(Outcome.RENDER_ERROR, status=502, render_error="callback")
    assert value(tally, "sssrd_render_errors_total", source="callback") == 1
    assert value(tally, "sssrd_render_errors_total", source="invoke") == 0
