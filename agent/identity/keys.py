"""Key generation and CSRs. The key is made here, on the VM, and never leaves it:
only the CSR (public key + self-signature) is sent to the registrar.

The CSR is encoded here rather than with cryptography's x509 builder: it is one
fixed shape, and not importing ``cryptography.x509`` halves the start of the key
helper process (``keygen_child``), which a first boot waits for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from agent.identity.pem import pem_block

if TYPE_CHECKING:
    from cryptography import x509

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_key(key_type: str) -> PrivateKey:
    """``ecdsa-p256`` (default), ``ecdsa-p384``, ``rsa-2048`` or ``rsa-3072``."""
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type in ("rsa-2048", "rsa-3072"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise ValueError(f"unsupported key type {key_type!r}")


def build_csr(key: PrivateKey, hostname: str) -> bytes:
    """A PKCS#10 CSR (RFC 2986) for ``key``, PEM. It asks for no identity (the
    registrar decides that): the subject is ``CN=<hostname>`` and it has no
    attributes."""
    common_name = _der(0x0C, (hostname[:64] or "mesh-agent").encode())  # UTF8String
    subject = _der(0x30, _der(0x31, _der(0x30, _OID_COMMON_NAME + common_name)))
    public_key = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    # version 0, subject, subjectPKInfo, attributes [0] (an empty SET)
    info = _der(0x30, b"\x02\x01\x00" + subject + public_key + b"\xa0\x00")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm, signature = _ECDSA_WITH_SHA256, key.sign(info, ec.ECDSA(hashes.SHA256()))
    else:
        algorithm = _SHA256_WITH_RSA
        signature = key.sign(info, padding.PKCS1v15(), hashes.SHA256())
    der = _der(0x30, info + algorithm + _der(0x03, b"\x00" + signature))
    return pem_block("CERTIFICATE REQUEST", der)


_OID_COMMON_NAME = bytes.fromhex("0603550403")  # 2.5.4.3
_ECDSA_WITH_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")  # 1.2.840.10045.4.3.2
_SHA256_WITH_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")  # 1.2.840.113549.1.1.11, NULL


def _der(tag: int, body: bytes) -> bytes:
    """One DER element: ``tag``, the definite length in its shortest form, ``body``."""
    if len(body) < 0x80:
        return bytes((tag, len(body))) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + body


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("unsupported private key type")
    return key


def public_der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def matches(key: PrivateKey, cert: x509.Certificate) -> bool:
    """True when ``cert`` certifies ``key``'s public half."""
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == public_der(key)
