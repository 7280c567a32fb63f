"""Test harness: the real daemon in a subprocess, real sockets, and a conductor.

`Daemon` runs `sssrd serve` (local invoker, scenario handlers from tests/scenarios.py) on
ephemeral ports and reads its JSON stdout, so tests can wait for access lines instead of
sleeping. `Conductor` is a TCP rendezvous between a test and the handlers running inside the
daemon: handlers report what happened to them and block until the test releases them, which
makes orderings like "the viewer saw chunk 1 before chunk 2 was written" provable.
`Viewer` is a raw-socket HTTP client (h11 client side) that sees each chunk as it arrives and
tells a complete response from a truncated one.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11

ROOT = Path(__file__).resolve().parent.parent
WAIT = 15.0  # upper bound on any single wait; tests never sleep for a fixed time


def serve_connections(listener: socket.socket, serve: Any) -> None:
    """Accept on `listener` until it closes, each connection served by `serve` in a thread."""

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


class Conductor:
    """Collects reports from handlers and releases handlers waiting on a key."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.reports: list[dict[str, Any]] = []
        self.released: set[str] = set()
        self.waiting: dict[str, list[socket.socket]] = {}
        self.condition = threading.Condition()
        serve_connections(self.listener, self._serve)

    def _serve(self, conn: socket.socket) -> None:
        # A handler's connection may be reset when its daemon stops: that ends it, quietly.
        with contextlib.suppress(ConnectionError), conn, conn.makefile("rb") as lines:
            for line in lines:
                message = json.loads(line)
                with self.condition:
                    if "wait" in message:
                        key = message["wait"]
                        if key in self.released:
                            conn.sendall(b"go\n")
                        else:
                            self.waiting.setdefault(key, []).append(conn)
                    else:
                        self.reports.append(message)
                    self.condition.notify_all()

    def release(self, key: str) -> None:
        with self.condition:
            self.released.add(key)
            for conn in self.waiting.pop(key, []):
                conn.sendall(b"go\n")

    def wait_waiting(self, key: str, timeout: float = WAIT) -> None:
        """Until a handler is blocked on `key`."""
        with self.condition:
            assert self.condition.wait_for(lambda: key in self.waiting, timeout), key

    def report(self, tag: str, kind: str, timeout: float = WAIT) -> dict[str, Any]:
        """The first report with this tag and kind, waiting for it."""

        def find() -> dict[str, Any] | None:
            for item in self.reports:
                if item.get("tag") == tag and item.get("kind") == kind:
                    return item
            return None

        with self.condition:
            assert self.condition.wait_for(lambda: find() is not None, timeout), (
                tag,
                kind,
                self.reports[-5:],
            )
            return find()  # type: ignore[return-value]

    def count(self, tag: str, kind: str) -> int:
        with self.condition:
            return sum(1 for r in self.reports if r.get("tag") == tag and r.get("kind") == kind)

    def close(self) -> None:
        self.listener.close()


