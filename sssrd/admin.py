"""The admin listener: Prometheus `/metrics` and `/healthz`, served on sssrd's own event loop.

Kept off the viewer listener so that metrics are reachable only where the operator binds them
(127.0.0.1 by default) and a scrape never competes with viewer traffic for a connection slot.
An admin connection sees the daemon through an AdminView only: the settings in force, the
metrics page, and why health is failing. A single daemon (server.py) and a supervisor
(workers.py) each build one; neither hands a connection itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11

from sssrd.config import Settings
from sssrd.connection import Connection, complete_response
from sssrd.headers import first_header
from sssrd.served import ServedConnection

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class AdminView:
    """What the admin listener may see of the daemon."""

    settings: Callable[[], Settings]  # the settings in force (head limits, timeouts)
    exposition: Callable[[str], Awaitable[tuple[bytes, Headers]]]  # Accept-Encoding -> page
    trouble: Callable[[], str]  # why /healthz says 503 ("" when healthy)


class AdminConnection(ServedConnection):
    """Serves one admin connection: GET /metrics, GET /healthz, 404 otherwise."""

    def __init__(self, view: AdminView, conn: Connection) -> None:
        super().__init__(view.settings, conn)
        self.view = view

    async def handle(self, request: h11.Request) -> None:
        conn = self.conn
        try:
            with conn.deadline_in(self.view.settings().head_timeout):
                while not isinstance(await conn.next_event(), h11.EndOfMessage):
                    pass  # scrapes carry no body; whatever there is, is read and dropped
        except (TimeoutError, h11.RemoteProtocolError):
            return  # unanswered: the connection ends (h11 will not start another cycle)
        await self.answer(request)

    async def answer(self, request: h11.Request) -> None:
        path = request.target.split(b"?", 1)[0]
        headers: Headers
        if request.method not in (b"GET", b"HEAD"):
            status, body, headers = 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")]
        elif path == b"/metrics":
            encoding = (first_header(request.headers, b"accept-encoding") or b"").decode("latin-1")
            body, headers = await self.view.exposition(encoding)
            status = 200
        elif path == b"/healthz":
            trouble = self.view.trouble()
            status = 503 if trouble else 200
            body, headers = f"{trouble or 'ok'}\n".encode(), []
        else:
            status, body, headers = 404, b"not found\n", []
        if not any(name.lower() == b"content-type" for name, _ in headers):
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        head_request = request.method == b"HEAD"
        await self.conn.send(*complete_response(status, body, headers, head_request))
