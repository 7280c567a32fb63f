"""sssrd.metrics and packaging/prometheus: values move, the exposition parses, files validate.

Values are read back through the text exposition (parsed with prometheus_client's own parser),
so the tests see what Prometheus would scrape. The packaging tests need promtool (Debian package
`prometheus`); they fail rather than skip without it, since CI installs it.
"""

import gzip
import platform
import re
import subprocess

import pytest
from harness import ROOT
from prometheus_client.parser import text_string_to_metric_families
from promql import PROMETHEUS_DIR, exported_names, metric_names, recorded_names, rules
from system_tools import tool

import sssrd
from sssrd.metrics import (
    MergedCollector,
    Metrics,
    accepts_gzip,
)
from sssrd.outcomes import Outcome


def documented_values(metric: str) -> set[str]:
    """The label values docs/operations.md's metrics table promises for `metric`: those in
    parentheses in its labels column, or listed after the colon in its meaning column."""
    text = (ROOT / "docs" / "operations.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| `{metric}` |"))
    _name, _type, labels, meaning = (cell.strip() for cell in row.strip("|").split("|"))
    in_labels = re.search(r"\((.*)\)", labels)
    in_meaning = re.search(r":(.*)$", meaning)
    for listed in (in_labels, in_meaning):
        if listed is not None and (values := set(re.findall(r"`([a-z_]+)`", listed[1]))):
            return values
    raise AssertionError(f"docs/operations.md lists no label values for {metric}: {row}")


