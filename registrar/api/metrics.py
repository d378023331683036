"""Prometheus metrics of one server worker, in its own registry (no globals)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, tokens_outstanding: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "registrar_requests", "Decisions by operation, result and reason.",
            ["operation", "result", "reason"], registry=self.registry)
        self.latency = Histogram(
            "registrar_request_seconds", "Handling time by operation.", ["operation"],
            buckets=_BUCKETS, registry=self.registry)
        outstanding = Gauge("registrar_tokens_outstanding",
                            "Join tokens that are neither spent, revoked nor expired.",
                            registry=self.registry)
        outstanding.set_function(lambda: float(tokens_outstanding()))

    def decision(self, operation: str, reason: str | None, seconds: float) -> None:
        self.requests.labels(operation, "ok" if reason is None else "rejected",
                             reason or "").inc()
        self.latency.labels(operation).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
