"""The join-token verifier: evidence ``{type: join_token, token}``.

``verify`` checks the token without spending it; ``spend`` hands the atomic
update of ``TokenStore.spend_statement`` to the write that records the
certificate (``SpentInRecord``), which the API layer makes only once the CSR has
passed every check, so a bad CSR never burns a token. ``answered``
gives a lost answer again: the same token with the same key gets the certificate
its spend paid for (``TokenStore.answered``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshcore.secret import Secret
from registrar.attestation.base import Verified
from registrar.rejections import Rejected
from registrar.store.tokens import Answered, Receipt, Spend, TokenStore


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

    def spend(self, verified: Verified, receipt: Receipt) -> Spend:
        return self._tokens.spend_statement(verified.subject, receipt)

    def refusal(self, verified: Verified) -> Rejected:
        return self._tokens.refusal(verified.subject)

    def answered(self, evidence: Mapping[str, Any], key_sha256: str) -> Answered | None:
        raw = evidence.get("token")
        return self._tokens.answered(Secret(raw), key_sha256) if isinstance(raw, str) else None
