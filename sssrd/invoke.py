"""Invokers start a render: they hand the encoded event to a Lambda as an asynchronous invoke.

An invoker has one coroutine, `invoke(payload)`, that returns once the render is accepted (like
Lambda's 202 for InvocationType=Event) or raises InvokeError saying what the viewer should get.
The local invoker runs a Python handler in a bounded thread pool, called as Lambda's Python
runtime calls it, for `sssrd dev` and the tests; the handler calls back over real HTTP.
"""

from __future__ import annotations

import importlib
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("sssrd")


class InvokeError(Exception):
    """The render could not be started; status/outcome/retry_after tell the viewer's answer.

    `message` is for the viewer and says nothing about the AWS account; `detail` (AWS's error
    type and message) goes to the access log only.
    """

    def __init__(
        self, status: int, outcome: str, message: str, retry_after: int = 0, detail: str = ""
    ) -> None:
        super().__init__(detail or message)
        self.status = status
        self.outcome = outcome
        self.message = message
        self.retry_after = retry_after
        self.detail = detail


class Invoker(Protocol):
    async def invoke(self, payload: bytes) -> None: ...

    def close(self) -> None: ...


def load_handler(spec: str) -> Callable[[dict, Any], Any]:
    """Import `module:function`; ValueError with the reason if it cannot be used."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from exc
    handler = getattr(module, function_name, None)
    if not callable(handler):
        raise ValueError(f"{module_name!r} has no callable {function_name!r}")
    return handler


@dataclass
class LocalContext:
    """The attributes of Lambda's Python context object that handlers commonly read."""

    function_name: str
    deadline_ms: int
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 128
    log_group_name: str = "/sssrd/local"
    log_stream_name: str = "local"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:local:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.deadline_ms - int(time.time() * 1000))


class LocalInvoker:
    """Runs `module:function` on worker threads, fire and forget, like an Event invoke.

    Invokes beyond `workers` queue up, as Lambda's async queue does. The workers are daemon
    threads, unlike ThreadPoolExecutor's (joined at exit), so a stuck render cannot hold the
    daemon up after its drain.
    """

    def __init__(self, handler_spec: str, workers: int, timeout: float = 900.0) -> None:
        self.handler_spec = handler_spec
        self.handler = load_handler(handler_spec)
        self.timeout = timeout
        self.max_workers = workers
        self.queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.workers: list[threading.Thread] = []
        self.idle_workers = 0
        self.lock = threading.Lock()

    async def invoke(self, payload: bytes) -> None:
        with self.lock:
            if self.idle_workers == 0 and len(self.workers) < self.max_workers:
                worker = threading.Thread(
                    target=self.work, name=f"sssrd-local-{len(self.workers)}", daemon=True
                )
                self.workers.append(worker)
                worker.start()
        self.queue.put(payload)

    def work(self) -> None:
        while True:
            with self.lock:
                self.idle_workers += 1
            payload = self.queue.get()
            with self.lock:
                self.idle_workers -= 1
            if payload is None:
                return
            self.run(payload)

    def run(self, payload: bytes) -> None:
        event = json.loads(payload)  # the handler gets its own copy, as from Lambda's runtime
        context = LocalContext(
            function_name=self.handler_spec,
            deadline_ms=int(time.time() * 1000 + self.timeout * 1000),
        )
        try:
            self.handler(event, context)
        except Exception:
            log.exception("local handler %s failed", self.handler_spec)

    def close(self) -> None:
        for _ in self.workers:
            self.queue.put(None)


def make_invoker(settings: Any) -> Invoker:
    """The configured invoker; ValueError (shown at startup) if it cannot be built."""
    if settings.invoker == "local":
        return LocalInvoker(settings.handler, settings.local_workers)
    from sssrd import lambda_invoke  # boto3 is slow to import; `sssrd dev` does not need it

    if settings.invoke_client == "boto3":
        return lambda_invoke.Boto3Invoker(settings)
    return lambda_invoke.LeanInvoker(settings)
