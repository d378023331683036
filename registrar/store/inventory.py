"""Registered workloads and the certificates issued to them.

A workload is keyed by (evidence type, subject): attesting again with the same
subject re-uses its row (re-attestation is a normal path) and makes it active
again only if it was evicted; a revoked workload stays revoked.

Each workload records the serial that may renew (``current_serial``) and, during
a handover, the one just issued (``pending_serial``). Renewing with the current
certificate issues a new pending one (replacing any earlier pending one, whose
response may have been lost); renewing with the pending one promotes it to
current, and from then on every older certificate is superseded. So one
certificate cannot fork several identities: of all the certificates a renewal
race hands out, only the last recorded can ever renew.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from meshcore.clock import Clock
from registrar.store.db import transaction

STATES = ("active", "evicted", "revoked")
Standing = Literal["current", "pending", "superseded"]


@dataclass(frozen=True)
class Workload:
    id: int
    subject: str
    evidence_type: str
    spiffe_id: str
    group: str
    hostname: str
    addresses: tuple[str, ...]
    first_seen: float
    last_seen: float
    state: str


@dataclass(frozen=True)
class CertOwner:
    """The inventory's view of a presented client certificate."""

    serial: str
    spiffe_id: str
    not_after: float
    workload: Workload
    standing: Standing


_COLUMNS = ("w.id, w.subject, w.evidence_type, w.spiffe_id, w.group_name, w.hostname, "
            "w.addresses, w.first_seen, w.last_seen, w.state")


def _workload(row: Sequence[object]) -> Workload:
    values = list(row)
    values[6] = tuple(json.loads(str(values[6])))
    return Workload(*values)  # type: ignore[arg-type]


class Inventory:
    def __init__(self, conn: sqlite3.Connection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock

    @contextmanager
    def atomically(self) -> Iterator[None]:
        """One transaction on the inventory's connection around the caller's writes
        (a join token's spend and the attestation it pays for): all or nothing.
        Deferred, so a single-use claim made on another connection first (the AWS
        ledger) never waits on a lock this holds."""
        with transaction(self._conn, immediate=False):
            yield

    def record_attestation(self, *, evidence_type: str, subject: str, spiffe_id: str,
                           group: str, hostname: str, addresses: Sequence[str],
                           serial: str, not_after: float) -> Workload:
        """Upsert the workload and record its new certificate, in one transaction.

        A revoked workload is not revived by re-attesting: that is the operator's call.
        """
        now = self._clock.now().timestamp()
        with transaction(self._conn) as conn:
            row = conn.execute(
                "INSERT INTO workloads (subject, evidence_type, spiffe_id, group_name, hostname,"  # noqa: S608
                " addresses, first_seen, last_seen, current_serial)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (evidence_type, subject) DO UPDATE SET spiffe_id = excluded.spiffe_id,"
                " group_name = excluded.group_name, hostname = excluded.hostname,"
                " addresses = excluded.addresses, last_seen = excluded.last_seen,"
                " state = CASE WHEN state = 'revoked' THEN 'revoked' ELSE 'active' END,"
                " current_serial = excluded.current_serial, pending_serial = NULL "
                f"RETURNING {_COLUMNS.replace('w.', '')}",
                (subject, evidence_type, spiffe_id, group, hostname, json.dumps(list(addresses)),
                 now, now, serial)).fetchone()
            workload = _workload(row)
            conn.execute("INSERT INTO certs (serial, workload_id, spiffe_id, issued_at, not_after)"
                         " VALUES (?, ?, ?, ?, ?)",
                         (serial, workload.id, spiffe_id, now, not_after))
        return workload

    def claim_first_use(self, evidence_type: str, subject: str) -> bool:
        """Trust on first use, atomic across worker processes: True for exactly one
        caller when ``subject`` has no workload yet or was evicted; False otherwise
        (active or revoked). The row it creates is completed by ``record_attestation``.
        """
        now = self._clock.now().timestamp()
        cursor = self._conn.execute(
            "INSERT INTO workloads (subject, evidence_type, spiffe_id, group_name, first_seen,"
            " last_seen) VALUES (?, ?, '', '', ?, ?) ON CONFLICT (evidence_type, subject)"
            " DO UPDATE SET state = 'active', last_seen = excluded.last_seen"
            " WHERE workloads.state = 'evicted'", (subject, evidence_type, now, now))
        return cursor.rowcount == 1

    def owner(self, serial: str) -> CertOwner | None:
        row = self._conn.execute(
            f"SELECT c.serial, c.spiffe_id, c.not_after, w.current_serial, w.pending_serial,"  # noqa: S608
            f" {_COLUMNS} FROM certs c JOIN workloads w ON w.id = c.workload_id"
            " WHERE c.serial = ?", (serial,)).fetchone()
        if row is None:
            return None
        standing: Standing = ("current" if row[3] == serial else
                              "pending" if row[4] == serial else "superseded")
        return CertOwner(serial=row[0], spiffe_id=row[1], not_after=row[2],
                         workload=_workload(row[5:]), standing=standing)

    def record_renewal(self, workload_id: int, *, presented: str, hostname: str | None,
                       addresses: Sequence[str] | None, serial: str, spiffe_id: str,
                       not_after: float) -> bool:
        """Record ``serial`` as the workload's pending certificate if ``presented`` may
        still renew. One ``UPDATE ... WHERE`` decides, so across worker processes a
        renewal racing a promotion either sees the old state or loses (False, nothing
        recorded: the caller refuses it as superseded)."""
        now = self._clock.now().timestamp()
        with transaction(self._conn) as conn:
            cursor = conn.execute(
                "UPDATE workloads SET last_seen = ?, hostname = COALESCE(?, hostname),"
                " addresses = COALESCE(?, addresses),"
                " current_serial = CASE WHEN pending_serial = ? THEN pending_serial"
                " ELSE current_serial END, pending_serial = ?"
                " WHERE id = ? AND ? IN (current_serial, pending_serial)",
                (now, hostname, None if addresses is None else json.dumps(list(addresses)),
                 presented, serial, workload_id, presented))
            if cursor.rowcount != 1:
                return False
            conn.execute("INSERT INTO certs (serial, workload_id, spiffe_id, issued_at, not_after)"
                         " VALUES (?, ?, ?, ?, ?)", (serial, workload_id, spiffe_id, now,
                                                     not_after))
        return True

    def set_state(self, workload_id: int, state: str) -> bool:
        if state not in STATES:
            raise ValueError(state)
        cursor = self._conn.execute("UPDATE workloads SET state = ? WHERE id = ?",
                                    (state, workload_id))
        return cursor.rowcount == 1

    def list(self) -> list[Workload]:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM workloads w ORDER BY w.id")  # noqa: S608
        return [_workload(r) for r in rows]

    def prune_certs(self, before: float) -> int:
        """Forget certificates that expired before ``before``: they can no longer renew."""
        return self._conn.execute("DELETE FROM certs WHERE not_after < ?", (before,)).rowcount
