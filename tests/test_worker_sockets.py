"""What docs/operations.md promises of a daemon of several workers beyond tests/test_workers.py:
the admin health while every worker is being replaced, and socket activation with fewer or more
callback sockets than workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
from urllib.parse import urlsplit

import pytest
from harness import ROOT, WAIT, Daemon, Viewer, daemon, http_get, socket_activation, wait_for

pytestmark = pytest.mark.daemon


def worker_pids(sssrd: Daemon) -> list[int]:
    return [line["pid"] for line in list(sssrd.lines) if line.get("message") == "worker listening"]


def test_the_admin_healthz_says_no_worker_listening_while_every_worker_is_replaced(conductor):
    with daemon(conductor, "--workers=2") as sssrd:
        first = worker_pids(sssrd)
        assert len(first) == 2 and http_get(sssrd.admin, "/healthz")[::2] == (200, b"ok\n")
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        # Poll: the supervisor notices the exits, then the replacements take a Python start-up
        # (hundreds of ms) to listen; the answer must change in between.
        while (answer := http_get(sssrd.admin, "/healthz"))[0] == 200:
            assert len(worker_pids(sssrd)) < 4, "both replaced and never a 503"
        assert answer[::2] == (503, b"no worker listening\n")
        wait_for(lambda: http_get(sssrd.admin, "/healthz")[0] == 200, what="replacements")
        head, body = Viewer(sssrd.viewer).get("/?scenario=environment&tag=replaced")
        assert (head.status_code, body) == (200, b"ok")


def port_free(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        return False
    return True


def test_socket_activation_with_fewer_callback_sockets_binds_the_rest_at_port_plus_i(conductor):
    with contextlib.ExitStack() as stack:
        for _attempt in range(20):  # the port after an ephemeral one may be some client's
            ports, activation = stack.enter_context(socket_activation("viewer", "callback"))
            if port_free(ports[1] + 1):
                break
        sssrd = stack.enter_context(daemon(conductor, "--workers=2", **activation))
        listening = sssrd.wait_line(lambda line: line.get("message") == "sssrd listening")
        base = ports[1]
        assert listening["callback_urls"] == [f"http://127.0.0.1:{base + i}" for i in range(2)]
        called_back: set[int] = set()  # callback ports that delivered a body
        for attempt in range(40):  # bounded: the kernel picks the worker that accepts
            head, body = Viewer(sssrd.viewer).get(f"/?scenario=echo&tag=fewer{attempt}")
            assert head.status_code == 200
            called_back.add(urlsplit(json.loads(body)["sssrd"]["callbackUrl"]).port)
            if len(called_back) == 2:
                break
        assert called_back == {base, base + 1}


def test_socket_activation_with_more_callback_sockets_than_workers_fails_in_one_line(conductor):
    with socket_activation("viewer", "callback", "callback", "callback") as (_ports, activation):
        result = subprocess.run(
            Daemon.command_line("serve", "--workers=2", wrapper=activation["wrapper"]),
            pass_fds=activation["pass_fds"],
            env=Daemon.environment(conductor),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
    assert result.returncode == 1, result.stderr  # startup failed, as for a port in use
    assert result.stderr.startswith("sssrd: cannot start: systemd passed 3 callback sockets")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
