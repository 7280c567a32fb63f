"""The origin server HAProxy and nginx proxy to, and the "direct" peer the client hits itself.

A threaded blocking HTTP/1.1 server (keep-alive, GET only): each request target names a
bench.wire Workload, written with the same code the bench Lambda uses, so every peer moves the
same bytes. Blocking sendall from threads releases the GIL, so one origin keeps up with a GiB/s
stream and dozens of paced latency streams. Run: python -m bench.origin --listen 127.0.0.1:0
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import sys
from urllib.parse import urlsplit

from bench.wire import Workload, framing_header, write_body

MAX_HEAD_BYTES = 16384


class OriginHandler(socketserver.BaseRequestHandler):
    request: socket.socket

    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffered = b""
        while True:
            while b"\r\n\r\n" not in buffered:
                piece = self.request.recv(MAX_HEAD_BYTES)
                if not piece or len(buffered) > MAX_HEAD_BYTES:
                    return
                buffered += piece
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            if not self.answer(head):
                return

    def answer(self, head: bytes) -> bool:
        """Write the response the request head names; False when the connection should close."""
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        _method, target, _version = request_line.split(" ", 2)
        parts = urlsplit(target)
        workload = Workload.from_target(parts.path, parts.query)
        close = any(line.lower().replace(" ", "") == "connection:close" for line in header_lines)
        response_head = b"".join(
            [
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n",
                framing_header(workload),
                b"Connection: close\r\n" if close else b"",
                b"\r\n",
            ]
        )
        try:
            self.request.sendall(response_head)
            write_body(self.request, workload)
        except OSError:
            return False
        return not close


class OriginServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bench origin server")
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    with OriginServer((host, int(port)), OriginHandler) as server:
        bound_host, bound_port = server.server_address[:2]
        print(f"http://{bound_host}:{bound_port}", flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
