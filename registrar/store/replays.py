"""Cloud evidence already accepted, in the database: a GCE identity token is taken
once (Google's advice) by any worker of any replica, as long as it could verify.

``INSERT ... ON CONFLICT DO NOTHING`` decides: of parallel first uses, exactly one
inserts the row (PostgreSQL makes the others wait for it and then see it). Rows
whose token could no longer verify are deleted as new ones arrive.
"""

from __future__ import annotations

import hashlib

from registrar.store.connection import Connection


class SeenEvidence:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def first_use(self, token: str, until: float, now: float) -> bool:
        digest = hashlib.sha256(token.encode()).hexdigest()
        self._conn.execute("DELETE FROM evidence_seen WHERE expires_at < ?", (now,))
        cursor = self._conn.execute(
            "INSERT INTO evidence_seen (digest, expires_at) VALUES (?, ?)"
            " ON CONFLICT (digest) DO NOTHING", (digest, until))
        return int(cursor.rowcount) == 1
