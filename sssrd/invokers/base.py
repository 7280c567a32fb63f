"""What every invoker is: the `Invoker` interface, `InvokeError` for a render not started, and
`RenderEnded` for how a synchronously invoked render ended.

An invoker starts renders one of two ways, as `invocation_type` says. `invoke(payload)` (Event)
returns once the render is accepted (Lambda's 202) or raises InvokeError saying what the viewer
should get. `start(payload)` (RequestResponse) returns at once a task that ends when the render
does: with a RenderEnded, or with InvokeError if it never started. The invoker owns those tasks
(`Calls`): a render may outlive its request (it returns just after its stream was delivered),
and `close()` must still end it, with the threads and connections the invoker holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from sssrd.outcomes import Outcome

# Lambda's error type for a function that ran out of time (its message says "Task timed out").
TIMED_OUT_ERROR_TYPE = "Sandbox.Timedout"


class InvokeError(Exception):
    """The render could not be started; status/outcome/retry_after tell the viewer's answer.

    `message` is for the viewer and says nothing about the AWS account; `detail` (AWS's error
    type and message) goes to the access log only.
    """

    def __init__(
        self, status: int, outcome: Outcome, message: str, retry_after: int = 0, detail: str = ""
    ) -> None:
        super().__init__(detail or message)
        self.status = status
        self.outcome = outcome
        self.message = message
        self.retry_after = retry_after
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RenderEnded:
    """How a synchronously invoked render ended: it returned (`error_type` empty), raised
    (the function's error type, printable ASCII; never its message), or ran out of time."""

    error_type: str = ""
    timed_out: bool = False


class Calls:
    """The synchronous invokes in flight of one invoker, each a task it owns until it ends."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[RenderEnded]] = set()

    def start(self, call: Coroutine[Any, Any, RenderEnded]) -> asyncio.Task[RenderEnded]:
        task = asyncio.get_running_loop().create_task(call)
        self.tasks.add(task)
        task.add_done_callback(self.ended)
        return task

    def ended(self, task: asyncio.Task[RenderEnded]) -> None:
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a render that outlived its request needs no answer

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()


class Invoker(Protocol):
    async def invoke(self, payload: bytes) -> None: ...

    def start(self, payload: bytes) -> asyncio.Task[RenderEnded]: ...

    def close(self) -> None: ...


# The longest error type sssrd keeps, from an error report or an invoke's answer (the helpers
# cut theirs to the same length).
MAX_ERROR_TYPE_CHARS = 128


def printable(text: str, limit: int = MAX_ERROR_TYPE_CHARS) -> str:
    """An error type as it may appear in a log line: printable ASCII, at most `limit` long."""
    return "".join(char if " " <= char <= "~" else "?" for char in text[:limit])
