"""CMS/PKCS#7 SignedData as EC2 (``rsa2048``) and Azure (attested document) send it.

``cryptography`` loads the certificates of a PKCS#7 but not its SignerInfo, so
the structure is read with asn1crypto and the signature is checked here,
explicitly, over the exact bytes it covers: the DER of the signed attributes
(re-tagged as a SET, RFC 5652 §5.4) whose messageDigest must equal the digest
of the embedded content, or the content itself when there are no attributes.
The caller then compares that same embedded content with the document it uses,
byte for byte, so a signature over one document can never vouch for another.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from registrar.rejections import Rejected

# Largest base64 PKCS#7 we parse before authentication (real ones are ~2-6 KiB).
MAX_PKCS7_B64 = 32 * 1024

_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


@dataclass(frozen=True)
class Signer:
    """Who signed (as the SignerInfo names it) and what exactly was signed."""

    issuer_der: bytes | None
    serial: int | None
    key_id: bytes | None
    digest: hashes.HashAlgorithm
    signed_bytes: bytes
    signature: bytes
    message_digest: bytes | None


@dataclass(frozen=True)
class SignedData:
    content: bytes
    certificates: tuple[x509.Certificate, ...]
    signer: Signer


def decode_b64(value: Any, field: str, *, limit: int = MAX_PKCS7_B64) -> bytes:
    """Base64 evidence field -> bytes; PEM armour and whitespace tolerated."""
    if not isinstance(value, str) or not value:
        raise Rejected("evidence_invalid", f"evidence field {field!r} is missing")
    if len(value) > limit:
        raise Rejected("evidence_invalid", f"evidence field {field!r} is larger than {limit}")
    text = "".join(line for line in value.splitlines() if not line.startswith("-----"))
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("evidence_invalid", f"evidence field {field!r} is not base64") from None


def parse(der: bytes) -> SignedData:
    """Parse a DER ContentInfo holding SignedData with one signer and embedded content."""
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "signed_data":
            raise ValueError("not SignedData")
        signed = info["content"]
        encap = signed["encap_content_info"]
        if encap["content_type"].native != "data" or encap["content"].native is None:
            raise ValueError("no embedded data content")
        content = bytes(encap["content"].native)
        certs = tuple(
            _certificate(choice.chosen.dump())
            for choice in (signed["certificates"] or ()) if choice.name == "certificate")
        infos = signed["signer_infos"]
        if len(infos) != 1:
            raise ValueError(f"{len(infos)} signers, expected exactly 1")
        signer = _signer(infos[0], content)
    except Rejected:
        raise
    except Exception as exc:  # asn1crypto raises many types on malformed input
        raise Rejected("evidence_invalid", f"PKCS#7 is malformed: {type(exc).__name__}") from None
    return SignedData(content=content, certificates=certs, signer=signer)


def _certificate(der: bytes) -> x509.Certificate:
    """An embedded certificate with every field this module and the verifiers
    read already parsed: cryptography parses some only when first read, and a
    malformed one must be malformed evidence here, not an exception (a 500) in
    ``names`` or the chain check later (found by tests/fuzz, registrar_request)."""
    cert = x509.load_der_x509_certificate(der)
    _ = (cert.issuer, cert.subject, cert.serial_number, cert.extensions, cert.public_key(),
         cert.not_valid_before_utc, cert.not_valid_after_utc)
    return cert


def _signer(info: Any, content: bytes) -> Signer:
    digest_name = info["digest_algorithm"]["algorithm"].native
    if digest_name not in _DIGESTS:
        raise Rejected("evidence_algorithm_invalid",
                       f"PKCS#7 digest {digest_name!r} not in {sorted(_DIGESTS)}")
    digest = _DIGESTS[digest_name]()
    sid = info["sid"]
    issuer_der = serial = key_id = None
    if sid.name == "issuer_and_serial_number":
        issuer_der = sid.chosen["issuer"].dump()
        serial = int(sid.chosen["serial_number"].native)
    else:
        key_id = bytes(sid.chosen.native)
    attrs = info["signed_attrs"]
    message_digest: bytes | None = None
    if attrs.native:
        for attr in attrs:
            kind = attr["type"].native
            if kind == "message_digest":
                message_digest = bytes(attr["values"][0].native)
            elif kind == "content_type" and attr["values"][0].native != "data":
                raise ValueError("signed content type is not data")
        if message_digest is None:
            raise ValueError("signed attributes without messageDigest")
        # The signature covers the attributes as an explicit SET OF (tag 0x31),
        # not the [0] IMPLICIT form they are carried in.
        raw = attrs.dump()
        signed_bytes = b"\x31" + raw[1:]
    else:
        signed_bytes = content
    return Signer(issuer_der=issuer_der, serial=serial, key_id=key_id, digest=digest,
                  signed_bytes=signed_bytes, signature=bytes(info["signature"].native),
                  message_digest=message_digest)


def names(signer: Signer, cert: x509.Certificate) -> bool:
    """Whether the SignerInfo's identifier designates ``cert``."""
    if signer.serial is not None:
        return (cert.serial_number == signer.serial
                and cert.issuer.public_bytes() == signer.issuer_der)
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return False
    return signer.key_id is not None and hmac.compare_digest(ski.digest, signer.key_id)


def signature_valid(signed: SignedData, cert: x509.Certificate) -> bool:
    """Whether ``cert``'s key made the signature over this content."""
    signer = signed.signer
    if signer.message_digest is not None:
        h = hashes.Hash(signer.digest)
        h.update(signed.content)
        if not hmac.compare_digest(h.finalize(), signer.message_digest):
            return False
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                return False
            key.verify(signer.signature, signer.signed_bytes, padding.PKCS1v15(), signer.digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signer.signature, signer.signed_bytes, ec.ECDSA(signer.digest))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True
