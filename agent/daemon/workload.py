"""The workload's side of the mesh catalog, sequenced for the daemon.

After attestation the agent reads its group's settings (``GET
/v1/workload/settings``, mTLS with the workload certificate): the readiness
probe, the reporting interval, the DNS name table and whether the registrar
serves xDS. ``sidecar.mode: xds`` cannot start Envoy without them (the xDS port
is in them), so it waits for them as long as it takes (``wait_settings``,
capped backoff with jitter), saying why it is not ready meanwhile. Then, for
the agent's lifetime, it runs the probe and reports its addresses and health
(``POST /v1/workload/status``), and, with the DNS proxy on, re-reads the
settings every ``dns.refresh`` for its name table. A registrar without the workload API
(404) is remembered: nothing is reported, the sidecar stays static. With
``sidecar.mode: auto`` start-up asks once; when they cannot be read then,
``run`` keeps asking and starts reporting once they come.

Without a probe in the group the workload is healthy while the agent runs. A
probe the agent cannot parse counts as failing (never serve traffic it cannot
check), with the reason logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from agent.config.model import AgentConfig
from agent.dns.table import NameTable
from agent.health.reporter import HealthReporter
from agent.health.runners import Runner, run_probe
from agent.health.spec import ProbeSpec, ProbeSpecError, parse_probe
from agent.identity.host import local_host_info
from agent.registrar_client.client import RegistrarClient
from agent.registrar_client.errors import RegistrarError
from agent.registrar_client.workload import WorkloadSettings
from agent.rotation.retry import backoff
from meshcore.clock import Clock, Rng, system_rng

log = logging.getLogger(__name__)
# Waiting for the settings at start (xds mode): 1 s doubling to 15 s, so a
# registrar that comes back is seen within 15 s and a fleet does not retry in step.
WAIT_MIN_BACKOFF, WAIT_MAX_BACKOFF = 1.0, 15.0


async def _always(spec: ProbeSpec) -> bool:
    return True


async def _never(spec: ProbeSpec) -> bool:
    return False


class Workload:
    def __init__(self, config: AgentConfig, client: Callable[[], RegistrarClient] | None,
                 clock: Clock, *, addresses: Callable[[], list[str]] | None = None,
                 rng: Rng | None = None) -> None:
        """``client`` None: no workload API (Istio mode: istiod has none)."""
        self._config = config
        self._client: Callable[[], RegistrarClient] = client or _no_client
        self._clock = clock
        self._rng = rng or system_rng()
        self._addresses = addresses or (lambda: local_host_info()[1])
        self._current = config.state_dir / "credentials" / "current"
        self.settings: WorkloadSettings | None = None
        # False once the registrar answered 404, or from the start without a registrar.
        self.available = client is not None
        self.names = NameTable()
        self.reporter: HealthReporter | None = None

    def _cert(self) -> dict[str, Path]:
        # ``current`` follows every renewal, so each call presents the live certificate.
        return {"chain_file": self._current / "cert-chain.pem",
                "key_file": self._current / "key.pem"}

    async def fetch(self) -> WorkloadSettings | None:
        """The settings, or None when the registrar has no workload API or cannot
        be reached now (one try; the caller decides what that means)."""
        try:
            return await self._fetch_once()
        except RegistrarError as exc:
            log.warning("workload settings: %s", exc)
            return None

    async def wait_settings(self, waiting: Callable[[str], None]) -> WorkloadSettings | None:
        """The settings, however long the registrar takes to answer; None only when
        it has no workload API. ``waiting`` is told each failure (for status)."""
        attempt = 0
        while True:
            try:
                return await self._fetch_once()
            except RegistrarError as exc:
                attempt += 1
                wait = backoff(attempt, min_backoff=WAIT_MIN_BACKOFF,
                               max_backoff=WAIT_MAX_BACKOFF, rng=self._rng)
                log.warning("workload settings (attempt %d, next in %.1fs): %s",
                            attempt, wait, exc)
                waiting(str(exc))
                await self._clock.sleep(wait)

    async def _fetch_once(self) -> WorkloadSettings | None:
        if not self.available:
            return None
        try:
            self.settings = await self._client().workload_settings(**self._cert())
        except RegistrarError as exc:
            if exc.status != 404:
                raise
            log.info("the registrar has no workload API; not reporting health")
            self.available = False
            return None
        self.names.update(self.settings.names)
        return self.settings

    def _reporter(self, settings: WorkloadSettings) -> HealthReporter:
        runner: Runner = run_probe
        if settings.probe is None:
            spec, runner = ProbeSpec("none", period=settings.report_interval), _always
        else:
            try:
                spec = parse_probe(settings.probe)
            except ProbeSpecError as exc:
                log.error("the group's readiness probe is invalid, reporting unhealthy: %s",
                          exc, extra={"reason": exc.reason})
                spec, runner = ProbeSpec("invalid", period=settings.report_interval), _never
        return HealthReporter(spec, self._report, self._clock,
                              report_interval=settings.report_interval, runner=runner)

    async def _report(self, health: str) -> None:
        addresses = await asyncio.to_thread(self._addresses)
        await self._client().workload_status(addresses=addresses, health=health, **self._cert())

    async def run(self) -> None:
        """Probe and report, and keep the name table fresh; returns at once when
        neither is wanted or the registrar has no workload API."""
        wanted = self._config.workload.report or self._config.dns.enabled
        while wanted and self.settings is None and self.available:
            await self._clock.sleep(self._config.dns.refresh)
            await self.fetch()
        if not wanted or self.settings is None:
            return
        async with asyncio.TaskGroup() as group:
            if self._config.workload.report:
                self.reporter = self._reporter(self.settings)
                group.create_task(self.reporter.run())
            if self._config.dns.enabled:
                # Only the DNS proxy's name table follows the refreshed settings (the
                # probe and the report interval are read once): without it, a
                # refresh would be a registrar call every dns.refresh for nothing.
                group.create_task(self._refresh())

    async def _refresh(self) -> None:
        while True:
            await self._clock.sleep(self._config.dns.refresh)
            try:
                settings = await self._client().workload_settings(**self._cert())
            except RegistrarError as exc:
                log.warning("workload settings refresh failed, keeping the last: %s", exc)
                continue
            if self.names.update(settings.names):
                log.info("mesh name table: %d names", len(settings.names))
            self.settings = settings

    async def drain(self) -> None:
        """Report ``draining`` and give callers ``drain_wait`` to stop sending."""
        if self.reporter is None:
            return
        await self.reporter.drain()
        log.info("reported draining; waiting %gs before capture goes off",
                 self._config.workload.drain_wait)
        await asyncio.sleep(self._config.workload.drain_wait)


def _no_client() -> RegistrarClient:
    raise RuntimeError("no workload API without a registrar")  # guarded by ``available``
