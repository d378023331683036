"""EC2 trust on first use is decided atomically by the shared inventory: with
several worker processes (here: several ledgers on one database), exactly one
parallel first use wins, and only eviction lets the instance in again."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meshcore.clock import SystemClock
from registrar.attestation.aws_ledger import InventoryLedger
from registrar.store.db import connect


def test_one_of_many_parallel_first_uses_wins_across_workers(tmp_path: Path) -> None:
    db = tmp_path / "registrar.db"
    connect(db).close()
    ledgers = [InventoryLedger(db, clock=SystemClock()) for _ in range(4)]  # one per "worker"
    with ThreadPoolExecutor(max_workers=16) as pool:
        wins = list(pool.map(lambda i: ledgers[i % 4].claim("i-0abc"), range(32)))
    assert wins.count(True) == 1
    assert not ledgers[0].allowed("i-0abc")
    assert ledgers[1].claim("i-0def") is True  # another instance is independent


def test_eviction_allows_exactly_one_more_first_use(tmp_path: Path) -> None:
    db = tmp_path / "registrar.db"
    connect(db).close()
    ledger = InventoryLedger(db, clock=SystemClock())
    assert ledger.claim("i-1") is True
    assert ledger.claim("i-1") is False
    conn = sqlite3.connect(db)
    conn.execute("UPDATE workloads SET state = 'evicted' WHERE subject = 'i-1'")
    conn.commit()
    assert ledger.allowed("i-1")
    assert [ledger.claim("i-1") for _ in range(3)] == [True, False, False]
