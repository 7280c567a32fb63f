"""What every invoker is: the `Invoker` interface, and `InvokeError` for a render not started.

An invoker has one coroutine, `invoke(payload)`, that returns once the render is accepted (like
Lambda's 202 for InvocationType=Event) or raises InvokeError saying what the viewer should get;
`close()` lets go of its threads and connections when the daemon stops.
"""

from __future__ import annotations

from typing import Protocol

from sssrd.outcomes import Outcome


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


class Invoker(Protocol):
    async def invoke(self, payload: bytes) -> None: ...

    def close(self) -> None: ...
