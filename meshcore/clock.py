"""Time and jitter, injected: wall-clock time only for certificate validity
(and timestamps shown to operators), monotonic time for scheduling, a sleep
and a random source that tests replace (``tests/fakes/clock.py``).

Deadlines on real I/O (a subprocess, a socket, a lock held by another
process's real work) stay on the event loop's own clock (``asyncio.timeout``):
a virtual clock must not expire them early.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Awaitable
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """Wall-clock time, timezone-aware UTC (compare only with cert validity)."""
        ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class Rng(Protocol):
    """Where jitter comes from; ``random.Random`` is one."""

    def uniform(self, a: float, b: float) -> float: ...


def system_rng() -> Rng:
    """Jitter spreads a fleet out; it guards no secret, so no CSPRNG is needed."""
    return random.Random()  # noqa: S311


async def sleep_unless(sleep: Awaitable[None], wake: asyncio.Event) -> bool:
    """Await ``sleep`` unless ``wake`` is set first; True when woken."""
    sleeper = asyncio.ensure_future(sleep)
    waker = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()
    return wake.is_set()


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
