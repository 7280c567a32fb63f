"""The viewer listener: one ViewerConnection per socket, one RequestCycle per request.

The connection owns the socket, keep-alive and the head deadlines (a new connection's whole
head within head_timeout; a kept one's first byte within keepalive_timeout, then the whole head
within head_timeout: slowloris gets a 408). The cycle owns
one request: read the bounded body, register a pending entry, invoke the Lambda, wait for its
callback (deadline -> 504), then stream the callback's response to the viewer; it reads the
settings once, when it starts. With `invocation_type = "RequestResponse"` it also watches the
invoke's answer (the render's end): an end before any callback is answered at once (502, 504 for
a timeout), one while the callback is still open cuts the stream. A head refused before any of
that (400, 408, 431, 505) is no cycle: the connection answers it and writes its access line.
Every path through a cycle releases the entry, finishes any callback it was handed (so the
callback is always answered or closed) and reports one access record.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from time import perf_counter
from typing import Any

import h11

from sssrd import logs
from sssrd.chunked import FramingCheck, FramingError
from sssrd.config import Settings
from sssrd.connection import (
    BadHead,
    Connection,
    PeerGone,
    PeerStalled,
    canned_response,
    complete_response,
    response,
)
from sssrd.event import (
    CallbackInfo,
    EventTooLarge,
    InvalidTarget,
    build_compat_event,
    build_event,
    encode_event,
    split_target,
    target_authority,
)
from sssrd.forwarded import client_address
from sssrd.handoff import ClaimedCallback, StreamEnd
from sssrd.headers import first_header
from sssrd.invokers import InvokeError
from sssrd.invokers.base import RenderEnded
from sssrd.metrics import RenderErrorSource
from sssrd.outcomes import ENDS, Outcome
from sssrd.pending import Pending, PendingFull, WaitEnded
from sssrd.pipe import SPLICE_MIN, BadFraming, BodyRelay, StreamAborted, ViewerWatch
from sssrd.prelude import PreludeError, PreludeReader, ResponseHead, plain_head
from sssrd.served import StatefulConnection
from sssrd.state import ServerState
from sssrd.tally import RequestRecord

NO_BODY_STATUSES = frozenset({204, 304})
# Methods no render can answer through sssrd: CONNECT asks for a tunnel (h11 would take the
# render's 2xx for a protocol switch). A 405 lists what is served: RFC 9110's other methods and
# PATCH (any other token method is served too).
UNSERVED_METHODS = frozenset({b"CONNECT"})
ALLOW = (b"allow", b"GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH")
TEXT = b"text/plain; charset=utf-8"
MALFORMED_RESPONSE = "the render sent a malformed response"  # never what was wrong with it


class ViewerConnection(StatefulConnection):
    """Serves one viewer socket until it closes, errs or idles out."""

    async def handle(self, request: h11.Request) -> None:
        await RequestCycle(self.state, self.conn, request).run()

    async def refuse_head(self, bad: BadHead) -> None:
        """A refused head gets its answer and, as any viewer request, its access line."""
        tally = self.state.tally
        request = bad.request
        record = RequestRecord(
            method=None if request is None else request_method(request),
            path=None if request is None else request_path(request),
            status=bad.status,
        )
        record.ended(Outcome.SLOW_REQUEST if bad.status == 408 else Outcome.BAD_REQUEST)
        tally.cycle_started()
        try:
            head_request = request is not None and request.method == b"HEAD"
            answer = canned_response(bad.status, f"{bad}\n".encode(), TEXT, head_request)
            await self.conn.send_quietly(answer)
        finally:
            headers = () if request is None else request.headers
            record.client = viewer_address(self.conn, headers, self.state.settings)
            tally.request_finished(record)


def request_method(request: h11.Request) -> str:
    return request.method.decode("ascii", "replace")


def request_path(request: h11.Request) -> str:
    """The target without its query: what the access line and the health route see."""
    return request.target.split(b"?", 1)[0].decode("utf-8", "replace")


def viewer_address(
    conn: Connection, headers: Sequence[tuple[bytes, bytes]], settings: Settings
) -> str:
    """The viewer's address (X-Forwarded-For believed only from trusted_proxies)."""
    forwarded = [value for name, value in headers if name == b"x-forwarded-for"]
    return client_address(conn.peer, forwarded, settings.trusted_proxies)


