"""The instances: role, launch template, user data, Auto Scaling group and its scaling.

Instances boot the sssrd AMI (nothing installed at boot), with IMDSv2 only (hop limit 1, so a
container on the host cannot reach it), an encrypted gp3 root, no SSH key (Session Manager
instead) and detailed monitoring. Their role may invoke the render alias and nothing else
(plus SSM's core policy). A new AMI or new user data makes a new launch template version, which
starts an instance refresh (launch before terminate). Scale-in and refresh never cut streams:
the group deregisters an instance and waits for the target group's deregistration delay
(>= sssrd's drain_timeout) before it terminates it (timings.py). Scaling tracks the ALB's
active connections per in-service instance, which counts held streams (a stream is a
connection for its whole life), and CPU, which bounds the per-request work.
"""

from __future__ import annotations

from aws_cdk import Duration, Tags
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from cdk_nag import NagSuppressions
from constructs import Construct

from .network import PRIVATE, Network
from .parameters import FleetParameters
from .render import RenderFunction
from .timings import Timings
from .user_data import cloud_config

ROOT_DEVICE = "/dev/xvda"  # Debian 12's AMIs, which the sssrd AMI is baked from
DISCOVERY_TAG = ("sssrd", "true")  # packaging/prometheus/scrape.yml finds instances by it
CPU_TARGET_PERCENT = 60


class Fleet(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        parameters: FleetParameters,
        network: Network,
        render: RenderFunction,
        timings: Timings,
        load_balancer: elbv2.ApplicationLoadBalancer,
        target_group: elbv2.ApplicationTargetGroup,
    ) -> None:
        super().__init__(scope, id)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="sssrd instances: invoke the render alias; SSM Session Manager",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")
            ],
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["lambda:InvokeFunction"], resources=[render.alias.function_arn]
            )
        )
        NagSuppressions.add_resource_suppressions(
            self.role,
            [
                {
                    "id": "AwsSolutions-IAM4",
                    "reason": "AmazonSSMManagedInstanceCore is AWS's minimal policy for Session "
                    "Manager, which replaces SSH (instances have no key pair).",
                    "applies_to": [
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore"
                    ],
                }
            ],
        )
        settings = parameters.stack_settings(render.function.function_arn) | dict(parameters.sssrd)
        self.launch_template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            machine_image=_machine_image(parameters),
            instance_type=ec2.InstanceType(parameters.instance_type),
            role=self.role,
            security_group=network.instances,
            user_data=ec2.UserData.custom(cloud_config(settings)),
            http_tokens=ec2.LaunchTemplateHttpTokens.REQUIRED,
            http_put_response_hop_limit=1,
            detailed_monitoring=True,
            block_devices=[
                ec2.BlockDevice(
                    device_name=ROOT_DEVICE,
                    volume=ec2.BlockDeviceVolume.ebs(
                        parameters.root_volume_gib,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        encrypted=True,
                        delete_on_termination=True,
                    ),
                )
            ],
        )
        self.group = autoscaling.AutoScalingGroup(
            self,
            "Group",
            vpc=network.vpc,
            vpc_subnets=PRIVATE,
            launch_template=self.launch_template,
            min_capacity=parameters.min_capacity,
            max_capacity=parameters.max_capacity,
            desired_capacity=parameters.desired_capacity,
            health_checks=autoscaling.HealthChecks.with_additional_checks(
                additional_types=[autoscaling.AdditionalHealthCheckType.ELB],
                grace_period=Duration.seconds(timings.health_check_grace_s),
            ),
            default_instance_warmup=Duration.seconds(timings.health_check_grace_s),
            group_metrics=[autoscaling.GroupMetrics.all()],
            update_policy=autoscaling.UpdatePolicy.instance_refresh(
                strategy=autoscaling.InstanceRefreshStrategy.ROLLING,
                min_healthy_percentage=100,
                max_healthy_percentage=200,
            ),
        )
        Tags.of(self.group).add(*DISCOVERY_TAG, apply_to_launched_instances=True)
        Tags.of(self.group).add("Name", "sssrd", apply_to_launched_instances=True)
        NagSuppressions.add_resource_suppressions(
            self.group,
            [
                {
                    "id": "AwsSolutions-AS3",
                    "reason": "Auto Scaling sends every launch, termination and failure to "
                    "EventBridge on its own; subscribe there instead of a topic per group.",
                }
            ],
        )
        self.group.attach_to_application_target_group(target_group)
        self._track_connections_per_instance(load_balancer, parameters)
        self.group.scale_on_cpu_utilization("Cpu", target_utilization_percent=CPU_TARGET_PERCENT)

    def _track_connections_per_instance(
        self, load_balancer: elbv2.ApplicationLoadBalancer, parameters: FleetParameters
    ) -> None:
        """Target tracking on ALB connections (viewer and target side) per in-service instance.

        A metric-math target (CDK's L2 takes single metrics only): AWS's documented pattern for
        "load per instance", as with a queue's backlog per instance.
        """
        policy = autoscaling.CfnScalingPolicy
        metric_stat = policy.TargetTrackingMetricStatProperty

        def query(id: str, namespace: str, name: str, dimension: tuple[str, str], stat: str):
            metric = policy.MetricProperty(
                namespace=namespace,
                metric_name=name,
                dimensions=[policy.MetricDimensionProperty(name=dimension[0], value=dimension[1])],
            )
            return policy.TargetTrackingMetricDataQueryProperty(
                id=id, metric_stat=metric_stat(metric=metric, stat=stat), return_data=False
            )

        policy(
            self,
            "HeldConnections",
            auto_scaling_group_name=self.group.auto_scaling_group_name,
            policy_type="TargetTrackingScaling",
            target_tracking_configuration=policy.TargetTrackingConfigurationProperty(
                target_value=parameters.target_connections_per_instance,
                customized_metric_specification=policy.CustomizedMetricSpecificationProperty(
                    metrics=[
                        query(
                            "connections",
                            "AWS/ApplicationELB",
                            "ActiveConnectionCount",
                            ("LoadBalancer", load_balancer.load_balancer_full_name),
                            "Sum",
                        ),
                        query(
                            "instances",
                            "AWS/AutoScaling",
                            "GroupInServiceInstances",
                            ("AutoScalingGroupName", self.group.auto_scaling_group_name),
                            "Average",
                        ),
                        policy.TargetTrackingMetricDataQueryProperty(
                            id="perInstance",
                            expression="connections / instances",
                            label="ALB active connections per in-service instance",
                            return_data=True,
                        ),
                    ]
                ),
            ),
        )


def _machine_image(parameters: FleetParameters) -> ec2.IMachineImage:
    if parameters.ami_is_ssm_parameter:
        return ec2.MachineImage.from_ssm_parameter(parameters.ami)
    return ec2.MachineImage.generic_linux({parameters.region: parameters.ami})
