"""Callback connections kept alive: a warm Lambda's next callback reuses the connection of its
last delivered one, and every request on it still stands on its own token."""

from __future__ import annotations

import signal
import socket
from urllib.parse import urlsplit

import h11
import pytest
from harness import WAIT, Viewer, daemon

pytestmark = pytest.mark.daemon


def test_a_warm_lambdas_callbacks_share_one_connection(conductor):
    """The Python helper, in a Lambda runtime (as its variable says), pools the connection
    sssrd kept open after each delivered stream."""
    with daemon(conductor, AWS_LAMBDA_RUNTIME_API="127.0.0.1:9001") as sssrd:
        for number in range(3):
            tag = f"warm{number}"
            conductor.release(f"{tag}:step0")
            head, body = Viewer(sssrd.viewer).get(f"/?scenario=stepped&steps=1&tag={tag}")
            assert head.status_code == 200 and body == b"chunk 0\n"
            # The render ends after reading sssrd's answer: then the next one may start.
            assert conductor.report(tag, "done")["summary"]["bytes"] == len(b"chunk 0\n")
        assert sssrd.metric("sssrd_connections_total", listener="callback") == 1
        assert sssrd.metric("sssrd_connections_open", listener="callback") == 1


def test_outside_a_lambda_runtime_the_helper_closes_each_callback_connection(conductor):
    """sssrd's local invoker runs handlers in the daemon: nothing to keep warm there."""
    with daemon(conductor) as sssrd:
        for number in range(2):
            tag = f"local{number}"
            conductor.release(f"{tag}:step0")
            assert Viewer(sssrd.viewer).get(f"/?scenario=stepped&steps=1&tag={tag}")[1]
            conductor.report(tag, "done")
        assert sssrd.metric("sssrd_connections_total", listener="callback") == 2


@pytest.mark.parametrize("pipelined", [False, True], ids=["after-the-answer", "pipelined"])
def test_a_forged_token_on_a_reused_callback_connection_is_refused_and_closes_it(
    sssrd, conductor, pipelined
):
    tag = f"reused-forged-{pipelined}"
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", f"/?scenario=reused_callback&tag={tag}&pipelined={int(pipelined)}")
    assert viewer.head().status_code == 200
    assert viewer.body() == b"delivered"
    answered = conductor.report(tag, "answered")
    assert answered["statuses"] == [200, 401] and answered["closed"]
    assert sssrd.metric("sssrd_callbacks_rejected_total", reason="bad_token") >= 1


@pytest.mark.parametrize("draining", [False, True], ids=["serving", "draining"])
def test_a_delivered_callback_keeps_its_connection_unless_sssrd_is_draining(conductor, draining):
    """The test plays the Lambda (a handler inside the daemon could be stopped with it before
    it had read its answer, once the drain has nothing left to wait for)."""
    tag = f"kept-alive-{draining}"
    with daemon(conductor) as sssrd:
        viewer = Viewer(sssrd.viewer)
        viewer.send("GET", f"/?scenario=handover&tag={tag}")
        handed = conductor.report(tag, "callback")
        url = urlsplit(handed["url"])
        assert url.hostname is not None and url.port is not None
        with socket.create_connection((url.hostname, url.port), timeout=WAIT) as render:
            render.sendall(
                b"POST %s HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n"
                b"content-type: text/plain\r\ntransfer-encoding: chunked\r\n"
                b"connection: keep-alive\r\n\r\n5\r\nfirst\r\n"
                % (url.path.encode(), handed["token"].encode())
            )
            assert viewer.head().status_code == 200
            if draining:
                sssrd.signal(signal.SIGTERM)
                sssrd.wait_line(lambda line: line.get("message") == "draining")
            render.sendall(b"0\r\n\r\n")
            assert viewer.body() == b"first"
            answer = h11.Connection(h11.CLIENT)
            answer.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
            while (event := answer.next_event()) is h11.NEED_DATA:
                answer.receive_data(render.recv(65536))
        assert isinstance(event, h11.Response) and event.status_code == 200
        kept = dict(event.headers).get(b"connection")
        assert kept == (b"close" if draining else None)
