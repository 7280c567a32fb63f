"""Shared fixtures: one conductor and one default daemon per test module; one .deb per run."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ROOT, Conductor, Daemon, daemon


@pytest.fixture(scope="module")
def conductor() -> Iterator[Conductor]:
    running = Conductor()
    yield running
    running.close()


@pytest.fixture(scope="module")
def sssrd(conductor: Conductor) -> Iterator[Daemon]:
    with daemon(conductor) as running:
        yield running


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package `make deb` builds, built once for the packaging and the image tests."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        ["make", "--no-print-directory", "deb", f"DIST={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, f"make deb failed:\n{built.stdout}\n{built.stderr}"
    (package,) = out.glob("sssrd_*.deb")
    return package
