"""Token buckets per endpoint family, checked before any authentication.

Pure apart from the injected monotonic clock. Limits are per server worker
process (each worker has its own buckets).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from meshcore.clock import Clock
from registrar.config import Rate


class TokenBucket:
    def __init__(self, rate: Rate, clock: Clock) -> None:
        self._rate = rate.per_second
        self._burst = float(rate.burst)
        self._level = float(rate.burst)
        self._clock = clock
        self._stamp = clock.monotonic()

    def take(self) -> float:
        """0.0 if a request may pass now, else the seconds until one may."""
        now = self._clock.monotonic()
        self._level = min(self._burst, self._level + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._level >= 1.0:
            self._level -= 1.0
            return 0.0
        return (1.0 - self._level) / self._rate


class RateLimiter:
    def __init__(self, rates: Mapping[str, Rate],
                 clock: Clock) -> None:
        self._buckets = {family: TokenBucket(rate, clock) for family, rate in rates.items()}

    def retry_after(self, family: str) -> int | None:
        """None when the request may pass; else whole seconds for ``Retry-After`` (>= 1)."""
        wait = self._buckets[family].take()
        return None if wait == 0.0 else max(1, math.ceil(wait))
