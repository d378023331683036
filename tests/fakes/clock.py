"""Virtual time for tests about a schedule: ``sleep`` advances the clock at once
and records what was asked, so backoff, rotation timing and rate limits are
asserted exactly without waiting. ``FixedRng`` makes jitter a known fraction.
Implements ``meshcore.clock.Clock``."""

from __future__ import annotations

import asyncio
import datetime as dt

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class FakeClock:
    """A clock whose time moves only by ``sleep``/``advance``.

    ``start`` is the wall-clock time at t=0, as a datetime or a Unix timestamp.
    """

    def __init__(self, start: dt.datetime | float = EPOCH, monotonic: float = 0.0) -> None:
        self.start = (start if isinstance(start, dt.datetime)
                      else dt.datetime.fromtimestamp(start, dt.UTC))
        self.t = 0.0  # seconds advanced so far
        self._mono0 = monotonic
        self.sleeps: list[float] = []

    @property
    def wall(self) -> float:
        """Wall-clock time as a Unix timestamp."""
        return self.start.timestamp() + self.t

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.t)

    def monotonic(self) -> float:
        return self._mono0 + self.t

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
