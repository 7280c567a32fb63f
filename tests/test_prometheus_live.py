"""A real Prometheus scraping a running `sssrd dev` and a node exporter: rules, alerts, dashboard.

One scene for the module: Debian's prometheus-node-exporter and `sssrd dev` (the scenario
handlers of tests/scenarios.py) on ephemeral ports, and Debian's Prometheus scraping both every
second and evaluating the shipped rules.yml with a copy of alerts.yml whose `for:` durations
are cut to seconds. Once Prometheus holds a first scrape (so every counter has a zero to rate
from), traffic with each failure the dashboard shows goes through sssrd: successes, 504
deadlines, shed 503s, 502 bad callbacks, a viewer abort, a Lambda abort, rejected callbacks and
a spliced body. The tests then ask Prometheus's HTTP API. Both Go servers bind port 0 and name
the port they got in their "Listening on" log line; Prometheus announces nothing else, so the
tests poll its queries with a deadline.
"""

from __future__ import annotations

import json
import math
import queue
import re
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from harness import (
    WAIT,
    Daemon,
    Viewer,
    daemon,
    http_get,
    lambda_dies_mid_body,
    leave_mid_stream,
    stop_process,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from promql import (
    PROMETHEUS_DIR,
    TEST_VARIABLES,
    load_dashboard,
    metric_names,
    panel_queries,
    recorded_names,
    rules,
    substitute,
)

pytestmark = [pytest.mark.daemon, pytest.mark.system_tools]

T = TypeVar("T")

OK_REQUESTS = 440  # enough that the ratio alerts' traffic floor (1 request/s over 5 m) is met
HELD = 40  # = max_pending: held until their callback deadline (504), shedding what comes next
SHED = 3
BAD_CALLBACKS = 2
BULK_BYTES = 512 * 1024
# Deadline timeouts are HELD of 489 viewer requests, 8 %: over SssrdTimeoutRatioHigh's 5 %.
SHORT_FOR = "2s"
POLL_INTERVAL = 0.25
LISTENING = re.compile(r'msg="Listening on" address=(\S+)')
NODE_COLLECTORS = ("cpu", "meminfo", "filesystem", "netdev", "netstat", "uname")


class GoServer:
    """A Prometheus-project server on an ephemeral port, its log kept for failure messages."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.name = Path(command[0]).name
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd
        )
        self.log: list[str] = []
        addresses: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_log, args=(addresses,), daemon=True).start()
        try:
            address = addresses.get(timeout=WAIT)
        except queue.Empty:
            address = None
        if address is None:
            self.stop()
            raise AssertionError(f"{self.name} did not start listening: {self.log[-20:]}")
        self.address = address
        self.url = f"http://{address}"

    def _read_log(self, addresses: queue.Queue[str | None]) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if found := LISTENING.search(line):
                addresses.put(found.group(1))
        addresses.put(None)  # exited before (or after) listening

    def get(self, path: str, **params: Any) -> tuple[int, bytes]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=WAIT) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def stop(self) -> None:
        stop_process(self.process)


class Prometheus(GoServer):
    def api(self, path: str, **params: Any) -> Any:
        status, body = self.get(f"/api/v1/{path}", **params)
        assert status == 200, f"{path} {params}: {status} {body[:500]!r}"
        return json.loads(body)["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        return self.api("query", query=expression)["result"]

    def value(self, expression: str) -> float | None:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None


def eventually(produce: Callable[[], T], what: str, timeout: float = WAIT) -> T:
    """The first truthy result of produce(), asked again until the deadline."""
    deadline = time.monotonic() + timeout
    while not (result := produce()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_INTERVAL)
    return result


def same_host_instance() -> dict[str, Any]:
    """instance = the host without the port, as scrape.yml's private-IP relabelling does, so the
    dashboard's one `instance` choice selects both sssrd and its host's node exporter."""
    return {"source_labels": ["__address__"], "regex": r"(.+):\d+", "target_label": "instance"}


def alerts_with_short_for(directory: Path) -> Path:
    """A copy of alerts.yml whose `for:` waits are seconds, so the test sees alerts fire."""
    document = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["for"] = SHORT_FOR
    copy = directory / "alerts.yml"
    copy.write_text(yaml.safe_dump(document))
    return copy


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prometheus")


@pytest.fixture(scope="module")
def node_exporter(workdir: Path) -> Iterator[GoServer]:
    command = [
        "prometheus-node-exporter",
        "--web.listen-address=127.0.0.1:0",
        "--collector.disable-defaults",
        *(f"--collector.{name}" for name in NODE_COLLECTORS),
    ]
    server = GoServer(command, workdir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sssrd_dev(conductor) -> Iterator[Daemon]:
    options = ("--callback-timeout=2", f"--max-pending={HELD}")
    with daemon(conductor, *options, command="dev") as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(workdir: Path, sssrd_dev: Daemon, node_exporter: GoServer) -> Iterator[Prometheus]:
    admin = "{}:{}".format(*sssrd_dev.admin)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "rules.yml"), str(alerts_with_short_for(workdir))],
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": [target]}],
                "relabel_configs": [same_host_instance()],
            }
            for job, target in (("sssrd", admin), ("node", node_exporter.address))
        ],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    server = Prometheus(
        [
            "prometheus",
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'data'}",
            "--web.listen-address=127.0.0.1:0",
        ],
        workdir,
    )
    try:
        eventually(lambda: server.get("/-/ready")[0] == 200, "Prometheus ready")
        eventually(lambda: server.value('sum(up{job=~"sssrd|node"})') == 2, "both targets up")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def traffic(prometheus: Prometheus, sssrd_dev: Daemon, conductor) -> dict[str, float]:
    """Drives the scene's traffic; returns sssrd's own request counts once Prometheus has them."""
    drive_traffic(sssrd_dev, conductor)
    counts = requests_by_outcome(sssrd_dev)

    def scraped_everything() -> bool:
        seen = prometheus.query("sum by (outcome) (sssrd_requests_total)")
        return {r["metric"]["outcome"]: float(r["value"][1]) for r in seen} == counts

    eventually(scraped_everything, "Prometheus to scrape the whole traffic")
    return counts


def drive_traffic(sssrd: Daemon, conductor) -> None:
    viewer = Viewer(sssrd.viewer)
    for _ in range(OK_REQUESTS):
        head, _ = viewer.get("/?scenario=demo&lines=1&delay_ms=0")
        assert head.status_code == 200
        viewer.next_cycle()
    viewer.close()
    bulk = f"/?scenario=bulk&size={BULK_BYTES}&framing=length"  # spliced: over SPLICE_MIN
    assert len(Viewer(sssrd.viewer).get(bulk)[1]) == BULK_BYTES
    hold_until_shedding_then_time_out(sssrd)
    for _ in range(BAD_CALLBACKS):
        head, _ = Viewer(sssrd.viewer).get("/?scenario=bad_prelude&kind=json&tag=prom-bad")
        assert head.status_code == 502
    assert Viewer(sssrd.viewer).get("/?scenario=intruders&tag=prom-intr")[0].status_code == 200
    assert leave_mid_stream(sssrd, conductor, "prom-vl")["outcome"] == "viewer_abort"
    lambda_dies_mid_body(sssrd, conductor, "prom-amb")


def hold_until_shedding_then_time_out(sssrd: Daemon) -> None:
    held = [Viewer(sssrd.viewer) for _ in range(HELD)]
    for viewer in held:
        viewer.send("GET", "/?scenario=never&tag=prom-held")
    wait_for(lambda: sssrd.metric("sssrd_pending_callbacks") == HELD, what="held requests")
    for _ in range(SHED):
        assert http_get(sssrd.viewer, "/?scenario=echo&tag=prom-shed")[0] == 503
    for viewer in held:
        assert viewer.head().status_code == 504
        viewer.close()


def requests_by_outcome(sssrd: Daemon) -> dict[str, float]:
    text = http_get(sssrd.admin, "/metrics")[2].decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sssrd_requests_total":
                outcome = sample.labels["outcome"]
                counts[outcome] = counts.get(outcome, 0.0) + sample.value
    return counts


def test_the_traffic_reached_prometheus_with_every_failure_kind(prometheus, traffic):
    assert traffic["ok"] == OK_REQUESTS + 2  # the bulk body and the intruders' stream
    assert traffic["timeout"] == HELD
    assert traffic["shed"] == SHED
    assert traffic["bad_callback"] == BAD_CALLBACKS
    assert traffic["viewer_abort"] == 1
    assert traffic["lambda_abort"] == 1
    assert prometheus.value('sssrd_body_bytes_total{path="splice"}') > 0
    assert prometheus.value('sssrd_body_bytes_total{path="copy"}') > 0


def test_every_series_the_dashboard_and_rules_use_exists(prometheus, traffic):
    used = set().union(*(metric_names(expr) for _, expr in panel_queries(load_dashboard())))
    for filename in ("rules.yml", "alerts.yml"):
        used |= set().union(*(metric_names(rule["expr"]) for rule in rules(filename)))
    assert any(name.startswith("node_") for name in used)

    def missing() -> set[str]:
        return used - set(prometheus.api("label/__name__/values"))

    eventually(lambda: not missing(), f"series {sorted(missing())}")


def test_every_dashboard_query_returns_data(prometheus, traffic):
    for title, expression in panel_queries(load_dashboard()):
        query = substitute(expression, TEST_VARIABLES)

        def finite_values(query: str = query) -> list[float]:
            values = [float(r["value"][1]) for r in prometheus.query(query)]
            return [value for value in values if math.isfinite(value)]

        eventually(finite_values, f"{title}: {query} to return data")


def test_dashboard_variables_find_the_scraped_job_and_instance(prometheus, traffic):
    expected = {"job": ["sssrd"], "instance": ["127.0.0.1"], "node_job": ["node"]}
    for variable in load_dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
        assert found, variable["definition"]
        selector = substitute(found.group(1), TEST_VARIABLES)
        values = prometheus.api(f"label/{found.group(2)}/values", **{"match[]": selector})
        assert values == expected[variable["name"]], variable["name"]


def test_every_recording_rule_produces_a_series_with_the_traffic_in_it(prometheus, traffic):
    loaded = [
        rule
        for group in prometheus.api("rules", type="record")["groups"]
        for rule in group["rules"]
    ]
    assert {rule["name"] for rule in loaded} == recorded_names()
    for rule in loaded:
        assert rule["health"] == "ok", rule
        eventually(lambda name=rule["name"]: prometheus.query(name), f"{rule['name']} recorded")
    moved = {
        'instance_code_outcome:sssrd_requests:rate5m{outcome="shed"}',
        'instance_code_outcome:sssrd_requests:rate5m{outcome="viewer_abort"}',
        'instance_kind:sssrd_timeouts:rate5m{kind="deadline"}',
        "job:sssrd_requests_excluding_health:rate5m",
        'instance_le:sssrd_callback_wait_seconds_bucket:rate5m{le="+Inf"}',
    }
    for series in moved:
        eventually(lambda series=series: (prometheus.value(series) or 0) > 0, f"{series} > 0")


def test_timeout_ratio_and_shedding_alerts_fire_and_the_others_stay_quiet(prometheus, traffic):
    states: dict[str, set[str]] = {}

    def firing() -> bool:
        for alert in prometheus.api("alerts")["alerts"]:
            states.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
        wanted = ("SssrdTimeoutRatioHigh", "SssrdSheddingLoad")
        return all("firing" in states.get(name, ()) for name in wanted)

    eventually(firing, f"the timeout and shedding alerts to fire (seen: {states})")
    for quiet in ("SssrdDown", "SssrdNoTargets", "SssrdInvokeThrottled", "SssrdInvokeFailing"):
        assert quiet not in states, states
    ratio = prometheus.query('ALERTS{alertname="SssrdTimeoutRatioHigh",alertstate="firing"}')
    assert ratio[0]["metric"] == {
        "__name__": "ALERTS",
        "alertname": "SssrdTimeoutRatioHigh",
        "alertstate": "firing",
        "job": "sssrd",
        "severity": "page",
    }
