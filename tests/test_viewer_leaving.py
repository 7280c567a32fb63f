"""Every way a viewer can leave a stream tells its render to stop: the callback reads `410`.

The test plays the Lambda itself (scenario `handover`, harness.PlayedLambda), so what it checks
is sssrd's answer on the callback connection, not merely that a later write failed (a plain
close would fail it too, and a render that is only cut cannot tell why).
"""

from __future__ import annotations

import signal
import socket

import h11
import pytest
from harness import PlayedLambda, Viewer, daemon, reset

pytestmark = pytest.mark.daemon

MiB = 1 << 20


def streaming(sssrd, conductor, tag: str) -> tuple[Viewer, PlayedLambda]:
    """A viewer that has read the first chunk its render (played by the test) sent."""
    viewer = Viewer(sssrd.viewer)
    viewer.send("GET", f"/?scenario=handover&tag={tag}")
    render = PlayedLambda(conductor, tag)
    render.write(b"first\n")
    assert viewer.chunk_after_head() == b"first\n"
    return viewer, render


@pytest.mark.parametrize("leaving", ["fin", "reset"])
def test_a_viewer_leaving_mid_stream_tells_the_render_410(sssrd, conductor, leaving):
    viewer, render = streaming(sssrd, conductor, f"leave-{leaving}")
    (reset if leaving == "reset" else socket.socket.close)(viewer.sock)
    assert render.answer() == 410


def test_a_viewer_taking_nothing_for_send_timeout_tells_the_render_410(conductor):
    with daemon(conductor, "--send-timeout=0.3") as sssrd:
        viewer = Viewer(sssrd.viewer)
        viewer.send("GET", "/?scenario=handover&tag=stalled")
        render = PlayedLambda(conductor, "stalled")
        assert render.write_until_refused(limit=256 * MiB) < 256 * MiB
        assert render.answer() == 410
        assert sssrd.metric("sssrd_timeouts_total", kind="send") == 1
        viewer.close()


def test_a_stream_cut_by_the_drain_timeout_is_truncated_and_its_render_told_410(conductor):
    with daemon(conductor, "--drain-timeout=0.3") as sssrd:
        viewer, render = streaming(sssrd, conductor, "drain-cut")
        sssrd.signal(signal.SIGTERM)
        assert sssrd.wait_exit() == 0
        with pytest.raises(h11.RemoteProtocolError):  # closed without the final chunk
            viewer.chunk()
        assert render.answer() == 410
