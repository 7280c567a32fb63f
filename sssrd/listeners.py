"""Listening sockets and their accept loop, shared by a single daemon (server.py) and a supervisor.

Both bind with SO_REUSEADDR (a restart must not wait out TIME_WAIT), the configured backlog and
non-blocking, and name the listener in the error a failed bind raises, so the startup message
says which listener and address could not be had. `accept_forever` is the one accept loop: each
accepted socket becomes a Connection served by its own task (kept in the listener's set until it
ends, so a drain can cancel it); an accept that fails (EMFILE and friends) pauses, never spins;
a connection that fails is logged with its listener and peer, and its socket is always closed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import h11
from prometheus_client import Counter

from sssrd import logs
from sssrd.config import Address
from sssrd.connection import INCOMPLETE_EVENT_CEILING, Connection

# After accept() fails (EMFILE and friends) a listener pauses this long instead of spinning.
ACCEPT_ERROR_PAUSE = 0.1
Serve = Callable[[Connection], Awaitable[None]]


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


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return str(Address(host, port))


async def accept_forever(
    name: str,
    listener: socket.socket,
    serve: Serve,
    connections: set[asyncio.Task[None]],
    accepted: Counter,
) -> None:
    """Accept on `listener` until cancelled; `serve(conn)` runs in a task held in `connections`."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            sock, _ = await loop.sock_accept(listener)
        except OSError as exc:  # EMFILE and friends: keep serving what we have
            logs.log.error("accept failed", extra={"listener": name, "error": str(exc)})
            await asyncio.sleep(ACCEPT_ERROR_PAUSE)
            continue
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=INCOMPLETE_EVENT_CEILING)
        conn = Connection(loop, sock, parser)
        accepted.inc()
        task = loop.create_task(serve_one(name, serve, conn))
        connections.add(task)
        task.add_done_callback(connections.discard)


async def serve_one(name: str, serve: Serve, conn: Connection) -> None:
    try:
        await serve(conn)
    except asyncio.CancelledError:
        raise
    except Exception:
        logs.log.exception("connection failed", extra={"listener": name, "peer": conn.peer})
    finally:
        conn.close()
