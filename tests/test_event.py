"""Tests for sssrd.event (the payload-2.0 event) and sssrd.headers (the shared header rules)."""

import base64
import json

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sssrd.event import (
    CallbackInfo,
    EventTooLarge,
    InvalidTarget,
    build_compat_event,
    build_event,
    encode_event,
    format_request_time,
    split_target,
)
from sssrd.headers import (
    FRAMING,
    HOP_BY_HOP,
    hop_by_hop_names,
    is_field_value,
    is_token,
)

CALLBACK = CallbackInfo(
    url="http://10.0.1.23:8081/v1/callback/req-1", token="s3cret", deadline_ms=1795718268123
)
NOV_26_2026_18_37_18_123 = 1795718238123


def event_for(
    target: bytes = b"/",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    method: str = "GET",
    http_version: str = "1.1",
) -> dict:
    return build_event(
        method=method,
        target=target,
        http_version=http_version,
        headers=[(b"host", b"example.com")] if headers is None else headers,
        body=body,
        source_ip="203.0.113.7",
        request_id="req-1",
        time_epoch_ms=NOV_26_2026_18_37_18_123,
        callback=CALLBACK,
    )


# --- the whole event ------------------------------------------------------------------------


def test_realistic_get_gives_the_function_url_event_plus_the_sssrd_key():
    headers = [
        (b"host", b"shop.example.com:8080"),
        (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64)"),
        (b"accept", b"text/html"),
        (b"accept", b"application/xhtml+xml"),
        (b"cookie", b"session=abc123; theme=dark"),
        (b"cookie", b"consent=yes"),
        (b"connection", b"keep-alive, X-Debug"),
        (b"keep-alive", b"timeout=5"),
        (b"x-debug", b"1"),
        (b"te", b"trailers"),
        (b"x-forwarded-for", b"203.0.113.7"),
        (b"accept-language", b"fr-CH, fr;q=0.9"),
    ]
    event = event_for(b"/products/red%20shoes?size=9&size=10&q=a+b%21&empty=", headers)
    assert event == {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/products/red%20shoes",
        "rawQueryString": "size=9&size=10&q=a+b%21&empty=",
        "cookies": ["session=abc123", "theme=dark", "consent=yes"],
        "headers": {
            "host": "shop.example.com:8080",
            "user-agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "accept": "text/html,application/xhtml+xml",
            "x-forwarded-for": "203.0.113.7",
            "accept-language": "fr-CH, fr;q=0.9",
        },
        "queryStringParameters": {"size": "9,10", "q": "a b!", "empty": ""},
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "shop",
            "domainName": "shop.example.com",
            "domainPrefix": "shop",
            "http": {
                "method": "GET",
                "path": "/products/red%20shoes",
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
            },
            "requestId": "req-1",
            "routeKey": "$default",
            "stage": "$default",
            "time": "26/Nov/2026:18:37:18 +0000",
            "timeEpoch": 1795718238123,
        },
        "isBase64Encoded": False,
        "sssrd": {
            "version": 1,
            "callbackUrl": "http://10.0.1.23:8081/v1/callback/req-1",
            "token": "s3cret",
            "deadlineMs": 1795718268123,
        },
    }


