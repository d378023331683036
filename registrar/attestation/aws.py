"""EC2: the instance identity document and its ``rsa2048`` PKCS#7 signature.

The document has no nonce and no expiry and any process on the instance can
read it, so freshness comes from policy instead: the signer must be the pinned
AWS certificate of the document's own region, the signed content must be the
document byte for byte, the instance must be younger than ``max_instance_age``
(``pendingTime``), and each instance ID attests once (trust on first use)
until an operator evicts it or the policy says ``reattest: always``.

A first use whose answer was lost (the claim committed, the connection cut) is
answered again (``answered``): the same document, verified as ever, with a CSR
for the key the first use certified gets that certificate back while it is still
the workload's only one (``Inventory.first_use_answered`` says when).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography import x509

from meshcore.clock import Clock
from registrar.attestation import pkcs7
from registrar.attestation.base import Verified
from registrar.attestation.groups import GroupRules
from registrar.rejections import Rejected
from registrar.store.tokens import Answered, Receipt

SHIPPED_CERTS = Path(__file__).resolve().parent.parent / "data" / "aws"
PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
MAX_DOCUMENT_B64 = 8 * 1024


class InstanceLedger(Protocol):
    """Which instance IDs already attested (trust on first use)."""

    def allowed(self, subject: str) -> bool:
        """Whether ``subject`` may attest now (never attested, or evicted since)."""
        ...

    def claim(self, subject: str, receipt: Receipt | None = None) -> bool:
        """Atomically record ``subject`` (and what its first use pays for); False when
        another request got there first."""
        ...

    def answered(self, subject: str, key_sha256: str) -> Answered | None:
        """What ``subject``'s first use paid for, if still answerable to that key."""
        ...

    def evict(self, subject: str) -> None: ...


class MemoryLedger:
    def __init__(self) -> None:
        self._seen: set[str] = set()

    def allowed(self, subject: str) -> bool:
        return subject not in self._seen

    def claim(self, subject: str, receipt: Receipt | None = None) -> bool:
        if subject in self._seen:
            return False
        self._seen.add(subject)
        return True

    def answered(self, subject: str, key_sha256: str) -> Answered | None:
        """Never: without the inventory nothing says the certificate was not renewed."""
        return None

    def evict(self, subject: str) -> None:
        self._seen.discard(subject)


def load_region_certs(*dirs: Path) -> dict[str, x509.Certificate]:
    """``<dir>/<partition>/<region>.pem`` -> {region: cert}; later dirs override earlier."""
    certs: dict[str, x509.Certificate] = {}
    for base in dirs:
        for partition in PARTITIONS:
            for path in sorted((base / partition).glob("*.pem")):
                try:
                    certs[path.stem] = x509.load_pem_x509_certificate(path.read_bytes())
                except ValueError as exc:
                    raise ValueError(f"{path}: not a PEM certificate ({exc})") from None
    return certs


@dataclass(frozen=True)
class AwsConfig:
    cert_dir: Path | None = None
    allowed_accounts: tuple[str, ...] = ()
    allowed_regions: tuple[str, ...] = ()
    max_instance_age: float | None = None
    reattest: Literal["evict", "always"] = "evict"
    groups: GroupRules = field(default_factory=GroupRules)


