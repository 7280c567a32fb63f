"""FakeIMDS through raw http.client and through botocore's own IMDS fetchers, over 127.0.0.1.

Proves the IMDSv2 token flow (PUT a token, GET with it, 401 without), the scripted failure modes
and that botocore finds the fake through AWS_EC2_METADATA_SERVICE_ENDPOINT.
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator

import botocore.session
import pytest
from botocore.utils import InstanceMetadataFetcher, InstanceMetadataRegionFetcher

from sssrd.testing.fake_imds import FakeIMDS


@pytest.fixture
def imds() -> Iterator[FakeIMDS]:
    with FakeIMDS(local_ipv4="10.0.1.23", role_name="sssrd-node") as running:
        yield running


def connect(imds: FakeIMDS) -> http.client.HTTPConnection:
    host, port = imds.endpoint.removeprefix("http://").rstrip("/").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=5)


def request(
    imds: FakeIMDS, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    connection = connect(imds)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def token(imds: FakeIMDS, ttl: str = "60") -> str:
    status, text = request(
        imds, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": ttl}
    )
    assert status == 200
    return text


def get(imds: FakeIMDS, path: str, with_token: str | None) -> tuple[int, str]:
    headers = {"X-aws-ec2-metadata-token": with_token} if with_token else {}
    return request(imds, "GET", f"/latest/meta-data/{path}", headers)


def test_token_then_local_ipv4_region_and_instance_id(imds):
    issued = token(imds)

    assert get(imds, "local-ipv4", issued) == (200, "10.0.1.23")
    assert get(imds, "placement/region", issued) == (200, "us-east-1")
    assert get(imds, "instance-id", issued) == (200, "i-0123456789abcdef0")


def test_token_and_metadata_share_one_keep_alive_connection(imds):
    connection = connect(imds)
    connection.request(
        "PUT", "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "5"}
    )
    response = connection.getresponse()
    issued = response.read().decode()
    assert response.getheader("X-aws-ec2-metadata-token-ttl-seconds") == "5"

    connection.request(
        "GET", "/latest/meta-data/local-ipv4", headers={"X-aws-ec2-metadata-token": issued}
    )
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"10.0.1.23")
    connection.close()


def test_metadata_without_a_token_is_401(imds):
    assert get(imds, "local-ipv4", None)[0] == 401


def test_metadata_with_an_unknown_or_expired_token_is_401(imds):
    issued = token(imds)
    assert get(imds, "local-ipv4", "not-a-token")[0] == 401

    imds.expire_tokens()

    assert get(imds, "local-ipv4", issued)[0] == 401


@pytest.mark.parametrize(
    ("ttl", "status"), [("0", 400), ("21601", 400), ("ten", 400), ("21600", 200)]
)
def test_token_ttl_must_be_between_1_and_21600_seconds(imds, ttl, status):
    headers = {"X-aws-ec2-metadata-token-ttl-seconds": ttl}
    assert request(imds, "PUT", "/latest/api/token", headers)[0] == status


def test_token_without_a_ttl_header_is_400(imds):
    assert request(imds, "PUT", "/latest/api/token")[0] == 400


def test_token_requested_through_a_proxy_is_403(imds):
    headers = {"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "10.0.0.9"}
    assert request(imds, "PUT", "/latest/api/token", headers)[0] == 403


def test_directories_list_their_children(imds):
    issued = token(imds)

    status, listing = get(imds, "", issued)
    assert status == 200
    assert {"local-ipv4", "instance-id", "placement/", "iam/"} <= set(listing.splitlines())
    assert get(imds, "placement/", issued) == (200, "availability-zone\nregion")


def test_no_ipv4_mode_is_404_for_local_ipv4_only(imds):
    imds.set_mode("no_ipv4")
    issued = token(imds)

    assert get(imds, "local-ipv4", issued)[0] == 404
    assert get(imds, "placement/region", issued) == (200, "us-east-1")


def test_error_mode_answers_500(imds):
    imds.set_mode("error")

    assert request(imds, "PUT", "/latest/api/token")[0] == 500


def test_down_mode_refuses_connections_until_reopened_on_the_same_port(imds):
    endpoint = imds.endpoint
    imds.set_mode("down")

    with pytest.raises(ConnectionRefusedError):
        token(imds)

    imds.set_mode("normal")
    assert imds.endpoint == endpoint
    assert get(imds, "local-ipv4", token(imds)) == (200, "10.0.1.23")


def test_botocore_fetches_role_credentials_with_a_token(imds):
    fetcher = InstanceMetadataFetcher(base_url=imds.endpoint, timeout=2, num_attempts=1)

    credentials = fetcher.retrieve_iam_role_credentials()

    assert credentials["role_name"] == "sssrd-node"
    assert credentials["access_key"] == imds.credentials["AccessKeyId"]
    assert credentials["token"] == imds.credentials["Token"]
    methods_and_tokens = [(r.method, r.had_token) for r in imds.requests]
    assert methods_and_tokens == [("PUT", False), ("GET", True), ("GET", True)]


def test_botocore_region_fetcher_reads_the_availability_zone(imds):
    fetcher = InstanceMetadataRegionFetcher(base_url=imds.endpoint, timeout=2, num_attempts=1)

    assert fetcher.retrieve_region() == "us-east-1"


def test_botocore_gets_nothing_when_imds_is_down(imds):
    imds.set_mode("down")
    fetcher = InstanceMetadataFetcher(base_url=imds.endpoint, timeout=2, num_attempts=1)

    assert fetcher.retrieve_iam_role_credentials() == {}


def test_a_botocore_session_takes_instance_credentials_from_the_endpoint_env_var(
    imds, monkeypatch, tmp_path
):
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name, value in imds.env().items():
        monkeypatch.setenv(name, value)

    credentials = botocore.session.get_session().get_credentials()

    assert credentials.method == "iam-role"
    assert credentials.get_frozen_credentials().access_key == imds.credentials["AccessKeyId"]
