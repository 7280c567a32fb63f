"""The hand-off of a claimed callback from the callback listener to the waiting viewer's cycle.

The callback side builds a ClaimedCallback from the callback's head and claims the pending entry
with it (pending.py); the viewer's cycle receives it, moves its body (pipe.py) and reports back
once, with `finish(StreamEnd)`; the callback side answers the Lambda from that. A stream the
viewer cut short is answered here and now (410, closed), synchronously, so that the Lambda's next
write fails even if it races the viewer's close. Both sides import this module; it imports
neither, so the types stay exact without an import circle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import h11

from sssrd.chunked import BodyDecoder, ChunkedDecoder, LengthDecoder
from sssrd.connection import BadHead, Connection, complete_response
from sssrd.outcomes import Outcome


@dataclass(slots=True)
class StreamEnd:
    """How a stream ended, as the callback side answers it."""

    kind: Outcome  # DELIVERED, BAD_CALLBACK, or a StreamAborted kind
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

    def decoder(self) -> BodyDecoder:
        """A decoder for the body, holding what h11 already read past the request head.

        The body is read by sssrd's own decoder, not h11, so that payload runs can be spliced;
        h11 therefore never sees its end: once delivered, the decoder says where it was.
        """
        decoder = ChunkedDecoder() if self.chunked else LengthDecoder(self.content_length or 0)
        decoder.receive(self.conn.h11.trailing_data[0])
        self.body = decoder
        return decoder

    def finish(self, outcome: StreamEnd) -> None:
        """Report how the stream ended (idempotent). A stream cut short closes the callback
        right now: synchronously (not when the callback task next runs), so the Lambda's next
        write fails even if it races the viewer's close. The callback task answers the rest.
        """
        if self.finished.done():
            return
        self.finished.set_result(outcome)
        if outcome.kind in ANSWERED_BY_CALLBACK_TASK or self.conn.closed:
            return
        if outcome.kind in STOP_RENDERING:
            answer_now(self.conn, 410, {"error": outcome.message})
        self.conn.close()


# Outcomes the callback task answers itself (200, or a refusal followed by a lingering close).
ANSWERED_BY_CALLBACK_TASK = frozenset(
    {Outcome.DELIVERED, Outcome.BAD_CALLBACK, Outcome.RENDER_ERROR}
)
# Outcomes after which the render must stop: told 410 (ViewerGone) and closed at once.
STOP_RENDERING = frozenset({Outcome.VIEWER_ABORT, Outcome.VIEWER_STALLED})


def answer_now(conn: Connection, status: int, body: dict[str, Any]) -> None:
    """Best-effort answer without waiting: a small response fits the socket buffer."""
    if conn.h11.our_state is not h11.SEND_RESPONSE:
        return
    content = [(b"content-type", b"application/json")]
    events = complete_response(status, json.dumps(body).encode(), content, close=True)
    with contextlib.suppress(OSError, h11.LocalProtocolError):
        conn.sock.send(b"".join(conn.h11.send(event) or b"" for event in events))
