"""Synthesized variants of the sssrd stack, shared by the CDK tests (one synth each, ~4 s).

`default` is the README's first deploy: a new VPC, HTTP to the origin, no Prometheus. `full`
sets everything optional: an existing VPC (looked up from cdk.context.json's dummy ids), a
viewer domain, HTTPS to the origin, Prometheus, a callback port range and sssrd settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
CDK_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CDK_DIR))

from aws_cdk import assertions  # noqa: E402
from sssrd_cdk.stack import SssrdStack, build_app  # noqa: E402

ACCOUNT, REGION = "123456789012", "eu-west-1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """aws-cdk-lib runs its jsii kernel in a Node.js subprocess, so every test here needs
    node (and `make check`, which runs no subprocess, leaves them out)."""
    for item in items:
        if CDK_DIR in item.path.parents:
            item.add_marker(pytest.mark.system_tools)


AMI = "ami-0123456789abcdef0"
LOOKUP_VPC = "vpc-0a1b2c3d4e5f60718"
VIEWER_CERT = f"arn:aws:acm:us-east-1:{ACCOUNT}:certificate/0f0e0d0c-0000-4000-8000-000000000000"
ORIGIN_CERT = f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0f0e0d0c-0000-4000-8000-000000000001"
FULL = {
    "ami": "/sssrd/ami",  # an SSM parameter holding the AMI id
    "vpcId": LOOKUP_VPC,
    "domainName": "www.example.com",
    "certificateArn": VIEWER_CERT,
    "originDomainName": "origin.example.com",
    "originCertificateArn": ORIGIN_CERT,
    "prometheus": "true",
    "callbackPorts": "8081-8084",
    "reservedConcurrency": "50",
    "minCapacity": "3",
    "maxCapacity": "9",
    "originSecretGeneration": "2",
    "accessLogExpiryDays": "90",
    "sssrd": {"drain_timeout": 45, "keepalive_timeout": 90, "trusted_proxies": ["10.20.0.0/16"]},
}


def cdk_context(**extra: Any) -> dict[str, Any]:
    """cdk.json's feature flags, cdk.context.json's lookups, the AMI, and `extra`."""
    flags = json.loads((CDK_DIR / "cdk.json").read_text())["context"]
    lookups = json.loads((CDK_DIR / "cdk.context.json").read_text())
    return {**flags, **lookups, "ami": AMI, **extra}


@dataclass
class Synthesized:
    stack: SssrdStack
    template: assertions.Template
    manifest: dict[str, Any]
    directory: Path

    json: dict[str, Any]

    @property
    def resources(self) -> dict[str, Any]:
        return self.json["Resources"]

    def of_type(self, type_name: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v["Type"] == type_name}

    def one(self, type_name: str) -> tuple[str, dict[str, Any]]:
        found = self.of_type(type_name)
        assert len(found) == 1, f"expected one {type_name}, found {sorted(found)}"
        return next(iter(found.items()))


def synthesize(**extra: Any) -> Synthesized:
    app, stack = build_app(cdk_context(**extra), ACCOUNT, REGION)
    assembly = app.synth()
    manifest = json.loads((Path(assembly.directory) / "manifest.json").read_text())
    template = assertions.Template.from_stack(stack)
    return Synthesized(stack, template, manifest, Path(assembly.directory), template.to_json())


@pytest.fixture(scope="session", autouse=True)
def cli_synth(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Future[tuple[subprocess.CompletedProcess[str], Path]]]:
    """The CLI synth (cdk_cli.py), started on a thread as soon as a CDK test runs."""
    modules = {
        getattr(getattr(item, "module", None), "__name__", "") for item in request.session.items
    }
    if "test_cdk_synth_cli" not in modules:
        yield Future()
        return
    import cdk_cli

    output = tmp_path_factory.mktemp("cli-synth")
    context = ("vpcId=vpc-0a1b2c3d4e5f60718", "prometheus=true")
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(lambda: (cdk_cli.synth(output, *context), output / "cdk.out"))


@pytest.fixture(scope="session")
def default() -> Synthesized:
    return synthesize()


@pytest.fixture(scope="session")
def full() -> Synthesized:
    return synthesize(**FULL)


@pytest.fixture(scope="session", params=["default", "full"])
def variant(request: pytest.FixtureRequest) -> Synthesized:
    return request.getfixturevalue(request.param)
