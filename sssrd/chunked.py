"""Incremental, strict decoders for a callback's body framing (chunked, or Content-Length).

Strategy (after h11's readers): bytes go in with receive(); next_event() returns payload bytes,
NEED_DATA or END, or raises FramingError. Unlike h11's decoder, the position inside the current
chunk is public: `payload_left` says how many payload bytes of this chunk are still to come, and
skip_payload(n) records that n of them were moved past the decoder (spliced socket to socket),
so the zero-copy path never reads payload into Python. Framing is request-smuggling territory:
chunk sizes are 1-16 hex digits and nothing else, lines and trailers are bounded, CRLF exactly.
FramingCheck puts the same rules in front of a lenient parser (h11 reading a viewer's body).

ChunkedDecoder.forward() is the pass-through reading of the same rules: instead of payload
events it returns everything buffered as the bytes of a chunked response to the viewer, the
input's own framing kept wherever it is already what sssrd would write (so a buffer holding many
chunks leaves in one write), re-framed only where it is not: a size line with extensions or
leading zeros is rewritten, and the last chunk and its trailers are never forwarded (the viewer's
end of message is written by whoever frames the response). The buffer is immutable bytes, so the
pieces forward() returns are views of it, never copies.
"""

from __future__ import annotations

import re

MAX_SIZE_LINE = 1024  # the chunk-size line with its extensions, CRLF included
MAX_TRAILERS = 8192  # all trailer lines together
NEED_DATA = object()
END = object()

# chunk-size [ chunk-ext ]: hex digits, then ;-separated extensions of visible characters
# (ignored, but not allowed to hide control bytes). No whitespace before the size.
SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[ \t]*[!-~][ -~\t]*)?)")
# A size line forwarded as it is: no extension, no leading zero (sssrd's own framing, as h11's).
PLAIN_SIZE = re.compile(rb"[1-9A-Fa-f][0-9A-Fa-f]{0,15}")
TRAILER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*[\t -~\x80-\xff]*")

SIZE, PAYLOAD, PAYLOAD_CRLF, TRAILERS, DONE, FAILED = range(6)


class FramingError(ValueError):
    """The body's framing is invalid; the stream must be cut."""


class BodyDecoder:
    """Shared buffer handling; subclasses decide what the bytes mean."""

    # The input's framing of the current chunk went to the viewer as it is (forward()), so a
    # splice of its payload goes out unframed; never true for a body read by next_event().
    synced = False

    def __init__(self) -> None:
        self._buffer = b""  # immutable: views handed out by forward() stay valid
        self._start = 0  # consumed prefix of _buffer, dropped lazily
        self.payload_left = 0
        self.chunk_size = 0  # size of the current (or last) chunk: a hint for read sizes

    def receive(self, data: bytes) -> None:
        if self._start < len(self._buffer):
            self._buffer = self._buffer[self._start :] + data
        else:  # the usual case: nothing left over, the read's own bytes become the buffer
            self._buffer = data
        self._start = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._start

    def _take(self, count: int) -> bytes:
        start = self._start
        buffer = self._buffer
        data = buffer if start == 0 and count >= len(buffer) else buffer[start : start + count]
        self._start += len(data)
        return data

    def next_event(self) -> object:
        raise NotImplementedError

    def skip_payload(self, count: int) -> None:
        """`count` payload bytes of the current chunk went past the decoder (spliced)."""
        if self.buffered or not 0 < count <= self.payload_left:
            raise RuntimeError(f"cannot skip {count} of {self.payload_left} payload bytes")
        self.payload_left -= count
        self._payload_done()

    def _payload_done(self) -> None:
        pass

    @property
    def ended(self) -> bool:
        """True once the whole body has been decoded."""
        raise NotImplementedError

    @property
    def unused(self) -> bytes:
        """Bytes received after the end of the body (the next request on a kept-alive
        connection, or garbage); nothing until the body has ended."""
        return self._buffer[self._start :] if self.ended else b""


