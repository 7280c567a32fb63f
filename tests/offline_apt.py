"""An APT repository, inside a container root, of every .deb some installs there would need.

A container booted in a network namespace of its own (nspawn.NetworkNamespace) reaches no
Debian mirror (one on the host's network does, as the host does, but then shares the host's
ports and sysctls; see test_image.py). So the host's APT works out what installing some
packages, and upgrading everything, would take *in that root* (the host's package lists, the
root's dpkg status), downloads those .debs once into a cache shared by every run
(/var/cache/sssrd-test/apt), and lays them out as a flat repository in the root with a
`Packages` index (dpkg-scanpackages), for the container's APT to use as
`deb [trusted=yes] file:<dir> ./`.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nspawn

CACHE = nspawn.CACHE_DIR / "apt"
# "Inst libc6 [2.36-9] (2.36-9+deb12u10 Debian-Security:12/stable-security [amd64])"
INSTALL_LINE = re.compile(
    r"^Inst (?P<name>\S+) (?:\[[^]]*\] )?\((?P<version>\S+) .*\[(?P<arch>[^]]+)\]\)"
)


def repository(root: Path, packages: Sequence[str], directory: str = "/var/tmp/sssrd-apt") -> str:
    """Make the repository at `directory` in `root` and return its APT source line."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        # Runs at once share the cache: one downloads while the others wait for its files.
        fcntl.flock(lock, fcntl.LOCK_EX)
        debs = _fetch(root, packages)
    target = root / directory.lstrip("/")
    target.mkdir(parents=True)
    for deb in debs:
        _link_or_copy(deb, target / deb.name)
    index = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "."],
        cwd=target,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if index.returncode != 0:
        raise nspawn.ContainerError(f"dpkg-scanpackages failed: {index.stderr[-2000:]}")
    (target / "Packages").write_text(index.stdout)
    # APT reads file: sources as its unprivileged _apt user where it can.
    for path in (target, *target.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return f"deb [trusted=yes] file:{directory} ./"


def _fetch(root: Path, packages: Sequence[str]) -> list[Path]:
    """The cached .debs of what `packages` and a full upgrade need in root, fetched if missing."""
    try:
        wanted = _resolve(root, packages)
        _download(wanted)
    except nspawn.ContainerError:
        # The host's package lists may be missing or name versions the mirror has dropped.
        _apt(["update"], "apt-get update")
        wanted = _resolve(root, packages)
        _download(wanted)
    return [CACHE / _file_name(*entry) for entry in wanted]


def _resolve(root: Path, packages: Sequence[str]) -> list[tuple[str, str, str]]:
    """(name, version, arch) of every package the two simulated runs would install."""
    with tempfile.TemporaryDirectory() as state:
        options = [
            "-o",
            f"Dir::State::status={root}/var/lib/dpkg/status",
            "-o",
            f"Dir::State::extended_states={state}/extended_states",
        ]
        runs = (
            ["--simulate", "install", "--no-install-recommends", *packages],
            ["--simulate", "full-upgrade"],
        )
        lines = [line for run in runs for line in _apt([*options, *run], "apt-get").splitlines()]
    found = {
        match.group("name", "version", "arch")
        for line in lines
        if (match := INSTALL_LINE.match(line))
    }
    return sorted(found)


def _download(wanted: list[tuple[str, str, str]]) -> None:
    missing = [entry for entry in wanted if not (CACHE / _file_name(*entry)).exists()]
    if not missing:
        return
    with tempfile.TemporaryDirectory(dir=CACHE) as partial:
        _apt(
            ["download", *(f"{name}={version}" for name, version, _arch in missing)],
            "apt-get download",
            cwd=Path(partial),
        )
        for deb in Path(partial).glob("*.deb"):
            deb.rename(CACHE / deb.name)


def _file_name(name: str, version: str, arch: str) -> str:
    # APT names a downloaded .deb with the epoch's colon escaped.
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


def _apt(arguments: list[str], what: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        ["apt-get", "-q", *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if result.returncode != 0:
        raise nspawn.ContainerError(f"{what} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # the cache and the root on different file systems
        shutil.copyfile(source, target)
