"""Context validation and the timings derived from sssrd's settings (no synth: pure functions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from typing import Any

import pytest
import yaml
from conftest import ACCOUNT, AMI, CDK_DIR, ORIGIN_CERT, REGION, VIEWER_CERT
from hypothesis import given
from hypothesis import strategies as st
from sssrd_cdk.parameters import (
    RENDER_TIMEOUT_S,
    FleetParameters,
    ParameterError,
    PortRange,
    sssrd_settings,
)
from sssrd_cdk.timings import CLOUDFRONT_READ_TIMEOUT_S, derive_timings
from sssrd_cdk.user_data import CONFIG_PATH, RESTART, cloud_config

from sssrd import config as sssrd_config


def parameters(**context: Any) -> FleetParameters:
    values = {"ami": AMI, **context}
    return FleetParameters.from_context(values.get, ACCOUNT, REGION)


def test_command_line_strings_parse_like_cdk_json_values():
    from_cli = parameters(minCapacity="3", prometheus="true", sssrd='{"drain_timeout": 45}')
    from_json = parameters(minCapacity=3, prometheus=True, sssrd={"drain_timeout": 45})
    assert from_cli == from_json
    assert from_cli.min_capacity == 3 and from_cli.prometheus is True


def test_defaults_need_only_the_ami():
    chosen = parameters()
    assert (chosen.min_capacity, chosen.max_capacity, chosen.desired_capacity) == (2, 6, None)
    assert chosen.callback_ports == PortRange(8081, 8082)  # a worker per vCPU of a c7i.large
    assert parameters(ami="/sssrd/ami").ami_is_ssm_parameter


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"ami": None}, "context ami: required"),
        ({"ami": "ubuntu"}, "context ami: expected an AMI id"),
        ({"minCapacity": "0"}, "context minCapacity: expected 1..1000"),
        ({"minCapacity": "two"}, "context minCapacity: expected an integer"),
        ({"minCapacity": 5, "maxCapacity": 4}, "context minCapacity: 5 exceeds maxCapacity 4"),
        ({"desiredCapacity": 9}, "context desiredCapacity: 9 is outside"),
        ({"vpcId": "default"}, "context vpcId: expected a VPC id"),
        ({"prometheus": "yes"}, "context prometheus: expected true or false"),
        ({"callbackPorts": "8084-8081"}, "context callbackPorts: expected ports"),
        ({"logRetentionDays": 31}, "context logRetentionDays: expected one of"),
        ({"accessLogExpiryDays": 0}, "context accessLogExpiryDays: expected 1..3653"),
        ({"accessLogExpiryDays": "forever"}, "context accessLogExpiryDays: expected an integer"),
        ({"domainName": "www.example.com"}, "context certificateArn: required together"),
        (
            {"domainName": "www.example.com", "certificateArn": ORIGIN_CERT},
            "context certificateArn: the certificate must be in us-east-1",
        ),
        (
            {"originDomainName": "o.example.com", "originCertificateArn": VIEWER_CERT},
            f"context originCertificateArn: the certificate must be in {REGION}",
        ),
        (
            {"originDomainName": "o.example.com", "originCertificateArn": ORIGIN_CERT},
            "context domainName: required with originDomainName",
        ),
        ({"sssrd": "[1]"}, "context sssrd: expected a JSON object"),
        ({"sssrd": {"function": "other"}}, "context sssrd.function: set by the stack"),
        ({"sssrd": {"drain_timeout": -1}}, "context sssrd.drain_timeout: "),  # sssrd's words
        ({"sssrd": {"drain_time": 5}}, "context sssrd.drain_time: unknown setting"),
        ({"sssrd": {"keepalive_timeout": 40}}, "context sssrd.keepalive_timeout: 40 s leaves"),
        (
            {"sssrd": {"idle_timeout": 60, "keepalive_timeout": 90}},
            "context sssrd.idle_timeout: 60 s must stay below",
        ),
    ],
)
def test_invalid_context_is_refused_naming_the_key(context, message):
    with pytest.raises(ParameterError) as refused:
        chosen = parameters(**context)
        derive_timings(sssrd_settings(chosen))
    assert str(refused.value).startswith(message), str(refused.value)


def test_account_and_region_are_required_without_credentials():
    with pytest.raises(ParameterError, match="context account: required"):
        FleetParameters.from_context({"ami": AMI}.get, None, REGION)


def test_default_timings_keep_every_layer_inside_the_next():
    settings = sssrd_settings(parameters())
    timings = derive_timings(settings)
    assert timings.alb_idle_timeout_s == 60  # the ALB's own default, under sssrd's 75 s
    assert timings.deregistration_delay_s == 30
    assert timings.origin_keepalive_s == 55
    assert timings.origin_read_timeout_s == CLOUDFRONT_READ_TIMEOUT_S == 60


def seconds(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False).map(lambda value: round(value, 1))


@given(
    keepalive=seconds(1, 5000),
    callback=seconds(0.5, 120),
    idle=seconds(0.5, 120),
    drain=seconds(0.5, 5000),
)
def test_derived_timings_hold_their_relations_or_are_refused(keepalive, callback, idle, drain):
    sssrd = {
        "keepalive_timeout": keepalive,
        "callback_timeout": callback,
        "idle_timeout": idle,
        "drain_timeout": drain,
    }
    try:
        settings = sssrd_settings(parameters(sssrd=sssrd))
        timings = derive_timings(settings)
    except ParameterError as refused:
        assert str(refused).startswith("context sssrd.")
        return
    silence = max(settings.callback_timeout, settings.idle_timeout)
    assert silence < timings.alb_idle_timeout_s < settings.keepalive_timeout
    assert silence < timings.origin_read_timeout_s
    assert 1 <= timings.origin_keepalive_s < timings.alb_idle_timeout_s
    assert timings.deregistration_delay_s >= settings.drain_timeout
    assert timings.health_timeout_s < timings.health_interval_s
    assert timings.draining_instance_leaves_after_s <= 10


def test_user_data_is_the_ami_contract_and_sssrd_accepts_its_config(tmp_path):
    chosen = parameters(
        prometheus=True, sssrd={"drain_timeout": 45, "trusted_proxies": ["10.0.0.0/8"]}
    )
    function = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:render"
    text = cloud_config(chosen.stack_settings(function) | dict(chosen.sssrd))
    header, _, body = text.partition("\n")
    assert header == "#cloud-config"
    document = json.loads(body)  # JSON: a subset of the YAML cloud-init reads ...
    assert yaml.safe_load(text) == document  # ... with PyYAML, as cloud-init does
    assert document["runcmd"] == [RESTART] == [["systemctl", "restart", "sssrd.service"]]
    (written,) = document["write_files"]
    assert written["path"] == CONFIG_PATH == "/etc/sssrd/sssrd.toml"
    assert tomllib.loads(written["content"]) == {
        "invoker": "lambda",
        "function": function,
        "qualifier": "live",
        "region": REGION,
        "callback_url": "auto",
        "callback_listen": "0.0.0.0:8081",
        "workers": 2,
        "invocation_type": "RequestResponse",
        "function_timeout": 300,
        "admin_listen": "0.0.0.0:9090",
        "drain_timeout": 45,
        "trusted_proxies": ["10.0.0.0/8"],
    }
    config = tmp_path / "sssrd.toml"
    config.write_text(written["content"])
    settings = sssrd_config.load_settings(path=str(config), environ={})
    assert (settings.function, settings.qualifier, settings.drain_timeout) == (function, "live", 45)


def test_the_invocation_type_is_a_parameter_and_the_invoke_waits_as_long_as_the_function():
    chosen = parameters(invocationType="Event").stack_settings("f")
    assert chosen["invocation_type"] == "Event"
    assert chosen["function_timeout"] == RENDER_TIMEOUT_S
    with pytest.raises(ParameterError, match="context invocationType: expected one of"):
        parameters(invocationType="DryRun")
    with pytest.raises(ParameterError, match=r"context sssrd\.invocation_type: set by the stack"):
        parameters(sssrd={"invocation_type": "Event"})


def test_admin_listener_stays_local_without_prometheus():
    assert "admin_listen" not in parameters().stack_settings("f")


def test_app_py_stops_with_one_line_naming_the_key():
    # The CLI hands context to app.py in CDK_CONTEXT_JSON; run it the same way.
    context = {"ami": AMI, "account": ACCOUNT, "region": REGION, "minCapacity": "0"}
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": "/nonexistent"}
    done = subprocess.run(
        [sys.executable, "app.py"], cwd=CDK_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr == "sssrd-cdk: context minCapacity: expected 1..1000, got 0\n"