def test_event_from_a_request_parsed_by_h11_round_trips_through_json():
    server = h11.Connection(h11.SERVER)
    server.receive_data(
        b"POST /api/items?x=1 HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    request = server.next_event()
    body = server.next_event()
    assert isinstance(request, h11.Request)
    assert isinstance(body, h11.Data)
    event = build_event(
        method=request.method.decode("ascii"),
        target=request.target,
        http_version=request.http_version.decode("ascii"),
        headers=list(request.headers),
        body=bytes(body.data),
        source_ip="10.0.0.1",
        request_id="r",
        time_epoch_ms=0,
        callback=CALLBACK,
    )
    assert event["headers"] == {"host": "api.example.com", "content-type": "text/plain"}
    assert event["body"] == "hello"
    assert event["requestContext"]["http"]["method"] == "POST"
    assert json.loads(encode_event(event, 1 << 20)) == event


# --- target ---------------------------------------------------------------------------------


def test_path_and_query_are_kept_as_received():
    event = event_for(b"/a%2Fb/%C3%A9?x=%41&y=1")
    assert event["rawPath"] == "/a%2Fb/%C3%A9"
    assert event["requestContext"]["http"]["path"] == "/a%2Fb/%C3%A9"
    assert event["rawQueryString"] == "x=%41&y=1"


def test_no_query_gives_empty_raw_query_and_no_parameters_key():
    for target in (b"/page", b"/page?"):
        event = event_for(target)
        assert event["rawPath"] == "/page"
        assert event["rawQueryString"] == ""
        assert "queryStringParameters" not in event


def test_only_the_first_question_mark_splits_path_from_query():
    assert split_target(b"/p?a=1?b=2") == ("/p", "a=1?b=2")


@pytest.mark.parametrize(
    "target, expected",
    [
        (b"http://example.com/a/b?c=d", ("/a/b", "c=d")),
        (b"https://user@example.com:8443/x", ("/x", "")),
        (b"http://example.com", ("/", "")),
        (b"http://example.com?q=1", ("/", "q=1")),
        (b"HTTP://[::1]:80/v6", ("/v6", "")),
    ],
)
def test_absolute_form_target_is_reduced_to_its_path_and_query(target, expected):
    assert split_target(target) == expected


@pytest.mark.parametrize(
    "target",
    [b"", b"*", b"example.com:443", b"relative/path", b"/caf\xc3\xa9", b"/a b", b"/a\tb",
     b"/\x00", b"/a\r\n", b"/\x7f", b"\xff", b"://no-scheme/x", b"1http://x/"],
)  # fmt: skip
def test_odd_targets_raise_invalid_target_a_value_error(target):
    with pytest.raises(InvalidTarget) as caught:
        event_for(target)
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).isascii()


def test_invalid_target_message_is_bounded():
    with pytest.raises(InvalidTarget) as caught:
        split_target(b"\x01" * 10_000)
    assert len(str(caught.value)) < 400


# --- query parameters -----------------------------------------------------------------------


def test_query_parameters_are_url_decoded():
    event = event_for(b"/?name=J%C3%A9r%C3%B4me&sp=a+b%20c&amp=%26%3D&%6Bey=v")
    assert event["queryStringParameters"] == {
        "name": "J\u00e9r\u00f4me",
        "sp": "a b c",
        "amp": "&=",
        "key": "v",
    }


def test_repeated_query_keys_are_joined_with_commas_in_order():
    event = event_for(b"/?a=1&b=x&a=2&a=3")
    assert event["queryStringParameters"] == {"a": "1,2,3", "b": "x"}


def test_query_keys_without_values_and_empty_pairs():
    event = event_for(b"/?flag&empty=&=novalue&&")
    assert event["queryStringParameters"] == {"flag": "", "empty": "", "": "novalue"}


def test_undecodable_percent_sequences_become_replacement_characters():
    event = event_for(b"/?bad=%FF%FE&half=%E2%82")
    assert event["queryStringParameters"] == {"bad": "\ufffd\ufffd", "half": "\ufffd"}
    assert event["rawQueryString"] == "bad=%FF%FE&half=%E2%82"


def test_semicolons_do_not_separate_query_parameters():
    assert event_for(b"/?a=1;b=2")["queryStringParameters"] == {"a": "1;b=2"}


# --- headers --------------------------------------------------------------------------------


def test_repeated_headers_are_joined_with_commas_in_order():
    headers = [(b"host", b"h"), (b"x-a", b"1"), (b"x-b", b"b"), (b"x-a", b"2"), (b"x-a", b"3")]
    assert event_for(headers=headers)["headers"] == {"host": "h", "x-a": "1,2,3", "x-b": "b"}


