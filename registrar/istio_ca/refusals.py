"""How the CA API says no: a gRPC status and a machine-readable reason.

The reason travels twice: as the start of the status message (``reason: text``,
what pilot-agent logs) and as the trailer ``x-mesh-reason`` (for programs). The
HTTP API's reasons (registrar/rejections.py) that the shared CSR policy and the
renewal checks raise are mapped here onto gRPC codes.
"""

from __future__ import annotations

from grpclib.const import Status

from registrar.rejections import Rejected

REASON_TRAILER = "x-mesh-reason"

# reason -> gRPC status. Istio's CA answers UNAUTHENTICATED for every failed
# authentication and INVALID_ARGUMENT for a CSR it cannot sign; we keep that split
# and say PERMISSION_DENIED where the caller is known but asks for too much.
STATUS: dict[str, Status] = {
    "unauthenticated": Status.UNAUTHENTICATED,
    "token_invalid": Status.UNAUTHENTICATED,
    "token_expired": Status.UNAUTHENTICATED,
    "token_issuer_invalid": Status.UNAUTHENTICATED,
    "token_audience_invalid": Status.UNAUTHENTICATED,
    "token_key_unknown": Status.UNAUTHENTICATED,
    "impersonation_refused": Status.UNAUTHENTICATED,
    "client_cert_refused": Status.UNAUTHENTICATED,
    "identity_unknown": Status.PERMISSION_DENIED,
    "identity_revoked": Status.PERMISSION_DENIED,
    "identity_evicted": Status.PERMISSION_DENIED,
    "certificate_superseded": Status.PERMISSION_DENIED,
    "identity_ambiguous": Status.PERMISSION_DENIED,
    "csr_identity_mismatch": Status.PERMISSION_DENIED,
    "csr_invalid": Status.INVALID_ARGUMENT,
    "csr_signature_invalid": Status.INVALID_ARGUMENT,
    "csr_key_unsupported": Status.INVALID_ARGUMENT,
    "csr_ca_requested": Status.INVALID_ARGUMENT,
    "rate_limited": Status.RESOURCE_EXHAUSTED,
    "internal": Status.INTERNAL,
}


class Refused(Exception):
    """``message`` goes to the caller only (it may quote the caller's CSR); the log
    gets ``reason`` and ``logged`` (our own facts), never a token."""

    def __init__(self, reason: str, message: str, *, logged: str | None = None) -> None:
        if reason not in STATUS:
            raise ValueError(f"unknown CA API reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.logged = logged

    @property
    def status(self) -> Status:
        return STATUS[self.reason]

    @classmethod
    def of(cls, rejected: Rejected) -> Refused:
        reason = rejected.reason if rejected.reason in STATUS else "client_cert_refused"
        return cls(reason, rejected.message, logged=rejected.logged)
