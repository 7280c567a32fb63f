"""The bundled demo renderer that `sssrd dev` invokes: a page that visibly streams in.

handler() opens a callback stream, sends a first screen (full <head> with inline CSS, over 4 KiB
so browsers start painting), then one line per chunk every `delay_ms`, then the closing tags.
Query parameters `lines` (0..1000) and `delay_ms` (0..10000) override the defaults. A path with
a dot in it (/favicon.ico, /robots.txt) gets a short 404 and no page, as the proof of concept's
handler does, so a browser's favicon fetch does not cost a render.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from typing import Any

from sssrd import callback

DEFAULT_LINES = 10
MAX_LINES = 1000
DEFAULT_DELAY_MS = 300
MAX_DELAY_MS = 10_000
FIRST_SCREEN_MIN_BYTES = 4096
NOT_FOUND_HEADERS = {"content-type": "text/plain; charset=utf-8", "cache-control": "no-store"}

_STYLE = """
:root { color-scheme: light dark; --accent: #d9480f; --muted: #868e96; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { padding: 2rem 1.5rem 1rem; border-bottom: 3px solid var(--accent); }
header h1 { margin: 0 0 .25rem; font-size: 1.8rem; letter-spacing: -.02em; }
header p { margin: 0; color: var(--muted); }
main { max-width: 48rem; margin: 0 auto; padding: 1.5rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: 0 0 1.5rem; }
dt { font-weight: 600; }
dd { margin: 0; font-family: ui-monospace, Menlo, monospace; word-break: break-all; }
section.explain { margin-bottom: 1.5rem; }
section.explain p { margin: .5rem 0; }
ol.lines { list-style: none; margin: 0; padding: 0; counter-reset: line; }
ol.lines li { counter-increment: line; padding: .4rem .75rem; margin: .25rem 0;
  border-left: 4px solid var(--accent); background: rgba(217, 72, 15, .08);
  animation: arrive .4s ease-out; }
ol.lines li::before { content: counter(line) ". "; font-weight: 600; }
ol.lines li .at { float: right; color: var(--muted); font-size: .85em; }
footer { margin-top: 2rem; color: var(--muted); font-size: .9em; }
@keyframes arrive { from { opacity: 0; transform: translateY(-4px); } to { opacity: 1; } }
"""

_EXPLANATION = """
<section class="explain">
<p>This page is rendered by a Lambda function and streamed to you through <strong>sssrd</strong>,
the streaming server-side rendering daemon. sssrd held your connection, invoked the function
asynchronously, and the function is now posting the page back to sssrd in chunks; every chunk is
written to your browser the moment it arrives.</p>
<p>What you are reading is the first chunk: the whole <code>&lt;head&gt;</code> with its styles and
a first screen of content, large enough that browsers start painting before the rest exists. The
lines below arrive one chunk at a time. Close the tab half-way and the render stops: sssrd closes
the callback connection, and the function's next write raises <code>ViewerGone</code>.</p>
<p>Try <code>?lines=50&amp;delay_ms=100</code> for a longer stream, or <code>?delay_ms=0</code> to
see the whole page at once.</p>
</section>
"""


def handler(event: Mapping[str, Any], context: object) -> dict[str, Any]:
    """Lambda entry point: stream the demo page to sssrd; stop quietly if the viewer leaves."""
    params = event.get("queryStringParameters") or {}
    lines = _bounded_int(params, "lines", DEFAULT_LINES, MAX_LINES)
    delay = _bounded_int(params, "delay_ms", DEFAULT_DELAY_MS, MAX_DELAY_MS) / 1000
    request_id = str((event.get("requestContext") or {}).get("requestId", ""))
    if "." in _request_path(event):
        callback.respond(event, "not found\n", status=404, headers=NOT_FOUND_HEADERS)
        return {"requestId": request_id, "lines": 0, "viewerGone": False}
    started = time.monotonic()
    sent = 0
    headers = {"content-type": "text/html; charset=utf-8", "cache-control": "no-store"}
    try:
        with callback.open_stream(event, headers=headers) as out:
            out.write(first_screen(_request_path(event), request_id, lines))
            for number in range(1, lines + 1):
                if delay:
                    time.sleep(delay)
                out.write(line(number, lines, time.monotonic() - started))
                sent = number
            out.write(closing())
    except callback.ViewerGone:
        print(f"sssrd demo: viewer left after {sent} of {lines} lines (request {request_id})")
        return {"requestId": request_id, "lines": sent, "viewerGone": True}
    return {"requestId": request_id, "lines": sent, "viewerGone": False}


def first_screen(path: str, request_id: str, lines: int) -> str:
    """The opening chunk: head, styles and a first screen, padded to at least 4 KiB."""
    page = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>sssrd demo: {html.escape(path)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        "<body>\n<header><h1>sssrd streaming demo</h1>"
        f"<p>{lines} lines follow, each in its own chunk.</p></header>\n<main>\n"
        f"<dl><dt>Path</dt><dd>{html.escape(path)}</dd>"
        f"<dt>Request id</dt><dd>{html.escape(request_id)}</dd></dl>\n"
        f'{_EXPLANATION}<ol class="lines">\n'
    )
    shortfall = FIRST_SCREEN_MIN_BYTES - len(page.encode("utf-8"))
    if shortfall > 0:
        # Some browsers wait for a few KiB before painting anything.
        page += "<!--" + " " * max(shortfall - 8, 0) + "-->\n"
    return page


def line(number: int, total: int, elapsed: float) -> str:
    """One streamed line: its own chunk."""
    return (
        f'<li class="line">Line {number} of {total}<span class="at">+{elapsed:.3f} s</span></li>\n'
    )


def closing() -> str:
    """The last chunk: closes what first_screen opened."""
    return "</ol>\n<footer>Rendered by sssrd.demo.</footer>\n</main>\n</body>\n</html>\n"


def _bounded_int(params: Mapping[str, Any], name: str, default: int, maximum: int) -> int:
    """An integer query parameter clamped to 0..maximum; the default if absent or not a number."""
    try:
        value = int(str(params.get(name, default)).strip())
    except ValueError:
        return default
    return min(max(value, 0), maximum)


def _request_path(event: Mapping[str, Any]) -> str:
    http_context = (event.get("requestContext") or {}).get("http") or {}
    return str(event.get("rawPath") or http_context.get("path") or "/")
