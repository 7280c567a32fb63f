"""The sssrd stack: builds the constructs in dependency order, the shared log bucket, outputs.

`build_app(context, default_account, default_region)` is what app.py and the tests call, so the
tests check the very app `cdk synth` runs, with cdk-nag's AwsSolutions checks applied.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aws_cdk import App, Aspects, CfnOutput, Duration, Environment, RemovalPolicy, Stack
from aws_cdk import aws_s3 as s3
from cdk_nag import AwsSolutionsChecks, NagSuppressions
from constructs import Construct

from .edge import Edge
from .fleet import DISCOVERY_TAG, Fleet
from .network import Network
from .parameters import FleetParameters, sssrd_settings
from .render import RenderFunction
from .timings import derive_timings

STACK_NAME = "Sssrd"


class SssrdStack(Stack):
    def __init__(self, scope: Construct, id: str, parameters: FleetParameters) -> None:
        super().__init__(
            scope,
            id,
            env=Environment(account=parameters.account, region=parameters.region),
            description="sssrd: CloudFront -> ALB -> Auto Scaling group -> render Lambda",
        )
        timings = derive_timings(sssrd_settings(parameters))
        self.log_bucket = logs = self._log_bucket(parameters.access_log_expiry_days)
        network = Network(self, "Network", parameters, logs)
        render = RenderFunction(self, "Render", parameters, network)
        edge = Edge(self, "Edge", parameters, network, timings, logs)
        fleet = Fleet(
            self,
            "Fleet",
            parameters,
            network,
            render,
            timings,
            edge.load_balancer,
            edge.target_group,
        )
        self.parameters, self.timings = parameters, timings
        self.network, self.render, self.edge, self.fleet = network, render, edge, fleet
        self._outputs()

    def _log_bucket(self, expiry_days: int) -> s3.Bucket:
        bucket = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,  # the only one ALB access logs support
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            # CloudFront's standard logs are written with an ACL.
            object_ownership=s3.ObjectOwnership.OBJECT_WRITER,
            removal_policy=RemovalPolicy.RETAIN,
            # Logs are evidence (cdk/README.md), kept for accessLogExpiryDays, not forever.
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireAccessLogs",
                    expiration=Duration.days(expiry_days),
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                )
            ],
        )
        NagSuppressions.add_resource_suppressions(
            bucket,
            [
                {
                    "id": "AwsSolutions-S1",
                    "reason": "This is the access log bucket (ALB, CloudFront, VPC flow logs); "
                    "logging it into itself would loop.",
                }
            ],
        )
        return bucket

    def _outputs(self) -> None:
        parameters = self.parameters
        outputs: dict[str, tuple[str, str]] = {
            "CloudFrontDomain": (
                self.edge.distribution.distribution_domain_name,
                "point the viewers' name (domainName) here",
            ),
            "AlbDnsName": (
                self.edge.load_balancer.load_balancer_dns_name,
                "point originDomainName here (CNAME) when the origin uses HTTPS",
            ),
            "FunctionName": (self.render.function.function_name, "the render Lambda"),
            "AliasName": (self.render.alias.alias_name, "the alias the instances invoke"),
            "AutoScalingGroupName": (self.fleet.group.auto_scaling_group_name, "the fleet"),
            "AccessLogBucket": (self.log_bucket.bucket_name, "ALB, CloudFront, VPC flow logs"),
            "RenderLogGroup": (self.render.log_group.log_group_name, "the render function's logs"),
            "OriginSecretArn": (self.edge.origin_secret.secret_arn, "the origin header's value"),
            "PrometheusScrapeConfig": (
                prometheus_sd_config(parameters.region, self.network.admin_port),
                "ec2_sd_configs entry for prometheus.yml (needs -c prometheus=true)",
            ),
        }
        if self.network.prometheus is not None:
            outputs["PrometheusSecurityGroupId"] = (
                self.network.prometheus.security_group_id,
                "attach to the Prometheus server",
            )
        for name, (value, description) in outputs.items():
            CfnOutput(self, name, value=value, description=description)


def prometheus_sd_config(region: str, port: int) -> str:
    """One `ec2_sd_configs` entry (JSON, which YAML reads) finding this fleet by its tag."""
    key, value = DISCOVERY_TAG
    entry = {
        "region": region,
        "port": port,
        "filters": [
            {"name": f"tag:{key}", "values": [value]},
            {"name": "instance-state-name", "values": ["running"]},
        ],
    }
    return json.dumps({"ec2_sd_configs": [entry]}, separators=(", ", ": "))


def build_app(
    context: Mapping[str, Any], default_account: str | None, default_region: str | None
) -> tuple[App, SssrdStack]:
    """The app with the sssrd stack and cdk-nag's AwsSolutions checks (errors fail synth)."""
    app = App(context=dict(context))
    parameters = FleetParameters.from_context(
        app.node.try_get_context, default_account, default_region
    )
    stack = SssrdStack(app, STACK_NAME, parameters)
    Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app, stack
