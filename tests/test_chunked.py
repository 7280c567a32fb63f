"""Tests for sssrd.chunked: the callback body's framing decoders, without sockets.

Valid bodies are generated with hypothesis and checked against h11's own chunked reader, under
random splits of the input into receive() calls; a corpus of malformed and smuggling-shaped bodies
must end in FramingError; arbitrary bytes must never crash the decoder or grow its buffer.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sssrd.chunked import (
    END,
    MAX_SIZE_LINE,
    MAX_TRAILERS,
    NEED_DATA,
    BodyDecoder,
    ChunkedDecoder,
    FramingCheck,
    FramingError,
    LengthDecoder,
)

# After the decoder has asked for more data, it holds at most one incomplete line.
LINE_BOUND = max(MAX_SIZE_LINE, MAX_TRAILERS)
REQUEST_HEAD = b"POST /cb HTTP/1.1\r\nHost: sssrd\r\nTransfer-Encoding: chunked\r\n\r\n"
NEXT_REQUEST = b"GET /admin HTTP/1.1\r\nHost: sssrd\r\n\r\n"
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- driving a decoder ----------------------------------------------------------------------


@dataclass
class Decoded:
    payload: bytes
    ended: bool
    failed: bool  # FramingError was raised (anything else propagates)
    unused: bytes


def drain(decoder: BodyDecoder, payload: bytearray) -> object:
    """Takes events until the decoder needs data or ends; payload bytes are appended."""
    for _ in range(decoder.buffered + 2):  # every bytes event consumes at least one byte
        event = decoder.next_event()
        if event is NEED_DATA or event is END:
            return event
        assert isinstance(event, bytes), event
        assert event, "an empty payload event would let a caller spin"
        payload += event
    raise AssertionError("next_event() kept returning events without consuming input")


def decode(pieces: Iterable[bytes], decoder: BodyDecoder | None = None) -> Decoded:
    """Feeds every piece (even after END), checking the invariants that hold for any input."""
    decoder = ChunkedDecoder() if decoder is None else decoder
    payload = bytearray()
    fed = 0
    event: object = NEED_DATA
    try:
        for piece in pieces:
            decoder.receive(piece)
            fed += len(piece)
            if event is not END:
                assert decoder.buffered <= len(piece) + LINE_BOUND
            event = drain(decoder, payload)
            assert len(payload) <= fed
            if event is NEED_DATA:
                assert decoder.buffered < LINE_BOUND
        if event is NEED_DATA:
            event = drain(decoder, payload)  # nothing fed at all: a Content-Length of 0 ends
    except FramingError:
        return Decoded(bytes(payload), False, True, b"")
    ended = event is END
    if ended:
        assert decoder.next_event() is END  # and stays ended
        assert decoder.payload_left == 0
    unused = decoder.unused if ended and isinstance(decoder, ChunkedDecoder) else b""
    return Decoded(bytes(payload), ended, False, unused)


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(edges)]


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[index : index + 1] for index in range(len(data))]


def h11_decode(wire: bytes) -> Decoded | None:
    """What h11's server side makes of the same body after a request head; None if it rejects."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(REQUEST_HEAD + wire)
    payload = bytearray()
    try:
        while True:
            event = connection.next_event()
            if isinstance(event, h11.Data):
                payload += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Decoded(bytes(payload), True, False, connection.trailing_data[0])
            elif event is h11.NEED_DATA:
                return Decoded(bytes(payload), False, False, b"")
    except h11.RemoteProtocolError:
        return None


# --- generating valid bodies ----------------------------------------------------------------

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(TCHAR, min_size=1, max_size=8).map(str.encode)
quoted = st.text("".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')).map(
    lambda text: b'"' + text.encode() + b'"'
)
# Field values: visible ASCII and obs-text, single spaces/tabs inside, none at the ends.
field_words = st.binary(min_size=1, max_size=6).map(
    lambda raw: bytes(b if 0x21 <= b <= 0x7E or b >= 0x80 else 0x61 for b in raw)
)
field_values = st.lists(field_words, max_size=3).flatmap(
    lambda words: st.sampled_from([b" ", b"\t", b" \t "]).map(lambda gap: gap.join(words))
)
payload_motifs = st.one_of(
    st.binary(min_size=1, max_size=12),
    st.sampled_from([b"\r\n0\r\n\r\n", b"\n", b"\r", b"0\r\n", b"\r\n", b"HTTP/1.1 200 OK\r\n"]),
)


