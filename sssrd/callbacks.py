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

import json
from collections.abc import Iterable
from typing import Any

import h11

from sssrd import logs
from sssrd.connection import BadHead, canned_response, complete_response
from sssrd.handoff import ClaimedCallback
from sssrd.headers import first_header
from sssrd.invokers.base import MAX_ERROR_TYPE_CHARS, printable
from sssrd.outcomes import Outcome, RejectReason
from sssrd.pending import CallbackRefused
from sssrd.prelude import PRELUDE_CONTENT_TYPE
from sssrd.served import StatefulConnection

CALLBACK_PREFIX = b"/v1/callback/"
RENDER_ERROR_CONTENT_TYPE = b"application/vnd.sssrd.render-error+json"
MAX_ERROR_REPORT_BYTES = 4096


class CallbackConnection(StatefulConnection):
    """Serves callbacks: after a delivered one that asked for keep-alive the connection waits
    for the next, after any other answer it closes."""

    async def refuse_head(self, bad: BadHead) -> None:
        self.state.tally.callback_rejected(RejectReason.MALFORMED)
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
        callback = self.claimed(request, request_id, refusal)
        try:
            token = bearer_token(request.headers)
            if callback.error_report and refusal is None:
                self.state.pending.authenticate(request_id, token, tokenless)
                await self.read_error_report(request, callback)
            self.state.pending.claim(request_id, token, callback, tokenless=tokenless)
        except CallbackRefused as refused:
            if callback.refusal is None:  # a refused head or report was counted as malformed
                self.state.tally.callback_rejected(refused.reason)
            await self.refuse(request, callback.refusal, refused.status, str(refused))
            return
        if refusal is None and self.conn.h11.they_are_waiting_for_100_continue:
            await self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        end = await callback.finished
        if end.kind is Outcome.DELIVERED:
            summary = {"requestId": request_id, "bytes": end.body_bytes}
            if callback.body is not None:  # always, once delivered: the body was read to its end
                self.conn.body_ended_elsewhere(callback.body.unused)
            keep = asks_keep_alive(request.headers) and not self.state.draining
            await self.reply(request, 200, summary, close=not keep)
        elif end.kind is Outcome.RENDER_ERROR:  # the report was read whole, by h11
            keep = asks_keep_alive(request.headers) and not self.state.draining
            answer = {"requestId": request_id, "reported": True}
            await self.reply(request, 200, answer, close=not keep)
        elif end.kind is Outcome.BAD_CALLBACK:
            await self.reply(request, end.status, {"error": end.message})
        # Other ends: finish() has already answered and closed.

    async def read_error_report(self, request: h11.Request, callback: ClaimedCallback) -> None:
        """Read an authenticated error report (bounded in size and time) into the callback's
        `error_type`; a malformed one becomes its `refusal` (its viewer still gets 502)."""
        try:
            body = await self.report_body(request)
            callback.error_type = parse_error_report(body)
        except BadHead as bad:
            self.state.tally.callback_rejected(RejectReason.MALFORMED)
            callback.refusal = bad

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
        try:
            with self.conn.deadline_in(self.state.settings.head_timeout):
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
        return bytes(body)

    def claimed(
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
