"""Shared fixtures (a conductor and a default daemon per test module, one .deb per run), and
the marker guard.

The markers in pyproject.toml say what a test needs beyond Python; `make check` deselects them.
So that the selection stays true, a test that starts any subprocess (the daemon, a system tool,
a browser, a container) without one of those markers fails at that call: an audit hook sees every
subprocess.Popen and knows which test is running.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ROOT, Conductor, Daemon, daemon

PROCESS_MARKERS = frozenset({"daemon", "system_tools", "browser", "container"})
running_markers: set[str] | None = None  # the markers of the test being set up, run or torn down


def refuse_unmarked_subprocesses(event: str, args: tuple[Any, ...]) -> None:
    if (
        event == "subprocess.Popen"
        and running_markers is not None
        and not running_markers & PROCESS_MARKERS
    ):
        raise RuntimeError(
            f"this test starts {args[0]!r} but has none of the markers "
            f"{sorted(PROCESS_MARKERS)}: mark it (pyproject.toml says what each means)"
        )


sys.addaudithook(refuse_unmarked_subprocesses)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the booted container (tests/test_packaging.py's fixture) need it: mark them."""
    for item in items:
        if "container" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.container)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    global running_markers
    running_markers = {marker.name for marker in item.iter_markers()}
    try:
        return (yield)
    finally:
        running_markers = None


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
