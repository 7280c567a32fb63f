"""The deployment's parameters: CDK context values, validated once, with errors naming the key.

`FleetParameters.from_context(get)` reads every key the app understands (`get` is
`node.try_get_context`), parses it (context from `-c key=value` arrives as a string, from
cdk.json as JSON), and checks the rules that span keys. The sssrd settings that differ per
deployment (context `sssrd`, an object) are validated by sssrd's own config loader together with
the settings the stack owns, so a value the daemon would refuse fails `cdk synth`, not a boot.
The derived timings (ALB, CloudFront, target group) live in `timings.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sssrd import config as sssrd_config


class ParameterError(ValueError):
    """A context value is invalid; str() names the key and says what to pass instead."""


# The settings the stack writes into /etc/sssrd/sssrd.toml itself (user data); context `sssrd`
# may not set them, since the stack's security groups, IAM policy and scrape config follow them.
STACK_OWNED_SETTINGS = frozenset(
    {
        "invoker",
        "function",
        "qualifier",
        "region",
        "endpoint_url",
        "callback_url",
        "callback_listen",
        "listen",
        "admin_listen",
        "handler",
        "local_workers",
        "imds_endpoint",
        "compat",
        "workers",
        "invocation_type",
        "function_timeout",
    }
)
ALIAS_NAME = "live"
# The render function's timeout: sssrd's function_timeout, so that a RequestResponse invoke waits
# for the function's answer exactly as long as it may run (plus invoke_timeout).
RENDER_TIMEOUT_S = 300
# A stand-in for the function ARN while validating (the real ARN is a deploy-time token).
FUNCTION_PLACEHOLDER = "arn:aws:lambda:region:000000000000:function:render"
NODE_EXPORTER_PORT = 9100  # the AMI's prometheus-node-exporter

AMI_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")
SSM_PARAMETER = re.compile(r"^/[A-Za-z0-9_.\-/]+$")
VPC_ID = re.compile(r"^vpc-[0-9a-f]{8,17}$")
ACCOUNT = re.compile(r"^[0-9]{12}$")
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]$")
ACM_ARN = re.compile(r"^arn:aws[a-z-]*:acm:([a-z0-9-]+):[0-9]{12}:certificate/[0-9a-f-]+$")
DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
# The retention periods CloudWatch Logs accepts, with their names in aws_logs.RetentionDays.
RETENTION_DAYS = {
    1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS",
    30: "ONE_MONTH", 60: "TWO_MONTHS", 90: "THREE_MONTHS", 120: "FOUR_MONTHS",
    150: "FIVE_MONTHS", 180: "SIX_MONTHS", 365: "ONE_YEAR", 400: "THIRTEEN_MONTHS",
    545: "EIGHTEEN_MONTHS", 731: "TWO_YEARS", 1096: "THREE_YEARS", 1827: "FIVE_YEARS",
    3653: "TEN_YEARS",
}  # fmt: skip


def default_port(setting: str) -> int:
    """The port of one of sssrd's default listen addresses (the AMI runs sssrd's defaults)."""
    return sssrd_config.parse_address(sssrd_config.FIELDS_BY_NAME[setting].default).port


@dataclass(frozen=True, slots=True)
class PortRange:
    """The callback port, or the range of them when sssrd runs one callback listener a worker."""

    first: int
    last: int

    @classmethod
    def parse(cls, value: Any) -> PortRange:
        text = str(value).strip()
        match = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", text)
        if not match:
            raise ValueError(f"expected PORT or FIRST-LAST, got {value!r}")
        first, last = int(match[1]), int(match[2] or match[1])
        if not 1024 <= first <= last <= 65535:
            raise ValueError(f"expected ports 1024..65535, FIRST <= LAST, got {text!r}")
        return cls(first, last)

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    @property
    def count(self) -> int:
        return self.last - self.first + 1


def parse_int(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not re.fullmatch(r"-?[0-9]+", str(value).strip()):
            raise ValueError(f"expected an integer, got {value!r}")
        number = int(str(value).strip())
        if not low <= number <= high:
            raise ValueError(f"expected {low}..{high}, got {number}")
        return number

    return parse


def parse_retention(value: Any) -> int:
    days = parse_int(1, 3653)(value)
    if days not in RETENTION_DAYS:
        raise ValueError(f"expected one of {', '.join(map(str, RETENTION_DAYS))}, got {days}")
    return days


def parse_bool(value: Any) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise ValueError(f"expected true or false, got {value!r}")
    return text == "true"


def parse_pattern(pattern: re.Pattern[str], what: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip()
        if not pattern.fullmatch(text):
            raise ValueError(f"expected {what}, got {value!r}")
        return text

    return parse


def parse_object(value: Any) -> dict[str, Any]:
    """A JSON object: from cdk.json as is, from `-c sssrd='{...}'` as text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected a JSON object, got {value!r} ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class FleetParameters:
    """Everything one deployment may choose. Defaults are the README's."""

    account: str
    region: str
    ami: str
    instance_type: str = "c7i.large"
    root_volume_gib: int = 8
    min_capacity: int = 2
    max_capacity: int = 6
    desired_capacity: int | None = None
    vpc_id: str | None = None
    nat_gateways: int = 2
    domain_name: str | None = None
    certificate_arn: str | None = None
    origin_domain_name: str | None = None
    origin_certificate_arn: str | None = None
    reserved_concurrency: int | None = None
    log_retention_days: int = 30
    access_log_expiry_days: int = 365
    prometheus: bool = False
    # One port per sssrd worker: two for the default instance type's two vCPUs.
    callback_ports: PortRange = field(
        default_factory=lambda: PortRange.parse(
            f"{default_port('callback_listen')}-{int(default_port('callback_listen')) + 1}"
        )
    )
    target_connections_per_instance: int = 2000
    origin_secret_generation: int = 1
    # A render that fails is answered in milliseconds instead of callback_timeout (30 s) later,
    # for one connection to the Invoke API per render in flight (bench/RESULTS.md).
    invocation_type: str = "RequestResponse"
    sssrd: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ami_is_ssm_parameter(self) -> bool:
        return self.ami.startswith("/")

    @property
    def origin_uses_https(self) -> bool:
        return self.origin_certificate_arn is not None

    @classmethod
    def from_context(
        cls, get: Callable[[str], Any], default_account: str | None, default_region: str | None
    ) -> FleetParameters:
        values: dict[str, Any] = {}
        for key, name, parse in CONTEXT_KEYS:
            raw = get(key)
            if raw is None or raw == "":
                continue
            try:
                values[name] = parse(raw)
            except (TypeError, ValueError) as exc:
                raise ParameterError(f"context {key}: {exc}") from None
        for key, name, fallback in (
            ("account", "account", default_account),
            ("region", "region", default_region),
        ):
            if name not in values:
                if not fallback:
                    raise ParameterError(
                        f"context {key}: required (pass -c {key}=..., or configure AWS "
                        "credentials so the CDK CLI sets CDK_DEFAULT_ACCOUNT/CDK_DEFAULT_REGION)"
                    )
                values[name] = CONTEXT_PARSERS[key](fallback)
        if "ami" not in values:
            raise ParameterError(
                "context ami: required: the sssrd AMI's id (-c ami=ami-0123456789abcdef0) or the "
                "name of an SSM parameter holding it (-c ami=/sssrd/ami)"
            )
        parameters = cls(**values)
        parameters.check()
        return parameters

    def check(self) -> None:
        """Rules that span keys; each error names the key to change."""
        desired = self.desired_capacity
        if self.min_capacity > self.max_capacity:
            raise ParameterError(
                f"context minCapacity: {self.min_capacity} exceeds maxCapacity {self.max_capacity}"
            )
        if desired is not None and not self.min_capacity <= desired <= self.max_capacity:
            raise ParameterError(
                f"context desiredCapacity: {desired} is outside minCapacity..maxCapacity "
                f"({self.min_capacity}..{self.max_capacity})"
            )
        pairs = (
            ("domainName", self.domain_name, "certificateArn", self.certificate_arn, "us-east-1"),
            (
                "originDomainName",
                self.origin_domain_name,
                "originCertificateArn",
                self.origin_certificate_arn,
                self.region,
            ),
        )
        for name_key, name, cert_key, cert, cert_region in pairs:
            if (name is None) != (cert is None):
                raise ParameterError(
                    f"context {cert_key if cert is None else name_key}: required together with "
                    f"{name_key if cert is None else cert_key}"
                )
            region = ACM_ARN.fullmatch(cert).group(1) if cert else cert_region
            if region != cert_region:
                raise ParameterError(
                    f"context {cert_key}: the certificate must be in {cert_region} "
                    f"(it is in {region})"
                )
        if self.origin_domain_name is not None and self.domain_name is None:
            raise ParameterError(
                "context domainName: required with originDomainName (the viewers' name)"
            )
        sssrd_settings(self)

    def stack_settings(self, function_arn: str) -> dict[str, Any]:
        """The settings the stack owns, as written to the instances' sssrd.toml."""
        settings: dict[str, Any] = {
            "invoker": "lambda",
            "function": function_arn,
            "qualifier": ALIAS_NAME,
            "region": self.region,
            "callback_url": "auto",
            "callback_listen": f"0.0.0.0:{self.callback_ports.first}",
            # Worker i listens on the first port + i: exactly the range the Lambda may reach.
            "workers": self.callback_ports.count,
            "invocation_type": self.invocation_type,
            "function_timeout": RENDER_TIMEOUT_S,
        }
        if self.prometheus:
            settings["admin_listen"] = f"0.0.0.0:{default_port('admin_listen')}"
        return settings


