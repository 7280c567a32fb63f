"""Handlers for the browser tests, run by the daemon's local invoker.

`paced_demo` sends the bundled demo's own page (sssrd.demo's first screen, lines and closing)
but paces it by the test's Conductor instead of sleeps: line N is written only after the test
releases `lineN`, so the test can look at the browser while later content is not yet sent.
"""

from __future__ import annotations

import time
from typing import Any

from scenarios import Conductor

from sssrd import callback, demo


def handler(event: dict, context: Any) -> None:
    if event["rawPath"] != "/demo":  # e.g. the browser's /favicon.ico
        callback.respond(event, "not found", status=404, headers={"content-type": "text/plain"})
        return
    query = event.get("queryStringParameters") or {}
    conductor = Conductor(query.get("tag", "paced_demo"))
    lines = int(query.get("lines", "3"))
    request_id = event["requestContext"]["requestId"]
    started = time.monotonic()
    headers = {"content-type": "text/html; charset=utf-8", "cache-control": "no-store"}
    try:
        with callback.open_stream(event, headers=headers) as out:
            out.write(demo.first_screen(event["rawPath"], request_id, lines))
            for number in range(1, lines + 1):
                conductor.wait(f"line{number}")
                out.write(demo.line(number, lines, time.monotonic() - started))
            out.write(demo.closing())
    except callback.ViewerGone:
        conductor.report("viewer_gone")
        return
    conductor.report("done")
