"""The admin listener: Prometheus `/metrics` and `/healthz`, served on sssrd's own event loop.

Kept off the viewer listener so that metrics are reachable only where the operator binds them
(127.0.0.1 by default) and a scrape never competes with viewer traffic for a connection slot.
"""

from __future__ import annotations

import h11

from sssrd.connection import complete_response
from sssrd.headers import first_header
from sssrd.served import ServedConnection


class AdminConnection(ServedConnection):
    """Serves one admin connection: GET /metrics, GET /healthz, 404 otherwise."""

    async def handle(self, request: h11.Request) -> None:
        conn = self.conn
        try:
            with conn.deadline_in(self.state.settings.head_timeout):
                while not isinstance(await conn.next_event(), h11.EndOfMessage):
                    pass  # scrapes carry no body; whatever there is, is read and dropped
        except (TimeoutError, h11.RemoteProtocolError):
            return  # unanswered: the connection ends (h11 will not start another cycle)
        await self.answer(request)

    async def exposition(self, accept_encoding: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The /metrics body and its headers: this process's metrics."""
        return self.state.tally.metrics.exposition(accept_encoding)

    def trouble(self) -> str:
        """Why /healthz says 503 ("" when healthy)."""
        return "draining" if self.state.draining else ""

    async def answer(self, request: h11.Request) -> None:
        path = request.target.split(b"?", 1)[0]
        headers: list[tuple[bytes, bytes]]
        if request.method not in (b"GET", b"HEAD"):
            status, body, headers = 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")]
        elif path == b"/metrics":
            encoding = (first_header(request.headers, b"accept-encoding") or b"").decode("latin-1")
            body, headers = await self.exposition(encoding)
            status = 200
        elif path == b"/healthz":
            trouble = self.trouble()
            status = 503 if trouble else 200
            body, headers = f"{trouble or 'ok'}\n".encode(), []
        else:
            status, body, headers = 404, b"not found\n", []
        if not any(name.lower() == b"content-type" for name, _ in headers):
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        head_request = request.method == b"HEAD"
        await self.conn.send(*complete_response(status, body, headers, head_request))
