"""The callback listener: where Lambdas POST the responses they render.

Per connection: read a request head (bounded, timed), check route and token, claim the pending
entry once, and hand the connection to the waiting viewer's cycle as a ClaimedCallback. The
viewer side moves the body (pipe.py) and reports back a StreamEnd; this side answers the Lambda
with it: 200 and a JSON summary when delivered, an error otherwise. A delivered callback that
asked for it (`Connection: keep-alive`, as the helpers send) keeps its connection for the
Lambda's next callback (its decoder knows where the body ended); every other answer closes it,
so only a Lambda whose last callback was accepted reuses a connection, and each request on it
still needs its own token. Every head is answered: one
refused before routing gets its status (400, 408, 431) at once; one refused after parsing still
goes through route and token, so that its own viewer learns at once (502) rather than at the
deadline. An error report (RENDER_ERROR_CONTENT_TYPE: the render failed before its first write)
is a callback too: its token is checked before its small JSON body is read, it claims the entry
like any callback, the viewer gets 502 at once, and it is answered 200 `{"reported": true}`.
Nothing that arrives here can touch any entry but the one its token names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import h11

from sssrd import logs
from sssrd.chunked import BodyDecoder, ChunkedDecoder, LengthDecoder
from sssrd.connection import BadHead, Connection, canned_response, complete_response
from sssrd.headers import first_header
from sssrd.invokers.base import printable
from sssrd.outcomes import Outcome, Rejected
from sssrd.pending import Rejection
from sssrd.prelude import PRELUDE_CONTENT_TYPE
from sssrd.served import ServedConnection

CALLBACK_PREFIX = b"/v1/callback/"
RENDER_ERROR_CONTENT_TYPE = b"application/vnd.sssrd.render-error+json"
MAX_ERROR_REPORT_BYTES = 4096
MAX_ERROR_TYPE_CHARS = 128


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


class CallbackConnection(ServedConnection):
    """Serves callbacks: after a delivered one that asked for keep-alive the connection waits
    for the next, after any other answer it closes."""

    async def refuse_head(self, bad: BadHead) -> None:
        self.state.tally.callback_rejected(Rejected.MALFORMED)
        if bad.request is not None:
            await self.handle(bad.request, bad)
            return
        body = json.dumps({"error": str(bad)}).encode()
        await self.conn.send_quietly(canned_response(bad.status, body, b"application/json"))

    async def handle(self, request: h11.Request, refusal: BadHead | None = None) -> None:
        """Serve one callback (its head refused, if `refusal`); only a delivered one that asked
        for keep-alive, answered without `Connection: close`, leaves the connection open."""
        compat = self.state.settings.compat == "lambda-streaming"
        if request.target.startswith(CALLBACK_PREFIX):
            request_id = request.target[len(CALLBACK_PREFIX) :].decode("ascii", "replace")
            tokenless = False
        elif compat and request.target == b"/":
            request_id = (first_header(request.headers, b"x-request-id") or b"").decode("latin-1")
            tokenless = True
        else:
            await self.refuse(request, refusal, 404, "no such callback")
            return
        if request.method != b"POST":
            await self.refuse(request, refusal, 405, "callbacks are POSTed", [(b"allow", b"POST")])
            return
        stream = self.stream_for(request, request_id, refusal)
        try:
            token = bearer_token(request.headers)
            if stream.error_report and refusal is None:
                self.state.pending.authenticate(request_id, token, tokenless)
                await self.read_error_report(request, stream)
            self.state.pending.claim(request_id, token, stream, tokenless=tokenless)
        except Rejection as rejection:
            if stream.refusal is None:  # a refused head or report was counted as malformed
                self.state.tally.callback_rejected(rejection.reason)
            await self.refuse(request, stream.refusal, rejection.status, str(rejection))
            return
        if refusal is None and self.conn.h11.they_are_waiting_for_100_continue:
            await self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        outcome = await stream.finished
        if outcome.kind is Outcome.DELIVERED:
            summary = {"requestId": request_id, "bytes": outcome.body_bytes}
            if stream.body is not None:  # always, once delivered: the body was read to its end
                self.conn.body_ended_elsewhere(stream.body.unused)
            keep = asks_keep_alive(request.headers) and not self.state.draining
            await self.reply(request, 200, summary, close=not keep)
        elif outcome.kind is Outcome.RENDER_ERROR:  # the report was read whole, by h11
            keep = asks_keep_alive(request.headers) and not self.state.draining
            answer = {"requestId": request_id, "reported": True}
            await self.reply(request, 200, answer, close=not keep)
        elif outcome.kind is Outcome.BAD_CALLBACK:
            await self.reply(request, outcome.status, {"error": outcome.message})
        # Other ends: finish() has already answered and closed.

    async def read_error_report(self, request: h11.Request, stream: ClaimedCallback) -> None:
        """Read an authenticated error report (bounded in size and time) into the stream's
        `error_type`; a malformed one becomes its `refusal` (its viewer still gets 502)."""
        try:
            body = await self.report_body(request)
            stream.error_type = parse_error_report(body)
        except BadHead as bad:
            self.state.tally.callback_rejected(Rejected.MALFORMED)
            stream.refusal = bad

    async def report_body(self, request: h11.Request) -> bytes:
        """The body of an error report, read within head_timeout; BadHead (413, 408, 400)."""
        too_large = BadHead(
            413, f"an error report is at most {MAX_ERROR_REPORT_BYTES} bytes", request
        )
        length = first_header(request.headers, b"content-length")
        if length is not None and int(length) > MAX_ERROR_REPORT_BYTES:
            raise too_large
        if self.conn.h11.they_are_waiting_for_100_continue:
            await self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        body = bytearray()
        self.conn.deadline = self.state.loop.time() + self.state.settings.head_timeout
        try:
            while not isinstance(event := await self.conn.next_event(), h11.EndOfMessage):
                if not isinstance(event, h11.Data):  # h11.ConnectionClosed
                    raise BadHead(400, "the error report ended early", request)
                body += event.data
                if len(body) > MAX_ERROR_REPORT_BYTES:
                    raise too_large
        except TimeoutError:
            raise BadHead(408, "the error report was not received in time", request) from None
        except h11.RemoteProtocolError:
            raise BadHead(400, "the error report's framing is invalid", request) from None
        finally:
            self.conn.deadline = None
        return bytes(body)

    def stream_for(
        self, request: h11.Request, request_id: str, refusal: BadHead | None
    ) -> ClaimedCallback:
        content_type = first_header(request.headers, b"content-type")
        length = first_header(request.headers, b"content-length")
        return ClaimedCallback(
            conn=self.conn,
            request_id=request_id,
            prelude=media_type(content_type) == PRELUDE_CONTENT_TYPE,
            status_header=first_header(request.headers, b"x-status-code"),
            content_type=content_type,
            error_report=media_type(content_type) == RENDER_ERROR_CONTENT_TYPE,
            content_length=int(length) if length is not None and refusal is None else None,
            chunked=(first_header(request.headers, b"transfer-encoding") or b"").lower()
            == b"chunked",
            finished=self.state.loop.create_future(),
            refusal=refusal,
        )

    async def refuse(
        self,
        request: h11.Request,
        refusal: BadHead | None,
        status: int,
        message: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Refuse a callback; a refused head is the first thing wrong with it, so its own
        status and reason are what the Lambda is told."""
        if refusal is not None:
            status, message, extra = refusal.status, str(refusal), None
        await self.reply(request, status, {"error": message}, extra)

    async def reply(
        self,
        request: h11.Request,
        status: int,
        body: dict[str, Any],
        extra: list[tuple[bytes, bytes]] | None = None,
        close: bool = True,
    ) -> None:
        """Answer the Lambda, by default closing (the answer says so); a Lambda that hung up
        cannot be answered, and nothing else depends on it."""
        if self.conn.closed or self.conn.h11.our_state is not h11.SEND_RESPONSE:
            return
        content = [(b"content-type", b"application/json"), *(extra or [])]
        events = complete_response(
            status, json.dumps(body).encode(), content, request.method == b"HEAD", close=close
        )
        try:
            await self.conn.send(*events)
        except Exception:
            logs.log.debug("could not answer callback", exc_info=True)


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    value = first_header(headers, b"authorization")
    if value is None or value[:7].lower() != b"bearer ":
        return None
    return value[7:].strip().decode("ascii", "replace")