@st.composite
def extensions(draw: st.DrawFn, spaced: bool) -> bytes:
    """`;name[=value]` chunk extensions; `spaced` adds the BWS RFC 9112 allows (h11 does not)."""
    gaps = st.sampled_from([b"", b" ", b"\t"]) if spaced else st.just(b"")
    parts = []
    for name in draw(st.lists(tokens, max_size=3)):
        value = draw(st.one_of(st.just(b""), tokens.map(b"=".__add__), quoted.map(b"=".__add__)))
        parts.append(draw(gaps) + b";" + draw(gaps) + name + value)
    return b"".join(parts)


@st.composite
def size_lines(draw: st.DrawFn, size: int, spaced: bool) -> bytes:
    """A chunk-size line: any case of hex digits, leading zeros up to 16 digits, extensions."""
    digits = format(size, "x")
    upper = draw(st.integers(0, 2 ** len(digits) - 1))
    digits = "".join(c.upper() if upper >> i & 1 else c for i, c in enumerate(digits))
    zeros = draw(st.integers(0, 16 - len(digits)))
    return b"0" * zeros + digits.encode() + draw(extensions(spaced)) + b"\r\n"


@dataclass
class Body:
    wire: bytes  # the chunked body followed by `suffix`
    payload: bytes
    suffix: bytes


