"""Tests for sssrd.prelude: the callback response head, streaming-prelude and plain formats."""

import itertools
import json
import re

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sssrd.headers import is_field_value, is_token
from sssrd.prelude import (
    DEFAULT_MAX_BYTES,
    PRELUDE_CONTENT_TYPE,
    SEPARATOR,
    PreludeError,
    PreludeReader,
    ResponseHead,
    parse_prelude,
    plain_head,
)


def prelude(fields: object) -> bytes:
    return json.dumps(fields).encode()


def read_all(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[ResponseHead, bytes]:
    result = PreludeReader(max_bytes).feed(data)
    assert result is not None
    return result


def feed_in_pieces(
    pieces: list[bytes], max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[ResponseHead, bytes]:
    """Feeds pieces until the head comes; returns it with every body byte seen after it."""
    reader = PreludeReader(max_bytes)
    for index, piece in enumerate(pieces):
        result = reader.feed(piece)
        if result is not None:
            head, rest = result
            return head, rest + b"".join(pieces[index + 1 :])
    raise AssertionError("the reader never returned the head")


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(edges)]


# --- constants ------------------------------------------------------------------------------


def test_constants_match_the_aws_streaming_format():
    assert PRELUDE_CONTENT_TYPE == b"application/vnd.awslambda.http-integration-response"
    assert SEPARATOR == b"\x00" * 8


# --- statusCode -----------------------------------------------------------------------------


def test_status_defaults_to_200_when_absent_or_null():
    assert parse_prelude(b"{}").status == 200
    assert parse_prelude(b'{"statusCode": null}').status == 200


@pytest.mark.parametrize("status", [200, 201, 204, 302, 404, 500, 599])
def test_final_statuses_are_accepted(status):
    assert parse_prelude(prelude({"statusCode": status})).status == status


@pytest.mark.parametrize("status", [100, 101, 103, 199, 600, 0, -200, 1000])
def test_statuses_outside_200_to_599_are_rejected(status):
    with pytest.raises(PreludeError, match="not a final status"):
        parse_prelude(prelude({"statusCode": status}))


@pytest.mark.parametrize("raw", [b"true", b"false", b"200.0", b'"200"', b"[200]", b"{}"])
def test_status_that_is_not_an_integer_is_rejected(raw):
    with pytest.raises(PreludeError, match="statusCode must be an integer"):
        parse_prelude(b'{"statusCode": ' + raw + b"}")


# --- headers --------------------------------------------------------------------------------


def test_header_names_are_lower_cased_and_order_is_kept():
    head = parse_prelude(
        prelude({"headers": {"Content-Type": "text/html", "X-B": "2", "x-a": "1"}})
    )
    assert head.headers == [(b"content-type", b"text/html"), (b"x-b", b"2"), (b"x-a", b"1")]


def test_list_value_becomes_repeated_headers_in_order():
    head = parse_prelude(prelude({"headers": {"Vary": ["Accept", "Cookie"], "x-empty": []}}))
    assert head.headers == [(b"vary", b"Accept"), (b"vary", b"Cookie")]


def test_headers_null_means_no_headers():
    assert parse_prelude(b'{"headers": null}').headers == []


@pytest.mark.parametrize("headers", [[], "content-type: text/html", 5, True])
def test_headers_that_are_not_an_object_are_rejected(headers):
    with pytest.raises(PreludeError, match="headers must be an object"):
        parse_prelude(prelude({"headers": headers}))


@pytest.mark.parametrize(
    "name", ["", "x a", "x:a", ":status", "x\r\nset-cookie", "x\u00e9", "caf\u00e9", "a/b", "a\0"]
)
def test_header_name_that_is_not_a_token_is_rejected(name):
    with pytest.raises(PreludeError, match="is not a token"):
        parse_prelude(prelude({"headers": {name: "v"}}))


@pytest.mark.parametrize(
    "value",
    [
        "a\r\nSet-Cookie: evil=1",
        "a\rb",
        "a\nb",
        "a\0b",
        "a\x01b",
        "a\x1fb",
        "a\x7fb",
        "a\x0bb",
        "a\x0cb",
    ],
)
def test_header_value_with_a_control_character_is_rejected_naming_the_header(value):
    with pytest.raises(PreludeError, match=r"header x-custom: .*control character"):
        parse_prelude(prelude({"headers": {"X-Custom": value}}))


def test_a_control_character_in_one_item_of_a_list_rejects_the_prelude():
    with pytest.raises(PreludeError, match="header vary"):
        parse_prelude(prelude({"headers": {"vary": ["Accept", "Cookie\r\nX: y"]}}))


def test_header_value_keeps_inner_tabs_and_spaces_and_loses_outer_whitespace():
    head = parse_prelude(prelude({"headers": {"x-a": " \t a \t b\t ", "x-b": "   "}}))
    assert head.headers == [(b"x-a", b"a \t b"), (b"x-b", b"")]


def test_header_value_with_latin1_obs_text_is_sent_as_one_byte_per_character():
    head = parse_prelude(
        prelude({"headers": {"content-disposition": "inline; filename=\u00e9.txt"}})
    )
    assert head.headers == [(b"content-disposition", b"inline; filename=\xe9.txt")]


@pytest.mark.parametrize("value", ["\u20ac", "\u0100", "\U0001f600", "\ud800"])
def test_header_value_beyond_latin1_is_rejected(value):
    with pytest.raises(PreludeError, match="beyond U\\+00FF"):
        parse_prelude(prelude({"headers": {"x-a": value}}))


@pytest.mark.parametrize("value", [5, None, True, {"a": "b"}, 1.5, ["a", 5], [["a"]]])
def test_header_value_that_is_not_a_string_is_rejected(value):
    with pytest.raises(PreludeError, match="header x-a: value must be a string"):
        parse_prelude(prelude({"headers": {"x-a": value}}))


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Content-Length",
    ],
)
def test_hop_by_hop_and_framing_headers_are_dropped_and_reported(name):
    head = parse_prelude(prelude({"headers": {name: "close", "x-kept": "1"}}))
    assert head.headers == [(b"x-kept", b"1")]
    assert head.dropped == (name.lower().encode(),)


