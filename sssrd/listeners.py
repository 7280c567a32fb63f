"""Listening sockets: bound the same way by a single daemon (server.py) and a supervisor.

Both bind with SO_REUSEADDR (a restart must not wait out TIME_WAIT), the configured backlog and
non-blocking, and name the listener in the error a failed bind raises, so the startup message
says which listener and address could not be had.
"""

from __future__ import annotations

import socket

from sssrd.config import Address

# After accept() fails (EMFILE and friends) a listener pauses this long instead of spinning.
ACCEPT_ERROR_PAUSE = 0.1


def bind_listener(address: Address, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_named(name: str, address: Address, backlog: int) -> socket.socket:
    """bind_listener, its error naming the listener (the startup message says which failed)."""
    try:
        return bind_listener(address, backlog)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {address} ({name}): {exc.strerror}") from None
