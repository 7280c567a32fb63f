"""The bench's own HTTP clients: per-request TTFB, per-chunk latency, held connections, bulk.

h2load drives throughput but reports time to first byte per connection only, so a probe client
here times each request on one keep-alive connection. Timestamps are taken as recv() returns,
before any parsing, and h11 decodes the framing afterwards, so the client's own Python cost
lands equally on every peer. Bulk transfers use curl (C, decodes chunked) so the client is not
what limits a GiB/s stream.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import h11

from bench.wire import LATENCY_CHUNK_BYTES, chunk_stamp

Address = tuple[str, int]
RECV_BYTES = 262144
CLIENT_TIMEOUT = 60.0


@dataclass
class Timing:
    """One request: status, seconds to the first response byte and to the end of the body."""

    status: int
    ttfb: float
    total: float
    body_bytes: int


def request_bytes(client: h11.Connection, address: Address, target: str, close: bool) -> bytes:
    headers = [("Host", f"{address[0]}:{address[1]}")]
    if close:
        headers.append(("Connection", "close"))
    return client.send(h11.Request(method="GET", target=target, headers=headers)) + (
        client.send(h11.EndOfMessage()) or b""
    )


class KeepAliveClient:
    """Sequential GETs on one connection, each timed to its first byte and to its end."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.sock = socket.create_connection(address, timeout=CLIENT_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.h11 = h11.Connection(h11.CLIENT)

    def get(self, target: str) -> Timing:
        started = time.perf_counter()
        self.sock.sendall(request_bytes(self.h11, self.address, target, close=False))
        first_byte = None
        status = 0
        body_bytes = 0
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(RECV_BYTES)
                first_byte = first_byte or time.perf_counter()
                self.h11.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body_bytes += len(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        ended = time.perf_counter()
        self.h11.start_next_cycle()
        return Timing(status, (first_byte or ended) - started, ended - started, body_bytes)

    def close(self) -> None:
        self.sock.close()


def probe_until(address: Address, target: str, stop: threading.Event, limit: int) -> list[Timing]:
    """Time requests one after another until `stop` is set (or `limit` requests). A request
    that fails on the wire counts as status 0 and the probe reconnects."""
    timings: list[Timing] = []
    client = None
    try:
        while not stop.is_set() and len(timings) < limit:
            started = time.perf_counter()
            try:
                client = client or KeepAliveClient(address)
                timings.append(client.get(target))
            except (OSError, h11.ProtocolError):
                elapsed = time.perf_counter() - started
                timings.append(Timing(0, elapsed, elapsed, 0))
                if client is not None:
                    client.close()
                client = None
    finally:
        if client is not None:
            client.close()
    return timings


class BrokenStream(Exception):
    """A response that was malformed, cut short or not a 200: a peer's bug, not a figure."""


def chunk_latencies(address: Address, target: str) -> list[int]:
    """Nanoseconds from each latency chunk's send (its stamp) to its last byte arriving here."""
    try:
        return _chunk_latencies(address, target)
    except (h11.ProtocolError, OSError, ValueError) as error:
        raise BrokenStream(f"{address} {target}: {error!r}") from error


def _chunk_latencies(address: Address, target: str) -> list[int]:
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as sock:
        client = h11.Connection(h11.CLIENT)
        sock.sendall(request_bytes(client, address, target, close=True))
        body = bytearray()
        latencies: list[int] = []
        ended = False
        while not ended:
            data = sock.recv(RECV_BYTES)
            arrived = time.perf_counter_ns()
            client.receive_data(data)
            ended = consume_events(client, body, f"{address} {target}")
            while len(body) >= LATENCY_CHUNK_BYTES * (len(latencies) + 1):
                start = LATENCY_CHUNK_BYTES * len(latencies)
                latencies.append(arrived - chunk_stamp(bytes(body[start : start + 32])))
            if not data and not ended:
                raise BrokenStream(f"{address} closed {target} before its end")
        return latencies


def consume_events(client: h11.Connection, body: bytearray, what: str) -> bool:
    """Append the body bytes received so far to `body`; True once the response has ended."""
    while (event := client.next_event()) is not h11.NEED_DATA:
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.Response) and event.status_code != 200:
            raise BrokenStream(f"{what}: status {event.status_code}")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return True
    return False


def concurrent_chunk_latencies(
    address: Address, targets: Iterable[str]
) -> list[list[int] | BrokenStream]:
    """All streams at once, one thread each (the load is the streams themselves); each stream's
    latencies, or how it broke."""

    def one(target: str) -> list[int] | BrokenStream:
        try:
            return chunk_latencies(address, target)
        except BrokenStream as broken:
            return broken

    targets = list(targets)
    with ThreadPoolExecutor(len(targets)) as pool:
        return list(pool.map(one, targets))


def hold_requests(address: Address, count: int, target: str = "/small") -> list[socket.socket]:
    """Open `count` connections that each send a request and then wait, reading nothing."""
    request = f"GET {target} HTTP/1.1\r\nHost: {address[0]}\r\n\r\n".encode()
    held = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address, timeout=CLIENT_TIMEOUT)
            held.append(sock)
            sock.sendall(request)
    except BaseException:
        release(held)
        raise
    return held


def release(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


@dataclass
class Transfer:
    status: int
    bytes: int
    seconds: float
    curl_exit: int  # 0, or curl's reason (18: cut short, 56: receive/framing error, 28: timeout)


def curl_transfer(address: Address, target: str, timeout: float = 300) -> Transfer:
    """One GET through curl to /dev/null: the body's decoded size and the time it took."""
    url = f"http://{address[0]}:{address[1]}{target}"
    argv = ["curl", "-s", "-o", "/dev/null", "--max-time", str(timeout)]
    argv += ["-w", "%{http_code} %{size_download} %{time_total}", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)
    status, size, seconds = done.stdout.split()
    return Transfer(int(status), int(size), float(seconds), done.returncode)
