"""Turns the start of a callback into the response head sent to the viewer.

Two formats: AWS's streaming format (a JSON prelude, 8 NUL bytes, then the body), read by
PreludeReader, which is fed bytes as they arrive and searches each byte once (keeping the last 7
for a separator that straddles two feeds), so its work is linear and its buffer bounded; and the
plain format, whose head is the X-Status-Code and Content-Type headers (plain_head). Every
header is validated here, and hop-by-hop and framing headers dropped, because sssrd owns framing.
"""

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sssrd.headers import FRAMING, hop_by_hop_names, is_field_value, is_token, preview

PRELUDE_CONTENT_TYPE = b"application/vnd.awslambda.http-integration-response"
SEPARATOR = b"\0" * 8
DEFAULT_MAX_BYTES = 65536

_PLAIN_STATUS = re.compile(rb"[2-5][0-9][0-9]")
_OPTIONAL_WHITESPACE = " \t"


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """Status and headers ready for h11.Response; `dropped` names the headers removed because
    they were hop-by-hop or framing (for the log)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    dropped: tuple[bytes, ...] = ()


class PreludeError(ValueError):
    """The callback's head is malformed; the message is safe to return to the Lambda."""


class PreludeReader:
    """Incremental: feed() bytes as they arrive until it returns the head."""

    __slots__ = ("_buffer", "_finished", "_window")

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._buffer = bytearray()
        self._finished = False
        # The separator must end within this many bytes, or the prelude is over max_bytes.
        self._window = max_bytes + len(SEPARATOR)

    def feed(self, data: bytes) -> tuple[ResponseHead, bytes] | None:
        """None while the separator has not been seen; then (head, body bytes after it).
        PreludeError if the prelude is invalid or cannot fit max_bytes."""
        if self._finished:
            raise RuntimeError("PreludeReader.feed() called after it returned or raised")
        start = max(0, len(self._buffer) - (len(SEPARATOR) - 1))
        if self._buffer:
            self._buffer += data
            seen: bytes | bytearray = self._buffer
        else:
            seen = data  # the usual case, whole prelude in one read: no copy into the buffer
        at = seen.find(SEPARATOR, start, self._window)
        if at == -1:
            if len(seen) >= self._window:
                self._finished = True
                raise PreludeError(
                    f"no 8-NUL separator within {self._window - len(SEPARATOR)} bytes of prelude"
                )
            if seen is data:
                self._buffer += data
            return None
        self._finished = True
        self._buffer = bytearray()
        return parse_prelude(bytes(seen[:at])), bytes(seen[at + len(SEPARATOR) :])


def parse_prelude(raw: bytes) -> ResponseHead:
    """The head described by a JSON prelude (the bytes before the separator)."""
    fields = _load_object(raw)
    status = _prelude_status(fields.get("statusCode"))
    headers = _prelude_headers(fields.get("headers"))
    headers.extend(_prelude_cookies(fields.get("cookies")))
    return _without_hop_by_hop(status, headers)


def plain_head(status_header: bytes | None, content_type: bytes | None) -> ResponseHead:
    """The head of a plain-format callback: status from X-Status-Code (three digits, 200 to
    599; 200 when absent), the callback's Content-Type passed through when present."""
    status = 200
    if status_header is not None:
        if _PLAIN_STATUS.fullmatch(status_header) is None:
            raise PreludeError(
                f"X-Status-Code {preview(status_header)} is not a status from 200 to 599"
            )
        status = int(status_header)
    headers: list[tuple[bytes, bytes]] = []
    if content_type is not None:
        value = content_type.strip(_OPTIONAL_WHITESPACE.encode())
        if not is_field_value(value):
            raise PreludeError("Content-Type has a control character (CR, LF, NUL or other)")
        headers.append((b"content-type", value))
    return ResponseHead(status, headers)


def _load_object(raw: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise PreludeError("prelude JSON nests too deeply") from None
    except json.JSONDecodeError as error:
        raise PreludeError(f"prelude is not valid JSON: {error.msg} at {error.pos}") from None
    except ValueError:  # not UTF-8, a number over the digit limit, NaN or Infinity
        raise PreludeError("prelude is not valid UTF-8 JSON") from None
    if not isinstance(fields, dict):
        raise PreludeError("prelude must be a JSON object")
    return fields


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _prelude_status(value: object) -> int:
    if value is None:
        return 200
    # bool is a subclass of int, and true is not a status.
    if type(value) is not int:
        raise PreludeError(f"statusCode must be an integer, not {_json_type(value)}")
    if not 200 <= value <= 599:
        raise PreludeError(f"statusCode {value} is not a final status (200 to 599)")
    return value


def _prelude_headers(value: object) -> list[tuple[bytes, bytes]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise PreludeError(f"headers must be an object, not {_json_type(value)}")
    headers: list[tuple[bytes, bytes]] = []
    for name, values in value.items():
        encoded_name = _header_name(name)
        for item in values if isinstance(values, list) else [values]:
            headers.append((encoded_name, _header_value(encoded_name, item)))
    return headers


def _prelude_cookies(value: object) -> list[tuple[bytes, bytes]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PreludeError(f"cookies must be a list of strings, not {_json_type(value)}")
    return [(b"set-cookie", _header_value(b"set-cookie", cookie)) for cookie in value]


def _header_name(name: str) -> bytes:
    encoded = name.encode("utf-8", "replace")
    if not name.isascii() or not is_token(encoded):
        raise PreludeError(f"header name {preview(encoded)} is not a token")
    return encoded.lower()


def _header_value(name: bytes, value: object) -> bytes:
    shown = name.decode("ascii")
    if not isinstance(value, str):
        raise PreludeError(f"header {shown}: value must be a string, not {_json_type(value)}")
    try:
        encoded = value.strip(_OPTIONAL_WHITESPACE).encode("latin-1")
    except UnicodeEncodeError:
        raise PreludeError(f"header {shown}: value has a character beyond U+00FF") from None
    if not is_field_value(encoded):
        raise PreludeError(f"header {shown}: value has a control character (CR, LF, NUL or other)")
    return encoded


def _without_hop_by_hop(status: int, headers: list[tuple[bytes, bytes]]) -> ResponseHead:
    unwanted = hop_by_hop_names(headers) | FRAMING
    kept = [(name, value) for name, value in headers if name not in unwanted]
    dropped = _unique(name for name, _ in headers if name in unwanted)
    return ResponseHead(status, kept, dropped)


def _unique(names: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(dict.fromkeys(names))


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    return "null" if value is None else names.get(type(value), "object")
