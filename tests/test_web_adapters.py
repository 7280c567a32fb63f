"""FastAPI, Django and Flask apps, wrapped by one line each, stream through the real daemon.

The examples in examples/{fastapi,django,flask} run under the daemon's local invoker
(tests/web_apps.py gates their slow data calls on the test): the page head and first section
reach the viewer while the next section's data is still loading, and a viewer who leaves stops
the render (FastAPI and Django: the pending data call is cancelled at once; Flask: the template
generator is closed at its next section, and no later section is loaded).
"""

from __future__ import annotations

import h11
import pytest
from harness import Conductor, Daemon, Viewer, daemon, header

pytestmark = pytest.mark.daemon

APPS = ["fastapi", "django", "flask"]
ASYNC_APPS = {"fastapi", "django"}  # they hear http.disconnect at once


@pytest.fixture(scope="module")
def web(conductor: Conductor):
    with daemon(conductor, "--handler=web_apps:handler") as running:
        yield running


def read_until(viewer: Viewer, marker: bytes, seen: bytes = b"") -> bytes:
    while marker not in seen:
        piece = viewer.chunk()
        assert piece is not None, f"the body ended before {marker!r}"
        seen += piece
    return seen


@pytest.mark.parametrize("app", APPS)
def test_first_section_reaches_the_viewer_before_the_next_is_loaded(
    web, conductor, app, tag_prefix=""
):
    tag = f"{tag_prefix}{app}-progressive"
    viewer = Viewer(web.viewer)
    viewer.send("GET", f"/?app={app}&tag={tag}")
    conductor.wait_waiting(f"{tag}:news")
    head = viewer.head()
    assert head.status_code == 200
    assert header(head, b"content-type") == b"text/html; charset=utf-8"
    seen = read_until(viewer, b'<h1 id="first">Today</h1>')  # the news is still loading
    conductor.release(f"{tag}:news")
    seen = read_until(viewer, b"news story 3", seen)
    conductor.wait_waiting(f"{tag}:weather")  # weather's data is not loaded yet ...
    assert b"weather story" not in seen  # ... and the viewer already has the news
    conductor.release(f"{tag}:weather")
    conductor.release(f"{tag}:sport")
    seen += viewer.body()
    assert seen.rstrip().endswith(b"</html>") and b"sport story 3" in seen
    assert conductor.report(tag, "returned")
    assert web.access(request_id=header(head, b"x-request-id").decode())["status"] == 200


@pytest.mark.parametrize("app", APPS)
def test_viewer_leaving_stops_the_apps_generator(web: Daemon, conductor, app, tag_prefix=""):
    tag = f"{tag_prefix}{app}-leaves"
    viewer = Viewer(web.viewer)
    viewer.send("GET", f"/?app={app}&tag={tag}")
    conductor.release(f"{tag}:news")
    head = viewer.head()
    read_until(viewer, b"news story 3")
    conductor.wait_waiting(f"{tag}:weather")
    viewer.close()
    web.access(request_id=header(head, b"x-request-id").decode())  # sssrd saw the viewer go
    if app in ASYNC_APPS:
        # http.disconnect reached Starlette at once: the data call it waited on was cancelled.
        assert conductor.report(tag, "cancelled")["section"] == "weather"
    conductor.release(f"{tag}:weather")  # a sync app learns it at its next write
    if app == "flask":
        assert conductor.report(tag, "closed")  # the response iterable's close(), PEP 3333
    assert conductor.report(tag, "returned")
    assert conductor.count(tag, "loading") == 2  # sport was never loaded


@pytest.mark.parametrize("app", ["asgi-fails", "wsgi-fails"])
def test_app_failing_before_its_first_byte_gives_the_viewer_502_at_once(web, conductor, app):
    tag = f"{app}-before"
    viewer = Viewer(web.viewer)
    head, body = viewer.get(f"/?app={app}&tag={tag}")
    assert head.status_code == 502
    assert b"LookupError" not in body and b"secret" not in body
    access = web.access(request_id=header(head, b"x-request-id").decode())
    assert (access["outcome"], access["error_type"]) == ("render_error", "LookupError")
    assert conductor.report(tag, "raised")["error"] == "LookupError"


@pytest.mark.parametrize("app", ["asgi-fails", "wsgi-fails"])
def test_app_failing_after_its_first_byte_cuts_the_viewers_response(web, conductor, app):
    tag = f"{app}-after"
    target = f"/?app={app}&tag={tag}&after=1"
    assert_cut_after_first_piece(web, conductor, target, (200, b"partial"), f"{tag}:fail")
    assert conductor.report(tag, "raised")["error"] == "LookupError"


def assert_cut_after_first_piece(
    sssrd: Daemon, conductor: Conductor, target: str, first: tuple[int, bytes], release: str
) -> None:
    """The viewer gets the head's status and the first piece; once `release` lets the render
    fail, the response is closed without its final chunk."""
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", target)
    assert viewer.head().status_code == first[0]
    assert viewer.chunk() == first[1]
    conductor.release(release)
    with pytest.raises(h11.RemoteProtocolError):  # closed without the final chunk
        viewer.chunk()
