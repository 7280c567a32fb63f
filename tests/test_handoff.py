"""The callback hand-off's table of stages: every allowed step, and the steps it refuses."""

import asyncio

import pytest
from inprocess import daemon_side, socket_pair

from sssrd.handoff import ClaimedCallback, HandOffError, Stage, StreamEnd
from sssrd.outcomes import Outcome


async def claimed() -> tuple[ClaimedCallback, object]:
    """A claimed callback on a socket pair whose Lambda end has sent its request head."""
    lambda_sock, daemon_sock = socket_pair()
    conn = daemon_side(daemon_sock)
    conn.h11.receive_data(b"POST /v1/callback/x HTTP/1.1\r\nhost: s\r\ncontent-length: 9\r\n\r\n")
    conn.h11.next_event()
    callback = ClaimedCallback(
        conn=conn,
        request_id="x",
        prelude=False,
        status_header=None,
        content_type=None,
        content_length=9,
        chunked=False,
        finished=asyncio.get_running_loop().create_future(),
    )
    return callback, lambda_sock


def test_a_relayed_stream_is_finished_once_after_the_relay_let_go():
    async def scenario():
        callback, lambda_sock = await claimed()
        with callback.relaying():
            assert callback.stage is Stage.STREAMING
            with pytest.raises(HandOffError):  # never while the relay holds the socket
                callback.finish(StreamEnd(Outcome.DELIVERED))
        assert callback.stage is Stage.RELAYED
        callback.finish(StreamEnd(Outcome.DELIVERED, body_bytes=9))
        assert (await callback.finished).body_bytes == 9 and not callback.conn.closed
        with pytest.raises(HandOffError):  # once
            callback.finish(StreamEnd(Outcome.DELIVERED))
        callback.abandon()  # nothing once ended
        with pytest.raises(HandOffError), callback.relaying():
            pass
        lambda_sock.close()
        callback.conn.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("kind", "answer"),
    [(Outcome.VIEWER_ABORT, b"HTTP/1.1 410 "), (Outcome.IDLE, b"")],
)
def test_an_end_the_callback_task_does_not_answer_is_answered_and_closed_at_once(kind, answer):
    async def scenario():
        callback, lambda_sock = await claimed()
        if kind is Outcome.VIEWER_ABORT:
            callback.abandon()  # the cycle's default: the viewer's request ended first
        else:
            callback.finish(StreamEnd(kind, message="cut"))
        assert callback.stage is Stage.ENDED and callback.conn.closed
        received = await asyncio.get_running_loop().sock_recv(lambda_sock, 4096)
        lambda_sock.close()
        return received

    assert asyncio.run(scenario()).startswith(answer)