class Daemon:
    """`sssrd serve` (or `command`, e.g. dev) in a subprocess on ephemeral 127.0.0.1 ports."""

    # Worker processes unless a test passes --workers=N: the behaviour suites run under 1 and 2
    # (conftest.py sets this per module), so every behaviour meets the supervisor's sockets.
    workers = 1

    def __init__(
        self,
        conductor: Conductor | None = None,
        *args: str,
        command: str = "serve",
        wrapper: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),
        ready: bool = True,
        **env: str,
    ) -> None:
        """`ready=False` returns at once, for tests of what happens while it starts."""
        self.process = subprocess.Popen(
            self.command_line(command, *args, wrapper=wrapper),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.environment(conductor, **env),
            cwd=ROOT,
            pass_fds=pass_fds,
        )
        self.lines: list[dict[str, Any]] = []
        self.raw_lines: list[bytes] = []  # stdout as written, for tests of the log format
        self.scraper: http.client.HTTPConnection | None = None
        self.condition = threading.Condition()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        if ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        listening = self.wait_line(lambda line: line.get("message") == "sssrd listening")
        self.viewer = parse_address(listening["viewer"])
        self.callback = parse_address(listening["callback"])
        self.admin = parse_address(listening["admin"]) if "admin" in listening else None
        self.callback_url = listening["callback_url"]
        self.processes = int(listening.get("workers", 1))  # that serve viewers: 1 or workers

    @classmethod
    def command_line(cls, command: str, *args: str, wrapper: list[str] | None = None) -> list[str]:
        """The daemon's argv: ephemeral 127.0.0.1 ports, the scenario handlers, then `args`."""
        return [
            *(wrapper or []),
            sys.executable,
            "-m",
            "sssrd.cli",
            command,
            "--listen=127.0.0.1:0",
            "--callback-listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
            "--invoker=local",
            "--handler=scenarios:handler",
            f"--workers={cls.workers}",
            *args,
        ]

    @staticmethod
    def environment(conductor: Conductor | None, **env: str) -> dict[str, str]:
        """The daemon's environment: no SSSRD_* of ours, the scenarios importable, `env`."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SSSRD_")}
        environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
        if conductor is not None:
            environ["SCENARIO_CONDUCTOR"] = conductor.address
        environ.update(env)
        return environ

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.raw_lines.append(raw)
            try:
                line = json.loads(raw)
            except ValueError:  # a handler's own print(): not sssrd's, kept for failure output
                line = {"raw": raw.decode(errors="replace")}
            with self.condition:
                self.lines.append(line)
                self.condition.notify_all()
        with self.condition:
            self.lines.append({"message": "<eof>"})
            self.condition.notify_all()

    def wait_line(self, match: Any, timeout: float = WAIT) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((line for line in self.lines if match(line)), None)

        with self.condition:
            found = self.condition.wait_for(
                lambda: find() is not None or any(x.get("message") == "<eof>" for x in self.lines),
                timeout,
            )
            line = find()
        if line is None:
            stderr = self.stop_now() if found else ""
            raise AssertionError(f"no matching line; stdout: {self.lines}; stderr: {stderr}")
        return line

    def serving_lines(self, message: str) -> list[dict[str, Any]]:
        """Lifecycle lines of the processes that serve viewers (a supervisor's have no
        `in_flight`/`abandoned`/`applied`): one per worker, or the single process's."""
        keys = ("in_flight", "abandoned", "applied")
        return [
            line
            for line in list(self.lines)
            if line.get("message") == message and any(key in line for key in keys)
        ]

    def wait_draining(self) -> None:
        """Until every process serving viewers has begun its drain (stopped accepting)."""
        self.wait_line(lambda _line: len(self.serving_lines("draining")) >= self.processes)

    def abandoned(self) -> int:
        """Streams cut by the drain timeout, over every process, once the daemon has exited."""
        self.wait_line(lambda line: line.get("message") == "<eof>")
        return sum(line["abandoned"] for line in self.serving_lines("stopped"))

    def access(self, request_id: str | None = None, path: str | None = None) -> dict[str, Any]:
        """The access line of one request (by id or path), waiting for it."""
        return self.wait_line(
            lambda line: (
                line.get("type") == "access"
                and (request_id is None or line.get("request_id") == request_id)
                and (path is None or line.get("path") == path)
            )
        )

    def uninvoked(self, path: str) -> dict[str, Any]:
        """The access line of the request for `path`, checked to say the daemon never invoked
        for it: its own record of the invoke, unlike a count of the handlers that ran, cannot
        race the invoker's threads (a request invoked and then refused fails this)."""
        access = self.access(path=path)
        assert access["invoke_ms"] is None, access
        return access

    def metric(self, name: str, text: str | None = None, **labels: str) -> float:
        """A sample's value, from a fresh scrape unless `text` is one."""
        text = text if text is not None else http_get(self.admin, "/metrics")[2].decode()
        wanted = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
        )
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if normalise_labels(key) == wanted:
                return float(value)
        raise AssertionError(f"{wanted} not in /metrics")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def connections_open(self) -> dict[str, float]:
        """Open connections by listener, scraped over one kept-alive connection (a fresh one
        per scrape would itself be counted, or not yet closed, at random)."""
        if self.scraper is None:
            self.scraper = http.client.HTTPConnection(*self.admin, timeout=WAIT)
        self.scraper.request("GET", "/metrics")
        text = self.scraper.getresponse().read().decode()
        return {
            name: self.metric("sssrd_connections_open", text, listener=name)
            for name in ("viewer", "callback", "admin")
        }

    def resources(self) -> tuple[int, dict[str, float]]:
        """Open fds (read before the scrape that counts connections) and connections."""
        return self.open_fds(), self.connections_open()

    def settled_resources(self) -> tuple[int, dict[str, float]]:
        """The resources once two readings in a row agree (closes in flight have landed)."""
        previous = self.resources()
        deadline = time.monotonic() + WAIT
        while (current := self.resources()) != previous:
            assert time.monotonic() < deadline, f"resources never settled: {current}"
            previous = current
        return current

    @contextlib.contextmanager
    def back_to_baseline(self) -> Iterator[None]:
        """Asserts that what the block opened (connections on every listener, fds) is closed
        again afterwards: the check every abort storm ends with."""
        baseline = self.settled_resources()
        yield
        wait_for(lambda: self.resources() == baseline, what=f"back to {baseline}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = WAIT) -> int:
        return self.process.wait(timeout)

    def stop_now(self) -> str:
        stop_process(self.process)
        assert self.process.stderr is not None
        return self.process.stderr.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def workers_left(self) -> list[int]:
        """Live processes started as this daemon's workers (a zombie's cmdline is empty)."""
        marker = f"--supervisor-pid={self.process.pid}".encode()
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if marker in cmdline.read().split(b"\0"):
                    left.append(int(pid))
        return left


# Moves the fds named on its command line to 3, 4, ... and execs the daemon after "--", as
# systemd would start it with LISTEN_FDS / LISTEN_FDNAMES.
ADOPT = """
import os, sys
names, rest = sys.argv[1], sys.argv[2:]
split = rest.index("--")
fds, command = [int(fd) for fd in rest[:split]], rest[split + 1 :]
high = [os.dup(fd) + 100 for fd in fds]
for fd, target in zip(fds, high):
    os.dup2(fd, target)
for offset, fd in enumerate(high):
    os.dup2(fd, 3 + offset)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names)
os.execv(command[0], command)
"""


@contextlib.contextmanager
def socket_activation(*names: str) -> Iterator[tuple[list[int], dict[str, Any]]]:
    """One listening socket per name, handed to the daemon as systemd would: yields their
    ports and the daemon() options (wrapper, pass_fds) that pass them."""
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in names]
    try:
        fds = tuple(sock.fileno() for sock in listeners)
        for fd in fds:
            os.set_inheritable(fd, True)
        wrapper = [sys.executable, "-c", ADOPT, ":".join(names), *map(str, fds), "--"]
        yield [sock.getsockname()[1] for sock in listeners], {"wrapper": wrapper, "pass_fds": fds}
    finally:
        for sock in listeners:
            sock.close()


