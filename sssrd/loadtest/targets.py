"""What to request: one origin, and the request bytes for the n-th request (sans-I/O).

A target is a URL, a URL template or a list of URLs, all on one origin (scheme, host, port), so
every connection can carry any request. A template may hold `{n}` (the request's sequence
number) and `{rand:LO-HI}` (a uniformly random integer); each request's bytes are built from a
pre-encoded head suffix (Host, the caller's headers, Content-Length), so building one is a few
byte joins.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

PLACEHOLDER = re.compile(r"\{(n|rand:(\d+)-(\d+))\}")
TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
DEFAULT_PORTS = {"http": 80, "https": 443}


class TargetError(ValueError):
    """A URL, header or template that cannot be used; the message names it."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"


def split_url(url: str) -> tuple[Origin, str]:
    """The origin and the request target (path and query) of an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise TargetError(f"not an http:// or https:// URL: {url!r}")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as error:
        raise TargetError(f"bad port in {url!r}") from error
    path = parts.path or "/"
    if any(ord(c) <= 32 or ord(c) == 127 for c in path + parts.query):
        raise TargetError(f"spaces or control characters in {url!r}")
    target = path + (f"?{parts.query}" if parts.query else "")
    return Origin(parts.scheme, parts.hostname, port), target


def parse_header(text: str) -> tuple[str, str]:
    """`Name: value` from the command line, checked so it cannot split the request head."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not TOKEN.match(name):
        raise TargetError(f"not a header (Name: value): {text!r}")
    if any(c in value for c in "\r\n\0"):
        raise TargetError(f"control characters in header {name!r}")
    return name, value


class Requests:
    """Builds the bytes of request n: method, a target from the list (cycled) or template."""

    def __init__(
        self,
        urls: Sequence[str],
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        seed: int | None = None,
    ) -> None:
        if not urls:
            raise TargetError("no URL given")
        if not TOKEN.match(method):
            raise TargetError(f"not a method: {method!r}")
        split = [split_url(url) for url in urls]
        self.origin = split[0][0]
        if any(origin != self.origin for origin, _ in split):
            raise TargetError("every URL must share one scheme, host and port")
        self.method = method.upper()
        self.head_only = self.method == "HEAD"
        self._templates = [self._template_of(url) for url in urls]
        self._random = random.Random(seed)
        names = {name.lower() for name, _ in headers}
        lines = [] if "host" in names else [f"Host: {self.origin.authority}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        if "user-agent" not in names:
            lines.append("User-Agent: sssrd-loadtest")
        self._prefix = self.method.encode() + b" "
        self._suffix = (
            (" HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines)).encode("latin-1")
            + b"\r\n"
            + body
        )

    @staticmethod
    def _template_of(url: str) -> list[str | tuple[int, int] | None]:
        """The URL's request target cut at its placeholders: text, None for {n}, (lo, hi)."""
        target = split_url(url)[1]
        pieces: list[str | tuple[int, int] | None] = []
        position = 0
        for match in PLACEHOLDER.finditer(target):
            pieces.append(target[position : match.start()])
            if match.group(1) == "n":
                pieces.append(None)
            else:
                low, high = int(match.group(2)), int(match.group(3))
                if low > high:
                    raise TargetError(f"empty range in {match.group(0)}")
                pieces.append((low, high))
            position = match.end()
        pieces.append(target[position:])
        return pieces

    def target(self, n: int) -> str:
        """The request target (path and query) of request n."""
        pieces = self._templates[n % len(self._templates)]
        if len(pieces) == 1 and isinstance(pieces[0], str):
            return pieces[0]
        out = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
            elif piece is None:
                out.append(str(n))
            else:
                out.append(str(self._random.randint(*piece)))
        return "".join(out)

    def encode(self, n: int) -> bytes:
        """The whole request n, ready to write."""
        return self._prefix + self.target(n).encode("latin-1") + self._suffix
