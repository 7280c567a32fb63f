"""Invokes of the render Lambda on AWS, two ways, one policy.

Everything is resolved once, at startup, and any gap stops startup with one line naming the
setting: the region (setting, AWS_REGION, then botocore's AWS_DEFAULT_REGION/profile, then
IMDSv2 on EC2), and through botocore the endpoint (including AWS_ENDPOINT_URL_LAMBDA) and the
credentials with their refresh. The lean invoker then signs each invoke
with sigv4.InvokeSigner (botocore's SigV4, worked out once for the one URL it signs) and sends it
on sssrd's own keep-alive pool on the event loop; the
boto3 invoker calls boto3's invoke() on a thread pool. Both share `classify` (what the viewer
gets) and the retry rule: at most `invoke_retries` more attempts, only after a connection
failure or a 5xx, never after a throttle or another 4xx (a retry storm would deepen a throttle).

With `invocation_type = "RequestResponse"` (lean only) each invoke holds one pooled connection
for the render's whole life (the pool holds up to `max_pending`, and a request that ends
undelivered drops its render's exchange, so no render waits behind one nobody needs) and reads
the function's answer when it returns, with a time limit of the function's own timeout plus
`invoke_timeout`; an exchange that broke after it was sent is never retried, since the render
may be running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote, urlsplit

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound

from sssrd import ec2
from sssrd.config import Settings
from sssrd.httpclient import ConnectFailed, Pool, Reply, RequestFailed
from sssrd.invokers.base import TIMED_OUT_ERROR_TYPE, Calls, InvokeError, RenderEnded, printable
from sssrd.invokers.sigv4 import InvokeSigner
from sssrd.outcomes import Outcome

log = logging.getLogger("sssrd")

THROTTLE_RETRY_AFTER = 1
CREDENTIAL_REFRESH_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class LambdaTarget:
    """Where invokes go, resolved once by botocore."""

    function: str
    qualifier: str
    region: str
    endpoint_url: str

    @property
    def path(self) -> str:
        path = f"/2015-03-31/functions/{quote(self.function, safe='')}/invocations"
        return f"{path}?Qualifier={quote(self.qualifier, safe='')}" if self.qualifier else path


# The Invoke API's FunctionName forms: name, name:qualifier, ACCOUNT:function:name[:qualifier],
# arn:PARTITION:lambda:REGION:ACCOUNT:function:name[:qualifier].
FUNCTION_REFERENCE = re.compile(
    r"^(?:arn:aws[a-zA-Z-]*:lambda:(?P<region>[a-z]{2}(?:-[a-z]+)+-\d{1,2}):)?"
    r"(?:\d{12}:function:)?[A-Za-z0-9_-]{1,140}(?::(?:\$LATEST|[A-Za-z0-9_-]{1,128}))?$"
)


class StartupError(ValueError):
    """The invoker cannot be built; str() is one line that starts with the setting to change."""


def resolve_target(settings: Settings) -> tuple[LambdaTarget, Credentials]:
    """Function, region, endpoint and credentials, checked once; StartupError if unusable."""
    arn = FUNCTION_REFERENCE.match(settings.function)
    if arn is None:
        raise StartupError(
            f'function: "{settings.function}" is not a function name (render), partial ARN '
            "(123456789012:function:render) or full ARN "
            "(arn:aws:lambda:REGION:ACCOUNT:function:render)"
        )
    session = botocore.session.get_session()
    try:
        session.get_scoped_config()
    except ProfileNotFound as exc:
        raise StartupError(f"AWS_PROFILE: {exc}") from None
    region, source = resolve_region(settings, session)
    if not ec2.REGION_NAME.match(region):
        raise StartupError(f'region: "{region}" (from {source}) is not a region such as eu-west-1')
    if arn["region"] and arn["region"] != region:
        raise StartupError(
            f"function: the ARN is in {arn['region']} but the region is {region} (from {source}); "
            "set region to match"
        )
    try:
        credentials = session.get_credentials()
    except BotoCoreError as exc:
        raise StartupError(f"AWS credentials: {exc}") from None
    if credentials is None:
        raise StartupError(
            "AWS credentials: none found; give the instance a role (instance profile), or set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        )
    # A set endpoint_url was checked with the config, so a bad one here came from botocore's
    # own sources (AWS_ENDPOINT_URL_LAMBDA, AWS_ENDPOINT_URL, the profile).
    endpoint_source = "endpoint_url" if settings.endpoint_url else "AWS_ENDPOINT_URL_LAMBDA"
    try:
        client = session.create_client(
            "lambda", region_name=region, endpoint_url=settings.endpoint_url or None
        )
    except (BotoCoreError, ValueError) as exc:
        raise StartupError(f"{endpoint_source}: unusable Invoke API endpoint: {exc}") from None
    endpoint = client.meta.endpoint_url
    check_endpoint(endpoint, endpoint_source)
    log.info("AWS region", extra={"region": region, "source": source, "endpoint": endpoint})
    return LambdaTarget(settings.function, settings.qualifier, region, endpoint), credentials


def resolve_region(settings: Settings, session: botocore.session.Session) -> tuple[str, str]:
    """The region and where it came from: region setting, AWS_REGION, AWS_DEFAULT_REGION or the
    profile (botocore's own lookup), then IMDSv2 on EC2 (the same endpoint as callback_url auto)."""
    if settings.region:
        return settings.region, "the region setting"
    # botocore would let an empty variable hide the profile's region; sssrd treats it as unset.
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(variable):
            return os.environ[variable], variable
    if session.get_scoped_config().get("region"):
        return session.get_scoped_config()["region"], "the AWS profile"
    unset = (
        "region: none found: set region, AWS_REGION or AWS_DEFAULT_REGION (or a profile's region)"
    )
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        raise StartupError(f"{unset}; instance metadata is off (AWS_EC2_METADATA_DISABLED)")
    endpoint = ec2.imds_endpoint(settings.imds_endpoint)
    try:
        return ec2.region(endpoint), f"instance metadata at {endpoint}"
    except ec2.DiscoveryError as exc:
        raise StartupError(f"{unset}, or run on EC2: {exc}") from None


def check_endpoint(url: str, name: str) -> None:
    """A URL botocore accepted may still have no usable host or port."""
    parts = urlsplit(url)
    try:
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number or out of range
        usable = False
    if not usable:
        raise StartupError(f'{name}: "{url}" is not an http(s)://HOST[:PORT] URL')


def classify(status: int, error_type: str, message: str) -> InvokeError:
    """What the viewer gets for a refused invoke."""
    detail = f"invoke answered {status} {error_type}: {message}".rstrip(": ")
    if status == 429 or error_type.startswith(("TooManyRequests", "Throttl")):
        return InvokeError(
            503, Outcome.INVOKE_THROTTLED, "the renderer is busy", THROTTLE_RETRY_AFTER, detail
        )
    return InvokeError(502, Outcome.INVOKE_FAILED, "the render could not start", detail=detail)


def unreachable(reason: str) -> InvokeError:
    return InvokeError(502, Outcome.INVOKE_FAILED, "the render could not start", detail=reason)


T = TypeVar("T")


async def with_retries(attempt: Callable[[], Awaitable[T]], retries: int) -> T:
    """Run `attempt`; retry only what `attempt` marks retryable, at most `retries` times."""
    remaining = retries
    while True:
        try:
            return await attempt()
        except Retryable as failure:
            if not remaining:
                raise failure.error from None
            remaining -= 1
            log.debug("invoke retry", extra={"reason": str(failure.error)})


class Retryable(Exception):
    def __init__(self, error: InvokeError) -> None:
        super().__init__(str(error))
        self.error = error


class LeanInvoker:
    """Signs with InvokeSigner, sends on sssrd's own pooled HTTP/1.1 client."""

    def __init__(self, settings: Settings) -> None:
        self.target, self.credentials = resolve_target(settings)
        self.invocation_type = settings.invocation_type
        self.synchronous = self.invocation_type == "RequestResponse"
        # A synchronous invoke holds its connection while the render runs: one per request.
        connections = settings.max_pending if self.synchronous else settings.invoke_connections
        self.pool = Pool(self.target.endpoint_url, connections, settings.invoke_timeout)
        self.answer_timeout = (
            settings.function_timeout + settings.invoke_timeout
            if self.synchronous
            else settings.invoke_timeout
        )
        # Built once per credential refresh, not per invoke: it holds a frozen copy.
        self.signer = self.new_signer(self.credentials.get_frozen_credentials())
        self.target_bytes = self.target.path.encode()
        self.retries = settings.invoke_retries
        self.refresher: asyncio.Task[None] | None = None
        self.calls = Calls()

    async def invoke(self, payload: bytes) -> None:
        await self.send(payload)

    def start(self, payload: bytes) -> asyncio.Task[RenderEnded]:
        return self.calls.start(self.call(payload))

    async def call(self, payload: bytes) -> RenderEnded:
        return render_ended(await self.send(payload))

    async def send(self, payload: bytes) -> Reply:
        if self.refresher is None:
            self.refresher = asyncio.get_running_loop().create_task(self.refresh_credentials())
        return await with_retries(lambda: self.attempt(payload), self.retries)

    async def attempt(self, payload: bytes) -> Reply:
        try:
            reply = await self.pool.request(
                b"POST", self.target_bytes, self.sign(payload), payload, self.answer_timeout
            )
        except ConnectFailed as exc:
            raise Retryable(unreachable(str(exc))) from None
        except RequestFailed as exc:
            if self.synchronous:  # it was sent: the render may be running, never start it twice
                raise unreachable(str(exc)) from None
            raise Retryable(unreachable(str(exc))) from None
        if reply.status == (200 if self.synchronous else 202):
            return reply
        error = classify(reply.status, error_type(reply), error_message(reply.body))
        if reply.status >= 500:
            raise Retryable(error)
        raise error

    def sign(self, payload: bytes) -> list[tuple[bytes, bytes]]:
        """SigV4 headers for this payload."""
        return self.signer.sign(payload)

    def new_signer(self, frozen: ReadOnlyCredentials) -> InvokeSigner:
        fixed = (("X-Amz-Invocation-Type", self.invocation_type),)
        region, host = self.target.region, self.pool.authority
        return InvokeSigner(frozen, region, host, self.target.path, fixed)

    async def refresh_credentials(self) -> None:
        """Keep a fresh frozen copy; botocore's refresh may block (IMDS), so off the loop."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CREDENTIAL_REFRESH_INTERVAL)
            try:
                frozen = await loop.run_in_executor(None, self.credentials.get_frozen_credentials)
                self.signer = self.new_signer(frozen)
            except Exception:
                log.exception("AWS credential refresh failed; keeping the previous credentials")

    def close(self) -> None:
        self.calls.close()
        if self.refresher is not None:
            self.refresher.cancel()
        self.pool.close()


class Boto3Invoker:
    """boto3's invoke() on a thread pool (retries are sssrd's, not botocore's)."""

    def __init__(self, settings: Settings) -> None:
        self.target, _ = resolve_target(settings)
        config = Config(
            retries={"total_max_attempts": 1},
            connect_timeout=settings.invoke_timeout,
            read_timeout=settings.invoke_timeout,
            max_pool_connections=settings.invoke_connections,
        )
        self.client = boto3.session.Session().client(
            "lambda",
            region_name=self.target.region,
            endpoint_url=self.target.endpoint_url,
            config=config,
        )
        self.threads = ThreadPoolExecutor(
            max_workers=settings.invoke_connections, thread_name_prefix="sssrd-invoke"
        )
        self.retries = settings.invoke_retries
        self.arguments: dict[str, str] = {
            "FunctionName": self.target.function,
            "InvocationType": "Event",
        }
        if self.target.qualifier:
            self.arguments["Qualifier"] = self.target.qualifier

    async def invoke(self, payload: bytes) -> None:
        await with_retries(lambda: self.attempt(payload), self.retries)

    def start(self, payload: bytes) -> asyncio.Task[RenderEnded]:
        """Never called: the settings refuse RequestResponse with boto3 (a thread per render)."""
        raise RuntimeError('invocation_type "RequestResponse" needs invoke_client "lean"')

    async def attempt(self, payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.threads, self.call, payload)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            error = exc.response.get("Error", {})
            failure = classify(status, error.get("Code", ""), error.get("Message", ""))
            if status >= 500:
                raise Retryable(failure) from None
            raise failure from None
        except BotoCoreError as exc:
            raise Retryable(unreachable(str(exc))) from None

    def call(self, payload: bytes) -> None:
        response = self.client.invoke(Payload=payload, **self.arguments)
        response["Payload"].read()  # unread, urllib3 never pools the connection again

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)


def error_type(reply: Reply) -> str:
    value = reply.header(b"x-amzn-errortype") or b""
    return value.decode("latin-1").split(":", 1)[0]


def error_message(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(document, dict):
        return ""
    return str(document.get("message") or document.get("Message") or "")


def render_ended(reply: Reply) -> RenderEnded:
    """How the function ended, from a synchronous invoke's 200: X-Amz-Function-Error says it
    raised (or ran out of time), and its body's errorType which error. The message (it may hold
    secrets) is only looked at for Lambda's "Task timed out", never kept."""
    if reply.header(b"x-amz-function-error") is None:
        return RenderEnded()
    try:
        document = json.loads(reply.body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        document = {}
    kind = document.get("errorType")
    message = document.get("errorMessage")
    timed_out = kind == TIMED_OUT_ERROR_TYPE or (
        isinstance(message, str) and "Task timed out" in message
    )
    if not isinstance(kind, str) or not kind:
        kind = TIMED_OUT_ERROR_TYPE if timed_out else "Unhandled"
    return RenderEnded(error_type=printable(kind), timed_out=timed_out)
