"""EC2 instance discovery over IMDSv2: the private IPv4 (callback_url = "auto") and the region.

The callback must reach the instance that holds the viewer's connection, so the advertised URL
names the instance itself, never the ALB; and botocore never asks the instance for its region,
so sssrd does when nothing else names one. IMDSv2 only: a session token from PUT
/latest/api/token, then GET /latest/meta-data/<path> with it. Each lookup runs once at startup;
any failure is an error that stops startup, because a wrong address or region would make every
render fail.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import re
from urllib.parse import urlsplit

DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_SECONDS = "60"
REGION_NAME = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")


class DiscoveryError(ValueError):
    """The instance metadata service could not tell what was asked."""


def imds_endpoint(configured: str) -> str:
    return (
        configured or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_IMDS_ENDPOINT
    ).rstrip("/")


def private_ipv4(endpoint: str, timeout: float = 2.0) -> str:
    """The instance's primary private IPv4, via IMDSv2 at `endpoint`."""
    address = metadata(endpoint, "local-ipv4", timeout)
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        raise DiscoveryError(
            f"instance metadata gave {address[:40]!r}, not an IPv4 address"
        ) from None


def region(endpoint: str, timeout: float = 2.0) -> str:
    """The instance's AWS region (such as eu-west-1), via IMDSv2 at `endpoint`."""
    name = metadata(endpoint, "placement/region", timeout)
    if not REGION_NAME.match(name):
        raise DiscoveryError(f"instance metadata gave {name[:40]!r}, not a region name")
    return name


def metadata(endpoint: str, path: str, timeout: float) -> str:
    """One value under /latest/meta-data/, fetched with a fresh IMDSv2 session token."""
    parts = urlsplit(endpoint)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        token = fetch(
            conn,
            "PUT",
            "/latest/api/token",
            {"X-aws-ec2-metadata-token-ttl-seconds": TOKEN_TTL_SECONDS},
        )
        return fetch(conn, "GET", f"/latest/meta-data/{path}", {"X-aws-ec2-metadata-token": token})
    except (OSError, http.client.HTTPException) as exc:
        raise DiscoveryError(
            f"cannot reach the instance metadata service at {endpoint}: {exc}"
        ) from None
    finally:
        conn.close()


def fetch(conn: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str]) -> str:
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    body = response.read(4096).decode("ascii", "replace").strip()
    if response.status != 200:
        raise DiscoveryError(f"instance metadata {method} {path} answered {response.status}")
    return body
