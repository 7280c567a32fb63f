"""packaging/grafana/sssrd.json: the fields Grafana's import needs, and what an operator relies on.

Every data panel must say what it shows and what a bad value means (its description names the
alert that fires, or says no alert does), carry a unit, query through the data-source variable,
and select by the `job` and `instance` variables only, never a hard-coded target. Whether each
query returns data from a real Prometheus is tests/test_prometheus_live.py's job; here the
queries are only parsed, by promtool, with the variables substituted.
"""

import json
import re
import shutil
import subprocess

import pytest
from promql import (
    TEST_VARIABLES,
    alert_names,
    data_panels,
    exported_names,
    load_dashboard,
    metric_names,
    panel_queries,
    recorded_names,
    substitute,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24


@pytest.fixture(scope="module")
def dashboard():
    return load_dashboard()


def variables(dashboard) -> dict[str, dict]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def test_dashboard_has_the_fields_grafana_import_needs(dashboard):
    assert dashboard["id"] is None  # Grafana assigns it on import
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 39
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["type"] in {"row", "timeseries", "stat"}, panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("h", "w", "x", "y")), panel["title"]
        assert grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]


def test_panels_do_not_overlap(dashboard):
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
                cells[x, y] = panel["title"]


def test_the_data_source_is_a_variable_every_panel_and_query_uses(dashboard):
    datasource = variables(dashboard)["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    for panel in data_panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for variable in variables(dashboard).values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


def test_job_and_instance_variables_come_from_what_sssrd_exports(dashboard):
    found = variables(dashboard)
    assert found["job"]["definition"] == "label_values(sssrd_build_info, job)"
    assert (
        found["instance"]["definition"] == 'label_values(sssrd_build_info{job=~"$job"}, instance)'
    )
    assert found["instance"]["multi"] and found["instance"]["includeAll"]
    assert "$instance" in found["node_job"]["definition"]  # the host row follows the choice


def test_every_panel_has_a_title_description_unit_and_query(dashboard):
    for panel in dashboard["panels"]:
        assert panel["title"].strip()
    for panel in data_panels(dashboard):
        assert len(panel["description"]) > 80, f"{panel['title']}: say what a bad value means"
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_descriptions_name_alerts_that_exist_and_every_alert_has_a_panel(dashboard):
    known = alert_names()
    mentioned: set[str] = set()
    for panel in data_panels(dashboard):
        named = set(re.findall(r"\bSssrd[A-Za-z]+\b", panel["description"]))
        assert named <= known, f"{panel['title']} names unknown alerts {named - known}"
        assert (
            named or "No alert" in panel["description"] or "No sssrd alert" in panel["description"]
        ), f"{panel['title']}: name the alert that fires, or say that none does"
        mentioned |= named
    assert mentioned == known, f"alerts no panel explains: {sorted(known - mentioned)}"


def test_every_selector_is_scoped_by_the_job_and_instance_variables(dashboard):
    for title, expression in panel_queries(dashboard):
        for name in metric_names(expression):
            uses = re.finditer(rf"(?<![\w:]){re.escape(name)}(?![\w:])", expression)
            assert all(expression[use.end()] == "{" for use in uses), f"{title}: bare {name}"
        for selector in re.findall(r"\{([^}]*)\}", expression):
            matchers = [matcher.strip() for matcher in selector.split(",")]
            assert 'instance=~"$instance"' in matchers, f"{title}: {selector}"
            assert {'job=~"$job"', 'job=~"$node_job"'} & set(matchers), f"{title}: {selector}"
            assert sum(matcher.startswith(("instance", "job")) for matcher in matchers) == 2
        assert not re.search(r"\d+\.\d+\.\d+\.\d+|:\d{2,5}\b", expression), title


def test_sssrd_metrics_on_the_dashboard_are_exported_or_recorded(dashboard):
    available = exported_names() | recorded_names() | {"up"}
    for title, expression in panel_queries(dashboard):
        for name in metric_names(expression):
            if not name.startswith("node_"):  # node exporter's: proven by the live test
                assert name in available, f"{title}: {name}"


@pytest.mark.system_tools
def test_every_query_parses_with_its_variables_substituted(dashboard, tmp_path):
    executable = shutil.which("promtool")
    if executable is None:
        pytest.fail("promtool not found: install the Debian package 'prometheus' (CI does)")
    queries = [substitute(expr, TEST_VARIABLES) for _, expr in panel_queries(dashboard)]
    rules = [{"record": f"dashboard:query_{i}:check", "expr": q} for i, q in enumerate(queries)]
    rule_file = tmp_path / "dashboard-queries.yml"
    rule_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [executable, "check", "rules", str(rule_file)], capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found".encode() in result.stdout