def label_values(samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for sample, labels in samples if sample == name}


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an uncompressed exposition, keyed by name and sorted labels."""
    body, _ = metrics.exposition(None)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def families(metrics: Metrics):
    body, _ = metrics.exposition(None)
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def test_request_done_counts_by_status_class_and_outcome():
    metrics = Metrics()
    metrics.request_done(200, "ok")
    metrics.request_done(206, "ok")
    metrics.request_done(404, "ok")
    metrics.request_done(504, "timeout")
    samples = scrape(metrics)
    assert value(samples, "sssrd_requests_total", code="2xx", outcome="ok") == 2
    assert value(samples, "sssrd_requests_total", code="4xx", outcome="ok") == 1
    assert value(samples, "sssrd_requests_total", code="5xx", outcome="timeout") == 1
    assert value(samples, "sssrd_requests_total", code="3xx", outcome="ok") == 0


def test_an_unexpected_but_valid_combination_gets_its_own_series():
    metrics = Metrics()
    metrics.request_done(302, "bad_request")
    assert value(scrape(metrics), "sssrd_requests_total", code="3xx", outcome="bad_request") == 1


def test_request_series_operators_alert_on_exist_at_zero_before_any_request():
    samples = scrape(Metrics())
    for outcome, code in [("shed", "5xx"), ("invoke_throttled", "5xx"), ("timeout", "5xx")]:
        assert value(samples, "sssrd_requests_total", code=code, outcome=outcome) == 0
    outcomes = label_values(samples, "sssrd_requests_total", "outcome")
    assert outcomes == documented_values("sssrd_requests_total")


@pytest.mark.parametrize(("code", "outcome"), [(200, "fine"), (101, "ok"), (600, "ok"), (-1, "ok")])
def test_request_done_refuses_unknown_outcomes_and_non_final_statuses(code, outcome):
    metrics = Metrics()
    before = scrape(metrics)
    with pytest.raises(ValueError, match=r"outcome|status"):
        metrics.request_done(code, outcome)
    assert scrape(metrics).keys() == before.keys()


def test_pre_bound_children_move_their_labelled_series():
    metrics = Metrics()
    metrics.body_bytes_splice.inc(65536)
    metrics.body_bytes_copy.inc(100)
    metrics.callbacks_rejected_by_reason["duplicate"].inc()
    metrics.timeouts_by_kind["idle"].inc()
    metrics.aborts_by_side["viewer"].inc()
    metrics.connections_by_listener["callback"].inc()
    samples = scrape(metrics)
    assert value(samples, "sssrd_body_bytes_total", path="splice") == 65536
    assert value(samples, "sssrd_body_bytes_total", path="copy") == 100
    assert value(samples, "sssrd_callbacks_rejected_total", reason="duplicate") == 1
    assert value(samples, "sssrd_callbacks_rejected_total", reason="bad_token") == 0
    assert value(samples, "sssrd_timeouts_total", kind="idle") == 1
    assert value(samples, "sssrd_aborts_total", side="viewer") == 1
    assert value(samples, "sssrd_aborts_total", side="lambda") == 0
    assert value(samples, "sssrd_connections_total", listener="callback") == 1


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("sssrd_callbacks_rejected_total", "reason"),
        ("sssrd_timeouts_total", "kind"),
        ("sssrd_aborts_total", "side"),
        ("sssrd_body_bytes_total", "path"),
    ],
)
def test_every_documented_label_value_and_no_other_exists_at_zero(name, label):
    samples = scrape(Metrics())
    assert label_values(samples, name, label) == documented_values(name)
    for documented in documented_values(name):
        assert value(samples, name, **{label: documented}) == 0


def test_every_listener_series_exists_at_zero():
    samples = scrape(Metrics())
    for listener in ("viewer", "callback", "admin"):  # the three listeners of the docs
        assert value(samples, "sssrd_connections_total", listener=listener) == 0
        assert value(samples, "sssrd_connections_open", listener=listener) == 0


def test_histograms_put_observations_in_the_right_buckets():
    metrics = Metrics()
    metrics.invoke_duration.observe(0.02)
    metrics.callback_wait.observe(3.0)
    metrics.time_to_first_byte.observe(0.0004)
    metrics.stream_duration.observe(400)
    samples = scrape(metrics)
    assert value(samples, "sssrd_invoke_duration_seconds_bucket", le="0.01") == 0
    assert value(samples, "sssrd_invoke_duration_seconds_bucket", le="0.025") == 1
    assert value(samples, "sssrd_invoke_duration_seconds_count") == 1
    assert value(samples, "sssrd_invoke_duration_seconds_sum") == pytest.approx(0.02)
    assert value(samples, "sssrd_callback_wait_seconds_bucket", le="2.5") == 0
    assert value(samples, "sssrd_callback_wait_seconds_bucket", le="5.0") == 1
    assert value(samples, "sssrd_time_to_first_byte_seconds_bucket", le="0.001") == 1
    assert value(samples, "sssrd_stream_duration_seconds_bucket", le="300.0") == 0
    assert value(samples, "sssrd_stream_duration_seconds_bucket", le="600.0") == 1


def test_sssrd_metric_names_follow_prometheus_conventions():
    for name, family in families(Metrics()).items():
        if not name.startswith("sssrd_"):
            continue
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), name
        if family.type == "histogram":
            assert name.endswith("_seconds"), name
        assert family.documentation, f"{name} has no help text"


def test_build_info_names_the_sssrd_and_python_versions():
    samples = scrape(Metrics())
    labels = {"version": sssrd.__version__, "python": platform.python_version()}
    assert value(samples, "sssrd_build_info", **labels) == 1


def test_process_platform_and_gc_collectors_are_registered():
    names = families(Metrics()).keys()
    assert {"process_open_fds", "process_cpu_seconds", "python_info"} <= names
    assert "python_gc_objects_collected" in names


def test_two_daemons_in_one_process_do_not_share_values():
    first, second = Metrics(), Metrics()
    first.request_done(200, "ok")
    first.streams_in_flight.set(5)
    first.body_bytes_copy.inc(10)
    second_samples = scrape(second)
    assert value(second_samples, "sssrd_requests_total", code="2xx", outcome="ok") == 0
    assert value(second_samples, "sssrd_streams_in_flight") == 0
    assert value(second_samples, "sssrd_body_bytes_total", path="copy") == 0
    assert value(scrape(first), "sssrd_streams_in_flight") == 5


def test_plain_exposition_has_the_text_format_content_type_and_no_encoding():
    body, headers = Metrics().exposition(None)
    assert dict(headers)[b"Content-Type"] == b"text/plain; version=0.0.4; charset=utf-8"
    assert b"Content-Encoding" not in dict(headers)
    assert b"# TYPE sssrd_requests_total counter" in body


def test_gzip_exposition_decompresses_to_the_same_text():
    metrics = Metrics()
    metrics.request_done(200, "ok")
    plain, _ = metrics.exposition("identity")
    compressed, headers = metrics.exposition("gzip, deflate, br")
    assert dict(headers)[b"Content-Encoding"] == b"gzip"
    assert dict(headers)[b"Content-Type"] == b"text/plain; version=0.0.4; charset=utf-8"
    assert len(compressed) < len(plain)

    def sssrd_lines(text: bytes) -> list[bytes]:
        # process_* and python_gc_* may move between the two calls; sssrd's own may not.
        return [line for line in text.splitlines() if b"sssrd_" in line]

    assert sssrd_lines(gzip.decompress(compressed)) == sssrd_lines(plain)


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (None, False),
        ("", False),
        ("identity", False),
        ("deflate, br", False),
        ("gzip", True),
        ("GZip", True),
        ("x-gzip", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("gzip;q=nonsense", False),
        ("*", True),
        ("br, *;q=0.1", True),
        ("*;q=0", False),
        ("gzip;q=0, *", False),
    ],
)
def test_gzip_is_used_only_when_accept_encoding_allows_it(header, allowed):
    assert accepts_gzip(header) is allowed
    _, headers = Metrics().exposition(header)
    assert dict(headers).get(b"Content-Encoding") == (b"gzip" if allowed else None)


def promtool(*arguments: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("promtool"), *arguments],
        input=stdin,
        capture_output=True,
        cwd=PROMETHEUS_DIR,
        timeout=60,
        check=False,
    )


@pytest.mark.system_tools
def test_promtool_finds_no_problems_in_the_exposition():
    metrics = Metrics()
    metrics.request_done(200, "ok")
    metrics.invoke_duration.observe(0.01)
    result = promtool("check", "metrics", stdin=metrics.exposition(None)[0])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == b""


@pytest.mark.system_tools
def test_alert_and_recording_rules_are_valid():
    result = promtool("check", "rules", "rules.yml", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.system_tools
def test_example_prometheus_config_with_its_rules_is_valid():
    result = promtool("check", "config", "scrape.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"2 rule files found" in result.stdout


@pytest.mark.system_tools
def test_alert_rule_unit_tests_pass():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_use_only_metrics_that_sssrd_exports_or_rules_yml_records():
    exported = exported_names()
    recorded = recorded_names()
    for filename in ("rules.yml", "alerts.yml"):
        used = set().union(*(metric_names(rule["expr"]) for rule in rules(filename)))
        assert used & exported, f"{filename} uses no exported metric"
        unknown = used - exported - recorded - {"up"}
        assert not unknown, f"{filename} uses unknown metrics: {sorted(unknown)}"


def test_ratio_alerts_read_the_recorded_rates_instead_of_recomputing_them():
    ratio_alerts = [rule for rule in rules("alerts.yml") if "/" in rule["expr"]]
    assert ratio_alerts
    for rule in ratio_alerts:
        assert "rate(" not in rule["expr"], rule["alert"]


def test_recorded_series_are_named_level_metric_operations():
    for name in recorded_names():
        level, metric, operations = name.split(":")
        assert re.fullmatch(r"(instance|job)(_[a-z]+)*", level), name
        assert metric.startswith("sssrd_") and not metric.endswith("_total"), name
        assert re.fullmatch(r"(ratio_)?rate5m", operations), name


def merged_samples(*expositions: bytes) -> dict[tuple[str, tuple], float]:
    text = MergedCollector([e.decode() for e in expositions]).text().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_merged_workers_sum_what_adds_up_and_keep_every_label():
    """A supervisor's /metrics: two workers' counters, histograms, gauges and limits summed."""
    first, second = Metrics(), Metrics()
    first.request_done(200, Outcome.OK)
    second.request_done(200, Outcome.OK)
    second.request_done(503, Outcome.SHED)
    first.callback_wait.observe(0.02)
    second.callback_wait.observe(0.02)
    first.streams_in_flight.set(2)
    second.streams_in_flight.set(1)
    first.pending_limit.set(10)
    second.pending_limit.set(10)
    found = merged_samples(first.text(), second.text())
    assert found[("sssrd_requests_total", (("code", "2xx"), ("outcome", "ok")))] == 2
    assert found[("sssrd_requests_total", (("code", "5xx"), ("outcome", "shed")))] == 1
    assert found[("sssrd_requests_total", (("code", "4xx"), ("outcome", "ok")))] == 0
    assert found[("sssrd_callback_wait_seconds_bucket", (("le", "0.025"),))] == 2
    assert found[("sssrd_callback_wait_seconds_count", ())] == 2
    assert found[("sssrd_streams_in_flight", ())] == 3
    assert found[("sssrd_pending_limit", ())] == 20
    limit = merged_samples(first.text())[("process_max_fds", ())]
    assert found[("process_max_fds", ())] == 2 * limit  # limits add up too: open/max stays a share


def test_merged_workers_keep_facts_about_the_build_and_the_oldest_start():
    first, second = Metrics(), Metrics()
    found = merged_samples(first.text(), second.text())
    build = (("python", platform.python_version()), ("version", sssrd.__version__))
    assert found[("sssrd_build_info", build)] == 1
    # The younger worker's exposition comes first, so that "the oldest" differs from "the
    # first one read": its start times are moved 1000 s later (in one process both are equal).
    younger = re.sub(
        rb"^((?:process_start_time_seconds|sssrd_requests_created)\S* )(\S+)$",
        lambda line: line[1] + str(float(line[2]) + 1000).encode(),
        second.text(),
        flags=re.MULTILINE,
    )
    oldest_first = merged_samples(younger, first.text())
    own = merged_samples(first.text())
    for name in ("process_start_time_seconds", "sssrd_requests_created"):
        key = next(key for key in found if key[0] == name)
        assert merged_samples(younger)[key] > own[key] + 999
        assert oldest_first[key] == own[key]
    assert MergedCollector([first.text().decode()]).value("sssrd_pending_limit") == 0
