"""Every way the registrar says no: a machine-readable reason, the HTTP status
and the action the agent must take. The OpenAPI enum in docs/api/openapi.yaml
lists the same reasons (a test keeps them equal)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Action = Literal["retry", "reattest", "fatal"]


@dataclass(frozen=True)
class ReasonSpec:
    status: int
    action: Action


REASONS: Final[dict[str, ReasonSpec]] = {
    "bad_request": ReasonSpec(400, "fatal"),
    "body_too_large": ReasonSpec(413, "fatal"),
    "unsupported_media_type": ReasonSpec(415, "fatal"),
    "unsupported_evidence": ReasonSpec(400, "fatal"),
    "csr_invalid": ReasonSpec(400, "fatal"),
    "csr_signature_invalid": ReasonSpec(400, "fatal"),
    "csr_key_unsupported": ReasonSpec(400, "fatal"),
    "csr_ca_requested": ReasonSpec(400, "fatal"),
    "csr_identity_mismatch": ReasonSpec(400, "fatal"),
    "token_invalid": ReasonSpec(401, "fatal"),
    "token_expired": ReasonSpec(401, "fatal"),
    "token_spent": ReasonSpec(401, "fatal"),
    "token_revoked": ReasonSpec(401, "fatal"),
    "challenge_invalid": ReasonSpec(401, "retry"),
    "evidence_invalid": ReasonSpec(401, "fatal"),
    "evidence_expired": ReasonSpec(401, "retry"),
    "evidence_replayed": ReasonSpec(401, "retry"),
    "evidence_signature_invalid": ReasonSpec(401, "fatal"),
    "evidence_issuer_invalid": ReasonSpec(401, "fatal"),
    "evidence_audience_invalid": ReasonSpec(401, "fatal"),
    "evidence_algorithm_invalid": ReasonSpec(401, "fatal"),
    "evidence_key_unknown": ReasonSpec(401, "retry"),
    "evidence_instance_too_old": ReasonSpec(403, "fatal"),
    "evidence_document_mismatch": ReasonSpec(401, "fatal"),
    "evidence_signer_untrusted": ReasonSpec(401, "fatal"),
    "evidence_nonce_mismatch": ReasonSpec(401, "retry"),
    "evidence_not_allowed": ReasonSpec(403, "fatal"),
    "instance_already_attested": ReasonSpec(403, "fatal"),
    "no_matching_group": ReasonSpec(403, "fatal"),
    "address_mismatch": ReasonSpec(403, "fatal"),
    "client_cert_required": ReasonSpec(401, "reattest"),
    "identity_unknown": ReasonSpec(403, "reattest"),
    "identity_revoked": ReasonSpec(403, "reattest"),
    "identity_evicted": ReasonSpec(403, "reattest"),
    "certificate_superseded": ReasonSpec(403, "reattest"),
    "oidc_subject_not_allowed": ReasonSpec(403, "fatal"),
    "oidc_audience_not_allowed": ReasonSpec(400, "fatal"),
    "not_found": ReasonSpec(404, "fatal"),
    "method_not_allowed": ReasonSpec(405, "fatal"),
    "rate_limited": ReasonSpec(429, "retry"),
    "store_unavailable": ReasonSpec(503, "retry"),
    "internal": ReasonSpec(500, "retry"),
}


class Rejected(Exception):
    """Raised anywhere in request handling; the API layer turns it into an Error body.

    ``message`` must never contain evidence, tokens or keys; it goes to the client
    only and may quote the client's own input back. The log gets the reason and
    ``logged``, which, when given, must hold only the registrar's own facts (a
    token id, a workload id, a configured group name), never client-chosen text.
    """

    def __init__(self, reason: str, message: str, *, retry_after: int | None = None,
                 logged: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.logged = logged

    @property
    def status(self) -> int:
        return REASONS[self.reason].status

    @property
    def action(self) -> Action:
        return REASONS[self.reason].action

    def body(self) -> dict[str, object]:
        out: dict[str, object] = {
            "reason": self.reason, "action": self.action, "message": self.message}
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        return out
