"""A clock for tests: time moves only when the test says so (``advance``), and
sleeps take no real time. Implements ``meshcore.clock.Clock``."""

from __future__ import annotations

import datetime as dt


class FakeClock:
    def __init__(self, wall: float = 1_800_000_000.0, monotonic: float = 1000.0) -> None:
        self.wall = wall
        self.mono = monotonic
        self.sleeps: list[float] = []

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.wall, dt.UTC)

    def monotonic(self) -> float:
        return self.mono

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
