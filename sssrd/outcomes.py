"""One vocabulary for how things end (a viewer request, a streamed body, a pending entry), and
one table of what each kind of end means.

`Outcome` names every end once. The request outcomes (REQUEST_OUTCOMES) are what operators see,
as the `outcome` label of sssrd_requests and in the access log, so their values never change.
The other members say more precisely how a request, a stream or a pending entry ended. A
request's record collects the ends that happened to it, as facts; ENDS says, for each kind,
the label it counts as, whose abort it was, which timer fired, what its pending entry remembers
and how the Lambda's callback is answered, and the tally derives every counter and label from
that table alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Outcome(StrEnum):
    OK = "ok"
    TIMEOUT = "timeout"  # the label of SLOW_REQUEST, NO_CALLBACK and RENDER_TIMED_OUT
    INVOKE_THROTTLED = "invoke_throttled"
    INVOKE_FAILED = "invoke_failed"
    SHED = "shed"  # max_pending reached: 503
    VIEWER_ABORT = "viewer_abort"  # the viewer went away (before or during its response)
    LAMBDA_ABORT = "lambda_abort"  # the callback broke off, or its framing was invalid
    BAD_CALLBACK = "bad_callback"  # the callback's head or prelude was malformed: 502
    RENDER_ERROR = "render_error"  # the render reported or returned an error before its head: 502
    TOO_LARGE = "too_large"
    BAD_REQUEST = "bad_request"
    HEALTH = "health"  # /healthz on the viewer listener
    # How a request ended, more precisely than its label:
    SLOW_REQUEST = "slow_request"  # its head or body did not arrive within head_timeout: 408
    NO_CALLBACK = "no_callback"  # its callback deadline passed: 504
    RENDER_TIMED_OUT = "render_timed_out"  # a RequestResponse invoke said the render timed out
    # How a stream ended, more precisely than its request's outcome:
    DELIVERED = "delivered"  # the callback's whole body reached the viewer (also an entry's end)
    VIEWER_STALLED = "viewer_stalled"  # the viewer took no bytes for send_timeout
    IDLE = "idle"  # the Lambda sent nothing for idle_timeout
    # How a pending entry ended, besides DELIVERED and VIEWER_ABORT:
    LATE = "late"  # its callback deadline passed
    FAILED = "failed"  # its request ended any other way


REQUEST_OUTCOMES = (
    Outcome.OK,
    Outcome.TIMEOUT,
    Outcome.INVOKE_THROTTLED,
    Outcome.INVOKE_FAILED,
    Outcome.SHED,
    Outcome.VIEWER_ABORT,
    Outcome.LAMBDA_ABORT,
    Outcome.BAD_CALLBACK,
    Outcome.RENDER_ERROR,
    Outcome.TOO_LARGE,
    Outcome.BAD_REQUEST,
    Outcome.HEALTH,
)
# Which timer fired: the viewer's request head (or body), the callback deadline, the Lambda
# idling mid-body, the viewer not taking bytes (the `kind` label of sssrd_timeouts).
TimeoutKind = Literal["head", "deadline", "idle", "send"]
# Whose abort an end was (the `side` label of sssrd_aborts).
Side = Literal["viewer", "lambda"]
# How the callback side learns of a stream's end: "answer": the callback task answers (200, or
# the refusal's status); "gone": told 410 and closed at once, so the render stops; "cut": closed
# at once, unanswered (the Lambda broke the stream itself).
CallbackAnswer = Literal["answer", "gone", "cut"]


@dataclass(frozen=True, slots=True)
class EndTraits:
    """What one kind of end means, wherever it is counted, logged or answered."""

    label: Outcome  # the request outcome it counts as (sssrd_requests, the access line)
    side: Side | None = None  # an abort: whose (sssrd_aborts)
    timer: TimeoutKind | None = None  # the timer that fired (sssrd_timeouts)
    entry: Outcome = Outcome.FAILED  # what its pending entry remembers (a late callback is told)
    callback: CallbackAnswer = "answer"  # a stream's end: how the Lambda is answered


ENDS: dict[Outcome, EndTraits] = {
    Outcome.DELIVERED: EndTraits(Outcome.OK, entry=Outcome.DELIVERED),
    Outcome.HEALTH: EndTraits(Outcome.HEALTH),
    Outcome.SHED: EndTraits(Outcome.SHED),
    Outcome.TOO_LARGE: EndTraits(Outcome.TOO_LARGE),
    Outcome.BAD_REQUEST: EndTraits(Outcome.BAD_REQUEST),
    Outcome.SLOW_REQUEST: EndTraits(Outcome.TIMEOUT, timer="head", entry=Outcome.LATE),
    Outcome.INVOKE_THROTTLED: EndTraits(Outcome.INVOKE_THROTTLED),
    Outcome.INVOKE_FAILED: EndTraits(Outcome.INVOKE_FAILED),
    Outcome.NO_CALLBACK: EndTraits(Outcome.TIMEOUT, timer="deadline", entry=Outcome.LATE),
    Outcome.RENDER_TIMED_OUT: EndTraits(Outcome.TIMEOUT, entry=Outcome.LATE),
    Outcome.RENDER_ERROR: EndTraits(Outcome.RENDER_ERROR),
    Outcome.BAD_CALLBACK: EndTraits(Outcome.BAD_CALLBACK),
    Outcome.LAMBDA_ABORT: EndTraits(Outcome.LAMBDA_ABORT, side="lambda", callback="cut"),
    Outcome.IDLE: EndTraits(Outcome.LAMBDA_ABORT, side="lambda", timer="idle", callback="cut"),
    Outcome.VIEWER_ABORT: EndTraits(
        Outcome.VIEWER_ABORT, "viewer", entry=Outcome.VIEWER_ABORT, callback="gone"
    ),
    Outcome.VIEWER_STALLED: EndTraits(
        Outcome.VIEWER_ABORT, "viewer", timer="send", entry=Outcome.VIEWER_ABORT, callback="gone"
    ),
}


class RejectReason(StrEnum):
    """Why a callback was refused: the `reason` label of sssrd_callbacks_rejected."""

    BAD_TOKEN = "bad_token"
    UNKNOWN = "unknown"
    DUPLICATE = "duplicate"
    LATE = "late"
    MALFORMED = "malformed"
