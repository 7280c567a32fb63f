"""Client addresses behind trusted proxies."""

from __future__ import annotations

import ipaddress

from sssrd.forwarded import client_address

ALB = (ipaddress.ip_network("10.0.0.0/16"),)
ALB_AND_CLOUDFRONT = (*ALB, ipaddress.ip_network("130.176.0.0/16"))


def test_untrusted_peer_cannot_claim_another_address():
    assert client_address("198.51.100.7", [b"1.2.3.4"], ALB) == "198.51.100.7"


def test_no_trusted_proxies_means_the_peer():
    assert client_address("10.0.1.5", [b"1.2.3.4"], ()) == "10.0.1.5"


def test_behind_the_alb_the_client_is_the_last_hop():
    assert client_address("10.0.1.5", [b"203.0.113.9"], ALB) == "203.0.113.9"


def test_spoofed_left_entries_are_ignored():
    header = [b"6.6.6.6, 203.0.113.9"]
    assert client_address("10.0.1.5", header, ALB) == "203.0.113.9"


def test_cloudfront_hops_are_skipped_when_trusted():
    header = [b"203.0.113.9, 130.176.4.4"]
    assert client_address("10.0.1.5", header, ALB_AND_CLOUDFRONT) == "203.0.113.9"
    assert client_address("10.0.1.5", header, ALB) == "130.176.4.4"


def test_repeated_headers_are_one_list():
    header = [b"203.0.113.9", b"130.176.4.4"]
    assert client_address("10.0.1.5", header, ALB_AND_CLOUDFRONT) == "203.0.113.9"


def test_garbage_stops_the_walk_at_the_last_good_hop():
    header = [b"203.0.113.9, not-an-ip, 10.0.3.3"]
    assert client_address("10.0.1.5", header, ALB) == "10.0.3.3"


def test_ipv6_hops():
    header = [b"2001:db8::1"]
    assert client_address("10.0.1.5", header, ALB) == "2001:db8::1"
