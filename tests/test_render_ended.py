"""How a RequestResponse invoke's answer reads as the render's end, for every shape Lambda gives:
a return, an exception, a timeout (new and old wording), an out-of-memory or init failure, and
answers too mangled to read. The function's message never survives into the result."""

from __future__ import annotations

import json

import pytest

from sssrd.httpclient import Reply
from sssrd.invokers.aws import render_ended
from sssrd.invokers.base import RenderEnded

UNHANDLED = [(b"x-amz-function-error", b"Unhandled")]


def answer(body: object, headers: list[tuple[bytes, bytes]] = UNHANDLED) -> Reply:
    return Reply(200, headers, body if isinstance(body, bytes) else json.dumps(body).encode())


@pytest.mark.parametrize(
    ("reply", "ended"),
    [
        (answer({"statusCode": 200}, headers=[]), RenderEnded()),
        (answer(b"null", headers=[]), RenderEnded()),
        (
            answer({"errorType": "KeyError", "errorMessage": "password hunter2", "trace": []}),
            RenderEnded("KeyError"),
        ),
        (
            answer(
                {
                    "errorType": "Sandbox.Timedout",
                    "errorMessage": "RequestId: 1 Error: Task timed out after 3.00 seconds",
                }
            ),
            RenderEnded("Sandbox.Timedout", timed_out=True),
        ),
        (  # the older runtimes' wording: no errorType
            answer({"errorMessage": "2026-12-06T04:00:00Z 1 Task timed out after 3.00 seconds"}),
            RenderEnded("Sandbox.Timedout", timed_out=True),
        ),
        (
            answer({"errorType": "Runtime.OutOfMemory", "errorMessage": "signal: killed"}),
            RenderEnded("Runtime.OutOfMemory"),
        ),
        (
            answer({"errorType": "Runtime.ImportModuleError", "errorMessage": "No module"}),
            RenderEnded("Runtime.ImportModuleError"),
        ),
        (answer(b"<html>"), RenderEnded("Unhandled")),
        (answer(["KeyError"]), RenderEnded("Unhandled")),
        (
            answer({"errorType": "Bad\nType\u00e9" + "x" * 200}),
            RenderEnded("Bad?Type?" + "x" * 119),
        ),
    ],
    ids=[
        "returned",
        "returned-null",
        "raised",
        "timed-out",
        "timed-out-old-wording",
        "out-of-memory",
        "init-error",
        "not-json",
        "not-an-object",
        "unprintable-and-long",
    ],
)
def test_an_answer_reads_as_the_renders_end(reply: Reply, ended: RenderEnded) -> None:
    assert render_ended(reply) == ended
    assert "hunter2" not in repr(render_ended(reply))
