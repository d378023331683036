"""Prometheus metrics of the registrar, in their own registry (no globals).

Decisions are counted in a small SQLite table. With one worker it lives in
memory; with several, every worker adds to one file, ``metrics/counts.db`` in
the state directory (``prepare_shared`` empties it in the supervisor before the
workers fork), so any worker's ``/metrics`` gives the sums over all of them.
Only prometheus-client's public collector API is used: a scrape reads the
table and yields metric families. Tokens outstanding is read from the
inventory at scrape time, so it is right in both modes.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from registrar.store.connection import STORE_ERRORS

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SHARED_FILE = "counts.db"

# Counters restart with the server, so a power cut losing the last few is fine:
# no fsync per request (synchronous=OFF); WAL lets a scrape read while others add.
_SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
CREATE TABLE IF NOT EXISTS decisions (
    operation TEXT NOT NULL, result TEXT NOT NULL, reason TEXT NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (operation, result, reason));
CREATE TABLE IF NOT EXISTS latency (
    operation TEXT NOT NULL, bucket INTEGER NOT NULL, count INTEGER NOT NULL,
    seconds REAL NOT NULL, PRIMARY KEY (operation, bucket));
"""


def prepare_shared(directory: Path) -> Path:
    """Call once in the supervisor, before forking workers: an empty shared table."""
    shutil.rmtree(directory, ignore_errors=True)  # counters restart with the server
    directory.mkdir(parents=True, mode=0o700)
    path = directory / SHARED_FILE
    _open(path).close()
    return path


def _open(path: Path | None) -> sqlite3.Connection:
    # A busy file (another worker adding) is waited for, briefly: the writes are tiny.
    conn = sqlite3.connect(":memory:" if path is None else str(path), timeout=5.0)
    conn.executescript(_SCHEMA)
    return conn


def _bucket(seconds: float) -> int:
    """Index of the first bucket bound >= seconds; len(BUCKETS) is +Inf."""
    return next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))


class _Counts(Collector):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("registrar_requests",
                                       "Decisions by operation, result and reason.",
                                       labels=["operation", "result", "reason"])
        for operation, result, reason, count in self._conn.execute(
                "SELECT operation, result, reason, count FROM decisions ORDER BY 1, 2, 3"):
            requests.add_metric([operation, result, reason], float(count))
        yield requests
        latency = HistogramMetricFamily("registrar_request_seconds",
                                        "Handling time by operation.", labels=["operation"])
        per_operation: dict[str, tuple[list[int], float]] = {}
        for operation, bucket, count, seconds in self._conn.execute(
                "SELECT operation, bucket, count, seconds FROM latency"):
            counts, total = per_operation.setdefault(operation, ([0] * (len(BUCKETS) + 1), 0.0))
            counts[bucket] += count
            per_operation[operation] = (counts, total + seconds)
        for operation, (counts, total) in sorted(per_operation.items()):
            cumulative, running = [], 0
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            latency.add_metric([operation], cumulative, sum_value=total)
        yield latency


class _TokensOutstanding(Collector):
    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> Iterator[Metric]:
        try:
            value = float(self._count())
        except STORE_ERRORS:  # a broken database must not take the other metrics along
            value = math.nan
        yield GaugeMetricFamily("registrar_tokens_outstanding",
                                "Join tokens that are neither spent, revoked nor expired "
                                "(NaN: the database cannot be read).", value=value)


class Metrics:
    """``shared``: the file from ``prepare_shared`` (several workers), else None."""

    def __init__(self, tokens_outstanding: Callable[[], int],
                 shared: Path | None = None) -> None:
        self._conn = _open(shared)
        self.registry = CollectorRegistry()
        self.registry.register(_Counts(self._conn))
        self.registry.register(_TokensOutstanding(tokens_outstanding))

    def decision(self, operation: str, reason: str | None, seconds: float) -> None:
        result = "ok" if reason is None else "rejected"
        with self._conn:  # BEGIN ... COMMIT: both rows or neither
            self._conn.execute(
                "INSERT INTO decisions VALUES (?, ?, ?, 1) "
                "ON CONFLICT (operation, result, reason) DO UPDATE "
                "SET count = count + 1", (operation, result, reason or ""))
            self._conn.execute(
                "INSERT INTO latency VALUES (?, ?, 1, ?) ON CONFLICT (operation, bucket) DO UPDATE "
                "SET count = count + 1, seconds = seconds + excluded.seconds",
                (operation, _bucket(seconds), seconds))

    def render(self) -> bytes:
        return generate_latest(self.registry)
