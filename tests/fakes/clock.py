"""Virtual time for tests about a schedule: ``sleep`` advances the clock at once
and records what was asked, so backoff and rotation timing are asserted
exactly without waiting. ``FixedRng`` makes jitter a known fraction."""

from __future__ import annotations

import asyncio
import datetime as dt

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class FakeClock:
    """A ``meshcore.clock.Clock`` whose time moves only by ``sleep``/``advance``."""

    def __init__(self, start: dt.datetime = EPOCH) -> None:
        self.start = start
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.t)

    def monotonic(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(0.0, seconds)
        # Still a suspension point, as a real sleep is: other tasks run.
        await asyncio.sleep(0)


class FixedRng:
    """``uniform(a, b)`` is always ``a + fraction * (b - a)``."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.calls = 0

    def uniform(self, a: float, b: float) -> float:
        self.calls += 1
        return a + self.fraction * (b - a)
