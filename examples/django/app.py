"""A Django page streamed through sssrd: an async view yields the page head at once, then each
section rendered from a Django template when its data arrives; a viewer who leaves makes
Django's ASGI handler cancel the view at the data call it was waiting on.

Single-file Django (settings in code). The one line that puts it behind sssrd is the last one;
`build.sh` makes the Lambda zip (handler `app.handler`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="not-used-no-sessions-or-signing",  # noqa: S106 (no session or signing app)
    TEMPLATES=[
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "DIRS": [Path(__file__).parent / "templates"],
        }
    ],
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402 (after settings)
from django.http import HttpRequest, StreamingHttpResponse  # noqa: E402
from django.template.loader import render_to_string  # noqa: E402
from django.urls import path  # noqa: E402

from sssrd.callback import asgi  # noqa: E402

SECTIONS = ("news", "weather", "sport")


async def load_section(name: str, delay_s: float) -> list[str]:
    """Stands in for a slow data call (a database query, another service)."""
    await asyncio.sleep(delay_s)
    return [f"{name} story {number}" for number in range(1, 4)]


async def page(request: HttpRequest) -> StreamingHttpResponse:
    delay_s = int(request.GET.get("delay_ms", "1000")) / 1000

    async def render() -> AsyncIterator[str]:
        yield render_to_string("head.html")
        for name in SECTIONS:
            stories = await load_section(name, delay_s)
            yield render_to_string("section.html", {"name": name, "stories": stories})
        yield "</body>\n</html>\n"

    return StreamingHttpResponse(render(), content_type="text/html; charset=utf-8")


urlpatterns = [path("", page)]

handler = asgi.handler(get_asgi_application())
