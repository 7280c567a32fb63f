"""The synthesized template, property by property (cdk/README.md lists what each is for)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk.assertions import Match
from conftest import (
    ACCOUNT,
    AMI,
    LOOKUP_VPC,
    ORIGIN_CERT,
    REGION,
    VIEWER_CERT,
    Synthesized,
    cdk_context,
    synthesize,
)
from sssrd_cdk.edge import ORIGIN_HEADER
from sssrd_cdk.network import CLOUDFRONT_PREFIX_LIST
from sssrd_cdk.parameters import ParameterError
from sssrd_cdk.stack import build_app

PREFIX_LIST_ID = "pl-4fa04526"  # cdk.context.json's answer for CLOUDFRONT_PREFIX_LIST
PRIVATE_SUBNETS = ["subnet-0c00000000000000c", "subnet-0d00000000000000d"]  # cdk.context.json
PUBLIC_SUBNETS = ["subnet-0a00000000000000a", "subnet-0b00000000000000b"]


def logical_id(synth: Synthesized, construct: Any) -> str:
    element = getattr(construct.node, "default_child", None) or construct
    return synth.stack.resolve(synth.stack.get_logical_id(element))


def ref(synth: Synthesized, construct: Any) -> dict[str, str]:
    return {"Ref": logical_id(synth, construct)}


def group_id(synth: Synthesized, group: Any) -> dict[str, list[str]]:
    return {"Fn::GetAtt": [logical_id(synth, group), "GroupId"]}


def rules(synth: Synthesized, direction: str) -> list[dict[str, Any]]:
    """Every ingress or egress rule, inline or standalone, with the group it belongs to."""
    inline = "SecurityGroupIngress" if direction == "ingress" else "SecurityGroupEgress"
    found = []
    for name, group in synth.of_type("AWS::EC2::SecurityGroup").items():
        for rule in group["Properties"].get(inline, []):
            found.append({**rule, "GroupId": {"Fn::GetAtt": [name, "GroupId"]}})
    found += [r["Properties"] for r in synth.of_type(f"AWS::EC2::{inline}").values()]
    return found


def rule_view(rule: dict[str, Any]) -> tuple[Any, ...]:
    peer = rule.get("SourceSecurityGroupId") or rule.get("DestinationSecurityGroupId")
    peer = peer or rule.get("SourcePrefixListId") or rule.get("CidrIp") or rule.get("CidrIpv6")
    return (json.dumps(rule["GroupId"]), json.dumps(peer), rule["FromPort"], rule["ToPort"])


def test_no_rule_admits_the_internet(variant):
    for rule in rules(variant, "ingress"):
        assert rule.get("CidrIp") != "0.0.0.0/0" and rule.get("CidrIpv6") != "::/0", rule
        assert rule["IpProtocol"] == "tcp", rule


def test_the_alb_admits_only_cloudfronts_prefix_list_on_its_listener_port(default, full):
    for synth, port in ((default, 80), (full, 443)):
        alb = group_id(synth, synth.stack.network.alb)
        mine = [r for r in rules(synth, "ingress") if r["GroupId"] == alb]
        assert [(r["SourcePrefixListId"], r["FromPort"], r["ToPort"]) for r in mine] == [
            (PREFIX_LIST_ID, port, port)
        ]


def test_instances_admit_the_alb_the_lambda_and_prometheus_on_their_ports_only(default, full):
    def expected(synth: Synthesized, first: int, last: int) -> set[tuple[Any, ...]]:
        network = synth.stack.network
        instances = json.dumps(group_id(synth, network.instances))
        peers = {
            (json.dumps(group_id(synth, network.alb)), 8080, 8080),
            (json.dumps(group_id(synth, network.render)), first, last),
        }
        if network.prometheus is not None:
            prometheus = json.dumps(group_id(synth, network.prometheus))
            peers |= {(prometheus, 9090, 9090), (prometheus, 9100, 9100)}
        return {(instances, peer, low, high) for peer, low, high in peers}

    for synth, (first, last) in ((default, (8081, 8082)), (full, (8081, 8084))):
        instances = json.dumps(group_id(synth, synth.stack.network.instances))
        ingress = {
            rule_view(r) for r in rules(synth, "ingress") if json.dumps(r["GroupId"]) == instances
        }
        assert ingress == expected(synth, first, last)
    assert full.stack.network.prometheus is not None and default.stack.network.prometheus is None


def test_egress_is_only_towards_the_instances_or_https(full):
    network = full.stack.network
    instances = json.dumps(group_id(full, network.instances))
    allowed = {
        json.dumps(group_id(full, network.alb)): {(instances, 8080, 8080)},
        json.dumps(group_id(full, network.render)): {(instances, 8081, 8084)},
        json.dumps(group_id(full, network.prometheus)): {
            (instances, 9090, 9090),
            (instances, 9100, 9100),
        },
        instances: {('"0.0.0.0/0"', 443, 443)},
    }
    egress: dict[str, set[tuple[Any, ...]]] = {}
    for rule in rules(full, "egress"):
        view = rule_view(rule)
        egress.setdefault(view[0], set()).add(view[1:])
    assert egress == allowed


def test_the_instance_role_may_invoke_the_alias_and_nothing_else(variant):
    fleet, render = variant.stack.fleet, variant.stack.render
    role = logical_id(variant, fleet.role)
    policies = [
        p["Properties"]
        for p in variant.of_type("AWS::IAM::Policy").values()
        if {"Ref": role} in p["Properties"]["Roles"]
    ]
    assert [p["PolicyDocument"]["Statement"] for p in policies] == [
        [
            {
                "Action": "lambda:InvokeFunction",
                "Effect": "Allow",
                "Resource": ref(variant, render.alias),
            }
        ]
    ]
    managed = variant.resources[role]["Properties"]["ManagedPolicyArns"]
    assert [json.dumps(arn) for arn in managed] == [
        json.dumps(
            {
                "Fn::Join": [
                    "",
                    [
                        "arn:",
                        {"Ref": "AWS::Partition"},
                        ":iam::aws:policy/AmazonSSMManagedInstanceCore",
                    ],
                ]
            }
        )
    ]
    principal = variant.resources[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in principal] == [{"Service": "ec2.amazonaws.com"}]


def render_function(synth: Synthesized) -> dict[str, Any]:
    return synth.resources[logical_id(synth, synth.stack.render.function)]


def test_the_render_function_runs_in_the_private_subnets_with_its_own_group(full):
    render = full.stack.render
    function = render_function(full)
    properties = function["Properties"]
    assert properties["VpcConfig"]["SubnetIds"] == PRIVATE_SUBNETS
    assert properties["VpcConfig"]["SecurityGroupIds"] == [
        group_id(full, full.stack.network.render)
    ]
    assert properties["Runtime"].startswith("python3.")
    assert properties["Handler"] == "handler.handler"
    assert properties["ReservedConcurrentExecutions"] == 50
    assert properties["LoggingConfig"]["LogGroup"] == ref(full, render.log_group)
    full.template.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": 30})


def test_reserved_concurrency_is_left_to_the_account_unless_given(default):
    assert "ReservedConcurrentExecutions" not in render_function(default)["Properties"]


def test_the_alias_has_no_retries_and_a_60_second_event_age(variant):
    _, config = variant.one("AWS::Lambda::EventInvokeConfig")
    assert config["Properties"]["MaximumRetryAttempts"] == 0
    assert config["Properties"]["MaximumEventAgeInSeconds"] == 60
    alias = ref(variant, variant.stack.render.alias)  # the alias ARN; its 8th field, the name
    assert config["Properties"]["Qualifier"] == {"Fn::Select": [7, {"Fn::Split": [":", alias]}]}
    variant.template.has_resource_properties("AWS::Lambda::Alias", {"Name": "live"})


def test_the_function_code_is_what_build_sh_packs(default):
    key = render_function(default)["Properties"]["Code"]["S3Key"]
    staged = default.directory / f"asset.{key.removesuffix('.zip')}"
    assert sorted(path.name for path in staged.iterdir()) == ["handler.py", "sssrd_callback.py"]
    assert (staged / "sssrd_callback.py").read_bytes() == (
        Path(__file__).resolve().parents[2] / "sssrd" / "callback" / "__init__.py"
    ).read_bytes()


def launch_data(synth: Synthesized) -> dict[str, Any]:
    _, template = synth.one("AWS::EC2::LaunchTemplate")
    return template["Properties"]["LaunchTemplateData"]


def test_instances_require_imdsv2_and_boot_encrypted_without_ssh(variant):
    data = launch_data(variant)
    assert data["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}
    assert "KeyName" not in data
    assert data["Monitoring"] == {"Enabled": True}
    (root,) = data["BlockDeviceMappings"]
    assert root["Ebs"] == {
        "DeleteOnTermination": True,
        "Encrypted": True,
        "VolumeSize": 8,
        "VolumeType": "gp3",
    }
    assert data["SecurityGroupIds"] == [group_id(variant, variant.stack.network.instances)]


def test_the_ami_is_an_id_or_an_ssm_parameter_read_at_deploy_time(default, full):
    assert launch_data(default)["ImageId"] == AMI
    parameter = launch_data(full)["ImageId"]["Ref"]
    assert full.json["Parameters"][parameter] == {
        "Type": "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>",
        "Default": "/sssrd/ami",
    }


def user_data(synth: Synthesized) -> tuple[dict[str, Any], dict[str, Any]]:
    """The cloud-config document and its sssrd.toml, with the function ARN's reference as text."""
    parts = launch_data(synth)["UserData"]["Fn::Base64"]["Fn::Join"][1]
    function = logical_id(synth, synth.stack.render.function)
    text = "".join(
        part if isinstance(part, str) else f"<{part['Fn::GetAtt'][0]}.{part['Fn::GetAtt'][1]}>"
        for part in parts
    )
    assert text.startswith("#cloud-config\n")
    document = json.loads(text.partition("\n")[2])
    settings = tomllib.loads(document["write_files"][0]["content"])
    assert settings["function"] == f"<{function}.Arn>"
    return document, settings


