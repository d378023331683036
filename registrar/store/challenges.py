"""One-time challenges from ``/v1/challenge``: stored, expiring, consumed atomically."""

from __future__ import annotations

import secrets
import string

from meshcore.clock import Clock
from registrar.rejections import Rejected
from registrar.store.connection import Connection

NONCE_CHARS = 32
_ALPHABET = string.ascii_letters + string.digits


class ChallengeStore:
    def __init__(self, conn: Connection, ttl: float,
                 clock: Clock) -> None:
        self._conn = conn
        self._ttl = ttl
        self._clock = clock

    def issue(self) -> tuple[str, float]:
        """A fresh nonce (32 alphanumerics: fits Azure's limit) and its expiry."""
        nonce = "".join(secrets.choice(_ALPHABET) for _ in range(NONCE_CHARS))
        now = self._clock.now().timestamp()
        expires = now + self._ttl
        self._conn.execute("DELETE FROM challenges WHERE expires_at < ?", (now - 60,))
        self._conn.execute("INSERT INTO challenges (nonce, expires_at) VALUES (?, ?)",
                           (nonce, expires))
        return nonce, expires

    def consume(self, nonce: str | None) -> str:
        """Delete-on-use: exactly one caller gets a given nonce."""
        if not nonce or len(nonce) != NONCE_CHARS or not nonce.isalnum():
            raise Rejected("challenge_invalid", "missing or malformed challenge")
        cursor = self._conn.execute(
            "DELETE FROM challenges WHERE nonce = ? AND expires_at > ?",
            (nonce, self._clock.now().timestamp()))
        if cursor.rowcount != 1:
            raise Rejected("challenge_invalid", "unknown, expired or already used challenge")
        return nonce
