"""Header rules shared by the listeners, the event builder and the callback prelude parser.

Which headers belong to one hop only (never forwarded), which ones frame a message (sssrd owns
them), what a valid field name and field value are (RFC 9110 section 5), how a header is looked
up in h11's list of (lower-case name, value) pairs, and how an untrusted one is quoted in an
error message. Checks are single
precompiled regular-expression matches, since they run for every header of every request.
"""

import re
from collections.abc import Iterable

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

FRAMING: frozenset[bytes] = frozenset({b"content-length", b"transfer-encoding"})

# tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
#         / DIGIT / ALPHA
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# field-value = *field-content; field-content = field-vchar [ 1*( SP / HTAB / field-vchar )
# field-vchar ]; field-vchar = VCHAR / obs-text. So: no CTL but HTAB, and no whitespace at
# either end (whitespace there is optional whitespace around the value, not part of it).
_FIELD_VALUE = re.compile(rb"(?:[!-~\x80-\xff](?:[\t -~\x80-\xff]*[!-~\x80-\xff])?)?")

# Host = uri-host [ ":" port ] (RFC 9112 section 3.2, RFC 3986 section 3.2.2): an IP literal in
# brackets or a reg-name of unreserved, percent-encoded and sub-delim characters.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")

_CONNECTION_SEPARATOR = re.compile(rb"[ \t]*,[ \t]*")


def is_token(name: bytes) -> bool:
    """True if `name` is an RFC 9110 token, the grammar of a header field name."""
    return _TOKEN.fullmatch(name) is not None


def is_field_value(value: bytes) -> bool:
    """True if `value` is an RFC 9110 field value: printable ASCII, HTAB, SP and obs-text only
    (no CR, LF, NUL or other control byte), with no whitespace at either end. Such a value can
    be sent by h11 unchanged and cannot split a message."""
    return _FIELD_VALUE.fullmatch(value) is not None


def is_host(value: bytes) -> bool:
    """True if `value` is host[:port] (possibly empty), the grammar of a Host header."""
    return _HOST.fullmatch(value) is not None


def first_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the first `name` header (h11 gives names in lower case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def preview(raw: bytes) -> str:
    """A short printable rendering of untrusted bytes for an error message."""
    shown = ascii(raw[:64])
    return shown if len(raw) <= 64 else f"{shown}..."


def hop_by_hop_names(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The lower-case names not to forward: the fixed hop-by-hop set plus every token that a
    Connection header of `headers` lists (RFC 9110 section 7.6.1)."""
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(token.lower() for token in _CONNECTION_SEPARATOR.split(value.strip()))
    named.discard(b"")
    return HOP_BY_HOP | named if named else HOP_BY_HOP
