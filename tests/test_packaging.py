"""The .deb and its systemd unit, proven with a real systemd: build, install, start, serve, stop.

`make deb` builds the package; it is installed with dpkg into a Debian 12 container booted under
systemd-nspawn (see nspawn.py), where systemctl drives the installed daemon while the host talks
to it over 127.0.0.1 (the container shares the host's network). The tests share one container
and run in file order (serve, reload, SIGKILL, upgrade, stop, socket activation, remove); each
starts the daemon itself if it needs it running, so one failure does not topple the rest.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nspawn
import pytest
from system_tools import require, tool

pytestmark = [pytest.mark.timeout(600), pytest.mark.system_tools]  # container: see conftest

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
UNIT = "sssrd.service"
SOCKET_UNITS = ("sssrd-viewer.socket", "sssrd-callback.socket", "sssrd-admin.socket")
CONFIG = "/etc/sssrd/sssrd.toml"
MAX_EXPOSURE = 2.0
HTTP_TIMEOUT = 30
DRAIN_TIMEOUT = 20.0  # well above the 4 s stream the stop test holds open
WORKERS = 2  # the packaged daemon runs as a supervisor and workers, callback ports p and p + 1


@dataclass(frozen=True)
class Ports:
    viewer: int
    callback: int
    admin: int


@dataclass(frozen=True)
class Daemon:
    container: nspawn.Container
    ports: Ports

    def config_path(self) -> Path:
        return self.container.root / CONFIG.lstrip("/")


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nspawn.Container]:
    assert os.geteuid() == 0, "booting a container needs root"
    require(*nspawn.REQUIRED_TOOLS)
    workdir = tmp_path_factory.mktemp("container")
    with nspawn.booted(workdir, f"sssrd-test-{os.getpid()}") as booted:
        yield booted


@pytest.fixture(scope="module")
def installed(container: nspawn.Container, deb: Path) -> nspawn.Container:
    shutil.copy(deb, container.root / "var/tmp" / deb.name)
    container.run("dpkg", "--install", f"/var/tmp/{deb.name}")
    return container


@pytest.fixture(scope="module")
def daemon(installed: nspawn.Container) -> Daemon:
    ports = Ports(*free_ports(3))
    started = Daemon(installed, ports)
    started.config_path().write_text(daemon_config(ports))
    installed.systemctl("start", UNIT)
    wait_active(installed)
    return started


def free_ports(count: int) -> list[int]:
    """Viewer, callback and admin ports free now; the callback's next WORKERS - 1 ports too."""
    for _ in range(100):  # bounded: a run of free ports is found within a few tries
        sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
        ports = [sock.getsockname()[1] for sock in sockets]
        try:
            for offset in range(1, WORKERS):
                sockets.append(socket.create_server(("127.0.0.1", ports[1] + offset)))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return ports
    raise AssertionError("no run of free callback ports")


def daemon_config(ports: Ports) -> str:
    return (
        f'listen = "127.0.0.1:{ports.viewer}"\n'
        f'callback_listen = "127.0.0.1:{ports.callback}"\n'
        f'callback_url = "http://127.0.0.1:{ports.callback}"\n'
        f'admin_listen = "127.0.0.1:{ports.admin}"\n'
        'invoker = "local"\n'
        'handler = "sssrd.demo:handler"\n'
        f"drain_timeout = {DRAIN_TIMEOUT}\n"
        f"workers = {WORKERS}\n"
    )


def wait_active(container: nspawn.Container) -> str:
    """Wait until the unit is active with a main process; return that process id."""

    def main_pid_when_active() -> str | None:
        state = container.systemctl("is-active", UNIT, check=False)
        if state in ("inactive", "failed"):
            # Dead, and not coming back by itself (a restart shows as "activating").
            raise AssertionError(f"{UNIT} is {state}:\n{journal(container)}")
        pid = container.unit_property(UNIT, "MainPID")
        return pid if state == "active" and pid != "0" else None

    return nspawn.wait_until(main_pid_when_active, f"{UNIT} to become active", 60)


def ensure_running(container: nspawn.Container) -> str:
    """Start the daemon if an earlier test left it stopped; return its main process id."""
    container.systemctl("start", UNIT)
    return wait_active(container)


def journal(container: nspawn.Container) -> str:
    return container.run("journalctl", "--unit", UNIT, "--output", "cat", "--no-pager").stdout


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        connection.close()


def test_unit_hardening_exposure_is_at_most_two():
    analysis = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=yes", str(PACKAGING / UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", analysis.stdout)
    assert found, analysis.stdout + analysis.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, analysis.stdout


