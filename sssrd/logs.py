"""Structured logging: every line on stdout is one compact JSON object (journald reads stdout).

Lifecycle and error lines go through the standard `logging` module ("sssrd" logger) with a JSON
formatter, so their level is configurable. Access lines bypass logging (one per request, always
written, built from plain values) and are written whole, one line per write. Both use the same
compact separators, so jq, Loki and the CloudWatch agent read either kind the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from typing import Any, TextIO

log = logging.getLogger("sssrd")
COMPACT = (",", ":")  # one JSON object per line, no padding: journald, jq, Loki, CloudWatch


def utc_timestamp(epoch: float) -> str:
    whole = time.gmtime(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", whole) + f".{int(epoch % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats a LogRecord as one JSON line; `extra={...}` fields become keys."""

    RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def __init__(self, fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.fields = fields or {}  # on every line of this process (a worker's index)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": utc_timestamp(record.created),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
            **self.fields,
        }
        for key, value in vars(record).items():
            if key not in self.RESERVED:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=COMPACT)


def configure(
    level: str, stream: TextIO | None = None, fields: dict[str, Any] | None = None
) -> None:
    """Send the "sssrd" logger's records to stdout as JSON at `level` (re-callable on reload),
    each line carrying `fields` too."""
    stream = stream or sys.stdout
    if hasattr(stream, "reconfigure"):
        stream.reconfigure(line_buffering=True)
    for handler in list(log.handlers):
        log.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(fields))
    log.addHandler(handler)
    set_level(level)
    log.propagate = False


def set_level(level: str) -> None:
    log.setLevel(level.upper())


def write_access(record: dict[str, Any], stream: TextIO | None = None) -> None:
    """One access line; a full stdout (a stuck journald) must not take the daemon down."""
    with contextlib.suppress(OSError, ValueError):
        (stream or sys.stdout).write(json.dumps(record, separators=COMPACT) + "\n")
