"""Where splicing starts to pay: relay CPU per MB, splice vs copy, by chunk size.

Runs sssrd's own BodyRelay between two loopback TCP connections; the chunked sender and the
draining receiver are separate processes, so time.process_time() here is the relay's alone.
The crossover chunk size is what pipe.SPLICE_MIN should be on this machine kind.

    .venv/bin/python bench/splice_threshold.py [--megabytes 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import time
from pathlib import Path

import h11
import uvloop

from sssrd.chunked import ChunkedDecoder, LengthDecoder
from sssrd.connection import Connection
from sssrd.pipe import BodyRelay, PipePool

SIZES = [2048, 4096, 8192, 16384, 32768, 65536, 0]  # 0: one Content-Length run


def send_chunked(port: int, chunk: int, total: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        if not chunk:  # a Content-Length body: one run of `total` bytes
            block = b"x" * 262144
            for _ in range(total // len(block)):
                sock.sendall(block)
            sock.recv(1)
            return
        payload = b"x" * chunk
        framed = b"%x\r\n%s\r\n" % (chunk, payload) * max(1, 262144 // (chunk + 16))
        per_write = framed.count(b"\r\n") // 2 * chunk
        sent = 0
        while sent < total:
            sock.sendall(framed)
            sent += per_write
        sock.sendall(b"0\r\n\r\n")
        sock.recv(1)


def drain(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        while sock.recv(1 << 20):
            pass


async def relay_once(chunk: int, total: int, splice: bool) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    sender = multiprocessing.Process(target=send_chunked, args=(port, chunk, total))
    receiver = multiprocessing.Process(target=drain, args=(port,))
    sender.start()
    source_sock, _ = await loop.sock_accept(listener)
    receiver.start()
    sink_sock, _ = await loop.sock_accept(listener)
    for sock in (source_sock, sink_sock):
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    source = Connection(loop, source_sock, h11.Connection(h11.SERVER))
    sink = Connection(loop, sink_sock, h11.Connection(h11.SERVER))
    sink.h11.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    sink.h11.next_event()
    decoder = LengthDecoder(total) if not chunk else ChunkedDecoder()
    relay = BodyRelay(
        source, sink, decoder, 30.0, PipePool(4) if splice else None, 1, send_timeout=30.0
    )
    cpu, wall = time.process_time(), time.perf_counter()
    length = [(b"content-length", b"%d" % total)] if not chunk else []
    await sink.send(h11.Response(status_code=200, headers=length))
    await relay.relay(b"")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    relay.close()
    sink.close()
    source.close()
    sender.join()
    receiver.join()
    listener.close()
    moved = (relay.copied + relay.spliced) / 1e6
    return cpu / moved * 1000, moved / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--json", default="bench/results/splice_threshold.json")
    args = parser.parse_args()
    total = args.megabytes << 20
    rows = []
    columns = ("copy CPU ms/MB", "splice CPU ms/MB", "copy MB/s", "splice MB/s")
    print(f"{'chunk':>7} " + " ".join(f"{name:>16}" for name in columns))
    for chunk in SIZES:
        copy = min(uvloop.run(relay_once(chunk, total, False)) for _ in range(2))
        splice = min(uvloop.run(relay_once(chunk, total, True)) for _ in range(2))
        rows.append({"chunk": chunk, "copy": copy, "splice": splice})
        label = f"{chunk:7d}" if chunk else "  whole"
        print(f"{label} {copy[0]:16.3f} {splice[0]:16.3f} {copy[1]:16.0f} {splice[1]:16.0f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