@st.composite
def chunked_bodies(draw: st.DrawFn, max_size: int = 70000, spaced: bool = True) -> Body:
    sizes = st.one_of(st.integers(1, 4), st.integers(1, 64), st.integers(1, max_size))
    wire, payload = bytearray(), bytearray()
    for size in draw(st.lists(sizes, max_size=8)):
        motif = draw(payload_motifs)
        data = (motif * (size // len(motif) + 1))[:size]
        wire += draw(size_lines(size, spaced)) + data + b"\r\n"
        payload += data
    wire += draw(size_lines(0, spaced))
    for name in draw(st.lists(tokens, max_size=3)):
        wire += b"x-" + name + b":" + draw(st.sampled_from([b"", b" "])) + draw(field_values)
        wire += b"\r\n"
    wire += b"\r\n"
    suffix = draw(st.one_of(st.just(b""), st.just(NEXT_REQUEST), st.binary(max_size=20)))
    return Body(bytes(wire + suffix), bytes(payload), suffix)


def cuts_for(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=24)


# --- 1. valid bodies ------------------------------------------------------------------------


@FUZZ
@given(body=chunked_bodies(), data=st.data())
def test_valid_body_decodes_to_its_payload_under_any_split(body: Body, data: st.DataObject):
    decoded = decode(split_at(body.wire, data.draw(cuts_for(body.wire))))
    assert decoded == Decoded(body.payload, True, False, body.suffix)


@FUZZ
@given(body=chunked_bodies(max_size=300))
def test_valid_body_fed_one_byte_at_a_time_ends_exactly_at_its_last_byte(body: Body):
    decoder = ChunkedDecoder()
    payload = bytearray()
    body_length = len(body.wire) - len(body.suffix)
    for index, byte in enumerate(one_byte_at_a_time(body.wire)):
        decoder.receive(byte)
        event = drain(decoder, payload)
        assert (event is END) == (index >= body_length - 1)
    assert payload == body.payload
    assert decoder.unused == body.suffix


@FUZZ
@given(body=chunked_bodies(max_size=5000, spaced=False), data=st.data())
def test_valid_body_gives_the_same_payload_and_leftover_as_h11(body: Body, data: st.DataObject):
    ours = decode(split_at(body.wire, data.draw(cuts_for(body.wire))))
    assert ours == h11_decode(body.wire)


@FUZZ
@given(body=chunked_bodies(max_size=5000), data=st.data())
def test_truncated_body_needs_data_and_never_ends(body: Body, data: st.DataObject):
    body_length = len(body.wire) - len(body.suffix)
    cut = data.draw(st.integers(0, body_length - 1))
    decoded = decode(split_at(body.wire[:cut], data.draw(cuts_for(body.wire[:cut]))))
    assert not decoded.failed
    assert not decoded.ended
    assert body.payload.startswith(decoded.payload)


def test_large_chunk_fed_one_byte_at_a_time_is_delivered_whole():
    data = bytes(range(256)) * 274  # 70144 bytes, every byte value, CR and LF included
    wire = b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"
    assert decode(one_byte_at_a_time(wire)) == Decoded(data, True, False, b"")


def test_sixteen_hex_digit_size_is_taken_at_face_value_without_overflow():
    decoder = ChunkedDecoder()
    decoder.receive(b"FFFFffffFFFFffff\r\nab")
    assert decoder.next_event() == b"ab"
    assert decoder.payload_left == 2**64 - 3


def test_size_line_of_exactly_max_size_line_bytes_is_accepted():
    line = b"1;" + b"e" * (MAX_SIZE_LINE - 4) + b"\r\n"  # "1;eee...\r\n" is MAX_SIZE_LINE long
    assert len(line) == MAX_SIZE_LINE
    wire = line + b"Z\r\n0\r\n\r\n"
    assert decode([wire]) == Decoded(b"Z", True, False, b"")
    assert decode(one_byte_at_a_time(wire)) == Decoded(b"Z", True, False, b"")


def test_trailers_of_exactly_max_trailers_bytes_are_accepted():
    field = b"x-pad: " + b"v" * 91 + b"\r\n"  # 100 bytes
    fields = field * ((MAX_TRAILERS - 2) // len(field))
    fields += b"x: " + b"v" * (MAX_TRAILERS - 2 - len(fields) - 5) + b"\r\n"
    assert len(fields + b"\r\n") == MAX_TRAILERS  # the blank line that ends them counts
    wire = b"1\r\nZ\r\n0\r\n" + fields + b"\r\n"
    assert decode([wire]) == Decoded(b"Z", True, False, b"")
    assert decode(one_byte_at_a_time(wire)) == Decoded(b"Z", True, False, b"")


# --- 2. splicing payload past the decoder ---------------------------------------------------


@FUZZ
@given(body=chunked_bodies(max_size=5000), data=st.data())
def test_splicing_payload_runs_accounts_for_every_byte_and_reaches_end(
    body: Body, data: st.DataObject
):
    decoder = ChunkedDecoder()
    delivered = bytearray()  # copied and spliced payload, in wire order
    at = 0
    event: object = NEED_DATA
    for _ in range(len(body.wire) + 2):  # every step moves at least one byte
        event = drain(decoder, delivered)
        if event is END:
            break
        if decoder.buffered == 0 and decoder.payload_left > 0 and data.draw(st.booleans()):
            count = data.draw(st.integers(1, decoder.payload_left))
            decoder.skip_payload(count)
            delivered += body.wire[at : at + count]
        else:
            count = data.draw(st.integers(1, 2048))
            decoder.receive(body.wire[at : at + count])
        at += count
    assert event is END
    assert delivered == body.payload
    assert decoder.unused + body.wire[at:] == body.suffix


def test_skip_beyond_the_current_chunk_is_refused_and_changes_nothing():
    decoder = ChunkedDecoder()
    decoder.receive(b"5\r\n")
    assert decoder.next_event() is NEED_DATA
    for count in (6, 0, -1):
        with pytest.raises(RuntimeError):
            decoder.skip_payload(count)
    assert decoder.payload_left == 5
    decoder.skip_payload(2)
    decoder.skip_payload(3)
    assert decoder.payload_left == 0
    decoder.receive(b"\r\n0\r\n\r\n")
    assert decoder.next_event() is END


def test_skip_while_bytes_are_buffered_is_refused():
    decoder = ChunkedDecoder()
    decoder.receive(b"5\r\n")
    assert decoder.next_event() is NEED_DATA
    decoder.receive(b"ab")
    with pytest.raises(RuntimeError):
        decoder.skip_payload(1)
    assert decoder.next_event() == b"ab"
    assert decoder.payload_left == 3


def test_skip_outside_a_payload_is_refused():
    decoder = ChunkedDecoder()
    with pytest.raises(RuntimeError):
        decoder.skip_payload(1)
    decoder.receive(b"1\r\nZ")
    assert decoder.next_event() == b"Z"
    assert decoder.next_event() is NEED_DATA  # waiting for the CRLF after the payload
    with pytest.raises(RuntimeError):
        decoder.skip_payload(1)


def test_skipping_a_whole_payload_still_requires_its_crlf():
    decoder = ChunkedDecoder()
    decoder.receive(b"3\r\n")
    assert decoder.next_event() is NEED_DATA
    decoder.skip_payload(3)
    decoder.receive(b"XY0\r\n\r\n")
    with pytest.raises(FramingError):
        decoder.next_event()


# --- 3. malformed and smuggling-shaped bodies -----------------------------------------------

TAIL = b"\r\n0\r\n\r\n"
LONG_TRAILERS = b"0\r\n" + (b"x-pad: " + b"v" * 93 + b"\r\n") * (MAX_TRAILERS // 100 + 1) + b"\r\n"
MALFORMED = {
    # chunk-size: 1 to 16 hex digits, nothing Python's int() would also forgive
    "negative size": (b"-5\r\nhello" + TAIL, b""),
    "plus sign": (b"+5\r\nhello" + TAIL, b""),
    "0x prefix": (b"0x5\r\nhello" + TAIL, b""),
    "underscore in size": (b"1_0\r\n" + b"a" * 16 + TAIL, b""),
    "space before size": (b" 5\r\nhello" + TAIL, b""),
    "tab before size": (b"\t5\r\nhello" + TAIL, b""),
    "space after size": (b"5 \r\nhello" + TAIL, b""),
    "17 hex digits": (b"00000000000000005\r\nhello" + TAIL, b""),
    "17 hex digits, huge": (b"10000000000000000\r\nhello" + TAIL, b""),
    "fullwidth digit": (b"\xef\xbc\x95\r\nhello" + TAIL, b""),
    "empty size line": (b"\r\nhello" + TAIL, b""),
    "empty size line after a chunk": (b"1\r\nZ\r\n\r\n0\r\n\r\n", b"Z"),
    "junk after size": (b"5x\r\nhello" + TAIL, b""),
    "junk after size and space": (b"5 x\r\nhello" + TAIL, b""),
    "empty extension": (b"5;\r\nhello" + TAIL, b""),
    "NUL in extension": (b"5;a=\x00\r\nhello" + TAIL, b""),
    "CTL in extension": (b"5;a\x01b\r\nhello" + TAIL, b""),
    "DEL in extension": (b"5;a=\x7f\r\nhello" + TAIL, b""),
    "size line too long": (b"5;" + b"e" * MAX_SIZE_LINE, b""),
    "size line one byte too long": (b"1;" + b"e" * (MAX_SIZE_LINE - 3) + b"\r\nZ" + TAIL, b""),
    "long line of digits": (b"1" * (MAX_SIZE_LINE + 10), b""),
    # CRLF exactly, everywhere in the framing
    "bare LF after size": (b"5\nhello" + TAIL, b""),
    "bare CR after size": (b"5\rhello" + TAIL, b""),
    "LF CR after size": (b"5\n\rhello" + TAIL, b""),
    "CR CR LF after size": (b"5\r\r\nhello" + TAIL, b""),
    "bare LF after extension": (b"5;a=b\nhello" + TAIL, b""),
    "bare LF after payload": (b"5\r\nhello\n0\r\n\r\n", b"hello"),
    "bare CR after payload": (b"5\r\nhello\r0\r\n\r\n", b"hello"),
    "bare LF after last chunk": (b"0\n\r\n", b""),
    "bare LF as the final blank line": (b"0\r\n\n", b""),
    "bare LF ending a trailer": (b"0\r\nx: y\n\r\n", b""),
    "bare CR in a trailer": (b"0\r\nx: y\rz\r\n\r\n", b""),
    "bare CR as the final blank line": (b"0\r\n\r\r\n", b""),
    # payload length must match the size exactly
    "missing CRLF after payload": (b"3\r\nabcXY", b"abc"),
    "payload longer than size": (b"3\r\nabcd" + TAIL, b"abc"),
    "payload shorter than size": (b"5\r\nabc" + TAIL, b"abc\r\n"),
    # trailers: bounded, field-name ":" value, no CTLs, no obs-fold
    "trailers too long": (LONG_TRAILERS, b""),
    "trailer line never ends": (b"0\r\nx: " + b"v" * MAX_TRAILERS, b""),
    "trailer without colon": (b"0\r\nx-no-colon\r\n\r\n", b""),
    "trailer with empty name": (b"0\r\n: v\r\n\r\n", b""),
    "space before trailer colon": (b"0\r\nx : v\r\n\r\n", b""),
    "NUL in trailer": (b"0\r\nx: a\x00b\r\n\r\n", b""),
    "CTL in trailer": (b"0\r\nx: a\x01b\r\n\r\n", b""),
    "DEL in trailer": (b"0\r\nx: a\x7f\r\n\r\n", b""),
    "obs-fold with space": (b"0\r\nx: a\r\n b\r\n\r\n", b""),
    "obs-fold with tab": (b"0\r\nx: a\r\n\tb\r\n\r\n", b""),
    "obs-fold that looks like a field": (b"0\r\nx: a\r\n y: b\r\n\r\n", b""),
    "space before the first trailer": (b"0\r\n x: a\r\n\r\n", b""),
    # smuggling shapes: a second reading of the same bytes must not be possible
    "quoted CRLF in extension": (b'1;a="\r\n0\r\n\r\n"\r\nZ' + TAIL, b"0"),
    "request line as size": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b""),
    "size with trailing LF hiding a request": (b"0\n\nGET / HTTP/1.1\r\n\r\n", b""),
}


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
@pytest.mark.parametrize("wire, valid_prefix", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_body_raises_framing_error_after_its_valid_prefix(
    wire: bytes, valid_prefix: bytes, feed: str
):
    pieces = [wire] if feed == "whole" else one_byte_at_a_time(wire)
    decoded = decode(pieces)
    assert decoded.failed
    assert not decoded.ended
    assert decoded.payload == valid_prefix


def test_decoder_can_fail_a_body_a_lenient_parser_would_accept():
    # Proves the suite is not vacuous: h11 accepts this body, sssrd refuses it.
    wire = b"5 \r\nhello\r\n0\r\n\r\n"
    assert h11_decode(wire) == Decoded(b"hello", True, False, b"")
    decoder = ChunkedDecoder()
    decoder.receive(wire)
    with pytest.raises(FramingError):
        decoder.next_event()


SMUGGLED = {
    "request after a one-byte chunk": (b"1\r\nZ\r\n0\r\n\r\n", b"Z", NEXT_REQUEST),
    "terminator inside payload": (b"5\r\n0\r\n\r\n" + TAIL, b"0\r\n\r\n", NEXT_REQUEST),
    "second body after the first": (b"0\r\n\r\n", b"", b"1\r\nZ" + TAIL),
    "leading zeros and extensions": (b"0001;a=b\r\nZ\r\n00;x\r\n\r\n", b"Z", NEXT_REQUEST),
    "trailers then a request": (b"1\r\nZ\r\n0\r\nx-t: 1\r\n\r\n", b"Z", NEXT_REQUEST),
}


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
@pytest.mark.parametrize("body, payload, after", SMUGGLED.values(), ids=SMUGGLED.keys())
def test_bytes_after_the_body_are_left_unused_not_read_as_payload(
    body: bytes, payload: bytes, after: bytes, feed: str
):
    wire = body + after
    pieces = [wire] if feed == "whole" else one_byte_at_a_time(wire)
    assert decode(pieces) == Decoded(payload, True, False, after)
    assert h11_decode(wire) == Decoded(payload, True, False, after)


def test_last_chunk_without_its_blank_line_needs_data_and_is_not_the_end():
    for wire in (b"0\r\n", b"0\r\n\r", b"1\r\nZ\r\n0\r\nx: y\r\n"):
        decoder = ChunkedDecoder()
        decoder.receive(wire)
        assert drain(decoder, bytearray()) is NEED_DATA
        assert decoder.unused == b""


# --- 4. arbitrary input ---------------------------------------------------------------------

framing_atoms = st.sampled_from(
    [
        *(b"0", b"1", b"5", b"a", b"F", b"\r", b"\n", b"\r\n", b";", b"=", b":", b" ", b"\t"),
        *(b"x", b"\x00", b"-", b"+", b'"', b"\x7f", b"\xff", b"0\r\n\r\n", b"GET / HTTP/1.1\r\n"),
        *(b"2\r\n", b"\r\n1\r\n", b"\r\n0\r\n"),
    ]
)
arbitrary_input = st.one_of(
    st.binary(max_size=200),
    st.lists(framing_atoms, max_size=60).map(b"".join),
)


@FUZZ
@given(wire=arbitrary_input, data=st.data())
def test_arbitrary_input_yields_only_events_or_framing_error(wire: bytes, data: st.DataObject):
    decoded = decode(split_at(wire, data.draw(cuts_for(wire))))  # decode() checks the invariants
    assert decoded == decode(one_byte_at_a_time(wire))  # the split never changes the outcome
    if decoded.ended:
        # Whatever we accept, h11 reads the same way or rejects: never a different body end.
        assert h11_decode(wire) in (decoded, None)


@FUZZ
@given(body=chunked_bodies(max_size=300), data=st.data())
def test_mutated_valid_body_never_ends_where_h11_reads_a_different_body(
    body: Body, data: st.DataObject
):
    wire = bytearray(body.wire)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(wire)))
        atom = data.draw(framing_atoms)
        if data.draw(st.booleans()):
            wire[at:at] = atom
        else:
            wire[at : at + len(atom)] = atom
    decoded = decode(split_at(bytes(wire), data.draw(cuts_for(bytes(wire)))))
    if decoded.ended:
        assert h11_decode(bytes(wire)) in (decoded, None)


@pytest.mark.parametrize(
    "prefix",
    [b"", b"1;", b"1\r\nZ\r\n0\r\nx: "],
    ids=["size digits", "extension", "trailer value"],
)
def test_a_line_that_never_ends_is_refused_before_it_outgrows_the_limit(prefix: bytes):
    decoder = ChunkedDecoder()
    decoder.receive(prefix)
    largest = 0
    with pytest.raises(FramingError):
        for _ in range(2 * LINE_BOUND):
            decoder.receive(b"1")
            largest = max(largest, decoder.buffered)
            drain(decoder, bytearray())
    assert largest <= LINE_BOUND


def test_many_short_trailers_are_refused_once_they_add_up_past_the_limit():
    decoder = ChunkedDecoder()
    decoder.receive(b"0\r\n")
    with pytest.raises(FramingError):
        for _ in range(MAX_TRAILERS):
            decoder.receive(b"x:\r\n")
            assert drain(decoder, bytearray()) is NEED_DATA
    assert decoder.buffered <= LINE_BOUND


# --- 5. Content-Length bodies ---------------------------------------------------------------


@FUZZ
@given(
    payload=st.binary(max_size=3000),
    extra=st.one_of(st.just(b""), st.just(NEXT_REQUEST), st.binary(max_size=50)),
    data=st.data(),
)
def test_length_body_yields_exactly_length_bytes_then_end(
    payload: bytes, extra: bytes, data: st.DataObject
):
    wire = payload + extra
    decoder = LengthDecoder(len(payload))
    decoded = decode(split_at(wire, data.draw(cuts_for(wire))), decoder)
    assert decoded == Decoded(payload, True, False, b"")
    assert decoder.buffered <= len(extra)  # the extra bytes are held, never returned


@FUZZ
@given(payload=st.binary(min_size=1, max_size=3000), data=st.data())
def test_length_body_short_of_its_length_needs_data(payload: bytes, data: st.DataObject):
    cut = data.draw(st.integers(0, len(payload) - 1))
    decoded = decode(
        split_at(payload[:cut], data.draw(cuts_for(payload))), LengthDecoder(len(payload))
    )
    assert decoded == Decoded(payload[:cut], False, False, b"")


def test_zero_length_body_ends_at_once_and_leaves_extra_bytes_alone():
    decoder = LengthDecoder(0)
    assert decoder.next_event() is END
    decoder.receive(NEXT_REQUEST)
    assert decoder.next_event() is END
    assert decoder.buffered == len(NEXT_REQUEST)
    assert decoder.payload_left == 0


def test_length_body_can_be_spliced_then_copied():
    decoder = LengthDecoder(10)
    assert decoder.next_event() is NEED_DATA
    decoder.skip_payload(6)
    with pytest.raises(RuntimeError):
        decoder.skip_payload(5)
    decoder.receive(b"6789" + NEXT_REQUEST)
    with pytest.raises(RuntimeError):
        decoder.skip_payload(1)  # bytes are buffered: they must be read, not skipped
    assert decoder.next_event() == b"6789"
    assert decoder.next_event() is END
    assert decoder.buffered == len(NEXT_REQUEST)


def test_a_framing_error_is_sticky():
    decoder = ChunkedDecoder()
    decoder.receive(b"zz\r\n1\r\nZ\r\n0\r\n\r\n")
    for _ in range(2):
        with pytest.raises(FramingError):
            decoder.next_event()


# --- 5. pass-through: forward() against next_event() and h11 as oracles -----------------------

VIEWER_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def viewer_reads(wire: bytes, ended: bool) -> tuple[bytes, bool]:
    """The payload an HTTP/1.1 client (h11) reads from a chunked response whose body is `wire`
    (and the end of message sssrd's framer adds once the callback's body `ended`); whether the
    response was complete. A misframed response raises h11.RemoteProtocolError."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    client.receive_data(VIEWER_HEAD + wire + (b"0\r\n\r\n" if ended else b""))
    payload = bytearray()
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            payload += event.data
        elif isinstance(event, h11.EndOfMessage):
            return bytes(payload), True
        elif event is h11.NEED_DATA:
            return bytes(payload), False


@dataclass
class Forwarded:
    decoded: Decoded  # as the viewer reads it
    calls: list[list[bytes | memoryview]]  # what each forward() call returned


def forward(pieces: Iterable[bytes], read_first: int = 0) -> Forwarded:
    """Feeds every piece, as decode() does, calling forward() after each; the first
    `read_first` payload events are taken with next_event() and framed as h11 frames them (the
    prelude's path), the rest is passed through."""
    decoder = ChunkedDecoder()
    wire = bytearray()
    calls = []
    forwarded = 0
    failed = False
    try:
        for piece in pieces:
            decoder.receive(piece)
            while read_first and isinstance(event := decoder.next_event(), bytes):
                wire += b"%x\r\n%s\r\n" % (len(event), event)
                forwarded += len(event)
                read_first -= 1
            out, count = decoder.forward()
            assert count <= sum(map(len, out))
            calls.append(out)
            wire += b"".join(out)
            forwarded += count
        if decoder.failed:
            decoder.forward()  # the error found after the last valid bytes is raised now
            raise AssertionError("forward() did not raise the framing error it found")
    except FramingError:
        failed = True
    payload, complete = viewer_reads(bytes(wire), decoder.ended)
    assert complete == decoder.ended and len(payload) == forwarded
    unused = decoder.unused if decoder.ended else b""
    return Forwarded(Decoded(payload, decoder.ended, failed, unused), calls)


@FUZZ
@given(body=chunked_bodies(), data=st.data())
def test_valid_body_passes_through_to_its_payload_under_any_split(body: Body, data: st.DataObject):
    pieces = split_at(body.wire, data.draw(cuts_for(body.wire)))
    read_first = data.draw(st.integers(0, 3))
    expected = Decoded(body.payload, True, False, body.suffix)
    assert forward(pieces, read_first).decoded == expected


@st.composite
def plain_bodies(draw: st.DrawFn) -> Body:
    """Chunked bodies framed as sssrd frames them: no extensions, no leading zeros, no trailers."""
    chunks = draw(st.lists(st.binary(min_size=1, max_size=3000), max_size=8))
    wire = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    suffix = draw(st.one_of(st.just(b""), st.just(NEXT_REQUEST)))
    return Body(wire + b"0\r\n\r\n" + suffix, b"".join(chunks), suffix)


@FUZZ
@given(body=plain_bodies(), data=st.data())
def test_a_body_framed_as_sssrd_frames_it_is_forwarded_unchanged_one_piece_per_read(
    body: Body, data: st.DataObject
):
    pieces = split_at(body.wire, data.draw(cuts_for(body.wire)))
    forwarded = forward(pieces)
    assert forwarded.decoded == Decoded(body.payload, True, False, body.suffix)
    assert all(len(out) <= 1 for out in forwarded.calls)
    last_chunk = len(body.wire) - len(body.suffix) - len(b"0\r\n\r\n")
    assert b"".join(b"".join(out) for out in forwarded.calls) == body.wire[:last_chunk]


@FUZZ
@given(body=chunked_bodies(max_size=5000, spaced=False), data=st.data())
def test_forwarded_body_reads_as_h11_reads_the_callback(body: Body, data: st.DataObject):
    forwarded = forward(split_at(body.wire, data.draw(cuts_for(body.wire))))
    assert forwarded.decoded == h11_decode(body.wire)


@FUZZ
@given(wire=arbitrary_input, data=st.data())
def test_arbitrary_input_forwards_exactly_what_the_decoder_accepts(
    wire: bytes, data: st.DataObject
):
    pieces = split_at(wire, data.draw(cuts_for(wire)))
    assert forward(pieces, data.draw(st.integers(0, 2))).decoded == decode(pieces)


@FUZZ
@given(body=chunked_bodies(max_size=300), data=st.data())
def test_mutated_valid_body_forwards_exactly_what_the_decoder_accepts(
    body: Body, data: st.DataObject
):
    wire = bytearray(body.wire)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(wire)))
        wire[at:at] = data.draw(framing_atoms)
    pieces = split_at(bytes(wire), data.draw(cuts_for(bytes(wire))))
    assert forward(pieces).decoded == decode(pieces)


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
@pytest.mark.parametrize("wire, valid_prefix", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_body_forwards_its_valid_prefix_and_never_completes(
    wire: bytes, valid_prefix: bytes, feed: str
):
    pieces = [wire] if feed == "whole" else one_byte_at_a_time(wire)
    assert forward(pieces).decoded == Decoded(valid_prefix, False, True, b"")


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
@pytest.mark.parametrize("body, payload, after", SMUGGLED.values(), ids=SMUGGLED.keys())
def test_bytes_after_a_forwarded_body_are_left_unused(
    body: bytes, payload: bytes, after: bytes, feed: str
):
    wire = body + after
    pieces = [wire] if feed == "whole" else one_byte_at_a_time(wire)
    assert forward(pieces).decoded == Decoded(payload, True, False, after)


def test_extensions_leading_zeros_and_trailers_never_reach_the_viewer():
    wire = b"0003;ext=1\r\nabc\r\n2\r\nde\r\n00;x\r\nx-trailer: 1\r\n\r\n"
    decoder = ChunkedDecoder()
    decoder.receive(wire)
    out, count = decoder.forward()
    assert b"".join(out) == b"3\r\nabc\r\n2\r\nde\r\n" and count == 5
    assert decoder.ended and decoder.unused == b""


# --- FramingCheck: the same rules in front of h11 (the viewer's request bodies) -------------


@pytest.mark.parametrize("feed", ["whole", "bytewise"])
def test_framing_check_passes_a_valid_body_and_never_looks_past_its_end(feed: str):
    wire = b"3;name=value\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n" + b"\x00 not a body \x01"
    check = FramingCheck()
    for piece in [wire] if feed == "whole" else one_byte_at_a_time(wire):
        check(piece)
    assert check.ended


@pytest.mark.parametrize("extension", [b";a\x00b", b";\x01", b";x=\x7f", b";\x1b[2J"])
def test_framing_check_refuses_control_bytes_that_h11_accepts_in_an_extension(extension: bytes):
    wire = b"1" + extension + b"\r\nx\r\n0\r\n\r\n"
    assert h11_decode(wire) == Decoded(b"x", True, False, b"")  # the lenient reading
    with pytest.raises(FramingError):
        FramingCheck()(wire)