def test_user_data_writes_sssrd_toml_and_restarts_sssrd(default, full):
    for synth in (default, full):
        document, settings = user_data(synth)
        assert document["runcmd"] == [["systemctl", "restart", "sssrd.service"]]
        assert document["write_files"][0]["path"] == "/etc/sssrd/sssrd.toml"
        assert {k: settings[k] for k in ("invoker", "qualifier", "region", "callback_url")} == {
            "invoker": "lambda",
            "qualifier": "live",
            "region": REGION,
            "callback_url": "auto",
        }
    assert "admin_listen" not in user_data(default)[1]
    assert user_data(full)[1]["admin_listen"] == "0.0.0.0:9090"
    assert user_data(full)[1]["drain_timeout"] == 45


def test_a_synchronous_invoke_waits_as_long_as_the_render_function_may_run(default):
    """The default invocation type (cdk/README.md says why), with sssrd's function_timeout
    derived from the function itself; the role stays as narrow (the test above)."""
    _, settings = user_data(default)
    function = default.resources[logical_id(default, default.stack.render.function)]
    assert settings["invocation_type"] == "RequestResponse"
    assert settings["function_timeout"] == function["Properties"]["Timeout"]


def test_the_callback_port_parameter_drives_both_user_data_and_security_group(full):
    _, settings = user_data(full)
    first = full.stack.parameters.callback_ports.first
    assert settings["callback_listen"] == f"0.0.0.0:{first}" == "0.0.0.0:8081"
    assert settings["workers"] == 4  # callbackPorts 8081-8084: worker i owns 8081 + i
    render = json.dumps(group_id(full, full.stack.network.render))
    (callback,) = [
        r for r in rules(full, "ingress") if json.dumps(r.get("SourceSecurityGroupId")) == render
    ]
    assert (callback["FromPort"], callback["ToPort"]) == (
        first,
        full.stack.parameters.callback_ports.last,
    )


