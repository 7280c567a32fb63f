"""The `sssrd` command: serve, dev, check-config, loadtest, version.

Every setting in config.FIELDS gets a `--name-with-dashes` flag on serve, dev and check-config,
so flags, env (SSSRD_*) and the TOML file always offer the same knobs. Exit codes: 0 on a clean
stop (including after a drain), 2 for an invalid configuration, 1 when startup fails otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

import uvloop

from sssrd import __version__, logs
from sssrd.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    FIELDS,
    ConfigError,
    Settings,
    load_settings,
    unknown_env,
)
from sssrd.invokers import make_invoker
from sssrd.server import Server
from sssrd.systemd import Notifier, listen_fds

DEV_DEFAULTS = {
    "listen": "127.0.0.1:8080",
    "callback_listen": "127.0.0.1:8081",
    "admin_listen": "127.0.0.1:9090",
    "invoker": "local",
    "handler": "sssrd.demo:handler",
    "workers": 1,
}
EXIT_CONFIG = 2
EXIT_STARTUP = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sssrd", description="Streaming server-side rendering daemon."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run the daemon"),
        ("dev", "run locally with the local invoker and the demo renderer"),
        ("check-config", "validate the configuration and print the effective settings"),
    ):
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument(
            "--config",
            help=f"TOML config file (default: {DEFAULT_CONFIG_PATH} if it exists; "
            f"{CONFIG_ENV} also names one)",
        )
        for field in FIELDS:
            command.add_argument(
                "--" + field.name.replace("_", "-"), dest=field.name, help=field.help
            )
        if name == "check-config":
            command.add_argument(
                "--strict",
                action="store_true",
                help="exit 2 on warnings too (an SSSRD_ variable that names no setting)",
            )
    commands.add_parser("version", help="print the version")
    commands.add_parser("loadtest", help="load-test a URL (sssrd loadtest --help)", add_help=False)
    return parser


def config_path(arguments: argparse.Namespace) -> str | None:
    explicit = arguments.config or os.environ.get(CONFIG_ENV)
    if explicit:
        return explicit
    return DEFAULT_CONFIG_PATH if os.path.exists(DEFAULT_CONFIG_PATH) else None


def settings_from(arguments: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {field.name: getattr(arguments, field.name) for field in FIELDS}
    defaults = DEV_DEFAULTS if arguments.command == "dev" else None
    return load_settings(config_path(arguments), flags=flags, defaults=defaults)


async def run_daemon(settings: Settings, arguments: argparse.Namespace) -> None:
    notifier = Notifier.from_environment()
    invoker = make_invoker(settings)  # a bad region, credentials or ARN fail here, in one line
    if settings.workers > 1:
        from sssrd.workers import Supervisor

        invoker.close()  # each worker builds its own; this one only proved it can be built
        supervisor = Supervisor(
            settings,
            inherited=listen_fds(),
            notifier=notifier,
            reload_settings=lambda: settings_from(arguments),
        )
        await supervisor.start()
        await supervisor.wait_stopped()
        return
    server = Server(
        settings,
        invoker,
        inherited=listen_fds(),
        notifier=notifier,
        reload_settings=lambda: settings_from(arguments),
    )
    await server.start()
    if arguments.command == "dev":
        metrics = (
            f" (metrics on http://{server.address_of('admin')}/metrics)"
            if "admin" in server.listeners  # admin_listen = "off" has none
            else ""
        )
        print(
            f"sssrd dev: open http://{server.address_of('viewer')}/{metrics}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
    await server.wait_stopped()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["loadtest"]:  # its own options and libraries (the loadtest extra)
        from sssrd.loadtest import main as loadtest

        return loadtest(argv[1:])
    arguments = build_parser().parse_args(argv)
    if arguments.command == "version":
        print(f"sssrd {__version__}")
        return 0
    try:
        settings = settings_from(arguments)
    except ConfigError as exc:
        print(f"sssrd: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    warnings = unknown_env(os.environ)
    if arguments.command == "check-config":
        for warning in warnings:
            print(f"sssrd: warning: {warning}", file=sys.stderr)
        sys.stdout.write(settings.as_toml())
        return EXIT_CONFIG if warnings and arguments.strict else 0
    logs.configure(settings.log_level)
    for warning in warnings:
        logs.log.warning("environment variable ignored", extra={"warning": warning})
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_daemon(settings, arguments))
    except (OSError, ValueError) as exc:
        print(f"sssrd: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
