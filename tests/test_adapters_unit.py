"""The ASGI and WSGI adapters against a recording callback server (no daemon): the request an
app sees, one chunk per body piece, and errors before and after the first body byte."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import pytest
from test_callback_helper import CallbackRecorder, split_prelude

from sssrd.callback import asgi, wsgi

REPORTED = (200, b'{"requestId": "req-1", "reported": true}')


def event_for(server: CallbackRecorder, **extra: object) -> dict:
    return server.event(
        rawPath="/caf%C3%A9/x%2Fy",
        rawQueryString="a=1&b=%20",
        cookies=["one=1", "two=2"],
        headers={"host": "shop.test:8443", "x-forwarded-proto": "https", "x-many": "1,2"},
        requestContext={"http": {"method": "POST", "protocol": "HTTP/1.1", "sourceIp": "10.0.0.9"}},
        body=base64.b64encode(b"\xffbody").decode(),
        isBase64Encoded=True,
        **extra,
    )


def test_asgi_scope_and_body_come_from_the_event_and_each_body_message_is_one_chunk():
    seen: dict = {}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")  # servers carry on without it
        seen["scope"] = scope
        seen["request"] = await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [
                    (b"content-type", b"text/html"),
                    (b"set-cookie", b"a=b"),
                    (b"x-two", b"1"),
                    (b"x-two", b"2"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await send({"type": "http.response.body", "body": b"two", "more_body": False})

    with CallbackRecorder() as server:
        asgi.handler(app)(event_for(server), None)
        chunks = server.all_chunks()
    scope = seen["scope"]
    assert (scope["method"], scope["path"], scope["raw_path"]) == (
        "POST",
        "/café/x/y",
        b"/caf%C3%A9/x%2Fy",
    )
    assert scope["query_string"] == b"a=1&b=%20" and scope["scheme"] == "https"
    assert scope["server"] == ("shop.test", 8443) and scope["client"] == ("10.0.0.9", 0)
    assert (b"cookie", b"one=1; two=2") in scope["headers"]
    assert scope["asgi"]["version"] == "3.0" and scope["http_version"] == "1.1"
    assert seen["request"] == {"type": "http.request", "body": b"\xffbody", "more_body": False}
    prelude, _ = split_prelude(chunks[0])
    assert prelude == {
        "statusCode": 201,
        "headers": {"content-type": "text/html", "x-two": ["1", "2"]},
        "cookies": ["a=b"],
    }
    assert chunks[1:] == [b"one", b"two"] and server.saw_last_chunk is True


def test_asgi_lifespan_startup_runs_once_and_its_state_reaches_requests():
    startups = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            message = await receive()
            startups.append(message["type"])
            scope["state"]["db"] = "connected"
            await send({"type": "lifespan.startup.complete"})
            await receive()
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["state"]["db"].encode()})

    handle = asgi.handler(app)
    for _ in range(2):
        with CallbackRecorder() as server:
            handle(server.event(), None)
            assert server.all_chunks()[1:] == [b"connected"]
    assert startups == ["lifespan.startup"]


def raise_before_response(scope, receive, send):
    async def app():
        raise LookupError("secret detail")

    return app()


@pytest.mark.parametrize("wrap", ["asgi", "wsgi"])
def test_error_before_the_first_body_byte_sends_the_error_callback(wrap):
    def wsgi_app(environ, start_response):
        start_response("200 OK", [("content-type", "text/html")])
        raise LookupError("secret detail")

    handle = asgi.handler(raise_before_response) if wrap == "asgi" else wsgi.handler(wsgi_app)
    with CallbackRecorder(answer=REPORTED) as server:
        with pytest.raises(LookupError):
            handle(server.event(), None)
        assert server.done.wait(10)
    assert server.headers["content-type"] == "application/vnd.sssrd.render-error+json"
    assert json.loads(server.body) == {"errorType": "LookupError"}


@pytest.mark.parametrize("wrap", ["asgi", "wsgi"])
def test_error_after_the_first_body_byte_cuts_the_stream(wrap):
    async def asgi_app(scope, receive, send):
        if scope["type"] == "lifespan":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise LookupError("late")

    def wsgi_app(environ, start_response):
        start_response("200 OK", [])
        yield b"partial"
        raise LookupError("late")

    handle = asgi.handler(asgi_app) if wrap == "asgi" else wsgi.handler(wsgi_app)
    with CallbackRecorder() as server:
        with pytest.raises(LookupError):
            handle(server.event(), None)
        chunks = server.all_chunks()
    assert chunks[1:] == [b"partial"] and server.saw_last_chunk is False


def test_wsgi_environ_comes_from_the_event_and_each_item_is_one_chunk():
    seen: dict = {}

    def app(environ, start_response):
        seen.update(environ)
        seen["body"] = environ["wsgi.input"].read()
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Set-Cookie", "a=b")])
        return [b"one", b"", b"two"]

    with CallbackRecorder() as server:
        wsgi.handler(app)(event_for(server), None)
        chunks = server.all_chunks()
    assert seen["REQUEST_METHOD"] == "POST"
    assert seen["PATH_INFO"] == "/café/x/y".encode().decode("latin-1")
    assert seen["QUERY_STRING"] == "a=1&b=%20" and seen["wsgi.url_scheme"] == "https"
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == ("shop.test", "8443")
    assert seen["HTTP_COOKIE"] == "one=1; two=2" and seen["HTTP_X_MANY"] == "1,2"
    assert seen["REMOTE_ADDR"] == "10.0.0.9" and seen["body"] == b"\xffbody"
    prelude, _ = split_prelude(chunks[0])
    assert prelude == {
        "statusCode": 404,
        "headers": {"content-type": "text/plain"},
        "cookies": ["a=b"],
    }
    assert chunks[1:] == [b"one", b"two"]


def test_asgi_reuses_one_event_loop_whatever_thread_calls_the_handler():
    loops = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return
        loops.append(asyncio.get_running_loop())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    handle = asgi.handler(app)

    def invoke() -> None:
        with CallbackRecorder() as server:
            handle(server.event(), None)
            assert server.all_chunks()[1:] == [b"x"]

    invoke()  # the calling thread, then another one, as a runtime may do
    caller = threading.Thread(target=invoke)
    caller.start()
    caller.join(10)
    assert len(loops) == 2 and loops[0] is loops[1] and loops[0].is_running()