def stop_process(process: subprocess.Popen[Any], timeout: float = WAIT) -> None:
    """Ask a process to stop (SIGTERM), then kill it if it has not within `timeout`."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def normalise_labels(key: str) -> str:
    name, sep, rest = key.partition("{")
    if not sep:
        return name
    labels = sorted(part for part in rest.rstrip("}").split(",") if part)
    return name + "{" + ",".join(labels) + "}"


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def http_get(
    address: tuple[str, int], path: str, method: str = "GET", headers: dict | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*address, timeout=WAIT)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


class Viewer:
    """A raw-socket HTTP/1.1 client that sees the response as it arrives."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=WAIT)
        self.h11 = h11.Connection(h11.CLIENT)

    def send(
        self, method: str, target: str, headers: list | None = None, body: bytes = b""
    ) -> None:
        all_headers = [("host", "sssrd.test"), *(headers or [])]
        if body:
            all_headers.append(("content-length", str(len(body))))
        self.sock.sendall(
            self.h11.send(h11.Request(method=method, target=target, headers=all_headers))
        )
        if body:
            self.sock.sendall(self.h11.send(h11.Data(data=body)))
        self.sock.sendall(self.h11.send(h11.EndOfMessage()))

    def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(self.sock.recv(65536))

    def head(self) -> h11.Response:
        event = self.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = self.next_event()
        assert isinstance(event, h11.Response), event
        return event

    def chunk(self) -> bytes | None:
        """The next body piece as it arrives; None at the end of a complete body.

        Raises h11.RemoteProtocolError if the connection closes before the body is complete.
        """
        event = self.next_event()
        if isinstance(event, h11.EndOfMessage):
            return None
        assert isinstance(event, h11.Data), event
        return event.data

    def chunk_after_head(self) -> bytes | None:
        """The first body piece of a 200 response."""
        assert self.head().status_code == 200
        return self.chunk()

    def body(self) -> bytes:
        pieces = []
        while (piece := self.chunk()) is not None:
            pieces.append(piece)
        return b"".join(pieces)

    def get(self, target: str, **kwargs: Any) -> tuple[h11.Response, bytes]:
        self.send("GET", target, **kwargs)
        head = self.head()
        return head, self.body()

    def next_cycle(self) -> None:
        self.h11.start_next_cycle()

    def close(self) -> None:
        self.sock.close()


