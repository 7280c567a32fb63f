"""The callback listener: where Lambdas POST the responses they render.

Per connection: read a request head (bounded, timed), check route and token, claim the pending
entry once, and hand the connection to the waiting viewer's cycle as a CallbackStream. The viewer
side moves the body (pipe.py) and reports back an Outcome; this side answers the Lambda with it:
200 and a JSON summary when delivered, an error and a close otherwise. Nothing that arrives here can
touch any entry but the one its token names.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import h11

from sssrd.chunked import BodyDecoder, ChunkedDecoder, LengthDecoder
from sssrd.connection import BadHead, Connection, Served, complete_response
from sssrd.pending import Rejection
from sssrd.prelude import PRELUDE_CONTENT_TYPE

if TYPE_CHECKING:
    from sssrd.server import Server

CALLBACK_PREFIX = b"/v1/callback/"


@dataclass(slots=True)
class Outcome:
    """How a stream ended, as the callback side answers it."""

    kind: str  # delivered | viewer_gone | no_body | malformed | lambda_abort | idle
    body_bytes: int = 0
    message: str = ""


@dataclass(eq=False, slots=True)
class CallbackStream:
    """A claimed callback, handed from the callback listener to the viewer's cycle."""

    conn: Connection
    request_id: str
    prelude: bool
    status_header: bytes | None
    content_type: bytes | None
    content_length: int | None
    chunked: bool
    finished: asyncio.Future[Outcome] = field(repr=False)

    def decoder(self) -> BodyDecoder:
        """A decoder for the body, holding what h11 already read past the request head.

        The body is read by sssrd's own decoder, not h11, so that payload runs can be spliced;
        h11 therefore never sees its end, and the answer to the callback closes the connection.
        """
        decoder = ChunkedDecoder() if self.chunked else LengthDecoder(self.content_length or 0)
        decoder.receive(self.conn.h11.trailing_data[0])
        return decoder

    def finish(self, outcome: Outcome) -> None:
        """Report how the stream ended; an unsuccessful end closes the callback right now.

        Closing synchronously (not when the callback task next runs) guarantees the Lambda's
        next write fails even if it races the viewer's close.
        """
        if self.finished.done():
            return
        self.finished.set_result(outcome)
        status = FAILURE_STATUS.get(outcome.kind)
        if outcome.kind != "delivered" and not self.conn.closed:
            if status is not None:
                answer_now(self.conn, status, {"error": outcome.message})
            self.conn.close()


# What the Lambda is told when its stream did not complete (None: nobody left to tell).
FAILURE_STATUS = {"viewer_gone": 410, "no_body": 410, "malformed": 400}


def json_response(status: int, body: dict[str, Any], close: bool) -> list[Any]:
    content = [(b"content-type", b"application/json")]
    return complete_response(status, json.dumps(body).encode(), content, close=close)


def answer_now(conn: Connection, status: int, body: dict[str, Any]) -> None:
    """Best-effort answer without waiting: a small response fits the socket buffer."""
    if conn.h11.our_state is not h11.SEND_RESPONSE:
        return
    try:
        data = b"".join(conn.h11.send(event) or b"" for event in json_response(status, body, True))
        conn.sock.send(data)
    except (OSError, h11.LocalProtocolError):
        pass


def header_value(headers: Any, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


class CallbackConnection(Served):
    """Serves one connection on the callback listener."""

    server: Server

    async def run(self) -> None:
        while True:
            settings = self.server.settings  # per request: SIGHUP may have replaced them
            try:
                request = await self.conn.next_request(settings)
            except BadHead as bad:
                await self.reply(bad.status, {"error": str(bad)}, close=True)
                return
            if request is None or not await self.handle(request) or not self.conn.next_cycle():
                return

    async def handle(self, request: h11.Request) -> bool:
        """Serve one callback; True if the connection may carry another."""
        compat = self.server.settings.compat == "lambda-streaming"
        if request.method == b"POST" and request.target.startswith(CALLBACK_PREFIX):
            request_id = request.target[len(CALLBACK_PREFIX) :].decode("ascii", "replace")
            tokenless = False
        elif compat and request.method == b"POST" and request.target == b"/":
            request_id = (header_value(request.headers, b"x-request-id") or b"").decode("latin-1")
            tokenless = True
        else:
            await self.reply(404, {"error": "no such callback"}, close=True)
            return False
        stream = self.stream_for(request, request_id)
        try:
            token = bearer_token(request.headers)
            self.server.pending.claim(request_id, token, stream, tokenless=tokenless)
        except Rejection as rejection:
            self.server.callback_rejected(rejection.reason)
            await self.reply(rejection.status, {"error": str(rejection)}, close=True)
            return False
        if self.conn.h11.they_are_waiting_for_100_continue:
            await self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        outcome = await stream.finished
        if outcome.kind != "delivered":
            return False  # finish() has already answered and closed
        await self.reply(200, {"requestId": request_id, "bytes": outcome.body_bytes}, close=True)
        return False

    def stream_for(self, request: h11.Request, request_id: str) -> CallbackStream:
        content_type = header_value(request.headers, b"content-type")
        length = header_value(request.headers, b"content-length")
        return CallbackStream(
            conn=self.conn,
            request_id=request_id,
            prelude=content_type is not None
            and content_type.split(b";")[0].strip().lower() == PRELUDE_CONTENT_TYPE,
            status_header=header_value(request.headers, b"x-status-code"),
            content_type=content_type,
            content_length=int(length) if length is not None else None,
            chunked=(header_value(request.headers, b"transfer-encoding") or b"").lower()
            == b"chunked",
            finished=self.server.loop.create_future(),
        )

    async def reply(self, status: int, body: dict[str, Any], close: bool = False) -> None:
        """Answer the Lambda; never raises (it may already have gone)."""
        if self.conn.closed or self.conn.h11.our_state is not h11.SEND_RESPONSE:
            return
        try:
            await self.conn.send(*json_response(status, body, close))
        except Exception:  # a Lambda that hung up cannot be answered; nothing else depends on it
            self.server.log.debug("could not answer callback", exc_info=True)


def bearer_token(headers: Any) -> str | None:
    value = header_value(headers, b"authorization")
    if value is None or value[:7].lower() != b"bearer ":
        return None
    return value[7:].strip().decode("ascii", "replace")
