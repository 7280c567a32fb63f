"""The supervisor ↔ worker channel: length-prefixed JSON messages over one socketpair.

With `workers` > 1 each worker is a child of the supervisor and holds one end of a stream
socketpair. The supervisor's first message is `{"settings": "<Settings.as_toml()>"}`, what the
worker runs; `{"reload": "<as_toml>"}` carries the settings of a reload it accepted. A worker
tells the supervisor what a single-process daemon tells systemd, as
`{"notify": {"READY": "1", ...}}` (READY, RELOADING, STOPPING; no periodic STATUS, which the
supervisor builds from the heartbeats), sends its heartbeat
`{"heartbeat": {"streaming": n, "awaiting": n, "viewers": n}}` every `--heartbeat` seconds,
says `{"listening": {"callback_url": ...}}` once it serves, and answers
every `{"metrics": null}` with `{"metrics": "<its exposition>"}`, in order; one that cannot start
says why, `{"cannot_start": "<one line>"}`, before it exits. Each message is a
4-byte big-endian length and that many bytes of UTF-8 JSON; a length over MAX_MESSAGE ends the
channel (both ends are ours, so that is a bug, never input to tolerate).
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from sssrd.systemd import Notifier

HEADER = struct.Struct("!I")
MAX_MESSAGE = (
    64 * 1024 * 1024
)  # far above any exposition; bounds what a broken peer can make us hold


class ChannelError(Exception):
    """The other end broke the framing."""


def encode(message: dict[str, Any]) -> bytes:
    payload = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(payload)) + payload


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None once the other end has closed."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ChannelError("channel closed inside a message header") from None
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_MESSAGE:
        raise ChannelError(f"message of {length} bytes exceeds {MAX_MESSAGE}")
    try:
        message = json.loads(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ValueError) as exc:
        raise ChannelError(f"unreadable message: {exc}") from None
    if not isinstance(message, dict):
        raise ChannelError("a message must be a JSON object")
    return message


class ChannelNotifier(Notifier):
    """A worker's Notifier: the sd_notify fields go to the supervisor instead of systemd."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        super().__init__(None)
        self.writer = writer

    @property
    def enabled(self) -> bool:
        """False for the status pings: the supervisor builds the daemon's STATUS= from the
        workers' heartbeats, so a worker's own STATUS= would be read by nobody. READY,
        RELOADING and STOPPING still go up the channel (notify() does not ask)."""
        return False

    def notify(self, **fields: str | int) -> None:
        if not self.writer.is_closing():
            self.writer.write(
                encode({"notify": {key: str(value) for key, value in fields.items()}})
            )

    def close(self) -> None:
        self.writer.close()