def test_header_names_are_lower_cased_even_if_the_caller_did_not():
    headers = [(b"Host", b"h"), (b"X-Mixed", b"1"), (b"x-mixed", b"2")]
    assert event_for(headers=headers)["headers"] == {"host": "h", "x-mixed": "1,2"}


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_headers_are_not_forwarded(name):
    event = event_for(headers=[(b"host", b"h"), (name, b"x"), (b"x-end", b"1")])
    assert event["headers"] == {"host": "h", "x-end": "1"}


def test_headers_named_in_connection_are_not_forwarded():
    headers = [
        (b"host", b"h"),
        (b"x-secret", b"1"),
        (b"connection", b"X-Secret ,\tx-other"),
        (b"x-other", b"2"),
        (b"content-length", b"0"),
    ]
    assert event_for(headers=headers)["headers"] == {"host": "h", "content-length": "0"}


def test_header_values_decode_as_latin1_so_every_byte_survives():
    raw = bytes(range(0x80, 0x100))
    event = event_for(headers=[(b"host", b"h"), (b"x-bytes", raw)])
    assert event["headers"]["x-bytes"].encode("latin-1") == raw


def test_utf8_header_value_is_recoverable_from_its_latin1_text():
    event = event_for(headers=[(b"host", b"h"), (b"x-name", "J\u00e9r\u00f4me".encode())])
    assert event["headers"]["x-name"].encode("latin-1").decode("utf-8") == "J\u00e9r\u00f4me"


def test_user_agent_is_copied_into_the_request_context_and_empty_when_absent():
    with_agent = event_for(headers=[(b"host", b"h"), (b"user-agent", b"curl/8.0")])
    assert with_agent["requestContext"]["http"]["userAgent"] == "curl/8.0"
    assert event_for()["requestContext"]["http"]["userAgent"] == ""


def test_protocol_follows_the_request_http_version():
    assert event_for(http_version="1.0")["requestContext"]["http"]["protocol"] == "HTTP/1.0"


def test_method_is_passed_through():
    assert event_for(method="DELETE")["requestContext"]["http"]["method"] == "DELETE"


# --- cookies --------------------------------------------------------------------------------


def test_cookie_headers_become_the_cookies_list_and_leave_the_headers():
    headers = [(b"host", b"h"), (b"cookie", b"a=1; b=2"), (b"cookie", b"c=3")]
    event = event_for(headers=headers)
    assert event["cookies"] == ["a=1", "b=2", "c=3"]
    assert "cookie" not in event["headers"]


def test_cookie_pairs_without_a_space_or_with_empty_pieces_are_split_cleanly():
    event = event_for(headers=[(b"host", b"h"), (b"cookie", b'a=1;b=2;  ; c="q v";')])
    assert event["cookies"] == ["a=1", "b=2", 'c="q v"']


def test_no_cookie_header_or_an_empty_one_means_no_cookies_key():
    assert "cookies" not in event_for()
    assert "cookies" not in event_for(headers=[(b"host", b"h"), (b"cookie", b"")])


# --- domain ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, domain_name, prefix",
    [
        (b"abc.lambda-url.us-east-1.on.aws", "abc.lambda-url.us-east-1.on.aws", "abc"),
        (b"www.example.com:8080", "www.example.com", "www"),
        (b"localhost", "localhost", "localhost"),
        (b"[::1]:8080", "[::1]", "[::1]"),
        (b"[::1]", "[::1]", "[::1]"),
        (b"10.0.0.1:80", "10.0.0.1", "10"),
    ],
)
def test_domain_name_is_the_host_without_its_port_and_prefix_its_first_label(
    host, domain_name, prefix
):
    context = event_for(headers=[(b"host", host)])["requestContext"]
    assert context["domainName"] == domain_name
    assert context["domainPrefix"] == prefix
    assert context["apiId"] == prefix
    assert event_for(headers=[(b"host", host)])["headers"]["host"] == host.decode()


def test_missing_host_gives_empty_domain():
    context = event_for(headers=[])["requestContext"]
    assert (context["domainName"], context["domainPrefix"]) == ("", "")


# --- time -----------------------------------------------------------------------------------


