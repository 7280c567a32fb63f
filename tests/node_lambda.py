"""The Node side of the browser tests: a Node handler behind the real daemon, and its data.

`NodeLambda` runs node/invoke-target.js (a local Lambda Invoke API that runs a Node handler in
its process) and reads its JSON lines, so a test can wait for a handler to settle. `HeldData`
is the slow backend a render fetches from: each request is held until the test releases it,
and a request the client abandons first is recorded as cancelled.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

from harness import ROOT, WAIT, stop_process

from sssrd.testing.fake_lambda import DEFAULT_ACCESS_KEY, DEFAULT_REGION, DEFAULT_SECRET_KEY

INVOKE_TARGET = ROOT / "node" / "invoke-target.js"
CREDENTIALS = {  # what the daemon signs with; the Node target does not check signatures
    "AWS_ACCESS_KEY_ID": DEFAULT_ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": DEFAULT_SECRET_KEY,
    "AWS_DEFAULT_REGION": DEFAULT_REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
HELD_FEATURED = {"title": "Featured", "text": "Released by the test."}  # the React example's data


class NodeLambda:
    """node invoke-target.js --handler FILE:EXPORT, on an ephemeral port."""

    def __init__(self, handler: Path, export: str = "handler", **env: str) -> None:
        self.process = subprocess.Popen(
            ["node", str(INVOKE_TARGET), "--handler", f"{handler}:{export}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", **env},
            cwd=ROOT,
        )
        self.lines: list[dict[str, Any]] = []
        self.condition = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.endpoint_url = self.wait_line(lambda line: line["type"] == "listening")["endpointUrl"]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self.condition:
                self.lines.append(json.loads(raw))
                self.condition.notify_all()

    def wait_line(self, match: Any, timeout: float = WAIT) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((line for line in self.lines if match(line)), None)

        with self.condition:
            if not self.condition.wait_for(lambda: find() is not None, timeout):
                raise AssertionError(f"no matching line from the Node target: {self.lines}")
            return find()  # type: ignore[return-value]

    def settled(self, sssrd_request_id: str) -> dict[str, Any]:
        """The settle line of the invocation for sssrd's request id."""
        invoked = self.wait_line(
            lambda line: line["type"] == "invoked" and line["sssrdRequestId"] == sssrd_request_id
        )
        return self.wait_line(
            lambda line: line["type"] == "settled" and line["requestId"] == invoked["requestId"]
        )

    def daemon_args(self) -> tuple[str, ...]:
        return ("--invoker=lambda", "--function=render", f"--endpoint-url={self.endpoint_url}")

    def stop(self) -> str:
        stop_process(self.process)
        assert self.process.stderr is not None
        return self.process.stderr.read().decode(errors="replace")


class HeldData:
    """An HTTP server whose responses each wait for release(); it notes abandoned requests."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = json.dumps(body).encode()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/featured"
        self.requested = 0
        self.outcomes: dict[int, str] = {}  # request number -> "answered" | "cancelled"
        self.held: list[socket.socket] = []  # one wake-up socket per request being held
        self.condition = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        wake, waker = socket.socketpair()
        with conn, wake, waker:
            conn.recv(65536)  # the request head (a GET, no body)
            with self.condition:
                self.requested += 1
                number = self.requested
                self.held.append(waker)
                self.condition.notify_all()
            readable, _, _ = select.select([conn, wake], [], [], WAIT)
            if wake in readable:
                head = (
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(self.body)}\r\nconnection: close\r\n\r\n"
                )
                conn.sendall(head.encode() + self.body)
                outcome = "answered"
            elif conn in readable:
                outcome = "cancelled"  # the client closed first: its fetch was aborted
            else:
                outcome = "never released"
            with self.condition:
                self.outcomes[number] = outcome
                self.condition.notify_all()

    def wait_requested(self, count: int) -> None:
        """Until `count` requests have arrived in all."""
        with self.condition:
            assert self.condition.wait_for(lambda: self.requested >= count, WAIT), "no request"

    def outcome(self, number: int) -> str:
        """How request `number` (1-based) ended, waiting for it."""
        with self.condition:
            assert self.condition.wait_for(lambda: number in self.outcomes, WAIT), self.outcomes
            return self.outcomes[number]

    def release(self) -> None:
        """Answer every request held now."""
        with self.condition:
            for waker in self.held:
                with contextlib.suppress(OSError):
                    waker.send(b"x")
            self.held.clear()

    def close(self) -> None:
        self.listener.close()
