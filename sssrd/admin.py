"""The admin listener: Prometheus `/metrics` and `/healthz`, served on sssrd's own event loop.

Kept off the viewer listener so that metrics are reachable only where the operator binds them
(127.0.0.1 by default) and a scrape never competes with viewer traffic for a connection slot.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import h11

from sssrd.connection import Connection, response

if TYPE_CHECKING:
    from sssrd.server import Server


class AdminConnection:
    """Serves one admin connection: GET /metrics, GET /healthz, 404 otherwise."""

    def __init__(self, server: Server, conn: Connection) -> None:
        self.server = server
        self.conn = conn

    async def run(self) -> None:
        settings = self.server.settings
        while True:
            try:
                async with asyncio.timeout(settings.keepalive_timeout):
                    await self.conn.wait_for_data()
                async with asyncio.timeout(settings.head_timeout):
                    request = await self.conn.next_event()
                    if not isinstance(request, h11.Request):
                        return
                    while not isinstance(await self.conn.next_event(), h11.EndOfMessage):
                        pass
            except (TimeoutError, h11.RemoteProtocolError):
                return
            await self.answer(request)
            if self.conn.h11.our_state is not h11.DONE:
                return
            self.conn.h11.start_next_cycle()

    async def answer(self, request: h11.Request) -> None:
        path = request.target.split(b"?", 1)[0]
        headers: list[tuple[bytes, bytes]]
        if request.method not in (b"GET", b"HEAD"):
            status, body, headers = 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")]
        elif path == b"/metrics":
            encoding = dict(request.headers).get(b"accept-encoding", b"").decode("latin-1")
            body, headers = self.server.metrics.exposition(encoding)
            status = 200
        elif path == b"/healthz":
            status = 503 if self.server.draining else 200
            body, headers = (b"draining\n" if status == 503 else b"ok\n"), []
        else:
            status, body, headers = 404, b"not found\n", []
        if not any(name.lower() == b"content-type" for name, _ in headers):
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        headers.append((b"content-length", b"%d" % len(body)))
        await self.conn.send(response(status, headers))
        if request.method != b"HEAD":
            await self.conn.send(h11.Data(data=body))
        await self.conn.send(h11.EndOfMessage())
