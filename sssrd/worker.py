"""One worker of several: a Server on sockets its supervisor handed down, reporting over a channel.

The supervisor (workers.py) runs `python -m sssrd.worker --index I --viewer-fd V --callback-fd C
--channel-fd K <the daemon's own arguments>`. The worker loads its settings from those
arguments exactly as the supervisor did (so SIGHUP re-reads the same file, env and flags),
serves the inherited viewer and callback sockets with an ordinary Server (no admin listener: the
supervisor owns it) and sends its sd_notify fields to the supervisor (channel.py). It answers
metrics requests with its own exposition, and drains when told SIGTERM or when the supervisor's
end of the channel closes (a supervisor gone must not leave orphans serving).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import sys
from collections.abc import Sequence

import uvloop

from sssrd import logs
from sssrd.channel import ChannelError, ChannelNotifier, encode, read_message
from sssrd.cli import build_parser, settings_from
from sssrd.config import Settings
from sssrd.invokers import make_invoker
from sssrd.server import Server


def worker_settings(settings: Settings) -> Settings:
    """A worker's settings: the daemon's, without the admin listener the supervisor owns."""
    return dataclasses.replace(settings, admin_listen=None)


async def serve(index: int, fds: argparse.Namespace, daemon: argparse.Namespace) -> None:
    channel = socket.socket(fileno=fds.channel_fd)
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    settings = worker_settings(settings_from(daemon))
    inherited = {
        "viewer": [socket.socket(fileno=fds.viewer_fd)],
        "callback": [socket.socket(fileno=fds.callback_fd)],
    }
    server = Server(
        settings,
        make_invoker(settings),
        inherited=inherited,
        notifier=ChannelNotifier(writer),
        reload_settings=lambda: worker_settings(settings_from(daemon)),
        worker_index=index,
    )
    await server.start()
    writer.write(encode({"listening": {"callback_url": server.state.callback_base}}))
    answering = asyncio.get_running_loop().create_task(answer(reader, writer, server))
    await server.wait_stopped()
    answering.cancel()
    writer.close()


async def answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
) -> None:
    """Answer the supervisor's requests until it goes away (or breaks the framing); then drain."""
    try:
        while (message := await read_message(reader)) is not None:
            if "metrics" in message:
                text = server.tally.metrics.text().decode()
                writer.write(encode({"metrics": text}))
    except ChannelError:
        server.log.exception("supervisor channel broken; draining")
    server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sssrd-worker")
    for name in ("--index", "--viewer-fd", "--callback-fd", "--channel-fd"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("daemon", nargs=argparse.REMAINDER)
    fds = parser.parse_args(sys.argv[1:] if argv is None else argv)
    daemon = build_parser().parse_args(fds.daemon)
    logs.configure(worker_settings(settings_from(daemon)).log_level, fields={"worker": fds.index})
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(fds.index, fds, daemon))
    except (OSError, ValueError) as exc:  # the supervisor logs the exit; this says why
        print(f"sssrd: worker {fds.index} cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
