"""The hand-off of a claimed callback from the callback listener to the waiting viewer's cycle.

The callback side builds a ClaimedCallback from the callback's head and claims the pending entry
with it (pending.py: the entry's WAITING ends there); from then on the viewer's cycle owns it
until it is finished, once, with a StreamEnd, and the callback task answers the Lambda from that.
Its stages, and the only steps between them (anything else is a bug, HandOffError):

    stage       step                    next        who
    CLAIMED     relaying (enter)        STREAMING   the cycle starts relaying its body
    STREAMING   relaying (exit)         RELAYED     the relay has let go of the socket
    CLAIMED     finish(end)             ENDED       an error report, a refused head
    RELAYED     finish(end)             ENDED       how the relay ended
    CLAIMED     abandon()               ENDED       the viewer's request ended first
    RELAYED     abandon()               ENDED       (abandon() when ENDED does nothing)

finish() never runs while the relay holds the socket, since answering may close it. How the
Lambda learns of each end is outcomes.ENDS' `callback`: the callback task answers ("answer"), or
finish() answers 410 and closes at once ("gone": synchronously, so that the Lambda's next write
fails even if it races the viewer's close), or just closes ("cut"). Both listeners import this
module; it imports neither, so the types stay exact without an import circle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import h11

from sssrd.chunked import BodyDecoder, ChunkedDecoder, LengthDecoder
from sssrd.connection import BadHead, Connection, complete_response
from sssrd.outcomes import ENDS, Outcome


class Stage(Enum):
    CLAIMED = "claimed"  # handed to the viewer's cycle
    STREAMING = "streaming"  # its body is being relayed: the relay holds the socket
    RELAYED = "relayed"  # the relay has let go
    ENDED = "ended"  # finished: the callback side answers, or it was answered and closed here


Step = Literal["relay", "let go", "finish"]
# (stage, step) -> the next stage: the only moves there are (the table in the docstring).
STEPS: dict[tuple[Stage, Step], Stage] = {
    (Stage.CLAIMED, "relay"): Stage.STREAMING,
    (Stage.STREAMING, "let go"): Stage.RELAYED,
    (Stage.CLAIMED, "finish"): Stage.ENDED,
    (Stage.RELAYED, "finish"): Stage.ENDED,
}


class HandOffError(RuntimeError):
    """A step the hand-off's table does not allow: a bug in its owner."""


@dataclass(slots=True)
class StreamEnd:
    """How a stream ended, as the callback side answers it."""

    kind: Outcome  # DELIVERED, BAD_CALLBACK, RENDER_ERROR, or a StreamAborted kind
    body_bytes: int = 0
    message: str = ""
    status: int = 400  # what a malformed callback is answered


@dataclass(eq=False, slots=True)
class ClaimedCallback:
    """A claimed callback, handed from the callback listener to the viewer's cycle (the
    Lambda-side helper's CallbackStream, in sssrd/callback/, is the other end of it)."""

    conn: Connection
    request_id: str
    prelude: bool
    status_header: bytes | None
    content_type: bytes | None
    content_length: int | None
    chunked: bool
    finished: asyncio.Future[StreamEnd] = field(repr=False)
    refusal: BadHead | None = None  # the head was refused: the viewer gets 502, no body is read
    error_report: bool = False  # an error report, not a response: its body is read here
    error_type: str | None = None  # a valid error report's (sanitised) type: the viewer gets 502
    body: BodyDecoder | None = field(default=None, repr=False)
    stage: Stage = Stage.CLAIMED

    def decoder(self) -> BodyDecoder:
        """A decoder for the body, holding what h11 already read past the request head.

        The body is read by sssrd's own decoder, not h11, so that payload runs can be spliced;
        h11 therefore never sees its end: once delivered, the decoder says where it was.
        """
        decoder = ChunkedDecoder() if self.chunked else LengthDecoder(self.content_length or 0)
        decoder.receive(self.conn.h11.trailing_data[0])
        self.body = decoder
        return decoder

    @contextlib.contextmanager
    def relaying(self) -> Iterator[None]:
        """CLAIMED -> STREAMING for the block, then RELAYED: the relay holds the socket inside."""
        self.step("relay")
        try:
            yield
        finally:
            self.step("let go")

    def finish(self, end: StreamEnd) -> None:
        """Report how the stream ended: once, and never while the relay holds the socket."""
        self.step("finish")
        self.finished.set_result(end)
        answer = ENDS[end.kind].callback
        if answer == "answer" or self.conn.closed:
            return
        if answer == "gone":
            answer_now(self.conn, 410, {"error": end.message})
        self.conn.close()

    def abandon(self) -> None:
        """The viewer's request ended without finishing this stream (the viewer reset under a
        send, cancellation): the Lambda is told the viewer is gone. Nothing once ENDED."""
        if self.stage is not Stage.ENDED:
            self.finish(StreamEnd(Outcome.VIEWER_ABORT, message="the viewer's request ended"))

    def step(self, step: Step) -> None:
        following = STEPS.get((self.stage, step))
        if following is None:
            raise HandOffError(f"callback {self.request_id}: no step {step!r} from {self.stage}")
        self.stage = following


def answer_now(conn: Connection, status: int, body: dict[str, Any]) -> None:
    """Best-effort answer without waiting: a small response fits the socket buffer."""
    if conn.h11.our_state is not h11.SEND_RESPONSE:
        return
    content = [(b"content-type", b"application/json")]
    events = complete_response(status, json.dumps(body).encode(), content, close=True)
    with contextlib.suppress(OSError, h11.LocalProtocolError):
        conn.sock.send(b"".join(conn.h11.send(event) or b"" for event in events))
