"""Trust on first use for EC2 instances, decided by the registrar's inventory.

An instance may attest when the inventory has no workload for it, or when an
operator evicted it (``mesh-registrar workloads evict ID``); an active or
revoked one may not. The claim is one atomic statement
(``Inventory.claim_first_use``), so exactly one of any number of parallel
first uses wins, across every worker process and replica sharing the database.
The claim records what the first use paid for (``Receipt``), so a retry whose
answer was lost is answered again with that certificate (``answered``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from meshcore.clock import Clock
from registrar.store.connection import Connection
from registrar.store.db import connect
from registrar.store.inventory import Inventory
from registrar.store.tokens import Answered, Receipt

EVIDENCE_TYPE = "aws"


class InventoryLedger:
    def __init__(self, database: Path | Callable[[], Connection], *, clock: Clock,
                 conn: Connection | None = None) -> None:
        """``conn``: the connection the server records attestations on. Given, the
        claim joins the transaction that records the certificate (api/service.py),
        so a failed record gives the instance its first use back."""
        self._database = database
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = conn

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = (connect(self._database) if isinstance(self._database, Path)
                          else self._database())
        return self._conn

    def allowed(self, subject: str) -> bool:
        """A cheap pre-check during verification; ``claim`` is what decides."""
        with self._lock:
            row = self._connection().execute(
                "SELECT state FROM workloads WHERE evidence_type = ? AND subject = ?",
                (EVIDENCE_TYPE, subject)).fetchone()
        return row is None or row[0] == "evicted"

    def claim(self, subject: str, receipt: Receipt | None = None) -> bool:
        with self._lock:
            return Inventory(self._connection(), self._clock).claim_first_use(
                EVIDENCE_TYPE, subject, receipt)

    def answered(self, subject: str, key_sha256: str) -> Answered | None:
        with self._lock:
            return Inventory(self._connection(), self._clock).first_use_answered(
                EVIDENCE_TYPE, subject, key_sha256)

    def evict(self, subject: str) -> None:
        """Eviction is the inventory's state change (`workloads evict`); nothing is
        held here."""