def test_the_group_spans_two_private_subnets_with_elb_health_and_instance_refresh(full):
    _, group = full.one("AWS::AutoScaling::AutoScalingGroup")
    properties = group["Properties"]
    assert properties["VPCZoneIdentifier"] == PRIVATE_SUBNETS
    assert properties["HealthCheckType"] == "ELB"
    assert properties["HealthCheckGracePeriod"] == 120  # cdk/README.md's timeouts table
    assert (properties["MinSize"], properties["MaxSize"]) == ("3", "9")
    assert "DesiredCapacity" not in properties  # a deploy never resets what scaling chose
    assert properties["TargetGroupARNs"] == [ref(full, full.stack.edge.target_group)]
    template_id = logical_id(full, full.stack.fleet.launch_template)
    # A new AMI or user data is a new version, which starts the instance refresh.
    assert properties["LaunchTemplate"]["Version"] == {
        "Fn::GetAtt": [template_id, "LatestVersionNumber"]
    }
    refresh = group["UpdatePolicy"]["AutoScalingInstanceRefresh"]
    assert refresh["Strategy"] == "Rolling"
    assert refresh["Preferences"]["MinHealthyPercentage"] == 100
    assert {"Key": "sssrd", "Value": "true", "PropagateAtLaunch": True} in properties["Tags"]