class AwsVerifier:
    evidence_type = "aws"
    needs_challenge = False
    spent_reason = "instance_already_attested"

    def __init__(self, config: AwsConfig, *, ledger: InstanceLedger | None = None,
                 clock: Clock,
                 certs: Mapping[str, x509.Certificate] | None = None) -> None:
        self._config = config
        self._clock = clock
        self.ledger: InstanceLedger = ledger or MemoryLedger()
        if certs is None:
            dirs = [SHIPPED_CERTS] + ([config.cert_dir] if config.cert_dir else [])
            certs = load_region_certs(*dirs)
        self._certs = dict(certs)

    async def verify(self, evidence: Mapping[str, Any], challenge: str | None) -> Verified:
        verified = self._verified(evidence)
        if self._config.reattest == "evict" and not self.ledger.allowed(verified.subject):
            raise _already()
        return verified

    def _verified(self, evidence: Mapping[str, Any]) -> Verified:
        """Every check but the first use's."""
        document = pkcs7.decode_b64(evidence.get("document"), "document", limit=MAX_DOCUMENT_B64)
        signed = pkcs7.parse(pkcs7.decode_b64(evidence.get("pkcs7"), "pkcs7"))
        if signed.content != document:
            # SPIRE once verified one document and used another: never again.
            raise Rejected("evidence_document_mismatch",
                           "the PKCS#7 signs a different document than the one sent")
        doc = _document(document)
        region = doc["region"]
        cert = self._certs.get(region)
        if cert is None:
            raise Rejected("evidence_signer_untrusted", f"no pinned AWS certificate for {region}")
        # The key decides, not the SignerInfo's label: verify with the pinned
        # certificate of the document's own region; the label only explains a failure.
        if not pkcs7.signature_valid(signed, cert):
            other = next((r for r, c in self._certs.items()
                          if r != region and pkcs7.names(signed.signer, c)), None)
            if other is not None:
                raise Rejected("evidence_signer_untrusted",
                               f"document for {region} is signed with the {other} certificate")
            raise Rejected("evidence_signature_invalid",
                           f"signature does not verify with the pinned {region} certificate")
        claims = self._policy(doc)
        group = self._config.groups.resolve("aws", claims)
        subject = f"aws:{claims['account_id']}:{claims['instance_id']}"
        private_ip = doc.get("privateIp")
        return Verified(evidence_type="aws", subject=subject, claims=claims, group=group,
                        addresses=(private_ip,) if isinstance(private_ip, str) and private_ip
                        else ())

    async def commit(self, verified: Verified, receipt: Receipt | None = None) -> None:
        """Spend the instance's first use once the whole request will succeed
        (``SingleUse``), so a bad CSR does not lock an instance out."""
        if self._config.reattest == "evict" and not self.ledger.claim(verified.subject,
                                                                        receipt):
            raise _already()

    def answered(self, evidence: Mapping[str, Any], key_sha256: str) -> Answered | None:
        """``Repeatable``: asked after a refusal as already attested. The document must
        verify as for a first use, and the instance must still map to the group its
        first use was recorded in."""
        if self._config.reattest != "evict":
            return None
        try:
            verified = self._verified(evidence)
        except Rejected:
            return None
        answered = self.ledger.answered(verified.subject, key_sha256)
        if answered is None or answered.group != verified.group:
            return None
        return answered

    def _policy(self, doc: Mapping[str, Any]) -> dict[str, str]:
        claims = {"account_id": doc["accountId"], "region": doc["region"],
                  "instance_id": doc["instanceId"]}
        for key, name in (("availabilityZone", "availability_zone"), ("imageId", "image_id"),
                          ("instanceType", "instance_type"), ("architecture", "architecture")):
            if isinstance(doc.get(key), str):
                claims[name] = doc[key]
        if self._config.allowed_accounts and claims["account_id"] not in \
                self._config.allowed_accounts:
            raise Rejected("evidence_not_allowed", "AWS account is not in the allow-list")
        if self._config.allowed_regions and claims["region"] not in self._config.allowed_regions:
            raise Rejected("evidence_not_allowed", "AWS region is not in the allow-list")
        limit = self._config.max_instance_age
        if limit is not None:
            try:
                pending = datetime.fromisoformat(str(doc.get("pendingTime"))).timestamp()
            except ValueError:
                raise Rejected("evidence_invalid", "document pendingTime unreadable") from None
            if self._clock.now().timestamp() - pending > limit:
                raise Rejected("evidence_instance_too_old",
                               f"EC2 instance started more than {limit:.0f} s ago")
        return claims


def _already() -> Rejected:
    return Rejected("instance_already_attested", "this EC2 instance already attested; "
                    "`mesh-registrar workloads evict ID` allows it to attest again")


def _document(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Rejected("evidence_invalid", "identity document is not JSON") from None
    if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), str) and doc[k] for k in ("accountId", "region", "instanceId")):
        raise Rejected("evidence_invalid",
                       "identity document lacks accountId, region or instanceId")
    return doc
