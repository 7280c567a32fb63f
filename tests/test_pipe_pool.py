"""Pipes are bounded and reused; aborted streams leak neither pipes nor sockets."""

from __future__ import annotations

import os

import pytest
from harness import Viewer, daemon, wait_for

from sssrd.pipe import PipePool


def test_pool_is_bounded_and_reuses_clean_pipes():
    pool = PipePool(limit=1)
    pipe = pool.acquire()
    assert pipe is not None and pool.acquire() is None  # exhausted: that stream copies
    pool.release(pipe, clean=True)
    assert pool.acquire() == pipe
    pool.release(pipe, clean=False)  # may hold a dead stream's bytes: closed, not reused
    with pytest.raises(OSError):
        os.fstat(pipe[0])
    assert pool.open == 0 and pool.acquire() is not None
    pool.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.daemon
@pytest.mark.parametrize("path", ["splice", "copy"])
def test_abort_storm_leaks_no_file_descriptors(conductor, path):
    with daemon(conductor, f"--body-path={path}") as sssrd:
        pid = sssrd.process.pid
        Viewer(sssrd.viewer).get("/?scenario=echo")  # warm: pools and lazy imports
        baseline = open_fds(pid)
        for number in range(30):
            viewer = Viewer(sssrd.viewer)
            viewer.send("GET", f"/?scenario=bulk&tag=storm-{path}-{number}&size={64 << 20}")
            assert viewer.head().status_code == 200
            assert viewer.chunk()
            viewer.close()
            conductor.report(f"storm-{path}-{number}", "send_failed")
        wait_for(lambda: sssrd.metric("sssrd_streams_in_flight") == 0, what="streams to end")
        # One clean pipe may stay pooled for reuse (2 fds); nothing else may remain.
        wait_for(lambda: open_fds(pid) <= baseline + 2, what="fds to return to the baseline")
        assert sssrd.metric("sssrd_pending_callbacks") == 0
