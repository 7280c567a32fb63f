"""Builds the event a render Lambda is invoked with, from a viewer's parsed request.

The event is the Lambda Function URL request payload (API Gateway HTTP API payload format 2.0)
plus an "sssrd" key naming the callback, so handlers written for Function URLs read it
unchanged. Building is linear in the size of the request; nothing here does I/O. Header values are
decoded as latin-1 (as WSGI does): HTTP allows obs-text bytes, latin-1 maps every byte to one
character and back, so a handler can recover UTF-8 with `value.encode("latin-1").decode()`.
"""

import base64
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sssrd.headers import hop_by_hop_names, is_host, preview

# Months spelled out here because strftime("%b") follows the process locale.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Origin-form starts with "/"; absolute-form ("http://host/path?q", which HTTP/1.1 servers must
# accept) loses its scheme and authority. Both are visible ASCII only, as h11 already enforces.
_VISIBLE_ASCII = re.compile(rb"[!-~]+")
_ABSOLUTE_FORM_PREFIX = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")


@dataclass(frozen=True, slots=True)
class CallbackInfo:
    """Where and how the Lambda posts its response: URL, bearer token, epoch-ms deadline."""

    url: str
    token: str
    deadline_ms: int


class InvalidTarget(ValueError):
    """The request target is not one the event can describe (not ASCII, not a path)."""


class EventTooLarge(ValueError):
    """The encoded event is over the invoke payload limit (the viewer gets 413)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event is {size} bytes, over the {limit}-byte invoke payload limit")
        self.size = size
        self.limit = limit


def build_event(
    *,
    method: str,
    target: bytes,
    http_version: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    source_ip: str,
    request_id: str,
    time_epoch_ms: int,
    callback: CallbackInfo,
) -> dict[str, Any]:
    """The payload-2.0 event for one viewer request. `headers` are as h11 gives them (names
    lower-case, in order, repeats possible). Raises InvalidTarget for a target that is not
    origin-form or absolute-form ASCII."""
    path, query = split_target(target)
    cookies, joined = _collect_headers(headers)
    authority = target_authority(target)
    if authority is not None:
        joined["host"] = authority
    host = joined.get("host", "")
    domain_name = _strip_port(host)
    domain_prefix = domain_name.split(".", 1)[0]
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = joined
    if query:
        event["queryStringParameters"] = _query_parameters(query)
    event["requestContext"] = {
        "accountId": "anonymous",
        "apiId": domain_prefix,
        "domainName": domain_name,
        "domainPrefix": domain_prefix,
        "http": {
            "method": method,
            "path": path,
            "protocol": f"HTTP/{http_version}",
            "sourceIp": source_ip,
            "userAgent": joined.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": "$default",
        "stage": "$default",
        "time": format_request_time(time_epoch_ms),
        "timeEpoch": time_epoch_ms,
    }
    _add_body(event, body)
    event["sssrd"] = {
        "version": 1,
        "callbackUrl": callback.url,
        "token": callback.token,
        "deadlineMs": callback.deadline_ms,
    }
    return event


def build_compat_event(*, origin: str, url: str, request_id: str) -> dict[str, Any]:
    """The event of the lambda-streaming proof of concept (compatibility mode)."""
    return {"origin": origin, "url": url, "requestId": request_id}


def encode_event(event: dict[str, Any], limit: int) -> bytes:
    """Compact UTF-8 JSON for the invoke payload; EventTooLarge if over `limit` bytes."""
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    encoded = text.encode("utf-8")
    if len(encoded) > limit:
        raise EventTooLarge(len(encoded), limit)
    return encoded


def split_target(target: bytes) -> tuple[str, str]:
    """(path, query) of a request target, both as received (still percent-encoded); the query
    has no "?" and is "" when absent."""
    if _VISIBLE_ASCII.fullmatch(target) is None:
        raise InvalidTarget(f"request target {preview(target)} is not visible ASCII")
    if not target.startswith(b"/"):
        prefix = _ABSOLUTE_FORM_PREFIX.match(target)
        if prefix is None:
            raise InvalidTarget(f"request target {preview(target)} is not a path or a URL")
        target = target[prefix.end() :]
        if not target.startswith(b"/"):
            target = b"/" + target
    path, _, query = target.decode("ascii").partition("?")
    return path, query


def target_authority(target: bytes) -> str | None:
    """The host[:port] of an absolute-form target, which replaces the Host header (RFC 9112
    section 3.2.2; userinfo is dropped); None for origin-form. Raises InvalidTarget when it is
    not a valid, non-empty host[:port]."""
    prefix = _ABSOLUTE_FORM_PREFIX.match(target)
    if prefix is None:
        return None
    authority = target[target.index(b"://") + 3 : prefix.end()].rpartition(b"@")[2]
    if not authority or not is_host(authority):
        raise InvalidTarget(f"request target {preview(target)} has no valid host[:port]")
    return authority.decode("ascii")


def format_request_time(time_epoch_ms: int) -> str:
    """requestContext.time: "26/Nov/2026:18:37:18 +0000" (UTC, English month)."""
    t = time.gmtime(time_epoch_ms // 1000)
    clock = f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    return f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{clock} +0000"


def _collect_headers(headers: list[tuple[bytes, bytes]]) -> tuple[list[str], dict[str, str]]:
    """(cookies, headers): Cookie headers split into their pairs, the other forwardable headers
    with repeats joined by "," as Function URLs do."""
    dropped = hop_by_hop_names(headers)
    cookies: list[str] = []
    joined: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.lower()
        if name in dropped:
            continue
        value = raw_value.decode("latin-1")
        if name == b"cookie":
            cookies.extend(_split_cookie_header(value))
            continue
        key = name.decode("latin-1")
        earlier = joined.get(key)
        joined[key] = value if earlier is None else f"{earlier},{value}"
    return cookies, joined


def _split_cookie_header(value: str) -> list[str]:
    # Browsers separate pairs with "; "; splitting on ";" alone also takes "a=1;b=2", and a
    # cookie value cannot hold ";" (RFC 6265 cookie-octet), so nothing is cut in two.
    return [pair for pair in (part.strip(" \t") for part in value.split(";")) if pair]


def _query_parameters(query: str) -> dict[str, str]:
    """URL-decoded parameters ("+" is a space, bad UTF-8 becomes U+FFFD), repeats joined by ","."""
    parameters: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, errors="replace"):
        earlier = parameters.get(key)
        parameters[key] = value if earlier is None else f"{earlier},{value}"
    return parameters


def _strip_port(host: str) -> str:
    """The host name of a Host header value: "example.com:8080" -> "example.com", "[::1]:80" ->
    "[::1]"."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.partition(":")[0]


def _add_body(event: dict[str, Any], body: bytes) -> None:
    """Text bodies go as they are; anything not valid UTF-8 goes base64-encoded."""
    if not body:
        event["isBase64Encoded"] = False
        return
    try:
        event["body"] = body.decode("utf-8")
        event["isBase64Encoded"] = False
    except UnicodeDecodeError:
        event["body"] = base64.b64encode(body).decode("ascii")
        event["isBase64Encoded"] = True
