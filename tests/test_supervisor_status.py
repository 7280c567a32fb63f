"""The supervisor's STATUS= line, from its workers' heartbeats (no worker process needed)."""

import asyncio
import socket

from sssrd.config import load_settings
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
