"""The daemon's own certificate reader (agent/credentials/der.py) against
cryptography's, on certificates of every shape the agent can meet, and on
damaged ones: it must read the same fields or raise ValueError, nothing else."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agent.credentials.der import load_pem_certs, parse_cert

NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vm")])
ISSUER = ec.generate_private_key(ec.SECP256R1())


def _cert(*, key: object = None, serial: int = 7, start: dt.datetime | None = None,
          days: int = 1, sans: list[x509.GeneralName] | None = None,
          extra: bool = False) -> x509.Certificate:
    start = start or dt.datetime(2026, 12, 3, 10, 0, 0, tzinfo=dt.UTC)
    subject_key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(NAME).issuer_name(NAME)
               .public_key(subject_key.public_key())  # type: ignore[attr-defined]
               .serial_number(serial).not_valid_before(start)
               .not_valid_after(start + dt.timedelta(days=days)))
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=True)
    if extra:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                        critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=False, crl_sign=False, encipher_only=False,
                          decipher_only=False), critical=False)
    return builder.sign(ISSUER, hashes.SHA256())


SHAPES = {
    "spiffe": lambda: _cert(sans=[x509.UniformResourceIdentifier("spiffe://example.org/ns/a/sa/b")],
                            extra=True),
    "rsa key, big serial": lambda: _cert(key=rsa.generate_private_key(65537, 2048),
                                         serial=(1 << 159) - 1,
                                         sans=[x509.UniformResourceIdentifier("spiffe://t/x")]),
    "p384 key, dns and two uris": lambda: _cert(
        key=ec.generate_private_key(ec.SECP384R1()),
        sans=[x509.DNSName("vm.example"), x509.UniformResourceIdentifier("https://a/b"),
              x509.UniformResourceIdentifier("spiffe://t/y")]),
    "two spiffe ids": lambda: _cert(sans=[x509.UniformResourceIdentifier("spiffe://t/1"),
                                          x509.UniformResourceIdentifier("spiffe://t/2")]),
    "no extensions": lambda: _cert(),
    "generalized time after 2049": lambda: _cert(start=dt.datetime(2049, 12, 31, 23, 59, 59,
                                                                   tzinfo=dt.UTC), days=2),
    "utc time in the 1990s": lambda: _cert(start=dt.datetime(1999, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
}


def _expected(cert: x509.Certificate) -> tuple[object, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return (cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc, uris, spki)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_reads_what_cryptography_reads(shape: str) -> None:
    cert = SHAPES[shape]()
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (mine,) = load_pem_certs(b"text before\n" + pem + b"text after\n")
    assert (mine.serial_number, mine.not_before, mine.not_after, mine.uris,
            mine.public_key_info) == _expected(cert)
    assert mine.der == cert.public_bytes(serialization.Encoding.DER)
    assert mine.pem() == pem
    ids = [u for u in mine.uris if u.startswith("spiffe://")]
    assert mine.spiffe_id == (ids[0] if len(ids) == 1 else None)


def test_a_bundle_keeps_every_certificate_in_order() -> None:
    certs = [SHAPES["spiffe"](), SHAPES["no extensions"](), SHAPES["two spiffe ids"]()]
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    assert [c.der for c in load_pem_certs(pem)] == [
        c.public_bytes(serialization.Encoding.DER) for c in certs]


@pytest.mark.parametrize("data", [b"", b"no pem here", b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                                  b"-----END CERTIFICATE-----\n"])
def test_nothing_usable_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        load_pem_certs(data)


def test_an_unknown_version_is_refused() -> None:
    der = bytearray(SHAPES["spiffe"]().public_bytes(serialization.Encoding.DER))
    at = der.index(bytes.fromhex("a003020102"))  # [0] { INTEGER 2 }: v3
    der[at + 4] = 3
    with pytest.raises(ValueError, match="v1-v3"):
        parse_cert(bytes(der))


def test_damaged_certificates_raise_value_error_and_nothing_else() -> None:
    """Every truncation and 3,000 random byte flips of a real certificate: each
    either parses or raises ValueError (an IndexError, UnicodeError or anything
    else would end the agent with exit 1 instead of quarantining the file)."""
    der = SHAPES["spiffe"]().public_bytes(serialization.Encoding.DER)
    rng = random.Random(5)
    damaged = [der[:n] for n in range(len(der))]
    for _ in range(3000):
        flipped = bytearray(der)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        damaged.append(bytes(flipped))
    refused = 0
    for data in damaged:
        try:
            parse_cert(data)
        except ValueError:
            refused += 1
    assert refused >= len(der)  # every truncation at least
