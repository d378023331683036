"""CSRs for tests: good ones and each way the registrar must refuse one."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def csr_pem(key: CertificateIssuerPrivateKeyTypes, *, uris: tuple[str, ...] = (),
            ca: bool | None = None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uris:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                                        critical=True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(
        serialization.Encoding.PEM).decode()


def bad_signature_pem(key: Key) -> str:
    """A well-formed CSR whose self-signature does not verify (last byte flipped)."""
    der = bytearray(x509.load_pem_x509_csr(csr_pem(key).encode()).public_bytes(
        serialization.Encoding.DER))
    der[-1] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


def rsa_1024_pem() -> str:
    return csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))


def key_pem(key: Key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