def asks_keep_alive(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the Lambda asked to keep the connection: an explicit opt-in, since a Lambda
    written when every answer closed may read its answer until the connection ends."""
    value = first_header(headers, b"connection") or b""
    return b"keep-alive" in (token.strip().lower() for token in value.split(b","))


def media_type(content_type: bytes | None) -> bytes:
    """A Content-Type's media type, lower-cased, without parameters (b"" when absent)."""
    return b"" if content_type is None else content_type.split(b";")[0].strip().lower()


def parse_error_report(body: bytes) -> str:
    """An error report's `errorType`, as printable ASCII (anything else becomes "?"), so that
    it is safe in a log line; BadHead(400) unless the body is a JSON object whose `errorType`
    is a string of 1 to MAX_ERROR_TYPE_CHARS characters. Other keys are ignored: a helper
    never sends the error's message, and sssrd would not keep it."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadHead(400, "the error report is not JSON") from None
    if not isinstance(document, dict):
        raise BadHead(400, "the error report is not a JSON object")
    error_type = document.get("errorType")
    if not isinstance(error_type, str) or not 0 < len(error_type) <= MAX_ERROR_TYPE_CHARS:
        message = f"errorType must be a string of 1 to {MAX_ERROR_TYPE_CHARS} characters"
        raise BadHead(400, message)
    return printable(error_type)