def test_request_time_uses_the_aws_access_log_format():
    assert format_request_time(NOV_26_2026_18_37_18_123) == "26/Nov/2026:18:37:18 +0000"
    assert format_request_time(0) == "01/Jan/1970:00:00:00 +0000"
    assert format_request_time(1583348638390) == "04/Mar/2020:19:03:58 +0000"


def test_every_month_is_spelled_in_english():
    first_days_2026 = [
        (1767225600, "Jan"), (1769904000, "Feb"), (1772323200, "Mar"), (1775001600, "Apr"),
        (1777593600, "May"), (1780272000, "Jun"), (1782864000, "Jul"), (1785542400, "Aug"),
        (1788220800, "Sep"), (1790812800, "Oct"), (1793491200, "Nov"), (1796083200, "Dec"),
    ]  # fmt: skip
    for seconds, month in first_days_2026:
        assert format_request_time(seconds * 1000) == f"01/{month}/2026:00:00:00 +0000"


# --- body -----------------------------------------------------------------------------------


def test_empty_body_is_omitted_and_not_base64():
    event = event_for(body=b"")
    assert "body" not in event
    assert event["isBase64Encoded"] is False


def test_utf8_body_is_sent_as_text():
    event = event_for(body='{"name": "J\u00e9r\u00f4me"}'.encode(), method="POST")
    assert event["body"] == '{"name": "J\u00e9r\u00f4me"}'
    assert event["isBase64Encoded"] is False


@pytest.mark.parametrize(
    "body", [b"\xff\xd8\xff\xe0JFIF", b"\x80", b"caf\xe9", b"\xed\xa0\x80", b"ok\xc3"]
)
def test_body_that_is_not_utf8_is_sent_base64(body):
    event = event_for(body=body, method="POST")
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"], validate=True) == body


def test_text_body_with_nul_and_control_characters_stays_text():
    event = event_for(body=b"a\x00b\x1bc", method="POST")
    assert event["body"] == "a\x00b\x1bc"
    assert json.loads(encode_event(event, 1 << 20))["body"] == "a\x00b\x1bc"


# --- encoding and the compatibility event ---------------------------------------------------


def test_encoded_event_is_compact_utf8_json():
    event = event_for(body="\u00e9\u4e2d".encode(), method="POST")
    encoded = encode_event(event, 1 << 20)
    assert b", " not in encoded
    assert b'": ' not in encoded
    assert "\u00e9\u4e2d".encode() in encoded
    assert json.loads(encoded) == event


def test_event_exactly_at_the_limit_is_accepted_and_one_byte_over_is_refused():
    event = event_for(body=b"x" * 1000, method="POST")
    size = len(encode_event(event, 1 << 20))
    assert len(encode_event(event, size)) == size
    with pytest.raises(EventTooLarge) as caught:
        encode_event(event, size - 1)
    assert (caught.value.size, caught.value.limit) == (size, size - 1)
    assert str(size) in str(caught.value)
    assert str(size - 1) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_compat_event_has_exactly_the_proof_of_concept_keys():
    event = build_compat_event(
        origin="http://10.0.1.23:8081", url="/page?x=1", request_id="0b5f3c8e"
    )
    assert event == {"origin": "http://10.0.1.23:8081", "url": "/page?x=1", "requestId": "0b5f3c8e"}
    assert encode_event(event, 100) == (
        b'{"origin":"http://10.0.1.23:8081","url":"/page?x=1","requestId":"0b5f3c8e"}'
    )


# --- headers.py -----------------------------------------------------------------------------


def test_hop_by_hop_set_is_the_rfc_list_plus_common_legacy_names():
    assert {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    } == HOP_BY_HOP
    assert {b"content-length", b"transfer-encoding"} == FRAMING


