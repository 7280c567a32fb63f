"""Moves a callback's body to the viewer as it arrives: spliced where that pays, copied where not.

sssrd's own decoder (chunked.py) tracks the callback's framing; h11 frames the viewer's response,
except where a chunked callback meets a chunked viewer: there the callback's framing is passed
through, validated over whole reads (ChunkedDecoder.forward), so a buffer of many chunks costs
one recv and one sendmsg, not one of each per chunk. A payload run of at least SPLICE_MIN bytes
that is still in the kernel moves socket -> pipe -> socket with os.splice and never enters
Python: h11 frames it around a placeholder of the right length (send_with_data_passthrough), or
the input's own framing around it goes through. Smaller runs are read and copied.
Framing bytes are held back and sent with MSG_MORE just before the next payload, so a chunk's
framing and payload leave together; everything is flushed before any wait, so nothing is delayed.

Backpressure: the callback is read only when the viewer took the previous bytes; the only buffers
are the sockets' and one pooled pipe per splicing stream. Each wait is on one future that the
awaited socket, the viewer hanging up (ViewerWatch) or the relay's timer can resolve (and a
wait for callback bytes, the render's end: interrupt_when_empty). The timer keeps two clocks
apart: idle_timeout counts only time spent waiting for the Lambda, send_timeout only time spent
waiting for the viewer to take bytes (sssrd's own backpressure is no Lambda fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Sequence
from typing import cast

import h11

from sssrd.chunked import END, NEED_DATA, BodyDecoder, ChunkedDecoder, Framing, FramingError
from sssrd.connection import RECV_SIZE, Connection
from sssrd.outcomes import Outcome

# Measured on this machine kind (bench/splice_threshold.py, relay CPU per MB): a spliced run
# costs ~70 us more than a copied one (framing write, pipe round trip) and saves ~0.55 us per
# KB, so it pays from about 128 KiB: 64 KiB chunks copy cheaper (0.85 vs 0.90-1.34 ms/MB),
# while a long Content-Length run splices at 0.28-0.45 ms/MB against 0.76-1.0 copied.
SPLICE_MIN = 128 * 1024
FRAME_READ = 64  # read size for framing when the payload after it should stay in the kernel
COPY_READ = 65_536
# Passed through, a read costs the same syscall whatever it holds: larger reads, fewer calls.
PASS_READ = 262_144
PIPE_SIZE = 65_536  # as fast as 1 MiB here, and kind to the per-user pipe page budget
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
SPLICE_MORE = getattr(os, "SPLICE_F_MORE", 0)
CAN_SPLICE = hasattr(os, "splice")


class StreamAborted(Exception):
    """The stream cannot go on; kind is VIEWER_ABORT, VIEWER_STALLED, LAMBDA_ABORT or IDLE."""

    def __init__(self, kind: Outcome, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class BadFraming(StreamAborted):
    """The callback's body framing is invalid (a Lambda abort once the viewer's response has
    begun; before that, a malformed callback that is answered 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(Outcome.LAMBDA_ABORT, message)


class PipePool:
    """Reusable pipes for splicing, bounded (non-root users share a limited pipe page budget).

    Empty means no splicing for that stream (it copies), never an error.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.idle: list[tuple[int, int]] = []
        self.open = 0

    def acquire(self) -> tuple[int, int] | None:
        if self.idle:
            return self.idle.pop()
        if self.open >= self.limit:
            return None
        try:
            read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        with contextlib.suppress(OSError):  # the default size works too
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.open += 1
        return read_end, write_end

    def release(self, pipe: tuple[int, int], clean: bool) -> None:
        """Keep an empty pipe for reuse; close one that may still hold a stream's bytes."""
        if clean:
            self.idle.append(pipe)
            return
        os.close(pipe[0])
        os.close(pipe[1])
        self.open -= 1

    def close(self) -> None:
        for pipe in self.idle:
            self.release(pipe, clean=False)
        self.idle.clear()


