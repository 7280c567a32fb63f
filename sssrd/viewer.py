"""The viewer listener: one ViewerConnection per socket, one RequestCycle per request.

The connection owns the socket, keep-alive and the head deadlines (first byte within
keepalive_timeout, then the whole head within head_timeout: slowloris gets a 408). The cycle owns
one request: read the bounded body, register a pending entry, invoke the Lambda, wait for its
callback (deadline -> 504), then stream the callback's response to the viewer. With
`invocation_type = "RequestResponse"` it also watches the invoke's answer (the render's end):
an end before any callback is answered at once (502, 504 for a timeout), one while the
callback is still open cuts the stream. A head refused before any of that (400, 408, 431, 505)
is a cycle too, so that it writes its access line. Every path through a cycle releases the
entry, finishes any callback it was handed (so the callback is always answered or closed) and
reports one access record.
"""

from __future__ import annotations

import asyncio
import functools
import time
from time import perf_counter
from typing import Any

import h11

from sssrd import logs
from sssrd.callbacks import ClaimedCallback, StreamEnd
from sssrd.chunked import FramingCheck, FramingError
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
from sssrd.headers import first_header
from sssrd.invokers import InvokeError
from sssrd.invokers.base import RenderEnded
from sssrd.metrics import RenderErrorSource
from sssrd.outcomes import ENTRY_END_OF, VIEWER_SIDE, Outcome
from sssrd.pending import Pending, PendingFull, WaitEnded
from sssrd.pipe import SPLICE_MIN, BadFraming, BodyRelay, StreamAborted, ViewerWatch
from sssrd.prelude import PreludeError, PreludeReader, ResponseHead, plain_head
from sssrd.served import ServedConnection
from sssrd.state import ServerState
from sssrd.tally import RequestRecord

NO_BODY_STATUSES = frozenset({204, 304})
# Methods no render can answer through sssrd: CONNECT asks for a tunnel (h11 would take the
# render's 2xx for a protocol switch). A 405 lists what is served: RFC 9110's other methods and
# PATCH (any other token method is served too).
UNSERVED_METHODS = frozenset({b"CONNECT"})
ALLOW = (b"allow", b"GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH")
TEXT = b"text/plain; charset=utf-8"


class ViewerConnection(ServedConnection):
    """Serves one viewer socket until it closes, errs or idles out."""

    async def handle(self, request: h11.Request) -> None:
        await RequestCycle(self.state, self.conn, request).run()

    async def refuse_head(self, bad: BadHead) -> None:
        await RequestCycle(self.state, self.conn, bad.request).run(bad)


