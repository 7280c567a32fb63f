"""The local invoker: runs a Python render handler in-process, as an Event invoke would.

For `sssrd dev` and the tests. The handler is called as Lambda's Python runtime calls it (its
own copy of the event, a context object) on a bounded pool of worker threads, fire and forget;
it calls back over real HTTP like a deployed render.
"""

from __future__ import annotations

import functools
import json
import logging

from sssrd.invokers.runtime import LambdaContext, WorkerPool, load_handler

log = logging.getLogger("sssrd")


class LocalInvoker:
    """Runs `module:function` on worker threads; invokes beyond `workers` queue up."""

    def __init__(self, handler_spec: str, workers: int, timeout: float = 900.0) -> None:
        self.handler_spec = handler_spec
        self.handler = load_handler(handler_spec)
        self.timeout = timeout
        self.workers = WorkerPool(workers, "sssrd-local")

    async def invoke(self, payload: bytes) -> None:
        self.workers.submit(functools.partial(self.run, payload))

    def run(self, payload: bytes) -> None:
        event = json.loads(payload)  # the handler gets its own copy, as from Lambda's runtime
        context = LambdaContext(self.handler_spec, None, "local", self.timeout)
        try:
            self.handler(event, context)
        except Exception:
            log.exception("local handler %s failed", self.handler_spec)

    def close(self) -> None:
        self.workers.close()