def test_headers_named_by_connection_are_dropped_too():
    fields = {"headers": {"X-Hop": "1", "Connection": "x-hop, X-Other", "x-other": "2", "a": "3"}}
    head = parse_prelude(prelude(fields))
    assert head.headers == [(b"a", b"3")]
    assert head.dropped == (b"x-hop", b"connection", b"x-other")


def test_dropped_names_are_reported_once_each():
    head = parse_prelude(
        prelude({"headers": {"Content-Length": "5", "content-length": ["5", "6"]}})
    )
    assert head.headers == []
    assert head.dropped == (b"content-length",)


def test_nothing_dropped_means_empty_dropped():
    assert parse_prelude(prelude({"headers": {"x-a": "1"}})).dropped == ()


# --- cookies --------------------------------------------------------------------------------


def test_cookies_become_set_cookie_headers_after_the_headers():
    fields = {"cookies": ["a=b; Path=/", "c=d; HttpOnly"], "headers": {"Set-Cookie": "e=f"}}
    head = parse_prelude(prelude(fields))
    assert head.headers == [
        (b"set-cookie", b"e=f"),
        (b"set-cookie", b"a=b; Path=/"),
        (b"set-cookie", b"c=d; HttpOnly"),
    ]


def test_cookies_null_or_empty_add_nothing():
    assert parse_prelude(b'{"cookies": null}').headers == []
    assert parse_prelude(b'{"cookies": []}').headers == []


@pytest.mark.parametrize("cookies", ["a=b", {"a": "b"}, 5, True])
def test_cookies_that_are_not_a_list_are_rejected(cookies):
    with pytest.raises(PreludeError, match="cookies must be a list"):
        parse_prelude(prelude({"cookies": cookies}))


