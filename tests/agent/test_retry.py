"""The retry policy: retries only passing faults, honours Retry-After, stops at
the deadline; runs here with a clock whose sleeps take no real time."""

from __future__ import annotations

import asyncio

import pytest

from agent.attest.base import AttestError
from agent.registrar_client.errors import RegistrarError
from agent.rotation.retry import backoff, policy
from tests.fakes.clock import FakeClock, FixedRng


def run(clock: FakeClock, errors: list[BaseException], *, deadline: float | None,
        max_backoff: float = 120.0,
        rng: FixedRng | None = None) -> tuple[int, BaseException | None]:
    calls = 0
    seen: list[BaseException] = []

    async def go() -> None:
        nonlocal calls
        async for attempt in policy(clock=clock, rng=rng or FixedRng(0.5), min_backoff=1.0,
                                    max_backoff=max_backoff,
                                    deadline=deadline, on_failure=seen.append):
            with attempt:
                calls += 1
                if errors:
                    raise errors.pop(0)

    try:
        asyncio.run(go())
    except BaseException as exc:
        return calls, exc
    return calls, None


def retry_error(after: float | None = None) -> RegistrarError:
    return RegistrarError("retry", "unreachable", "down", url="https://r", retry_after=after)


def test_passing_faults_are_retried_until_success() -> None:
    clock = FakeClock()
    calls, exc = run(clock, [retry_error(), retry_error(), AttestError("slow", retryable=True)],
                     deadline=None)
    assert exc is None and calls == 4
    assert all(s <= 120 for s in clock.sleeps)


@pytest.mark.parametrize("error", [
    RegistrarError("fatal", "token_spent", "spent", url="https://r"),
    RegistrarError("reattest", "identity_evicted", "evicted", url="https://r"),
    AttestError("no token", retryable=False),
])
def test_non_retryable_errors_are_raised_at_once(error: BaseException) -> None:
    calls, exc = run(FakeClock(), [error], deadline=None)
    assert calls == 1 and exc is error


def test_backoff_is_capped() -> None:
    clock = FakeClock()
    run(clock, [retry_error() for _ in range(12)], deadline=None, max_backoff=5.0)
    assert max(clock.sleeps) <= 5.0
    assert clock.sleeps[-1] >= 4.0  # it really grew to the cap


def test_retry_after_is_honoured_beyond_the_backoff() -> None:
    clock = FakeClock()
    run(clock, [retry_error(after=30)], deadline=None, max_backoff=5.0, rng=FixedRng(0.25))
    assert clock.sleeps == [30.25]  # Retry-After plus the injected jitter (0.25 of 1 s)


def test_jitter_comes_from_the_injected_rng() -> None:
    """Doubling from min_backoff plus up to min_backoff of jitter, capped; with a
    pinned RNG the whole schedule is exact."""
    for fraction, expected in ((0.0, [1.0, 2.0, 4.0, 5.0]), (1.0, [2.0, 3.0, 5.0, 5.0])):
        clock = FakeClock()
        rng = FixedRng(fraction)
        run(clock, [retry_error() for _ in range(4)], deadline=None, max_backoff=5.0, rng=rng)
        assert clock.sleeps == expected
        assert rng.calls == 4
    assert backoff(200, min_backoff=1.0, max_backoff=5.0, rng=FixedRng(1.0)) == 5.0


def test_stops_at_the_deadline() -> None:
    clock = FakeClock()
    errors = [retry_error() for _ in range(1000)]
    calls, exc = run(clock, errors, deadline=300.0)
    assert isinstance(exc, RegistrarError)
    assert clock.t == pytest.approx(300.0)
    assert 3 < calls < 100


@pytest.mark.parametrize("action", ["fatal", "retry", None, "bogus"])
def test_superseded_always_means_reattest(action: str | None) -> None:
    """Renewing with a superseded certificate can never work, whatever the body says:
    the agent re-attests (or exits 79), it neither retries nor gives up as fatal."""
    import json

    from agent.registrar_client.errors import from_response
    from agent.registrar_client.http import Response
    body: dict[str, object] = {"reason": "certificate_superseded", "message": "newer exists"}
    if action is not None:
        body["action"] = action
    response = Response(403, {}, json.dumps(body).encode(), "https://r.example/v1/renew")
    error = from_response(response)
    assert (error.action, error.reason, error.status) == ("reattest", "certificate_superseded",
                                                          403)
