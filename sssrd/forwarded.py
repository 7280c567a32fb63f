"""The viewer's address behind trusted proxies (ALB, CloudFront), from X-Forwarded-For.

X-Forwarded-For is a list each proxy appends its peer to, so only its right end is trustworthy:
starting from the connection's peer, walk right to left while the hop is a trusted proxy; the
first untrusted address is the client. A peer that is not trusted gets no say at all (anyone can
send the header), and a malformed entry stops the walk at the last address known good.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_trusted(address: str, trusted: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(peer: str, forwarded_for: list[bytes], trusted: tuple[Network, ...]) -> str:
    """The client's address: `peer`, or the last untrusted hop of X-Forwarded-For."""
    if not trusted or not forwarded_for or not is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.decode("latin-1").split(",")]
    client = peer
    for hop in reversed(hops):
        try:
            client = str(ipaddress.ip_address(hop))
        except ValueError:
            break
        if not is_trusted(client, trusted):
            break
    return client
