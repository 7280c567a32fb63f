"""sssrd.callback against a real recording HTTP server on 127.0.0.1 (no sssrd daemon needed).

CallbackRecorder accepts one connection in a thread, reads the request head and then the body
chunk by chunk, queueing each chunk the moment it is complete, and follows a small script:
answer at the head (after the prelude and the first chunk, which travel with it), hang up after
N chunks (with or without a 410, or with a reset), or answer the finished body with a JSON summary.
"""

from __future__ import annotations

import ast
import json
import queue
import socket
import ssl
import struct
import sys
import threading
import time

import pytest
import trustme

import sssrd.callback
from sssrd import callback

TOKEN = "s3cret-token-value"
WAIT = 10  # seconds; only a bound on a broken test, never a synchronisation
SUMMARY = {"requestId": "req-1", "bytes": 42}
TCP_FIN_UNACKED = {4, 11}  # TCP_FIN_WAIT1, TCP_CLOSING in linux/tcp_states.h
GONE_410 = (410, b'{"error": "viewer disconnected"}')


def http_answer(status: int, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class CallbackRecorder:
    """A one-connection HTTP server that records what a callback sends and answers per script."""

    def __init__(
        self,
        *,
        answer: tuple[int, bytes] | None = (200, json.dumps(SUMMARY).encode()),
        answer_at_head: tuple[int, bytes] | None = None,
        hang_up_after_chunks: int | None = None,
        answer_before_hang_up: tuple[int, bytes] | None = None,
        reset_on_hang_up: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.answer = answer
        self.answer_at_head = answer_at_head
        self.hang_up_after_chunks = hang_up_after_chunks
        self.answer_before_hang_up = answer_before_hang_up
        self.reset_on_hang_up = reset_on_hang_up
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.chunks: queue.Queue[bytes] = queue.Queue()
        self.request_line = b""
        self.headers: dict[str, str] = {}
        self.body = b""
        self.saw_last_chunk: bool | None = None
        self.extra_after_answer = b""
        self.hung_up = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> CallbackRecorder:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.listener.close()
        self.thread.join(WAIT)

    def event(self, **extra: object) -> dict:
        scheme = "https" if self.tls else "http"
        port = self.listener.getsockname()[1]
        url = f"{scheme}://127.0.0.1:{port}/v1/callback/req-1"
        return {"sssrd": {"version": 1, "callbackUrl": url, "token": TOKEN}, **extra}

    def next_chunk(self) -> bytes:
        return self.chunks.get(timeout=WAIT)

    def all_chunks(self) -> list[bytes]:
        assert self.done.wait(WAIT)
        return list(self.chunks.queue)

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        if self.tls:
            conn = self.tls.wrap_socket(conn, server_side=True)
        conn.settimeout(WAIT)
        with conn, conn.makefile("rb") as reader:
            try:
                self._converse(conn, reader)
            finally:
                self.done.set()

    def _converse(self, conn: socket.socket, reader) -> None:
        self._read_head(reader)
        if self.answer_at_head:
            # The prelude and the first chunk: leave nothing unread, so no reset.
            self.chunks.put(read_chunk(reader))
            self.chunks.put(read_chunk(reader))
            self._hang_up(conn, self.answer_at_head)
            return
        if "content-length" in self.headers:
            self.body = reader.read(int(self.headers["content-length"]))
        elif not self._read_chunks(conn, reader):
            return
        if self.answer:
            conn.sendall(http_answer(*self.answer))
        self.extra_after_answer = reader.read()

    def _read_head(self, reader) -> None:
        self.request_line = reader.readline()
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def _read_chunks(self, conn: socket.socket, reader) -> bool:
        """True when the body ended with the final chunk; False on EOF or a scripted hang-up."""
        count = 0
        while (data := read_chunk(reader)) is not None:
            if not data:
                self.saw_last_chunk = True
                return True
            self.chunks.put(data)
            count += 1
            if count == self.hang_up_after_chunks:
                self._hang_up(conn, self.answer_before_hang_up)
                return False
        self.saw_last_chunk = False
        return False

    def _hang_up(self, conn: socket.socket, answer: tuple[int, bytes] | None) -> None:
        if answer:
            conn.sendall(http_answer(*answer))
        conn.shutdown(socket.SHUT_WR)
        wait_until_peer_acknowledged_fin(conn)
        if self.reset_on_hang_up:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        self.hung_up.set()


def wait_until_peer_acknowledged_fin(conn: socket.socket) -> None:
    """Block until the client's kernel has our FIN, so the test's next write cannot race it.

    The FIN is acknowledged once the client has processed it (we leave FIN_WAIT1 or CLOSING);
    there is no event for that, so this polls the kernel's TCP state, bounded by WAIT.
    """
    deadline = time.monotonic() + WAIT
    while conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in TCP_FIN_UNACKED:
        assert time.monotonic() < deadline, "client never acknowledged our FIN"
        time.sleep(0.001)


def read_chunk(reader) -> bytes | None:
    """One chunk's payload (b"" for the final chunk), or None at EOF."""
    size_line = reader.readline()
    if not size_line:
        return None
    data = reader.read(int(size_line.strip(), 16))
    reader.readline()
    return data


def split_prelude(chunk: bytes) -> tuple[dict, bytes]:
    prelude, separator, rest = chunk.partition(b"\0" * 8)
    assert separator, "no 8-NUL separator after the prelude"
    return json.loads(prelude), rest


def test_stream_sends_prelude_then_each_write_as_its_own_chunk_as_it_happens():
    with CallbackRecorder() as server:
        out = callback.open_stream(
            server.event(),
            status=201,
            headers={"content-type": "text/html"},
            cookies=["a=b; Path=/"],
        )
        for index, data in enumerate(["<html>", "héllo", b"\x00raw bytes\r\n", "x" * 70000]):
            out.write(data)
            if index == 0:  # the prelude goes out with the first write
                prelude, rest = split_prelude(server.next_chunk())
                assert prelude == {
                    "statusCode": 201,
                    "headers": {"content-type": "text/html"},
                    "cookies": ["a=b; Path=/"],
                }
                assert rest == b""
            expected = data.encode() if isinstance(data, str) else data
            assert server.next_chunk() == expected
        out.write("")  # ignored: an empty chunk would end the body
        summary = out.close()
    assert summary == SUMMARY
    assert out.summary == SUMMARY
    assert server.saw_last_chunk is True
    assert server.chunks.empty()
    assert server.request_line == b"POST /v1/callback/req-1 HTTP/1.1\r\n"
    assert server.headers["authorization"] == f"Bearer {TOKEN}"
    assert server.headers["content-type"] == callback.PRELUDE_CONTENT_TYPE
    assert server.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in server.headers


def test_prelude_bytes_are_exact_json_then_eight_nuls():
    with CallbackRecorder() as server:
        with callback.open_stream(server.event(), headers={"x-many": ["1", "2"]}) as out:
            out.write(b"body")
        chunks = server.all_chunks()
    assert chunks == [b'{"statusCode":200,"headers":{"x-many":["1","2"]}}' + b"\0" * 8, b"body"]


def test_leaving_with_block_normally_sends_final_chunk_and_stores_summary():
    with CallbackRecorder() as server:
        with callback.open_stream(server.event()) as out:
            out.write("done")
        assert server.done.wait(WAIT)
    assert server.saw_last_chunk is True
    assert out.summary == SUMMARY


def test_exception_in_with_block_truncates_without_final_chunk():
    with CallbackRecorder() as server:
        with (
            pytest.raises(RuntimeError, match="render failed"),
            callback.open_stream(server.event()) as out,
        ):
            out.write("partial")
            raise RuntimeError("render failed")
        assert server.done.wait(WAIT)
    assert server.saw_last_chunk is False
    assert server.all_chunks()[1:] == [b"partial"]
    assert out.summary is None


@pytest.mark.parametrize(
    "answer, reset",
    [(None, False), (GONE_410, False), (None, True)],
    ids=["eof", "410-then-eof", "reset"],
)
def test_next_write_raises_viewer_gone_after_sssrd_hangs_up(answer, reset):
    with CallbackRecorder(
        hang_up_after_chunks=2, answer_before_hang_up=answer, reset_on_hang_up=reset
    ) as server:
        out = callback.open_stream(server.event())
        out.write("first")
        assert server.hung_up.wait(WAIT)
        with pytest.raises(callback.ViewerGone) as info:
            out.write("second")
        with pytest.raises(callback.ViewerGone):
            out.write("third")  # stays failed, does not write into a dead socket
        with pytest.raises(callback.ViewerGone):
            out.close()
    assert ("410" if answer else "closed") in str(info.value)
    assert TOKEN not in str(info.value)


def test_viewer_gone_inside_with_block_propagates_and_closes_quietly():
    with (
        CallbackRecorder(hang_up_after_chunks=2, answer_before_hang_up=GONE_410) as server,
        pytest.raises(callback.ViewerGone),
        callback.open_stream(server.event()) as out,
    ):
        out.write("first")
        assert server.hung_up.wait(WAIT)
        out.write("too late")
    assert out.summary is None


def test_close_raises_viewer_gone_when_sssrd_hangs_up_without_answer():
    with CallbackRecorder(hang_up_after_chunks=2) as server:
        out = callback.open_stream(server.event())
        out.write("last words")
        assert server.hung_up.wait(WAIT)
        with pytest.raises(callback.ViewerGone):
            out.close()


def test_401_answer_raises_callback_rejected_without_the_token():
    answer = (401, b'{"error": "bad token"}')
    with CallbackRecorder(answer_at_head=answer) as server:
        out = callback.open_stream(server.event())
        out.write("first")
        assert server.hung_up.wait(WAIT)
        with pytest.raises(callback.CallbackRejected) as info:
            out.write("body")
    assert info.value.status == 401
    assert info.value.body == b'{"error": "bad token"}'
    assert "401" in str(info.value) and "bad token" in str(info.value)
    for text in (str(info.value), repr(info.value), repr(out)):
        assert TOKEN not in text


def test_410_answer_at_head_is_viewer_gone_not_rejected():
    with CallbackRecorder(answer_at_head=GONE_410) as server:
        out = callback.open_stream(server.event())
        out.write("first")
        assert server.hung_up.wait(WAIT)
        with pytest.raises(callback.ViewerGone):
            out.write("body")


def test_error_status_answer_to_the_final_chunk_is_rejected():
    with (
        CallbackRecorder(answer=(409, b'{"error": "already streaming"}')) as server,
        pytest.raises(callback.CallbackRejected) as info,
        callback.open_stream(server.event()) as out,
    ):
        out.write("x")
    assert info.value.status == 409


def test_respond_sends_one_content_length_request_and_returns_summary():
    with CallbackRecorder() as server:
        summary = callback.respond(
            server.event(), "<p>whole page</p>", status=404, headers={"content-type": "text/html"}
        )
        assert server.done.wait(WAIT)
    assert summary == SUMMARY
    assert server.headers["content-length"] == str(len(server.body))
    assert "transfer-encoding" not in server.headers
    assert server.headers["authorization"] == f"Bearer {TOKEN}"
    prelude, body = split_prelude(server.body)
    assert prelude == {"statusCode": 404, "headers": {"content-type": "text/html"}}
    assert body == b"<p>whole page</p>"
    assert server.extra_after_answer == b""  # nothing after the one request: EOF


def test_respond_raises_rejected_on_401():
    with (
        CallbackRecorder(answer=(401, b'{"error": "bad token"}')) as server,
        pytest.raises(callback.CallbackRejected) as info,
    ):
        callback.respond(server.event(), b"body")
    assert info.value.status == 401
    assert TOKEN not in str(info.value)


def test_event_without_sssrd_key_raises_a_clear_error():
    with pytest.raises(callback.CallbackError, match="invoked by sssrd"):
        callback.open_stream({"rawPath": "/"})


def test_token_that_is_not_a_header_value_is_refused_without_quoting_it():
    with CallbackRecorder() as server:
        event = server.event()
        event["sssrd"]["token"] = "bad\r\nX-Injected: 1"
        with pytest.raises(callback.CallbackError) as info:
            callback.open_stream(event)
    assert "Injected" not in str(info.value)
    assert "Injected" not in repr(info.value)


def test_unreachable_sssrd_raises_callback_error_naming_the_address():
    spare = socket.create_server(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()
    event = {"sssrd": {"callbackUrl": f"http://127.0.0.1:{port}/v1/callback/x", "token": TOKEN}}
    with pytest.raises(callback.CallbackError, match=f"127.0.0.1:{port}") as info:
        callback.open_stream(event, timeout=5).write("first")
    assert TOKEN not in str(info.value)


def test_tls_stream_is_not_mistaken_for_ended_by_session_tickets():
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    with CallbackRecorder(tls=server_context) as server:
        out = callback.open_stream(server.event(), ssl_context=client_context)
        for index, data in enumerate(["one", "two", "three"]):
            out.write(data)
            if index == 0:
                split_prelude(server.next_chunk())
            assert server.next_chunk() == data.encode()
        assert out.close() == SUMMARY
    assert server.headers["authorization"] == f"Bearer {TOKEN}"


def test_silent_sssrd_after_final_chunk_is_a_timeout_error_not_viewer_gone():
    with CallbackRecorder(answer=None) as server:
        out = callback.open_stream(server.event(), timeout=0.5)
        with pytest.raises(callback.CallbackError, match="timed out") as info:
            out.close()
    assert not isinstance(info.value, callback.ViewerGone)
    assert server.saw_last_chunk is True


def test_stream_sends_nothing_before_its_first_write():
    with CallbackRecorder() as server:
        out = callback.open_stream(server.event(), headers={"content-type": "text/html"})
        assert server.chunks.empty() and not server.request_line
        out.write("first")
        assert split_prelude(server.next_chunk())[0]["headers"] == {"content-type": "text/html"}
        assert server.next_chunk() == b"first"
        out.close()


def error_callback_bytes(error_type: str) -> bytes:
    return json.dumps({"errorType": error_type}).encode()


def test_exception_before_first_write_sends_the_error_callback_not_a_stream():
    reported = (200, b'{"requestId": "req-1", "reported": true}')
    with CallbackRecorder(answer=reported) as server:
        with (
            pytest.raises(KeyError),
            callback.open_stream(server.event(), headers={"content-type": "text/html"}),
        ):
            raise KeyError("secret-in-the-message")
        assert server.done.wait(WAIT)
    assert server.request_line == b"POST /v1/callback/req-1 HTTP/1.1\r\n"
    assert server.headers["authorization"] == f"Bearer {TOKEN}"
    assert server.headers["content-type"] == "application/vnd.sssrd.render-error+json"
    assert server.headers["content-length"] == str(len(server.body))
    assert "transfer-encoding" not in server.headers
    assert server.body == error_callback_bytes("KeyError")  # the type, never the message
    assert server.extra_after_answer == b""


def test_abort_before_the_first_write_reports_an_error_instead_of_leaving_the_viewer_waiting():
    with CallbackRecorder(answer=(200, b'{"reported": true}')) as server:
        callback.open_stream(server.event()).abort()
        assert server.done.wait(WAIT)
    assert server.headers["content-type"] == "application/vnd.sssrd.render-error+json"
    assert server.body == error_callback_bytes("RuntimeError")


def test_refused_error_callback_does_not_hide_the_render_error():
    with CallbackRecorder(answer=(410, b'{"error": "gone"}')) as server:
        with pytest.raises(ZeroDivisionError), callback.open_stream(server.event()):
            raise ZeroDivisionError
        assert server.done.wait(WAIT)
    assert server.body == error_callback_bytes("ZeroDivisionError")


def test_report_error_sends_at_most_128_characters_of_the_type_and_returns_the_answer():
    class_name = "E" * 200
    error = type(class_name, (Exception,), {})("message")
    with CallbackRecorder(answer=(200, b'{"requestId": "req-1", "reported": true}')) as server:
        answer = callback.report_error(server.event(), error)
    assert answer == {"requestId": "req-1", "reported": True}
    assert server.body == error_callback_bytes("E" * 128)


def test_report_error_after_the_stream_was_claimed_raises_rejected():
    with (
        CallbackRecorder(answer=(409, b'{"error": "already streaming"}')) as server,
        pytest.raises(callback.CallbackRejected) as info,
    ):
        callback.report_error(server.event(), ValueError())
    assert info.value.status == 409


def test_helper_imports_only_the_standard_library_so_it_can_be_vendored():
    with open(sssrd.callback.__file__, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports would break a vendored copy"
            imported.add(node.module.split(".")[0])
    assert imported, "found no imports at all: the check is not looking at the module"
    assert imported <= sys.stdlib_module_names | {"__future__"}
