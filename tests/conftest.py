"""Shared fixtures (a conductor and a default daemon per test module, one .deb and one React
example build per run, the React example's held data per module), and the marker guard.

The markers in pyproject.toml say what a test needs beyond Python; `make check` deselects them.
So that the selection stays true, a test that starts any subprocess (the daemon, a system tool,
a browser, a container) without one of those markers fails at that call: an audit hook sees every
subprocess.Popen and knows which test is running.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ROOT, Conductor, Daemon, daemon
from node_lambda import HELD_FEATURED, HeldData

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


# The behaviour suites run under one worker and under two, as operators run the daemon (the
# default is one per core): a supervisor's inherited viewer socket, one callback port per worker
# and merged metrics then meet every behaviour, not only tests/test_workers.py.
UNDER_ONE_AND_TWO_WORKERS = frozenset(
    {
        "test_hostile_clients",
        "test_body_path",
        "test_lifecycle",
        "test_streaming",
        "test_operations",
        "test_viewer_leaving",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    uses_the_daemon = {"sssrd", "conductor"} & set(metafunc.fixturenames)
    if metafunc.module.__name__ in UNDER_ONE_AND_TWO_WORKERS and uses_the_daemon:
        metafunc.parametrize(
            "workers", [1, 2], indirect=True, scope="module", ids=["1worker", "2workers"]
        )


@pytest.fixture(scope="module", autouse=True)
def workers(request: pytest.FixtureRequest) -> Iterator[int]:
    """How many worker processes the daemons of this module run (harness.Daemon.workers)."""
    Daemon.workers = getattr(request, "param", 1)
    yield Daemon.workers
    Daemon.workers = 1


@pytest.fixture(scope="module")
def conductor(workers: int) -> Iterator[Conductor]:
    """One per module and worker count: the reports of one run never answer the other's."""
    running = Conductor()
    yield running
    running.close()


@pytest.fixture(scope="module")
def sssrd(conductor: Conductor, workers: int) -> Iterator[Daemon]:
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


REACT_EXAMPLE = ROOT / "examples" / "react-ssr"


@pytest.fixture(scope="session")
def react_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The React example's build script run as a user would, once for the browser and the
    runtime client tests; the zip's contents unpacked (the path of its index.js)."""
    assert (REACT_EXAMPLE / "node_modules").is_dir(), (
        "run `make test`: it installs the npm packages"
    )
    subprocess.run(["npm", "run", "--silent", "build"], cwd=REACT_EXAMPLE, check=True, timeout=60)
    unpacked = tmp_path_factory.mktemp("render-zip")
    with zipfile.ZipFile(REACT_EXAMPLE / "dist" / "render.zip") as archive:
        archive.extractall(unpacked)
    return unpacked / "index.js"


@pytest.fixture(scope="module")
def held() -> Iterator[HeldData]:
    """The React example's DATA_URL: each request held until the test releases it."""
    data = HeldData(HELD_FEATURED)
    yield data
    data.close()
