"""Boots a throwaway Debian 12 with systemd as PID 1 under systemd-nspawn, for packaging tests.

The root file system is made by mmdebstrap once per package list and cached as a tarball under
/var/cache/sssrd-test; each Container unpacks a fresh copy, boots it from a cgroup of its own
(these machines have no systemd on the host) and runs commands inside through nsenter. Leaving
the `with` block always stops the container and removes its cgroups and files.
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
REQUIRED_TOOLS = ("mmdebstrap", "systemd-nspawn", "nsenter", "pgrep", "tar", "zstd")

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

    def __init__(self, tarball: Path, workdir: Path, name: str) -> None:
        self.tarball = tarball
        self.root = workdir / "root"
        self.console_log = workdir / "console.log"
        self.name = name
        self.cgroups = _container_cgroups(name)
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def __enter__(self) -> Container:
        try:
            self.root.mkdir(parents=True)
            _run(["tar", "-C", str(self.root), "--zstd", "-xf", str(self.tarball)], what="unpack")
            self._boot()
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
        """Stop the container (a clean poweroff if it obliges, else SIGKILL) and clean up."""
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
        shutil.rmtree(self.root, ignore_errors=True)

    def _boot(self) -> None:
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
        cgroups = " ".join(str(cgroup) for cgroup in self.cgroups)
        with open(self.console_log, "wb") as console:
            self.nspawn = subprocess.Popen(
                ["sh", "-c", script, "sh", *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env={**os.environ, "CGROUPS": cgroups},
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