@pytest.mark.parametrize("cookie", ["a=b\r\nX-Evil: 1", "a=\0", 5, None])
def test_cookie_with_control_character_or_wrong_type_is_rejected(cookie):
    with pytest.raises(PreludeError, match="header set-cookie"):
        parse_prelude(prelude({"cookies": ["ok=1", cookie]}))


# --- the JSON itself ------------------------------------------------------------------------


def test_unknown_top_level_keys_are_ignored():
    fields = {"statusCode": 201, "body": "ignored", "isBase64Encoded": True, "multiValue": [1, 2]}
    assert parse_prelude(prelude(fields)) == ResponseHead(201, [])


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"{",
        b"{'statusCode': 200}",
        b'{"statusCode": 200} x',
        b"\xef\xbb\xbf{}",
        b'{"headers": {"a": "b",}}',
    ],
)
def test_text_that_is_not_json_is_rejected(raw):
    with pytest.raises(PreludeError, match="not valid JSON"):
        parse_prelude(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "\xff"}',
        b'{"a": "\xed\xa0\x80"}',
        '{"a": 1}'.encode("utf-16"),
        b'{"statusCode": NaN}',
        b'{"x": Infinity}',
        b'{"x": -Infinity}',
        b'{"statusCode": ' + b"9" * 5000 + b"}",
    ],
)
def test_non_utf8_and_non_standard_json_are_rejected(raw):
    with pytest.raises(PreludeError, match="not valid"):
        parse_prelude(raw)


@pytest.mark.parametrize("raw", [b"[]", b"null", b"200", b'"x"', b"true"])
def test_prelude_that_is_not_an_object_is_rejected(raw):
    with pytest.raises(PreludeError, match="must be a JSON object"):
        parse_prelude(raw)


def test_deeply_nested_prelude_is_rejected_without_recursion_error():
    with pytest.raises(PreludeError):
        parse_prelude(b'{"x": ' + b"[" * 60000 + b"]" * 60000 + b"}")


def test_duplicate_keys_take_the_last_value_like_javascript():
    assert parse_prelude(b'{"statusCode": 500, "statusCode": 201}').status == 201


# --- PreludeReader --------------------------------------------------------------------------


def test_reader_returns_head_and_rest_of_body_in_one_feed():
    data = prelude({"statusCode": 404, "headers": {"content-type": "text/html"}})
    head, rest = read_all(data + SEPARATOR + b"<h1>gone</h1>")
    assert head == ResponseHead(404, [(b"content-type", b"text/html")])
    assert rest == b"<h1>gone</h1>"


def test_reader_returns_empty_rest_when_only_the_prelude_arrived():
    assert read_all(b"{}" + SEPARATOR) == (ResponseHead(200, []), b"")


def test_reader_needs_more_until_the_separator_is_complete():
    reader = PreludeReader()
    assert reader.feed(b'{"statusCode": 201}') is None
    assert reader.feed(b"\0" * 7) is None
    assert reader.feed(b"\0body") == (ResponseHead(201, []), b"body")


def test_separator_straddling_every_pair_of_feeds_is_found():
    data = b'{"statusCode": 202}' + SEPARATOR + b"xyz"
    for cut in range(len(data) + 1):
        assert feed_in_pieces([data[:cut], data[cut:]]) == (ResponseHead(202, []), b"xyz")


def test_byte_at_a_time_feeding_gives_the_same_result():
    data = prelude({"statusCode": 203, "cookies": ["a=b"]}) + SEPARATOR + b"\0\0body\0"
    pieces = [data[i : i + 1] for i in range(len(data))]
    assert feed_in_pieces(pieces) == read_all(data)


def test_first_separator_wins_and_later_nuls_belong_to_the_body():
    head, rest = read_all(b"{}" + b"\0" * 9 + SEPARATOR + b"tail")
    assert head == ResponseHead(200, [])
    assert rest == b"\0" + SEPARATOR + b"tail"


def test_empty_feeds_are_harmless():
    reader = PreludeReader()
    assert reader.feed(b"") is None
    assert reader.feed(b"{}") is None
    assert reader.feed(b"") is None
    assert reader.feed(SEPARATOR) == (ResponseHead(200, []), b"")


