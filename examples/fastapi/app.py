"""A FastAPI page streamed through sssrd: the header paints at once, each section when its data
arrives, and a viewer who leaves stops the render at the data call it was waiting on.

The one line that puts it behind sssrd is the last one; `build.sh` makes the Lambda zip
(handler `app.handler`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from sssrd.callback import asgi

SECTIONS = ("news", "weather", "sport")
templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(),
    enable_async=True,  # the template awaits each section's data as it renders
)


async def load_section(name: str, delay_s: float) -> list[str]:
    """Stands in for a slow data call (a database query, another service)."""
    await asyncio.sleep(delay_s)
    return [f"{name} story {number}" for number in range(1, 4)]


app = FastAPI()


@app.get("/")
async def page(delay_ms: int = 1000) -> StreamingResponse:
    async def load(name: str) -> list[str]:
        return await load_section(name, delay_ms / 1000)

    stream = templates.get_template("page.html").generate_async(sections=SECTIONS, load=load)
    return StreamingResponse(stream, media_type="text/html; charset=utf-8")


handler = asgi.handler(app)
