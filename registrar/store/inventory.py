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

import builtins
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

from meshcore.clock import Clock
from registrar.store.connection import Connection, in_transaction, kind_of, transaction
from registrar.store.tokens import Answered, NotSpent, Receipt, Spend

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

_RETURNED = _COLUMNS.replace("w.", "")
_WORKLOAD_INSERT = ("INSERT INTO workloads (subject, evidence_type, spiffe_id, group_name,"
                    " hostname, addresses, first_seen, last_seen, current_serial,"
                    " bundle_version) ")
_WORKLOAD_VALUES = "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_WORKLOAD_FROM_PAID = "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM paid"
_WORKLOAD_UPSERT = (
    " ON CONFLICT (evidence_type, subject) DO UPDATE SET spiffe_id = excluded.spiffe_id,"
    " group_name = excluded.group_name, hostname = excluded.hostname,"
    " addresses = excluded.addresses, last_seen = excluded.last_seen,"
    " state = CASE WHEN workloads.state = 'revoked' THEN 'revoked' ELSE 'active' END,"
    " current_serial = excluded.current_serial, pending_serial = NULL,"
    f" bundle_version = excluded.bundle_version RETURNING {_RETURNED}")
_CERT_INSERT = ("INSERT INTO certs (serial, workload_id, spiffe_id, issued_at, not_after,"
                " ca_version) ")
_RENEWAL = ("UPDATE workloads SET last_seen = ?, hostname = COALESCE(?, hostname),"
            " addresses = COALESCE(?, addresses),"
            " current_serial = CASE WHEN pending_serial = ? THEN pending_serial"
            " ELSE current_serial END, pending_serial = ?, bundle_version = ?"
            " WHERE id = ? AND ? IN (current_serial, pending_serial)")


def _one_statement(conn: Connection) -> bool:
    """Whether a write's parts go as one statement (data-modifying ``WITH`` clauses,
    atomic by itself, one round trip): on PostgreSQL outside a caller's transaction.
    SQLite has no such clauses; its parts run in one transaction."""
    return kind_of(conn) == "postgres" and not in_transaction(conn)


def _workload(row: Sequence[object]) -> Workload:
    values = list(row)
    values[6] = tuple(json.loads(str(values[6])))
    return Workload(*values)  # type: ignore[arg-type]


