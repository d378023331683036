"""The one retry policy for registrar calls (tenacity): it names what it retries
on, backs off exponentially with jitter up to ``max_backoff``, honours the
registrar's Retry-After, and is bounded by a monotonic deadline (the
certificate's expiry) as well as by what the error says."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.attest.base import AttestError
from agent.identity.keygen import KeygenError
from agent.registrar_client.errors import RegistrarError
from meshcore.clock import Clock, Rng

if TYPE_CHECKING:
    from tenacity import AsyncRetrying, RetryCallState

log = logging.getLogger(__name__)


def retryable(exc: BaseException) -> bool:
    """Only passing faults are retried; reattest/fatal answers never are."""
    if isinstance(exc, RegistrarError):
        return exc.action == "retry"
    if isinstance(exc, AttestError):
        return exc.retryable
    # A key helper that could not run (no memory for a fork): try again; a kept key
    # that is not a key never reaches here (AttestKey makes a new one).
    return isinstance(exc, KeygenError)


def backoff(attempt: int, *, min_backoff: float, max_backoff: float, rng: Rng) -> float:
    """``min_backoff`` doubled per attempt plus up to ``min_backoff`` of jitter,
    capped at ``max_backoff`` (tenacity's own jitter draws from the global
    ``random``, which a test cannot pin)."""
    grown = min_backoff * 2.0 ** min(attempt - 1, 64)
    return min(max_backoff, grown + rng.uniform(0.0, min_backoff))


def policy(*, clock: Clock, rng: Rng, min_backoff: float, max_backoff: float,
           deadline: float | None, on_failure: Callable[[BaseException], None]) -> AsyncRetrying:
    """Retry ``retryable`` failures until success or ``deadline`` (monotonic seconds).

    tenacity is imported here, at the first attestation or renewal: an agent
    restarting on stored credentials is READY without loading it."""
    from tenacity import AsyncRetrying, retry_if_exception
    from tenacity.wait import wait_base

    class _Wait(wait_base):
        def __call__(self, retry_state: RetryCallState) -> float:
            wait = backoff(retry_state.attempt_number, min_backoff=min_backoff,
                           max_backoff=max_backoff, rng=rng)
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            if isinstance(exc, RegistrarError) and exc.retry_after is not None:
                # Honour the server; a little jitter so a herd told "5" doesn't return
                # together.
                wait = max(wait, exc.retry_after + rng.uniform(0.0, 1.0))
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - clock.monotonic()))
            return wait

    def stop(retry_state: RetryCallState) -> bool:
        return deadline is not None and clock.monotonic() >= deadline

    def before_sleep(retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if exc is not None:
            on_failure(exc)
            log.warning("registrar call failed; retrying",
                        extra={"error": str(exc), "attempt": retry_state.attempt_number,
                               "retry_in_seconds": round(retry_state.upcoming_sleep, 2)})

    return AsyncRetrying(
        retry=retry_if_exception(retryable),
        wait=_Wait(),
        stop=stop,
        sleep=clock.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
