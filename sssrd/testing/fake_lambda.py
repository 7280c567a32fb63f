"""A local AWS Lambda Invoke API that boto3 talks to over real HTTP (test and benchmark fixture).

An HTTP/1.1 keep-alive server (asyncio in a daemon thread, see _http11) on 127.0.0.1 serves
`POST /2015-03-31/functions/{FunctionName}/invocations`. Each request's SigV4 signature is
recomputed with botocore's signer; then the behaviour scripted for the function (normal,
throttle, error, hang, never, late, twice) decides the answer. Every invocation is recorded, and
the Python handler runs on a bounded pool of daemon threads: queued as the 202 goes out for Event,
before the 200 for RequestResponse. A RequestResponse invoke is answered as Lambda answers it:
200 with the handler's result; 200 with `X-Amz-Function-Error: Unhandled` and the error when it
raised (a `ReportedError`'s document as it is: the error a runtime reported), or when it outruns
`timeout_s` (Lambda's `Sandbox.Timedout`, "Task timed out", at that moment: the thread cannot be
killed, so it runs on, as a frozen sandbox's sockets stay open).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import signal
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, unquote

from sssrd.invokers.runtime import (
    Handler,
    LambdaContext,
    WorkerPool,
    executed_version,
    function_arn,
    load_handler,
)
from sssrd.testing._http11 import LoopbackServer, Request, Response
from sssrd.testing._sigv4 import SignatureRejected, SigV4Verifier

DEFAULT_ACCESS_KEY: Final = "AKIDSSSRDTEST"
DEFAULT_SECRET_KEY: Final = "sssrd-test-secret"
DEFAULT_REGION: Final = "us-east-1"
ASYNC_PAYLOAD_LIMIT: Final = 1024 * 1024  # Lambda's asynchronous invoke limit (1 MB)
SYNC_PAYLOAD_LIMIT: Final = 6 * 1024 * 1024

INVOKE_PATH: Final = re.compile(r"^/2015-03-31/functions/(?P<function>[^/]+)/invocations$")
FUNCTION_REFERENCE: Final = re.compile(
    r"^(?:(?:arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:)?\d{12}:function:)?"
    r"(?P<name>[A-Za-z0-9_-]{1,140})(?::(?P<qualifier>\$LATEST|[A-Za-z0-9_-]{1,128}))?$"
)
BEHAVIOUR_MODES: Final = frozenset(
    {"normal", "throttle", "error", "hang", "never", "late", "twice"}
)
INVOCATION_TYPES: Final = frozenset({"Event", "RequestResponse", "DryRun"})


@dataclass(frozen=True)
class Behaviour:
    """How the fake answers one invoke; `delay` (seconds) is used by `late` only.

    normal: answer and run the handler. throttle: 429 TooManyRequestsException. error: 500
    ServiceException. hang: never answer (the connection is dropped when the fake stops).
    never: answer 202 but never run the handler. late: run the handler `delay` seconds later.
    twice: run the handler twice (asynchronous events may be delivered more than once).
    """

    mode: str = "normal"
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in BEHAVIOUR_MODES:
            raise ValueError(f"unknown behaviour {self.mode!r}; expected one of {BEHAVIOUR_MODES}")
        if self.delay < 0:
            raise ValueError(f"behaviour delay must be >= 0, got {self.delay}")

    @classmethod
    def parse(cls, text: str | Behaviour) -> Behaviour:
        """Accept "throttle", "late=2.5" (seconds) or a Behaviour."""
        if isinstance(text, Behaviour):
            return text
        mode, _, delay = text.partition("=")
        if delay and mode != "late":
            raise ValueError(f"only 'late' takes a delay, got {text!r}")
        return cls(mode, float(delay) if delay else 0.0)


NORMAL: Final = Behaviour()


@dataclass(frozen=True)
class Invocation:
    """One authenticated invoke of a known function, as the fake received it."""

    function_name: str
    qualifier: str | None
    invocation_type: str
    event: Any
    payload: bytes
    request_id: str
    received_at: float  # time.time()
    behaviour: Behaviour


@dataclass(frozen=True)
class HandlerFailure:
    """An exception a handler raised on an Event invoke (real Lambda would log it)."""

    request_id: str
    error: BaseException


class ReportedError(Exception):
    """A handler's failure as its runtime reported it (the Runtime API's /error or /init/error,
    or the sandbox's own Runtime.ExitError): Lambda answers with that document as it is."""

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__(str(document.get("errorType", "")))
        self.document = document


