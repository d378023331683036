"""The few certificate fields the daemon reads, from DER, without cryptography.

Loading the ``cryptography`` package costs the resident daemon about 10 MiB
(its Rust extension carries its own OpenSSL), yet between renewals the agent
only reads a handful of fields of certificates it already holds: the validity
window, the serial, the SPIFFE ID and the public key. This reader gets those
from the DER. It is strict: anything it does not understand is a ``ValueError``
(never another exception), so a damaged generation on disk is quarantined, not
a crash. It does not verify signatures: the store also loads every file with
the standard library's OpenSSL (``ssl``), which parses the whole certificate
and checks that the key matches it (``store.py``).

Keys and CSRs are made in a short-lived helper process that does import
cryptography (``agent.identity.keygen``).
"""

from __future__ import annotations

import binascii
import datetime as dt
import re
from dataclasses import dataclass, field

from agent.identity.pem import pem_block

# Universal tags, and the context tags used in a TBSCertificate and a GeneralName.
_BOOLEAN, _INTEGER, _BIT_STRING, _OCTET_STRING, _OID = 0x01, 0x02, 0x03, 0x04, 0x06
_UTC_TIME, _GENERALIZED_TIME, _SEQUENCE = 0x17, 0x18, 0x30
_VERSION, _ISSUER_UID, _SUBJECT_UID, _EXTENSIONS = 0xA0, 0x81, 0x82, 0xA3
_URI = 0x86
_SAN = bytes.fromhex("551d11")  # 2.5.29.17, subjectAltName

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.S)


class _Reader:
    """DER TLVs of one buffer, in order. Only definite, minimal lengths."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self) -> int | None:
        return None if self.done() else self.data[self.pos]

    def read(self, tag: int | None = None) -> tuple[int, bytes]:
        data, pos = self.data, self.pos
        if pos + 2 > len(data):
            raise ValueError("truncated DER")
        got = data[pos]
        if got & 0x1F == 0x1F:
            raise ValueError("DER tag in high-tag-number form")
        if tag is not None and got != tag:
            raise ValueError(f"DER tag 0x{got:02x} where 0x{tag:02x} belongs")
        first, pos = data[pos + 1], pos + 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0 or count > 4 or pos + count > len(data):
                raise ValueError("DER length is indefinite, too long or truncated")
            length = int.from_bytes(data[pos:pos + count], "big")
            if length < 0x80 or data[pos] == 0:
                raise ValueError("DER length not in its shortest form")
            pos += count
        if pos + length > len(data):
            raise ValueError("DER value runs past its end")
        self.pos = pos + length
        return got, data[pos:pos + length]

    def element(self, tag: int) -> bytes:
        """The whole TLV (header included) of the next element, which must be ``tag``."""
        start = self.pos
        self.read(tag)
        return self.data[start:self.pos]

    def end(self, what: str) -> None:
        if not self.done():
            raise ValueError(f"trailing data after {what}")


def _time(tag: int, value: bytes) -> dt.datetime:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("a certificate time is not ASCII") from None
    if tag == _UTC_TIME and re.fullmatch(r"\d{12}Z", text):
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif not (tag == _GENERALIZED_TIME and re.fullmatch(r"\d{14}Z", text)):
        raise ValueError(f"a certificate time {text[:20]!r} is not UTCTime or GeneralizedTime")
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Cert:
    """One certificate: its DER and the fields the agent uses."""

    der: bytes = field(repr=False)
    serial_number: int
    not_before: dt.datetime
    not_after: dt.datetime
    uris: tuple[str, ...]
    """The URI subject alternative names, in order."""
    public_key_info: bytes = field(repr=False)
    """The DER of its SubjectPublicKeyInfo."""

    @property
    def spiffe_id(self) -> str | None:
        """The one ``spiffe://`` URI SAN, else None (none or several)."""
        ids = [u for u in self.uris if u.startswith("spiffe://")]
        return ids[0] if len(ids) == 1 else None

    def pem(self) -> bytes:
        return pem_block("CERTIFICATE", self.der)