class Inventory:
    def __init__(self, conn: Connection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock

    @contextmanager
    def atomically(self) -> Iterator[None]:
        """One transaction on the inventory's connection around the caller's writes
        (an EC2 first use's claim and the attestation it pays for): all or nothing.
        Deferred, so a single-use claim made on another connection first (the AWS
        ledger) never waits on a lock this holds. A join token's spend needs none:
        it is part of ``record_attestation``'s own write."""
        with transaction(self._conn, immediate=False):
            yield

    def record_attestation(self, *, evidence_type: str, subject: str, spiffe_id: str,
                           group: str, hostname: str, addresses: Sequence[str],
                           serial: str, not_after: float, ca_version: str = "",
                           bundle_version: int = 0, spend: Spend | None = None) -> Workload:
        """Upsert the workload and record its new certificate, all or nothing.

        ``spend``: the single use this record pays with (a join token's), made in the
        same unit; ``NotSpent`` (nothing written) when it matched no row. On
        PostgreSQL, outside a caller's transaction, the spend, the upsert and the
        certificate are one statement (data-modifying ``WITH`` clauses): one round
        trip instead of six with BEGIN and COMMIT, and atomic by itself. Otherwise
        they run in the caller's transaction (``atomically``, around an EC2 first
        use: a savepoint would add two statements) or in one of their own.

        A revoked workload is not revived by re-attesting: that is the operator's call.
        """
        now = self._clock.now().timestamp()
        values = (subject, evidence_type, spiffe_id, group, hostname,
                  json.dumps(list(addresses)), now, now, serial, bundle_version)
        cert = (serial, spiffe_id, now, not_after, ca_version)
        conn = self._conn
        if _one_statement(conn):
            params: tuple[object, ...]
            if spend is None:
                head, params, source = "", values, _WORKLOAD_VALUES
            else:
                head, params = f"paid AS ({spend.sql} RETURNING 1), ", spend.params + values
                source = _WORKLOAD_FROM_PAID
            # module constants and the spend's own constant SQL; values are parameters
            sql = (f"WITH {head}w AS ({_WORKLOAD_INSERT}{source}{_WORKLOAD_UPSERT}),"  # noqa: S608
                   f" c AS ({_CERT_INSERT}SELECT ?, w.id, ?, ?, ?, ? FROM w)"
                   f" SELECT {_RETURNED} FROM w")
            row = conn.execute(sql, params + cert).fetchone()
            if row is None:
                raise NotSpent(subject)
            return _workload(row)
        with nullcontext() if in_transaction(conn) else transaction(conn):
            if spend is not None and conn.execute(spend.sql, spend.params).rowcount != 1:
                raise NotSpent(subject)
            row = conn.execute(f"{_WORKLOAD_INSERT}{_WORKLOAD_VALUES}{_WORKLOAD_UPSERT}",
                               values).fetchone()
            workload = _workload(row)
            conn.execute(f"{_CERT_INSERT}VALUES (?, ?, ?, ?, ?, ?)",
                         (serial, workload.id, *cert[1:]))
        return workload

    def claim_first_use(self, evidence_type: str, subject: str,
                        receipt: Receipt | None = None) -> bool:
        """Trust on first use, atomic across worker processes: True for exactly one
        caller when ``subject`` has no workload yet or was evicted; False otherwise
        (active or revoked). The row it creates is completed by ``record_attestation``.
        ``receipt``: what this use pays for, recorded by the same statement (so in the
        caller's transaction) for ``first_use_answered``.
        """
        now = self._clock.now().timestamp()
        key, serial, chain = ((None, None, None) if receipt is None else
                              (receipt.key_sha256, receipt.serial, receipt.chain_pem))
        cursor = self._conn.execute(
            "INSERT INTO workloads (subject, evidence_type, spiffe_id, group_name, first_seen,"
            " last_seen, first_use_key, first_use_serial, first_use_chain)"
            " VALUES (?, ?, '', '', ?, ?, ?, ?, ?) ON CONFLICT (evidence_type, subject)"
            " DO UPDATE SET state = 'active', last_seen = excluded.last_seen,"
            " first_use_key = excluded.first_use_key,"
            " first_use_serial = excluded.first_use_serial,"
            " first_use_chain = excluded.first_use_chain"
            " WHERE workloads.state = 'evicted'",
            (subject, evidence_type, now, now, key, serial, chain))
        return cursor.rowcount == 1

    def first_use_answered(self, evidence_type: str, subject: str,
                           key_sha256: str) -> Answered | None:
        """The certificate ``subject``'s first use paid for, if it was issued for the
        key whose SPKI hashes to ``key_sha256`` and is still the only one the workload
        holds since: unexpired, never renewed (a renewal means the answer arrived), the
        workload active. Else None. One statement: one committed state on either store.
        """
        row = self._conn.execute(
            "SELECT w.subject, w.group_name, w.spiffe_id, w.first_use_chain FROM workloads w"
            " JOIN certs c ON c.serial = w.first_use_serial AND c.workload_id = w.id"
            " WHERE w.evidence_type = ? AND w.subject = ? AND w.state = 'active'"
            " AND w.first_use_key = ? AND w.first_use_chain IS NOT NULL"
            " AND w.current_serial = w.first_use_serial AND w.pending_serial IS NULL"
            " AND c.not_after > ?",
            (evidence_type, subject, key_sha256, self._clock.now().timestamp())).fetchone()
        return None if row is None else Answered(*row)

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
                       not_after: float, ca_version: str = "", bundle_version: int = 0) -> bool:
        """Record ``serial`` as the workload's pending certificate if ``presented`` may
        still renew. One ``UPDATE ... WHERE`` decides, so across worker processes a
        renewal racing a promotion either sees the old state or loses (False, nothing
        recorded: the caller refuses it as superseded)."""
        now = self._clock.now().timestamp()
        params = (now, hostname, None if addresses is None else json.dumps(list(addresses)),
                  presented, serial, bundle_version, workload_id, presented)
        cert = (serial, spiffe_id, now, not_after, ca_version)
        conn = self._conn
        if _one_statement(conn):
            # one statement, one round trip: the certificate is inserted only for the
            # row the update matched
            cursor = conn.execute(f"WITH u AS ({_RENEWAL} RETURNING id)"  # noqa: S608
                                  f" {_CERT_INSERT}SELECT ?, u.id, ?, ?, ?, ? FROM u",
                                  params + cert)
            return cursor.rowcount == 1
        with transaction(conn):
            if conn.execute(_RENEWAL, params).rowcount != 1:
                return False
            conn.execute(f"{_CERT_INSERT}VALUES (?, ?, ?, ?, ?, ?)",
                         (serial, workload_id, *cert[1:]))
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

    def saw_bundle(self, serial: str, bundle_version: int) -> None:
        """A workload fetched the bundle over mTLS: it holds ``bundle_version`` now."""
        self._conn.execute(
            "UPDATE workloads SET bundle_version = ? WHERE bundle_version < ? AND id ="
            " (SELECT workload_id FROM certs WHERE serial = ?)",
            (bundle_version, bundle_version, serial))

    def _live_newest(self) -> builtins.list[tuple[Workload, str, int]]:
        """Each live workload (not revoked, newest certificate unexpired) with the CA
        version of that certificate and the bundle version it was last handed. The
        newest certificate is the one its agent serves: older ones were replaced."""
        now = self._clock.now().timestamp()
        rows = self._conn.execute(
            f"SELECT {_COLUMNS}, c.ca_version, w.bundle_version FROM workloads w"  # noqa: S608
            " JOIN certs c ON c.serial = (SELECT c2.serial FROM certs c2"
            " WHERE c2.workload_id = w.id ORDER BY c2.issued_at DESC, c2.rowid DESC LIMIT 1)"
            " WHERE w.state != 'revoked' AND c.not_after > ? ORDER BY w.id", (now,))
        return [(_workload(r[:10]), str(r[10]), int(r[11])) for r in rows]

    def holders_of(self, ca_versions: frozenset[str]) -> builtins.list[Workload]:
        """Live workloads whose certificate was issued by one of ``ca_versions``."""
        return [w for w, version, _ in self._live_newest() if version in ca_versions]

    def missing_bundle(self, bundle_version: int) -> builtins.list[Workload]:
        """Live workloads last handed a bundle older than ``bundle_version``."""
        return [w for w, _, seen in self._live_newest() if seen < bundle_version]

    def ca_versions_in_use(self) -> dict[str, int]:
        """Live workloads per issuing CA version."""
        counts: dict[str, int] = {}
        for _, version, _ in self._live_newest():
            counts[version] = counts.get(version, 0) + 1
        return counts

    def prune_certs(self, before: float) -> int:
        """Forget certificates that expired before ``before``: they can no longer renew."""
        return self._conn.execute("DELETE FROM certs WHERE not_after < ?", (before,)).rowcount
