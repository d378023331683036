"""When to renew: a pure function of the certificate's validity, the
registrar's hint, the configured ratio and a jitter sample."""

from __future__ import annotations

import datetime as dt

# Never plan a renewal closer to expiry than this fraction of the lifetime:
# leaves room for retries even with renew_at=0.9 and positive jitter.
LATEST_FRACTION = 0.95


def renewal_time(not_before: dt.datetime, not_after: dt.datetime, *, ratio: float,
                 jitter: float, sample: float, hint: dt.datetime | None = None) -> dt.datetime:
    """The wall-clock moment to renew.

    ``ratio`` of the lifetime (0.5 = half-life), moved by ``jitter * sample``
    of itself, where ``sample`` is uniform in [-1, 1] (so fleets spread out
    instead of renewing in a herd). The registrar's ``hint`` lowers the
    base point when it is earlier than ours, never raises it.
    """
    if not -1.0 <= sample <= 1.0:
        raise ValueError("sample must be within [-1, 1]")
    lifetime = not_after - not_before
    base = lifetime * ratio
    if hint is not None and not_before < hint < not_before + base:
        base = hint - not_before
    offset = base * (1.0 + jitter * sample)
    return not_before + min(offset, lifetime * LATEST_FRACTION)


# The rate bound: renewals at least the larger of MIN_INTERVAL_FLOOR and
# MIN_INTERVAL_FRACTION of the lifetime apart. The floor itself is at most a
# quarter of the lifetime, so a short-lived certificate (a 20 s test TTL) can
# still renew in time; doubling on repeats stops at half the lifetime.
MIN_INTERVAL_FLOOR = 30.0
MIN_INTERVAL_FRACTION = 0.1


def min_interval(not_before: dt.datetime, not_after: dt.datetime, *, hurried: int = 0) -> float:
    """Seconds that must pass between two renewals (monotonic time), doubled for
    each of ``hurried`` renewals in a row that were due at once."""
    lifetime = max(0.0, (not_after - not_before).total_seconds())
    base = max(min(MIN_INTERVAL_FLOOR, lifetime / 4), lifetime * MIN_INTERVAL_FRACTION)
    return min(base * 2.0 ** min(hurried, 16), max(base, lifetime / 2))


def delay_until(moment: dt.datetime, now: dt.datetime) -> float:
    """Seconds from ``now`` to ``moment``, never negative."""
    return max(0.0, (moment - now).total_seconds())
