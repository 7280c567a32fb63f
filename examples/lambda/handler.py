"""Example render Lambda for sssrd: Python runtime, no dependencies but the vendored helper.

Deploy the zip that build.sh makes (handler.py + sssrd_callback.py), handler "handler.handler".
sssrd invokes it asynchronously; it streams its page back to the callback URL in the event.
EXAMPLE_DELAY_MS (default 200) paces the chunks so the streaming is visible.
"""

from __future__ import annotations

import html
import os
import time
from typing import Any

import sssrd_callback as callback


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "sssrd" not in event:
        return {"error": "not invoked by sssrd (no 'sssrd' key in the event)"}
    delay = int(os.environ.get("EXAMPLE_DELAY_MS", "200")) / 1000
    path = html.escape(event.get("rawPath", "/"))
    headers = {"content-type": "text/html; charset=utf-8", "cache-control": "no-store"}
    written = 0
    try:
        with callback.open_stream(event, headers=headers) as out:
            out.write(
                "<!doctype html><html><head><meta charset='utf-8'><title>sssrd example</title>"
                f"</head><body><h1>Rendered by Lambda</h1><p>You asked for <code>{path}</code>.</p>"
            )
            for number in range(1, 6):
                time.sleep(delay)
                out.write(f"<p>Chunk {number}, streamed as it was rendered.</p>")
                written += 1
            out.write("</body></html>")
    except callback.ViewerGone:
        print(f"viewer left after {written} chunks; render stopped")
    return {"chunks": written}
