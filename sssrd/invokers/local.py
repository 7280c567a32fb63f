"""The local invoker: runs a Python render handler in-process, as a Lambda invoke would.

For `sssrd dev` and the tests. The handler is called as Lambda's Python runtime calls it (its
own copy of the event, a context object) on a bounded pool of worker threads; it calls back over
real HTTP like a deployed render. `invoke` (Event) fires and forgets; `start` (RequestResponse)
also reports how the handler ended (returned, or the class name of what it raised).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging

from sssrd.invokers.base import Calls, RenderEnded, printable
from sssrd.invokers.runtime import LambdaContext, WorkerPool, load_handler

log = logging.getLogger("sssrd")


class LocalInvoker:
    """Runs `module:function` on worker threads; invokes beyond `workers` queue up."""

    def __init__(self, handler_spec: str, workers: int, timeout: float = 900.0) -> None:
        self.handler_spec = handler_spec
        self.handler = load_handler(handler_spec)
        self.timeout = timeout
        self.workers = WorkerPool(workers, "sssrd-local")
        self.calls = Calls()

    async def invoke(self, payload: bytes) -> None:
        self.workers.submit(functools.partial(self.fire_and_forget, payload))

    def start(self, payload: bytes) -> asyncio.Task[RenderEnded]:
        return self.calls.start(self.call(payload))

    async def call(self, payload: bytes) -> RenderEnded:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[RenderEnded] = loop.create_future()

        def settle(result: RenderEnded) -> None:
            if not ended.done():  # cancelled when the daemon stopped
                ended.set_result(result)

        def work() -> None:
            result = self.run(payload)
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(settle, result)

        self.workers.submit(work)
        return await ended

    def fire_and_forget(self, payload: bytes) -> None:
        self.run(payload)

    def run(self, payload: bytes) -> RenderEnded:
        event = json.loads(payload)  # the handler gets its own copy, as from Lambda's runtime
        context = LambdaContext(self.handler_spec, None, "local", self.timeout)
        try:
            self.handler(event, context)
        except Exception as error:
            log.exception("local handler %s failed", self.handler_spec)
            return RenderEnded(error_type=printable(type(error).__name__))
        return RenderEnded()

    def close(self) -> None:
        self.calls.close()
        self.workers.close()
