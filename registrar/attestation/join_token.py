"""The join-token verifier: evidence ``{type: join_token, token}``.

``verify`` checks the token without spending it; ``commit`` spends it with the
atomic update in ``TokenStore.spend``. The API layer calls ``commit`` only once
the CSR has passed every check, so a bad CSR never burns a token. ``answered``
gives a lost answer again: the same token with the same key gets the certificate
its spend paid for (``TokenStore.answered``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshcore.secret import Secret
from registrar.attestation.base import Verified
from registrar.rejections import Rejected
from registrar.store.tokens import Answered, Receipt, TokenStore


class JoinTokenVerifier:
    evidence_type = "join_token"
    needs_challenge = False
    spent_reason = "token_spent"

    def __init__(self, tokens: TokenStore) -> None:
        self._tokens = tokens

    async def verify(self, evidence: Mapping[str, Any], challenge: str | None) -> Verified:
        raw = evidence.get("token")
        if not isinstance(raw, str):
            raise Rejected("token_invalid", "join_token evidence needs a string 'token'")
        row = self._tokens.check(Secret(raw))
        return Verified(evidence_type=self.evidence_type, subject=row.id,
                        claims={"token_id": row.id}, group=row.group)

    async def commit(self, verified: Verified, receipt: Receipt) -> None:
        self._tokens.spend(verified.subject, receipt)

    def answered(self, evidence: Mapping[str, Any], key_sha256: str) -> Answered | None:
        raw = evidence.get("token")
        return self._tokens.answered(Secret(raw), key_sha256) if isinstance(raw, str) else None