class RequestCycle:
    """One viewer request, from parsed head to the end of its response.

    It reads the settings once, when it starts (`self.settings`): a reload mid-request cannot
    mix old and new limits within one request."""

    def __init__(self, state: ServerState, conn: Connection, request: h11.Request) -> None:
        self.state = state
        self.settings = state.settings
        self.tally = state.tally
        self.conn = conn
        self.request = request
        self.loop = state.loop
        self.method = request_method(request)
        self.path = request_path(request)
        self.record = RequestRecord(method=self.method, path=self.path)
        self.response_started = False
        self.render: asyncio.Task[RenderEnded] | None = None  # a RequestResponse invoke

    @functools.cached_property
    def client(self) -> str:
        return viewer_address(self.conn, self.request.headers, self.settings)

    async def run(self) -> None:
        """Serve the request; whatever ends it, report its one access record."""
        self.tally.cycle_started()
        try:
            await self.serve()
        except PeerGone as gone:
            stalled = isinstance(gone, PeerStalled)
            self.record.ended(Outcome.VIEWER_STALLED if stalled else Outcome.VIEWER_ABORT)
            self.conn.close()
        finally:
            self.record.client = self.client
            self.tally.request_finished(self.record)

    async def serve(self) -> None:
        if self.request.method in UNSERVED_METHODS:
            message = f"{self.method} is not served here"
            await self.reply(405, message, Outcome.BAD_REQUEST, [ALLOW], close=True)
            return
        body = await self.read_body()
        if body is None:
            return
        if self.path == "/healthz":
            await self.health()
            return
        try:
            entry = self.state.pending.register(
                self.loop, self.settings.callback_timeout, int(time.time() * 1000)
            )
        except PendingFull:
            await self.reply(
                503, "too many pending requests", Outcome.SHED, [(b"retry-after", b"1")]
            )
            return
        self.record.request_id = entry.request_id
        try:
            await self.rendezvous(entry, body)
        finally:
            self.state.pending.release(entry, ENDS[self.record.end].entry)
            self.drop_render()

    def drop_render(self) -> None:
        """A RequestResponse invoke still open when its request ended undelivered holds one of
        the pool's max_pending connections, for up to the function's timeout, with nobody left
        to read its answer: drop it (the function runs on; closing the exchange frees the slot
        for the next request). A delivered render is left to return, so its connection goes
        back to the pool."""
        render = self.render
        if render is not None and not render.done() and self.record.end is not Outcome.DELIVERED:
            render.cancel()

    async def health(self) -> None:
        if self.state.draining:
            await self.reply(503, "draining", Outcome.HEALTH)
        else:
            await self.reply(200, "ok", Outcome.HEALTH)

    async def read_body(self) -> bytes | None:
        """The whole request body, or None once the viewer has been answered (413/408/400).

        h11 reads it; a chunked body is also screened by sssrd's own strict framing rules,
        which refuse what h11 lets through (control bytes in a chunk extension). The body is
        timed as the head is (the viewer's request is the viewer's clock, not the Lambda's):
        it must arrive whole within head_timeout of the head (or of the 100 Continue). A
        viewer that hangs up halfway is a viewer abort (PeerGone), not a framing error.
        """
        settings = self.settings
        declared = self.declared_length()
        if declared is not None and declared > settings.max_body_bytes:
            await self.reply(413, "request body too large", Outcome.TOO_LARGE, close=True)
            return None
        if self.conn.h11.they_are_waiting_for_100_continue:
            await self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        try:
            with self.conn.deadline_in(settings.head_timeout):
                body = await self.receive_body(settings.max_body_bytes)
        except TimeoutError:
            self.record.ended(Outcome.SLOW_REQUEST)
            message = "request body not received in time"
            await self.reply(408, message, Outcome.SLOW_REQUEST, close=True)
            return None
        except (h11.RemoteProtocolError, FramingError):
            if self.conn.h11.trailing_data[1]:  # h11 refuses a body cut short by the peer's close
                raise PeerGone("viewer closed while sending its body") from None
            message = "the request body's framing is invalid"
            await self.reply(400, f"bad request: {message}", Outcome.BAD_REQUEST, close=True)
            return None
        if body is None:
            await self.reply(413, "request body too large", Outcome.TOO_LARGE, close=True)
        return body

    async def receive_body(self, limit: int) -> bytes | None:
        """The body as h11 reads it (screened when chunked); None once it exceeds `limit`."""
        body = bytearray()
        screen = self.framing_check()
        while not isinstance(event := await self.conn.next_event(screen), h11.EndOfMessage):
            if not isinstance(event, h11.Data):  # h11.ConnectionClosed
                raise PeerGone("viewer closed while sending its body")
            body += event.data
            if len(body) > limit:
                return None
        return bytes(body)

    def framing_check(self) -> FramingCheck | None:
        """A strict screen for a chunked body, fed what h11 already holds past the head."""
        coding = first_header(self.request.headers, b"transfer-encoding")
        if coding is None or coding.lower() != b"chunked":
            return None
        check = FramingCheck()
        check(self.conn.h11.trailing_data[0])
        return check

    def declared_length(self) -> int | None:
        length = first_header(self.request.headers, b"content-length")
        return None if length is None else int(length)

    async def rendezvous(self, entry: Pending[ClaimedCallback], body: bytes) -> None:
        """Invoke the Lambda and wait for its callback; then stream. The cycle is the one owner
        of a callback handed over: whatever ends it (the viewer resetting under a send,
        cancellation), the callback is finished or abandoned, so it is answered or closed."""
        payload = await self.event_payload(entry, body)
        if payload is None:
            return
        max_held = self.settings.max_head_bytes  # pipelined bytes kept while watching: a head
        watch = ViewerWatch(self.conn, lambda: entry.end_wait(Outcome.VIEWER_ABORT), max_held)
        try:
            callback = await self.invoke_and_wait(entry, payload)
            if callback is None:
                return
            self.record.callback_wait = perf_counter() - self.record.started
            if callback.error_type is not None:
                callback.finish(StreamEnd(Outcome.RENDER_ERROR, message="error reported"))
                await self.render_failed(callback.error_type, "callback")
                return
            if callback.refusal is not None:  # no body to relay: never counted as a stream
                message = f"the callback was refused: {callback.refusal}"
                callback.finish(malformed(message, callback.refusal))
                await self.reply(502, MALFORMED_RESPONSE, Outcome.BAD_CALLBACK)
                return
            await self.stream(callback, watch)
        finally:
            watch.stop()
            delivered = claimed_callback(entry)
            if delivered is not None:
                delivered.abandon()

    async def event_payload(self, entry: Pending[ClaimedCallback], body: bytes) -> bytes | None:
        """The encoded event, or None once the viewer has been answered (413, 400)."""
        try:
            return encode_event(self.build_event(entry, body), self.settings.max_event_bytes)
        except EventTooLarge:
            await self.reply(413, "request too large for the render function", Outcome.TOO_LARGE)
        except InvalidTarget:
            message = "bad request: the request target must be a path or an absolute URL"
            await self.reply(400, message, Outcome.BAD_REQUEST, close=True)
        return None

    async def invoke_and_wait(
        self, entry: Pending[ClaimedCallback], payload: bytes
    ) -> ClaimedCallback | None:
        """Invoke the render and wait for the callback that claims the entry; None once the
        request has ended otherwise (the invoke failed, the render ended first, the deadline
        passed: the viewer has been answered; or the viewer left)."""
        if self.settings.invocation_type == "RequestResponse":
            self.render = self.state.invoker.start(payload)
            if await self.ended_before_callback(entry, self.render):
                return None
        elif (failure := await self.invoke(payload)) is not None and not entry.claimed:
            await self.refuse_invoke(failure)
            return None
        try:
            return await entry.delivery
        except WaitEnded as ended:
            if ended.reason is Outcome.LATE:
                self.record.ended(Outcome.NO_CALLBACK)
                await self.reply(504, "the render did not call back in time", Outcome.NO_CALLBACK)
            else:
                self.record.ended(Outcome.VIEWER_ABORT)
                self.conn.close()
            return None

    async def render_failed(self, error_type: str, source: RenderErrorSource) -> None:
        """The render failed before its response head: 502 at once. Its error type goes to the
        access line and the metric, never to the viewer (nor does its message, anywhere)."""
        self.record.error_type = error_type
        self.record.render_error = source
        await self.reply(502, "the render failed", Outcome.RENDER_ERROR)

    async def refuse_invoke(self, failure: InvokeError) -> None:
        retry = [(b"retry-after", b"%d" % failure.retry_after)] if failure.retry_after else []
        await self.reply(failure.status, failure.message, failure.outcome, retry)

    async def ended_before_callback(
        self, entry: Pending[ClaimedCallback], render: asyncio.Task[RenderEnded]
    ) -> bool:
        """RequestResponse: wait for a callback or the render's end, whichever comes first.
        True when the render ended, or could not start, before any callback claimed the
        request: its viewer has then been answered. Otherwise the wait goes on as for Event."""
        started = perf_counter()
        await asyncio.wait((render, entry.delivery), return_when=asyncio.FIRST_COMPLETED)
        if entry.delivery.done():  # claimed, or the wait ended (deadline, viewer gone)
            return False
        self.record.invoke_seconds = perf_counter() - started
        try:
            ended = render.result()
        except InvokeError as failure:
            self.record.error = failure.detail
            await self.refuse_invoke(failure)
            return True
        if ended.timed_out:
            self.record.error_type = ended.error_type
            self.record.render_error = "invoke"
            await self.reply(504, "the render timed out", Outcome.RENDER_TIMED_OUT)
        else:
            if not ended.error_type:
                self.record.error = "the render returned without calling back"
            await self.render_failed(ended.error_type, "invoke")
        return True

    def cut_when_render_ends(self, relay: BodyRelay, render: asyncio.Task[RenderEnded]) -> None:
        """The render returned or raised while its callback is still open: nothing more will
        come, so the stream is cut once what it sent has been relayed, rather than at
        idle_timeout. (An invoke that failed on sssrd's side says nothing about the render:
        its stream goes on.)"""
        if render.cancelled() or render.exception() is not None:
            return
        ended = render.result()
        self.record.error_type = ended.error_type
        message = "the render ended with its callback still open"
        relay.interrupt_when_empty(StreamAborted(Outcome.LAMBDA_ABORT, message))

    async def invoke(self, payload: bytes) -> InvokeError | None:
        started = perf_counter()
        try:
            await self.state.invoker.invoke(payload)
        except InvokeError as failure:
            self.record.error = failure.detail
            return failure
        finally:
            self.record.invoke_seconds = perf_counter() - started
        return None

    def build_event(self, entry: Pending[ClaimedCallback], body: bytes) -> dict[str, Any]:
        request = self.request
        if self.settings.compat == "lambda-streaming":
            return build_compat_event(
                origin=self.state.callback_base,
                url=self.viewer_url(),
                request_id=entry.request_id,
            )
        callback = CallbackInfo(
            url=f"{self.state.callback_base}/v1/callback/{entry.request_id}",
            token=entry.token,
            deadline_ms=entry.deadline_epoch_ms,
        )
        return build_event(
            method=request.method.decode("ascii", "replace"),
            target=request.target,
            http_version=request.http_version.decode("ascii"),
            headers=list(request.headers),
            body=body,
            source_ip=self.client,
            request_id=entry.request_id,
            time_epoch_ms=int(time.time() * 1000),
            callback=callback,
        )

    def viewer_url(self) -> str:
        """The URL the viewer asked for, as the seed protocol's `url` (an absolute-form
        target's authority is its host, as in the event)."""
        headers = self.request.headers
        scheme = (first_header(headers, b"x-forwarded-proto") or b"http").decode("latin-1")
        target = self.request.target.decode("latin-1")
        host = target_authority(self.request.target)
        if host is None:
            host = (first_header(headers, b"host") or b"").decode("latin-1")
        else:
            path, query = split_target(self.request.target)
            target = f"{path}?{query}" if query else path
        return f"{scheme}://{host}{target}"

    async def stream(self, callback: ClaimedCallback, watch: ViewerWatch) -> None:
        """Relay the callback's response to the viewer; finish the callback with how that ended
        (once, after the relay has let go of its socket: the callback side may then linger on
        it); then answer the viewer for that end."""
        with callback.relaying(), self.relay_for(callback, watch) as relay:
            end = await self.relay_response(callback, relay, watch)
        callback.finish(end)
        await self.answer_end(end, relay)

    @contextlib.contextmanager
    def relay_for(self, callback: ClaimedCallback, watch: ViewerWatch) -> Iterator[BodyRelay]:
        """A relay from the callback to the viewer, counted as a stream. The viewer watch that
        guarded the wait now guards the relay (one reader registration for the whole request,
        not one per phase); a RequestResponse render that ends cuts it."""
        settings = self.settings
        with BodyRelay(
            callback.conn,
            self.conn,
            callback.decoder(),
            settings.idle_timeout,
            None if settings.body_path == "copy" else self.state.pipes,
            splice_min=1 if settings.body_path == "splice" else SPLICE_MIN,
            send_timeout=settings.send_timeout,
        ) as relay:
            watch.on_gone = relay.viewer_gone
            if watch.gone:  # it left between the callback's arrival and now
                relay.viewer_gone()
            cut = functools.partial(self.cut_when_render_ends, relay)
            if self.render is not None:
                self.render.add_done_callback(cut)
            self.tally.stream_started()
            started = perf_counter()
            try:
                yield relay
            finally:
                if self.render is not None:
                    self.render.remove_done_callback(cut)
                self.record.body_bytes = relay.copied + relay.spliced
                self.tally.stream_ended(perf_counter() - started, relay.copied, relay.spliced)

    async def relay_response(
        self, callback: ClaimedCallback, relay: BodyRelay, watch: ViewerWatch
    ) -> StreamEnd:
        """The callback's response head, then its body, to the viewer: how the stream ended."""
        try:
            head, first, body_length = await self.read_head(callback, relay)
            if head.dropped:
                names = [name.decode("latin-1") for name in head.dropped]
                extra = {"request_id": self.record.request_id, "headers": names}
                logs.log.debug("hop-by-hop and framing headers of the render dropped", extra=extra)
            # The head leaves with the first body bytes, in the relay's first write (which
            # happens before the relay waits for anything): one sendmsg fewer per request.
            relay.hold(self.head_bytes(head, body_length))
            if self.request.method == b"HEAD" or head.status in NO_BODY_STATUSES:
                await relay.end()
                return await self.discard_body(relay, watch)
            await relay.relay(first)
        except PreludeError as exc:
            return malformed(str(exc), None)
        except BadFraming as abort:
            return (
                StreamEnd(abort.kind, message=str(abort))
                if relay.started
                else malformed(str(abort), None)
            )
        except StreamAborted as abort:
            return StreamEnd(abort.kind, message=str(abort))
        self.record.ended(Outcome.DELIVERED)
        return StreamEnd(Outcome.DELIVERED, body_bytes=relay.copied + relay.spliced)

    async def discard_body(self, relay: BodyRelay, watch: ViewerWatch) -> StreamEnd:
        """The viewer has its whole response (HEAD, 204, 304): the callback's body is read to
        its end and dropped, so that the Lambda is answered as delivered (and keeps its
        connection if it asked). The viewer leaving now changes nothing; the Lambda failing
        now is its own abort, not the viewer's request's."""
        watch.stop()
        try:
            await relay.discard()
        except StreamAborted as abort:
            if ENDS[abort.kind].side == "lambda":  # a viewer that left has its response
                self.record.ended(abort.kind)
            self.record.ended(Outcome.DELIVERED)
            return StreamEnd(abort.kind, message=str(abort))
        self.record.ended(Outcome.DELIVERED)
        return StreamEnd(Outcome.DELIVERED)

    async def answer_end(self, end: StreamEnd, relay: BodyRelay) -> None:
        """The viewer's side of how its stream ended. Closing without the final chunk is how
        the viewer (and CloudFront) learn a response is incomplete; a 502 is only possible
        while no byte of it has gone out."""
        if Outcome.DELIVERED in self.record.ends:  # the viewer has its whole response
            return
        if end.kind is Outcome.BAD_CALLBACK:
            await self.reply_before_commit(502, MALFORMED_RESPONSE, Outcome.BAD_CALLBACK)
            return
        self.record.ended(end.kind)
        viewer_side = ENDS[end.kind].side == "viewer"
        if not viewer_side and relay.started:
            relay.salvage()
        if relay.committed or viewer_side:
            self.conn.close()
        else:
            message = f"the render failed: {end.message}"
            await self.reply_before_commit(502, message, end.kind, close=True)

    async def read_head(
        self, callback: ClaimedCallback, relay: BodyRelay
    ) -> tuple[ResponseHead, bytes, int | None]:
        """The response head and the first body bytes, and the body length when known."""
        if not callback.prelude:
            head = plain_head(callback.status_header, callback.content_type)
            return head, b"", callback.content_length
        reader = PreludeReader(self.settings.max_prelude_bytes)
        consumed = 0
        while (data := await relay.next_payload()) is not None:
            consumed += len(data)
            parsed = reader.feed(data)
            if parsed is not None:
                head, rest = parsed
                length = callback.content_length
                known = None if length is None else length - consumed + len(rest)
                return head, rest, known
        raise PreludeError("the body ended before the prelude's 8-NUL separator")

    def head_bytes(self, head: ResponseHead, body_length: int | None) -> bytes:
        """The response head, framed by h11 (which then frames the body)."""
        headers = [*head.headers, *self.request_id_header()]
        if body_length is not None and head.status not in NO_BODY_STATUSES:
            headers.append((b"content-length", b"%d" % body_length))
        if self.state.draining:
            headers.append((b"connection", b"close"))
        self.record.status = head.status
        self.record.ttfb = perf_counter() - self.record.started
        self.response_started = True
        return self.conn.h11.send(response(head.status, headers)) or b""

    async def reply_before_commit(
        self, status: int, message: str, end: Outcome, close: bool = False
    ) -> None:
        """A short answer while no byte of the response has left. The render's head may
        already be framed (h11 then counts it as sent, though it never left): the answer then
        goes around h11, and the connection closes after it."""
        if not self.response_started:
            await self.reply(status, message, end, close=close)
            return
        self.record.status = status
        self.record.ended(end)
        head_request = self.request.method == b"HEAD"
        extra = tuple(self.request_id_header())
        answer = canned_response(status, f"{message}\n".encode(), TEXT, head_request, extra)
        await self.conn.send_quietly(answer)

    def request_id_header(self) -> list[tuple[bytes, bytes]]:
        """X-Request-Id for tracing; never in compat mode, where the id is the capability."""
        if not self.record.request_id or self.settings.compat:
            return []
        return [(b"x-request-id", self.record.request_id.encode())]

    async def reply(
        self,
        status: int,
        message: str,
        end: Outcome,
        extra: list[tuple[bytes, bytes]] | None = None,
        close: bool = False,
    ) -> None:
        """A complete short response generated by sssrd itself; `end` is the request's end."""
        if self.conn.closed or self.response_started:
            return
        self.record.status = status
        self.record.ended(end)
        self.response_started = True
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            *(extra or []),
            *self.request_id_header(),
        ]
        self.record.ttfb = perf_counter() - self.record.started
        await self.conn.send(
            *complete_response(
                status,
                f"{message}\n".encode(),
                headers,
                head_request=self.request.method == b"HEAD",
                close=close or self.state.draining,
            )
        )


def malformed(message: str, refusal: BadHead | None) -> StreamEnd:
    """A malformed callback, nothing of whose response has left: the Lambda is told why (400,
    or its refused head's status), the viewer gets 502."""
    status = 400 if refusal is None else refusal.status
    return StreamEnd(Outcome.BAD_CALLBACK, message=message, status=status)


def claimed_callback(entry: Pending[ClaimedCallback]) -> ClaimedCallback | None:
    """The callback a claim handed to this entry, if one did."""
    delivery = entry.delivery
    if delivery.done() and not delivery.cancelled() and delivery.exception() is None:
        return delivery.result()
    return None