def test_invalid_prelude_raises_once_the_separator_arrives():
    reader = PreludeReader()
    assert reader.feed(b'{"statusCode": 99}') is None
    with pytest.raises(PreludeError, match="not a final status"):
        reader.feed(SEPARATOR + b"body")


def test_prelude_of_exactly_max_bytes_is_accepted():
    max_bytes = 100
    data = b'{"x": "' + b"a" * (max_bytes - 10) + b'"}'
    data = data.ljust(max_bytes, b" ")
    assert len(data) == max_bytes
    assert read_all(data + SEPARATOR + b"b", max_bytes) == (ResponseHead(200, []), b"b")
    pieces = [data[i : i + 1] for i in range(len(data))] + [SEPARATOR, b"b"]
    assert feed_in_pieces(pieces, max_bytes) == (ResponseHead(200, []), b"b")


def test_prelude_one_byte_over_max_bytes_is_rejected_even_with_the_separator_in_view():
    max_bytes = 100
    data = b"{}".ljust(max_bytes + 1, b" ")
    with pytest.raises(PreludeError, match="no 8-NUL separator within 100 bytes"):
        PreludeReader(max_bytes).feed(data + SEPARATOR)


def test_reader_rejects_as_soon_as_the_separator_can_no_longer_fit():
    max_bytes = 100
    reader = PreludeReader(max_bytes)
    # The separator could still start at byte max_bytes until 8 more bytes have arrived.
    assert reader.feed(b"{}".ljust(max_bytes, b" ") + b"\0" * 7) is None
    with pytest.raises(PreludeError, match="no 8-NUL separator"):
        reader.feed(b"x")


def test_reader_rejects_an_endless_prelude_fed_in_small_pieces():
    reader = PreludeReader(1000)
    with pytest.raises(PreludeError):
        for _ in range(1000):
            reader.feed(b"[" * 10)


def test_default_max_bytes_is_64_kib():
    near_limit = b"{}".ljust(DEFAULT_MAX_BYTES, b" ")
    assert read_all(near_limit + SEPARATOR)[0] == ResponseHead(200, [])
    with pytest.raises(PreludeError):
        read_all(near_limit + b" " + SEPARATOR)


def test_feeding_after_the_head_was_returned_is_a_programming_error():
    reader = PreludeReader()
    reader.feed(b"{}" + SEPARATOR)
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


def test_feeding_after_an_error_is_a_programming_error():
    reader = PreludeReader()
    with pytest.raises(PreludeError):
        reader.feed(b"[]" + SEPARATOR)
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


# --- plain format ---------------------------------------------------------------------------


def test_plain_head_defaults_to_200_with_no_headers():
    assert plain_head(None, None) == ResponseHead(200, [])


@pytest.mark.parametrize("raw, status", [(b"200", 200), (b"404", 404), (b"599", 599)])
def test_plain_head_takes_the_status_from_x_status_code(raw, status):
    assert plain_head(raw, None).status == status


@pytest.mark.parametrize(
    "raw",
    [b"", b"199", b"100", b"600", b"999", b"20", b"2000", b" 200", b"200 ", b"+20", b"-20",
     b"2e2", b"abc", b"0x1", b"\xd9\xa2\xd9\xa0\xd9\xa0", b"20\0"],
)  # fmt: skip
def test_plain_head_rejects_anything_but_three_digits_from_200_to_599(raw):
    with pytest.raises(PreludeError, match="X-Status-Code"):
        plain_head(raw, None)


def test_plain_head_passes_the_content_type_through():
    head = plain_head(b"201", b"text/html; charset=utf-8")
    assert head == ResponseHead(201, [(b"content-type", b"text/html; charset=utf-8")])


@pytest.mark.parametrize("value", [b"text/html\r\nSet-Cookie: a=b", b"text/\0html", b"a\x7f"])
def test_plain_head_rejects_a_content_type_with_control_characters(value):
    with pytest.raises(PreludeError, match="Content-Type"):
        plain_head(None, value)


# --- properties -----------------------------------------------------------------------------

