"""The supervisor of `workers` > 1: one process per core, one daemon to systemd and Prometheus.

The supervisor binds (or adopts, under socket activation) the viewer listener once and hands
that same listening socket to every worker, so the kernel spreads accepts over the workers'
event loops and socket activation keeps one viewer fd (an inherited socket rather than
SO_REUSEPORT: a port held by several sockets could be joined by any other process of the same
user, and systemd hands over one socket per ListenStream). Worker i gets its own callback
socket, port `callback_listen` + i (or the i-th fd named `callback`), and advertises it, so a
Lambda's callback goes to the worker holding its viewer; each worker's HMAC secret is its own,
so a callback sent to another worker's port is refused (401) even so.

Workers report over a channel (channel.py); the supervisor's first message to each is the
settings it validated last, so a replacement runs what its siblings run (a SIGHUP the supervisor
accepts is the only way new settings arrive, sent to every worker). The supervisor owns the admin
listener: `/metrics` asks every worker for its exposition and sums them with its own and with
what departed workers had counted (metrics.MergedCollector, metrics.carried), so counters never
go backwards; `/healthz` is the daemon's. To systemd it says READY=1 once every worker listens,
STATUS= with totals, RELOADING=1 … READY=1 around a reload every worker has answered,
STOPPING=1 while SIGTERM drains every worker; it pings WATCHDOG=1 from its own loop. Its signal
handlers are in place before the first worker starts: a stop during start-up drains what has
started. A worker that exits is logged and respawned with the same index and sockets, after a
pause that doubles while its starts keep failing (which /healthz reports); one whose heartbeats
stop for the watchdog timeout is killed (SIGKILL) and respawned, so a wedged worker costs its
own streams only.
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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from sssrd import logs
from sssrd.admin import AdminConnection, AdminView, Headers
from sssrd.channel import ChannelError, encode, read_message
from sssrd.config import Address, ConfigError, Settings, merge_reload
from sssrd.connection import Connection
from sssrd.listeners import accept_forever, address_of, bind_named
from sssrd.metrics import MergedCollector, Metrics, carried, exposition_response
from sssrd.systemd import Notifier, Pings, watchdog_interval
from sssrd.worker import worker_settings

HEARTBEAT = 1.0  # seconds between a worker's heartbeats (at most)
COUNTS = ("streaming", "awaiting", "viewers")  # what a heartbeat carries (Server.counts)
WEDGED_AFTER = 30.0  # silence that marks a worker wedged when systemd sets no watchdog
SCRAPE_TIMEOUT = 5.0  # a worker that does not answer a metrics request in time is left out
RESPAWN_PAUSE = 1.0  # between a worker's exit and its replacement: no hot crash loop
MAX_RESPAWN_PAUSE = 30.0  # the pause doubles per failed start up to this
DEGRADED_AFTER = 2  # failed starts in a row that make /healthz report the daemon degraded


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
    scrapes: deque[asyncio.Future[str]] = field(default_factory=deque)  # this process's
    listened: asyncio.Event = field(default_factory=asyncio.Event)
    last_metrics: str | None = None  # this process's last answered exposition
    counts: dict[str, int] = field(default_factory=dict)  # its last heartbeat's (COUNTS)
    settings_sent: str = ""  # the settings (as TOML) this process was last given
    failed_starts: int = 0  # exits before listening, in a row
    cannot_start: str = ""  # why this process could not start, if it said so before exiting


class Supervisor:
    """Holds the listeners, runs `settings.workers` workers, and speaks for them."""

    def __init__(
        self,
        settings: Settings,
        *,
        inherited: dict[str, list[socket.socket]] | None = None,
        notifier: Notifier | None = None,
        reload_settings: Callable[[], Settings] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.inherited = inherited or {}
        self.notifier = notifier or Notifier(None)
        self.reload_settings = reload_settings
        self.log = logs.log
        self.settings = settings
        self.draining = False
        self.metrics = Metrics()  # the supervisor's own: admin connections, start failures
        self.viewer: socket.socket | None = None
        self.admin: socket.socket | None = None
        self.workers: list[Worker] = []
        self.admin_connections: set[asyncio.Task[None]] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.reload_waiting: set[int] = set()
        self.started = False  # every worker listened once: from now on, exits are replaced
        self.starting = False
        self.departed = ""  # the counters and histograms of workers that exited, summed
        self.stopped = asyncio.Event()
        interval = watchdog_interval()
        self.pings = Pings(self.notifier, self.status_text, interval)
        self.wedged_after = interval * 2 if interval is not None else WEDGED_AFTER
        metrics = self.metrics
        metrics.connections_open_by_listener["admin"].set_function(
            functools.partial(len, self.admin_connections)
        )
        self.start_failures = Counter(
            "sssrd_worker_start_failures",
            "Worker processes that exited before they listened (each is retried, backing off).",
            registry=metrics.registry,
        )

    # -- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind or adopt every listener, start every worker, READY=1 once all listen."""
        settings = self.settings
        # Before any worker exists: a signal during start-up drains what has started. There is
        # nothing to reload yet, so SIGHUP then is taken as the hang-up it most likely is.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.add_signal_handler(signum, self.stop)
        self.starting = True
        try:
            self.viewer = self.listener("viewer", settings.listen)
            if settings.admin_listen is not None or self.inherited.get("admin"):
                self.admin = self.listener("admin", settings.admin_listen)
            self.workers = [
                Worker(index, sock) for index, sock in enumerate(self.callback_sockets())
            ]
            for worker in self.workers:
                if self.draining:
                    break
                await self.spawn(worker)
            for worker in self.workers:
                if self.draining:
                    break
                await self.wait_listening(worker)
        except BaseException:
            await self.kill_all()
            self.close_listeners()
            raise
        finally:
            self.starting = False
        if self.draining:
            self.finish_once_all_stopped()
            return
        self.started = True
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self.admin is not None:
            self.spawn_task(self.accept_admin(self.admin))
        self.notifier.ready(self.status_text())
        self.pings.start()
        self.spawn_task(self.watch_heartbeats())
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
            f"--supervisor-pid={os.getpid()}",
        ]
        command.append(f"--heartbeat={min(HEARTBEAT, self.wedged_after / 4)}")
        try:
            worker.process = await asyncio.create_subprocess_exec(*command, pass_fds=fds)
        finally:
            theirs.close()
        reader, worker.writer = await asyncio.open_unix_connection(sock=ours)
        worker.settings_sent = worker_settings(self.settings).as_toml()
        worker.writer.write(encode({"settings": worker.settings_sent}))
        worker.heard = self.loop.time()
        worker.listening = False
        worker.listened.clear()
        worker.last_metrics = None
        worker.counts = {}
        worker.scrapes = deque()  # a new channel: nothing asked of it yet
        worker.cannot_start = ""
        if self.draining:  # stop() came while it was being created
            self.signal(worker, signal.SIGTERM)
        self.spawn_task(self.listen_to(worker, reader, worker.writer, worker.scrapes))
        self.spawn_task(self.watch_exit(worker, worker.process))

    async def wait_listening(self, worker: Worker) -> None:
        assert worker.process is not None
        exited = self.loop.create_task(worker.process.wait())
        listened = self.loop.create_task(worker.listened.wait())
        await asyncio.wait((exited, listened), return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        listened.cancel()
        if not worker.listened.is_set() and not self.draining:
            raise OSError(
                worker.cannot_start
                or f"worker {worker.index} exited ({worker.process.returncode}) before it listened"
            )

    # -- what workers say -------------------------------------------------------------------

    async def listen_to(
        self,
        worker: Worker,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        scrapes: deque[asyncio.Future[str]],
    ) -> None:
        """Until the channel ends; then it is closed, and whatever it was asked is answered
        "left out" at once rather than at SCRAPE_TIMEOUT."""
        try:
            while (message := await read_message(reader)) is not None:
                worker.heard = self.loop.time()
                if "heartbeat" in message:
                    worker.counts = {key: int(n) for key, n in message["heartbeat"].items()}
                elif "notify" in message:
                    self.heard_notify(worker, message["notify"])
                elif "listening" in message:
                    worker.callback_url = str(message["listening"]["callback_url"])
                    worker.listening = True
                    worker.failed_starts = 0
                    worker.listened.set()
                    self.send_settings(worker)  # a reload may have come while it started
                elif "cannot_start" in message:
                    worker.cannot_start = str(message["cannot_start"])
                elif "metrics" in message and scrapes:
                    scrape = scrapes.popleft()
                    if not scrape.done():
                        scrape.set_result(str(message["metrics"]))
        except (ChannelError, OSError) as exc:
            self.log.error(
                "worker channel broken", extra={"worker": worker.index, "error": str(exc)}
            )
        finally:
            writer.close()
            for scrape in scrapes:
                scrape.cancel()
            scrapes.clear()

    def heard_notify(self, worker: Worker, fields: dict[str, str]) -> None:
        if fields.get("READY") == "1" and worker.index in self.reload_waiting:
            self.reload_answered(worker.index)

    async def watch_exit(self, worker: Worker, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        worker.listening = False
        if worker.writer is not None:
            worker.writer.close()
        self.retire_metrics(worker)
        self.reload_answered(worker.index)
        if self.draining:
            self.log.info("worker stopped", extra={"worker": worker.index, "code": code})
            self.finish_once_all_stopped()
            return
        if not self.started or worker.process is not process:
            return
        if not worker.listened.is_set():
            worker.failed_starts += 1
            self.start_failures.inc()
        pause = min(RESPAWN_PAUSE * 2 ** max(worker.failed_starts - 1, 0), MAX_RESPAWN_PAUSE)
        self.log.error(
            "worker exited; starting a replacement",
            extra={
                "worker": worker.index,
                "code": code,
                "pid": process.pid,
                "failed_starts": worker.failed_starts,
                "pause": pause,
            },
        )
        await asyncio.sleep(pause)
        if not self.draining:
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

    def degraded(self) -> str:
        """Why the daemon serves with fewer workers than it should ("" when it does not)."""
        failing = [worker for worker in self.workers if worker.failed_starts >= DEGRADED_AFTER]
        return "; ".join(
            f"degraded: worker {worker.index} failed to start {worker.failed_starts} times in a row"
            for worker in failing
        )

    # -- metrics and status -----------------------------------------------------------------

    async def merged_metrics(self) -> MergedCollector:
        """The daemon's metrics: the supervisor's own, every worker's fresh exposition, and
        for a worker that did not answer, the counters and histograms it last reported, plus
        those of every worker that has exited. So no counter goes backwards while the
        supervisor lives; gauges are the present, which only fresh answers describe."""
        listening = [worker for worker in self.workers if worker.listening]
        answered = await asyncio.gather(*(self.scrape(worker) for worker in listening))
        fresh = {worker.index: text for worker, text in zip(listening, answered, strict=True)}
        expositions = [self.metrics.text().decode(), self.departed]
        for worker in self.workers:
            text = fresh.get(worker.index)
            if text is not None:
                expositions.append(text)
            elif worker.last_metrics is not None:
                expositions.append(carried(worker.last_metrics))
        return MergedCollector(expositions)

    async def scrape(self, worker: Worker) -> str | None:
        """The worker's exposition (kept as its last), or None if it did not answer in time."""
        process = worker.process
        if worker.writer is None or worker.writer.is_closing() or process is None:
            return None
        scrape: asyncio.Future[str] = self.loop.create_future()
        worker.scrapes.append(scrape)
        worker.writer.write(encode({"metrics": None}))
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                text = await scrape
        except (TimeoutError, asyncio.CancelledError):
            self.log.warning("worker left out of /metrics", extra={"worker": worker.index})
            return None
        if worker.process is not process or process.returncode is not None:
            return None  # it exited meanwhile: what it counted is in self.departed (or soon)
        worker.last_metrics = text
        return text

    def retire_metrics(self, worker: Worker) -> None:
        """An exited worker's last counters and histograms stay in the daemon's sums."""
        if worker.last_metrics is not None:
            merged = MergedCollector([self.departed, carried(worker.last_metrics)])
            self.departed = merged.text().decode()
            worker.last_metrics = None

    def status_text(self) -> str:
        """The daemon's STATUS=: the sums of what the listening workers' last heartbeats said
        (no metrics page is asked for or parsed)."""
        state = "draining" if self.draining else "serving"
        listening = [worker for worker in self.workers if worker.listening]
        total = {key: sum(worker.counts.get(key, 0) for worker in listening) for key in COUNTS}
        return (
            f"{state}: {len(listening)}/{len(self.workers)} workers, {total['streaming']} "
            f"streaming, {total['awaiting']} awaiting callback, {total['viewers']} viewer "
            "connections"
        )

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
        accepted = self.metrics.connections_by_listener["admin"]
        view = AdminView(lambda: self.settings, self.exposition, self.trouble)

        async def serve(conn: Connection) -> None:
            await AdminConnection(view, conn).run()

        await accept_forever("admin", listener, serve, self.admin_connections, accepted)

    async def exposition(self, accept_encoding: str) -> tuple[bytes, Headers]:
        """The daemon's /metrics page: every worker's metrics, summed."""
        merged = await self.merged_metrics()
        return exposition_response(merged.text(), accept_encoding)

    def trouble(self) -> str:
        """Why the daemon's /healthz says 503 ("" when healthy)."""
        if self.draining:
            return "draining"
        if not self.serving():
            return "no worker listening"
        return self.degraded()

    # -- reload and stop --------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: the supervisor validates the settings once and sends them to every worker
        (and to every later replacement); READY=1 once each listening worker has applied them."""
        self.notifier.reloading()
        self.reload_waiting = set()
        try:
            loaded = self.reload_settings_now()
        except ConfigError as exc:
            self.log.error("reload refused: invalid configuration", extra={"error": str(exc)})
        except Exception:
            self.log.exception("reload failed; the previous settings stay in force")
        else:
            self.settings, _, refused = merge_reload(self.settings, loaded)
            logs.set_level(self.settings.log_level)
            if refused:
                self.log.warning(
                    "some changed settings apply only after a restart", extra={"settings": refused}
                )
            for worker in self.workers:
                if worker.listening and self.send_settings(worker):
                    self.reload_waiting.add(worker.index)
        self.reload_answered(None)

    def send_settings(self, worker: Worker) -> bool:
        """Give a listening worker the current settings, if it runs others; True if sent."""
        text = worker_settings(self.settings).as_toml()
        if worker.writer is None or worker.settings_sent == text:
            return False
        worker.settings_sent = text
        worker.writer.write(encode({"reload": text}))
        return True

    def reload_settings_now(self) -> Settings:
        if self.reload_settings is None:
            return self.settings
        return self.reload_settings()

    def reload_answered(self, index: int | None) -> None:
        if index is not None:
            if index not in self.reload_waiting:
                return
            self.reload_waiting.discard(index)
        if not self.reload_waiting:
            self.spawn_task(self.reload_done())

    async def reload_done(self) -> None:
        self.log.info("every worker reloaded", extra={"workers": len(self.workers)})
        self.notifier.ready(self.status_text())

    def stop(self) -> None:
        """SIGTERM/SIGINT: every worker drains; the supervisor exits once all have stopped."""
        if self.draining:
            return
        self.draining = True
        timeout = self.settings.drain_timeout
        self.log.info("draining", extra={"workers": len(self.workers), "timeout": timeout})
        self.notifier.stopping()
        self.notifier.extend_timeout(timeout + 5)
        if self.viewer is not None:  # once every worker has closed its copy, viewers are refused
            self.viewer.close()
        for worker in self.workers:
            self.signal(worker, signal.SIGTERM)
        self.finish_once_all_stopped()

    def finish_once_all_stopped(self) -> None:
        if self.starting:
            return  # start() may be creating a worker; it calls this again when done
        if all(w.process is None or w.process.returncode is not None for w in self.workers):
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
        self.pings.stop()
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
