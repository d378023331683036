"""The agent's CSR (agent/identity/keys.py encodes it itself, so the key helper
does not import cryptography's x509 builder) against what cryptography's
builder makes, and through the registrar's own CSR check."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from agent.identity.keys import build_csr, generate_key
from registrar.ca.csr import check_csr


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "ecdsa-p384", "rsa-2048"])
@pytest.mark.parametrize("hostname", ["vm-1", "h" * 100, "höst-ü", ""])
def test_the_csr_is_the_one_cryptography_would_build(key_type: str, hostname: str) -> None:
    key = generate_key(key_type)
    pem = build_csr(key, hostname)
    mine = x509.load_pem_x509_csr(pem)
    reference = (x509.CertificateSigningRequestBuilder()
                 .subject_name(x509.Name([x509.NameAttribute(
                     NameOID.COMMON_NAME, hostname[:64] or "mesh-agent")]))
                 .sign(key, hashes.SHA256()))
    assert mine.is_signature_valid
    assert mine.tbs_certrequest_bytes == reference.tbs_certrequest_bytes
    assert mine.signature_algorithm_oid == reference.signature_algorithm_oid
    if key_type.startswith("rsa"):  # PKCS#1 v1.5 signatures are deterministic
        assert pem == reference.public_bytes(serialization.Encoding.PEM)
    assert pem == mine.public_bytes(serialization.Encoding.PEM)  # the armour, byte for byte
    checked = check_csr(pem.decode())
    assert checked.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)
