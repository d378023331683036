"""Prometheus metrics of the registrar, in their own registry (no globals).

Decisions are counted in a small SQLite table. With one worker it lives in
memory; with several, every worker adds to one file, ``counts.db`` in a
directory the supervisor makes for itself before the workers fork
(``make_shared``: under the runtime directory systemd gives the service, else
the temporary directory; removed at exit), so any worker's ``/metrics`` gives
the sums over all of them. Not in the state directory: that may be a read-only
mount shared by replicas, which must not reset each other's counters.
Only prometheus-client's public collector API is used: a scrape reads the
table and yields metric families. Tokens outstanding is read from the
inventory at scrape time, so it is right in both modes.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sqlite3
import tempfile
import time
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

log = logging.getLogger("registrar.metrics")
FLUSH_SECONDS = 1.0
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
    """An empty shared table in ``directory`` (made 0700; emptied if it exists)."""
    shutil.rmtree(directory, ignore_errors=True)  # counters restart with the server
    directory.mkdir(parents=True, mode=0o700)
    path = directory / SHARED_FILE
    _open(path).close()
    return path


def make_shared() -> Path:
    """Call once in the supervisor, before forking workers: an empty shared table in
    a new directory of its own, under ``$RUNTIME_DIRECTORY`` (systemd's
    RuntimeDirectory=, emptied when the service stops) or the temporary directory.
    The caller removes ``path.parent`` at exit."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    base = runtime if runtime and os.path.isdir(runtime) else None
    directory = Path(tempfile.mkdtemp(prefix="metrics-", dir=base))
    return prepare_shared(directory)


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
                 shared: Path | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._conn = _open(shared)
        self._monotonic = monotonic
        self._flushed = monotonic()
        self._decisions: dict[tuple[str, str, str], int] = {}
        self._latency: dict[tuple[str, int], tuple[int, float]] = {}
        self.registry = CollectorRegistry()
        self.registry.register(_Counts(self._conn))
        self.registry.register(_TokensOutstanding(tokens_outstanding))

    def decision(self, operation: str, reason: str | None, seconds: float) -> None:
        key = (operation, "ok" if reason is None else "rejected", reason or "")
        self._decisions[key] = self._decisions.get(key, 0) + 1
        bucket = (operation, _bucket(seconds))
        count, total = self._latency.get(bucket, (0, 0.0))
        self._latency[bucket] = (count + 1, total + seconds)
        if self._monotonic() - self._flushed >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Add this worker's counts to the table; kept for the next try if the
        table cannot be written now (a metric must never fail a request)."""
        self._flushed = self._monotonic()
        if not self._decisions and not self._latency:
            return
        try:
            with self._conn:  # BEGIN ... COMMIT: all rows or none
                self._conn.executemany(
                    "INSERT INTO decisions VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (operation, result, reason) DO UPDATE "
                    "SET count = count + excluded.count",
                    [(*key, n) for key, n in self._decisions.items()])
                self._conn.executemany(
                    "INSERT INTO latency VALUES (?, ?, ?, ?) ON CONFLICT (operation, bucket) "
                    "DO UPDATE SET count = count + excluded.count, "
                    "seconds = seconds + excluded.seconds",
                    [(*key, n, total) for key, (n, total) in self._latency.items()])
        except sqlite3.Error as exc:
            log.warning("metrics: counts not written yet (%s); kept for the next try", exc)
            return
        self._decisions.clear()
        self._latency.clear()

    def render(self) -> bytes:
        self.flush()
        return generate_latest(self.registry)