class Placeholder:
    """Stands in for a spliced payload so h11 can frame it without the bytes."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def frame_around(conn: h11.Connection, placeholder: Placeholder) -> list[bytes | Placeholder]:
    """h11's framing of a payload, with `placeholder` where the payload's bytes go.

    h11 frames any object that has a len() (send_with_data_passthrough), though its hints say
    bytes; it returns None only for ConnectionClosed, never for Data.
    """
    pieces = conn.send_with_data_passthrough(h11.Data(data=cast(bytes, placeholder)))
    return cast(list[bytes | Placeholder], pieces)


class ViewerWatch:
    """Notices a viewer hanging up while nothing is being read from it.

    A viewer waiting for its response may send nothing but a pipelined request, so readability
    means EOF, a reset, or pipelined bytes. Those bytes are handed to h11 now (kept for the next
    cycle), so that the socket stays watched and a reset after them is still seen; only a viewer
    that pipelines more than `max_held` bytes is no longer watched (it is then noticed at the next
    write or timeout).
    """

    __slots__ = ("conn", "gone", "held", "max_held", "on_gone")

    def __init__(self, conn: Connection, on_gone: Callable[[], None], max_held: int) -> None:
        self.conn = conn
        self.on_gone = on_gone
        self.gone = False
        self.held = 0
        self.max_held = max_held
        conn.loop.add_reader(conn.fd, self._readable)

    def _readable(self) -> None:
        # Read until the socket is empty: a reset that arrives with pipelined bytes must be seen
        # now, since the loop may report that socket's error only once (libuv stops the poll).
        while self.held <= self.max_held:
            try:
                data = self.conn.sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.stop()
                self.gone = True
                self.on_gone()
                return
            self.conn.h11.receive_data(data)
            self.held += len(data)
        self.stop()

    def stop(self) -> None:
        if not self.conn.closed:
            self.conn.loop.remove_reader(self.conn.fd)


class BodyRelay:
    """Relays one callback body; counts body bytes sent to the viewer by path. A context
    manager: leaving its block lets go of everything it holds (close())."""

    def __init__(
        self,
        source: Connection,
        sink: Connection,
        decoder: BodyDecoder,
        idle_timeout: float,
        pipes: PipePool | None,
        splice_min: int = SPLICE_MIN,
        *,
        send_timeout: float,
    ) -> None:
        self.source = source
        self.sink = sink
        self.decoder = decoder
        self.loop = source.loop
        self.idle_timeout = idle_timeout
        self.send_timeout = send_timeout
        self.pipes = pipes if CAN_SPLICE else None
        self.splice_min = splice_min
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0
        self.copied = 0
        self.spliced = 0
        self.unframed: list[bytes] = []  # copied payload not yet framed and sent
        self.unframed_size = 0
        self.wire: list[bytes | memoryview] = []  # viewer bytes passed through, not yet sent
        self.wire_size = 0
        self.read_size = COPY_READ
        self.framing = b""  # viewer framing held back to leave with the next bytes
        self.last_activity = self.loop.time()  # of the Lambda: its last bytes, or our last wait
        self.viewer_wait_since: float | None = None  # while blocked on the viewer
        self.abort: StreamAborted | None = None
        self.abort_when_empty: StreamAborted | None = None  # see interrupt_when_empty()
        self.committed = False  # some byte of the viewer's response has been sent
        self._wakeup: asyncio.Future[None] | None = None
        self.reading = False  # the callback's reader is registered (kept across waits)
        self.waiting_to_read = False
        self.drained = False  # the last read was short: the callback socket is likely empty
        self._timer = self.loop.call_at(self.last_activity + idle_timeout, self._check_timers)

    # -- interruption ------------------------------------------------------------------------

    def interrupt(self, abort: StreamAborted) -> None:
        """End the relay at its next wait (called by the viewer watch or the idle timer)."""
        if self.abort is None:
            self.abort = abort
        self.interrupt_wait()

    def interrupt_when_empty(self, abort: StreamAborted) -> None:
        """The Lambda will send nothing more (its render returned): end the relay once a read
        finds the callback socket empty, never sooner. Bytes it sent before returning may still
        wait in that socket, or behind a slow viewer; they are relayed first (and a body whose
        end is among them is delivered whole)."""
        self.abort_when_empty = abort
        if self.waiting_to_read:  # (then after a short read, or one that found nothing)
            self.interrupt_wait()

    def interrupt_wait(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def viewer_gone(self) -> None:
        self.interrupt(StreamAborted(Outcome.VIEWER_ABORT, "the viewer disconnected"))

    def _check_timers(self) -> None:
        """One timer, re-armed lazily (not per chunk): it checks whichever clock is running."""
        now = self.loop.time()
        if self.viewer_wait_since is not None:
            due = self.viewer_wait_since + self.send_timeout
            if now >= due:
                self.interrupt(StreamAborted(Outcome.VIEWER_STALLED, "the viewer stopped reading"))
                return
        else:
            due = self.last_activity + self.idle_timeout
            if now >= due:
                self.interrupt(StreamAborted(Outcome.IDLE, "the Lambda sent nothing for too long"))
                return
        self._timer = self.loop.call_at(due, self._check_timers)

    def _rearm(self, due: float) -> None:
        self._timer.cancel()
        self._timer = self.loop.call_at(due, self._check_timers)

    def __enter__(self) -> BodyRelay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the callback socket, the timer and the pipe (idempotent)."""
        self._timer.cancel()
        if self.reading and not self.source.closed:
            self.loop.remove_reader(self.source.fd)
        self.reading = False
        if self.pipe is not None and self.pipes is not None:
            self.pipes.release(self.pipe, clean=self.in_pipe == 0)
            self.pipe = None

    async def _wait(self, conn: Connection, writable: bool) -> None:
        """Wait for the viewer to take bytes, or (writable=False) for callback bytes."""
        if self.abort is not None:
            raise self.abort
        self._wakeup = self.loop.create_future()
        try:
            if writable:
                await self._wait_for_viewer(conn, self._wakeup)
            else:
                # The callback's reader stays registered between waits: adding and removing
                # it per chunk cost ~3 epoll_ctl calls (uvloop builds a poll handle each time).
                if not self.reading:
                    self.loop.add_reader(self.source.fd, self._source_readable)
                    self.reading = True
                self.waiting_to_read = True
                await self._wakeup
        finally:
            self._wakeup = None
            self.waiting_to_read = False
        if self.abort is not None:
            raise self.abort

    async def _wait_for_viewer(self, conn: Connection, wakeup: asyncio.Future[None]) -> None:
        """Backpressure: the Lambda's clock stops while the viewer's runs (rare: only when the
        viewer's window is full, so re-arming the timer here costs nothing per chunk)."""
        self.viewer_wait_since = self.loop.time()
        self._rearm(self.viewer_wait_since + self.send_timeout)
        try:
            await conn.wait_writable(wakeup)
        finally:
            self.viewer_wait_since = None
            self.last_activity = self.loop.time()
            self._rearm(self.last_activity + self.idle_timeout)

    async def _wait_for_callback(self) -> None:
        """A read found the callback socket empty: wait for more, unless no more will come."""
        if self.abort_when_empty is not None:
            raise self.abort_when_empty
        await self._wait(self.source, writable=False)

    def _source_readable(self) -> None:
        wakeup = self._wakeup
        if self.waiting_to_read and wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
        else:  # nobody is waiting for it (the viewer is slow): pause, or epoll would spin
            self.loop.remove_reader(self.source.fd)
            self.reading = False

    # -- reading the callback -------------------------------------------------------------------

    def poll(self) -> bytes | Framing:
        """The decoder's next event: payload bytes, NEED_DATA or END."""
        try:
            return self.decoder.next_event()
        except FramingError as exc:
            raise BadFraming(f"bad callback framing: {exc}") from None

    async def fill(self) -> None:
        """Read what the callback has sent: everything, or only the framing when the payload
        after it is large enough to splice (chunk sizes in one stream tend to repeat)."""
        size = self.read_size
        decoder = self.decoder
        if self.pipes is not None and decoder.chunk_size >= self.splice_min:
            # The rest of a short tail, plus the next framing; never the spliceable payload.
            left = decoder.payload_left
            size = FRAME_READ + (left if left < self.splice_min else 0)
        if self.drained and self.abort_when_empty is None:  # skip a recv that would say EAGAIN
            await self.flush()
            await self._wait(self.source, writable=False)
        while True:
            try:
                data = self.source.sock.recv(size)
            except BlockingIOError:
                await self.flush()
                await self._wait_for_callback()
                continue
            except OSError:
                data = b""
            if not data:
                raise StreamAborted(Outcome.LAMBDA_ABORT, "the Lambda closed the callback early")
            self.drained = len(data) < size
            self.last_activity = self.loop.time()
            self.decoder.receive(data)
            return

    async def next_payload(self) -> bytes | None:
        """Some payload bytes (copied), or None at the end of the body."""
        while (event := self.poll()) is NEED_DATA:
            await self.fill()
        return event if isinstance(event, bytes) else None

    async def discard(self) -> None:
        """Read the rest of the body and drop it (the viewer needs none), in large reads."""
        self.pipes = None
        while await self.next_payload() is not None:
            pass

    # -- writing to the viewer ------------------------------------------------------------------

    async def write(self, data: Sequence[bytes | memoryview], more: bool = False) -> None:
        """Send the buffers in order with one sendmsg (scatter-gather: nothing is joined)."""
        flags = socket.MSG_MORE if more else 0
        sock = self.sink.sock
        # An empty buffer would never drain.
        buffers: list[bytes | memoryview] = [buffer for buffer in data if buffer]
        while buffers:
            try:
                sent = sock.sendmsg(buffers, (), flags)
                self.committed = True
            except BlockingIOError:
                await self._wait(self.sink, writable=True)
                continue
            except OSError:
                raise StreamAborted(Outcome.VIEWER_ABORT, "the viewer disconnected") from None
            while sent:
                if len(buffers[0]) <= sent:
                    sent -= len(buffers.pop(0))
                else:
                    buffers[0] = memoryview(buffers[0])[sent:]
                    sent = 0

    def hold(self, data: bytes) -> None:
        """Bytes for the viewer (the response head) that leave with the relay's next write."""
        self.framing += data

    def take_output(self) -> list[bytes | memoryview]:
        """Held-back framing, bytes passed through, then the copied payload framed by h11, in
        wire order."""
        buffers: list[bytes | memoryview] = [self.framing] if self.framing else []
        self.framing = b""
        if self.wire:
            buffers += self.wire
            self.wire = []
            self.wire_size = 0
        if self.unframed_size:
            for piece in frame_around(self.sink.h11, Placeholder(self.unframed_size)):
                if isinstance(piece, Placeholder):
                    buffers.extend(self.unframed)
                else:
                    buffers.append(piece)
            self.copied += self.unframed_size
            self.unframed = []
            self.unframed_size = 0
        return buffers

    async def flush(self, more: bool = False) -> None:
        """Send the copied payload (framed) and any held-back framing."""
        buffers = self.take_output()
        if buffers:
            await self.write(buffers, more)

    @property
    def started(self) -> bool:
        """Some of the viewer's response has left, or body bytes wait to leave with the head:
        from here a failing render's viewer gets what was valid and a cut, never a 502 that
        would throw those bytes away."""
        return self.committed or bool(self.wire_size or self.unframed_size)

    def salvage(self) -> None:
        """The Lambda failed mid-body: still hand the viewer the valid bytes already decoded
        (the response stays unterminated, so it knows it is incomplete). One non-blocking
        attempt: a viewer that is not reading must not hold the cycle."""
        buffers = [buffer for buffer in self.take_output() if buffer]
        self.committed = self.committed or bool(buffers)
        with contextlib.suppress(OSError):
            self.sink.sock.sendmsg(buffers)

    async def end(self) -> None:
        """The body is complete: send the rest and the viewer's end of message."""
        buffers = self.take_output()
        buffers.append(self.sink.h11.send(h11.EndOfMessage()))
        await self.write(buffers)

    # -- the relay ------------------------------------------------------------------------------

    async def relay(self, first: bytes) -> None:
        """Forward `first` then the rest of the body, as it arrives, then end the response."""
        if first:
            self.unframed.append(first)
            self.unframed_size = len(first)
        if isinstance(self.decoder, ChunkedDecoder) and self.viewer_is_chunked():
            await self.pass_through(self.decoder)
            return
        while True:
            event = self.poll()
            if event is END:
                await self.end()
                return
            if isinstance(event, bytes):
                self.unframed.append(event)
                self.unframed_size += len(event)
                if self.unframed_size >= COPY_READ:  # a fast sender must not grow it unbounded
                    await self.flush()
            elif self.worth_splicing():
                await self.splice_payload()
            else:
                await self.fill()

    def viewer_is_chunked(self) -> bool:
        """h11 frames a response without Content-Length as chunked for an HTTP/1.1 viewer (and
        a chunked callback never gives its viewer a Content-Length); an HTTP/1.0 viewer gets
        the bare payload, which needs the decoder's events."""
        return self.sink.h11.their_http_version == b"1.1"

    async def pass_through(self, decoder: ChunkedDecoder) -> None:
        """The relay for a chunked viewer: the callback's framing is validated and forwarded
        as it is, one write for all that one or more immediate reads brought."""
        self.wire = self.take_output()  # the head, and `first` framed by h11
        self.read_size = PASS_READ
        while True:
            try:
                pieces, payload = decoder.forward()
            except FramingError as exc:  # the valid bytes before it are in self.wire
                raise BadFraming(f"bad callback framing: {exc}") from None
            self.wire += pieces
            self.wire_size += payload
            self.copied += payload
            if decoder.ended:
                await self.end()
                return
            if decoder.failed:  # raised by the next forward(), after these bytes
                continue
            if self.wire_size >= PASS_READ:  # a fast sender must not grow it unbounded
                await self.flush()
            if self.worth_splicing():
                await self.splice_payload()
            else:
                await self.fill()

    def worth_splicing(self) -> bool:
        decoder = self.decoder
        return (
            self.pipes is not None
            and decoder.buffered == 0
            and decoder.payload_left >= self.splice_min
        )

    async def splice_payload(self) -> None:
        """Move the rest of the current payload run kernel-side, framed by h11."""
        if self.pipe is None:
            self.pipe = self.pipes.acquire() if self.pipes is not None else None
        pipe = self.pipe
        if pipe is None:  # pool exhausted: this stream copies
            self.pipes = None
            return
        buffers = self.take_output()  # whatever came before this run leaves first...
        size = self.decoder.payload_left
        after = b""
        if not self.decoder.synced:  # (else the input's own framing around it goes through)
            pieces = frame_around(self.sink.h11, Placeholder(size))
            at = next(i for i, piece in enumerate(pieces) if isinstance(piece, Placeholder))
            # ...in one write with this run's framing, held open
            buffers.extend(piece for piece in pieces[:at] if isinstance(piece, bytes))
            after = b"".join(piece for piece in pieces[at + 1 :] if isinstance(piece, bytes))
        if buffers:
            await self.write(buffers, more=True)
        await self.splice(pipe, size)
        self.decoder.skip_payload(size)
        self.spliced += size
        self.framing = after

    async def splice(self, pipe: tuple[int, int], count: int) -> None:
        """Move exactly `count` bytes callback -> pipe -> viewer (a pipe's EAGAIN is ambiguous,
        so what the pipe holds is counted here rather than guessed)."""
        read_end, write_end = pipe
        source, sink = self.source.fd, self.sink.fd
        left = count
        while left or self.in_pipe:
            moved = False
            if left and self.in_pipe < PIPE_SIZE:
                room = min(left, PIPE_SIZE - self.in_pipe)
                try:
                    got = os.splice(source, write_end, room, flags=SPLICE_FLAGS)
                except BlockingIOError:
                    got = -1
                except OSError as exc:
                    raise StreamAborted(
                        Outcome.LAMBDA_ABORT, f"callback read failed: {exc}"
                    ) from None
                if got == 0:
                    raise StreamAborted(
                        Outcome.LAMBDA_ABORT, "the Lambda closed the callback early"
                    )
                if got > 0:
                    left -= got
                    self.in_pipe += got
                    self.last_activity = self.loop.time()
                    moved = True
            if self.in_pipe:
                more = SPLICE_MORE if left else 0
                try:
                    put = os.splice(read_end, sink, self.in_pipe, flags=SPLICE_FLAGS | more)
                except BlockingIOError:
                    put = -1
                except OSError:
                    raise StreamAborted(Outcome.VIEWER_ABORT, "the viewer disconnected") from None
                if put > 0:
                    self.in_pipe -= put
                    moved = True
            if not moved:
                # Pipe holding bytes the viewer will not take: wait for the viewer; else the
                # pipe is empty, so the callback has nothing more yet.
                if self.in_pipe:
                    await self._wait(self.sink, writable=True)
                else:
                    await self._wait_for_callback()
