"""Time, injected: wall-clock time only for certificate validity, monotonic
time for scheduling, and a sleep that tests can replace."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """Wall-clock time, timezone-aware UTC (compare only with cert validity)."""
        ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


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
