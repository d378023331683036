"""Pure: probe results in, health out (Kubernetes' threshold semantics).

A workload starts ``unhealthy`` (not yet ready) and becomes ``healthy`` after
``successThreshold`` consecutive successes; a healthy one turns ``unhealthy``
after ``failureThreshold`` consecutive failures. ``draining`` is final: once
the agent is stopping, no probe result can make it healthy again.
"""

from __future__ import annotations

from dataclasses import dataclass

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
DRAINING = "draining"


@dataclass
class Readiness:
    success_threshold: int
    failure_threshold: int
    health: str = UNHEALTHY
    successes: int = 0
    failures: int = 0

    def observe(self, ok: bool) -> str | None:
        """Record one probe result; the new health when it changed, else None."""
        if self.health == DRAINING:
            return None
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.health != HEALTHY and self.successes >= self.success_threshold:
                self.health = HEALTHY
                return HEALTHY
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.health != UNHEALTHY and self.failures >= self.failure_threshold:
                self.health = UNHEALTHY
                return UNHEALTHY
        return None

    def drain(self) -> str | None:
        if self.health == DRAINING:
            return None
        self.health = DRAINING
        return DRAINING
