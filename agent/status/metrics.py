"""Prometheus metrics computed from one health ``Snapshot`` at scrape time (no double
bookkeeping)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.status.health import Snapshot


class HealthCollector:
    def __init__(self, health: Snapshot, now: dt.datetime) -> None:
        self._health = health
        self._now = now

    def collect(self) -> Iterator[Metric]:
        health, now = self._health, self._now
        expires = GaugeMetricFamily(
            "mesh_agent_cert_expiry_seconds", "Seconds until the workload certificate expires")
        remaining = health.expires_in(now)
        if remaining is not None:
            expires.add_metric([], remaining)
        yield expires
        yield CounterMetricFamily("mesh_agent_rotations", "Certificates renewed",
                                  value=health.rotations)
        failures = CounterMetricFamily("mesh_agent_failures",
                                       "Failed attest/renew attempts by reason", labels=["reason"])
        for reason, count in sorted(health.failures.items()):
            failures.add_metric([reason], count)
        yield failures
        last = GaugeMetricFamily("mesh_agent_last_success_timestamp_seconds",
                                 "Unix time of the last successful issue or renewal")
        if health.last_success is not None:
            last.add_metric([], health.last_success.timestamp())
        yield last
        offset = GaugeMetricFamily(
            "mesh_agent_clock_offset_seconds",
            "The registrar's clock minus this host's, from its last answer (absent until then)")
        if health.clock_offset is not None:
            offset.add_metric([], health.clock_offset)
        yield offset
        yield GaugeMetricFamily("mesh_agent_clock_skew",
                                "1 when the clock offset is beyond the skew threshold",
                                value=1.0 if health.clock_skewed else 0.0)
        yield GaugeMetricFamily("mesh_agent_ready", "1 when the agent is ready",
                                value=1.0 if health.ready(now) else 0.0)


def render(health: Snapshot, now: dt.datetime) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HealthCollector(health, now))
    return bytes(generate_latest(registry))