class RequestCycle:
    """One viewer request, from parsed head to the end of its response."""

    def __init__(self, state: ServerState, conn: Connection, request: h11.Request | None) -> None:
        self.state = state
        self.tally = state.tally
        self.conn = conn
        self.head = request  # None when a refused head could not be parsed
        self.loop = state.loop
        self.record = RequestRecord(method=self.method, path=self.path)
        self.response_started = False
        self.render: asyncio.Task[RenderEnded] | None = None  # a RequestResponse invoke

    @property
    def request(self) -> h11.Request:
        """The parsed head, on every path that serves (only a refusal can lack one)."""
        if self.head is None:
            raise RuntimeError("this cycle answers a head that could not be parsed")
        return self.head

    @property
    def method(self) -> str | None:
        """None when the head was refused before it could be parsed (as `path`)."""
        return None if self.head is None else self.head.method.decode("ascii", "replace")

    @functools.cached_property
    def client(self) -> str:
        """The viewer's address (X-Forwarded-For believed only from trusted_proxies)."""
        headers = [] if self.head is None else self.head.headers
        forwarded = [v for n, v in headers if n == b"x-forwarded-for"]
        return client_address(self.conn.peer, forwarded, self.state.settings.trusted_proxies)

    @functools.cached_property
    def path(self) -> str | None:
        if self.head is None:
            return None
        return self.head.target.split(b"?", 1)[0].decode("utf-8", "replace")

    async def run(self, refused: BadHead | None = None) -> None:
        """Serve the request, or answer its refused head."""
        self.tally.cycle_started()
        try:
            if refused is None:
                await self.serve()
            else:
                await self.refuse_head(refused)
        except PeerGone as gone:
            self.record.outcome = Outcome.VIEWER_ABORT
            if isinstance(gone, PeerStalled):
                self.tally.timed_out("send")
            self.conn.close()
        finally:
            self.record.client = self.client
            self.tally.request_finished(self.record)

    async def refuse_head(self, bad: BadHead) -> None:
        if bad.status == 408:
            self.tally.timed_out("head")
        self.record.status = bad.status
        self.record.outcome = Outcome.TIMEOUT if bad.status == 408 else Outcome.BAD_REQUEST
        head_request = self.head is not None and self.head.method == b"HEAD"
        answer = canned_response(bad.status, f"{bad}\n".encode(), TEXT, head_request)
        await self.conn.send_quietly(answer)

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
                self.loop, self.state.settings.callback_timeout, int(time.time() * 1000)
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
            self.state.pending.release(entry, self.entry_outcome())

    def entry_outcome(self) -> Outcome:
        return ENTRY_END_OF.get(self.record.outcome, Outcome.FAILED)

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
        settings = self.state.settings
        declared = self.declared_length()
        if declared is not None and declared > settings.max_body_bytes:
            await self.reply(413, "request body too large", Outcome.TOO_LARGE, close=True)
            return None
        body = bytearray()
        if self.conn.h11.they_are_waiting_for_100_continue:
            await self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        self.conn.deadline = self.loop.time() + settings.head_timeout
        try:
            screen = self.framing_check()
            while True:
                event = await self.conn.next_event(screen)
                if isinstance(event, h11.EndOfMessage):
                    return bytes(body)
                if not isinstance(event, h11.Data):  # h11.ConnectionClosed
                    raise PeerGone("viewer closed while sending its body")
                body += event.data
                if len(body) > settings.max_body_bytes:
                    await self.reply(413, "request body too large", Outcome.TOO_LARGE, close=True)
                    return None
        except TimeoutError:
            self.tally.timed_out("head")
            await self.reply(408, "request body not received in time", Outcome.TIMEOUT, close=True)
        except (h11.RemoteProtocolError, FramingError):
            if self.conn.h11.trailing_data[1]:  # h11 refuses a body cut short by the peer's close
                raise PeerGone("viewer closed while sending its body") from None
            message = "the request body's framing is invalid"
            await self.reply(400, f"bad request: {message}", Outcome.BAD_REQUEST, close=True)
        finally:
            self.conn.deadline = None
        return None

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

    async def rendezvous(self, entry: Pending, body: bytes) -> None:
        """Invoke the Lambda and wait for its callback; then stream."""
        settings = self.state.settings
        try:
            payload = encode_event(self.build_event(entry, body), settings.max_event_bytes)
        except EventTooLarge:
            await self.reply(413, "request too large for the render function", Outcome.TOO_LARGE)
            return
        except InvalidTarget:
            message = "bad request: the request target must be a path or an absolute URL"
            await self.reply(400, message, Outcome.BAD_REQUEST, close=True)
            return
        hold = settings.max_head_bytes  # pipelined bytes kept while watching: about one head
        watch = ViewerWatch(self.conn, lambda: entry.end_wait(Outcome.VIEWER_ABORT), hold)
        try:
            if settings.invocation_type == "RequestResponse":
                self.render = self.state.invoker.start(payload)
                if await self.ended_before_callback(entry, self.render):
                    return
            elif (failure := await self.invoke(payload)) is not None and not entry.claimed:
                await self.refuse_invoke(failure)
                return
            try:
                stream: ClaimedCallback = await entry.delivery
            except WaitEnded as ended:
                if ended.reason is Outcome.LATE:
                    self.tally.timed_out("deadline")
                    await self.reply(504, "the render did not call back in time", Outcome.TIMEOUT)
                else:
                    self.record.outcome = Outcome.VIEWER_ABORT
                    self.conn.close()
                return
            self.record.callback_wait = perf_counter() - self.record.started
            if stream.error_type is not None:
                stream.finish(StreamEnd(Outcome.RENDER_ERROR, message="error reported"))
                await self.render_failed(stream.error_type, "callback")
                return
            await self.stream(stream, watch)
        finally:
            watch.stop()
            # The one owner of a delivered callback: whatever ended this cycle (the viewer
            # resetting under a send, cancellation), the callback is answered or closed.
            delivered = claimed_stream(entry)
            if delivered is not None:
                delivered.finish(
                    StreamEnd(Outcome.VIEWER_ABORT, message="the viewer's request ended")
                )

    async def render_failed(self, error_type: str, source: RenderErrorSource) -> None:
        """The render failed before its response head: 502 at once. Its error type goes to the
        access line and the metric, never to the viewer (nor does its message, anywhere)."""
        self.record.error_type = error_type
        self.tally.render_failed(source)
        await self.reply(502, "the render failed", Outcome.RENDER_ERROR)

    async def refuse_invoke(self, failure: InvokeError) -> None:
        retry = [(b"retry-after", b"%d" % failure.retry_after)] if failure.retry_after else []
        await self.reply(failure.status, failure.message, failure.outcome, retry)

    async def ended_before_callback(
        self, entry: Pending, render: asyncio.Task[RenderEnded]
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
            self.tally.render_failed("invoke")
            await self.reply(504, "the render timed out", Outcome.TIMEOUT)
        else:
            if not ended.error_type:
                self.record.error = "the render returned without calling back"
            await self.render_failed(ended.error_type, "invoke")
        return True

    def cut_when_render_ends(self, relay: BodyRelay, render: asyncio.Task[RenderEnded]) -> None:
        """The render returned or raised while its callback is still open: nothing more will
        come, so the stream is cut now rather than at idle_timeout. (An invoke that failed
        on sssrd's side says nothing about the render: its stream goes on.)"""
        if render.cancelled() or render.exception() is not None:
            return
        ended = render.result()
        self.record.error_type = ended.error_type
        message = "the render ended with its callback still open"
        relay.interrupt(StreamAborted(Outcome.LAMBDA_ABORT, message))

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

    def build_event(self, entry: Pending, body: bytes) -> dict[str, Any]:
        request = self.request
        if self.state.settings.compat == "lambda-streaming":
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

    async def stream(self, stream: ClaimedCallback, watch: ViewerWatch) -> None:
        """Send the callback's response to the viewer; tell the callback side how it ended.

        The viewer watch that guarded the wait now guards the relay (one reader registration
        for the whole request, not one per phase). The relay lets go of the callback socket
        before the callback side is told, since that side may then linger on it.
        """
        settings = self.state.settings
        relay = BodyRelay(
            stream.conn,
            self.conn,
            stream.decoder(),
            settings.idle_timeout,
            None if settings.body_path == "copy" else self.state.pipes,
            splice_min=1 if settings.body_path == "splice" else SPLICE_MIN,
            send_timeout=settings.send_timeout,
        )
        watch.on_gone = relay.viewer_gone
        if watch.gone:  # it left between the callback's arrival and now
            relay.viewer_gone()
        cut = functools.partial(self.cut_when_render_ends, relay)
        if self.render is not None:
            self.render.add_done_callback(cut)
        self.tally.stream_started()
        started = perf_counter()
        try:
            head, first, body_length = await self.read_head(stream, relay)
            if head.dropped:
                names = [name.decode("latin-1") for name in head.dropped]
                extra = {"request_id": self.record.request_id, "headers": names}
                logs.log.debug("hop-by-hop and framing headers of the render dropped", extra=extra)
            # The head leaves with the first body bytes, in the relay's first write (which
            # happens before the relay waits for anything): one sendmsg fewer per request.
            relay.hold(self.head_bytes(head, body_length))
            if self.request.method == b"HEAD" or head.status in NO_BODY_STATUSES:
                await relay.end()
                await self.discard_body(stream, relay, watch)
                return
            await relay.relay(first)
            relay.close()
            stream.finish(StreamEnd(Outcome.DELIVERED, body_bytes=relay.copied + relay.spliced))
        except PreludeError as exc:
            relay.close()
            await self.refuse_callback(stream, str(exc), stream.refusal)
        except BadFraming as abort:
            relay.close()
            if relay.started:
                await self.abort_stream(stream, abort, relay)
            else:
                await self.refuse_callback(stream, str(abort), None)
        except StreamAborted as abort:
            relay.close()
            await self.abort_stream(stream, abort, relay)
        finally:
            if self.render is not None:
                self.render.remove_done_callback(cut)
            relay.close()
            self.record.body_bytes = relay.copied + relay.spliced
            self.tally.stream_ended(perf_counter() - started, relay.copied, relay.spliced)

    async def discard_body(
        self, stream: ClaimedCallback, relay: BodyRelay, watch: ViewerWatch
    ) -> None:
        """The viewer has its whole response (HEAD, 204, 304): the callback's body is read to
        its end and dropped, so that the Lambda is answered as delivered (and keeps its
        connection if it asked). The viewer leaving now changes nothing; the Lambda failing
        now is its own abort, not the viewer's request's."""
        watch.stop()
        try:
            await relay.discard()
        except StreamAborted as abort:
            if abort.kind not in VIEWER_SIDE:  # the viewer left before its response was sent
                self.tally.lambda_aborted(abort.kind)
            stream.finish(StreamEnd(abort.kind, message=str(abort)))
        else:
            stream.finish(StreamEnd(Outcome.DELIVERED))
        finally:
            relay.close()

    async def refuse_callback(
        self, stream: ClaimedCallback, message: str, refusal: BadHead | None
    ) -> None:
        """The callback is malformed and nothing of the viewer's response has left: the Lambda
        is told why (400, or its refused head's status), the viewer gets 502."""
        status = 400 if refusal is None else refusal.status
        stream.finish(StreamEnd(Outcome.BAD_CALLBACK, message=message, status=status))
        await self.reply_before_commit(
            502, "the render sent a malformed response", Outcome.BAD_CALLBACK
        )

    async def abort_stream(
        self, stream: ClaimedCallback, abort: StreamAborted, relay: BodyRelay
    ) -> None:
        stream.finish(StreamEnd(abort.kind, message=str(abort)))
        viewer_side = abort.kind in VIEWER_SIDE
        if not viewer_side and relay.started:
            relay.salvage()
        if viewer_side:
            self.record.outcome = Outcome.VIEWER_ABORT
            if abort.kind is Outcome.VIEWER_STALLED:
                self.tally.timed_out("send")
        else:
            self.record.outcome = Outcome.LAMBDA_ABORT
            self.tally.lambda_aborted(abort.kind)
        # Closing without the final chunk is how the viewer (and CloudFront) learn the response
        # is incomplete; a 502 is only possible while no byte of it has gone out.
        if relay.committed or viewer_side:
            self.conn.close()
        else:
            message = f"the render failed: {abort}"
            await self.reply_before_commit(502, message, self.record.outcome, close=True)

    async def read_head(
        self, stream: ClaimedCallback, relay: BodyRelay
    ) -> tuple[ResponseHead, bytes, int | None]:
        """The response head and the first body bytes, and the body length when known."""
        if stream.refusal is not None:
            raise PreludeError(f"the callback was refused: {stream.refusal}")
        if not stream.prelude:
            return plain_head(stream.status_header, stream.content_type), b"", stream.content_length
        reader = PreludeReader(self.state.settings.max_prelude_bytes)
        consumed = 0
        while (data := await relay.next_payload()) is not None:
            consumed += len(data)
            parsed = reader.feed(data)
            if parsed is not None:
                head, rest = parsed
                length = stream.content_length
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
        self, status: int, message: str, outcome: Outcome, close: bool = False
    ) -> None:
        """A short answer while no byte of the response has left. The render's head may
        already be framed (h11 then counts it as sent, though it never left): the answer then
        goes around h11, and the connection closes after it."""
        if not self.response_started:
            await self.reply(status, message, outcome, close=close)
            return
        self.record.status = status
        self.record.outcome = outcome
        head_request = self.request.method == b"HEAD"
        extra = tuple(self.request_id_header())
        answer = canned_response(status, f"{message}\n".encode(), TEXT, head_request, extra)
        await self.conn.send_quietly(answer)

    def request_id_header(self) -> list[tuple[bytes, bytes]]:
        """X-Request-Id for tracing; never in compat mode, where the id is the capability."""
        if not self.record.request_id or self.state.settings.compat:
            return []
        return [(b"x-request-id", self.record.request_id.encode())]

    async def reply(
        self,
        status: int,
        message: str,
        outcome: Outcome,
        extra: list[tuple[bytes, bytes]] | None = None,
        close: bool = False,
    ) -> None:
        """A complete short response generated by sssrd itself."""
        if self.conn.closed or self.response_started:
            return
        self.record.status = status
        self.record.outcome = outcome
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


def claimed_stream(entry: Pending) -> ClaimedCallback | None:
    """The callback stream a claim handed to this entry, if one did."""
    delivery = entry.delivery
    if delivery.done() and not delivery.cancelled() and delivery.exception() is None:
        return delivery.result()
    return None
