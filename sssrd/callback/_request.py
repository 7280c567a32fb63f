"""The payload-2.0 event as an HTTP request, and a response head as a prelude, for the adapters.

Pure functions shared by the ASGI and WSGI adapters: what the request was (method, paths, query,
headers with the cookies folded back in, body, client, server, scheme) and how a framework's
status and header pairs become the helper's status, headers and cookies.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Request:
    method: str
    raw_path: str  # percent-encoded, as the viewer sent it
    query_string: str
    http_version: str  # "1.1"
    headers: list[tuple[str, str]]  # names lower-case; latin-1 text, as in the event
    body: bytes
    client: tuple[str, int] | None
    server: tuple[str, int]
    scheme: str

    @property
    def path(self) -> str:
        """The decoded path, as ASGI's `path` and WSGI's PATH_INFO (latin-1 of its UTF-8)."""
        return unquote(self.raw_path, encoding="utf-8", errors="surrogateescape")


def request_from_event(event: Mapping[str, Any]) -> Request:
    context = event.get("requestContext") or {}
    http = context.get("http") or {}
    headers = [(name.lower(), str(value)) for name, value in (event.get("headers") or {}).items()]
    cookies = event.get("cookies")
    if cookies:
        headers.append(("cookie", "; ".join(cookies)))
    named = dict(headers)
    scheme = named.get("x-forwarded-proto", "http").split(",")[0].strip().lower()
    if scheme not in DEFAULT_PORTS:
        scheme = "http"
    host, _, port = named.get("host", context.get("domainName", "localhost")).rpartition(":")
    if not host or not port.isdigit():  # no port in the Host header
        host, port = named.get("host", context.get("domainName", "localhost")), ""
    source_ip = http.get("sourceIp")
    return Request(
        method=str(http.get("method", "GET")).upper(),
        raw_path=event.get("rawPath") or http.get("path") or "/",
        query_string=event.get("rawQueryString") or "",
        http_version=str(http.get("protocol", "HTTP/1.1")).partition("/")[2] or "1.1",
        headers=headers,
        body=_body(event),
        client=(source_ip, 0) if source_ip else None,
        server=(host, int(port) if port else DEFAULT_PORTS[scheme]),
        scheme=scheme,
    )


def _body(event: Mapping[str, Any]) -> bytes:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return body.encode("utf-8")


def response_head(
    pairs: Iterable[tuple[str, str]],
) -> tuple[dict[str, str | list[str]], list[str]]:
    """Header pairs as the prelude's headers (repeats become lists) and its cookies."""
    headers: dict[str, str | list[str]] = {}
    cookies: list[str] = []
    for name, value in pairs:
        name = name.lower()
        if name == "set-cookie":
            cookies.append(value)
            continue
        known = headers.get(name)
        if known is None:
            headers[name] = value
        elif isinstance(known, list):
            known.append(value)
        else:
            headers[name] = [known, value]
    return headers, cookies
