"""Token buckets per endpoint family, checked before any authentication, and per
client address for the endpoints an unauthenticated caller can make us store
something with (``/v1/challenge``).

Pure apart from the injected monotonic clock. Limits are per server worker
process (each worker has its own buckets).
"""

from __future__ import annotations

import ipaddress
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
        self.clock = clock
        self._buckets = {family: TokenBucket(rate, clock) for family, rate in rates.items()}

    def retry_after(self, family: str) -> int | None:
        """None when the request may pass; else whole seconds for ``Retry-After`` (>= 1)."""
        wait = self._buckets[family].take()
        return None if wait == 0.0 else max(1, math.ceil(wait))


# Buckets kept for this many addresses at most (least recently seen dropped first):
# a caller rotating through more addresses than this meets the family bucket only.
MAX_TRACKED_ADDRESSES = 100_000


def address_key(address: str) -> str:
    """One bucket per IPv4 address and per IPv6 /64 (one host usually holds a whole
    /64, so per-address IPv6 buckets would be no limit at all)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class PerAddressLimiter:
    def __init__(self, rate: Rate, clock: Clock,
                 max_tracked: int = MAX_TRACKED_ADDRESSES) -> None:
        self._rate = rate
        self._clock = clock
        self._max = max_tracked
        self._buckets: dict[str, TokenBucket] = {}

    def retry_after(self, address: str) -> int | None:
        """None when ``address`` may pass now; else whole seconds for ``Retry-After``."""
        key = address_key(address)
        bucket = self._buckets.pop(key, None) or TokenBucket(self._rate, self._clock)
        self._buckets[key] = bucket  # most recently seen last
        if len(self._buckets) > self._max:
            del self._buckets[next(iter(self._buckets))]
        wait = bucket.take()
        return None if wait == 0.0 else max(1, math.ceil(wait))
