"""systemd integration without libsystemd: readiness notification, watchdog, socket activation.

Each function reads what systemd put in the environment and pops it, so child processes never
act on variables meant for this one. Notifications are single datagrams on an AF_UNIX socket
("@name" is the abstract namespace); listen_fds wraps the inherited descriptors 3, 4, ... as
socket objects grouped by their FileDescriptorName.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, MutableMapping

__all__ = [
    "SD_LISTEN_FDS_START",
    "STATUS_INTERVAL",
    "Notifier",
    "Pings",
    "listen_fds",
    "watchdog_interval",
]

SD_LISTEN_FDS_START = 3
STATUS_INTERVAL = 5.0  # seconds between STATUS= updates while serving
UNKNOWN_FD_NAME = "unknown"

log = logging.getLogger("sssrd")


class Notifier:
    """Sends sd_notify(3) messages to the service manager; a no-op when there is none."""

    def __init__(self, address: str | None = None) -> None:
        """`address` is NOTIFY_SOCKET's value: a path, or "@name" for the abstract namespace."""
        self._address = _socket_address(address)
        self._socket: socket.socket | None = None
        if self._address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        """Build from NOTIFY_SOCKET, removing it from environ (children must not inherit it)."""
        return cls(environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, **fields: str | int) -> None:
        """Send the fields as one "KEY=value" datagram; a failed send is logged, not raised."""
        if self._socket is None or self._address is None:
            return
        message = _encode_fields(fields)
        try:
            self._socket.sendto(message, self._address)
        except OSError as error:
            # systemd may be restarting or the unit may not be Type=notify; the daemon's own
            # work must not depend on the service manager hearing us.
            log.debug("systemd notify to %r failed: %s", self._address, error)

    def ready(self, status: str | None = None) -> None:
        if status is None:
            self.notify(READY=1)
        else:
            self.notify(READY=1, STATUS=status)

    def reloading(self) -> None:
        # Type=notify-reload wants the CLOCK_MONOTONIC time of the reload request.
        self.notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        self.notify(STOPPING=1)

    def status(self, text: str) -> None:
        self.notify(STATUS=text)

    def watchdog(self) -> None:
        self.notify(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more before the start/stop timeout fires (counted from now)."""
        if seconds <= 0:
            raise ValueError(f"extend_timeout needs a positive number of seconds, not {seconds!r}")
        self.notify(EXTEND_TIMEOUT_USEC=round(seconds * 1_000_000))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(address: str | None) -> str | None:
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    # vsock: addresses (VMs) have no AF_VSOCK datagram path here; run without notifications.
    log.debug("NOTIFY_SOCKET %r is not a unix socket path; systemd notifications disabled", address)
    return None


def _encode_fields(fields: dict[str, str | int]) -> bytes:
    lines = []
    for key, value in fields.items():
        text = str(value)
        if "\n" in text:
            raise ValueError(f"systemd notify field {key} must be one line, got {text!r}")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode("utf-8")


class Pings:
    """STATUS= every STATUS_INTERVAL (when someone listens) and WATCHDOG=1 every `watchdog`
    seconds, on the event loop's own timers: a stuck loop stops the pings, which is the point."""

    def __init__(
        self, notifier: Notifier, status: Callable[[], str], watchdog: float | None
    ) -> None:
        self.notifier = notifier
        self.status = status
        self.watchdog = watchdog
        self.timers: list[asyncio.TimerHandle | None] = [None, None]

    def start(self) -> None:
        self.ping_status()
        self.ping_watchdog()

    def ping_status(self) -> None:
        if self.notifier.enabled:
            self.notifier.status(self.status())
            loop = asyncio.get_running_loop()
            self.timers[0] = loop.call_later(STATUS_INTERVAL, self.ping_status)

    def ping_watchdog(self) -> None:
        if self.watchdog is not None:
            self.notifier.watchdog()
            loop = asyncio.get_running_loop()
            self.timers[1] = loop.call_later(self.watchdog, self.ping_watchdog)

    def stop(self) -> None:
        for timer in self.timers:
            if timer is not None:
                timer.cancel()


def watchdog_interval(environ: MutableMapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if no watchdog is set.

    WATCHDOG_USEC and WATCHDOG_PID are removed from environ either way.
    """
    usec_text = environ.pop("WATCHDOG_USEC", None)
    pid_text = environ.pop("WATCHDOG_PID", None)
    if usec_text is None:
        return None
    if pid_text is not None and _parse_int("WATCHDOG_PID", pid_text) != os.getpid():
        return None
    usec = _parse_int("WATCHDOG_USEC", usec_text)
    if usec <= 0:
        raise ValueError(f"WATCHDOG_USEC must be positive, got {usec_text!r}")
    # Pinging at half the timeout leaves a whole interval of slack for a busy event loop.
    return usec / 2_000_000


def listen_fds(environ: MutableMapping[str, str] = os.environ) -> dict[str, list[socket.socket]]:
    """Sockets passed by systemd socket activation, by FileDescriptorName (in fd order).

    Returns {} when the variables are absent or meant for another process. LISTEN_PID,
    LISTEN_FDS and LISTEN_FDNAMES are removed from environ either way.
    """
    pid_text = environ.pop("LISTEN_PID", None)
    count_text = environ.pop("LISTEN_FDS", None)
    names_text = environ.pop("LISTEN_FDNAMES", None)
    if pid_text is None or count_text is None:
        return {}
    if _parse_int("LISTEN_PID", pid_text) != os.getpid():
        return {}
    count = _parse_int("LISTEN_FDS", count_text)
    names = _fd_names(names_text, count)
    sockets: dict[str, list[socket.socket]] = {}
    for offset, name in enumerate(names):
        fd = SD_LISTEN_FDS_START + offset
        sockets.setdefault(name, []).append(_adopt_socket(fd, name))
    return sockets


def _fd_names(names_text: str | None, count: int) -> list[str]:
    if names_text is None:
        return [UNKNOWN_FD_NAME] * count
    names = names_text.split(":") if names_text else []
    if len(names) != count:
        raise ValueError(
            f"LISTEN_FDNAMES names {len(names)} descriptors but LISTEN_FDS is {count}: "
            f"{names_text!r}"
        )
    return [name or UNKNOWN_FD_NAME for name in names]


def _adopt_socket(fd: int, name: str) -> socket.socket:
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        # Inherited descriptors arrive without close-on-exec; our children must not hold them.
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        return socket.socket(fileno=fd)
    except OSError as error:
        raise ValueError(
            f"systemd passed fd {fd} ({name!r}) but it is not a usable socket: {error}"
        ) from error


def _parse_int(variable: str, text: str) -> int:
    # Stricter than int(): no sign, spaces or underscores, as systemd never writes them.
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{variable} must be a non-negative decimal integer, got {text!r}")
    return int(text)
