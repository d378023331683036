"""Azure: the attested document (PKCS#7) from IMDS, bound to the challenge nonce.

The certificate that verifies the signature must be the very certificate that
chains to the pinned root and carries an allowed signer name: it is chosen by
the SignerInfo, chain-validated, and only then used for the signature check
(SPIRE once validated one embedded certificate and verified with another).
The signed content holds the nonce, which must be this attestation's challenge.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509 import DNSName
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshcore.clock import Clock
from registrar.attestation import pkcs7
from registrar.attestation.base import Verified
from registrar.attestation.groups import GroupRules
from registrar.rejections import Rejected

# Names Azure's IMDS signing certificate carries, public and sovereign clouds.
SIGNER_NAMES = ("metadata.azure.com", "metadata.azure.us", "metadata.azure.cn",
                "metadata.microsoftazure.de")
_TIME_FORMAT = "%m/%d/%y %H:%M:%S %z"


def load_pem_certs(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        certs = tuple(x509.load_pem_x509_certificates(path.read_bytes()))
    except ValueError as exc:
        raise ValueError(f"{path}: not PEM certificates ({exc})") from None
    return certs


@dataclass(frozen=True)
class AzureConfig:
    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    signer_names: tuple[str, ...] = SIGNER_NAMES
    allowed_subscriptions: tuple[str, ...] = ()
    groups: GroupRules = field(default_factory=GroupRules)


class AzureVerifier:
    evidence_type = "azure"
    needs_challenge = True

    def __init__(self, config: AzureConfig, *, clock: Clock) -> None:
        if not config.roots:
            raise ValueError("azure verifier needs at least one pinned root certificate")
        self._config = config
        self._clock = clock
        self._store = Store(list(config.roots))

    async def verify(self, evidence: Mapping[str, Any], challenge: str | None) -> Verified:
        if not challenge:
            raise Rejected("challenge_invalid", "Azure evidence needs a challenge")
        signed = pkcs7.parse(pkcs7.decode_b64(evidence.get("document"), "document"))
        signer = next((c for c in signed.certificates if pkcs7.names(signed.signer, c)), None)
        if signer is None:
            raise Rejected("evidence_signer_untrusted",
                           "the PKCS#7 does not carry the certificate its signer names")
        self._chain(signer, [c for c in signed.certificates if c is not signer])
        if not pkcs7.signature_valid(signed, signer):
            raise Rejected("evidence_signature_invalid",
                           "signature does not verify with the chained signing certificate")
        doc = _document(signed.content)
        if doc.get("nonce") != challenge:
            raise Rejected("evidence_nonce_mismatch",
                           "attested document nonce is not this attestation's challenge")
        self._fresh(doc)
        claims = {"subscription_id": doc["subscriptionId"], "vm_id": doc["vmId"]}
        if isinstance(doc.get("sku"), str):
            claims["sku"] = doc["sku"]
        plan = doc.get("plan")
        if isinstance(plan, Mapping):
            for key, name in (("product", "offer"), ("publisher", "publisher")):
                if isinstance(plan.get(key), str) and plan[key]:
                    claims[name] = plan[key]
        allowed = self._config.allowed_subscriptions
        if allowed and claims["subscription_id"] not in allowed:
            raise Rejected("evidence_not_allowed", "Azure subscription is not in the allow-list")
        group = self._config.groups.resolve("azure", claims)
        return Verified(evidence_type="azure", subject=f"azure:{claims['vm_id']}",
                        claims=claims, group=group)

    def _chain(self, signer: x509.Certificate, extra: list[x509.Certificate]) -> None:
        now = self._clock.now()
        builder = PolicyBuilder().store(self._store).time(now)
        intermediates = list(self._config.intermediates) + extra
        for name in self._config.signer_names:
            try:
                builder.build_server_verifier(DNSName(name)).verify(signer, intermediates)
            except VerificationError:
                continue
            return
        raise Rejected("evidence_signer_untrusted",
                       "signing certificate does not chain to the pinned root with an "
                       f"allowed name ({', '.join(self._config.signer_names)})")

    def _fresh(self, doc: Mapping[str, Any]) -> None:
        stamp = doc.get("timeStamp")
        try:
            if not isinstance(stamp, Mapping):
                raise TypeError
            expires = datetime.strptime(str(stamp["expiresOn"]), _TIME_FORMAT).timestamp()
        except (TypeError, KeyError, ValueError):
            raise Rejected("evidence_invalid", "attested document timeStamp unreadable") from None
        if self._clock.now().timestamp() > expires + 60:
            raise Rejected("evidence_expired", "attested document expired")


def _document(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Rejected("evidence_invalid", "attested document is not JSON") from None
    if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), str) and doc[k] for k in ("subscriptionId", "vmId")):
        raise Rejected("evidence_invalid", "attested document lacks subscriptionId or vmId")
    return doc