def test_scaling_tracks_held_connections_per_instance_and_cpu(default):
    policies = [
        p["Properties"] for p in default.of_type("AWS::AutoScaling::ScalingPolicy").values()
    ]
    assert {p["PolicyType"] for p in policies} == {"TargetTrackingScaling"}
    configs = [p["TargetTrackingConfiguration"] for p in policies]
    cpu = [c for c in configs if "PredefinedMetricSpecification" in c]
    assert [c["PredefinedMetricSpecification"]["PredefinedMetricType"] for c in cpu] == [
        "ASGAverageCPUUtilization"
    ]
    (held,) = [c for c in configs if "CustomizedMetricSpecification" in c]
    assert held["TargetValue"] == 2000
    queries = {q["Id"]: q for q in held["CustomizedMetricSpecification"]["Metrics"]}
    assert queries["perInstance"]["Expression"] == "connections / instances"
    assert queries["perInstance"]["ReturnData"] is True
    connections = queries["connections"]["MetricStat"]
    assert connections["Metric"]["MetricName"] == "ActiveConnectionCount"
    assert connections["Metric"]["Namespace"] == "AWS/ApplicationELB"
    assert queries["instances"]["MetricStat"]["Metric"]["MetricName"] == "GroupInServiceInstances"
    _, group = default.one("AWS::AutoScaling::AutoScalingGroup")
    assert group["Properties"]["MetricsCollection"]  # else GroupInServiceInstances has no data


def test_scale_in_waits_for_at_least_the_drain_timeout(default, full):
    for synth, drain in ((default, 30), (full, 45)):
        _, group = synth.one("AWS::ElasticLoadBalancingV2::TargetGroup")
        attributes = {a["Key"]: a["Value"] for a in group["Properties"]["TargetGroupAttributes"]}
        assert int(attributes["deregistration_delay.timeout_seconds"]) >= drain
        assert attributes["load_balancing.algorithm.type"] == "least_outstanding_requests"


def test_the_health_check_lets_a_draining_instance_leave_quickly(variant):
    _, group = variant.one("AWS::ElasticLoadBalancingV2::TargetGroup")
    properties = group["Properties"]
    assert properties["HealthCheckPath"] == "/healthz"
    assert properties["Matcher"] == {"HttpCode": "200"}
    assert properties["Port"] == 8080
    # cdk/README.md: every 5 s, 2 failures, so a draining instance (503) leaves in ~10 s,
    # well within the deregistration delay (at least drain_timeout: 30 s by default, 45 in full).
    assert properties["HealthCheckIntervalSeconds"] == 5
    assert properties["UnhealthyThresholdCount"] == 2
    attributes = {a["Key"]: a["Value"] for a in properties["TargetGroupAttributes"]}
    assert int(attributes["deregistration_delay.timeout_seconds"]) >= 30 > 5 * 2
    assert properties["HealthCheckTimeoutSeconds"] < properties["HealthCheckIntervalSeconds"]


