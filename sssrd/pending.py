"""Pending requests: the rendezvous between a waiting viewer and its Lambda's callback.

Each viewer request registers an entry (128-bit random id) before the Lambda is invoked. The
callback token is HMAC-SHA256(process secret, id), so it is checked in constant time without any
lookup and the id alone (which appears in logs and headers) grants nothing. An entry's `delivery`
future is resolved exactly once: with the claiming callback's stream, or with the reason the wait
ended (deadline, viewer gone). That single future is what makes a callback claim-once. Finished ids
are remembered in a bounded table so a late or repeated callback learns why it was refused.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from sssrd.outcomes import Outcome, Rejected

ID_BYTES = 16
ID_LENGTH = ID_BYTES * 2  # hex


class Rejection(Exception):
    """Why a callback was refused; status is what the Lambda is answered."""

    def __init__(self, status: int, reason: Rejected, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class PendingFull(Exception):
    """The registry holds max_pending entries: shed this request."""


class WaitEnded(Exception):
    """Set on a delivery future when the viewer side stops waiting, saying why."""

    def __init__(self, reason: Outcome) -> None:
        super().__init__(reason)
        self.reason = reason


# Why a finished entry's id can no longer be claimed, as told to a callback that tries; any
# other outcome means the request failed.
GONE_MESSAGES = {
    Outcome.LATE: "the callback deadline passed",
    Outcome.VIEWER_ABORT: "the viewer disconnected before the callback",
    Outcome.DELIVERED: "this request was already answered",
    Outcome.FAILED: "this request has already failed",
}


@dataclass(eq=False, slots=True)
class Pending:
    request_id: str
    token: str
    deadline: float  # loop.time()
    deadline_epoch_ms: int
    delivery: asyncio.Future[Any]
    claimed: bool = False
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def end_wait(self, reason: Outcome) -> None:
        """Stop waiting for a callback (deadline, viewer gone); no-op once a callback claimed."""
        if not self.delivery.done():
            self.delivery.set_exception(WaitEnded(reason))
            # The viewer side always retrieves it; mark it so asyncio never warns when it didn't.
            self.delivery.exception()


class PendingRegistry:
    """Owns every pending entry, the process secret, and the record of finished ids."""

    def __init__(self, max_pending: int, remembered: int = 65_536) -> None:
        self._secret = secrets.token_bytes(32)
        self._entries: dict[str, Pending] = {}
        self._finished: OrderedDict[str, Outcome] = OrderedDict()
        self._max_pending = max_pending
        self._remembered = remembered

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def waiting(self) -> int:
        """Entries registered but not yet claimed by a callback."""
        return sum(1 for entry in self._entries.values() if not entry.claimed)

    def set_limit(self, max_pending: int) -> None:
        self._max_pending = max_pending

    def token_for(self, request_id: str) -> str:
        digest = hmac.digest(self._secret, request_id.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def register(self, loop: asyncio.AbstractEventLoop, timeout: float, now_ms: int) -> Pending:
        """A new entry whose deadline timer ends the wait after `timeout` seconds."""
        if len(self._entries) >= self._max_pending:
            raise PendingFull
        request_id = secrets.token_hex(ID_BYTES)
        entry = Pending(
            request_id=request_id,
            token=self.token_for(request_id),
            deadline=loop.time() + timeout,
            deadline_epoch_ms=now_ms + int(timeout * 1000),
            delivery=loop.create_future(),
        )
        entry.timer = loop.call_at(entry.deadline, entry.end_wait, Outcome.LATE)
        self._entries[request_id] = entry
        return entry

    def authenticate(self, request_id: str, token: str | None, tokenless: bool = False) -> None:
        """Check that `token` is the capability for `request_id`; raises Rejection (404, 401)
        otherwise. Claiming checks it too; a callback that reads a body before it claims checks
        it first, so that no unauthenticated body is ever parsed."""
        if len(request_id) != ID_LENGTH or not all(c in "0123456789abcdef" for c in request_id):
            raise Rejection(404, Rejected.UNKNOWN, "no such callback")
        # Compared as bytes: compare_digest refuses str with non-ASCII characters (TypeError).
        if not tokenless and (
            token is None
            or not hmac.compare_digest(token.encode(), self.token_for(request_id).encode())
        ):
            raise Rejection(401, Rejected.BAD_TOKEN, "missing or invalid callback token")

    def claim(
        self, request_id: str, token: str | None, stream: object, tokenless: bool = False
    ) -> Pending:
        """Hand `stream` to the waiting viewer, once; raises Rejection otherwise.

        `tokenless` is for the seed protocol (compat mode), where the unguessable id is the
        only capability.
        """
        self.authenticate(request_id, token, tokenless)
        entry = self._entries.get(request_id)
        if entry is None:
            why = self._finished.get(request_id, Outcome.LATE)
            reason = Rejected.DUPLICATE if why == Outcome.DELIVERED else Rejected.LATE
            raise Rejection(410, reason, GONE_MESSAGES.get(why, GONE_MESSAGES[Outcome.LATE]))
        if entry.claimed:
            message = "another callback is already streaming this request"
            raise Rejection(409, Rejected.DUPLICATE, message)
        if entry.delivery.done():  # the wait ended in this same loop iteration
            ended = entry.delivery.exception()
            why = ended.reason if isinstance(ended, WaitEnded) else Outcome.LATE
            raise Rejection(410, Rejected.LATE, GONE_MESSAGES.get(why, ""))
        entry.claimed = True
        entry.delivery.set_result(stream)
        return entry

    def release(self, entry: Pending, outcome: Outcome) -> None:
        """Forget an entry (every exit path calls this exactly once) and remember how its
        request ended."""
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.end_wait(outcome)
        if self._entries.pop(entry.request_id, None) is not None:
            self._finished[entry.request_id] = outcome
            while len(self._finished) > self._remembered:
                self._finished.popitem(last=False)
