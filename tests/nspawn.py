"""Boots a throwaway Debian 12 with systemd as PID 1 under systemd-nspawn, for packaging tests.

The root file system is made by mmdebstrap once per package list and cached as a tarball under
/var/cache/sssrd-test; each Container unpacks a fresh copy, boots it from a cgroup of its own
(these machines have no systemd on the host) and runs commands inside through nsenter. Leaving
the `with` block always stops the container and removes its cgroups and files.

A container shares the host's network unless it is booted in a NetworkNamespace: one of its
own, holding only a loopback interface, so the container's services can keep fixed ports (and
its systemd can set network sysctls) without touching the host or another test run. The host
reaches them by running its own tools in that namespace (`NetworkNamespace.command`), and can
start stand-ins there before the container boots. `power_off` and `boot` stop and start the
same root again, as a machine is rebooted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeVar

SUITE = "bookworm"
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "procps")
CACHE_DIR = Path(os.environ.get("SSSRD_TEST_CACHE", "/var/cache/sssrd-test"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REQUIRED_TOOLS = ("mmdebstrap", "systemd-nspawn", "nsenter", "pgrep", "tar", "zstd", "ip")

T = TypeVar("T")


class ContainerError(RuntimeError):
    """The container could not be built, booted or driven; the message says what to look at."""


def cached_root(packages: tuple[str, ...] = BASE_PACKAGES) -> Path:
    """The tarball of a minbase root with `packages`, built on first use (about 25 s)."""
    key = hashlib.sha256(f"{SUITE} minbase {sorted(packages)}".encode()).hexdigest()[:16]
    tarball = CACHE_DIR / f"root-{SUITE}-{key}.tar.zst"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        # Two test runs at once must not both write (or read half of) the same tarball.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            partial = tarball.with_name(f"partial-{os.getpid()}-{tarball.name}")
            command = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(packages)]
            _run([*command, SUITE, str(partial)], timeout=600, what="mmdebstrap")
            partial.rename(tarball)
    return tarball


class Container:
    """A booted container; `run` executes a command inside it as root."""

    def __init__(
        self, tarball: Path, workdir: Path, name: str, network: NetworkNamespace | None = None
    ) -> None:
        self.tarball = tarball
        self.root = workdir / "root"
        self.console_log = workdir / "console.log"
        self.name = name
        self.network = network
        self.cgroups = _container_cgroups(name)
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def __enter__(self) -> Container:
        try:
            self.root.mkdir(parents=True)
            _run(["tar", "-C", str(self.root), "--zstd", "-xf", str(self.tarball)], what="unpack")
            self.boot(self.network)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def run(
        self, *argv: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the container (all its namespaces) with a clean environment."""
        command = ["nsenter", "--target", str(self.init_pid), "--all"]
        command += ["env", "-i", f"PATH={CONTAINER_PATH}", "LANG=C.UTF-8", *argv]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise ContainerError(
                f"{' '.join(argv)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def systemctl(self, *arguments: str, check: bool = True) -> str:
        return self.run("systemctl", *arguments, check=check).stdout.strip()

    def unit_property(self, unit: str, name: str) -> str:
        return self.systemctl("show", "--property", name, "--value", unit)

    def close(self) -> None:
        """Stop the container and remove its files."""
        self.power_off()
        shutil.rmtree(self.root, ignore_errors=True)

    def power_off(self) -> None:
        """Stop the container (a clean poweroff if it obliges, else SIGKILL); keep its root."""
        if self.nspawn is not None:
            if self.nspawn.poll() is None:
                self.nspawn.terminate()  # nspawn turns SIGTERM into a poweroff of the container
                try:
                    self.nspawn.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.nspawn.kill()
                    self.nspawn.wait(timeout=30)
            self.nspawn = None
        for cgroup in self.cgroups:
            _remove_cgroup_tree(cgroup)

    def boot(self, network: NetworkNamespace | None = None) -> None:
        """Boot the root (again, after `power_off`), in `network` if given (else the host's
        network), and wait until systemd has finished starting it."""
        self.network = network
        for cgroup in self.cgroups:
            cgroup.mkdir()
        # The shell moves itself into the new cgroups, then becomes nspawn.
        script = 'for group in $CGROUPS; do echo $$ > "$group/cgroup.procs"; done; exec "$@"'
        nspawn = [
            "systemd-nspawn",
            f"--directory={self.root}",
            f"--machine={self.name}",
            "--boot",
            "--register=no",  # both needed when the host runs no systemd
            "--keep-unit",
            "--console=passive",
        ]
        environment = {**os.environ, "CGROUPS": " ".join(str(group) for group in self.cgroups)}
        if network is not None:
            nspawn.append(f"--network-namespace-path={network.path}")
            # Its /proc/sys/net is the namespace's own, so the container's systemd may set
            # network sysctls there (nspawn mounts it read-only for a joined namespace).
            environment["SYSTEMD_NSPAWN_API_VFS_WRITABLE"] = "network"
        with open(self.console_log, "ab") as console:  # one log across reboots
            self.nspawn = subprocess.Popen(
                ["sh", "-c", script, "sh", *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        self.init_pid = wait_until(self._find_init, "the container's systemd to start", 30)
        state = wait_until(self._system_state, "the container to finish booting", 60)
        if state not in ("running", "degraded"):
            raise ContainerError(f"container boot ended {state!r}:\n{self.console_tail()}")

    def _find_init(self) -> int | None:
        self._check_alive()
        assert self.nspawn is not None
        found = subprocess.run(
            ["pgrep", "-P", str(self.nspawn.pid), "-x", "systemd"], capture_output=True, text=True
        )
        return int(found.stdout.split()[0]) if found.returncode == 0 else None

    def _system_state(self) -> str | None:
        self._check_alive()
        state = self.systemctl("is-system-running", check=False)
        # Until its bus is up systemctl prints nothing useful; "starting" means not yet.
        return state if state in ("running", "degraded", "maintenance", "stopping") else None

    def _check_alive(self) -> None:
        if self.nspawn is None or self.nspawn.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited:\n{self.console_tail()}")

    def console_tail(self) -> str:
        return self.console_log.read_text(errors="replace")[-4000:]


class NetworkNamespace:
    """A network namespace of its own, holding only a loopback interface (up), for containers
    and host tools to share; a context manager (leaving it deletes the namespace)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = Path("/run/netns") / name

    def __enter__(self) -> NetworkNamespace:
        _run(["ip", "netns", "add", self.name], what="ip netns add")
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30)

    def ip(self, *arguments: str) -> None:
        """Run `ip` in the namespace, e.g. ip("address", "add", "10.0.1.23/32", "dev", "lo")."""
        _run(["ip", "-n", self.name, *arguments], what=f"ip {' '.join(arguments)}")

    def command(self, *argv: str) -> list[str]:
        """A host command line that runs argv (a host program) in this namespace only."""
        return ["nsenter", f"--net={self.path}", *argv]


def _container_cgroups(name: str) -> list[Path]:
    """Where a container's processes go: the unified tree, plus the named v1 systemd tree."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT / name]
    return [CGROUP_ROOT / hierarchy / name for hierarchy in ("systemd", "unified")]


def _remove_cgroup_tree(cgroup: Path) -> None:
    if not cgroup.exists():
        return
    for directory, _subdirs, _files in sorted(os.walk(cgroup), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def wait_until(probe: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    """Poll `probe` until it returns something other than None/False; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ContainerError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _run(argv: list[str], what: str, timeout: float = 300) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise ContainerError(f"{what} failed ({result.returncode}): {result.stderr[-4000:]}")


@contextlib.contextmanager
def booted(workdir: Path, name: str) -> Iterator[Container]:
    with Container(cached_root(), workdir, name) as container:
        yield container
