"""The body path: spliced or copied, every byte arrives intact, framed right, with backpressure."""

from __future__ import annotations

import hashlib

import h11
import pytest
from harness import Viewer, daemon, header
from scenarios import pattern

pytestmark = pytest.mark.daemon

MiB = 1 << 20


def fetch(sssrd, target: str) -> tuple[h11.Response, bytes]:
    viewer = Viewer(sssrd.viewer)
    return viewer.get(target)


@pytest.mark.parametrize("path", ["auto", "splice", "copy"])
@pytest.mark.parametrize(
    ("framing", "chunk"), [("chunked", 65536), ("chunked", 3000), ("length", 65536)]
)
def test_large_bodies_arrive_intact_on_every_body_path(conductor, path, framing, chunk):
    size = 8 * MiB + 123
    with daemon(conductor, f"--body-path={path}") as sssrd:
        tag = f"bulk-{path}-{framing}-{chunk}"
        head, body = fetch(
            sssrd, f"/?scenario=bulk&tag={tag}&size={size}&chunk={chunk}&framing={framing}"
        )
        assert head.status_code == 200
        assert hashlib.sha256(body).digest() == hashlib.sha256(pattern(size)).digest()
        if framing == "length":
            assert header(head, b"content-length") == str(size).encode()
        else:
            assert header(head, b"transfer-encoding") == b"chunked"
        assert conductor.report(tag, "answered")["status"] == 200
        spliced = sssrd.metric("sssrd_body_bytes_total", path="splice")
        copied = sssrd.metric("sssrd_body_bytes_total", path="copy")
        assert spliced + copied == size
        runs_are_long = framing == "length"  # one 8 MiB run; chunks are shorter than SPLICE_MIN
        if path == "copy" or (path == "auto" and not runs_are_long):
            assert spliced == 0
        elif chunk < 16384:  # bytes read along with each chunk header are copied
            assert spliced > 0
        else:
            assert spliced > size * 0.9


def test_a_slow_viewer_slows_the_lambda_instead_of_filling_memory(conductor):
    size = 256 * MiB
    with daemon(conductor, "--body-path=auto") as sssrd:
        viewer = Viewer(sssrd.viewer)
        viewer.send("GET", f"/?scenario=bulk&tag=slow&size={size}&block_after=1")
        assert viewer.head().status_code == 200
        blocked = conductor.report("slow", "blocked")  # the Lambda's send stalled
        assert blocked["sent"] < 64 * MiB  # socket buffers and one pipe, not the body
        conductor.release("slow:resume")
        digest = hashlib.sha256()
        received = 0
        while (piece := viewer.chunk()) is not None:
            digest.update(piece)
            received += len(piece)
        assert received == size
        assert digest.digest() == hashlib.sha256(pattern(size)).digest()


@pytest.mark.parametrize("path", ["splice", "copy"])
def test_bad_framing_mid_body_truncates_the_viewer(conductor, path):
    with daemon(conductor, f"--body-path={path}") as sssrd:
        viewer = Viewer(sssrd.viewer)
        tag = f"break-{path}"
        viewer.send("GET", f"/?scenario=bulk&tag={tag}&size={4 * MiB}&break_at={MiB}")
        assert viewer.head().status_code == 200
        received = 0
        with pytest.raises(h11.RemoteProtocolError):
            while (piece := viewer.chunk()) is not None:
                received += len(piece)
        assert MiB <= received < 4 * MiB
        conductor.release(f"{tag}:closed")
        access = sssrd.access(path="/")
        assert access["outcome"] == "lambda_abort"


@pytest.mark.parametrize("path", ["splice", "copy"])
def test_viewer_leaving_mid_splice_stops_the_lambda(conductor, path):
    with daemon(conductor, f"--body-path={path}") as sssrd:
        viewer = Viewer(sssrd.viewer)
        tag = f"leave-{path}"
        viewer.send("GET", f"/?scenario=bulk&tag={tag}&size={512 * MiB}")
        assert viewer.head().status_code == 200
        assert viewer.chunk()
        viewer.close()
        failed = conductor.report(tag, "send_failed")
        assert failed["sent"] < 512 * MiB
        assert sssrd.access(path="/")["outcome"] == "viewer_abort"
