"""The probe loop and the health reports, on an injected clock.

Every ``periodSeconds`` one probe attempt feeds the ``Readiness`` state
machine; a change is reported at once, and the current health is re-reported
at least every ``report_interval`` (the registrar marks a silent VM
unhealthy after its grace period). A failed report is retried on the next
tick and never changes the local state. ``drain()`` reports ``draining`` and
stops probing: it is the first step of a graceful stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from agent.health.runners import Runner, run_probe
from agent.health.spec import ProbeSpec
from agent.health.state import DRAINING, Readiness
from meshcore.clock import Clock, sleep_unless

log = logging.getLogger(__name__)
Report = Callable[[str], Awaitable[None]]  # health -> registrar; raises on failure


class HealthReporter:
    def __init__(self, spec: ProbeSpec, report: Report, clock: Clock, *,
                 report_interval: float, runner: Runner = run_probe) -> None:
        self.spec = spec
        self.readiness = Readiness(spec.success_threshold, spec.failure_threshold)
        self._report = report
        self._clock = clock
        self._runner = runner
        self.report_interval = report_interval
        self._reported: str | None = None
        self._last_report = float("-inf")
        self._stop = asyncio.Event()
        self.changes: list[tuple[float, str]] = []  # (monotonic, health): status and tests

    @property
    def health(self) -> str:
        return self.readiness.health

    async def _send(self) -> None:
        health = self.readiness.health
        try:
            await self._report(health)
        except Exception as exc:
            log.warning("health report %s failed, will retry: %s", health, exc)
            return
        if health != self._reported:
            log.info("health reported: %s", health)
        self._reported, self._last_report = health, self._clock.monotonic()

    async def tick(self) -> None:
        """One probe attempt, then a report if health changed or one is due."""
        ok = await self._runner(self.spec)
        changed = self.readiness.observe(ok)
        if changed is not None:
            self.changes.append((self._clock.monotonic(), changed))
            log.info("readiness probe (%s): %s", self.spec.kind, changed)
        due = self._clock.monotonic() - self._last_report >= self.report_interval
        if self.readiness.health != DRAINING and (self.health != self._reported or due):
            await self._send()

    async def run(self) -> None:
        """Probe until ``drain()``; the first attempt is immediate."""
        while not self._stop.is_set():
            await self.tick()
            if await sleep_unless(self._clock.sleep(self.spec.period), self._stop):
                return

    async def drain(self) -> None:
        """Stop probing and tell the registrar at once, so callers stop sending."""
        self._stop.set()
        if self.readiness.drain() is not None:
            self.changes.append((self._clock.monotonic(), DRAINING))
        await self._send()
