"""The load generator's sans-I/O parts: how a response's bytes and a close are judged, and
how request bytes are built. No sockets: bytes in, verdicts out."""

from __future__ import annotations

import httptools
import pytest

from sssrd.loadtest.response import ErrorKind, ResponseReader
from sssrd.loadtest.targets import Requests, TargetError, parse_header

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def read(*pieces: bytes, head_only: bool = False) -> tuple[ResponseReader, list[float]]:
    """Feed each piece at t = 1, 2, 3 ... seconds."""
    gaps: list[float] = []
    reader = ResponseReader(gaps.append, head_only=head_only)
    for moment, piece in enumerate(pieces, start=1):
        reader.feed(piece, float(moment))
    return reader, gaps


def test_chunked_body_is_complete_only_with_its_last_chunk():
    reader, gaps = read(CHUNKED_HEAD, b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n")
    assert reader.complete and reader.end_of_stream() is None
    assert (reader.status, reader.body_bytes) == (200, 11)
    assert (reader.first_byte, reader.first_body, reader.last_body) == (1.0, 2.0, 3.0)
    assert gaps == [1.0]  # the terminating chunk carries no body: no gap


def test_chunked_body_cut_before_its_last_chunk_is_truncated():
    reader, _ = read(CHUNKED_HEAD, b"5\r\nhello\r\n")
    assert not reader.complete
    assert reader.end_of_stream() is ErrorKind.TRUNCATED


def test_fewer_bytes_than_content_length_is_truncated():
    reader, _ = read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"12345")
    assert reader.end_of_stream() is ErrorKind.TRUNCATED
    reader, _ = read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"12345")
    assert reader.complete


def test_close_before_any_byte_is_closed_and_a_cut_head_truncated():
    assert read()[0].end_of_stream() is ErrorKind.CLOSED
    assert read(b"HTTP/1.1 200 OK\r\nContent-")[0].end_of_stream() is ErrorKind.TRUNCATED


def test_close_delimited_body_ends_at_the_close():
    reader, _ = read(b"HTTP/1.1 200 OK\r\n\r\n", b"some", b"body")
    assert not reader.complete
    assert reader.end_of_stream() is None
    assert reader.complete and not reader.keep_alive and reader.body_bytes == 8


def test_bodiless_responses_complete_at_their_head():
    assert read(b"HTTP/1.1 204 No Content\r\n\r\n")[0].complete
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
    assert read(head, head_only=True)[0].complete


def test_cloudfront_headers_are_kept_bounded():
    reader, _ = read(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Amz-Cf-Pop: LHR62-C1\r\n"
        b"X-Cache: Hit from cloudfront\r\nX-Amz-Cf-Id: " + b"i" * 1000 + b"\r\n\r\n"
    )
    assert (reader.pop, reader.cache) == ("LHR62-C1", "Hit from cloudfront")
    assert reader.cf_id == "i" * 256


def test_connection_close_ends_keep_alive():
    reader, _ = read(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert reader.complete and not reader.keep_alive


def test_malformed_response_raises():
    with pytest.raises(httptools.HttpParserError):
        read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")


def test_request_bytes_from_a_template_and_headers():
    requests = Requests(
        ["https://example.test/p/{n}?r={rand:3-3}"],
        method="post",
        headers=[parse_header("X-Trace: abc")],
        body=b"hi",
    )
    assert requests.origin.tls and requests.origin.authority == "example.test"
    assert requests.encode(7) == (
        b"POST /p/7?r=3 HTTP/1.1\r\nHost: example.test\r\nX-Trace: abc\r\n"
        b"Content-Length: 2\r\nUser-Agent: sssrd-loadtest\r\n\r\nhi"
    )


def test_url_list_is_cycled_on_one_origin():
    requests = Requests(["http://h:81/a", "http://h:81/b?x=1"])
    assert [requests.target(n) for n in range(3)] == ["/a", "/b?x=1", "/a"]
    with pytest.raises(TargetError, match="share one"):
        Requests(["http://h:81/a", "http://h:82/b"])


@pytest.mark.parametrize(
    "header", ["no colon", "Bad Name: x", "X-Split: a\r\nInjected: b", "X-Nul: a\0"]
)
def test_headers_that_could_split_the_request_are_refused(header):
    with pytest.raises(TargetError):
        parse_header(header)


@pytest.mark.parametrize("url", ["ftp://h/", "http:///nohost", "http://h/a b", "http://h:x/"])
def test_unusable_urls_are_refused(url):
    with pytest.raises(TargetError):
        Requests([url])
