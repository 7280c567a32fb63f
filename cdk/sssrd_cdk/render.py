"""The render Lambda: examples/lambda/ packaged by its own build.sh, in the VPC, behind an alias.

sssrd invokes it synchronously by default (context invocationType); for asynchronous invokes the
alias's event invoke config says: no retries (a render retried after the viewer gave up is
waste; callbacks are claim-once anyway) and events older than 60 s are dropped. Its timeout is
sssrd's function_timeout (parameters.RENDER_TIMEOUT_S). The instances invoke the alias only, so
a deploy moves every instance to the new version at once without touching their configuration.
The function's security group may reach the instances' callback ports and nothing else
(network.py).
"""

from __future__ import annotations

import subprocess
import tempfile
import zipfile
from pathlib import Path

import jsii
from aws_cdk import BundlingOptions, DockerImage, Duration, ILocalBundling, RemovalPolicy
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from cdk_nag import NagSuppressions
from constructs import Construct

from .exceptions import accept
from .network import PRIVATE, Network
from .parameters import ALIAS_NAME, RENDER_TIMEOUT_S, RETENTION_DAYS, FleetParameters

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lambda"
RUNTIME = lambda_.Runtime.PYTHON_3_14
MAX_EVENT_AGE = Duration.seconds(60)
# A render streams for as long as its page takes; sssrd's own limits (callback_timeout, then
# idle_timeout between chunks) decide earlier when a render has stalled.
TIMEOUT = Duration.seconds(RENDER_TIMEOUT_S)


@jsii.implements(ILocalBundling)
class BuildScript:
    """Runs examples/lambda/build.sh and unpacks its zip as the asset, so the asset's hash
    follows the zip's contents (the zip itself carries timestamps)."""

    def try_bundle(self, output_dir: str, *, image: DockerImage, **_options: object) -> bool:
        with tempfile.TemporaryDirectory() as work:
            archive = Path(work) / "render.zip"
            subprocess.run(
                ["sh", str(EXAMPLE / "build.sh"), str(archive)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            with zipfile.ZipFile(archive) as built:
                built.extractall(output_dir)
        return True


class RenderFunction(Construct):
    def __init__(
        self, scope: Construct, id: str, parameters: FleetParameters, network: Network
    ) -> None:
        super().__init__(scope, id)
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=getattr(logs.RetentionDays, RETENTION_DAYS[parameters.log_retention_days]),
            removal_policy=RemovalPolicy.RETAIN,
        )
        accept(
            self.log_group,
            "CKV_AWS_158",
            "CloudWatch Logs encrypts every log group at rest already; a customer managed key "
            "would add a key policy to keep right and a way to lose the render's logs (a key "
            "disabled or mis-granted stops delivery), while whoever may read these logs through "
            "IAM could be granted kms:Decrypt just the same. Renderers log no secrets.",
        )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=RUNTIME,
            architecture=lambda_.Architecture.ARM_64,
            handler="handler.handler",
            code=lambda_.Code.from_asset(
                str(EXAMPLE),
                bundling=BundlingOptions(
                    image=DockerImage.from_registry("unused-local-bundling"),
                    local=BuildScript(),
                ),
            ),
            memory_size=256,
            timeout=TIMEOUT,
            vpc=network.vpc,
            vpc_subnets=PRIVATE,
            security_groups=[network.render],
            reserved_concurrent_executions=parameters.reserved_concurrency,
            log_group=self.log_group,
        )
        self.alias = lambda_.Alias(
            self,
            "Alias",
            alias_name=ALIAS_NAME,
            version=self.function.current_version,
            retry_attempts=0,
            max_event_age=MAX_EVENT_AGE,
        )
        accept(
            self.function,
            "CKV_AWS_116",
            "No dead-letter queue, on purpose: a render is worth something only while its "
            "viewer waits (sssrd answers 502/504 by callback_timeout), so a failed event has "
            "nothing left to retry (retries 0, event age 60 s), and a queue would keep viewers' "
            "requests (headers, cookies) at rest. Failures show in the function's Errors "
            "metric and logs, and in sssrd_requests_total by outcome.",
        )
        NagSuppressions.add_resource_suppressions(
            self.function,
            [
                {
                    "id": "AwsSolutions-IAM4",
                    "reason": "AWSLambdaBasicExecutionRole (its own logs) and "
                    "AWSLambdaVPCAccessExecutionRole (its ENIs) are the narrowest policies AWS "
                    "defines for exactly what every VPC function needs; nothing else is granted.",
                    "applies_to": [
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                        "AWSLambdaBasicExecutionRole",
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                        "AWSLambdaVPCAccessExecutionRole",
                    ],
                }
            ],
            apply_to_children=True,
        )
