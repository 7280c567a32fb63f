"""cdk-nag's AwsSolutions checks: clean on every variant, and each suppression justified."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Annotations, Match
from conftest import ACCOUNT, REGION, cdk_context
from sssrd_cdk.stack import build_app

# Each is justified in code next to the resource it concerns; adding one is a review decision.
SUPPRESSED = {
    "AwsSolutions-AS3",  # fleet.py: scaling events go to EventBridge
    "AwsSolutions-CFR1",  # edge.py: geo restriction is the application's decision
    "AwsSolutions-CFR2",  # edge.py: WAF is priced and tuned per application
    "AwsSolutions-CFR4",  # edge.py: only without a custom certificate
    "AwsSolutions-CFR5",  # edge.py: only without originCertificateArn
    "AwsSolutions-IAM4",  # render.py, fleet.py: the minimal AWS managed policies, named
    "AwsSolutions-S1",  # stack.py: the access log bucket itself
    "AwsSolutions-SMG4",  # edge.py: the origin secret, rotated by redeploying
}


def findings(stack) -> list[str]:
    annotations = Annotations.from_stack(stack)
    pattern = Match.string_like_regexp("AwsSolutions-.*")
    found = annotations.find_error("*", pattern) + annotations.find_warning("*", pattern)
    return [f"{message.id}: {str(message.entry.data)[:160]}" for message in found]


def suppressions(synth) -> list[dict[str, str]]:
    return [
        rule
        for resource in synth.resources.values()
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
    ]


def test_aws_solutions_checks_find_nothing(variant):
    assert findings(variant.stack) == []


def test_every_suppression_is_known_and_justified(default, full):
    rules = suppressions(default) + suppressions(full)
    assert {rule["id"] for rule in rules} == SUPPRESSED
    for rule in rules:
        assert len(rule["reason"]) >= 60, rule
    # With a certificate and HTTPS to the origin, the TLS findings are fixed, not suppressed.
    assert {"AwsSolutions-CFR4", "AwsSolutions-CFR5"}.isdisjoint(
        r["id"] for r in suppressions(full)
    )


def test_the_checks_run_on_the_app_and_catch_an_open_security_group():
    app, stack = build_app(cdk_context(), ACCOUNT, REGION)
    mistake = ec2.SecurityGroup(stack, "Mistake", vpc=stack.network.vpc)
    mistake.add_ingress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(22))
    app.synth()
    assert any("AwsSolutions-EC23" in finding for finding in findings(stack))