def test_alb_attributes_follow_sssrds_keepalive(default, full):
    for synth in (default, full):
        _, balancer = synth.one("AWS::ElasticLoadBalancingV2::LoadBalancer")
        properties = balancer["Properties"]
        attributes = {a["Key"]: a["Value"] for a in properties["LoadBalancerAttributes"]}
        settings = synth.stack.parameters.sssrd | {}
        keepalive = settings.get("keepalive_timeout", 75)
        assert int(attributes["idle_timeout.timeout_seconds"]) < keepalive
        assert int(attributes["idle_timeout.timeout_seconds"]) > 30  # callback and idle timeouts
        assert attributes["routing.http.desync_mitigation_mode"] == "strictest"
        assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
        assert attributes["access_logs.s3.enabled"] == "true"
        assert attributes["access_logs.s3.bucket"] == ref(synth, synth.stack.log_bucket)
        assert properties["Scheme"] == "internet-facing"
    _, balancer = full.one("AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert balancer["Properties"]["Subnets"] == PUBLIC_SUBNETS


def secret_reference(synth: Synthesized) -> dict[str, Any]:
    secret = logical_id(synth, synth.stack.edge.origin_secret)
    return {"Fn::Join": ["", ["{{resolve:secretsmanager:", {"Ref": secret}, ":SecretString:::}}"]]}


def test_the_listener_forwards_only_requests_with_the_secret_header(default, full):
    for synth, protocol, port in ((default, "HTTP", 80), (full, "HTTPS", 443)):
        _, listener = synth.one("AWS::ElasticLoadBalancingV2::Listener")
        properties = listener["Properties"]
        assert (properties["Protocol"], properties["Port"]) == (protocol, port)
        (default_action,) = properties["DefaultActions"]
        assert default_action["Type"] == "fixed-response"
        assert default_action["FixedResponseConfig"]["StatusCode"] == "403"
        _, rule = synth.one("AWS::ElasticLoadBalancingV2::ListenerRule")
        (condition,) = rule["Properties"]["Conditions"]
        assert condition == {
            "Field": "http-header",
            "HttpHeaderConfig": {
                "HttpHeaderName": ORIGIN_HEADER,
                "Values": [secret_reference(synth)],
            },
        }
        assert rule["Properties"]["Actions"] == [
            {"Type": "forward", "TargetGroupArn": ref(synth, synth.stack.edge.target_group)}
        ]
    _, listener = full.one("AWS::ElasticLoadBalancingV2::Listener")
    assert listener["Properties"]["Certificates"] == [{"CertificateArn": ORIGIN_CERT}]


def test_a_new_secret_generation_is_a_new_secret(default, full):
    # full deploys generation 2: another logical id, so CloudFormation replaces the secret, and
    # the listener and CloudFront tests above show both references follow it.
    assert logical_id(full, full.stack.edge.origin_secret) != logical_id(
        default, default.stack.edge.origin_secret
    )


def test_the_origin_secret_is_generated_never_written_in_the_template(variant):
    _, secret = variant.one("AWS::SecretsManager::Secret")
    assert "SecretString" not in secret["Properties"]
    assert secret["Properties"]["GenerateSecretString"]["PasswordLength"] >= 32


def distribution(synth: Synthesized) -> dict[str, Any]:
    _, resource = synth.one("AWS::CloudFront::Distribution")
    return resource["Properties"]["DistributionConfig"]


def test_cloudfront_streams_uncached_and_uncompressed_with_the_secret_header(default, full):
    for synth in (default, full):
        config = distribution(synth)
        behaviour = config["DefaultCacheBehavior"]
        assert behaviour["CachePolicyId"] == cloudfront.CachePolicy.CACHING_DISABLED.cache_policy_id
        assert behaviour["OriginRequestPolicyId"] == (
            cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER.origin_request_policy_id
        )
        assert behaviour["Compress"] is False
        assert behaviour["ViewerProtocolPolicy"] == "redirect-to-https"
        assert config["HttpVersion"] == "http2and3"
        (origin,) = config["Origins"]
        custom = origin["CustomOriginConfig"]
        assert custom["OriginReadTimeout"] == 60
        assert custom["OriginKeepaliveTimeout"] < synth.stack.timings.alb_idle_timeout_s
        assert origin["OriginCustomHeaders"] == [
            {"HeaderName": ORIGIN_HEADER, "HeaderValue": secret_reference(synth)}
        ]
        assert config["Logging"]["Bucket"] == {
            "Fn::GetAtt": [logical_id(synth, synth.stack.log_bucket), "RegionalDomainName"]
        }
    assert (
        distribution(default)["Origins"][0]["CustomOriginConfig"]["OriginProtocolPolicy"]
        == "http-only"
    )
    origin = distribution(full)["Origins"][0]
    assert origin["CustomOriginConfig"]["OriginProtocolPolicy"] == "https-only"
    assert origin["CustomOriginConfig"]["OriginSSLProtocols"] == ["TLSv1.2"]
    assert origin["DomainName"] == "origin.example.com"
    assert distribution(full)["Aliases"] == ["www.example.com"]
    assert distribution(full)["ViewerCertificate"]["AcmCertificateArn"] == VIEWER_CERT
    assert distribution(full)["ViewerCertificate"]["MinimumProtocolVersion"] == "TLSv1.2_2021"


def test_every_response_gets_security_headers(variant):
    _, policy = variant.one("AWS::CloudFront::ResponseHeadersPolicy")
    headers = policy["Properties"]["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"]
    assert headers["StrictTransportSecurity"]["AccessControlMaxAgeSec"] >= 31_536_000
    assert headers["ContentTypeOptions"]["Override"] is True
    assert headers["FrameOptions"]["FrameOption"] == "DENY"
    assert headers["ReferrerPolicy"]["ReferrerPolicy"] == "strict-origin-when-cross-origin"
    assert distribution(variant)["DefaultCacheBehavior"]["ResponseHeadersPolicyId"] == {
        "Ref": next(iter(variant.of_type("AWS::CloudFront::ResponseHeadersPolicy")))
    }


def test_the_log_bucket_is_private_encrypted_and_tls_only(variant):
    bucket = variant.resources[logical_id(variant, variant.stack.log_bucket)]["Properties"]
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (encryption,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    variant.template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        )
                    ]
                )
            }
        },
    )