class LambdaError(Exception):
    """An error answer in Lambda's shape: status, x-amzn-ErrorType, JSON body."""

    def __init__(
        self, status: int, error_type: str, message: str, *, kind: str = "User", **extra: str
    ) -> None:
        super().__init__(f"{status} {error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.body = {**extra, "Type": kind, "message": message}


def throttled() -> LambdaError:
    return LambdaError(
        429,
        "TooManyRequestsException",
        "Rate Exceeded.",
        Reason="ReservedFunctionConcurrentInvocationsExceeded",
    )


def service_error() -> LambdaError:
    return LambdaError(
        500, "ServiceException", "An internal error occurred (scripted).", kind="Service"
    )


def payload_too_large(limit: int) -> LambdaError:
    return LambdaError(
        413,
        "RequestTooLargeException",
        f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
    )


@dataclass(frozen=True)
class InvokeTarget:
    function_name: str
    qualifier: str | None


def parse_invoke_target(target: str) -> InvokeTarget:
    """Function name (plain, name:qualifier, partial or full ARN) and qualifier from the URL."""
    path, _, query = target.partition("?")
    match = INVOKE_PATH.match(path)
    if match is None:
        raise LambdaError(404, "UnknownOperationException", f"Unknown operation {path}")
    reference = FUNCTION_REFERENCE.match(unquote(match["function"]))
    if reference is None:
        name = unquote(match["function"])
        raise LambdaError(400, "ValidationException", f"Invalid function name {name!r}")
    from_query = parse_qs(query).get("Qualifier", [None])[0]
    from_name = reference["qualifier"]
    if from_query and from_name and from_query != from_name:
        raise LambdaError(
            400,
            "InvalidParameterValueException",
            "The derived qualifier from the function name does not match the specified qualifier.",
        )
    return InvokeTarget(reference["name"], from_query or from_name)


def decode_event(payload: bytes) -> Any:
    if not payload:
        return {}
    try:
        return json.loads(payload)
    except ValueError as error:
        raise LambdaError(
            400,
            "InvalidRequestContentException",
            f"Could not parse request body into json: {error}",
        ) from None


def lambda_response(
    status: int, request_id: str, body: bytes = b"", headers: Mapping[str, str] | None = None
) -> Response:
    common = {
        "x-amzn-RequestId": request_id,
        "x-amzn-Remapped-Content-Length": "0",
        "X-Amzn-Trace-Id": f"root=1-{int(time.time()):08x}-{secrets.token_hex(12)};sampled=0",
    }
    return Response(status, [*common.items(), *(headers or {}).items()], body)


def error_response(error: LambdaError, request_id: str) -> Response:
    headers = {"Content-Type": "application/json", "x-amzn-ErrorType": error.error_type}
    return lambda_response(error.status, request_id, json.dumps(error.body).encode(), headers)


def timed_out_body(request_id: str, timeout_s: float) -> dict[str, Any]:
    """What Lambda returns (with X-Amz-Function-Error: Unhandled) when a handler times out."""
    return {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"RequestId: {request_id} Error: Task timed out after {timeout_s:.2f} "
        "seconds",
    }


def unhandled_error_body(error: BaseException) -> dict[str, Any]:
    """What Lambda returns (with X-Amz-Function-Error: Unhandled) when a handler raises."""
    if isinstance(error, ReportedError):
        return error.document
    return {
        "errorMessage": str(error),
        "errorType": type(error).__name__,
        "stackTrace": traceback.format_exception(error)[1:],
    }


@dataclass
class _Script:
    """Behaviour for one function (or for all, under the key None): one-shots first, then steady."""

    steady: Behaviour | None = None
    upcoming: list[Behaviour] = field(default_factory=list)


class FakeLambda:
    """Local Lambda Invoke endpoint; use as a context manager or call start()/stop().

    `handler` answers invokes of any function name; `functions` maps names to their own handlers
    (with no `handler`, other names get 404 ResourceNotFoundException). Handlers get `timeout_s`
    in their context; Event payloads over `event_payload_limit` bytes get 413. Only the last
    `keep_invocations` records are kept if set (a long benchmark would otherwise hoard every
    payload). Everything public is safe to call from any thread while the fake runs. A stopped
    fake cannot be restarted; handlers already running when it stops finish on their own.
    """

    def __init__(
        self,
        handler: str | Handler | None = None,
        functions: Mapping[str, str | Handler] | None = None,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        region: str = DEFAULT_REGION,
        host: str = "127.0.0.1",
        port: int = 0,
        workers: int = 64,
        timeout_s: float = 30.0,
        event_payload_limit: int = ASYNC_PAYLOAD_LIMIT,
        keep_invocations: int | None = None,
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.timeout_s = timeout_s
        self.event_payload_limit = event_payload_limit
        self._default_handler = load_handler(handler) if handler is not None else None
        self._handlers = {name: load_handler(h) for name, h in (functions or {}).items()}
        self._verifier = SigV4Verifier(access_key, secret_key, region, "lambda")
        self._changed = threading.Condition()
        self._scripts: dict[str | None, _Script] = {}
        self._invocations: deque[Invocation] = deque(maxlen=keep_invocations)
        self._invocation_count = 0
        self._handler_runs = 0
        self._handler_failures: list[HandlerFailure] = []
        self._workers = WorkerPool(workers, "fake-lambda-worker")
        # Room past the largest payload, so that one over a limit is refused in Lambda's shape
        # (413 RequestTooLargeException) by _invoke, not by the HTTP layer.
        self._server = LoopbackServer(
            self._respond, host=host, port=port, max_body=2 * SYNC_PAYLOAD_LIMIT
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeLambda:
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop listening; drop hung requests unanswered, forget late runs not yet started."""
        self._server.stop()
        self._workers.close()

    def __enter__(self) -> FakeLambda:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.address
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """Environment a subprocess needs to reach this fake with boto3 (one new enough to
        read AWS_ENDPOINT_URL_<SERVICE>, late 2023 on)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_LAMBDA": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def function_arn(self, function_name: str, qualifier: str | None = None) -> str:
        return function_arn(self.region, function_name, qualifier)

    # -- scripting ------------------------------------------------------------------------------

    def add_function(self, name: str, handler: str | Handler) -> None:
        with self._changed:
            self._handlers[name] = load_handler(handler)

    def set_behaviour(
        self, behaviour: str | Behaviour, function: str | None = None, *, times: int | None = None
    ) -> None:
        """Script how invokes are answered ("throttle", "late=0.5", ... see Behaviour), for one
        function or, with function=None, for all of them.

        With `times`, only the next `times` invokes behave so (queued after earlier one-shots);
        without it, the behaviour holds until changed. One-shots for a function win over
        one-shots for all, which win over steady behaviours.
        """
        parsed = Behaviour.parse(behaviour)
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        with self._changed:
            script = self._scripts.setdefault(function, _Script())
            if times is None:
                script.steady = parsed
            else:
                script.upcoming.extend([parsed] * times)

    def reset_behaviour(self) -> None:
        with self._changed:
            self._scripts.clear()

    def next_behaviour(self, function_name: str) -> Behaviour:
        """Take the next one-shot behaviour for this function, else its steady one."""
        with self._changed:
            scripts = [self._scripts.get(function_name), self._scripts.get(None)]
            for script in scripts:
                if script is not None and script.upcoming:
                    return script.upcoming.pop(0)
            for script in scripts:
                if script is not None and script.steady is not None:
                    return script.steady
            return NORMAL

    # -- observation ----------------------------------------------------------------------------

    @property
    def invocations(self) -> list[Invocation]:
        with self._changed:
            return list(self._invocations)

    @property
    def handler_runs(self) -> int:
        """Handler runs finished (returned or raised), Event and RequestResponse alike."""
        with self._changed:
            return self._handler_runs

    @property
    def handler_failures(self) -> list[HandlerFailure]:
        with self._changed:
            return list(self._handler_failures)

    @property
    def invocation_count(self) -> int:
        """Invocations received since start, including records no longer kept."""
        with self._changed:
            return self._invocation_count

    def wait_for_invocations(self, count: int, timeout: float = 5.0) -> list[Invocation]:
        """Block until at least `count` invocations arrived, then return the records kept;
        TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._invocation_count >= count, timeout):
                raise TimeoutError(
                    f"{self._invocation_count} of {count} invocations after {timeout}s"
                )
            return list(self._invocations)

    def wait_for_handler_runs(self, count: int, timeout: float = 5.0) -> int:
        """Block until at least `count` handler runs finished; TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._handler_runs >= count, timeout):
                raise TimeoutError(f"{self._handler_runs} of {count} handler runs after {timeout}s")
            return self._handler_runs

    # -- serving (runs on the server's event loop) ----------------------------------------------

    async def _respond(self, request: Request) -> Response | None:
        request_id = str(uuid.uuid4())
        try:
            return await self._invoke(request, request_id)
        except LambdaError as error:
            return error_response(error, request_id)

    async def _invoke(self, request: Request, request_id: str) -> Response | None:
        try:
            self._verifier.verify(request.method, request.target, request.headers, request.body)
        except SignatureRejected as rejected:
            raise LambdaError(403, rejected.error_type, rejected.message) from None
        if request.method != "POST":
            raise LambdaError(404, "UnknownOperationException", f"{request.method} not supported")
        target = parse_invoke_target(request.target)
        handler = self._handler_for(target.function_name)
        invocation_type = request.header("x-amz-invocation-type", "RequestResponse")
        if invocation_type not in INVOCATION_TYPES:
            raise LambdaError(
                400, "InvalidParameterValueException", f"Bad InvocationType {invocation_type!r}"
            )
        limit = self.event_payload_limit if invocation_type == "Event" else SYNC_PAYLOAD_LIMIT
        if len(request.body) > limit:
            raise payload_too_large(limit)
        invocation = Invocation(
            function_name=target.function_name,
            qualifier=target.qualifier,
            invocation_type=invocation_type,
            event=decode_event(request.body),
            payload=request.body,
            request_id=request_id,
            received_at=time.time(),
            behaviour=self.next_behaviour(target.function_name),
        )
        self._record(invocation)
        return await self._answer(invocation, handler)

    def _handler_for(self, function_name: str) -> Handler:
        with self._changed:
            handler = self._handlers.get(function_name, self._default_handler)
        if handler is None:
            raise LambdaError(
                404,
                "ResourceNotFoundException",
                f"Function not found: {self.function_arn(function_name)}",
            )
        return handler

    def _record(self, invocation: Invocation) -> None:
        with self._changed:
            self._invocations.append(invocation)
            self._invocation_count += 1
            self._changed.notify_all()

    async def _answer(self, invocation: Invocation, handler: Handler) -> Response | None:
        mode = invocation.behaviour.mode
        if mode == "throttle":
            raise throttled()
        if mode == "error":
            raise service_error()
        if mode == "hang":
            await asyncio.get_running_loop().create_future()  # cancelled when the fake stops
        if invocation.invocation_type == "DryRun":
            return lambda_response(204, invocation.request_id)
        if invocation.invocation_type == "Event":
            self._start_in_background(invocation, handler)
            return lambda_response(202, invocation.request_id)
        return await self._answer_synchronously(invocation, handler)

    def _start_in_background(self, invocation: Invocation, handler: Handler) -> None:
        behaviour = invocation.behaviour
        if behaviour.mode == "late":
            # A loop timer: it dies with the loop when the fake stops, and holds no thread.
            loop = asyncio.get_running_loop()
            loop.call_later(behaviour.delay, self._submit, invocation, handler)
        elif behaviour.mode != "never":
            for _ in range(2 if behaviour.mode == "twice" else 1):
                self._submit(invocation, handler)

    def _submit(self, invocation: Invocation, handler: Handler) -> None:
        self._workers.submit(lambda: self._run_in_background(invocation, handler))

    def _run_in_background(self, invocation: Invocation, handler: Handler) -> None:
        failure = None
        try:
            self._run_handler(invocation, handler)
        except Exception as error:
            traceback.print_exc()
            failure = HandlerFailure(invocation.request_id, error)
        self._count_run(failure)

    def _run_handler(self, invocation: Invocation, handler: Handler) -> Any:
        context = LambdaContext(
            invocation.function_name,
            invocation.qualifier,
            self.region,
            self.timeout_s,
            invocation.request_id,
        )
        return handler(invocation.event, context)

    def _count_run(self, failure: HandlerFailure | None) -> None:
        """Count a finished run (and its failure) in one step, so waiters see both together."""
        with self._changed:
            self._handler_runs += 1
            if failure is not None:
                self._handler_failures.append(failure)
            self._changed.notify_all()

    async def _answer_synchronously(self, invocation: Invocation, handler: Handler) -> Response:
        behaviour = invocation.behaviour
        if behaviour.mode == "late":
            await asyncio.sleep(behaviour.delay)
        runs = {"never": 0, "twice": 2}.get(behaviour.mode, 1)
        running = self._in_pool(lambda: self._run_synchronously(invocation, handler, runs))
        try:
            payload, failed = await asyncio.wait_for(asyncio.shield(running), self.timeout_s)
        except TimeoutError:
            body = timed_out_body(invocation.request_id, self.timeout_s)
            payload, failed = json.dumps(body).encode(), True
        headers = {
            "Content-Type": "application/json",
            "X-Amz-Executed-Version": executed_version(invocation.qualifier),
        }
        if failed:
            headers["X-Amz-Function-Error"] = "Unhandled"
        return lambda_response(200, invocation.request_id, payload, headers)

    def _run_synchronously(
        self, invocation: Invocation, handler: Handler, runs: int
    ) -> tuple[bytes, bool]:
        """The JSON payload of the last run and whether the handler raised."""
        result = None
        try:
            for _ in range(runs):
                try:
                    result = self._run_handler(invocation, handler)
                finally:
                    self._count_run(None)  # the caller gets the error, as from real Lambda
            return json.dumps(result).encode(), False
        except Exception as error:
            return json.dumps(unhandled_error_body(error)).encode(), True

    def _in_pool(
        self, work: Callable[[], tuple[bytes, bool]]
    ) -> asyncio.Future[tuple[bytes, bool]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bytes, bool]] = loop.create_future()

        def settle(result: tuple[bytes, bool]) -> None:
            if not future.done():  # the connection may have gone and cancelled the wait
                future.set_result(result)

        def task() -> None:
            result = work()
            with contextlib.suppress(RuntimeError):  # the loop closed: the fake was stopped
                loop.call_soon_threadsafe(settle, result)

        self._workers.submit(task)
        return future


# -- command line -------------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sssrd.testing.fake_lambda",
        description="Serve a local Lambda Invoke API that runs a Python handler (for benchmarks).",
    )
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 9001))
    parser.add_argument("--handler", required=True, help="module:function, e.g. sssrd.demo:handler")
    parser.add_argument(
        "--function",
        action="append",
        default=[],
        help="function name to serve (repeatable); without it every name is served",
    )
    parser.add_argument("--behaviour", default="normal", help="e.g. normal, throttle, late=0.5")
    parser.add_argument("--workers", type=int, default=256, help="handler threads at most")
    parser.add_argument("--access-key", default=DEFAULT_ACCESS_KEY)
    parser.add_argument("--secret-key", default=DEFAULT_SECRET_KEY)
    parser.add_argument("--region", default=DEFAULT_REGION)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = load_handler(args.handler)
    host, port = args.listen
    fake = FakeLambda(
        handler=None if args.function else handler,
        functions={name: handler for name in args.function},
        access_key=args.access_key,
        secret_key=args.secret_key,
        region=args.region,
        host=host,
        port=port,
        workers=args.workers,
        keep_invocations=1000,
    )
    fake.set_behaviour(args.behaviour)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with fake:
        print(fake.endpoint_url, flush=True)
        for name, value in fake.env().items():
            print(f"export {name}={value}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
