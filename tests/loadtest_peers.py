"""Servers the load generator's tests aim at, besides `sssrd dev` itself.

`Misbehaving` is a raw-socket server that answers each request the wrong way its path names (a
chunked body cut short, fewer bytes than its Content-Length, a reset, silence, a close before any
byte, not HTTP, a keep-alive connection closed when its second request arrives). `Edge` is Debian's
HAProxy terminating TLS (a trustme certificate for `sssrd.test`) in front of a daemon, adding
CloudFront's headers from the request's query (`pop`, `cache`) and answering `/fail` with 503
itself, like an edge would; it listens on a socket this process bound to port 0 and hands down
(`bind fd@N`), so no port is ever guessed. `run_loadtest` runs the real command and returns its
JSON report.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import trustme
from harness import serve_connections

ROOT = Path(__file__).resolve().parent.parent
EDGE_HOST = "sssrd.test"
RUN_TIMEOUT = 60


class Misbehaving:
    """Answers each request the wrong way its path names (`/reset` ...); a thread each."""

    ANSWERS = {
        "chunked_cut": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        "short_length": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40,
        "garbage": b"SPEAKS NO HTTP\r\n\r\n",
    }

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        serve_connections(self.listener, self._answer)

    def url(self, behaviour: str) -> str:
        return f"http://127.0.0.1:{self.port}/{behaviour}"

    def _answer(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            behaviour = read_head(conn).split(b" ", 2)[1].decode().strip("/")
            if behaviour == "silent":
                self.held.append(conn)  # answered never; closed with the server
                return
            if behaviour == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif behaviour == "stale_keepalive":  # one answer, then closes on the next
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                read_head(conn)
            elif behaviour != "close":
                conn.sendall(self.ANSWERS[behaviour])
        conn.close()

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


def read_head(conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        piece = conn.recv(4096)
        if not piece:
            break
        head += piece
    return head


class Edge:
    """HAProxy: TLS in front of `backend_port`, CloudFront's headers added."""

    def __init__(self, workdir: Path, backend_port: int) -> None:
        ca = trustme.CA()
        self.cafile = workdir / "edge-ca.pem"
        ca.cert_pem.write_to_path(str(self.cafile))
        pem = workdir / "edge.pem"
        ca.issue_cert(EDGE_HOST).private_key_and_cert_chain_pem.write_to_path(str(pem))
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self.listener.getsockname()[1]
        config = workdir / "edge.cfg"
        config.write_text(
            EDGE_CONFIG.format(fd=self.listener.fileno(), pem=pem, backend=backend_port)
        )
        checked = subprocess.run(
            ["haproxy", "-c", "-q", "-f", str(config)],
            capture_output=True,
            pass_fds=(self.listener.fileno(),),
        )
        assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
        self.log = (workdir / "edge.log").open("wb")
        self.process = subprocess.Popen(
            # setpriv: HAProxy dies with this process, however it ends (tests/fleet.py's too).
            ["setpriv", "--pdeathsig", "KILL", "haproxy", "-db", "-f", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            pass_fds=(self.listener.fileno(),),
        )

    def url(self, target: str) -> str:
        return f"https://{EDGE_HOST}:{self.port}{target}"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.listener.close()
        self.log.close()


EDGE_CONFIG = """
global
    maxconn 1000
defaults
    mode http
    option http-no-delay
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend edge
    bind fd@{fd} ssl crt {pem} alpn http/1.1
    http-request deny status 421 if !{{ ssl_fc_sni -m str sssrd.test }}
    http-request set-var(txn.pop) urlp(pop)
    http-request set-var(txn.cache) urlp(cache)
    http-request return status 503 content-type text/plain string "no" if {{ path_beg /fail }}
    http-after-response set-header x-amz-cf-pop %[var(txn.pop)]
    http-after-response set-header x-cache "%[var(txn.cache)] from cloudfront"
    http-after-response set-header x-amz-cf-id %[uuid]
    default_backend daemon
backend daemon
    server sssrd 127.0.0.1:{backend}
"""


def loadtest_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "sssrd.cli", "loadtest", *args]


def run_loadtest(
    workdir: Path, *args: str, **popen: Any
) -> tuple[dict[str, Any], subprocess.CompletedProcess]:
    """Runs `sssrd loadtest ARGS --json FILE`; its report, and the process (output as text)."""
    report = workdir / "report.json"
    report.unlink(missing_ok=True)
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    done = subprocess.run(
        loadtest_argv(*args, "--json", str(report)),
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=ROOT,
        **popen,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(report.read_text()), done
