"""Server-side check of AWS Signature Version 4, by recomputing the signature with botocore.

The request as received is rebuilt as a botocore AWSRequest holding exactly the headers the
client says it signed; botocore's SigV4Auth then computes the canonical request, string to sign
and signature for the client's own X-Amz-Date, and the result is compared in constant time.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any, Final

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

MAX_CLOCK_SKEW: Final = datetime.timedelta(minutes=5)  # what AWS allows
AUTHORIZATION: Final = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed_headers>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
AMZ_DATE: Final = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$")


class SignatureRejected(Exception):
    """Why a request's signature was refused, as an AWS error type and message."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def invalid(message: str) -> SignatureRejected:
    return SignatureRejected("InvalidSignatureException", message)


class _ReceivedRequest(AWSRequest):
    """An AWSRequest whose body is the bytes received (skips botocore's request preparation)."""

    @property
    def body(self) -> Any:  # bytes here; botocore's own hints say str
        return self.data


class SigV4Verifier:
    """Accepts requests signed for one access key, secret, region and service."""

    def __init__(self, access_key: str, secret_key: str, region: str, service: str) -> None:
        self.access_key = access_key
        self.region = region
        self.service = service
        self._signer = SigV4Auth(Credentials(access_key, secret_key), service, region)

    def verify(
        self, method: str, target: str, headers: Mapping[str, list[str]], body: bytes
    ) -> None:
        """Raise SignatureRejected unless the request carries a valid signature.

        `target` is the request target exactly as sent (path still percent-encoded, query
        included); `headers` maps lower-case names to their values.
        """
        authorization = first(headers, "authorization")
        match = AUTHORIZATION.match(authorization)
        if match is None:
            raise invalid("Missing or malformed AWS4-HMAC-SHA256 Authorization header.")
        amz_date = first(headers, "x-amz-date")
        self._check_scope(match["credential"], amz_date)
        check_clock(amz_date)
        request = self._rebuild(method, target, headers, body, match["signed_headers"])
        request.context["timestamp"] = amz_date
        canonical = self._signer.canonical_request(request)
        expected = self._signer.signature(self._signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected.encode(), match["signature"].encode()):
            raise invalid(
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method."
            )

    def _check_scope(self, credential: str, amz_date: str) -> None:
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise invalid(f"Malformed credential scope {credential!r}.")
        key, date, region, service, _ = parts
        if key != self.access_key:
            raise SignatureRejected(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        if date != amz_date[:8]:
            raise invalid(f"Credential date {date} does not match X-Amz-Date {amz_date!r}.")
        if region != self.region or service != self.service:
            raise invalid(
                f"Credential should be scoped to region {self.region!r}"
                f" and service {self.service!r}, not {region!r}/{service!r}."
            )

    @staticmethod
    def _rebuild(
        method: str, target: str, headers: Mapping[str, list[str]], body: bytes, signed: str
    ) -> AWSRequest:
        host = first(headers, "host") or "localhost"
        request = _ReceivedRequest(method=method, url=f"http://{host}{target}", data=body)
        for name in signed.split(";"):
            values = headers.get(name)
            if not values:
                raise invalid(f"Signed header {name!r} is missing from the request.")
            for value in values:
                request.headers[name] = value
        claimed_sha = request.headers.get("x-amz-content-sha256")
        if claimed_sha is not None and claimed_sha != hashlib.sha256(body).hexdigest():
            raise invalid("X-Amz-Content-SHA256 does not match the request body.")
        return request


def check_clock(amz_date: str) -> None:
    match = AMZ_DATE.match(amz_date)
    if match is None:
        raise invalid(f"Missing or malformed X-Amz-Date {amz_date!r}.")
    try:
        year, month, day, hour, minute, second = map(int, match.groups())
        signed_at = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.UTC)
    except ValueError:
        raise invalid(f"Malformed X-Amz-Date {amz_date!r}.") from None
    if abs(datetime.datetime.now(datetime.UTC) - signed_at) > MAX_CLOCK_SKEW:
        raise invalid(f"Signature expired: {amz_date} is more than 5 minutes from now.")


def first(headers: Mapping[str, list[str]], name: str) -> str:
    values = headers.get(name)
    return values[0] if values else ""