class LengthDecoder(BodyDecoder):
    """A Content-Length body: exactly `length` payload bytes."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.payload_left = self.chunk_size = length

    @property
    def ended(self) -> bool:
        return not self.payload_left

    def next_event(self) -> object:
        if not self.payload_left:
            return END
        if not self.buffered:
            return NEED_DATA
        data = self._take(min(self.buffered, self.payload_left))
        self.payload_left -= len(data)
        return data


class ChunkedDecoder(BodyDecoder):
    """A Transfer-Encoding: chunked body."""

    def __init__(self) -> None:
        super().__init__()
        self._state = SIZE
        self._trailer_bytes = 0
        self._failure: FramingError | None = None  # found by forward(), raised at its next call

    def next_event(self) -> object:
        self.synced = False  # the viewer's framing of this body is no longer the input's
        try:
            return self._next_event()
        except FramingError:
            self._state = FAILED  # sticky: nothing after a framing error is ever decoded
            raise

    def forward(self) -> tuple[list[bytes | memoryview], int]:
        """Everything buffered, validated, as viewer wire bytes of a chunked response, and how
        many payload bytes they carry. Incomplete framing stays buffered; at the last chunk the
        forwarding stops (`ended` once its trailers are read). A framing error is raised after
        the valid bytes before it were returned: at once if there are none, else at the next
        call. A chunk whose size line next_event() read is framed afresh, piece by piece."""
        if self._failure is not None:
            raise self._failure
        out: list[bytes | memoryview] = []
        buffer = self._buffer
        end = len(buffer)
        view = memoryview(buffer)
        run = self._start  # start of the input bytes being forwarded as they are
        payload = 0
        failure: FramingError | None = None
        start = self._start  # where the element being read begins
        try:
            while self._state != DONE:
                state = self._state
                start = self._start
                if state == PAYLOAD:
                    count = min(end - start, self.payload_left)
                    if not count:
                        break
                    if not self.synced:
                        out += (view[run:start], b"%x\r\n" % count, view[start : start + count])
                        out.append(b"\r\n")
                        run = start + count
                    self._start = start + count
                    payload += count
                    self.payload_left -= count
                    if not self.payload_left:
                        self._state = PAYLOAD_CRLF
                elif state == PAYLOAD_CRLF:
                    if end - start < 2:
                        break
                    if buffer[start : start + 2] != b"\r\n":
                        raise FramingError("chunk payload not followed by CRLF")
                    self._start = start + 2
                    if not self.synced:  # its framing was written afresh, CRLF included
                        run = self._start
                    self._state = SIZE
                elif state == SIZE:
                    line = self._line(MAX_SIZE_LINE, "chunk size line")
                    if line is None:
                        break
                    self.synced = True
                    if PLAIN_SIZE.fullmatch(line):
                        self.chunk_size = self.payload_left = int(line, 16)
                        self._state = PAYLOAD
                        continue
                    self._start_chunk(line)
                    out.append(view[run:start])  # the input's line is replaced, or dropped
                    run = self._start
                    if self._state == PAYLOAD:
                        out.append(b"%x\r\n" % self.chunk_size)
                    else:  # the last chunk: it and its trailers are the viewer framer's
                        run = -1
                else:  # TRAILERS, read and never forwarded (FAILED raises here)
                    run = -1
                    if self._next_event() is NEED_DATA:
                        break
        except FramingError as error:
            self._state = FAILED
            failure = error
        valid = start if failure else self._start  # a bad line may have been read past
        if 0 <= run < valid:
            out.append(view[run:valid])
        pieces = [piece for piece in out if piece]
        if failure is not None:
            if not pieces:
                raise failure
            self._failure = failure
        return pieces, payload

    def _next_event(self) -> object:
        while True:
            state = self._state
            if state == PAYLOAD:
                if not self.buffered:
                    return NEED_DATA
                data = self._take(min(self.buffered, self.payload_left))
                self.payload_left -= len(data)
                self._payload_done()
                return data
            if state == SIZE:
                line = self._line(MAX_SIZE_LINE, "chunk size line")
                if line is None:
                    return NEED_DATA
                self._start_chunk(line)
            elif state == PAYLOAD_CRLF:
                if self.buffered < 2:
                    return NEED_DATA
                if self._buffer[self._start : self._start + 2] != b"\r\n":
                    raise FramingError("chunk payload not followed by CRLF")
                self._start += 2
                self._state = SIZE
            elif state == TRAILERS:
                line = self._line(MAX_TRAILERS - self._trailer_bytes, "trailers")
                if line is None:
                    return NEED_DATA
                if not line:
                    self._state = DONE
                    return END
                self._trailer_bytes += len(line) + 2
                if not TRAILER_LINE.fullmatch(line):
                    raise FramingError("malformed trailer field")
            elif state == FAILED:
                raise FramingError("the body's framing already failed")
            else:
                return END

    @property
    def failed(self) -> bool:
        """A framing error was found (forward() raises it at its next call)."""
        return self._state == FAILED

    def _line(self, limit: int, what: str) -> bytes | None:
        end = self._buffer.find(b"\r\n", self._start, self._start + limit)
        if end < 0:
            if self.buffered >= limit:
                raise FramingError(f"{what} longer than {limit} bytes")
            if self._buffer.find(b"\n", self._start) >= 0:
                raise FramingError(f"bare LF in {what}")
            return None
        line = bytes(self._buffer[self._start : end])
        if b"\n" in line or b"\r" in line:
            raise FramingError(f"bare CR or LF in {what}")
        self._start = end + 2
        return line

    def _start_chunk(self, line: bytes) -> None:
        match = SIZE_LINE.fullmatch(line)
        if match is None:
            raise FramingError("malformed chunk size line")
        size = int(match.group(1), 16)
        self.chunk_size = size
        if size:
            self.payload_left = size
            self._state = PAYLOAD
        else:
            self._state = TRAILERS

    def _payload_done(self) -> None:
        if not self.payload_left:
            self._state = PAYLOAD_CRLF

    @property
    def ended(self) -> bool:
        return self._state == DONE


class FramingCheck:
    """Screens the bytes of a chunked body that another parser reads: call it with each piece
    in wire order; raises FramingError where this decoder's rules are broken. Bytes after the
    body's end are not looked at (they are the next request's)."""

    __slots__ = ("decoder", "ended")

    def __init__(self) -> None:
        self.decoder = ChunkedDecoder()
        self.ended = False

    def __call__(self, data: bytes) -> None:
        if self.ended:
            return
        self.decoder.receive(data)
        while (event := self.decoder.next_event()) is not NEED_DATA:
            if event is END:
                self.ended = True
                return
