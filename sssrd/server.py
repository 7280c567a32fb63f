"""The daemon's lifecycle: it builds the parts, binds the listeners, accepts, drains, stops.

A Server builds the ServerState every connection is handed (pending registry, invoker, pipe pool,
tally), binds (or adopts, under socket activation) the viewer, callback and admin listeners, and
runs one task per accepted connection; it reacts to signals and speaks to systemd. Stopping
(SIGTERM/SIGINT) drains: the viewer listener stops accepting, health turns 503, in-flight requests
get drain_timeout to finish while the callback listener keeps serving their callbacks, then every
connection is closed. Nothing but the CLI imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import h11

from sssrd import ec2, logs
from sssrd.admin import AdminConnection
from sssrd.callbacks import CallbackConnection
from sssrd.config import Address, ConfigError, Settings, merge_reload
from sssrd.connection import INCOMPLETE_EVENT_CEILING, Connection
from sssrd.invokers import Invoker
from sssrd.listeners import ACCEPT_ERROR_PAUSE, bind_named
from sssrd.pending import PendingRegistry
from sssrd.pipe import PipePool
from sssrd.served import ServedConnection
from sssrd.state import ServerState
from sssrd.systemd import STATUS_INTERVAL, Notifier, watchdog_interval
from sssrd.tally import Tally
from sssrd.viewer import ViewerConnection

# 64 KiB pipes: 1,024 of them are the 64 MiB of pipe pages a non-root user may hold; streams
# beyond that copy instead of splicing.
MAX_PIPES = 1024
Handler = type[ServedConnection]


def shift_port(url: str, offset: int) -> str:
    """`url` with its port (explicit or the scheme's default) moved up by `offset`."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{host}:{port + offset}"))


class Server:
    """One running daemon."""

    def __init__(
        self,
        settings: Settings,
        invoker: Invoker,
        *,
        inherited: dict[str, list[socket.socket]] | None = None,
        notifier: Notifier | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        worker_index: int | None = None,
    ) -> None:
        """`worker_index` makes this one of several workers (workers.py): its callback base
        names its own port, and it says "worker listening" rather than "sssrd listening"."""
        self.loop = asyncio.get_running_loop()
        self.state = ServerState(
            settings=settings,
            loop=self.loop,
            pending=PendingRegistry(settings.max_pending),
            invoker=invoker,
            pipes=PipePool(MAX_PIPES),
            tally=Tally(),
            callback_base=settings.callback_url,
        )
        self.tally = self.state.tally
        self.inherited = inherited or {}
        self.notifier = notifier or Notifier(None)
        self.reload_settings = reload_settings
        self.worker_index = worker_index
        self.log = logs.log
        self.listeners: dict[str, socket.socket] = {}
        self.accept_tasks: dict[str, asyncio.Task[None]] = {}
        self.connections: dict[str, set[asyncio.Task[None]]] = {
            "viewer": set(),
            "callback": set(),
            "admin": set(),
        }
        self.stopped = asyncio.Event()
        self.status_timer: asyncio.TimerHandle | None = None
        self.watchdog_timer: asyncio.TimerHandle | None = None
        self.bind_gauges()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every listener, learn the callback URL, start accepting, tell systemd."""
        settings = self.settings
        wanted: list[tuple[str, Address | None, Handler]] = [
            ("viewer", settings.listen, ViewerConnection),
            ("callback", settings.callback_listen, CallbackConnection),
            ("admin", settings.admin_listen, AdminConnection),
        ]
        try:
            for name, address, _ in wanted:
                sock = self.listener_socket(name, address)
                if sock is not None:
                    self.listeners[name] = sock
            # Before any accept: every event must carry the right callback URL.
            self.state.callback_base = await self.advertised_callback_base()
        except BaseException:
            self.close_listeners()
            raise
        for name, _, handler in wanted:
            if name in self.listeners:
                self.accept_tasks[name] = self.loop.create_task(self.accept(name, handler))
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.stop)
        if self.reload_settings is not None:
            self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.notifier.ready(self.status_text())
        self.schedule_status()
        self.schedule_watchdog(watchdog_interval())
        facts: dict[str, object] = {name: self.address_of(name) for name in self.listeners}
        facts["callback_url"] = self.state.callback_base
        if self.worker_index is not None:
            facts |= {"worker": self.worker_index, "pid": os.getpid()}
        self.log.info(
            "sssrd listening" if self.worker_index is None else "worker listening", extra=facts
        )

    async def advertised_callback_base(self) -> str:
        """The configured base; or derived from the bound callback port (so port 0 works).

        Worker i of several owns callback port `callback_listen` + i: an explicit base names
        worker 0's port, so worker i advertises that port + i.
        """
        configured = self.settings.callback_url
        port = self.listeners["callback"].getsockname()[1]
        if configured == "auto":
            endpoint = ec2.imds_endpoint(self.settings.imds_endpoint)
            address = await self.loop.run_in_executor(None, ec2.private_ipv4, endpoint)
            return f"http://{address}:{port}"
        if configured and self.worker_index:
            return shift_port(configured, self.worker_index)
        return configured or f"http://{self.address_of('callback')}"

    def listener_socket(self, name: str, address: Address | None) -> socket.socket | None:
        inherited = self.inherited.get(name)
        if inherited:
            sock = inherited[0]
            sock.setblocking(False)
            return sock
        if address is None:
            return None
        return bind_named(name, address, self.settings.backlog)

    def address_of(self, name: str) -> str:
        host, port = self.listeners[name].getsockname()[:2]
        return str(Address(host, port))

    @property
    def settings(self) -> Settings:
        return self.state.settings

    async def wait_stopped(self) -> None:
        await self.stopped.wait()

    def stop(self) -> None:
        """Begin draining (idempotent); the daemon exits when the drain completes."""
        if not self.state.draining:
            self.state.draining = True
            self.loop.create_task(self.drain())

    async def drain(self) -> None:
        timeout = self.settings.drain_timeout
        tally = self.tally
        self.stop_accepting("viewer")  # first: once "draining" is logged, no viewer gets in
        self.log.info("draining", extra={"in_flight": tally.cycles_in_flight, "timeout": timeout})
        self.notifier.stopping()
        self.notifier.extend_timeout(timeout + 5)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await tally.idle.wait()
        left = tally.cycles_in_flight
        for name in list(self.accept_tasks):
            self.stop_accepting(name)
        # Viewers first: each cut cycle answers its callback (410, so the render stops) before
        # the callback connections are cancelled in turn.
        for group in self.connections.values():
            tasks = list(group)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.close_listeners()
        for timer in (self.status_timer, self.watchdog_timer):
            if timer is not None:
                timer.cancel()
        self.state.invoker.close()
        self.state.pipes.close()
        self.log.info("stopped", extra={"abandoned": left})
        self.stopped.set()

    def reload(self) -> None:
        """SIGHUP: apply what can change live; report, never silently ignore, the rest.

        Every reload, applied or refused, ends with a log line and READY=1: systemd waits in
        "reloading" until it hears READY=1 after RELOADING=1.
        """
        assert self.reload_settings is not None
        self.notifier.reloading()
        try:
            self.apply_reload(self.reload_settings())
        except ConfigError as exc:
            self.log.error("reload refused: invalid configuration", extra={"error": str(exc)})
        except Exception:
            self.log.exception("reload failed; the previous settings stay in force")
        finally:
            self.notifier.ready(self.status_text())

    def apply_reload(self, loaded: Settings) -> None:
        self.state.settings, applied, refused = merge_reload(self.settings, loaded)
        self.state.pending.set_limit(self.settings.max_pending)
        self.tally.metrics.pending_limit.set(self.settings.max_pending)
        logs.set_level(self.settings.log_level)
        self.log.info("reloaded", extra={"applied": applied, "needs_restart": refused})
        if refused:
            self.log.warning(
                "some changed settings apply only after a restart", extra={"settings": refused}
            )

    def stop_accepting(self, name: str) -> None:
        task = self.accept_tasks.pop(name, None)
        if task is not None:
            task.cancel()
        sock = self.listeners.pop(name, None)
        if sock is not None:
            sock.close()

    def close_listeners(self) -> None:
        for sock in self.listeners.values():
            sock.close()
        self.listeners.clear()

    # -- connections -----------------------------------------------------------------------

    async def accept(self, name: str, handler: Handler) -> None:
        listener = self.listeners[name]
        role = h11.SERVER
        accepted = self.tally.metrics.connections_by_listener[name]
        while True:
            try:
                sock, _ = await self.loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and friends: keep serving what we have
                self.log.error("accept failed", extra={"listener": name, "error": str(exc)})
                await asyncio.sleep(ACCEPT_ERROR_PAUSE)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            parser = h11.Connection(role, max_incomplete_event_size=INCOMPLETE_EVENT_CEILING)
            conn = Connection(self.loop, sock, parser)
            accepted.inc()
            task = self.loop.create_task(self.serve(name, handler(self.state, conn).run, conn))
            self.connections[name].add(task)
            task.add_done_callback(self.connections[name].discard)

    async def serve(self, name: str, run: Callable[[], Awaitable[None]], conn: Connection) -> None:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("connection failed", extra={"listener": name, "peer": conn.peer})
        finally:
            conn.close()

    # -- gauges, status, watchdog ----------------------------------------------------------

    def bind_gauges(self) -> None:
        """Gauges read live state at scrape time: nothing to update on the hot path."""
        metrics = self.tally.metrics
        metrics.pending_callbacks.set_function(lambda: self.state.pending.waiting)
        metrics.streams_in_flight.set_function(lambda: self.tally.streams_in_flight)
        metrics.pending_limit.set(self.settings.max_pending)
        for name, tasks in self.connections.items():
            metrics.connections_open_by_listener[name].set_function(functools.partial(len, tasks))

    def status_text(self) -> str:
        state = "draining" if self.state.draining else "serving"
        return (
            f"{state}: {self.tally.streams_in_flight} streaming, "
            f"{self.state.pending.waiting} awaiting callback, "
            f"{len(self.connections['viewer'])} viewer connections"
        )

    def schedule_status(self) -> None:
        if self.notifier.enabled:
            self.notifier.status(self.status_text())
            self.status_timer = self.loop.call_later(STATUS_INTERVAL, self.schedule_status)

    def schedule_watchdog(self, interval: float | None) -> None:
        """WATCHDOG=1 from the event loop itself: a stuck loop stops the pings."""
        if interval is not None:
            self.notifier.watchdog()
            self.watchdog_timer = self.loop.call_later(interval, self.schedule_watchdog, interval)
