"""Join tokens: 256-bit random, stored only as SHA-256, expiring, single use.

Spending is one ``UPDATE ... WHERE used_at IS NULL AND revoked_at IS NULL AND
expires_at > now`` and a rowcount check, so of N parallel uses exactly one wins
(the race SPIRE once shipped). Checking (``check``) never spends, so a request
with a bad CSR can be refused before the token is burned. A bootstrap does not
run that update on its own: it hands it (``spend_statement``) to
``Inventory.record_attestation``, which makes it part of the write that records
the workload and its certificate (on PostgreSQL, the same statement).

The spend records what it paid for (``Receipt``): the SHA-256 of the key's
SubjectPublicKeyInfo and the certificate issued for it. ``answered`` finds that
certificate again for a retry whose answer was lost (a replica killed after its
commit): the same token with a CSR for the same key, and only while that
certificate is still the workload's only one (unexpired, never renewed, workload
active, token not revoked). Nothing is issued or written for it, so a token still
pays for exactly one workload and one certificate.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from meshcore.clock import Clock
from meshcore.secret import Secret
from registrar.rejections import Rejected
from registrar.store.connection import Connection, transaction

TOKEN_BYTES = 32
MAX_TOKEN_CHARS = 256


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenRow:
    id: str
    group: str
    created_at: float
    expires_at: float
    used_at: float | None
    revoked_at: float | None

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.used_at is not None:
            return "spent"
        if self.expires_at <= now:
            return "expired"
        return "valid"


@dataclass(frozen=True)
class Receipt:
    """What a spend (or an EC2 first use: ``Inventory.claim_first_use``) paid for:
    recorded with it, found again by ``answered``."""

    key_sha256: str  # hex SHA-256 of the certified key's SubjectPublicKeyInfo (DER)
    serial: str  # hex, as the inventory records it
    chain_pem: str  # leaf then intermediates, as answered


@dataclass(frozen=True)
class Spend:
    """A single use as one unrun statement: an ``UPDATE`` without ``RETURNING`` that
    matches exactly one row while the evidence is unused and none once it is used
    up, revoked or expired. ``Inventory.record_attestation`` runs it inside the
    record it pays for."""

    sql: str
    params: tuple[object, ...]


class NotSpent(Exception):
    """The ``Spend`` a record was to pay with matched no row: nothing was written."""


_SPEND = ("UPDATE tokens SET used_at = ?, spent_key = ?, spent_serial = ?, spent_chain = ?"
          " WHERE id = ? AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?")


@dataclass(frozen=True)
class Answered:
    """A spent token's (or an EC2 first use's) certificate, still answerable to the
    key it was issued for. ``subject``: the token id, or the workload's subject."""

    subject: str
    group: str
    spiffe_id: str
    chain_pem: str


_REASON_BY_STATE = {"revoked": "token_revoked", "spent": "token_spent",
                    "expired": "token_expired"}
_COLUMNS = "id, group_name, created_at, expires_at, used_at, revoked_at"


class TokenStore:
    def __init__(self, conn: Connection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock

    def create(self, group: str, ttl: float) -> tuple[str, Secret]:
        """A new token for ``group``: returns (id, token). The token is shown once."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        token_id = secrets.token_hex(8)
        now = self._clock.now().timestamp()
        self._conn.execute(
            "INSERT INTO tokens (id, hash, group_name, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)", (token_id, token_hash(token), group, now, now + ttl))
        return token_id, Secret(token)

    def create_many(self, group: str, ttl: float, count: int) -> list[Secret]:
        """Bulk creation in one transaction (benchmarks, fleet provisioning)."""
        now = self._clock.now().timestamp()
        tokens = [secrets.token_urlsafe(TOKEN_BYTES) for _ in range(count)]
        with transaction(self._conn):
            self._conn.executemany(
                "INSERT INTO tokens (id, hash, group_name, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(secrets.token_hex(8), token_hash(t), group, now, now + ttl) for t in tokens])
        return [Secret(t) for t in tokens]

    def _row(self, where: str, arg: str) -> TokenRow | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM tokens WHERE {where} = ?",  # noqa: S608
                                 (arg,)).fetchone()
        return None if row is None else TokenRow(*row)

    def check(self, token: Secret) -> TokenRow:
        """The token's row if it could be spent now; else ``Rejected`` with its reason."""
        value = token.reveal()
        if not value or len(value) > MAX_TOKEN_CHARS:
            raise Rejected("token_invalid", "malformed join token")
        row = self._row("hash", token_hash(value))
        if row is None:
            raise Rejected("token_invalid", "unknown join token")
        state = row.state(self._clock.now().timestamp())
        if state != "valid":
            raise Rejected(_REASON_BY_STATE[state], f"join token {row.id} is {state}",
                           logged=f"token_id={row.id}")
        return row

    def spend_statement(self, token_id: str, receipt: Receipt | None = None) -> Spend:
        """The spend of ``token_id``, unrun. ``receipt``: what the spend pays for, so a
        lost answer can be given again."""
        now = self._clock.now().timestamp()
        key, serial, chain = ((None, None, None) if receipt is None else
                              (receipt.key_sha256, receipt.serial, receipt.chain_pem))
        return Spend(_SPEND, (now, key, serial, chain, token_id, now))

    def refusal(self, token_id: str) -> Rejected:
        """Why ``token_id`` can no longer be spent, for a spend that matched no row
        (the loser of a race gets the reason the row now has)."""
        row = self._row("id", token_id)
        state = "spent" if row is None else row.state(self._clock.now().timestamp())
        return Rejected(_REASON_BY_STATE.get(state, "token_spent"),
                        f"join token {token_id} is {state}", logged=f"token_id={token_id}")

    def answered(self, token: Secret, key_sha256: str) -> Answered | None:
        """The certificate a spent ``token`` paid for, if it was issued for the key
        whose SPKI hashes to ``key_sha256`` and is still the only one its workload
        ever held: unexpired, not renewed (a renewal means the answer was received),
        workload active, token not revoked. Else None (the caller refuses as spent).
        One statement, so it reads one committed state on either store."""
        value = token.reveal()
        if not value or len(value) > MAX_TOKEN_CHARS:
            return None
        row = self._conn.execute(
            "SELECT t.id, t.group_name, w.spiffe_id, t.spent_chain FROM tokens t"
            " JOIN workloads w ON w.evidence_type = 'join_token' AND w.subject = t.id"
            " JOIN certs c ON c.serial = t.spent_serial AND c.workload_id = w.id"
            " WHERE t.hash = ? AND t.used_at IS NOT NULL AND t.revoked_at IS NULL"
            " AND t.spent_key = ? AND t.spent_chain IS NOT NULL"
            " AND w.state = 'active' AND w.current_serial = t.spent_serial"
            " AND w.pending_serial IS NULL AND c.not_after > ?",
            (token_hash(value), key_sha256, self._clock.now().timestamp())).fetchone()
        return None if row is None else Answered(*row)

    def revoke(self, token_id: str) -> bool:
        cursor = self._conn.execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (self._clock.now().timestamp(), token_id))
        return cursor.rowcount == 1

    def list(self) -> list[TokenRow]:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM tokens ORDER BY created_at")  # noqa: S608
        return [TokenRow(*r) for r in rows]

    def outstanding(self) -> int:
        row = self._conn.execute(
            "SELECT COUNT(*) FROM tokens WHERE used_at IS NULL AND revoked_at IS NULL "
            "AND expires_at > ?", (self._clock.now().timestamp(),)).fetchone()
        return int(row[0])