def sssrd_settings(parameters: FleetParameters) -> sssrd_config.Settings:
    """The instances' effective sssrd settings, validated by sssrd itself."""
    unknown = sorted(set(parameters.sssrd) - set(sssrd_config.FIELDS_BY_NAME))
    if unknown:
        raise ParameterError(
            f"context sssrd.{unknown[0]}: unknown setting (sssrd's settings: README.md)"
        )
    owned = sorted(STACK_OWNED_SETTINGS & set(parameters.sssrd))
    if owned:
        raise ParameterError(
            f"context sssrd.{owned[0]}: set by the stack (its security groups, IAM policy and "
            "scrape config follow it); see cdk/README.md for the parameter that changes it"
        )
    flags = {**parameters.stack_settings(FUNCTION_PLACEHOLDER), **parameters.sssrd}
    try:
        return sssrd_config.load_settings(path=None, environ={}, flags=flags)
    except sssrd_config.ConfigError as exc:
        # sssrd names where a value came from (a flag, here); the context key is what to change.
        raise ParameterError(re.sub(r" \(from [^()]*\)$", "", f"context sssrd.{exc}")) from None


# (context key, FleetParameters field, parser). Keys are camelCase, as CDK's own are.
CONTEXT_KEYS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("account", "account", parse_pattern(ACCOUNT, "a 12-digit AWS account id")),
    ("region", "region", parse_pattern(REGION, "an AWS region such as eu-west-1")),
    (
        "ami",
        "ami",
        lambda value: (
            parse_pattern(AMI_ID, "an AMI id (ami-…) or an SSM parameter name (/…)")(value)
            if not str(value).startswith("/")
            else parse_pattern(SSM_PARAMETER, "an SSM parameter name such as /sssrd/ami")(value)
        ),
    ),
    ("instanceType", "instance_type", parse_pattern(INSTANCE_TYPE, "an instance type")),
    ("rootVolumeGiB", "root_volume_gib", parse_int(8, 1024)),
    ("minCapacity", "min_capacity", parse_int(1, 1000)),
    ("maxCapacity", "max_capacity", parse_int(1, 1000)),
    ("desiredCapacity", "desired_capacity", parse_int(1, 1000)),
    ("vpcId", "vpc_id", parse_pattern(VPC_ID, "a VPC id (vpc-…)")),
    ("natGateways", "nat_gateways", parse_int(1, 2)),
    ("domainName", "domain_name", parse_pattern(DOMAIN, "a lower-case DNS name")),
    ("certificateArn", "certificate_arn", parse_pattern(ACM_ARN, "an ACM certificate ARN")),
    ("originDomainName", "origin_domain_name", parse_pattern(DOMAIN, "a lower-case DNS name")),
    (
        "originCertificateArn",
        "origin_certificate_arn",
        parse_pattern(ACM_ARN, "an ACM certificate ARN"),
    ),
    ("reservedConcurrency", "reserved_concurrency", parse_int(1, 100_000)),
    ("logRetentionDays", "log_retention_days", parse_retention),
    ("accessLogExpiryDays", "access_log_expiry_days", parse_int(1, 3653)),
    ("prometheus", "prometheus", parse_bool),
    ("callbackPorts", "callback_ports", PortRange.parse),
    ("targetConnectionsPerInstance", "target_connections_per_instance", parse_int(10, 1_000_000)),
    ("originSecretGeneration", "origin_secret_generation", parse_int(1, 1_000_000)),
    ("invocationType", "invocation_type", sssrd_config.parse_invocation_type),
    ("sssrd", "sssrd", parse_object),
)
CONTEXT_PARSERS = {key: parse for key, _, parse in CONTEXT_KEYS}
