"""The Invoke API's pooled client: with RequestResponse each render holds one connection for its
whole life, so a slow exchange must hold only its own connection, and finished ones must be kept
alive for the next invoke. Driven over real loopback sockets against a small asyncio server."""

from __future__ import annotations

import asyncio

from sssrd.httpclient import Pool

BOUND = 10.0  # no wait here may take longer; none should come close


class Server:
    """Answers each request 200 with its target, except /slow, which waits for `release`."""

    def __init__(self) -> None:
        self.connections = 0
        self.release = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while head := await reader.readuntil(b"\r\n\r\n"):
            target = head.split(b" ", 2)[1]
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            if target == b"/slow":
                await self.release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(target), target))
            await writer.drain()


def run(test) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(BOUND):
            await test()

    asyncio.run(bounded())


def test_a_held_exchange_does_not_block_others_and_finished_ones_are_reused():
    async def scenario() -> None:
        server = Server()
        listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        pool = Pool(f"http://127.0.0.1:{port}", max_connections=4, timeout=BOUND)
        headers = [(b"host", pool.authority), (b"content-length", b"0")]
        held = asyncio.create_task(pool.request(b"POST", b"/slow", headers, b""))
        for number in range(3):  # one after another, beside the held one: one more connection
            reply = await pool.request(b"POST", b"/fast%d" % number, headers, b"")
            assert reply.body == b"/fast%d" % number
        assert not held.done()
        server.release.set()
        assert (await held).body == b"/slow"
        assert server.connections == 2
        assert len(pool.idle) == 2  # both kept alive for the next invokes
        pool.close()
        listener.close()

    run(scenario)
