"""The supervisor of `workers` > 1: one process per core, one daemon to systemd and Prometheus.

The supervisor binds (or adopts, under socket activation) the viewer listener once and hands
that same listening socket to every worker, so the kernel spreads accepts over the workers'
event loops and socket activation keeps one viewer fd (an inherited socket rather than
SO_REUSEPORT: a port held by several sockets could be joined by any other process of the same
user, and systemd hands over one socket per ListenStream). Worker i gets its own callback
socket, port `callback_listen` + i (or the i-th fd named `callback`), and advertises it, so a
Lambda's callback goes to the worker holding its viewer; each worker's HMAC secret is its own,
so a callback sent to another worker's port is refused (401) even so.

Workers report over a channel (channel.py). The supervisor owns the admin listener: `/metrics`
asks every worker for its exposition and sums them with its own (metrics.MergedCollector), and
`/healthz` is the daemon's. To systemd it says READY=1 once every worker listens, STATUS= with
totals, RELOADING=1 … READY=1 around a SIGHUP that every worker has answered, STOPPING=1 while
SIGTERM drains every worker; it pings WATCHDOG=1 from its own loop. A worker that exits is
logged and respawned with the same index and sockets; one whose heartbeats stop for the watchdog
timeout is killed (SIGKILL) and respawned, so a wedged worker costs its own streams only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11

from sssrd import logs
from sssrd.admin import AdminConnection
from sssrd.channel import ChannelError, encode, read_message
from sssrd.config import Address, ConfigError, Settings, merge_reload
from sssrd.connection import INCOMPLETE_EVENT_CEILING, Connection
from sssrd.invokers.base import RenderEnded
from sssrd.listeners import ACCEPT_ERROR_PAUSE, bind_named
from sssrd.metrics import MergedCollector, exposition_response
from sssrd.pending import PendingRegistry
from sssrd.pipe import PipePool
from sssrd.state import ServerState
from sssrd.systemd import STATUS_INTERVAL, Notifier, watchdog_interval
from sssrd.tally import Tally

HEARTBEAT = 1.0  # seconds between a worker's heartbeats (at most)
WEDGED_AFTER = 30.0  # silence that marks a worker wedged when systemd sets no watchdog
SCRAPE_TIMEOUT = 5.0  # a worker that does not answer a metrics request in time is left out
RESPAWN_PAUSE = 1.0  # between a worker's exit and its replacement: no hot crash loop


class NoInvoker:
    """The supervisor's state has no invoker: it accepts no viewer, so nothing renders."""

    async def invoke(self, payload: bytes) -> None:
        raise RuntimeError("the supervisor does not serve viewers")

    def start(self, payload: bytes) -> asyncio.Task[RenderEnded]:
        raise RuntimeError("the supervisor does not serve viewers")

    def close(self) -> None:
        pass


@dataclass(eq=False)
class Worker:
    """One worker process as the supervisor sees it."""

    index: int
    callback: socket.socket
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    callback_url: str = ""
    listening: bool = False
    heard: float = 0.0  # loop time of the last message (every message is a sign of life)
    scrapes: deque[asyncio.Future[str]] = field(default_factory=deque)
    listened: asyncio.Event = field(default_factory=asyncio.Event)


