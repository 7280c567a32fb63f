"""EC2 instance discovery: this instance's private IPv4, from IMDSv2, for callback_url = "auto".

The callback must reach the instance that holds the viewer's connection, so the advertised URL
names the instance itself, never the ALB. IMDSv2 only: a session token from PUT
/latest/api/token, then GET /latest/meta-data/local-ipv4 with it. Runs once at startup; any
failure is an error that stops startup, because advertising a wrong address would make every
render time out.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
from urllib.parse import urlsplit

DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_SECONDS = "60"


class DiscoveryError(ValueError):
    """The instance's private address could not be learnt."""


def imds_endpoint(configured: str) -> str:
    return (
        configured or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_IMDS_ENDPOINT
    ).rstrip("/")


def private_ipv4(endpoint: str, timeout: float = 2.0) -> str:
    """The instance's primary private IPv4, via IMDSv2 at `endpoint`."""
    parts = urlsplit(endpoint)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    try:
        token = fetch(
            conn,
            "PUT",
            "/latest/api/token",
            {"X-aws-ec2-metadata-token-ttl-seconds": TOKEN_TTL_SECONDS},
        )
        address = fetch(
            conn, "GET", "/latest/meta-data/local-ipv4", {"X-aws-ec2-metadata-token": token}
        )
    except (OSError, http.client.HTTPException) as exc:
        raise DiscoveryError(
            f"cannot reach the instance metadata service at {endpoint}: {exc}"
        ) from None
    finally:
        conn.close()
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        raise DiscoveryError(
            f"instance metadata gave {address[:40]!r}, not an IPv4 address"
        ) from None


def fetch(conn: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str]) -> str:
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    body = response.read(4096).decode("ascii", "replace").strip()
    if response.status != 200:
        raise DiscoveryError(f"instance metadata {method} {path} answered {response.status}")
    return body
