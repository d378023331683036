"""Prometheus metrics of the registrar, in their own registries (no globals).

With one worker the counters live in this process. With several, each worker
writes its counters to files under ``multiprocess_dir`` (prometheus-client's
multiprocess mode, switched on by ``enable_multiprocess`` before the workers
fork) and any worker's ``/metrics`` sums them all. Tokens outstanding is read
from the inventory at scrape time, so it is right in both modes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess(directory: Path) -> None:
    """Call once in the supervisor, before forking workers and creating any metric."""
    shutil.rmtree(directory, ignore_errors=True)  # counters restart with the server
    directory.mkdir(parents=True, mode=0o700)
    os.environ[_ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class _TokensOutstanding(Collector):
    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("registrar_tokens_outstanding",
                                "Join tokens that are neither spent, revoked nor expired.",
                                value=float(self._count()))


class Metrics:
    def __init__(self, tokens_outstanding: Callable[[], int]) -> None:
        directory = os.environ.get(_ENV)
        own = CollectorRegistry()
        self.requests = Counter(
            "registrar_requests", "Decisions by operation, result and reason.",
            ["operation", "result", "reason"], registry=own)
        self.latency = Histogram(
            "registrar_request_seconds", "Handling time by operation.", ["operation"],
            buckets=_BUCKETS, registry=own)
        if directory:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=directory)  # type: ignore[no-untyped-call]
        else:
            self.registry = own
        self.registry.register(_TokensOutstanding(tokens_outstanding))

    def decision(self, operation: str, reason: str | None, seconds: float) -> None:
        self.requests.labels(operation, "ok" if reason is None else "rejected",
                             reason or "").inc()
        self.latency.labels(operation).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