def test_hop_by_hop_names_adds_connection_tokens_lower_cased():
    headers = [(b"Connection", b" Close, X-Foo ,,x-bar\t"), (b"connection", b"X-Baz")]
    assert hop_by_hop_names(headers) == HOP_BY_HOP | {b"close", b"x-foo", b"x-bar", b"x-baz"}
    assert hop_by_hop_names([(b"x-a", b"1")]) == HOP_BY_HOP
    assert hop_by_hop_names([(b"connection", b"")]) == HOP_BY_HOP


@pytest.mark.parametrize("name", [b"a", b"Content-Type", b"x_y", b"!#$%&'*+-.^_`|~09azAZ"])
def test_tokens_are_accepted(name):
    assert is_token(name)


@pytest.mark.parametrize(
    "name", [b"", b"a b", b"a:b", b"a\r", b"(a)", b"a,b", b'"a"', b"\xe9", b"a/b", b"a\n"]
)
def test_non_tokens_are_refused(name):
    assert not is_token(name)


@pytest.mark.parametrize(
    "value", [b"", b"a", b"a b", b"a\tb", b"a  \t b", b"\xe9t\xe9", b"!~", b"\x80\xff"]
)
def test_field_values_are_accepted(value):
    assert is_field_value(value)


@pytest.mark.parametrize(
    "value",
    [b"a\rb", b"a\nb", b"a\0b", b"\x01", b"a\x1fb", b"a\x7f", b" a", b"a ", b"\ta", b"a\t", b" "],
)
def test_control_characters_and_outer_whitespace_are_not_field_values(value):
    assert not is_field_value(value)


@given(st.binary(max_size=30))
def test_field_values_are_exactly_what_h11_sends_minus_other_controls(value):
    accepted_by_h11 = True
    try:
        h11.Response(status_code=200, headers=[(b"x-a", value)])
    except h11.LocalProtocolError:
        accepted_by_h11 = False
    if is_field_value(value):
        assert accepted_by_h11
    has_other_control = any((byte < 0x20 and byte != 0x09) or byte == 0x7F for byte in value)
    if accepted_by_h11 and not has_other_control:
        assert is_field_value(value)


@given(st.binary(max_size=20))
def test_tokens_are_exactly_h11_header_names(name):
    # h11 also checks the values of its framing headers: give those a value it takes.
    value = {b"content-length": b"0", b"transfer-encoding": b"chunked"}.get(name.lower(), b"v")
    try:
        h11.Response(status_code=200, headers=[(name, value)])
        accepted_by_h11 = True
    except h11.LocalProtocolError:
        accepted_by_h11 = False
    assert is_token(name) == accepted_by_h11


# --- properties -----------------------------------------------------------------------------


@settings(deadline=None)
@given(
    target=st.binary(max_size=60) | st.from_regex(rb"\A/[!-~]{0,60}\Z"),
    headers=st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=30)), max_size=12),
    body=st.binary(max_size=200),
    method=st.text(max_size=8),
    http_version=st.sampled_from(["1.0", "1.1"]),
)
def test_any_request_gives_a_json_event_or_invalid_target(
    target, headers, body, method, http_version
):
    try:
        event = event_for(target, headers, body, method, http_version)
    except InvalidTarget as error:
        assert str(error).isascii()
        return
    encoded = encode_event(event, 1 << 22)
    assert json.loads(encoded) == event
    assert set(event["headers"]).isdisjoint(HOP_BY_HOP | {"cookie"})


@settings(deadline=None)
@given(st.binary(max_size=500))
def test_body_round_trips_exactly_through_the_event(body):
    decoded = json.loads(encode_event(event_for(body=body, method="POST"), 1 << 20))
    if not body:
        assert "body" not in decoded
    elif decoded["isBase64Encoded"]:
        assert base64.b64decode(decoded["body"], validate=True) == body
    else:
        assert decoded["body"].encode("utf-8") == body


@settings(deadline=None)
@given(st.from_regex(rb"\A/[!-~]{0,80}\Z"))
def test_raw_path_and_query_rebuild_the_origin_form_target(target):
    event = event_for(target)
    rebuilt = event["rawPath"] + ("?" + event["rawQueryString"] if b"?" in target else "")
    assert rebuilt.encode() == target
