"""The shipped monitoring files as data: dashboard queries, rule names, and PromQL metric names.

The dashboard tests, the rule tests and the live-Prometheus test all ask the same questions of
packaging/grafana/sssrd.json and packaging/prometheus/*.yml, so the answers live here once.
Metric names are found by masking what cannot be a metric (strings, label matchers, ranges,
grouping lists) and keeping the identifiers that are not functions or keywords; that is enough
for the expressions we ship, which tests/test_dashboard.py checks parse with promtool.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from sssrd.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "packaging" / "prometheus"
DASHBOARD_PATH = ROOT / "packaging" / "grafana" / "sssrd.json"

# What a panel's variables stand for when the tests run its expression against a real
# Prometheus: the jobs and instance the test scrapes, and a rate window that covers its traffic.
TEST_VARIABLES = {
    "job": "sssrd",
    "node_job": "node",
    "instance": "127.0.0.1",
    "__rate_interval": "5m",
}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS |= {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_MASKS = (
    re.compile(r'"(?:[^"\\]|\\.)*"'),  # strings (label values)
    re.compile(r"\{[^}]*\}"),  # label matchers
    re.compile(r"\[[^\]]*\]"),  # range selectors
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),
)
_IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*(?![\w:])(?!\s*\()")


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    masked = expression
    for mask in _MASKS:
        masked = mask.sub(" ", masked)
    names = {match.group() for match in _IDENTIFIER.finditer(masked)}
    return {name for name in names if name.lower() not in _KEYWORDS}


def exported_names() -> set[str]:
    """Every sample name a fresh daemon's /metrics exposes."""
    text = Metrics().exposition(None)[0].decode()
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_PATH.read_text())


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries the data source (rows only group them)."""
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in data_panels(dashboard)
        for target in panel["targets"]
    ]


def substitute(expression: str, variables: dict[str, str]) -> str:
    """The expression with Grafana's `$name` / `${name}` variables replaced."""

    def value(match: re.Match[str]) -> str:
        return variables[match.group(1) or match.group(2)]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expression)


def rules(filename: str) -> list[dict[str, Any]]:
    """Every rule of a shipped rule file (rules.yml, alerts.yml), in order."""
    groups = yaml.safe_load((PROMETHEUS_DIR / filename).read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def recorded_names() -> set[str]:
    """The series rules.yml records."""
    return {rule["record"] for rule in rules("rules.yml")}


def alert_names() -> set[str]:
    return {rule["alert"] for rule in rules("alerts.yml")}
