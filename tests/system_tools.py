"""The system tools some tests run, each with the Debian package it comes from.

`tool(name)` is the executable's path; `require(*names)` checks several at once. A missing tool
fails the test at once with one line naming the package to install (`make test` installs
tests/system-packages.txt as root), never a FileNotFoundError traceback from subprocess.
"""

from __future__ import annotations

import shutil

import pytest

PACKAGE_OF = {
    "curl": "curl",
    "ss": "iproute2",
    "promtool": "prometheus",
    "lintian": "lintian",
    "dpkg-deb": "dpkg",
    "systemd-analyze": "systemd",
    "mmdebstrap": "mmdebstrap",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "pgrep": "procps",
    "tar": "tar",
    "zstd": "zstd",
    "ip": "iproute2",
    "packer": "packer",
    "dpkg-scanpackages": "dpkg-dev",
}


def require(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        packages = " ".join(sorted({PACKAGE_OF[name] for name in missing}))
        pytest.fail(
            f"{', '.join(missing)} not found: install the Debian package(s) {packages} "
            "(`make test` as root installs tests/system-packages.txt)",
            pytrace=False,
        )


def tool(name: str) -> str:
    require(name)
    return shutil.which(name) or name
