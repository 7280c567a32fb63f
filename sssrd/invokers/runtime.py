"""What a Python handler sees of AWS Lambda's runtime, for renders run outside Lambda.

The local invoker (`sssrd dev`, the tests) and the fake Lambda (sssrd.testing) both load a
`module:function` handler, call it with an event and a context object shaped like the real
runtime's, and run it on a bounded pool of daemon threads (daemon, unlike ThreadPoolExecutor's,
which are joined at exit: a stuck render cannot hold a stopping process up).
"""

from __future__ import annotations

import datetime
import importlib
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

ACCOUNT_ID: Final = "123456789012"

Handler = Callable[[Any, "LambdaContext"], Any]


class LambdaContext:
    """Mimics the context object the AWS Python runtime passes to handlers."""

    def __init__(
        self,
        function_name: str,
        qualifier: str | None,
        region: str,
        timeout_s: float,
        request_id: str | None = None,
    ) -> None:
        self.function_name = function_name
        self.function_version = executed_version(qualifier)
        self.invoked_function_arn = function_arn(region, function_name, qualifier)
        self.memory_limit_in_mb = "128"  # the real runtime hands it over as a string too
        self.aws_request_id = request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        today = datetime.datetime.now(datetime.UTC).strftime("%Y/%m/%d")
        self.log_stream_name = f"{today}/[{self.function_version}]{uuid.uuid4().hex}"
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def executed_version(qualifier: str | None) -> str:
    """A numeric qualifier is a version; an alias or none resolves to $LATEST here."""
    return qualifier if qualifier and qualifier.isdigit() else "$LATEST"


def function_arn(region: str, function_name: str, qualifier: str | None = None) -> str:
    arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{function_name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def load_handler(reference: str | Handler) -> Handler:
    """Resolve "package.module:function" (or pass a callable through); ValueError with the
    reason if it cannot be used."""
    if callable(reference):
        return reference
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"handler must look like 'module:function', got {reference!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise ValueError(f"{module_name!r} has no callable {attribute!r}")
    handler: Handler = target  # a callable: its signature is the handler's to honour
    return handler


class WorkerPool:
    """At most `size` daemon threads run queued tasks; threads start only when none is idle.

    Tasks beyond `size` queue up, as Lambda's asynchronous queue does.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                return
            self._tasks.put(task)
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def close(self) -> None:
        """Drop queued tasks and let every thread exit after its current task."""
        with self._lock:
            self._closed = True
            while not self._tasks.empty():
                self._tasks.get_nowait()
            for _ in self._threads:
                self._tasks.put(None)

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            task()
            self._idle.release()
