"""The FastAPI and Flask examples as a render Lambda (`web_apps:handler`), for the daemon's local
invoker and for the real runtime interface clients; requests without `?app=` go to scenarios.py.

Each example is loaded from examples/ unchanged, its own one-line `handler` included; only its
slow data call is replaced by one that reports to the test's Conductor and waits for the test to
release it (`<tag>:<section>`), so "the first section reached the viewer before the slow one
was loaded" is an ordering the test controls, not a race.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import scenarios
from scenarios import Conductor

from sssrd.callback import asgi, wsgi

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
current: dict[str, Conductor] = {}  # the conductor of the invocation in flight


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / name / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Flask finds its templates through its module
    spec.loader.exec_module(module)
    return module


def gated_load(name: str, delay_s: float) -> list[str]:
    conductor = current["conductor"]
    conductor.report("loading", section=name)
    conductor.wait(name)
    conductor.report("loaded", section=name)
    return [f"{name} story {number}" for number in range(1, 4)]


async def gated_load_async(name: str, delay_s: float) -> list[str]:
    conductor = current["conductor"]
    try:
        return await asyncio.to_thread(gated_load, name, delay_s)
    except asyncio.CancelledError:
        conductor.report("cancelled", section=name)
        raise


fastapi_example = load_example("fastapi")
fastapi_example.load_section = gated_load_async
django_example = load_example("django")
django_example.load_section = gated_load_async
flask_example = load_example("flask")
flask_example.load_section = gated_load


@flask_example.app.after_request
def report_close(response: Any) -> Any:
    """Shows that the adapter called the response iterable's close() (PEP 3333)."""
    conductor = current["conductor"]
    response.call_on_close(lambda: conductor.report("closed"))
    return response


async def asgi_fails(scope: dict, receive: Any, send: Any) -> None:
    """Fails before its response starts, or (?after=1) once the test saw its first body piece."""
    if scope["type"] != "http":
        return
    if b"after=1" in scope["query_string"]:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await asyncio.to_thread(current["conductor"].wait, "fail")
    raise LookupError("secret detail")


def wsgi_fails(environ: dict, start_response: Any) -> Any:
    start_response("200 OK", [("content-type", "text/plain")])
    if "after=1" in environ["QUERY_STRING"]:
        yield b"partial"
        current["conductor"].wait("fail")
    raise LookupError("secret detail")


HANDLERS = {
    "fastapi": fastapi_example.handler,
    "django": django_example.handler,
    "flask": flask_example.handler,
    "asgi-fails": asgi.handler(asgi_fails),
    "wsgi-fails": wsgi.handler(wsgi_fails),
}


def handler(event: dict, context: Any) -> None:
    query = event.get("queryStringParameters") or {}
    if "app" not in query:  # the helper's own scenarios, for runs under a runtime client
        scenarios.handler(event, context)
        return
    conductor = Conductor(query["tag"])
    current["conductor"] = conductor
    try:
        HANDLERS[query["app"]](event, context)
        conductor.report("returned")
    except BaseException as error:
        conductor.report("raised", error=type(error).__name__)
        raise
    finally:
        conductor.close()