header_names = st.from_regex(r"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,20}\Z")
header_texts = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_categories=["Cc"]),
    max_size=40,
)
valid_fields = st.fixed_dictionaries(
    {},
    optional={
        "statusCode": st.integers(200, 599),
        "headers": st.dictionaries(
            header_names, st.one_of(header_texts, st.lists(header_texts, max_size=3)), max_size=6
        ),
        "cookies": st.lists(header_texts, max_size=3),
        "body": st.text(max_size=10),
    },
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
near_valid_fields = st.dictionaries(
    st.sampled_from(["statusCode", "headers", "cookies", "other"]),
    json_values
    | st.dictionaries(st.text(max_size=12), json_values | st.text(max_size=12), max_size=4),
    max_size=4,
)


@settings(deadline=None)
@given(
    fields=valid_fields,
    body=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_any_split_of_a_valid_prelude_and_body_gives_the_one_feed_result(fields, body, cuts):
    data = prelude(fields) + SEPARATOR + body
    whole = read_all(data)
    assert whole[1] == body
    assert feed_in_pieces(split_at(data, cuts)) == whole


# What a Lambda is told about a malformed prelude (docs/protocol.md): which part is wrong, in
# printable ASCII, never the raw bytes it sent.
PRELUDE_FAULTS = re.compile(
    r"no 8-NUL separator within \d+ bytes of prelude|prelude JSON nests too deeply"
    r"|prelude is not valid JSON: [A-Za-z' ]+ at \d+|prelude is not valid UTF-8 JSON"
    r"|prelude must be a JSON object|statusCode must be an integer, not [a-z ]+"
    r"|statusCode -?\d+ is not a final status \(200 to 599\)"
    r"|(headers|cookies) must be (an object|a list of strings), not [a-z ]+"
    r"|header name .{1,80} is not a token|header .{1,80}: value .+"
)


def assert_says_what_was_wrong(error: PreludeError) -> None:
    message = str(error)
    assert message.isascii() and message.isprintable() and len(message) < 200, message
    assert PRELUDE_FAULTS.fullmatch(message), message


@settings(deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_arbitrary_bytes_give_a_head_or_prelude_error_and_nothing_else(data, cuts):
    reader = PreludeReader(max_bytes=64)
    for piece in split_at(data, cuts):
        try:
            result = reader.feed(piece)
        except PreludeError as error:
            assert_says_what_was_wrong(error)
            return
        if result is not None:
            return


@settings(deadline=None)
@given(
    data=st.lists(st.sampled_from([b"\0", b"\0" * 7, b"{}", b"{", b"\0" * 3, b"x"]), max_size=40)
)
def test_nul_heavy_streams_give_a_head_or_prelude_error_and_nothing_else(data):
    reader = PreludeReader(max_bytes=16)
    for piece in data:
        try:
            if reader.feed(piece) is not None:
                return
        except PreludeError as error:
            assert_says_what_was_wrong(error)
            return


@settings(deadline=None)
@given(fields=st.one_of(valid_fields, near_valid_fields))
def test_every_accepted_head_is_one_h11_will_send(fields):
    try:
        head = parse_prelude(prelude(fields))
    except PreludeError as error:
        assert str(error).isascii()
        assert len(str(error)) < 200
        return
    for name, value in head.headers:
        assert is_token(name)
        assert name == name.lower()
        assert is_field_value(value)
        assert name not in {b"content-length", b"transfer-encoding", b"connection"}
    response = h11.Response(status_code=head.status, headers=head.headers)
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(server.next_event(), h11.Request)
    assert server.send(response).startswith(b"HTTP/1.1 ")


@settings(deadline=None)
@given(status=st.binary(max_size=5), content_type=st.none() | st.binary(max_size=30))
def test_plain_head_gives_a_valid_head_or_prelude_error(status, content_type):
    try:
        head = plain_head(status, content_type)
    except PreludeError as error:
        assert str(error).isascii()
        return
    assert 200 <= head.status <= 599
    assert all(is_field_value(value) for _, value in head.headers)
