"""What every evidence verifier provides."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from registrar.rejections import Rejected
from registrar.store.tokens import Answered, Receipt, Spend


@dataclass(frozen=True)
class Verified:
    """What verified evidence proves.

    ``subject`` is the stable name of the attested thing (a GCE instance id,
    an EC2 instance id, an Azure vmId, a join token's id); ``claims`` are the
    verified facts group rules match on; ``group`` is set when the evidence
    itself names the workload group (a join token is minted for one group).
    """

    evidence_type: str
    subject: str
    claims: Mapping[str, str] = field(default_factory=dict)
    group: str | None = None
    # Addresses the evidence itself proves (EC2's privateIp); reports must agree.
    addresses: tuple[str, ...] = ()


class Verifier(Protocol):
    """Checks one evidence type. Raises ``registrar.rejections.Rejected`` with a
    specific reason on any failure; never logs the evidence itself."""

    @property
    def evidence_type(self) -> str: ...

    @property
    def needs_challenge(self) -> bool:
        """True when the evidence must bind a live challenge from /v1/challenge.

        The API layer consumes the challenge (single use) before calling
        ``verify``; the verifier checks the evidence really carries it.
        """
        ...

    async def verify(self, evidence: Mapping[str, Any], challenge: str | None) -> Verified: ...


@runtime_checkable
class SingleUse(Protocol):
    """Optional second phase for evidence that may be used once (join tokens;
    a cloud verifier may use it to record a token as replayed).

    ``verify`` must then check without using the evidence up; the API layer
    calls ``commit`` after the CSR has passed every check, so a bad CSR does not
    burn the evidence. ``commit`` is atomic: of N parallel commits of the same
    evidence exactly one returns, the rest raise ``Rejected``. It must not
    suspend (no real ``await``): it runs inside the transaction that records the
    certificate, so a failed record gives the evidence back (api/service.py).
    ``receipt`` is what the use pays for (key hash, certificate): evidence that can
    answer a lost response again (``Repeatable``) records it.
    """

    async def commit(self, verified: Verified, receipt: Receipt) -> None: ...


@runtime_checkable
class SpentInRecord(Protocol):
    """Optional, instead of ``SingleUse``: single-use evidence whose use is one
    conditional row update (join tokens). ``spend`` returns that update unrun, and
    the inventory makes it part of the write that records the certificate it pays
    for (``Inventory.record_attestation``: one statement on PostgreSQL, one
    transaction on SQLite), so of N parallel uses exactly one is recorded and a
    failed record spends nothing. When the update matched no row, ``refusal`` says
    why (used up, revoked or expired since ``verify``)."""

    def spend(self, verified: Verified, receipt: Receipt) -> Spend: ...

    def refusal(self, verified: Verified) -> Rejected: ...


@runtime_checkable
class Repeatable(Protocol):
    """Optional: single-use evidence whose lost answer can be given again.

    ``answered`` is asked only after the evidence was refused as used up (the
    refusal's reason is ``spent_reason``): the certificate that use paid for, when
    it was issued for the key hashing to ``key_sha256`` and may still be handed out
    (tokens.py, inventory.py say when); else None and the refusal stands. It reads
    and never writes or issues anything."""

    spent_reason: str

    def answered(self, evidence: Mapping[str, Any], key_sha256: str) -> Answered | None: ...