class DaemonAdminConnection(AdminConnection):
    """The admin listener of a supervised daemon: every worker's metrics, the daemon's health."""

    def __init__(self, state: ServerState, conn: Connection, supervisor: Supervisor) -> None:
        super().__init__(state, conn)
        self.supervisor = supervisor

    async def exposition(self, accept_encoding: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        merged = await self.supervisor.merged_metrics()
        return exposition_response(merged.text(), accept_encoding)

    def trouble(self) -> str:
        if self.state.draining:
            return "draining"
        return "" if self.supervisor.serving() else "no worker listening"


class Supervisor:
    """Holds the listeners, runs `settings.workers` workers, and speaks for them."""

    def __init__(
        self,
        settings: Settings,
        argv: Sequence[str],
        *,
        inherited: dict[str, list[socket.socket]] | None = None,
        notifier: Notifier | None = None,
        reload_settings: Callable[[], Settings] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.argv = list(argv)
        self.inherited = inherited or {}
        self.notifier = notifier or Notifier(None)
        self.reload_settings = reload_settings
        self.log = logs.log
        self.state = ServerState(
            settings=settings,
            loop=self.loop,
            pending=PendingRegistry(settings.max_pending),
            invoker=NoInvoker(),
            pipes=PipePool(0),
            tally=Tally(),
            callback_base="",
        )
        self.viewer: socket.socket | None = None
        self.admin: socket.socket | None = None
        self.workers: list[Worker] = []
        self.admin_connections: set[asyncio.Task[None]] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.reload_waiting: set[int] = set()
        self.started = False  # every worker listened once: from now on, exits are replaced
        self.stopped = asyncio.Event()
        interval = watchdog_interval()
        self.watchdog = interval
        self.wedged_after = interval * 2 if interval is not None else WEDGED_AFTER
        metrics = self.state.tally.metrics
        metrics.connections_open_by_listener["admin"].set_function(
            functools.partial(len, self.admin_connections)
        )

    @property
    def settings(self) -> Settings:
        return self.state.settings

    # -- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind or adopt every listener, start every worker, READY=1 once all listen."""
        settings = self.settings
        try:
            self.viewer = self.listener("viewer", settings.listen)
            if settings.admin_listen is not None or self.inherited.get("admin"):
                self.admin = self.listener("admin", settings.admin_listen)
            self.workers = [
                Worker(index, sock) for index, sock in enumerate(self.callback_sockets())
            ]
            for worker in self.workers:
                await self.spawn(worker)
            for worker in self.workers:
                await self.wait_listening(worker)
        except BaseException:
            await self.kill_all()
            self.close_listeners()
            raise
        self.started = True
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.stop)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self.admin is not None:
            self.spawn_task(self.accept_admin(self.admin))
        self.notifier.ready(await self.status_text())
        self.spawn_task(self.report_status())
        self.spawn_task(self.watch_heartbeats())
        if self.watchdog is not None:
            self.spawn_task(self.ping_watchdog(self.watchdog))
        first = self.workers[0]
        self.log.info(
            "sssrd listening",
            extra={
                "viewer": address_of(self.viewer),
                "callback": address_of(first.callback),
                "callback_url": first.callback_url,
                "callbacks": [address_of(worker.callback) for worker in self.workers],
                "callback_urls": [worker.callback_url for worker in self.workers],
                "workers": len(self.workers),
            }
            | ({"admin": address_of(self.admin)} if self.admin is not None else {}),
        )

    def listener(self, name: str, address: Address | None) -> socket.socket:
        inherited = self.inherited.get(name)
        if inherited:
            inherited[0].setblocking(False)
            return inherited[0]
        assert address is not None
        return bind_named(name, address, self.settings.backlog)

    def callback_sockets(self) -> list[socket.socket]:
        """Worker i's callback socket: the i-th adopted `callback` fd, else base port + i."""
        count = self.settings.workers
        adopted = list(self.inherited.get("callback", []))
        if len(adopted) > count:
            raise ValueError(
                f"systemd passed {len(adopted)} callback sockets for {count} workers; "
                "a socket no worker serves would hold its callbacks forever"
            )
        if adopted:
            host, port = adopted[0].getsockname()[:2]
            base = Address(host, port)
        else:
            base = self.settings.callback_listen
        sockets = adopted
        for index in range(len(adopted), count):
            port = base.port + index if base.port else 0  # port 0: each its own ephemeral port
            sockets.append(bind_named("callback", Address(base.host, port), self.settings.backlog))
        return sockets

    async def spawn(self, worker: Worker) -> None:
        assert self.viewer is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = (self.viewer.fileno(), worker.callback.fileno(), theirs.fileno())
        command = [
            sys.executable,
            "-m",
            "sssrd.worker",
            f"--index={worker.index}",
            f"--viewer-fd={fds[0]}",
            f"--callback-fd={fds[1]}",
            f"--channel-fd={fds[2]}",
            *self.argv,
        ]
        # A worker heartbeats through its own watchdog timer: WATCHDOG_USEC twice the interval.
        beat = min(HEARTBEAT, self.wedged_after / 4)
        env = dict(os.environ, WATCHDOG_USEC=str(round(beat * 2_000_000)))
        try:
            worker.process = await asyncio.create_subprocess_exec(*command, pass_fds=fds, env=env)
        finally:
            theirs.close()
        reader, worker.writer = await asyncio.open_unix_connection(sock=ours)
        worker.heard = self.loop.time()
        worker.listening = False
        worker.listened.clear()
        self.spawn_task(self.listen_to(worker, reader))
        self.spawn_task(self.watch_exit(worker, worker.process))

    async def wait_listening(self, worker: Worker) -> None:
        assert worker.process is not None
        exited = self.loop.create_task(worker.process.wait())
        listened = self.loop.create_task(worker.listened.wait())
        await asyncio.wait((exited, listened), return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        listened.cancel()
        if not worker.listened.is_set():
            raise OSError(
                f"worker {worker.index} exited ({worker.process.returncode}) before it listened"
            )

    # -- what workers say -------------------------------------------------------------------

    async def listen_to(self, worker: Worker, reader: asyncio.StreamReader) -> None:
        try:
            while (message := await read_message(reader)) is not None:
                worker.heard = self.loop.time()
                if "notify" in message:
                    self.heard_notify(worker, message["notify"])
                elif "listening" in message:
                    worker.callback_url = str(message["listening"]["callback_url"])
                    worker.listening = True
                    worker.listened.set()
                elif "metrics" in message and worker.scrapes:
                    scrape = worker.scrapes.popleft()
                    if not scrape.done():
                        scrape.set_result(str(message["metrics"]))
        except ChannelError as exc:
            self.log.error(
                "worker channel broken", extra={"worker": worker.index, "error": str(exc)}
            )
        finally:
            for scrape in worker.scrapes:
                scrape.cancel()
            worker.scrapes.clear()

    def heard_notify(self, worker: Worker, fields: dict[str, str]) -> None:
        if fields.get("READY") == "1" and worker.index in self.reload_waiting:
            self.reload_answered(worker.index)

    async def watch_exit(self, worker: Worker, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        worker.listening = False
        if worker.writer is not None:
            worker.writer.close()
        self.reload_answered(worker.index)
        if self.state.draining:
            self.log.info("worker stopped", extra={"worker": worker.index, "code": code})
            if all(w.process is None or w.process.returncode is not None for w in self.workers):
                self.finish()
            return
        if self.started and worker.process is process:
            self.log.error(
                "worker exited; starting a replacement",
                extra={"worker": worker.index, "code": code, "pid": process.pid},
            )
            await asyncio.sleep(RESPAWN_PAUSE)
            if not self.state.draining:
                await self.spawn(worker)
                await self.wait_listening_quietly(worker)

    async def wait_listening_quietly(self, worker: Worker) -> None:
        try:
            await self.wait_listening(worker)
        except OSError:
            return  # its own exit is handled by its watch_exit, which tries again
        assert worker.process is not None
        self.log.info(
            "worker replaced",
            extra={
                "worker": worker.index,
                "pid": worker.process.pid,
                "callback_url": worker.callback_url,
            },
        )

    def serving(self) -> bool:
        return any(worker.listening for worker in self.workers)

    # -- metrics and status -----------------------------------------------------------------

    async def merged_metrics(self) -> MergedCollector:
        """Every listening worker's exposition and the supervisor's own, combined."""
        scrapes = [self.scrape(worker) for worker in self.workers if worker.listening]
        texts = await asyncio.gather(*scrapes)
        own = self.state.tally.metrics.text().decode()
        return MergedCollector([own, *(text for text in texts if text is not None)])

    async def scrape(self, worker: Worker) -> str | None:
        if worker.writer is None or worker.writer.is_closing():
            return None
        scrape: asyncio.Future[str] = self.loop.create_future()
        worker.scrapes.append(scrape)
        worker.writer.write(encode({"metrics": None}))
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                return await scrape
        except (TimeoutError, asyncio.CancelledError):
            self.log.warning("worker left out of /metrics", extra={"worker": worker.index})
            return None

    async def status_text(self) -> str:
        merged = await self.merged_metrics()
        state = "draining" if self.state.draining else "serving"
        listening = sum(worker.listening for worker in self.workers)
        streaming = merged.value("sssrd_streams_in_flight")
        pending = merged.value("sssrd_pending_callbacks")
        viewers = merged.value("sssrd_connections_open", listener="viewer")
        return (
            f"{state}: {listening}/{len(self.workers)} workers, {streaming:.0f} streaming, "
            f"{pending:.0f} awaiting callback, {viewers:.0f} viewer connections"
        )

    async def report_status(self) -> None:
        while self.notifier.enabled:
            await asyncio.sleep(STATUS_INTERVAL)
            self.notifier.status(await self.status_text())

    async def ping_watchdog(self, interval: float) -> None:
        """WATCHDOG=1 from the supervisor's loop; wedged workers are its own business."""
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def watch_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(min(HEARTBEAT, self.wedged_after / 4))
            now = self.loop.time()
            for worker in self.workers:
                process = worker.process
                silent = now - worker.heard
                if worker.listening and process is not None and silent > self.wedged_after:
                    self.log.error(
                        "worker wedged (no heartbeat); killing it",
                        extra={"worker": worker.index, "pid": process.pid, "silent": silent},
                    )
                    worker.listening = False
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()

    # -- admin listener ---------------------------------------------------------------------

    async def accept_admin(self, listener: socket.socket) -> None:
        accepted = self.state.tally.metrics.connections_by_listener["admin"]
        while True:
            try:
                sock, _ = await self.loop.sock_accept(listener)
            except OSError as exc:
                self.log.error("accept failed", extra={"listener": "admin", "error": str(exc)})
                await asyncio.sleep(ACCEPT_ERROR_PAUSE)
                continue
            sock.setblocking(False)
            parser = h11.Connection(h11.SERVER, max_incomplete_event_size=INCOMPLETE_EVENT_CEILING)
            conn = Connection(self.loop, sock, parser)
            accepted.inc()
            task = self.loop.create_task(self.serve_admin(conn))
            self.admin_connections.add(task)
            task.add_done_callback(self.admin_connections.discard)

    async def serve_admin(self, conn: Connection) -> None:
        try:
            await DaemonAdminConnection(self.state, conn, self).run()
        except Exception:
            self.log.exception("connection failed", extra={"listener": "admin", "peer": conn.peer})
        finally:
            conn.close()

    # -- reload and stop --------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: every worker reloads; READY=1 once each has reloaded or refused."""
        self.notifier.reloading()
        if self.reload_settings is not None:
            try:
                self.state.settings, _, _ = merge_reload(self.settings, self.reload_settings())
                logs.set_level(self.settings.log_level)
            except ConfigError:
                pass  # each worker loads the same files and logs why it refused
        self.reload_waiting = {w.index for w in self.workers if w.listening and w.process}
        for index in sorted(self.reload_waiting):
            self.signal(self.workers[index], signal.SIGHUP)
        self.reload_answered(None)

    def reload_answered(self, index: int | None) -> None:
        if index is not None:
            if index not in self.reload_waiting:
                return
            self.reload_waiting.discard(index)
        if not self.reload_waiting:
            self.spawn_task(self.reload_done())

    async def reload_done(self) -> None:
        self.log.info("every worker reloaded", extra={"workers": len(self.workers)})
        self.notifier.ready(await self.status_text())

    def stop(self) -> None:
        """SIGTERM/SIGINT: every worker drains; the supervisor exits once all have stopped."""
        if self.state.draining:
            return
        self.state.draining = True
        timeout = self.settings.drain_timeout
        self.log.info("draining", extra={"workers": len(self.workers), "timeout": timeout})
        self.notifier.stopping()
        self.notifier.extend_timeout(timeout + 5)
        if self.viewer is not None:  # once every worker has closed its copy, viewers are refused
            self.viewer.close()
        for worker in self.workers:
            self.signal(worker, signal.SIGTERM)
        if not any(w.process and w.process.returncode is None for w in self.workers):
            self.finish()

    def signal(self, worker: Worker, signum: signal.Signals) -> None:
        if worker.process is not None and worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signum)

    def finish(self) -> None:
        if self.stopped.is_set():
            return
        for task in self.tasks:
            task.cancel()
        for task in self.admin_connections:
            task.cancel()
        self.close_listeners()
        self.log.info("stopped", extra={"workers": len(self.workers)})
        self.stopped.set()

    async def wait_stopped(self) -> None:
        await self.stopped.wait()

    async def kill_all(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()

    def close_listeners(self) -> None:
        for sock in (self.viewer, self.admin, *(worker.callback for worker in self.workers)):
            if sock is not None:
                sock.close()

    def spawn_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return str(Address(host, port))
