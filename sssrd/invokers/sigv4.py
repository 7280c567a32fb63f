"""SigV4 for the one request the lean invoker sends: a POST of an event to a fixed invoke URL.

botocore's signer builds an AWSRequest, a header map, URL splits and the canonical request on
every call, about a tenth of sssrd's CPU per request under load. For an invoke everything but the
time, the payload's length and its hash is the same every time, so it is worked out once (the
path and query in botocore's canonical form, from botocore itself) and each signature costs two
SHA-256 and one HMAC. The signing key (four chained HMACs) is derived once per UTC day; a
credential refresh builds a new signer. Tests hold it to botocore's output, header for header.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

ALGORITHM = "AWS4-HMAC-SHA256"


class InvokeSigner:
    """Signs POSTs to `https://{host}{target}` with `fixed` headers besides Host and the length."""

    def __init__(
        self,
        credentials: ReadOnlyCredentials,
        region: str,
        host: str,
        target: str,
        fixed: tuple[tuple[str, str], ...],
        service: str = "lambda",
    ) -> None:
        self.credentials = credentials
        self.host = host
        self.fixed = fixed
        self.key_scope = (region, service, "aws4_request")
        self.scope_tail = "/" + "/".join(self.key_scope)
        probe = AWSRequest(method="POST", url=f"https://{host}{target}", headers=dict(fixed))
        canonical = SigV4Auth(credentials, service, region).canonical_request(probe)
        method, path, query = canonical.split("\n")[:3]
        self.request_line = f"{method}\n{path}\n{query}\n"
        names = [name.lower() for name, _ in fixed]
        names += ["host", "content-length", "x-amz-date"]
        if credentials.token:
            names.append("x-amz-security-token")
        self.names = sorted(names)
        self.signed_headers = ";".join(self.names)
        self.day_key: tuple[str, bytes] | None = None
        self.stamp: tuple[int, str] = (-1, "")

    def timestamp(self, now: float) -> str:
        """X-Amz-Date for `now`, formatted once per second."""
        second = int(now)
        if self.stamp[0] != second:
            self.stamp = (second, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second)))
        return self.stamp[1]

    def key(self, day: str) -> bytes:
        if self.day_key is None or self.day_key[0] != day:
            key = f"AWS4{self.credentials.secret_key}".encode()
            for part in (day, *self.key_scope):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self.day_key = (day, key)
        return self.day_key[1]

    def sign(self, payload: bytes, now: float | None = None) -> list[tuple[bytes, bytes]]:
        """The request's headers, Authorization last, in the order botocore gives them."""
        stamp = self.timestamp(time.time() if now is None else now)
        day = stamp[:8]
        headers = [*self.fixed, ("Host", self.host), ("Content-Length", str(len(payload)))]
        headers.append(("X-Amz-Date", stamp))
        if self.credentials.token:
            headers.append(("X-Amz-Security-Token", self.credentials.token))
        values = {name.lower(): " ".join(value.split()) for name, value in headers}
        canonical = "".join(
            (
                self.request_line,
                "".join(f"{name}:{values[name]}\n" for name in self.names),
                "\n",
                self.signed_headers,
                "\n",
                hashlib.sha256(payload).hexdigest(),
            )
        )
        scope = day + self.scope_tail
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        string_to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{digest}"
        signature = hmac.new(self.key(day), string_to_sign.encode(), hashlib.sha256).hexdigest()
        authorization = (
            f"{ALGORITHM} Credential={self.credentials.access_key}/{scope}, "
            f"SignedHeaders={self.signed_headers}, Signature={signature}"
        )
        headers.append(("Authorization", authorization))
        return [(name.encode(), value.encode()) for name, value in headers]
