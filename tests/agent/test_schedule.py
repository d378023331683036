"""When to renew: a pure function, table-tested."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.rotation.schedule import delay_until, min_interval, renewal_time

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(hours=24)


@pytest.mark.parametrize(("ratio", "jitter", "sample", "expected_hours"), [
    (0.5, 0.1, 0.0, 12.0),
    (0.5, 0.1, 1.0, 13.2),
    (0.5, 0.1, -1.0, 10.8),
    (0.66, 0.0, 0.7, 15.84),
    (0.9, 0.25, 1.0, 22.8),  # capped at 95 % of the lifetime
])
def test_renewal_point(ratio: float, jitter: float, sample: float, expected_hours: float) -> None:
    when = renewal_time(T0, T0 + DAY, ratio=ratio, jitter=jitter, sample=sample)
    assert (when - T0).total_seconds() == pytest.approx(expected_hours * 3600)


def test_registrar_hint_only_moves_renewal_earlier() -> None:
    early = T0 + dt.timedelta(hours=6)
    late = T0 + dt.timedelta(hours=20)
    assert renewal_time(T0, T0 + DAY, ratio=0.5, jitter=0, sample=0, hint=early) == early
    assert renewal_time(T0, T0 + DAY, ratio=0.5, jitter=0, sample=0, hint=late) == T0 + DAY / 2


def test_jitter_spreads_a_fleet() -> None:
    points = {renewal_time(T0, T0 + DAY, ratio=0.5, jitter=0.1, sample=s / 10)
              for s in range(-10, 11)}
    assert len(points) == 21


def test_sample_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        renewal_time(T0, T0 + DAY, ratio=0.5, jitter=0.1, sample=1.5)


def test_delay_is_never_negative() -> None:
    assert delay_until(T0, T0 + DAY) == 0.0
    assert delay_until(T0 + DAY, T0) == 86400.0


@pytest.mark.parametrize(("lifetime", "hurried", "gap"), [
    (3600, 0, 360.0),   # a tenth of the lifetime
    (200, 0, 30.0),     # the 30 s floor
    (70, 0, 17.5),      # the floor capped at a quarter of a short lifetime
    (22, 0, 5.5),
    (3600, 1, 720.0),   # doubling when due again at once...
    (3600, 9, 1800.0),  # ...up to half the lifetime
])
def test_min_interval_between_renewals(lifetime: float, hurried: int, gap: float) -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    end = start + dt.timedelta(seconds=lifetime)
    assert min_interval(start, end, hurried=hurried) == pytest.approx(gap)
