"""A local Lambda Runtime API, so a handler runs in a real runtime interface client (test fixture).

`RuntimeAPI` serves `/2018-06-01/runtime/invocation/next` (a long poll answered with the next
event and its Lambda-Runtime-* headers), `/invocation/{id}/response` (JSON, or the streaming
response mode: chunked, `Lambda-Runtime-Function-Response-Mode: streaming`), `/invocation/{id}/
error` and `/init/error` on 127.0.0.1, for a process such as `python -m awslambdaric mod.handler`
or Node's `aws-lambda-ric` started with `env()`. Its `invoke(event, context)` is a handler for the
fake Invoke API (sssrd.testing.fake_lambda.FakeLambda): it queues the event for the runtime and
returns what the runtime posted back, or raises `FunctionError` with the error it reported, which
the fake answers as Lambda does (200, `X-Amz-Function-Error: Unhandled`, that error document), so
sssrd -> fake Invoke API -> runtime client -> handler runs exactly as in Lambda. The other ways an
invoke fails in Lambda are the same FunctionError: the init error the runtime posted (to every
invoke after it), `Sandbox.Timedout` once the function's timeout passed, and `Runtime.ExitError`
when the runtime process `watch` was given exits mid-invoke (or before one). `freeze` and
`thaw`, if given, are called when the runtime asks for an event and none is waiting, and when
the next one arrives (SIGSTOP and SIGCONT of the runtime process: Lambda freezes an idle
environment, with its open connections, until the next invocation).
"""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from sssrd.testing.fake_lambda import ReportedError, timed_out_body

PREFIX: Final = "/2018-06-01/runtime"
INVOCATION_PATH: Final = re.compile(
    rf"^{PREFIX}/invocation/(?P<id>[A-Za-z0-9-]+)/(?P<kind>response|error)$"
)
STREAMING_MODE_HEADER: Final = "Lambda-Runtime-Function-Response-Mode"
MAX_BODY: Final = 16 * 1024 * 1024


class FunctionError(ReportedError):
    """The handler's failure, as the runtime reported it (POST /error or /init/error, `body`)
    or as Lambda itself does (the function's timeout, the runtime's exit)."""

    def __init__(self, error_type: str, body: bytes) -> None:
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            document = {"errorType": error_type, "errorMessage": ""}
        super().__init__(document)
        self.error_type = error_type
        self.body = body

    @classmethod
    def of_lambda(cls, document: dict[str, Any]) -> FunctionError:
        return cls(document["errorType"], json.dumps(document).encode())


@dataclass
class Invocation:
    request_id: str
    event: bytes
    deadline_ms: int
    function_arn: str
    done: threading.Event = field(default_factory=threading.Event)
    settled_at: float = 0.0  # time.monotonic() when the runtime (or its exit) answered
    result: bytes = b""
    streamed: bool = False  # the runtime answered in the streaming response mode
    error: FunctionError | None = None


