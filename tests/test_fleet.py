"""The fleet in miniature, slimmed (tests/fleet.py with SLIM: fewer, shorter streams).

One run of the four scenarios (steady, scale-out, scale-in, crash) on three to four sssrd
instances in network namespaces behind HAProxy as the ALB; each test checks one of the fleet's
promises against that run's report, and the last that the run left nothing behind. Needs root
(namespaces, a bridge), like the container tests; `make fleet` is the full-size run.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import fleet
import pytest

pytestmark = [pytest.mark.container, pytest.mark.daemon, pytest.mark.system_tools]


def children() -> set[str]:
    """This test process's child processes, as pids."""
    found = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True)
    return set(found.stdout.split())


@pytest.fixture(scope="module")
def children_before() -> set[str]:
    """Children that other tests' fixtures already hold (a shared daemon, say): not the fleet's."""
    return children()


@pytest.fixture(scope="module")
def report(children_before: set[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return fleet.run_fleet(fleet.SLIM, Path(tmp_path_factory.mktemp("fleet")))


@pytest.mark.parametrize("promise", sorted(fleet.PROMISES))
def test_fleet_promise_holds(report: dict[str, Any], promise: str) -> None:
    assert fleet.PROMISES[promise](report, fleet.SLIM) == [], report


def test_report_has_a_row_per_scenario_and_the_load_tests_own_reports(
    report: dict[str, Any],
) -> None:
    assert [row["name"] for row in report["scenarios"]] == [name for name, _ in fleet.SCENARIOS]
    for row in report["scenarios"]:
        assert set(fleet.REPORT_FIELDS) <= set(row), row
        assert json.loads(Path(row["loadtest_json"]).read_text())["requests"]["sent"]
        assert "Plotly.newPlot" in Path(row["loadtest_html"]).read_text()  # its charts


def test_fleet_leaves_no_namespace_link_or_process(
    report: dict[str, Any], children_before: set[str]
) -> None:
    tag = str(os.getpid())
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert f"{fleet.NAMESPACE_PREFIX}{tag}-" not in namespaces
    assert f"sfb{tag}" not in links and f"sfv{tag}" not in links
    assert children() - children_before == set()
