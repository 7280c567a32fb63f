"""The VPC and every security group rule of the fleet, in one place so who may talk to whom reads
at a glance.

The VPC is looked up (`vpcId`) or made: two AZs, public subnets for the ALB and NAT, private
subnets for instances and the Lambda, flow logs. No rule admits 0.0.0.0/0: the ALB admits
CloudFront's managed origin-facing prefix list on its listener port; instances admit the ALB on
the viewer port, the render Lambda on the callback port range, and (optionally) a Prometheus
security group on the admin and node exporter ports. Egress is as narrow: the ALB and the Lambda
may reach the instances only; instances may open HTTPS (the Lambda Invoke API, SSM) only.
"""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_s3 as s3
from constructs import Construct

from .parameters import NODE_EXPORTER_PORT, FleetParameters, ParameterError, default_port

CLOUDFRONT_PREFIX_LIST = "com.amazonaws.global.cloudfront.origin-facing"
PRIVATE = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
PUBLIC = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)


def listener_port(parameters: FleetParameters) -> int:
    return 443 if parameters.origin_uses_https else 80


class Network(Construct):
    def __init__(
        self, scope: Construct, id: str, parameters: FleetParameters, log_bucket: s3.IBucket
    ) -> None:
        super().__init__(scope, id)
        self.vpc = self._vpc(parameters, log_bucket)
        self.viewer_port = default_port("listen")
        self.callback_ports = parameters.callback_ports
        self.admin_port = default_port("admin_listen")

        self.alb = self._group("Alb", "sssrd ALB: CloudFront origin-facing addresses only")
        self.instances = self._group("Instances", "sssrd instances")
        self.render = self._group("Render", "sssrd render Lambda: calls back to the instances")
        cloudfront = ec2.PrefixList.from_lookup(
            self, "CloudFront", prefix_list_name=CLOUDFRONT_PREFIX_LIST
        )
        self.alb.add_ingress_rule(
            ec2.Peer.prefix_list(cloudfront.prefix_list_id),
            ec2.Port.tcp(listener_port(parameters)),
            "CloudFront origin-facing",
        )
        self.instances.connections.allow_from(
            self.alb, ec2.Port.tcp(self.viewer_port), "viewers and health checks from the ALB"
        )
        self.instances.connections.allow_from(
            self.render, self.callback_port_range, "callbacks from the render Lambda"
        )
        self.instances.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "Lambda Invoke API and SSM over HTTPS"
        )
        self.prometheus: ec2.SecurityGroup | None = None
        if parameters.prometheus:
            self.prometheus = self._group(
                "Prometheus", "attach to the Prometheus server that scrapes sssrd"
            )
            for port, what in ((self.admin_port, "sssrd /metrics"), (NODE_EXPORTER_PORT, "node")):
                self.instances.connections.allow_from(
                    self.prometheus, ec2.Port.tcp(port), f"{what} from Prometheus"
                )

    @property
    def callback_port_range(self) -> ec2.Port:
        first, last = self.callback_ports.first, self.callback_ports.last
        return ec2.Port.tcp(first) if first == last else ec2.Port.tcp_range(first, last)

    def _group(self, id: str, description: str) -> ec2.SecurityGroup:
        return ec2.SecurityGroup(
            self, id, vpc=self.vpc, description=description, allow_all_outbound=False
        )

    def _vpc(self, parameters: FleetParameters, log_bucket: s3.IBucket) -> ec2.IVpc:
        if parameters.vpc_id is not None:
            vpc = ec2.Vpc.from_lookup(self, "Vpc", vpc_id=parameters.vpc_id)
            for subnet_type, kind, purpose in (
                (PRIVATE.subnet_type, "private subnets with egress", "instances and the Lambda"),
                (PUBLIC.subnet_type, "public subnets", "the ALB"),
            ):
                zones = set(vpc.select_subnets(subnet_type=subnet_type).availability_zones)
                if len(zones) < 2:
                    raise ParameterError(
                        f"context vpcId: {parameters.vpc_id} needs {kind} in at least 2 "
                        f"availability zones for {purpose} (found {len(zones)})"
                    )
            return vpc
        return ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=parameters.nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24
                ),
                ec2.SubnetConfiguration(
                    name="Private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
                ),
            ],
            flow_logs={
                "All": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_s3(log_bucket, "vpc-flow-logs/")
                )
            },
        )
