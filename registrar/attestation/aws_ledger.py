"""Trust on first use for EC2 instances, decided by the registrar's inventory.

An instance may attest when the inventory has no workload for it, or when an
operator evicted it (``mesh-registrar workloads evict ID``); an active or
revoked one may not. Between ``claim`` and the API layer recording the
workload there is a short window, so claims in flight are held in memory until
the inventory shows a record at least as new as the claim.

Read-only SQL on the inventory's ``workloads`` table: the schema belongs to
``registrar.store``; this is the one query cloud attestation needs from it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

EVIDENCE_TYPE = "aws"


class InventoryLedger:
    def __init__(self, database: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._database = database
        self._clock = clock
        self._inflight: dict[str, float] = {}
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _row(self, subject: str) -> tuple[str, float] | None:
        if self._conn is None:
            self._conn = sqlite3.connect(f"file:{self._database}?mode=ro", uri=True,
                                         timeout=5.0, check_same_thread=False)
        row = self._conn.execute(
            "SELECT state, last_seen FROM workloads WHERE evidence_type = ? AND subject = ?",
            (EVIDENCE_TYPE, subject)).fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def allowed(self, subject: str) -> bool:
        row = self._row(subject)
        claimed = self._inflight.get(subject)
        if claimed is not None and row is not None and row[1] >= claimed:
            self._inflight.pop(subject, None)  # the claim has been recorded
            claimed = None
        if claimed is not None:
            return False
        return row is None or row[0] == "evicted"

    def claim(self, subject: str) -> bool:
        with self._lock:
            if not self.allowed(subject):
                return False
            self._inflight[subject] = self._clock()
            return True

    def evict(self, subject: str) -> None:
        """Eviction itself is the inventory's state change; forget any claim in flight."""
        with self._lock:
            self._inflight.pop(subject, None)
