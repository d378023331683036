"""The decisions: attest (evidence + CSR -> credentials) and renew (client cert + CSR).

Independent of HTTP: handlers pass parsed bodies and the peer certificate in,
and get a response body or ``Rejected`` back. One log line per decision, with
the SPIFFE ID, subject and remote address, never evidence, tokens or keys.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from registrar.api.wire import AttestRequest, parse_attest, parse_renew, timestamp
from registrar.attestation.base import Repeatable, SingleUse, SpentInRecord, Verified, Verifier
from registrar.ca.authority import (
    Authority,
    AuthoritySource,
    Clock,
    FixedAuthority,
    Issued,
    issued_again,
    utcnow,
)
from registrar.ca.csr import spki_sha256
from registrar.config import Group, RegistrarConfig
from registrar.rejections import Rejected
from registrar.store.challenges import ChallengeStore
from registrar.store.inventory import CertOwner, Inventory
from registrar.store.tokens import NotSpent, Receipt

log = logging.getLogger("registrar.decisions")

_STATE_REASONS = {"revoked": "identity_revoked", "evicted": "identity_evicted"}


@dataclass(frozen=True)
class Decision:
    body: dict[str, Any]
    spiffe_id: str
    subject: str
    again: bool = False  # a lost answer given again (same token, same key)


class Service:
    def __init__(self, *, config: RegistrarConfig, authority: Authority | AuthoritySource,
                 verifiers: Mapping[str, Verifier], challenges: ChallengeStore,
                 inventory: Inventory, clock: Clock = utcnow,
                 on_attested: Callable[[int, Sequence[str]], None] | None = None) -> None:
        self._config = config
        self._clock = clock
        # A source, so a CA rotation takes effect without a restart (registrar/ca/live.py).
        self._authorities = (FixedAuthority(authority) if isinstance(authority, Authority)
                             else authority)
        self._verifiers = verifiers
        # Decided once: a runtime Protocol check per request is measurable under load.
        self._single_use = {name for name, v in verifiers.items() if isinstance(v, SingleUse)}
        self._repeatable = {name for name, v in verifiers.items() if isinstance(v, Repeatable)}
        self._challenges = challenges
        self._inventory = inventory
        # The catalog records the addresses evidence proved (registrar/catalog/store.py).
        self._on_attested = on_attested

    # -- shared -----------------------------------------------------------------
    def _group_for(self, verified: Verified) -> Group:
        if verified.group is None:
            raise Rejected("no_matching_group", "the evidence maps to no workload group")
        group = self._config.groups.get(verified.group)
        if group is None:
            # A token's group is the operator's (set by `token create`), not the client's.
            logged = f"group={verified.group}" if verified.evidence_type == "join_token" else None
            raise Rejected("no_matching_group",
                           f"group {verified.group!r} is not in the registrar's config",
                           logged=logged)
        return group

    def authority(self) -> Authority:
        return self._authorities.authority()

    def bundle_seen(self, peer: x509.Certificate | None, bundle_version: int) -> None:
        """An agent fetched the bundle with its certificate: ``activate`` counts it."""
        if peer is not None:
            self._inventory.saw_bundle(format(peer.serial_number, "x"), bundle_version)

    def _credentials(self, issued: Issued, spiffe_id: str, group: Group,
                     authority: Authority) -> dict[str, Any]:
        return {
            "spiffe_id": spiffe_id,
            "cert_chain": issued.chain_pem,
            "trust_bundle": authority.bundle_pem,
            "trust_bundle_version": authority.bundle_version,
            "not_after": timestamp(issued.not_after),
            "renew_after": timestamp(issued.renew_after),
            "mesh": {"trust_domain": group.trust_domain, "namespace": group.namespace,
                     "service_account": group.service_account, "group": group.name,
                     "labels": dict(group.labels)},
        }

    # -- attest -----------------------------------------------------------------
    async def attest(self, body: Mapping[str, Any], remote: str) -> Decision:
        request = parse_attest(body)
        verifier = self._verifiers.get(request.evidence_type)
        if verifier is None:
            raise Rejected("unsupported_evidence",
                           f"evidence type {request.evidence_type!r} is not enabled; enabled: "
                           + ", ".join(sorted(self._verifiers)))
        try:
            return await self._attest_new(request, verifier)
        except Rejected as refused:
            # Refused as spent (a token spent, an EC2 instance already attested), by the
            # check or by losing the spend's race: if this is the retry of a request whose
            # answer was lost (same evidence, same key), the certificate that spend paid
            # for is the answer.
            if request.evidence_type not in self._repeatable:
                raise
            assert isinstance(verifier, Repeatable)
            if refused.reason != verifier.spent_reason:
                raise
            again = self._answer_again(verifier, request)
            if again is None:
                raise
            return again

    def _answer_again(self, verifier: Repeatable, request: AttestRequest) -> Decision | None:
        csr = request.csr
        key_sha256 = csr.key_sha256()
        answered = verifier.answered(request.evidence, key_sha256)
        if answered is None:
            return None
        group = self._config.groups.get(answered.group)
        if group is None or group.spiffe_id != answered.spiffe_id:
            return None  # the group changed since: the old answer is no longer ours to give
        csr.require_identity(group.spiffe_id)
        issued = issued_again(answered.chain_pem)
        # The stored row named the key; the certificate itself must certify it too.
        if spki_sha256(issued.certificate.public_key()) != key_sha256:  # type: ignore[arg-type]
            return None
        authority = self.authority()
        return Decision(self._credentials(issued, group.spiffe_id, group, authority),
                        group.spiffe_id, answered.subject, again=True)

    async def _attest_new(self, request: AttestRequest, verifier: Verifier) -> Decision:
        csr, hostname, addresses = request.csr, request.hostname, request.addresses
        challenge = None
        if verifier.needs_challenge:
            challenge = self._challenges.consume(request.challenge)
        verified = await verifier.verify(request.evidence, challenge)
        group = self._group_for(verified)
        if verified.addresses and addresses and addresses[0] not in verified.addresses:
            raise Rejected("address_mismatch", f"primary address {addresses[0]!r} is not the "
                           "address the evidence proves")
        csr.require_identity(group.spiffe_id)
        authority = self.authority()
        issued = authority.issue(csr.public_key, group.spiffe_id, group.cert_ttl)
        # Spending the evidence and recording the certificate are one atomic write: if
        # the record fails (a full disk, a broken database) the spend rolls back with
        # it and the same token works on the retry the 500 asks for. Signing is before
        # it, so a signing failure never reaches the spend.
        receipt = Receipt(key_sha256=csr.key_sha256(), serial=issued.serial_hex,
                          chain_pem=issued.chain_pem)
        record = functools.partial(
            self._inventory.record_attestation,
            evidence_type=verified.evidence_type, subject=verified.subject,
            spiffe_id=group.spiffe_id, group=group.name, hostname=hostname or "",
            addresses=addresses or [], serial=issued.serial_hex,
            not_after=issued.not_after.timestamp(), ca_version=authority.version,
            bundle_version=authority.bundle_version)
        if isinstance(verifier, SpentInRecord):
            try:
                workload = record(spend=verifier.spend(verified, receipt))
            except NotSpent:
                raise verifier.refusal(verified) from None
        elif verified.evidence_type in self._single_use:
            assert isinstance(verifier, SingleUse)
            with self._inventory.atomically():
                _run_now(verifier.commit(verified, receipt))
                workload = record()
        else:  # nothing to spend (GCE, Azure: their replay checks ran in verify)
            workload = record()
        if verified.addresses and self._on_attested is not None:
            self._on_attested(workload.id, verified.addresses)
        return Decision(self._credentials(issued, group.spiffe_id, group, authority),
                        group.spiffe_id, verified.subject)

    # -- renew ------------------------------------------------------------------
    def _owner_checked(self, peer: x509.Certificate | None) -> tuple[CertOwner, Group]:
        if peer is None:
            raise Rejected("client_cert_required",
                           "renew needs the current certificate as the TLS client certificate")
        try:
            sans = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        return self.owner_of(format(peer.serial_number, "x"), peer.not_valid_after_utc, uris)

    def owner_of(self, serial_hex: str, not_after: dt.datetime,
                 uris: Sequence[str]) -> tuple[CertOwner, Group]:
        """The checks of a renewal, on a verified client certificate's serial, end of
        validity and URI SANs (for callers that see only those: registrar/istio_ca)."""
        if not_after <= self._clock():
            raise Rejected("identity_unknown", "client certificate has expired")
        owner = self._inventory.owner(serial_hex)
        if owner is None:
            raise Rejected("identity_unknown", "client certificate was not issued by this "
                           "registrar's inventory")
        workload = owner.workload
        if list(uris) != [owner.spiffe_id]:
            raise Rejected("identity_unknown", "client certificate identity does not match "
                           "the inventory")
        if workload.state in _STATE_REASONS:
            raise Rejected(_STATE_REASONS[workload.state],
                           f"workload {workload.id} is {workload.state}; attest again",
                           logged=f"workload={workload.id}")
        if owner.standing == "superseded":
            raise _superseded(workload.id)
        group = self._config.groups.get(workload.group)
        if group is None or group.spiffe_id != owner.spiffe_id:
            raise Rejected("identity_unknown", f"workload {workload.id}'s group "
                           f"{workload.group!r} no longer gives {owner.spiffe_id}; attest again")
        return owner, group

    def authenticated(self, peer: x509.Certificate | None) -> tuple[CertOwner, Group]:
        """The workload behind a client certificate, checked as for a renewal (other
        mTLS endpoints, e.g. OIDC tokens, take exactly the callers renew takes)."""
        return self._owner_checked(peer)

    async def renew(self, body: Mapping[str, Any], peer: x509.Certificate | None,
                    remote: str) -> Decision:
        owner, group = self._owner_checked(peer)
        spiffe_id, workload_id = owner.spiffe_id, owner.workload.id
        request = parse_renew(body)
        hostname, addresses, csr = request.hostname, request.addresses, request.csr
        csr.require_identity(spiffe_id)
        authority = self.authority()
        issued = authority.issue(csr.public_key, spiffe_id, group.cert_ttl)
        if not self._inventory.record_renewal(
                workload_id, presented=owner.serial, hostname=hostname, addresses=addresses,
                serial=issued.serial_hex, spiffe_id=spiffe_id,
                not_after=issued.not_after.timestamp(), ca_version=authority.version,
                bundle_version=authority.bundle_version):
            raise _superseded(workload_id)  # a newer certificate renewed meanwhile
        return Decision(self._credentials(issued, spiffe_id, group, authority), spiffe_id,
                        owner.workload.subject)


def _run_now(step: Coroutine[Any, Any, None]) -> None:
    """Run ``step`` to its end without yielding to the event loop. It runs inside an
    open transaction on the connection every request shares: were it to suspend,
    another request's statements would join (and roll back with) this transaction."""
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()
    raise RuntimeError("a SingleUse.commit suspended inside the attestation transaction")


def _superseded(workload_id: int) -> Rejected:
    return Rejected("certificate_superseded",
                    f"workload {workload_id} has renewed with a newer certificate since this "
                    "one was issued; only the newest may renew. Attest again",
                    logged=f"workload={workload_id}")
