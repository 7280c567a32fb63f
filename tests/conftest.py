"""Shared fixtures: one conductor and one default daemon per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import Conductor, Daemon, daemon


@pytest.fixture(scope="module")
def conductor() -> Iterator[Conductor]:
    running = Conductor()
    yield running
    running.close()


@pytest.fixture(scope="module")
def sssrd(conductor: Conductor) -> Iterator[Daemon]:
    with daemon(conductor) as running:
        yield running
