"""Progressive rendering proven in a real browser: headless Chromium through sssrd.

For the bundled demo page and the React example, the first content is painted (Chromium's
first-contentful-paint entry, the DOM, and the colours of a screenshot) while the later
content has not been sent yet, because its handler is held by the test (Conductor, HeldData);
once released the page completes. Closing the tab mid-stream makes the Node helper's stream
fail with ViewerGone and React's render stop (its pending data request is cancelled).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import FIRST_CONTENTFUL_PAINT, Browser, Page, share_of_colour
from harness import Daemon, daemon
from node_lambda import CREDENTIALS, HELD_FEATURED, HeldData, NodeLambda

pytestmark = [pytest.mark.browser, pytest.mark.daemon, pytest.mark.system_tools]

DEMO_ACCENT = (0xD9, 0x48, 0x0F)
REACT_HEADER = (0x1C, 0x7E, 0xD6)
REACT_SKELETON = (0xAD, 0xB5, 0xBD)
REACT_FEATURED = (0x2F, 0x9E, 0x44)
ANIMATIONS_DONE = "document.getAnimations().every(a => a.playState === 'finished')"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    running = Browser()
    yield running
    running.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    tab = browser.new_page()
    yield tab
    tab.close()


@pytest.fixture(scope="module")
def react_lambda(react_zip: Path, held: HeldData) -> Iterator[NodeLambda]:
    node = NodeLambda(react_zip, DATA_URL=held.url)
    yield node
    print(node.stop())  # the handler's own logs, shown if a test failed


@pytest.fixture(scope="module")
def react_sssrd(react_lambda: NodeLambda) -> Iterator[Daemon]:
    with daemon(None, *react_lambda.daemon_args(), **CREDENTIALS) as running:
        yield running


def url(sssrd: Daemon, target: str) -> str:
    host, port = sssrd.viewer
    return f"http://{host}:{port}{target}"


def test_demo_page_paints_its_first_screen_before_its_lines_are_sent(conductor, page, tmp_path):
    with daemon(conductor, "--handler=browser_scenarios:handler") as sssrd:
        page.navigate(url(sssrd, "/demo?tag=browser-demo&lines=3"))
        conductor.wait_waiting("browser-demo:line1")  # line 1 is not written until released
        page.wait_for(FIRST_CONTENTFUL_PAINT, "the first screen to be painted")
        state = page.evaluate(
            "({ready: document.readyState, title: document.querySelector('header h1').textContent,"
            " lines: document.querySelectorAll('li.line').length})"
        )
        assert state == {"ready": "loading", "title": "sssrd streaming demo", "lines": 0}
        first = page.screenshot(str(tmp_path / "demo-first-screen.png"))
        assert share_of_colour(first, DEMO_ACCENT) > 0.002  # the header's rule is on screen

        conductor.release("browser-demo:line1")
        page.wait_for("document.querySelectorAll('li.line').length === 1", "line 1")
        assert page.evaluate("document.readyState") == "loading"  # lines 2 and 3 not sent
        for number in (2, 3):
            conductor.release(f"browser-demo:line{number}")
        page.wait_for("document.readyState === 'complete'", "the end of the page")
        conductor.report("browser-demo", "done")
        assert page.evaluate("document.querySelectorAll('li.line').length") == 3
        assert "Rendered by sssrd.demo" in page.evaluate(
            "document.querySelector('footer').textContent"
        )
        page.wait_for(ANIMATIONS_DONE, "the lines' entrance animations")
        final = page.screenshot(str(tmp_path / "demo-complete.png"))
        assert share_of_colour(final, DEMO_ACCENT) > share_of_colour(first, DEMO_ACCENT)


def test_react_shell_paints_with_its_fallback_before_the_suspended_data_resolves(
    react_sssrd, react_lambda, held, page, tmp_path
):
    before = held.requested
    page.navigate(url(react_sssrd, "/"))
    held.wait_requested(before + 1)  # the render is waiting on its data: nothing later exists
    page.wait_for(FIRST_CONTENTFUL_PAINT, "the shell to be painted")
    state = page.evaluate(
        "({ready: document.readyState, skeleton: !!document.getElementById('skeleton'),"
        " featured: !!document.getElementById('featured')})"
    )
    assert state == {"ready": "loading", "skeleton": True, "featured": False}
    shell = page.screenshot(str(tmp_path / "react-shell.png"))
    assert share_of_colour(shell, REACT_HEADER) > 0.02
    assert share_of_colour(shell, REACT_SKELETON) > 0.05
    assert share_of_colour(shell, REACT_FEATURED) == 0

    held.release()
    page.wait_for(
        "document.readyState === 'complete' && !!document.getElementById('featured')"
        " && !document.getElementById('skeleton')",
        "React to stream in the featured block",
    )
    assert (
        page.evaluate("document.querySelector('#featured p').textContent")
        == (HELD_FEATURED["text"])
    )
    complete = page.screenshot(str(tmp_path / "react-complete.png"))
    assert share_of_colour(complete, REACT_FEATURED) > 0.02
    assert share_of_colour(complete, REACT_SKELETON) < 0.005  # gone; only text edges are grey
    access = react_sssrd.access(path="/")
    assert (access["status"], access["outcome"]) == (200, "ok")
    settled = react_lambda.settled(access["request_id"])
    assert settled["error"] is None
    assert settled["result"]["viewerGone"] is False
    assert held.outcome(before + 1) == "answered"


def test_closing_the_tab_mid_stream_fails_the_node_stream_and_stops_the_render(
    react_sssrd, react_lambda, held, browser
):
    tab = browser.new_page()
    before = held.requested
    tab.navigate(url(react_sssrd, "/?leaving"))
    held.wait_requested(before + 1)
    tab.wait_for("!!document.getElementById('skeleton')", "the shell")
    tab.close()  # the viewer leaves while React still waits for the data
    access = react_sssrd.wait_line(
        lambda line: line.get("type") == "access" and line.get("outcome") == "viewer_abort"
    )
    settled = react_lambda.settled(access["request_id"])
    assert settled["error"] is None
    assert settled["result"] == {"viewerGone": True}  # the helper's stream failed with ViewerGone
    assert held.outcome(before + 1) == "cancelled"  # abort() reached the render's data request


def test_fastapi_example_paints_its_first_section_before_the_slow_ones_arrive(conductor, browser):
    """examples/fastapi, wrapped by its one line, in Chromium: the heading paints while the
    news data call is held; each section appears when its data is released; closing the tab
    while the weather data is held cancels that data call at once."""
    page = browser.new_page()  # closed by the test: the viewer leaving is what it checks
    with daemon(conductor, "--handler=web_apps:handler") as sssrd:
        page.navigate(url(sssrd, "/?app=fastapi&tag=browser-fastapi"))
        conductor.wait_waiting("browser-fastapi:news")  # no section's data has been loaded
        page.wait_for(FIRST_CONTENTFUL_PAINT, "the heading to be painted")
        state = page.evaluate(
            "({ready: document.readyState, title: document.querySelector('h1').textContent,"
            " stories: document.querySelectorAll('li').length})"
        )
        assert state == {"ready": "loading", "title": "Today", "stories": 0}
        conductor.release("browser-fastapi:news")
        page.wait_for("document.querySelectorAll('#news li').length === 3", "the news section")
        conductor.wait_waiting("browser-fastapi:weather")
        assert page.evaluate("document.querySelectorAll('#weather li').length") == 0
        page.close()
        assert conductor.report("browser-fastapi", "cancelled")["section"] == "weather"
        conductor.release("browser-fastapi:weather")
        assert conductor.report("browser-fastapi", "returned")
        assert conductor.count("browser-fastapi", "loading") == 2  # sport was never loaded
