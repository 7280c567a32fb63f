"""One vocabulary for how things end: a viewer request, a streamed body, a pending entry.

`Outcome` names every end once. The request outcomes (REQUEST_OUTCOMES) are what operators see,
as the `outcome` label of sssrd_requests and in the access log, so their values never change.
The other members say more precisely how a stream or a pending entry ended, for the callback
side and for a late callback's answer; a viewer that went away is VIEWER_ABORT on every side.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"
    TIMEOUT = "timeout"  # 504 before the head, 408 for a slow head or body
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
# The stream ends the viewer caused, rather than the Lambda.
VIEWER_SIDE = frozenset({Outcome.VIEWER_ABORT, Outcome.VIEWER_STALLED})
# What a pending entry remembers of its request's outcome (a late callback is told it).
ENTRY_END_OF = {
    Outcome.OK: Outcome.DELIVERED,
    Outcome.TIMEOUT: Outcome.LATE,
    Outcome.VIEWER_ABORT: Outcome.VIEWER_ABORT,
}


class Rejected(StrEnum):
    """Why a callback was refused: the `reason` label of sssrd_callbacks_rejected."""

    BAD_TOKEN = "bad_token"
    UNKNOWN = "unknown"
    DUPLICATE = "duplicate"
    LATE = "late"
    MALFORMED = "malformed"
