"""Moves a callback's body to the viewer as it arrives, with backpressure and both-way aborts.

The relay reads the callback socket only when the viewer has taken the previous bytes (its socket
buffer is the only buffer), so a slow viewer slows the Lambda. It waits on one wakeup future at a
time, which three things can resolve: the awaited socket becoming ready, the viewer hanging up
(ViewerWatch), or the idle timer. The idle timer is rescheduled lazily (checked when it fires), so
a chunk costs no timer churn. h11 decodes the callback's framing and frames the viewer's.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import h11

from sssrd.connection import Connection


class StreamAborted(Exception):
    """The stream cannot go on; kind is viewer_gone, lambda_abort or idle."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ViewerWatch:
    """Notices a viewer hanging up while nothing is being read from it.

    A viewer waiting for its response sends nothing, so readability means EOF, a reset, or a
    pipelined request; a one-byte peek tells which. Pipelined bytes stop the watch (they stay
    in the socket for the next request cycle).
    """

    __slots__ = ("conn", "gone", "on_gone")

    def __init__(self, conn: Connection, on_gone: Callable[[], None]) -> None:
        self.conn = conn
        self.on_gone = on_gone
        self.gone = False
        conn.loop.add_reader(conn.fd, self._readable)

    def _readable(self) -> None:
        try:
            peeked = self.conn.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            peeked = b""
        self.stop()
        if not peeked:
            self.gone = True
            self.on_gone()

    def stop(self) -> None:
        if not self.conn.closed:
            self.conn.loop.remove_reader(self.conn.fd)


class BodyRelay:
    """Relays one callback body; counts the body bytes the viewer was sent."""

    def __init__(self, source: Connection, sink: Connection, idle_timeout: float) -> None:
        self.source = source
        self.sink = sink
        self.loop = source.loop
        self.idle_timeout = idle_timeout
        self.sent = 0
        self.last_activity = self.loop.time()
        self.abort: StreamAborted | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._idle_timer = self.loop.call_at(self.last_activity + idle_timeout, self._check_idle)

    def interrupt(self, abort: StreamAborted) -> None:
        """End the relay at its next wait (called by the viewer watch or the idle timer)."""
        if self.abort is None:
            self.abort = abort
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def viewer_gone(self) -> None:
        self.interrupt(StreamAborted("viewer_gone", "the viewer disconnected"))

    def _check_idle(self) -> None:
        due = self.last_activity + self.idle_timeout
        if self.loop.time() >= due:
            self.interrupt(StreamAborted("idle", "the Lambda sent nothing for too long"))
        else:
            self._idle_timer = self.loop.call_at(due, self._check_idle)

    def close(self) -> None:
        self._idle_timer.cancel()

    async def _wait(self, conn: Connection, writable: bool) -> None:
        if self.abort is not None:
            raise self.abort
        self._wakeup = self.loop.create_future()
        try:
            await (conn.wait_writable if writable else conn.wait_readable)(self._wakeup)
        finally:
            self._wakeup = None
        if self.abort is not None:
            raise self.abort

    def poll_source(self) -> object:
        """The next h11 event of the callback request already buffered, or h11.NEED_DATA."""
        try:
            event = self.source.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise StreamAborted("lambda_abort", f"bad callback framing: {exc}") from None
        if isinstance(event, h11.ConnectionClosed):
            raise StreamAborted("lambda_abort", "the Lambda closed the callback early")
        return event

    async def fill_source(self) -> None:
        """Wait for callback bytes and hand them to h11 (b"" at EOF: h11 reports the cut)."""
        source = self.source
        while True:
            try:
                data = source.sock.recv(65_536)
            except BlockingIOError:
                await self._wait(source, writable=False)
                continue
            except OSError:
                data = b""
            self.last_activity = self.loop.time()
            source.h11.receive_data(data)
            return

    async def next_source_event(self) -> object:
        """The next h11 event of the callback request, reading as needed."""
        while (event := self.poll_source()) is h11.NEED_DATA:
            await self.fill_source()
        return event

    async def send_to_viewer(self, event: object) -> None:
        data = self.sink.h11.send(event)
        view = memoryview(data)
        while view:
            try:
                sent = self.sink.sock.send(view)
            except BlockingIOError:
                await self._wait(self.sink, writable=True)
                continue
            except OSError:
                raise StreamAborted("viewer_gone", "the viewer disconnected") from None
            view = view[sent:]

    async def relay(self, first: bytes) -> None:
        """Forward `first` then the rest of the body; h11.EndOfMessage ends the viewer's response.

        Everything h11 has already decoded leaves as one viewer chunk, sent the moment h11
        needs more bytes: what arrived together leaves together, and nothing waits for more.
        """
        pending = bytearray(first)
        while True:
            event = self.poll_source()
            if isinstance(event, h11.Data):
                pending += event.data
                continue
            if pending:
                self.sent += len(pending)
                await self.send_to_viewer(h11.Data(data=bytes(pending)))
                pending.clear()
            if event is h11.NEED_DATA:
                await self.fill_source()
            elif isinstance(event, h11.EndOfMessage):
                await self.send_to_viewer(h11.EndOfMessage())
                return
