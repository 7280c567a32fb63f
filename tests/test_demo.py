"""The bundled demo renderer, run against test_callback_helper's real recording server."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from harness import daemon, http_get
from test_callback_helper import GONE_410, CallbackRecorder, split_prelude

from sssrd import demo

VOID_ELEMENTS = {"meta", "link", "br", "img", "hr", "input"}


class TagBalance(HTMLParser):
    """Checks that every element is closed, in order, and that there is a doctype."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.doctype = ""
        self.errors: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag not in VOID_ELEMENTS:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.errors.append(f"unexpected </{tag}>")


def assert_valid_html(page: str) -> None:
    checker = TagBalance()
    checker.feed(page)
    checker.close()
    assert checker.doctype.lower() == "doctype html"
    assert checker.errors == []
    assert checker.open == []


def demo_event(server: CallbackRecorder, path: str = "/demo", request_id: str = "req-1", **query):
    return server.event(
        rawPath=path,
        queryStringParameters=query,
        requestContext={"requestId": request_id, "http": {"method": "GET", "path": path}},
    )


def run_demo(path: str = "/demo", request_id: str = "req-1", **query) -> tuple[dict, list[bytes]]:
    with CallbackRecorder() as server:
        result = demo.handler(demo_event(server, path, request_id, **query), None)
        chunks = server.all_chunks()
    assert server.saw_last_chunk is True
    return result, chunks


def test_demo_streams_big_first_screen_then_one_chunk_per_line_then_closing_tags():
    result, chunks = run_demo(lines="3", delay_ms="0")
    prelude, rest = split_prelude(chunks[0])
    assert prelude["statusCode"] == 200
    assert prelude["headers"]["content-type"].startswith("text/html")
    assert rest == b""
    first, *lines, last = chunks[1:]
    assert len(first) >= 4096
    assert b"</head>" in first
    assert len(lines) == 3
    assert all(chunk.count(b'<li class="line">') == 1 for chunk in lines)
    assert b"</html>" in last
    assert_valid_html(b"".join(chunks[1:]).decode())
    assert result == {"requestId": "req-1", "lines": 3, "viewerGone": False}


def test_demo_shows_path_and_request_id_html_escaped():
    hostile = '/"><script>alert(1)</script>'
    _, chunks = run_demo(path=hostile, request_id="<b>id</b>&", lines="0", delay_ms="0")
    page = b"".join(chunks[1:]).decode()
    assert "<script>" not in page and "<b>id" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;id&lt;/b&gt;&amp;" in page
    assert_valid_html(page)


def test_demo_ignores_bad_parameters_and_clamps_out_of_range_ones():
    result, chunks = run_demo(lines="many", delay_ms="-5")
    assert result["lines"] == demo.DEFAULT_LINES
    assert len(chunks) == 1 + 1 + demo.DEFAULT_LINES + 1


@pytest.mark.parametrize(
    "raw, expected",
    [("7", 7), (" 12 ", 12), ("-3", 0), ("5000", 1000), ("1e3", 10), ("", 10), (None, 10)],
)
def test_lines_parameter_is_clamped_or_defaulted(raw, expected):
    params = {} if raw is None else {"lines": raw}
    assert demo._bounded_int(params, "lines", demo.DEFAULT_LINES, demo.MAX_LINES) == expected


def test_demo_returns_quietly_when_the_viewer_leaves(capsys):
    with CallbackRecorder(hang_up_after_chunks=2, answer_before_hang_up=GONE_410) as server:
        result = demo.handler(demo_event(server, lines="1000", delay_ms="0"), None)
        assert server.done.wait(10)
    assert result["viewerGone"] is True
    assert server.saw_last_chunk is None  # hung up mid-body, never saw the end
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and "viewer left" in printed[0]


def test_demo_result_is_json_serialisable():
    result, _ = run_demo(lines="1", delay_ms="0")
    assert json.loads(json.dumps(result)) == result


def test_demo_answers_paths_with_a_dot_with_404_without_rendering():
    with CallbackRecorder() as server:
        result = demo.handler(demo_event(server, "/favicon.ico"), None)
        assert server.done.wait(10)
    prelude, rest = split_prelude(server.body)
    assert prelude["statusCode"] == 404
    assert rest == b"not found\n"
    assert result == {"requestId": "req-1", "lines": 0, "viewerGone": False}


@pytest.mark.daemon
def test_favicon_through_the_daemon_costs_no_render(conductor):
    with daemon(conductor, "--handler=sssrd.demo:handler") as sssrd:
        status, headers, body = http_get(sssrd.viewer, "/favicon.ico")
        assert (status, body) == (404, b"not found\n")
        assert headers["content-type"].startswith("text/plain")
        assert sssrd.access(path="/favicon.ico")["status"] == 404
        status, _, page = http_get(sssrd.viewer, "/?lines=1&delay_ms=0")
        assert status == 200 and page.endswith(b"</html>\n")
