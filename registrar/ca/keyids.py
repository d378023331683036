"""Key identifiers and the strict-X.509 checks a CA certificate must pass.

Strict verifiers (OpenSSL's ``X509_V_FLAG_X509_STRICT``, which Python 3.13 sets
by default) refuse a chain when a certificate below the trust anchor has no
Authority Key Identifier, or when any CA certificate has no Subject Key
Identifier, critical basicConstraints or keyUsage. Everything we sign carries
both identifiers; an imported CA is checked here before anything is written.

Pure: certificates in, extensions or problem lists out.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa


@dataclass(frozen=True)
class AuthorityKeyId:
    """The AKI for certificates ``issuer`` signs; ``derived`` when the issuer has no SKI."""

    extension: x509.AuthorityKeyIdentifier
    derived: bool


def authority_key_id(issuer: x509.Certificate) -> AuthorityKeyId:
    """Copy the issuer's own SKI (chain building matches AKI to SKI byte for byte, and
    an imported CA may use any SKI method). Without one, derive it with RFC 5280
    method 1: SHA-1 of the issuer's subjectPublicKey bits."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public = issuer.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError(f"CA key must be ECDSA or RSA, got {type(public).__name__}") from None
        return AuthorityKeyId(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), True)
    return AuthorityKeyId(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                          False)


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[
        x509.ExtensionType] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def strict_problems(cert: x509.Certificate, *, anchor: bool) -> list[str]:
    """What a strict verifier would refuse in CA certificate ``cert``; empty when clean.

    ``anchor``: the certificate is a trust anchor (a root in the bundle), which alone
    may lack an Authority Key Identifier.
    """
    problems: list[str] = []
    if cert.version != x509.Version.v3:
        problems.append("is not an X.509 v3 certificate")
    basic = _extension(cert, x509.BasicConstraints)
    if basic is None or not isinstance(basic.value, x509.BasicConstraints) or not basic.value.ca:
        problems.append("is not a CA (basicConstraints CA:TRUE missing)")
    elif not basic.critical:
        problems.append("has basicConstraints not marked critical")
    usage = _extension(cert, x509.KeyUsage)
    if usage is None:
        problems.append("has no keyUsage extension")
    elif isinstance(usage.value, x509.KeyUsage) and not usage.value.key_cert_sign:
        problems.append("has keyUsage without keyCertSign")
    ski = _extension(cert, x509.SubjectKeyIdentifier)
    if ski is None:
        problems.append("has no Subject Key Identifier")
    elif ski.critical:
        problems.append("has a critical Subject Key Identifier")
    aki = _extension(cert, x509.AuthorityKeyIdentifier)
    if aki is not None and aki.critical:
        problems.append("has a critical Authority Key Identifier")
    if not anchor and (aki is None or not isinstance(aki.value, x509.AuthorityKeyIdentifier)
                       or aki.value.key_identifier is None):
        problems.append("has no Authority Key Identifier (keyIdentifier)")
    if len(cert.subject) == 0:
        problems.append("has an empty subject")
    if len(cert.issuer) == 0:
        problems.append("has an empty issuer")
    return problems


def leaf_problems(cert: x509.Certificate) -> list[str]:
    """What a strict verifier would refuse in end-entity ``cert`` (our server certificate):
    registrars initialised before key identifiers were added lack the AKI."""
    aki = _extension(cert, x509.AuthorityKeyIdentifier)
    if aki is None or not isinstance(aki.value, x509.AuthorityKeyIdentifier) or (
            aki.value.key_identifier is None):
        return ["has no Authority Key Identifier (keyIdentifier)"]
    return ["has a critical Authority Key Identifier"] if aki.critical else []


def strict_report(server: x509.Certificate, ca_cert: x509.Certificate,
                  chain: list[x509.Certificate], roots: list[x509.Certificate]) -> list[str]:
    """Every strict-X.509 problem of a registrar's certificates, labelled by role."""
    root_ids = {r.fingerprint(hashes.SHA256()) for r in roots}
    out = [f"server certificate {p}" for p in leaf_problems(server)]
    out += [f"signing CA certificate {p}" for p in strict_problems(
        ca_cert, anchor=ca_cert.fingerprint(hashes.SHA256()) in root_ids)]
    out += [f"intermediate {c.subject.rfc4514_string()} {p}" for c in chain
            if c != ca_cert and c.fingerprint(hashes.SHA256()) not in root_ids
            for p in strict_problems(c, anchor=False)]
    out += [f"root {r.subject.rfc4514_string()} {p}" for r in roots
            for p in strict_problems(r, anchor=True)]
    return out
