"""CSRs for tests: good ones and each way the registrar must refuse one."""

from __future__ import annotations

import base64

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


def _resigned(key: ec.EllipticCurvePrivateKey, info: bytes, template: bytes) -> str:
    """A CSR with CertificationRequestInfo ``info`` (DER), validly signed by ``key``."""
    from asn1crypto import csr as asn1_csr
    original = asn1_csr.CertificationRequest.load(template)
    request = asn1_csr.CertificationRequest({
        "certification_request_info": asn1_csr.CertificationRequestInfo.load(info),
        "signature_algorithm": original["signature_algorithm"],
        "signature": key.sign(info, ec.ECDSA(hashes.SHA256()))})
    body = base64.encodebytes(request.dump()).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


def _swapped(extensions: list[x509.ExtensionType], old: bytes, new: bytes,
             count: int = 1) -> str:
    """A signed EC CSR whose info has ``old`` replaced by ``new`` (same length)."""
    assert len(old) == len(new)
    key = ec_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    csr = builder.sign(key, hashes.SHA256())
    info = csr.tbs_certrequest_bytes
    assert info.count(old) >= count, "pattern not found"
    return _resigned(key, info.replace(old, new, count),
                     csr.public_bytes(serialization.Encoding.DER))


_EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey
_P256 = bytes.fromhex("06082a8648ce3d030107")  # prime256v1
_SAN = bytes.fromhex("0603551d11")  # id-ce-subjectAltName
_PLACEHOLDER = bytes.fromhex("0603551d63")  # an unassigned id-ce arc of the same length
_SAN_ID = x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://td/x")])


def unknown_key_algorithm_pem() -> str:
    return _swapped([], _EC_PUBLIC_KEY, bytes.fromhex("06072a8648ce3d0209"))


def unknown_curve_pem() -> str:
    return _swapped([], _P256, bytes.fromhex("06082a8648ce3d030163"))


def duplicate_san_pem() -> str:
    placeholder = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.99"),
                                             _SAN_ID.public_bytes())
    return _swapped([_SAN_ID, placeholder], _PLACEHOLDER, _SAN)


def duplicate_basic_constraints_pem() -> str:
    constraints = x509.BasicConstraints(ca=False, path_length=None)
    placeholder = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.99"),
                                             constraints.public_bytes())
    return _swapped([constraints, placeholder], _PLACEHOLDER, bytes.fromhex("0603551d13"))


def raw_san_pem(general_names: bytes) -> str:
    """A SAN extension of raw DER GeneralNames (e.g. x400Address, ediPartyName)."""
    value = bytes([0x30, len(general_names)]) + general_names
    return _swapped([x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.99"), value)],
                    _PLACEHOLDER, _SAN)


X400_ADDRESS = bytes.fromhex("a3023000")  # [3] ORAddress with empty standard attributes
EDI_PARTY_NAME = bytes.fromhex("a506a104 0c026869".replace(" ", ""))  # partyName "hi"


def version_2_pem() -> str:
    """PKCS#10 knows only version 0 (v1); this one says 1."""
    return _swapped([], bytes.fromhex("020100"), bytes.fromhex("020101"))
