"""A local EC2 instance metadata service (IMDSv2) for tests: token flow, metadata, role credentials.

`PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1..21600) issues a token;
every `GET /latest/...` must carry a live token in `X-aws-ec2-metadata-token` or gets 401 (the
instance requires IMDSv2). Leaves and directory listings come from one flat path -> text table.
Modes script failures: `no_ipv4` (404 for local-ipv4), `error` (500), `down` (connection refused).
botocore finds it through AWS_EC2_METADATA_SERVICE_ENDPOINT (see `env()`).
"""

from __future__ import annotations

import datetime
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Final

from sssrd.testing._http11 import LoopbackServer, Request, Response

MAX_TOKEN_TTL_S: Final = 21600
TOKEN_TTL_HEADER: Final = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER: Final = "x-aws-ec2-metadata-token"
MODES: Final = frozenset({"normal", "no_ipv4", "error", "down"})
TEXT: Final = ("Content-Type", "text/plain")


@dataclass(frozen=True)
class MetadataRequest:
    """One request the fake answered, for tests that check how a client used the service."""

    method: str
    path: str
    status: int
    had_token: bool


class FakeIMDS:
    """IMDSv2 on 127.0.0.1; a context manager. Set `role_name` to serve instance credentials."""

    def __init__(
        self,
        local_ipv4: str = "10.0.1.23",
        *,
        region: str = "us-east-1",
        availability_zone: str | None = None,
        instance_id: str = "i-0123456789abcdef0",
        instance_type: str = "c7g.large",
        role_name: str | None = None,
        access_key: str = "AKIDSSSRDINSTANCE",
        secret_key: str = "sssrd-instance-secret",
        session_token: str = "sssrd-instance-session-token",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.local_ipv4 = local_ipv4
        self.region = region
        self.availability_zone = availability_zone or f"{region}a"
        self.instance_id = instance_id
        self.instance_type = instance_type
        self.role_name = role_name
        self.credentials = {
            "AccessKeyId": access_key,
            "SecretAccessKey": secret_key,
            "Token": session_token,
        }
        self._lock = threading.Lock()
        self._mode = "normal"
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._requests: list[MetadataRequest] = []
        self._server = LoopbackServer(self._respond, host=host, port=port, max_body=0)

    # -- lifecycle and scripting ----------------------------------------------------------------

    def start(self) -> FakeIMDS:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeIMDS:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        host, port = self._server.address
        return f"http://{host}:{port}/"

    def env(self) -> dict[str, str]:
        """Environment that points botocore (and so boto3) at this fake."""
        return {
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "false",
        }

    @property
    def mode(self) -> str:
        with self._lock:
            return self._mode

    def set_mode(self, mode: str) -> None:
        """normal; no_ipv4: local-ipv4 is 404; error: every request 500; down: the listener is
        closed (connection refused) until another mode reopens it on the same port."""
        if mode not in MODES:
            raise ValueError(f"unknown IMDS mode {mode!r}; expected one of {sorted(MODES)}")
        with self._lock:
            previous, self._mode = self._mode, mode
        if mode == "down" and previous != "down":
            self._server.close_listener()
        elif mode != "down" and previous == "down":
            self._server.reopen_listener()

    def expire_tokens(self) -> None:
        """Make every issued token invalid, as if its TTL had run out."""
        with self._lock:
            self._tokens.clear()

    @property
    def requests(self) -> list[MetadataRequest]:
        with self._lock:
            return list(self._requests)

    # -- serving (on the server's event loop) ---------------------------------------------------

    async def _respond(self, request: Request) -> Response:
        response = self._answer(request)
        with self._lock:
            self._requests.append(
                MetadataRequest(
                    request.method,
                    request.target,
                    response.status,
                    bool(request.header(TOKEN_HEADER)),
                )
            )
        return response

    def _answer(self, request: Request) -> Response:
        if self.mode == "error":
            return text_response(500, "Internal Server Error")
        path = request.target.partition("?")[0]
        if path == "/latest/api/token":
            return self._issue_token(request)
        if request.method != "GET":
            return text_response(405, "Method Not Allowed")
        if not path.startswith("/latest/"):
            return text_response(404, "Not Found")
        remaining = self._token_seconds_left(request.header(TOKEN_HEADER))
        if remaining is None:
            return text_response(401, "Unauthorized")
        value = self._lookup(path.removeprefix("/latest/"))
        if value is None:
            return text_response(404, "Not Found")
        return Response(200, [TEXT, (TOKEN_TTL_HEADER, str(remaining))], value.encode())

    def _issue_token(self, request: Request) -> Response:
        if request.method != "PUT":
            return text_response(405, "Method Not Allowed")
        if request.header("x-forwarded-for"):  # IMDS refuses tokens to requests through proxies
            return text_response(403, "Forbidden")
        ttl = request.header(TOKEN_TTL_HEADER.lower())
        if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TOKEN_TTL_S:
            return text_response(400, "Bad Request")
        token = secrets.token_urlsafe(42)
        now = time.monotonic()
        with self._lock:
            self._tokens = {t: expiry for t, expiry in self._tokens.items() if expiry > now}
            self._tokens[token] = now + int(ttl)
        return Response(200, [TEXT, (TOKEN_TTL_HEADER, ttl)], token.encode())

    def _token_seconds_left(self, token: str) -> int | None:
        with self._lock:
            expiry = self._tokens.get(token)
        left = None if expiry is None else int(expiry - time.monotonic())
        return left if left is not None and left > 0 else None

    def _lookup(self, path: str) -> str | None:
        """A leaf's text, or a directory's listing (children, sub-directories ending in /)."""
        leaves = self._leaves()
        key = path.strip("/")
        if key in leaves:
            return leaves[key]
        prefix = f"{key}/"
        children = {
            rest.split("/")[0] + ("/" if "/" in rest else "")
            for leaf in leaves
            if leaf.startswith(prefix) and (rest := leaf[len(prefix) :])
        }
        return "\n".join(sorted(children)) if children else None

    def _leaves(self) -> dict[str, str]:
        meta = {
            "ami-id": "ami-0123456789abcdef0",
            "hostname": f"ip-{self.local_ipv4.replace('.', '-')}.ec2.internal",
            "instance-id": self.instance_id,
            "instance-type": self.instance_type,
            "local-hostname": f"ip-{self.local_ipv4.replace('.', '-')}.ec2.internal",
            "local-ipv4": self.local_ipv4,
            "placement/availability-zone": self.availability_zone,
            "placement/region": self.region,
        }
        if self.mode == "no_ipv4":
            del meta["local-ipv4"]
        if self.role_name:
            meta[f"iam/security-credentials/{self.role_name}"] = self._role_credentials()
        leaves = {f"meta-data/{path}": value for path, value in meta.items()}
        leaves["dynamic/instance-identity/document"] = self._identity_document()
        return leaves

    def _role_credentials(self) -> str:
        now = datetime.datetime.now(datetime.UTC)
        stamp = "%Y-%m-%dT%H:%M:%SZ"
        return json.dumps(
            {
                "Code": "Success",
                "LastUpdated": now.strftime(stamp),
                "Type": "AWS-HMAC",
                **self.credentials,
                "Expiration": (now + datetime.timedelta(hours=6)).strftime(stamp),
            }
        )

    def _identity_document(self) -> str:
        return json.dumps(
            {
                "accountId": "123456789012",
                "availabilityZone": self.availability_zone,
                "instanceId": self.instance_id,
                "instanceType": self.instance_type,
                "privateIp": self.local_ipv4,
                "region": self.region,
                "version": "2017-09-30",
            }
        )


def text_response(status: int, text: str) -> Response:
    return Response(status, [TEXT], f"{text}\n".encode())
