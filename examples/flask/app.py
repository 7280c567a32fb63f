"""A Flask page streamed through sssrd with `stream_template`: the header paints at once, each
section when its data arrives, and a viewer who leaves stops the template's generator at the
next section (PEP 3333's close()).

The one line that puts it behind sssrd is the last one; `build.sh` makes the Lambda zip
(handler `app.handler`).
"""

from __future__ import annotations

import time

from flask import Flask, request, stream_template

from sssrd.callback import wsgi

SECTIONS = ("news", "weather", "sport")


def load_section(name: str, delay_s: float) -> list[str]:
    """Stands in for a slow data call (a database query, another service)."""
    time.sleep(delay_s)
    return [f"{name} story {number}" for number in range(1, 4)]


app = Flask(__name__)


@app.get("/")
def page() -> object:
    delay_s = int(request.args.get("delay_ms", "1000")) / 1000

    def load(name: str) -> list[str]:
        return load_section(name, delay_s)

    return stream_template("page.html", sections=SECTIONS, load=load)


handler = wsgi.handler(app)