def parse_cert(der: bytes) -> Cert:
    """A certificate from its DER; ``ValueError`` for anything else."""
    try:
        return _parse(der)
    except ValueError:
        raise
    except (IndexError, OverflowError) as exc:  # a bound this reader missed: still bad input
        raise ValueError(f"malformed certificate: {exc}") from None


def _parse(der: bytes) -> Cert:
    outer = _Reader(der)
    _, cert_body = outer.read(_SEQUENCE)
    outer.end("the certificate")
    cert = _Reader(cert_body)
    _, tbs_body = cert.read(_SEQUENCE)
    cert.read(_SEQUENCE)  # signatureAlgorithm
    cert.read(_BIT_STRING)  # signatureValue
    cert.end("the signature")
    tbs = _Reader(tbs_body)
    version = 0
    if tbs.peek() == _VERSION:
        _, explicit = tbs.read(_VERSION)
        inner = _Reader(explicit)
        _, number = inner.read(_INTEGER)
        inner.end("the version")
        version = int.from_bytes(number, "big", signed=True) if number else -1
    if version not in (0, 1, 2):
        raise ValueError(f"not an X.509 v1-v3 certificate (version field {version})")
    _, serial = tbs.read(_INTEGER)
    if not serial:
        raise ValueError("empty serial number")
    tbs.read(_SEQUENCE)  # signature
    tbs.read(_SEQUENCE)  # issuer
    _, validity_body = tbs.read(_SEQUENCE)
    validity = _Reader(validity_body)
    not_before = _time(*validity.read())
    not_after = _time(*validity.read())
    validity.end("the validity")
    tbs.read(_SEQUENCE)  # subject
    public_key_info = tbs.element(_SEQUENCE)
    for optional in (_ISSUER_UID, _SUBJECT_UID):
        if tbs.peek() == optional:
            tbs.read(optional)
    uris: tuple[str, ...] = ()
    if tbs.peek() == _EXTENSIONS:
        _, explicit = tbs.read(_EXTENSIONS)
        wrapper = _Reader(explicit)
        _, extensions_body = wrapper.read(_SEQUENCE)
        wrapper.end("the extensions")
        uris = _san_uris(_Reader(extensions_body))
    tbs.end("the TBSCertificate")
    return Cert(der=der, serial_number=int.from_bytes(serial, "big", signed=True),
                not_before=not_before, not_after=not_after, uris=uris,
                public_key_info=public_key_info)


def _san_uris(extensions: _Reader) -> tuple[str, ...]:
    found: tuple[str, ...] | None = None
    while not extensions.done():
        _, body = extensions.read(_SEQUENCE)
        ext = _Reader(body)
        _, oid = ext.read(_OID)
        if ext.peek() == _BOOLEAN:
            ext.read(_BOOLEAN)
        _, value = ext.read(_OCTET_STRING)
        ext.end("an extension")
        if oid != _SAN:
            continue
        if found is not None:
            raise ValueError("two subjectAltName extensions")
        names = _Reader(value)
        _, names_body = names.read(_SEQUENCE)
        names.end("the subjectAltName")
        general = _Reader(names_body)
        uris = []
        while not general.done():
            tag, name = general.read()
            if tag == _URI:
                try:
                    uris.append(name.decode("ascii"))
                except UnicodeDecodeError:
                    raise ValueError("a URI subjectAltName is not ASCII") from None
        found = tuple(uris)
    return found or ()


def load_pem_certs(data: bytes) -> list[Cert]:
    """Every ``CERTIFICATE`` block of ``data``; ``ValueError`` when one does not
    decode or parse, and when there is none."""
    certs = []
    for match in _PEM.finditer(data):
        try:
            der = binascii.a2b_base64(match.group(1), strict_mode=False)
        except binascii.Error as exc:
            raise ValueError(f"a PEM certificate is not base64: {exc}") from None
        certs.append(parse_cert(der))
    if not certs:
        raise ValueError("no PEM certificate found")
    return certs
