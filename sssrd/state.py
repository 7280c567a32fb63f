"""What every connection is handed: the daemon's shared services, never the Server itself.

The Server builds one ServerState and gives it to each connection it accepts (as uvicorn hands
its protocols a plain ServerState). Connections read the settings in force, register and claim
pending entries, invoke renders, borrow pipes and report to the tally through it; they never call
back up into the thing that built them. `settings` is replaced whole on SIGHUP and `draining`
turns true once when the daemon starts to stop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sssrd.config import Settings
from sssrd.handoff import ClaimedCallback
from sssrd.invokers import Invoker
from sssrd.pending import PendingRegistry
from sssrd.pipe import PipePool
from sssrd.tally import Tally


@dataclass(eq=False)
class ServerState:
    settings: Settings
    loop: asyncio.AbstractEventLoop
    pending: PendingRegistry[ClaimedCallback]
    invoker: Invoker
    pipes: PipePool
    tally: Tally
    callback_base: str  # where Lambdas call back: the configured or the discovered base URL
    draining: bool = False

    def current_settings(self) -> Settings:
        """The settings in force now: SIGHUP may replace them between two requests."""
        return self.settings