def test_deb_has_no_lintian_errors(deb: Path):
    lint = subprocess.run([tool("lintian"), str(deb)], capture_output=True, text=True, timeout=300)
    errors = [line for line in lint.stdout.splitlines() if line.startswith("E:")]
    assert not errors, lint.stdout
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_deb_is_named_for_version_and_keeps_config_as_conffile(deb: Path):
    version = re.search(r'__version__ = "([^"]+)"', (REPO / "sssrd/__init__.py").read_text())
    assert version
    architecture = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert deb.name == f"sssrd_{version.group(1)}_{architecture}.deb"
    conffiles = subprocess.run(
        [tool("dpkg-deb"), "--ctrl-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    listing = subprocess.run(
        ["tar", "-xO", "./conffiles"], input=conffiles, capture_output=True, check=True
    ).stdout.decode()
    assert listing.split() == [CONFIG]


def test_units_and_man_page_point_at_documentation_the_deb_installs(deb: Path):
    listing = subprocess.run(
        [tool("dpkg-deb"), "--contents", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    installed = {line.split()[-1].removeprefix(".") for line in listing.splitlines()}
    pointed_at = set()
    for unit in (UNIT, *SOCKET_UNITS):
        documentation = re.search(r"^Documentation=(.+)$", (PACKAGING / unit).read_text(), re.M)
        assert documentation, unit
        pointed_at |= {url.removeprefix("file://") for url in documentation.group(1).split()}
    man_page = (PACKAGING / "deb" / "sssrd.8").read_text()
    pointed_at |= set(re.findall(r"^\.IR? (/usr/share/doc/\S+?)(?: \.)?$", man_page, re.M))
    assert "/usr/share/man/man8/sssrd.8.gz" in installed
    assert "/usr/share/doc/sssrd/docs/settings.md" in pointed_at
    assert pointed_at <= installed, pointed_at - installed


def test_install_enables_the_service_without_starting_it(installed: nspawn.Container):
    assert installed.systemctl("is-enabled", UNIT, check=False) == "enabled"
    assert installed.systemctl("is-active", UNIT, check=False) == "inactive"
    version = installed.run("/opt/sssrd/bin/sssrd", "version").stdout
    assert version.startswith("sssrd ")


def test_installed_units_pass_systemd_analyze_verify(installed: nspawn.Container):
    verified = installed.run(
        "systemd-analyze", "verify", *(f"/lib/systemd/system/{u}" for u in (UNIT, *SOCKET_UNITS))
    )
    assert verified.stderr == ""


def test_started_daemon_serves_health_a_streamed_demo_page_and_metrics(daemon: Daemon):
    status, _, body = get(daemon.ports.viewer, "/healthz")
    assert status == 200, body

    status, headers, page = get(daemon.ports.viewer, "/?lines=3&delay_ms=0")
    assert status == 200, page
    assert headers.get("transfer-encoding") == "chunked"
    assert len(page) > 4096
    assert b"Line 3 of 3" in page
    assert page.rstrip().endswith(b"</html>")

    for _ in range(4):  # a few more, so that (most likely) both workers render one
        assert get(daemon.ports.viewer, "/?lines=1&delay_ms=0")[0] == 200
    status, _, metrics = get(daemon.ports.admin, "/metrics")
    assert status == 200
    assert 'sssrd_requests_total{code="2xx",outcome="ok"} 5.0' in metrics.decode()

    listening = [
        json.loads(line)
        for line in journal(daemon.container).splitlines()
        if "sssrd listening" in line
    ]
    assert listening[-1]["workers"] == WORKERS
    assert listening[-1]["callback_urls"] == [
        f"http://127.0.0.1:{daemon.ports.callback + i}" for i in range(WORKERS)
    ]


def test_access_log_reaches_the_journal_as_json(daemon: Daemon):
    status, _, _ = get(daemon.ports.viewer, "/?lines=1&delay_ms=0")
    assert status == 200

    def access_line() -> dict[str, object] | None:
        for line in journal(daemon.container).splitlines():
            record = json.loads(line) if line.startswith("{") else None
            if isinstance(record, dict) and record.get("request_id"):
                return record
        return None

    record = nspawn.wait_until(access_line, "the access line in the journal", 30)
    assert record["status"] == 200
    assert record["request_id"]


def test_reload_keeps_the_process_and_refuses_a_broken_config(daemon: Daemon):
    container = daemon.container
    pid = ensure_running(container)
    container.systemctl("reload", UNIT)
    assert wait_active(container) == pid
    assert get(daemon.ports.viewer, "/healthz")[0] == 200

    good_config = daemon.config_path().read_text()
    daemon.config_path().write_text(good_config + "drain_timeout = -1\n")
    try:
        refused = container.run("systemctl", "reload", UNIT, check=False)
    finally:
        daemon.config_path().write_text(good_config)
    assert refused.returncode != 0
    assert wait_active(container) == pid
    assert get(daemon.ports.viewer, "/healthz")[0] == 200


def test_sigkilled_daemon_is_restarted_by_systemd(daemon: Daemon):
    container = daemon.container
    killed_pid = ensure_running(container)
    restarts = int(container.unit_property(UNIT, "NRestarts"))
    container.run("kill", "-KILL", killed_pid)

    def new_main_pid() -> str | None:
        pid = wait_active(container)
        return pid if pid != killed_pid else None

    nspawn.wait_until(new_main_pid, "systemd to restart the killed daemon", 60)
    assert int(container.unit_property(UNIT, "NRestarts")) == restarts + 1
    assert get(daemon.ports.viewer, "/healthz")[0] == 200


def test_upgrade_restarts_a_running_daemon_and_keeps_the_admins_choice(daemon: Daemon, deb: Path):
    container = daemon.container
    old_pid = ensure_running(container)
    container.systemctl("disable", UNIT)
    container.run("dpkg", "--install", f"/var/tmp/{deb.name}")
    assert wait_active(container) != old_pid
    assert container.systemctl("is-enabled", UNIT, check=False) == "disabled"
    assert get(daemon.ports.viewer, "/healthz")[0] == 200
    container.systemctl("enable", UNIT)


def test_stop_lets_an_in_flight_stream_finish_then_exits_cleanly(daemon: Daemon):
    container = daemon.container
    ensure_running(container)
    connection = http.client.HTTPConnection("127.0.0.1", daemon.ports.viewer, timeout=HTTP_TIMEOUT)
    connection.request("GET", "/?lines=20&delay_ms=200")
    response = connection.getresponse()
    assert response.status == 200
    first = response.read1()
    assert first

    stopped: list[subprocess.CompletedProcess[str]] = []
    stop = threading.Thread(
        target=lambda: stopped.append(container.run("systemctl", "stop", UNIT, check=False))
    )
    stop.start()
    try:
        nspawn.wait_until(lambda: stop_has_begun(container), "the stop to begin", 30)
        # The stop has begun while 20 lines (4 s of render) are still to come: a daemon that did
        # not drain would cut this body short, and http.client would raise IncompleteRead.
        rest = response.read()
    finally:
        stop.join(timeout=60)
        connection.close()
    page = first + rest
    assert stopped and stopped[0].returncode == 0, stopped
    assert b"Line 20 of 20" in page
    assert page.rstrip().endswith(b"</html>")
    assert container.systemctl("is-active", UNIT, check=False) == "inactive"
    assert container.unit_property(UNIT, "Result") == "success"
    assert container.unit_property(UNIT, "ExecMainStatus") == "0"


def test_socket_units_activate_the_daemon_on_its_first_connection(daemon: Daemon):
    container = daemon.container
    container.systemctl("stop", UNIT)
    sockets = Ports(*free_ports(3))
    # The daemon's own listen settings name other ports: only inherited sockets can answer.
    daemon.config_path().write_text(
        daemon_config(daemon.ports).replace(
            f"http://127.0.0.1:{daemon.ports.callback}", f"http://127.0.0.1:{sockets.callback}"
        )
    )
    drop_ins = []
    for unit, port in zip(
        SOCKET_UNITS, (sockets.viewer, sockets.callback, sockets.admin), strict=True
    ):
        drop_in = container.root / "etc/systemd/system" / f"{unit}.d" / "test-port.conf"
        drop_in.parent.mkdir(parents=True)
        drop_in.write_text(f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")
        drop_ins.append(drop_in.parent)
    container.systemctl("daemon-reload")
    try:
        container.systemctl("start", *SOCKET_UNITS)
        assert container.systemctl("is-active", UNIT, check=False) == "inactive"
        status, _, page = get(sockets.viewer, "/?lines=2&delay_ms=0")
        assert status == 200, page
        assert b"Line 2 of 2" in page
        assert get(sockets.admin, "/healthz")[0] == 200
        wait_active(container)
    finally:
        container.systemctl("stop", UNIT, *SOCKET_UNITS, check=False)
        for directory in drop_ins:
            shutil.rmtree(directory)
        container.systemctl("daemon-reload")
        daemon.config_path().write_text(daemon_config(daemon.ports))


def stop_has_begun(container: nspawn.Container) -> bool:
    state = container.systemctl("is-active", UNIT, check=False)
    if state in ("inactive", "failed"):
        raise AssertionError(f"{UNIT} went {state} with a stream in flight:\n{journal(container)}")
    return state == "deactivating"


def test_remove_keeps_the_config_and_purge_deletes_it(installed: nspawn.Container):
    config = installed.root / CONFIG.lstrip("/")
    installed.run("dpkg", "--remove", "sssrd")
    assert config.exists()
    assert not (installed.root / "opt/sssrd").exists()
    assert installed.systemctl("is-active", UNIT, check=False) == "inactive"
    installed.run("dpkg", "--purge", "sssrd")
    assert not (installed.root / "etc/sssrd").exists()
    wanted = installed.root / "etc/systemd/system/multi-user.target.wants" / UNIT
    assert not wanted.is_symlink()
