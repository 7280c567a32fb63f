"""The edge: CloudFront in front, the ALB behind it, and the secret header that binds the two.

The ALB is internet-facing but admits only CloudFront's origin-facing addresses (network.py),
and its listener forwards only requests carrying the origin header whose value is a Secrets
Manager secret (CloudFormation resolves it at deploy time: the template holds a reference, not
the value); anything else gets 403. CloudFront does no caching and forwards every viewer header
but Host; it does not compress, because compressing holds a streamed body back until a
compression block fills, which is exactly the first paint sssrd exists to deliver early (a
renderer that wants compression flushes its own gzip stream per chunk). The target group routes
to the instance with the fewest outstanding requests, since a held stream is one.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from cdk_nag import NagSuppressions
from constructs import Construct

from .exceptions import accept
from .network import PUBLIC, Network, listener_port
from .parameters import FleetParameters
from .timings import Timings

ORIGIN_HEADER = "X-Sssrd-Origin-Verify"
HSTS_MAX_AGE = Duration.days(365)


class Edge(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        parameters: FleetParameters,
        network: Network,
        timings: Timings,
        log_bucket: s3.IBucket,
    ) -> None:
        super().__init__(scope, id)
        # A new generation is a new secret, so CloudFormation updates both places that use it.
        generation = parameters.origin_secret_generation
        self.origin_secret = secretsmanager.Secret(
            self,
            "OriginSecret" if generation == 1 else f"OriginSecret{generation}",
            description=f"value of the {ORIGIN_HEADER} header CloudFront adds for the sssrd ALB",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=48, exclude_punctuation=True
            ),
        )
        NagSuppressions.add_resource_suppressions(
            self.origin_secret,
            [
                {
                    "id": "AwsSolutions-SMG4",
                    "reason": "The value lives in two AWS configurations (CloudFront's origin "
                    "header and the ALB rule) that CloudFormation fills at deploy time, so a "
                    "rotation Lambda could not update them; rotate with a new "
                    "originSecretGeneration (cdk/README.md).",
                }
            ],
        )
        accept(
            self.origin_secret,
            "CKV_AWS_149",
            "The AWS managed key (aws/secretsmanager) is enough: the value is also held, "
            "resolved, in CloudFront's origin header and the ALB listener rule, which anyone "
            "allowed to describe them can read; a customer managed key would guard the least "
            "exposed copy only, and adds a key policy that could block the deploy's resolve.",
        )
        secret_value = self.origin_secret.secret_value.unsafe_unwrap()
        self.target_group = self._target_group(network, timings)
        self.load_balancer = self._load_balancer(network, timings, log_bucket)
        listener = self._listener(parameters)
        listener.add_action(
            "FromCloudFront",
            priority=1,
            conditions=[elbv2.ListenerCondition.http_header(ORIGIN_HEADER, [secret_value])],
            action=elbv2.ListenerAction.forward([self.target_group]),
        )
        self.distribution = self._distribution(parameters, timings, log_bucket, secret_value)

    def _target_group(self, network: Network, timings: Timings) -> elbv2.ApplicationTargetGroup:
        return elbv2.ApplicationTargetGroup(
            self,
            "Instances",
            vpc=network.vpc,
            port=network.viewer_port,
            protocol=elbv2.ApplicationProtocol.HTTP,
            target_type=elbv2.TargetType.INSTANCE,
            deregistration_delay=Duration.seconds(timings.deregistration_delay_s),
            load_balancing_algorithm_type=elbv2.TargetGroupLoadBalancingAlgorithmType.LEAST_OUTSTANDING_REQUESTS,
            health_check=elbv2.HealthCheck(
                path="/healthz",
                healthy_http_codes="200",
                interval=Duration.seconds(timings.health_interval_s),
                timeout=Duration.seconds(timings.health_timeout_s),
                healthy_threshold_count=timings.healthy_threshold,
                unhealthy_threshold_count=timings.unhealthy_threshold,
            ),
        )

    def _load_balancer(
        self, network: Network, timings: Timings, log_bucket: s3.IBucket
    ) -> elbv2.ApplicationLoadBalancer:
        load_balancer = elbv2.ApplicationLoadBalancer(
            self,
            "LoadBalancer",
            vpc=network.vpc,
            vpc_subnets=PUBLIC,
            internet_facing=True,
            security_group=network.alb,
            idle_timeout=Duration.seconds(timings.alb_idle_timeout_s),
            desync_mitigation_mode=elbv2.DesyncMitigationMode.STRICTEST,
            drop_invalid_header_fields=True,
        )
        load_balancer.log_access_logs(log_bucket, "alb")
        return load_balancer

    def _listener(self, parameters: FleetParameters) -> elbv2.ApplicationListener:
        forbidden = elbv2.ListenerAction.fixed_response(
            403, content_type="text/plain", message_body="forbidden\n"
        )
        if parameters.origin_certificate_arn is None:
            return self.load_balancer.add_listener(
                "Http",
                port=listener_port(parameters),
                protocol=elbv2.ApplicationProtocol.HTTP,
                open=False,
                default_action=forbidden,
            )
        return self.load_balancer.add_listener(
            "Https",
            port=listener_port(parameters),
            protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[elbv2.ListenerCertificate(parameters.origin_certificate_arn)],
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            open=False,
            default_action=forbidden,
        )

    def _distribution(
        self,
        parameters: FleetParameters,
        timings: Timings,
        log_bucket: s3.IBucket,
        secret_value: str,
    ) -> cloudfront.Distribution:
        https = parameters.origin_uses_https
        origin = origins.HttpOrigin(
            parameters.origin_domain_name or self.load_balancer.load_balancer_dns_name,
            protocol_policy=(
                cloudfront.OriginProtocolPolicy.HTTPS_ONLY
                if https
                else cloudfront.OriginProtocolPolicy.HTTP_ONLY
            ),
            origin_ssl_protocols=[cloudfront.OriginSslPolicy.TLS_V1_2],
            read_timeout=Duration.seconds(timings.origin_read_timeout_s),
            keepalive_timeout=Duration.seconds(timings.origin_keepalive_s),
            custom_headers={ORIGIN_HEADER: secret_value},
        )
        certificate = (
            acm.Certificate.from_certificate_arn(self, "Certificate", parameters.certificate_arn)
            if parameters.certificate_arn
            else None
        )
        distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment="sssrd: streamed server-side rendering",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origin,
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
                cache_policy=cloudfront.CachePolicy.CACHING_DISABLED,
                origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
                response_headers_policy=self._security_headers(),
                compress=False,
            ),
            http_version=cloudfront.HttpVersion.HTTP2_AND_3,
            domain_names=[parameters.domain_name] if parameters.domain_name else None,
            certificate=certificate,
            minimum_protocol_version=(
                cloudfront.SecurityPolicyProtocol.TLS_V1_2_2021 if certificate else None
            ),
            enable_logging=True,
            log_bucket=log_bucket,
            log_file_prefix="cloudfront/",
        )
        suppressions = [
            {
                "id": "AwsSolutions-CFR1",
                "reason": "sssrd serves whoever the application serves; geo restriction is an "
                "application decision, not the fleet's.",
            },
            {
                "id": "AwsSolutions-CFR2",
                "reason": "A WAF web ACL is priced per request and tuned per application; attach "
                "one (web_acl_id) when the application needs it. The origin accepts CloudFront "
                "only, so a web ACL here cannot be bypassed.",
            },
        ]
        if certificate is None:
            suppressions.append(
                {
                    "id": "AwsSolutions-CFR4",
                    "reason": "Without domainName the distribution uses the *.cloudfront.net "
                    "certificate, whose TLS policy CloudFront fixes; with domainName and "
                    "certificateArn the minimum is TLSv1.2_2021.",
                }
            )
        if not https:
            suppressions.append(
                {
                    "id": "AwsSolutions-CFR5",
                    "reason": "Without originCertificateArn, CloudFront reaches the ALB over HTTP "
                    "(the ALB has no certificate for its own name); the leg is authenticated by "
                    "the secret origin header and limited to CloudFront's addresses. Pass "
                    "originDomainName and originCertificateArn for HTTPS to the origin.",
                }
            )
        NagSuppressions.add_resource_suppressions(distribution, suppressions)
        return distribution

    def _security_headers(self) -> cloudfront.ResponseHeadersPolicy:
        return cloudfront.ResponseHeadersPolicy(
            self,
            "SecurityHeaders",
            comment="sssrd: security headers on every response",
            security_headers_behavior=cloudfront.ResponseSecurityHeadersBehavior(
                strict_transport_security=cloudfront.ResponseHeadersStrictTransportSecurity(
                    access_control_max_age=HSTS_MAX_AGE, include_subdomains=True, override=True
                ),
                content_type_options=cloudfront.ResponseHeadersContentTypeOptions(override=True),
                frame_options=cloudfront.ResponseHeadersFrameOptions(
                    frame_option=cloudfront.HeadersFrameOption.DENY, override=False
                ),
                referrer_policy=cloudfront.ResponseHeadersReferrerPolicy(
                    referrer_policy=cloudfront.HeadersReferrerPolicy.STRICT_ORIGIN_WHEN_CROSS_ORIGIN,
                    override=False,
                ),
                xss_protection=cloudfront.ResponseHeadersXSSProtection(
                    protection=True, mode_block=True, override=False
                ),
            ),
        )
