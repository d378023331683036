"""Hand-made malformed PKCS#7 for negative tests (what an attacker would send)."""

from __future__ import annotations

import base64
from collections.abc import Callable

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from registrar.attestation.base import Verified


def _load(b64: str) -> cms.ContentInfo:
    return cms.ContentInfo.load(base64.b64decode(b64))


def _dump(info: cms.ContentInfo) -> str:
    return base64.b64encode(info.dump(force=True)).decode()


def truncate_signature(b64: str, cut: int = 16) -> str:
    info = _load(b64)
    signer = info["content"]["signer_infos"][0]
    signer["signature"] = cms.OctetString(bytes(signer["signature"].native)[:-cut])
    return _dump(info)


def relabel(b64: str, named: x509.Certificate, embed: list[x509.Certificate]) -> str:
    """Keep the signature, but make the SignerInfo name ``named`` and embed ``embed``."""
    info = _load(b64)
    signed = info["content"]
    cert = asn1_x509.Certificate.load(named.public_bytes(serialization.Encoding.DER))
    signed["signer_infos"][0]["sid"] = cms.SignerIdentifier(
        name="issuer_and_serial_number",
        value=cms.IssuerAndSerialNumber({"issuer": cert.issuer,
                                         "serial_number": cert.serial_number}))
    signed["certificates"] = cms.CertificateSet([
        cms.CertificateChoices(name="certificate", value=asn1_x509.Certificate.load(
            c.public_bytes(serialization.Encoding.DER))) for c in embed])
    return _dump(info)


def signed_ranges(der: bytes) -> list[range]:
    """Where in ``der`` the signed content, the signed attributes and the signature
    value lie: a changed byte there must never verify."""
    signer = cms.ContentInfo.load(der)["content"]
    parts = [signer["encap_content_info"]["content"].contents,
             signer["signer_infos"][0]["signature"].contents]
    attrs = signer["signer_infos"][0]["signed_attrs"]
    if attrs.native is not None:
        parts.append(attrs.contents)
    ranges = []
    for part in parts:
        start = der.find(part)
        assert start >= 0 and der.find(part, start + 1) < 0, "ambiguous part"
        ranges.append(range(start, start + len(part)))
    return ranges


def flip(der: bytes, pos: int, mask: int) -> bytes:
    return der[:pos] + bytes([der[pos] ^ mask]) + der[pos + 1:]


def assert_cuts_and_flips_refused(raw: bytes, outcome: Callable[[bytes], Verified | None],
                                  genuine: Verified, *, cut_step: int, flip_step: int,
                                  mask: int) -> None:
    """Every cut of a genuine PKCS#7 ``raw`` is refused (``outcome`` is None), and
    so is every flipped byte inside what is signed; a flip elsewhere (e.g. the
    certificate list) may verify, but then proves nothing beyond ``genuine``."""
    for cut in range(0, len(raw), cut_step):
        assert outcome(raw[:cut]) is None, f"accepted a PKCS#7 cut to {cut} bytes"
    signed, checked = signed_ranges(raw), 0
    for pos in range(0, len(raw), flip_step):
        got = outcome(flip(raw, pos, mask))
        if any(pos in part for part in signed):
            checked += 1
            assert got is None, f"accepted a flipped signed byte at {pos}"
        else:
            assert got is None or got == genuine, pos
    assert checked >= 5
