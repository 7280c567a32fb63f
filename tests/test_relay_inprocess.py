"""BodyRelay and RequestCycle in-process, over socket.socketpair(), with a fresh ServerState.

No daemon and no subprocess: the relay moves a callback body between two socket pairs (one end
plays the Lambda, one the viewer), and whole requests run through tests/inprocess.py's Rig (a
real ViewerConnection and CallbackConnection on a fresh state; the render is the one stand-in,
calling back over a socket pair). Budget: ~2 s.
"""

import asyncio
import json
import logging
import socket
from collections.abc import Callable

import h11
import pytest
from inprocess import (
    BOUND,
    Rig,
    StandInRender,
    answered_with,
    callback_head,
    chunked,
    daemon_side,
    run,
    run_cycle,
    socket_pair,
)

from sssrd.chunked import ChunkedDecoder, LengthDecoder
from sssrd.outcomes import Outcome
from sssrd.pipe import BodyRelay, PipePool, StreamAborted
from sssrd.prelude import PRELUDE_CONTENT_TYPE


class Viewer:
    """The viewer's end of a pair: it has asked GET / and reads the response with h11."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT)
        self.h11.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        self.h11.send(h11.EndOfMessage())

    async def response(self) -> tuple[h11.Response | None, bytes, bool]:
        """The head, the body, and whether the message ended properly (False: cut off)."""
        loop = asyncio.get_running_loop()
        head, body = None, bytearray()
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError:  # closed before the end of the body
                return head, bytes(body), False
            if event is h11.NEED_DATA:
                try:
                    data = await loop.sock_recv(self.sock, 65_536)
                except ConnectionResetError:
                    data = b""
                self.h11.receive_data(data)
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return head, bytes(body), True
            else:
                return head, bytes(body), False


class RelayRig:
    """A relay between a Lambda pair and a viewer pair, its response head already sent."""

    def __init__(
        self,
        decoder: ChunkedDecoder | LengthDecoder,
        *,
        pipes: PipePool | None = None,
        idle_timeout: float = 5.0,
        send_timeout: float = 5.0,
        viewer_buffer: int | None = None,
        viewer_version: bytes = b"1.1",
    ) -> None:
        self.lambda_sock, callback_sock = socket_pair()
        viewer_sock, sink_sock = socket_pair(viewer_buffer)
        self.viewer = Viewer(viewer_sock)
        self.source = daemon_side(callback_sock)
        self.sink = daemon_side(sink_sock)
        self.sink.h11.receive_data(b"GET / HTTP/%s\r\nhost: x\r\n\r\n" % viewer_version)
        self.sink.h11.next_event()
        self.pipes = pipes
        self.relay = BodyRelay(
            self.source,
            self.sink,
            decoder,
            idle_timeout,
            pipes,
            splice_min=1,
            send_timeout=send_timeout,
        )

    async def start(self, length: int | None = None) -> None:
        headers = [] if length is None else [(b"content-length", b"%d" % length)]
        await self.sink.send(h11.Response(status_code=200, headers=headers))

    async def lambda_sends(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.lambda_sock, data)

    async def viewer_reads_raw(self, until: bytes) -> bytes:
        """The viewer's raw bytes (head and body framing) up to and including `until`."""
        loop = asyncio.get_running_loop()
        wire = bytearray()
        while until not in wire:
            data = await loop.sock_recv(self.viewer.sock, 65_536)
            assert data, f"the viewer's connection closed before {until!r}: {bytes(wire)!r}"
            wire += data
        return bytes(wire)

    def close(self) -> None:
        self.relay.close()
        for conn in (self.source, self.sink):
            conn.close()
        self.lambda_sock.close()
        self.viewer.sock.close()


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait, yielding to the loop, until `condition()` holds (the relay's own state changes)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND / 2
    while not condition():
        assert loop.time() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("path", ["copy", "splice"])
def test_relay_reframes_a_chunked_callback_body_as_the_viewers_chunked_response(path):
    async def scenario():
        pipes = PipePool(2) if path == "splice" else None
        rig = RelayRig(ChunkedDecoder(), pipes=pipes)
        chunks = [b"<html>", b"x" * 300_000, b"", b"tail"]
        try:
            await rig.start()
            sending = asyncio.create_task(rig.lambda_sends(chunked(*[c for c in chunks if c])))
            relaying = asyncio.create_task(rig.relay.relay(b""))
            head, body, complete = await rig.viewer.response()
            await asyncio.gather(sending, relaying)
        finally:
            rig.close()
        assert head.status_code == 200 and (b"transfer-encoding", b"chunked") in head.headers
        assert complete and body == b"".join(chunks)
        # What had already been read when a run began is copied; the rest of it is spliced.
        assert rig.relay.copied + rig.relay.spliced == len(body)
        assert (rig.relay.spliced > 0) == (path == "splice")
        if pipes is not None:  # the pipe went back to the pool empty, ready for reuse
            assert pipes.open == 1 and len(pipes.idle) == 1

    run(scenario)


def test_a_chunked_viewer_gets_the_callbacks_own_framing_and_the_next_callback_its_bytes():
    async def scenario():
        # Uppercase hex is valid and kept as sent (h11 would write "a"): the framing went
        # through, with `first` (the prelude's rest) framed in front of it.
        body = b"A\r\n0123456789\r\n3\r\nabc\r\n"
        after = b"POST /v1/callback/next HTTP/1.1\r\n"  # the kept-alive Lambda's next callback
        rig = RelayRig(ChunkedDecoder())
        try:
            await rig.start()
            await rig.lambda_sends(body + b"0\r\n\r\n" + after)
            await rig.relay.relay(b"first")
            wire = await rig.viewer_reads_raw(b"0\r\n\r\n")
        finally:
            rig.close()
        assert wire.partition(b"\r\n\r\n")[2] == b"5\r\nfirst\r\n" + body + b"0\r\n\r\n"
        assert rig.relay.copied == 18 and rig.relay.decoder.unused == after

    run(scenario)


def test_extensions_and_trailers_are_reframed_and_an_http10_viewer_gets_the_bare_payload():
    async def scenario(version: bytes) -> bytes:
        wire = b"03;name=value\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: t\r\n\r\n"
        rig = RelayRig(ChunkedDecoder(), viewer_version=version)
        try:
            await rig.start()
            await rig.lambda_sends(wire)
            await rig.relay.relay(b"")
            rig.sink.close()
            return (await rig.viewer_reads_raw(b"de")).partition(b"\r\n\r\n")[2]
        finally:
            rig.close()

    assert asyncio.run(scenario(b"1.1")) == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert asyncio.run(scenario(b"1.0")) == b"abcde"


def test_each_chunk_reaches_the_viewer_before_the_lambda_sends_the_next():
    async def scenario():
        rig = RelayRig(ChunkedDecoder())
        try:
            await rig.start()
            relaying = asyncio.create_task(rig.relay.relay(b""))
            for chunk in (b"one", b"two"):  # no coalescing across the Lambda's idle gap
                await rig.lambda_sends(b"3\r\n%s\r\n" % chunk)
                await rig.viewer_reads_raw(chunk + b"\r\n")
            await rig.lambda_sends(b"0\r\n\r\n")
            await relaying
        finally:
            rig.close()

    run(scenario)


def test_relay_hands_the_first_bytes_on_before_the_rest_of_a_content_length_body():
    async def scenario():
        rest = b"r" * 200_000
        rig = RelayRig(LengthDecoder(len(rest)), pipes=PipePool(1))
        try:
            await rig.start(length=5 + len(rest))
            sending = asyncio.create_task(rig.lambda_sends(rest))
            relaying = asyncio.create_task(rig.relay.relay(b"first"))
            head, body, complete = await rig.viewer.response()
            await asyncio.gather(sending, relaying)
        finally:
            rig.close()
        assert (b"content-length", b"%d" % (5 + len(rest))) in head.headers
        assert complete and body == b"first" + rest

    run(scenario)


def test_a_viewer_that_stops_reading_stops_the_relay_reading_the_lambda():
    async def scenario():
        total = 4 << 20
        rig = RelayRig(LengthDecoder(total), viewer_buffer=16_384, send_timeout=BOUND)
        try:
            await rig.start(length=total)
            sending = asyncio.create_task(rig.lambda_sends(b"b" * total))
            relaying = asyncio.create_task(rig.relay.relay(b""))
            await eventually(lambda: rig.relay.viewer_wait_since is not None, "relay waits")
            # Blocked on the viewer, the relay reads nothing more: what it has moved is bounded
            # by the viewer's socket buffers, and the Lambda cannot finish sending.
            moved = rig.relay.copied
            assert moved < total // 4
            assert not sending.done()
            _, body, complete = await rig.viewer.response()  # the viewer reads again
            await asyncio.gather(sending, relaying)
        finally:
            rig.close()
        assert complete and len(body) == total and rig.relay.copied == total

    run(scenario)


def test_a_viewer_that_takes_nothing_for_send_timeout_is_aborted_as_stalled():
    async def scenario():
        total = 4 << 20
        rig = RelayRig(LengthDecoder(total), viewer_buffer=16_384, send_timeout=0.2)
        try:
            await rig.start(length=total)
            sending = asyncio.create_task(rig.lambda_sends(b"s" * total))
            with pytest.raises(StreamAborted) as aborted:
                await rig.relay.relay(b"")
            sending.cancel()
        finally:
            rig.close()
        assert aborted.value.kind is Outcome.VIEWER_STALLED

    run(scenario)


def test_writing_to_a_viewer_that_closed_aborts_as_a_viewer_abort():
    async def scenario():
        rig = RelayRig(LengthDecoder(1 << 20))
        try:
            await rig.start(length=1 << 20)
            rig.viewer.sock.close()
            sending = asyncio.create_task(rig.lambda_sends(b"v" * (1 << 20)))
            with pytest.raises(StreamAborted) as aborted:
                await rig.relay.relay(b"")
            sending.cancel()
        finally:
            rig.close()
        assert aborted.value.kind is Outcome.VIEWER_ABORT

    run(scenario)


def test_a_lambda_silent_past_idle_timeout_aborts_as_idle_and_close_cancels_the_timer():
    async def scenario():
        rig = RelayRig(ChunkedDecoder(), idle_timeout=0.1)
        try:
            await rig.start()
            with pytest.raises(StreamAborted) as aborted:
                await rig.relay.relay(b"")
            rig.relay.close()
            assert rig.relay._timer.cancelled()
            assert not rig.relay.reading
        finally:
            rig.close()
        assert aborted.value.kind is Outcome.IDLE

    run(scenario)


# -- a whole request, in-process (tests/inprocess.py) ---------------------------------------


def test_a_request_cycle_streams_the_callback_to_the_viewer_and_answers_the_lambda():
    cycle = run_cycle(
        b"GET /page?q=1 HTTP/1.1\r\nhost: example.test\r\n\r\n",
        answered_with(b"rendered in-process"),
    )
    response, state = cycle.response, cycle.rig.state
    assert response.status == 200 and response.complete and response.body == b"rendered in-process"
    assert cycle.answer.status == 200 and json.loads(cycle.answer.body)["bytes"] == 19
    assert cycle.rig.render.events[0]["rawPath"] == "/page"
    assert cycle.rig.sample("sssrd_requests_total", code="2xx", outcome="ok") == 1
    assert state.tally.cycles_in_flight == 0 and state.tally.streams_in_flight == 0
    assert len(state.pending) == 0
    record = cycle.record
    assert (record["path"], record["status"], record["outcome"]) == ("/page", 200, "ok")


def test_prelude_headers_that_sssrd_drops_are_named_in_a_debug_line(caplog):
    prelude = json.dumps({"statusCode": 201, "headers": {"Connection": "close", "x-a": "1"}})
    rendered = prelude.encode() + b"\0" * 8 + b"body"
    with caplog.at_level(logging.DEBUG, logger="sssrd"):
        cycle = run_cycle(
            b"GET / HTTP/1.1\r\nhost: example.test\r\n\r\n",
            answered_with(rendered, PRELUDE_CONTENT_TYPE),
        )
    response = cycle.response
    assert response.status == 201 and response.headers[b"x-a"] == b"1"
    assert b"connection" not in response.headers
    assert response.complete and response.body == b"body"
    [line] = [record for record in caplog.records if "headers of the render dropped" in record.msg]
    assert line.headers == ["connection"] and len(line.request_id) == 32


def test_a_viewer_gone_while_waiting_for_its_callback_is_one_viewer_abort():
    async def scenario():
        render = StandInRender()  # never calls back
        async with Rig(render) as rig:
            await rig.send(b"GET / HTTP/1.1\r\nhost: example.test\r\n\r\n")
            await render.invoked.wait()
            rig.viewer.close()
            await rig.serving
            state = rig.state
            assert rig.sample("sssrd_requests_total", code="4xx", outcome="viewer_abort") == 1
            assert rig.sample("sssrd_aborts_total", side="viewer") == 1
            assert len(state.pending) == 0 and state.tally.cycles_in_flight == 0
        assert [(line["status"], line["outcome"]) for line in rig.access] == [(499, "viewer_abort")]

    run(scenario)


async def received_until(sock: socket.socket, part: bytes) -> bytes:
    received = b""
    while part not in received:
        received += await asyncio.get_running_loop().sock_recv(sock, 65_536)
    return received


def test_a_viewer_hanging_up_mid_body_is_seen_by_the_watch_and_its_render_told_410():
    async def scenario():
        # The Content-Length promises 100 bytes more, which the render holds back.
        first = b"first part"
        render = StandInRender(lambda event: callback_head(event, length=len(first) + 100) + first)
        async with Rig(render) as rig:
            await rig.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            await received_until(rig.viewer, first)
            # The relay now waits for the render's next bytes: only the watch can see this.
            rig.viewer.close()
            answer = await rig.answer()
            await rig.serving
            assert answer.status == 410
            assert rig.sample("sssrd_aborts_total", side="viewer") == 1
        (access,) = rig.access
        assert access["outcome"] == "viewer_abort" and access["bytes"] == len(first)

    run(scenario)


@pytest.mark.parametrize(
    ("wire", "salvaged"),
    [
        (b"5\r\nhel", b"hel"),
        (b"5\r\nhello\r\nzz\r\nhello\r\n", b"hello"),
        (b"3\r\nabc\r\n5\r\nhelloXX\r\n", b"abchello"),
    ],  # each after a whole first chunk has reached the viewer: before it, the viewer gets 502
    ids=["breaks-off-mid-chunk", "bad-chunk-header", "bad-chunk-end"],
)
def test_a_render_breaking_off_or_misframing_leaves_the_viewer_its_valid_bytes_unterminated(
    wire, salvaged
):
    async def scenario():
        render = StandInRender(lambda event: callback_head(event) + b"5\r\nwhole\r\n")
        async with Rig(render) as rig:
            await rig.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            viewer = Viewer(rig.viewer)
            viewer.h11.receive_data(await received_until(rig.viewer, b"whole"))
            lambda_sock = render.lambda_socks[0]
            await asyncio.get_running_loop().sock_sendall(lambda_sock, wire)
            lambda_sock.shutdown(socket.SHUT_WR)  # then the render hangs up
            head, body, complete = await viewer.response()
            await rig.cycles_done()
            assert head.status_code == 200 and not complete  # unterminated: known incomplete
            assert body == b"whole" + salvaged
            assert rig.sample("sssrd_aborts_total", side="lambda") == 1
        (access,) = rig.access
        assert access["outcome"] == "lambda_abort" and access["bytes"] == len(b"whole" + salvaged)

    run(scenario)
