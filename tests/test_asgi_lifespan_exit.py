"""The ASGI adapter's lifespan shutdown runs when the runtime's process exits normally.

A Python process (as a runtime would be) invokes the handler once against a recording callback
server, then exits; the app's lifespan writes each message it got to stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from harness import ROOT
from test_callback_helper import CallbackRecorder

pytestmark = pytest.mark.daemon  # starts a Python subprocess

RUNTIME = textwrap.dedent(
    """
    import json, sys
    from sssrd.callback import asgi

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                print(message["type"], flush=True)
                kind = message["type"].rpartition(".")[2]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    handler = asgi.handler(app)
    handler(json.loads(sys.argv[1]), None)
    print("handler returned", flush=True)
    """
)


def test_lifespan_startup_runs_at_the_first_invocation_and_shutdown_at_exit():
    with CallbackRecorder() as server:
        finished = subprocess.run(
            [sys.executable, "-c", RUNTIME, json.dumps(server.event())],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert server.all_chunks()[1:] == [b"served"]
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.splitlines() == [
        "lifespan.startup",
        "handler returned",
        "lifespan.shutdown",
    ]
