"""The bodies every sender in the bench writes: one definition shared by origin and Lambda.

A Workload is named by a request target (`/small`, `/bulk?framing=chunked&size=N`,
`/latency?chunks=20&seed=S&max_gap_ms=10`). The origin (direct, HAProxy, nginx) writes it as a
response body and the bench Lambda handler POSTs it to sssrd's callback URL, byte for byte the
same framing, so the only difference between peers is the proxy in between. Latency chunks carry
their send time (time.perf_counter_ns, CLOCK_MONOTONIC, comparable across processes).
"""

from __future__ import annotations

import functools
import random
import socket
import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs

SMALL_CHUNKS: Final = 10
SMALL_CHUNK_BYTES: Final = 2048
BULK_CHUNK_BYTES: Final = 64 * 1024
BULK_BLOCK_CHUNKS: Final = 16  # chunks prebuilt into one buffer: 1 MiB of payload per sendall
LATENCY_CHUNK_BYTES: Final = 2048
STAMP_DIGITS: Final = 20
LAST_CHUNK: Final = b"0\r\n\r\n"


@dataclass(frozen=True)
class Workload:
    """What body to send: `small` (10 x 2 KiB), `bulk` (size bytes, 64 KiB chunks or one
    Content-Length body) or `latency` (chunks x 2 KiB, random 0..max_gap_ms gaps, timestamped)."""

    kind: str = "small"
    framing: str = "chunked"
    size: int = SMALL_CHUNKS * SMALL_CHUNK_BYTES
    chunks: int = SMALL_CHUNKS
    seed: int = 0
    max_gap_ms: float = 10.0

    @classmethod
    def from_target(cls, path: str, query: str) -> Workload:
        params = {name: values[-1] for name, values in parse_qs(query).items()}
        if path == "/bulk":
            framing = params.get("framing", "chunked")
            if framing not in ("chunked", "length"):
                raise ValueError(f"framing must be chunked or length, got {framing!r}")
            return cls("bulk", framing, int(params.get("size", BULK_CHUNK_BYTES)))
        if path == "/latency":
            chunks = int(params.get("chunks", 20))
            return cls(
                "latency",
                size=chunks * LATENCY_CHUNK_BYTES,
                chunks=chunks,
                seed=int(params.get("seed", 0)),
                max_gap_ms=float(params.get("max_gap_ms", 10)),
            )
        return cls()

    def target(self) -> str:
        if self.kind == "bulk":
            return f"/bulk?framing={self.framing}&size={self.size}"
        if self.kind == "latency":
            return f"/latency?chunks={self.chunks}&seed={self.seed}&max_gap_ms={self.max_gap_ms}"
        return "/small"


def frame(payload: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def framing_header(workload: Workload, prefix_bytes: int = 0) -> bytes:
    """The header line that frames the body (plus `prefix_bytes` written before it)."""
    if workload.framing == "length":
        return b"Content-Length: %d\r\n" % (workload.size + prefix_bytes)
    return b"Transfer-Encoding: chunked\r\n"


def write_body(sock: socket.socket, workload: Workload, prefix: bytes = b"") -> None:
    """Write the whole body (after `prefix`, e.g. a Lambda prelude) in the workload's framing."""
    chunked = workload.framing == "chunked"
    if prefix:
        sock.sendall(frame(prefix) if chunked else prefix)
    if workload.kind == "bulk":
        _write_bulk(sock, workload.size, chunked)
    elif workload.kind == "latency":
        _write_latency(sock, workload)
    else:
        for piece in _small_frames():
            sock.sendall(piece)  # one write per chunk, as a render streams them
    if chunked:
        sock.sendall(LAST_CHUNK)


@functools.cache
def _small_frames() -> tuple[bytes, ...]:
    return tuple(frame(bytes([97 + i]) * SMALL_CHUNK_BYTES) for i in range(SMALL_CHUNKS))


@functools.cache
def _bulk_block(chunked: bool) -> bytes:
    payload = b"x" * BULK_CHUNK_BYTES
    return (frame(payload) if chunked else payload) * BULK_BLOCK_CHUNKS


def _write_bulk(sock: socket.socket, size: int, chunked: bool) -> None:
    block = _bulk_block(chunked)
    blocks, rest = divmod(size, BULK_CHUNK_BYTES * BULK_BLOCK_CHUNKS)
    for _ in range(blocks):
        sock.sendall(block)
    while rest:
        piece = b"x" * min(rest, BULK_CHUNK_BYTES)
        sock.sendall(frame(piece) if chunked else piece)
        rest -= len(piece)


def latency_gaps(workload: Workload) -> list[float]:
    """Seconds to wait before each chunk: the same sequence for every peer given the seed."""
    rng = random.Random(workload.seed)
    return [rng.uniform(0, workload.max_gap_ms / 1000) for _ in range(workload.chunks)]


def _write_latency(sock: socket.socket, workload: Workload) -> None:
    padding = b"." * (LATENCY_CHUNK_BYTES - STAMP_DIGITS)
    for gap in latency_gaps(workload):
        time.sleep(gap)
        stamp = b"%020d" % time.perf_counter_ns()
        sock.sendall(frame(stamp + padding))


def chunk_stamp(chunk: bytes) -> int:
    """The send time a latency chunk carries (its first STAMP_DIGITS bytes)."""
    return int(chunk[:STAMP_DIGITS])


def read_answer(sock: socket.socket, limit: int = 65536) -> bytes:
    """Read one HTTP response with a Content-Length body (or up to EOF); bounded by `limit`."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        piece = sock.recv(limit)
        if not piece:
            return data
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < min(length, limit):
        piece = sock.recv(limit)
        if not piece:
            break
        body += piece
    return head + b"\r\n\r\n" + body
