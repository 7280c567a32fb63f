"""The supervisor's STATUS= line, from its workers' heartbeats (no worker process needed)."""

import asyncio
import socket

from sssrd.channel import ChannelNotifier
from sssrd.config import load_settings
from sssrd.systemd import Pings
from sssrd.workers import Supervisor, Worker


def test_status_sums_the_last_heartbeats_of_listening_workers_only():
    async def scenario():
        settings = load_settings(
            None, environ={}, defaults={"invoker": "local", "callback_url": "http://127.0.0.1:9"}
        )
        supervisor = Supervisor(settings)
        pairs = [socket.socketpair() for _ in range(3)]
        try:
            counts = {"streaming": 2, "awaiting": 1, "viewers": 5}
            supervisor.workers = [
                Worker(0, pairs[0][0], listening=True, counts=counts),
                Worker(1, pairs[1][0], listening=True, counts={**counts, "streaming": 3}),
                Worker(2, pairs[2][0], listening=False, counts=counts),  # gone: not counted
            ]
            serving = supervisor.status_text()
            supervisor.draining = True
            draining = supervisor.status_text()
        finally:
            for pair in pairs:
                for sock in pair:
                    sock.close()
        assert serving == (
            "serving: 2/3 workers, 5 streaming, 2 awaiting callback, 10 viewer connections"
        )
        assert draining.startswith("draining: 2/3 workers")

    asyncio.run(scenario())


def test_a_worker_sends_no_periodic_status_up_its_channel_but_still_its_ready():
    """The supervisor builds STATUS= from heartbeats: a worker's own would be read by nobody."""

    async def scenario():
        ours, theirs = socket.socketpair()
        _, writer = await asyncio.open_connection(sock=ours)
        notifier = ChannelNotifier(writer)
        pings = Pings(notifier, lambda: "1 streaming", None)
        try:
            pings.start()
            notifier.ready("1 streaming")
            await writer.drain()
            theirs.setblocking(False)
            sent = theirs.recv(65536)
        finally:
            pings.stop()
            writer.close()
            theirs.close()
        return sent

    sent = asyncio.run(scenario())
    assert sent.count(b'"notify"') == 1 and b'"READY":"1"' in sent