class RuntimeAPI:
    """The Runtime API for one runtime process; `invoke` is its fake-Invoke-API handler."""

    def __init__(
        self,
        function_name: str = "render",
        timeout_s: float = 30.0,
        freeze: Callable[[], None] | None = None,
        thaw: Callable[[], None] | None = None,
    ) -> None:
        self.function_name = function_name
        self.timeout_s = timeout_s
        self.freeze = freeze
        self.thaw = thaw
        self.pending: queue.Queue[Invocation | None] = queue.Queue()
        self.in_flight: dict[str, Invocation] = {}
        self.init_error: FunctionError | None = None
        self.exit_reason = ""  # set once a watched runtime process exited: Go's words, as Lambda's
        self.answered: list[Invocation] = []
        self._lock = threading.Lock()
        self._frozen = False
        self.idle = threading.Event()  # set while the runtime waits in /next with nothing to do
        self._server = _QuietServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RuntimeAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.pending.put(None)  # releases a runtime waiting in /next
        self._server.shutdown()
        self._server.server_close()

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def env(self, handler: str) -> dict[str, str]:
        """What a runtime interface client reads from its environment in Lambda."""
        return {
            "AWS_LAMBDA_RUNTIME_API": self.address,
            "_HANDLER": handler,
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def invoke(self, event: Any, context: Any) -> Any:
        """Hands `event` to the runtime and returns its JSON answer (None for a streamed one)."""
        request_id = getattr(context, "aws_request_id", None) or str(uuid.uuid4())
        invocation = Invocation(
            request_id=request_id,
            event=json.dumps(event).encode(),
            deadline_ms=int((time.time() + self.timeout_s) * 1000),
            function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}",
        )
        with self._lock:
            failed = self._failed(request_id)
            if failed is None:
                self.in_flight[request_id] = invocation
                if self._frozen and self.thaw is not None:
                    self.thaw()
                self._frozen = False
                self.idle.clear()
                self.pending.put(invocation)
        if failed is not None:  # as a new sandbox would fail its init, or a dead one answer
            raise failed
        if not invocation.done.wait(self.timeout_s):
            # Left in flight: the handler runs on, and its late answer is taken quietly.
            raise FunctionError.of_lambda(timed_out_body(request_id, self.timeout_s))
        if invocation.error is not None:
            raise invocation.error
        if invocation.streamed or not invocation.result:
            return None
        return json.loads(invocation.result)

    def watch(self, process: subprocess.Popen[Any]) -> None:
        """Fail the invocations in flight, and every later one, with Runtime.ExitError once the
        runtime `process` exits (Lambda's answer when a runtime is killed or crashes)."""

        def wait() -> None:
            code = process.wait()
            if code < 0:  # in the words of Lambda's Go runtime, e.g. "signal: killed"
                self.runtime_exited(f"signal: {(signal.strsignal(-code) or '').lower()}")
            else:
                self.runtime_exited(f"exit status {code}")

        threading.Thread(target=wait, daemon=True).start()

    def runtime_exited(self, reason: str) -> None:
        with self._lock:
            self.exit_reason = reason
            waiting, self.in_flight = list(self.in_flight.values()), {}
        for invocation in waiting:
            self._end(invocation, self._failed(invocation.request_id))

    def _failed(self, request_id: str) -> FunctionError | None:
        """What an invoke gets from a runtime that failed its init or is gone, if it did."""
        if self.init_error is not None:
            return self.init_error
        if not self.exit_reason:
            return None
        message = f"RequestId: {request_id} Error: Runtime exited with error: {self.exit_reason}"
        return FunctionError.of_lambda({"errorType": "Runtime.ExitError", "errorMessage": message})

    def _end(self, invocation: Invocation, error: FunctionError | None) -> None:
        invocation.error, invocation.settled_at = error, time.monotonic()
        invocation.done.set()

    # -- called by the request handler ------------------------------------------------------------

    def next_invocation(self) -> Invocation | None:
        with self._lock:
            if self.pending.empty():
                if self.freeze is not None and not self._frozen:
                    self.freeze()
                    self._frozen = True
                self.idle.set()
        return self.pending.get()

    def settle(
        self, request_id: str, result: bytes, streamed: bool, error: FunctionError | None
    ) -> bool:
        with self._lock:
            invocation = self.in_flight.pop(request_id, None)
        if invocation is None:
            return False
        invocation.result, invocation.streamed = result, streamed
        self.answered.append(invocation)
        self._end(invocation, error)
        return True

    def fail_init(self, error: FunctionError) -> None:
        with self._lock:
            self.init_error = error
            waiting, self.in_flight = list(self.in_flight.values()), {}
        for invocation in waiting:
            self._end(invocation, error)


class _QuietServer(ThreadingHTTPServer):
    """A runtime that is killed mid-request is routine here, not a traceback on stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def _trace_id() -> str:
    return f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]};Sampled=0"


def _handler_class(api: RuntimeAPI) -> type[BaseHTTPRequestHandler]:
    class RuntimeRequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Without it the /next answer waits ~40 ms for a delayed ACK (NOTES.md).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test reads outcomes, not an access log

        def do_GET(self) -> None:
            if self.path != f"{PREFIX}/invocation/next":
                return self._answer(404, b'{"errorType": "NotFound"}')
            invocation = api.next_invocation()
            if invocation is None:  # the emulator is stopping
                self.close_connection = True
                return self._answer(500, b'{"errorType": "Stopping"}')
            self._answer(
                200,
                invocation.event,
                {
                    "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": invocation.function_arn,
                    "Lambda-Runtime-Trace-Id": _trace_id(),
                },
            )

        def do_POST(self) -> None:
            body = self._read_body()
            if self.path == f"{PREFIX}/init/error":
                api.fail_init(FunctionError(self._error_type(body), body))
                return self._answer(202, b'{"status": "OK"}')
            match = INVOCATION_PATH.match(self.path)
            if match is None:
                return self._answer(404, b'{"errorType": "NotFound"}')
            error = None
            if match["kind"] == "error":
                error = FunctionError(self._error_type(body), body)
            streamed = self.headers.get(STREAMING_MODE_HEADER, "").lower() == "streaming"
            if not api.settle(match["id"], body, streamed, error):
                return self._answer(400, b'{"errorType": "InvalidRequestID"}')
            self._answer(202, b'{"status": "OK"}')

        def _error_type(self, body: bytes) -> str:
            named = self.headers.get("Lambda-Runtime-Function-Error-Type")
            if named:
                return named
            try:
                return str(json.loads(body).get("errorType", "Unknown"))
            except (ValueError, AttributeError):
                return "Unknown"

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._read_chunked()
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ValueError(f"body of {length} bytes is over {MAX_BODY}")
            return self.rfile.read(length)

        def _read_chunked(self) -> bytes:
            pieces: list[bytes] = []
            size = 0
            while True:
                size_line = self.rfile.readline(1024)
                chunk_size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if chunk_size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers (a streamed error's type travels in one)
                    return b"".join(pieces)
                size += chunk_size
                if size > MAX_BODY:
                    raise ValueError(f"streamed body is over {MAX_BODY} bytes")
                pieces.append(self.rfile.read(chunk_size))
                self.rfile.readline(1024)

        def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return RuntimeRequestHandler