def test_access_logs_expire_after_a_year_unless_the_context_says_otherwise(default, full):
    for variant, days in ((default, 365), (full, 90)):
        bucket = variant.resources[logical_id(variant, variant.stack.log_bucket)]["Properties"]
        assert bucket["LifecycleConfiguration"]["Rules"] == [
            {
                "Id": "ExpireAccessLogs",
                "Status": "Enabled",
                "ExpirationInDays": days,
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
            }
        ]


def test_checkov_findings_the_stack_accepts_are_recorded_with_their_reasons(variant):
    accepted = {
        (resource["Type"], skip["id"]): skip["comment"]
        for resource in variant.resources.values()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    }
    assert set(accepted) == {
        ("AWS::Lambda::Function", "CKV_AWS_116"),  # no dead-letter queue
        ("AWS::Logs::LogGroup", "CKV_AWS_158"),  # AWS managed encryption
        ("AWS::SecretsManager::Secret", "CKV_AWS_149"),  # AWS managed key
    }
    assert all(len(reason) >= 60 for reason in accepted.values())


def test_outputs_name_the_entry_points_and_a_scrape_config_matching_the_tag(default, full):
    outputs = default.json["Outputs"]
    for name in (
        "CloudFrontDomain",
        "AlbDnsName",
        "FunctionName",
        "AliasName",
        "PrometheusScrapeConfig",
    ):
        assert name in outputs, name
    assert outputs["AliasName"]["Value"] == "live"
    scrape = json.loads(outputs["PrometheusScrapeConfig"]["Value"])
    (entry,) = scrape["ec2_sd_configs"]
    assert (entry["region"], entry["port"]) == (REGION, 9090)
    (tag_filter,) = [f for f in entry["filters"] if f["name"].startswith("tag:")]
    _, group = default.one("AWS::AutoScaling::AutoScalingGroup")
    tags = {t["Key"]: t["Value"] for t in group["Properties"]["Tags"] if t["PropagateAtLaunch"]}
    assert tags[tag_filter["name"].removeprefix("tag:")] in tag_filter["values"]
    assert "PrometheusSecurityGroupId" in full.json["Outputs"]
    assert "PrometheusSecurityGroupId" not in outputs


def test_vpc_lookup_uses_the_supplied_context_not_a_dummy_vpc(full, default):
    # Without an answer in the context, Vpc.from_lookup quietly builds a dummy VPC and lists the
    # lookup as missing; with it, the subnets are the context's and nothing is missing.
    assert "missing" not in full.manifest and "missing" not in default.manifest
    assert {g["Properties"]["VpcId"] for g in full.of_type("AWS::EC2::SecurityGroup").values()} == {
        LOOKUP_VPC
    }
    assert not full.of_type("AWS::EC2::VPC")
    default.one("AWS::EC2::VPC")
    azs = {
        s["Properties"]["AvailabilityZone"] for s in default.of_type("AWS::EC2::Subnet").values()
    }
    assert azs == {"eu-west-1a", "eu-west-1b"}  # cdk.context.json's zones, not dummy1a/dummy1b
    assert default.of_type("AWS::EC2::FlowLog")
    assert full.stack.account == ACCOUNT
    assert CLOUDFRONT_PREFIX_LIST == "com.amazonaws.global.cloudfront.origin-facing"


def test_a_vpc_missing_from_the_context_is_reported_missing():
    # The guard the test above relies on: an unanswered lookup leaves a "missing" entry.
    unknown = synthesize(vpcId="vpc-0fffffffffffffff0")
    assert [m["provider"] for m in unknown.manifest["missing"]] == ["vpc-provider"]


def test_a_vpc_without_two_private_zones_is_refused_naming_vpc_id():
    key = f"vpc-provider:account={ACCOUNT}:filter.vpc-id={LOOKUP_VPC}:region={REGION}"
    key += ":returnAsymmetricSubnets=true"
    answer = json.loads(json.dumps(cdk_context()[key]))
    private = next(group for group in answer["subnetGroups"] if group["type"] == "Private")
    private["subnets"] = private["subnets"][:1]
    with pytest.raises(ParameterError, match=r"context vpcId: .* private subnets with egress in"):
        build_app(cdk_context(vpcId=LOOKUP_VPC, **{key: answer}), ACCOUNT, REGION)
