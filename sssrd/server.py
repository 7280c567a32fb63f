"""The daemon's lifecycle: listeners, accept loops, signals, drain, systemd notify, and tallies.

A Server binds (or adopts, under socket activation) the viewer, callback and admin listeners,
runs one task per accepted connection, and owns everything a connection reports to: the pending
registry, the invoker, metrics and the access log. Stopping (SIGTERM/SIGINT) drains: the viewer
listener stops accepting, health turns 503, in-flight requests get drain_timeout to finish while
the callback listener keeps serving their callbacks, then every connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import h11

from sssrd import ec2, logs
from sssrd.admin import AdminConnection
from sssrd.callbacks import CallbackConnection
from sssrd.config import Address, ConfigError, Settings, merge_reload
from sssrd.connection import INCOMPLETE_EVENT_CEILING, Connection
from sssrd.invokers import Invoker
from sssrd.metrics import Metrics
from sssrd.outcomes import Outcome, Rejected
from sssrd.pending import PendingRegistry
from sssrd.pipe import PipePool
from sssrd.systemd import Notifier, watchdog_interval
from sssrd.viewer import ViewerConnection

if TYPE_CHECKING:
    from sssrd.viewer import RequestCycle

STATUS_INTERVAL = 5.0
# 64 KiB pipes: 1,024 of them are the 64 MiB of pipe pages a non-root user may hold; streams
# beyond that copy instead of splicing.
MAX_PIPES = 1024
ACCEPT_ERROR_PAUSE = 0.1
ViewerAbortStatus = 499  # nginx's "client closed request": no status was ever sent


def bind_listener(address: Address, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


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
    ) -> None:
        self.settings = settings
        self.invoker = invoker
        self.callback_base = settings.callback_url
        self.inherited = inherited or {}
        self.notifier = notifier or Notifier(None)
        self.reload_settings = reload_settings
        self.loop = asyncio.get_running_loop()
        self.log = logs.log
        self.pending = PendingRegistry(settings.max_pending)
        self.pipes = PipePool(MAX_PIPES)
        self.metrics = Metrics()
        self.draining = False
        self.listeners: dict[str, socket.socket] = {}
        self.accept_tasks: dict[str, asyncio.Task[None]] = {}
        self.connections: dict[str, set[asyncio.Task[None]]] = {
            "viewer": set(),
            "callback": set(),
            "admin": set(),
        }
        self.cycles_in_flight = 0
        self.streams_in_flight = 0
        self.idle = asyncio.Event()
        self.stopped = asyncio.Event()
        self.status_timer: asyncio.TimerHandle | None = None
        self.watchdog_timer: asyncio.TimerHandle | None = None
        self.bind_gauges()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every listener, learn the callback URL, start accepting, tell systemd."""
        settings = self.settings
        wanted: list[tuple[str, Address | None, Callable[[Server, Connection], Any]]] = [
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
            self.callback_base = await self.advertised_callback_base()
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
        self.log.info(
            "sssrd listening",
            extra={name: self.address_of(name) for name in self.listeners}
            | {"callback_url": self.callback_base},
        )

    async def advertised_callback_base(self) -> str:
        """The configured base; or derived from the bound callback port (so port 0 works)."""
        configured = self.settings.callback_url
        port = self.listeners["callback"].getsockname()[1]
        if configured == "auto":
            endpoint = ec2.imds_endpoint(self.settings.imds_endpoint)
            address = await self.loop.run_in_executor(None, ec2.private_ipv4, endpoint)
            return f"http://{address}:{port}"
        return configured or f"http://{self.address_of('callback')}"

    def listener_socket(self, name: str, address: Address | None) -> socket.socket | None:
        inherited = self.inherited.get(name)
        if inherited:
            sock = inherited[0]
            sock.setblocking(False)
            return sock
        if address is None:
            return None
        try:
            return bind_listener(address, self.settings.backlog)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {address} ({name}): {exc.strerror}"
            ) from None

    def address_of(self, name: str) -> str:
        host, port = self.listeners[name].getsockname()[:2]
        return str(Address(host, port))

    async def wait_stopped(self) -> None:
        await self.stopped.wait()

    def stop(self) -> None:
        """Begin draining (idempotent); the daemon exits when the drain completes."""
        if not self.draining:
            self.draining = True
            self.loop.create_task(self.drain())

    async def drain(self) -> None:
        timeout = self.settings.drain_timeout
        self.log.info("draining", extra={"in_flight": self.cycles_in_flight, "timeout": timeout})
        self.notifier.stopping()
        self.notifier.extend_timeout(timeout + 5)
        self.stop_accepting("viewer")
        if self.cycles_in_flight:
            self.idle.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.idle.wait()
        left = self.cycles_in_flight
        for name in list(self.accept_tasks):
            self.stop_accepting(name)
        tasks = [task for group in self.connections.values() for task in group]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.close_listeners()
        for timer in (self.status_timer, self.watchdog_timer):
            if timer is not None:
                timer.cancel()
        self.invoker.close()
        self.pipes.close()
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
        self.settings, applied, refused = merge_reload(self.settings, loaded)
        self.pending.set_limit(self.settings.max_pending)
        self.metrics.pending_limit.set(self.settings.max_pending)
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

    async def accept(self, name: str, handler: Callable[[Server, Connection], Any]) -> None:
        listener = self.listeners[name]
        role = h11.SERVER
        accepted = self.metrics.connections_by_listener[name]
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
            task = self.loop.create_task(self.serve(name, handler(self, conn).run, conn))
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

    # -- what connections report -----------------------------------------------------------

    def cycle_started(self) -> None:
        self.cycles_in_flight += 1

    def request_finished(self, cycle: RequestCycle) -> None:
        self.cycles_in_flight -= 1
        if self.draining and self.cycles_in_flight == 0:
            self.idle.set()
        status = cycle.status or ViewerAbortStatus
        self.metrics.request_done(status, cycle.outcome)
        now = time.perf_counter()
        metrics = self.metrics
        if cycle.invoke_seconds is not None:
            metrics.invoke_duration.observe(cycle.invoke_seconds)
        if cycle.callback_wait is not None:
            metrics.callback_wait.observe(cycle.callback_wait)
        if cycle.ttfb is not None:
            metrics.time_to_first_byte.observe(cycle.ttfb)
        if cycle.outcome is Outcome.VIEWER_ABORT:
            metrics.aborts_by_side["viewer"].inc()
        record = {
            "time": logs.utc_timestamp(time.time()),
            "type": "access",
            "request_id": cycle.request_id or None,
            "method": cycle.method,
            "path": cycle.path,
            "status": status,
            "outcome": cycle.outcome,
            "bytes": cycle.body_bytes,
            "client": cycle.client,
            "invoke_ms": milliseconds(cycle.invoke_seconds),
            "callback_wait_ms": milliseconds(cycle.callback_wait),
            "ttfb_ms": milliseconds(cycle.ttfb),
            "duration_ms": milliseconds(now - cycle.started),
        }
        if cycle.error:
            record["error"] = cycle.error
        logs.write_access(record)

    def stream_started(self) -> None:
        self.streams_in_flight += 1

    def stream_ended(self, seconds: float, copied: int, spliced: int) -> None:
        self.streams_in_flight -= 1
        self.metrics.stream_duration.observe(seconds)
        self.metrics.body_bytes_copy.inc(copied)
        self.metrics.body_bytes_splice.inc(spliced)

    def timed_out(self, kind: str) -> None:
        self.metrics.timeouts_by_kind[kind].inc()

    def lambda_aborted(self, kind: Outcome) -> None:
        self.metrics.aborts_by_side["lambda"].inc()
        if kind is Outcome.IDLE:
            self.timed_out("idle")

    def callback_rejected(self, reason: Rejected) -> None:
        self.metrics.callbacks_rejected_by_reason[reason].inc()

    # -- gauges, status, watchdog ----------------------------------------------------------

    def bind_gauges(self) -> None:
        """Gauges read live state at scrape time: nothing to update on the hot path."""
        metrics = self.metrics
        metrics.pending_callbacks.set_function(lambda: self.pending.waiting)
        metrics.streams_in_flight.set_function(lambda: self.streams_in_flight)
        metrics.pending_limit.set(self.settings.max_pending)
        for name, tasks in self.connections.items():
            metrics.connections_open_by_listener[name].set_function(functools.partial(len, tasks))

    def status_text(self) -> str:
        state = "draining" if self.draining else "serving"
        return (
            f"{state}: {self.streams_in_flight} streaming, "
            f"{self.pending.waiting} awaiting callback, "
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


def milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
