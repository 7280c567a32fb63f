"""The loop every listener runs on each connection it accepts, with hooks for what differs.

A ServedConnection is handed the ServerState and one Connection. `run()` reads a head (a refused
one is answered by `refuse_head`), lets `handle` serve the request, starts the next cycle while
both sides allow it (h11 says whether they do: an answer that said close, or a body left unread,
ends the connection), and ends the connection so that the peer reads the last answer (after a
refused head, always by a lingering close).
"""

from __future__ import annotations

import h11

from sssrd.connection import BadHead, Connection, canned_response
from sssrd.state import ServerState


class ServedConnection:
    """A listener's per-connection handler: the state it is handed and its connection."""

    def __init__(self, state: ServerState, conn: Connection) -> None:
        self.state = state
        self.conn = conn

    async def run(self) -> None:
        conn = self.conn
        while True:
            try:
                request = await conn.next_request(self.state.current_settings)
            except BadHead as bad:
                await self.refuse_head(bad)
                # Even a peer that has sent nothing yet (408) may be about to: it reads why.
                await conn.linger_close()
                return
            if request is None:
                break
            await self.handle(request)
            if not conn.next_cycle():
                break
        await conn.end()

    async def handle(self, request: h11.Request) -> None:
        """Serve one request."""
        raise NotImplementedError

    async def refuse_head(self, bad: BadHead) -> None:
        """Answer a refused head (the connection then ends)."""
        await self.conn.send_quietly(
            canned_response(bad.status, f"{bad}\n".encode(), b"text/plain; charset=utf-8")
        )
