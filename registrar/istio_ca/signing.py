"""CreateCertificate's decision: the caller's CSR, signed for the caller's identity.

The same CSR policy as the HTTPS API (registrar/ca/csr.py): only the public key
is used; a CSR naming any other URI than the caller's identity, asking for
CA:true, or holding a key other than RSA >= 2048 / ECDSA P-256/P-384 is
refused. ``validity_duration`` (seconds) is honoured up to the caller's
``cert_ttl``; 0 or less means ``cert_ttl`` (Istio's default TTL rule).

The answer is Istio's: one PEM per element, each ending in a newline, the leaf
first, then the intermediates, and the trust bundle last as one element (all
roots: Istio's "the root cert is the last element", never split, so a client
can tell the roots apart from the chain).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from registrar.ca.authority import Authority
from registrar.ca.csr import check_csr
from registrar.istio_ca.callers import Caller
from registrar.istio_ca.refusals import Refused
from registrar.rejections import Rejected

# Metadata a node agent sends to ask for another workload's identity (istiod's
# CA_TRUSTED_NODE_ACCOUNTS): never granted here.
IMPERSONATION_KEY = "ImpersonatedIdentity"


@dataclass(frozen=True)
class Signed:
    cert_chain: list[str]
    serial_hex: str
    not_after: float


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def sign(authority: Authority, caller: Caller, csr_pem: str, validity_seconds: int,
         impersonate: str | None) -> Signed:
    if impersonate:
        raise Refused("impersonation_refused", "this CA signs only the caller's own identity")
    try:
        checked = check_csr(csr_pem)
        checked.require_identity(caller.spiffe_id)
    except Rejected as exc:
        raise Refused.of(exc) from None
    ttl = caller.max_ttl if validity_seconds <= 0 else min(float(validity_seconds),
                                                           caller.max_ttl)
    issued = authority.issue(checked.public_key, caller.spiffe_id, ttl)
    chain = [_pem(c) for c in x509.load_pem_x509_certificates(issued.chain_pem.encode())]
    return Signed(cert_chain=[*chain, authority.bundle_pem], serial_hex=issued.serial_hex,
                  not_after=issued.not_after.timestamp())
