"""One worker of several: a Server on sockets its supervisor handed down, reporting over a channel.

The supervisor (workers.py) runs `python -m sssrd.worker --index I --viewer-fd V --callback-fd C
--channel-fd K --supervisor-pid P`. Its first message on the channel is the settings to run (the
ones the supervisor validated last: a replacement never re-reads the config file, so it cannot
diverge from its siblings or trip over an unreloaded edit); a later `reload` message carries the
settings of a SIGHUP the supervisor accepted. The worker serves the inherited viewer and callback
sockets with an ordinary Server (no admin listener: the supervisor owns it), sends its sd_notify
fields to the supervisor (channel.py) and answers metrics requests with its own exposition. Its
heartbeat, a message every `--heartbeat` seconds from its event loop (a wedged loop falls
silent), carries the counts the supervisor's STATUS= sums.

A worker never outlives its supervisor: the kernel sends it SIGTERM when the supervisor dies
(PR_SET_PDEATHSIG), and any end of the channel (EOF, a broken framing, EPIPE, which uvloop may
raise on the read after a failed write) means the same. Either way it drains and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import os
import signal
import socket
import sys
from collections.abc import Sequence

import uvloop

from sssrd import logs
from sssrd.channel import ChannelError, ChannelNotifier, encode, read_message
from sssrd.config import Settings, settings_from_toml
from sssrd.invokers import make_invoker
from sssrd.server import Server

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class CannotStart(Exception):
    """Why this worker could not start, in one line (the supervisor backs off and retries)."""


def worker_settings(settings: Settings) -> Settings:
    """A worker's settings: the daemon's, without the admin listener the supervisor owns."""
    return dataclasses.replace(settings, admin_listen=None)


def die_with_supervisor(supervisor_pid: int) -> bool:
    """Ask the kernel for SIGTERM when the supervisor dies; False if it is already gone.

    The check comes after the prctl: a supervisor that died before it would never signal us,
    and then our parent is no longer the supervisor.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return os.getppid() == supervisor_pid


async def serve(fds: argparse.Namespace) -> bool:
    """Run until drained (True), or until stopped before serving anything (False)."""
    loop = asyncio.get_running_loop()
    channel = socket.socket(fileno=fds.channel_fd)
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    first = await read_message(reader)
    if first is None:
        return False  # the supervisor went away before it said what to run
    latest = {"settings": str(first["settings"])}
    settings = settings_from_toml(latest["settings"])
    logs.set_level(settings.log_level)
    starting = asyncio.current_task()
    assert starting is not None
    for signum in (signal.SIGTERM, signal.SIGINT):  # until the Server's own handlers replace them
        loop.add_signal_handler(signum, starting.cancel)
    try:
        server = Server(
            settings,
            make_invoker(settings),
            inherited={
                "viewer": [socket.socket(fileno=fds.viewer_fd)],
                "callback": [socket.socket(fileno=fds.callback_fd)],
            },
            notifier=ChannelNotifier(writer),
            reload_settings=lambda: settings_from_toml(latest["settings"]),
            worker_index=fds.index,
        )
        await server.start()
    except asyncio.CancelledError:
        return False  # told to stop (or orphaned) before it served anything: nothing to drain
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        # A supervisor still starting fails with this line, as a single-process daemon would;
        # it arrives before the exit, which comes only after the loop has been torn down.
        writer.write(encode({"cannot_start": reason}))
        await writer.drain()
        raise CannotStart(reason) from None
    writer.write(encode({"listening": {"callback_url": server.state.callback_base}}))
    answering = loop.create_task(answer(reader, writer, server, latest))
    beating = loop.create_task(heartbeat(writer, server, fds.heartbeat))
    await server.wait_stopped()
    answering.cancel()
    beating.cancel()
    writer.close()
    return True


async def heartbeat(writer: asyncio.StreamWriter, server: Server, interval: float) -> None:
    """The worker's sign of life to its supervisor, with what it is serving (Server.counts)."""
    while not writer.is_closing():
        writer.write(encode({"heartbeat": server.counts()}))
        await asyncio.sleep(interval)


async def answer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    server: Server,
    latest: dict[str, str],
) -> None:
    """Answer the supervisor until it goes away or the channel breaks in any way; then drain."""
    try:
        while (message := await read_message(reader)) is not None:
            if "metrics" in message:
                text = server.tally.metrics.text().decode()
                writer.write(encode({"metrics": text}))
            elif "reload" in message:
                latest["settings"] = str(message["reload"])
                server.reload()
        server.log.warning("supervisor gone; draining")
    except (ChannelError, OSError) as exc:
        server.log.warning("supervisor channel broken; draining", extra={"error": repr(exc)})
    server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sssrd-worker")
    for name in ("--index", "--viewer-fd", "--callback-fd", "--channel-fd", "--supervisor-pid"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--heartbeat", type=float, required=True)
    fds = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure("info", fields={"worker": fds.index})  # the supervisor's level comes next
    if not die_with_supervisor(fds.supervisor_pid):
        return 0  # orphaned before it started: nobody to serve for
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            if not runner.run(serve(fds)):
                # Cut short while starting, perhaps inside a blocking IMDS request in an
                # executor thread that closing the loop would join: nothing is held, so leave.
                sys.stdout.flush()
                os._exit(0)
    except (CannotStart, ChannelError, OSError) as exc:
        logs.log.error("worker cannot start", extra={"error": str(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
