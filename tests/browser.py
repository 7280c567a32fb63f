"""A small DevTools-protocol driver for Debian's headless Chromium, for the browser tests.

`Browser` starts /usr/bin/chromium (fresh profile, no sandbox as root, no background
networking, its lifetime capped by coreutils `timeout`), reads the browser's websocket URL from
its stderr and speaks CDP over one websocket (the `websockets` sync client). A reader thread
routes answers to their callers by id. `Page` is one tab attached in flat
session mode: navigate, evaluate, wait for a DOM state, screenshot, close.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any

from PIL import Image
from websockets.sync.client import ClientConnection, connect

CHROMIUM = "/usr/bin/chromium"
LIFETIME_S = 120  # Chromium is killed after this, whatever happens to the test process
WAIT = 15.0
# Chromium's cold start: a few seconds idle, much longer on a loaded 2-core machine (seen > 15 s).
STARTUP_WAIT = 60.0
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # as root
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",  # this machine's network is closed
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1024,768",
)
DEVTOOLS_LINE = re.compile(r"DevTools listening on (ws://\S+)")
# True once Chromium has painted the document's first text or image.
FIRST_CONTENTFUL_PAINT = (
    "performance.getEntriesByType('paint').some(e => e.name === 'first-contentful-paint')"
)


class CDPError(Exception):
    """Chromium answered a command with an error."""


class Browser:
    """One headless Chromium and its browser-level DevTools connection."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="sssrd-chromium-")
        self.process = subprocess.Popen(
            [
                "timeout",
                "--kill-after=5",
                str(LIFETIME_S),
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.resources = contextlib.ExitStack()
        self.ws: ClientConnection = self.resources.enter_context(
            connect(self._devtools_url(), max_size=None, open_timeout=WAIT)
        )
        self.ids = itertools.count(1)
        self.answers: dict[int, dict[str, Any]] = {}
        self.condition = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _devtools_url(self) -> str:
        assert self.process.stderr is not None
        lines: list[str] = []
        found: list[str] = []

        def scan() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                lines.append(line)
                if match := DEVTOOLS_LINE.search(line):
                    found.append(match[1])
                    break
            # Keep draining so Chromium never blocks on a full stderr pipe.
            threading.Thread(target=self.process.stderr.read, daemon=True).start()

        reader = threading.Thread(target=scan, daemon=True)
        reader.start()
        reader.join(STARTUP_WAIT)
        assert found, f"Chromium printed no DevTools URL: {''.join(lines)[-2000:]}"
        return found[0]

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the connection closes with the browser
            for text in self.ws:
                message = json.loads(text)
                if "id" not in message:
                    continue  # an event: the tests ask for state instead of following events
                with self.condition:
                    self.answers[message["id"]] = message
                    self.condition.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> Any:
        """Send one command and wait for its answer's result."""
        command_id = next(self.ids)
        message: dict[str, Any] = {"id": command_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        with self.condition:
            answered = self.condition.wait_for(lambda: command_id in self.answers, WAIT)
            assert answered, f"no answer to {method}"
            answer = self.answers.pop(command_id)
        if "error" in answer:
            raise CDPError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def new_page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        return Page(self, target, session["sessionId"])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        with contextlib.suppress(Exception):
            self.resources.close()
        try:
            self.process.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    """One tab, driven through its own flat-mode session."""

    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser = browser
        self.target = target
        self.session = session

    def send(self, method: str, params: dict | None = None) -> Any:
        return self.browser.send(method, params, self.session)

    def navigate(self, url: str) -> None:
        """Start loading url; returns once the response head has been received."""
        result = self.send("Page.navigate", {"url": url})
        assert "errorText" not in result, result

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = WAIT) -> Any:
        """Until the expression is truthy in the page (a DOM state no event announces)."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)
        return value

    def screenshot(self, path: str | None = None) -> Image.Image:
        """What the tab shows now (Chromium renders a fresh frame for it)."""
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        if path is not None:
            with open(path, "wb") as file:
                file.write(data)
        return Image.open(io.BytesIO(data)).convert("RGB")

    def close(self) -> None:
        """Close the tab, as a viewer would."""
        self.browser.send("Target.closeTarget", {"targetId": self.target})


def share_of_colour(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 12) -> float:
    """The fraction of pixels within `tolerance` of `colour` on every channel."""
    width, height = image.size
    counts = image.getcolors(maxcolors=width * height) or []
    close = sum(
        count
        for count, pixel in counts
        if all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))
    )
    return close / (width * height)
