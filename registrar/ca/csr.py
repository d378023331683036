"""CSR policy: only the public key of a CSR is ever used. The identity in the
issued certificate is the one decided from the evidence (a CSR asking for any
other URI is refused), and the key must be RSA >= 2048 or ECDSA P-256/P-384.

Pure: takes PEM text, returns the checked public key or raises ``Rejected``.
Run before any evidence is spent, so a bad CSR never burns a join token.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from registrar.rejections import Rejected

MAX_CSR_CHARS = 16 * 1024
_CURVES = (ec.SECP256R1, ec.SECP384R1)
MIN_RSA_BITS = 2048

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class CheckedCsr:
    public_key: PublicKey
    uri_sans: tuple[str, ...]

    def key_sha256(self) -> str:
        """Hex SHA-256 of the key's SubjectPublicKeyInfo (DER): names the key, not the CSR."""
        return spki_sha256(self.public_key)

    def require_identity(self, spiffe_id: str) -> None:
        """Reject a CSR that asks for any URI other than the identity we decided."""
        for uri in self.uri_sans:
            if uri != spiffe_id:
                raise Rejected("csr_identity_mismatch",
                               f"CSR asks for {uri!r}; this evidence gives {spiffe_id!r}")


def spki_sha256(key: PublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def check_csr(pem: str) -> CheckedCsr:
    if len(pem) > MAX_CSR_CHARS:
        raise Rejected("csr_invalid", f"CSR larger than {MAX_CSR_CHARS} characters")
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
        extensions = csr.extensions
    except (ValueError, UnicodeEncodeError, TypeError, x509.InvalidVersion,
            x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise Rejected("csr_invalid", "cannot parse the CSR as PEM PKCS#10") from exc
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:  # unknown algorithm or curve OID
        raise Rejected("csr_key_unsupported",
                       "unknown key type; allowed: RSA >= 2048, ECDSA P-256/P-384") from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise Rejected("csr_key_unsupported",
                           f"RSA-{key.key_size}; allowed: RSA >= 2048, ECDSA P-256/P-384")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            raise Rejected("csr_key_unsupported",
                           f"curve {key.curve.name}; allowed: RSA >= 2048, ECDSA P-256/P-384")
    else:
        raise Rejected("csr_key_unsupported",
                       f"{type(key).__name__}; allowed: RSA >= 2048, ECDSA P-256/P-384")
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # an unsupported signature algorithm is not a valid signature
        raise Rejected("csr_signature_invalid", "CSR signature cannot be checked") from exc
    if not valid:
        raise Rejected("csr_signature_invalid", "CSR self-signature does not verify")
    uris: list[str] = []
    for ext in extensions:
        if ext.oid == ExtensionOID.BASIC_CONSTRAINTS:
            assert isinstance(ext.value, x509.BasicConstraints)
            if ext.value.ca:
                raise Rejected("csr_ca_requested", "CSR asks for CA:true")
        elif ext.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            assert isinstance(ext.value, x509.SubjectAlternativeName)
            uris.extend(ext.value.get_values_for_type(x509.UniformResourceIdentifier))
    return CheckedCsr(public_key=key, uri_sans=tuple(uris))
