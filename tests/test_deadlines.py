"""Scoped deadlines: `with conn.deadline_in(s):` bounds the waits inside and ends with its block."""

import asyncio

import pytest
from inprocess import daemon_side, socket_pair


def test_a_deadline_ends_with_its_block_even_when_it_fired():
    async def scenario():
        peer, ours = socket_pair()
        conn = daemon_side(ours)
        loop = asyncio.get_running_loop()
        try:
            with pytest.raises(TimeoutError), conn.deadline_in(0.02):
                await conn.receive()
            assert conn.deadline is None
            loop.call_later(0.05, peer.send, b"late")  # after the old deadline
            assert await conn.receive() == b"late"
            with conn.deadline_in(0.02), conn.deadline_in(60):  # the earlier one wins
                async with asyncio.timeout(5):  # were it the later, this would cancel the wait
                    with pytest.raises(TimeoutError):
                        await conn.receive()
                assert conn.deadline is not None
            assert conn.deadline is None
        finally:
            conn.close()
            peer.close()

    asyncio.run(scenario())