class PlayedLambda:
    """The test as the render Lambda of a `handover` request: a chunked callback sent over a
    raw socket the test holds, so it reads sssrd's own answer (e.g. the 410 that tells a render
    to stop) wherever the viewer went, even after the daemon exited."""

    def __init__(self, conductor: Conductor, tag: str) -> None:
        handed = conductor.report(tag, "callback")
        url = urlsplit(handed["url"])
        assert url.hostname is not None and url.port is not None
        self.sock = socket.create_connection((url.hostname, url.port), timeout=WAIT)
        self.sock.sendall(
            b"POST %s HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n"
            b"content-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
            % (url.path.encode(), handed["token"].encode())
        )

    def write(self, data: bytes) -> None:
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

    def finish(self) -> None:
        """The final chunk: the body is complete."""
        self.sock.sendall(b"0\r\n\r\n")

    def break_off(self, wire: bytes) -> None:
        """Send raw bytes (e.g. part of a chunk) and hang up, as a render that dies does."""
        self.sock.sendall(wire)
        self.sock.close()

    def write_until_refused(self, limit: int) -> int:
        """Write 64 KiB chunks until sssrd stops taking them (or `limit` bytes); bytes sent."""
        piece, sent = b"x" * 65536, 0
        with contextlib.suppress(OSError):
            while sent < limit:
                self.write(piece)
                sent += len(piece)
        return sent

    def answer(self) -> int | None:
        """The status sssrd answered before closing the callback; None if it only closed."""
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while piece := self.sock.recv(65536):
                received += piece
        self.sock.close()
        found = re.search(rb"HTTP/1\.1 (\d{3}) ", received)
        return int(found[1]) if found else None


def reset(sock: socket.socket) -> None:
    """Close with a reset (RST), as a crashing client or a dropped NAT entry does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def exchange(address: tuple[str, int], data: bytes, half_close: bool = False) -> bytes:
    """Send raw bytes and read until the server closes; raises on a reset (the answer lost)."""
    with socket.create_connection(address, timeout=WAIT) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while piece := sock.recv(65536):
            received += piece
        return received


def header(response: h11.Response, name: bytes) -> bytes | None:
    return dict(response.headers).get(name)


@contextlib.contextmanager
def daemon(conductor: Conductor | None = None, *args: str, **options: Any) -> Iterator[Daemon]:
    running = Daemon(conductor, *args, **options)
    try:
        yield running
    finally:
        running.stop_now()


def wait_for(predicate: Any, timeout: float = WAIT, what: str = "condition") -> None:
    """Poll a state that no event announces (e.g. a metric), bounded in time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def leave_mid_stream(sssrd: Daemon, conductor: Conductor, tag: str) -> dict[str, Any]:
    """A viewer hangs up after the viewer_leaves scenario's first chunk; returns its access line
    (once sssrd logged it), then lets the handler write again into the closed stream."""
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", f"/?scenario=viewer_leaves&tag={tag}")
    head = viewer.head()
    assert viewer.chunk() == b"first\n"
    viewer.close()
    access = sssrd.access(request_id=header(head, b"x-request-id").decode())
    conductor.release(f"{tag}:viewer_closed")
    return access


def lambda_dies_mid_body(sssrd: Daemon, conductor: Conductor, tag: str) -> h11.Response:
    """The abort_mid_body scenario's Lambda hangs up after two chunks; returns the viewer's
    response head once the viewer saw the body end without its final chunk."""
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", f"/?scenario=abort_mid_body&tag={tag}")
    head = viewer.head()
    assert head.status_code == 200
    received = b""
    while len(received) < len(b"part onepart two"):
        received += viewer.chunk()
    conductor.release(f"{tag}:close")
    try:
        viewer.chunk()
    except h11.RemoteProtocolError:  # closed without the final chunk
        return head
    raise AssertionError("the viewer response completed although the Lambda died mid-body")
